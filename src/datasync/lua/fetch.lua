-- Reads the shared stream for a node's mirror: its epoch, head and first retained position,
-- then the deltas from position ARGV[1] on, at most ARGV[2] of them (none when that position is
-- no longer retained).
-- KEYS: meta, stream
-- ARGV: from, count
local epoch, head, first = stream_meta(KEYS[1], KEYS[2], now_ms())
local reply = { int(epoch), int(head), int(first) }
local from = tonumber(ARGV[1])
if from >= first and from <= head and tonumber(ARGV[2]) > 0 then
  local entries = redis.call('XRANGE', KEYS[2], stream_id(epoch, from), stream_id(epoch, head), 'COUNT', ARGV[2])
  for _, entry in ipairs(entries) do
    reply[#reply + 1] = entry[2][2]
  end
end
return reply
