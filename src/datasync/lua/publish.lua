-- publishDeltas: appends a batch to the shared stream in one step (so batches never
-- interleave), publishes it to the nodes in the same step (so every node receives batches in
-- stream order), trims the stream, and drops a batch whose idempotency key was seen within the
-- window. Returns how many deltas were appended (0 for a repeated batch).
-- KEYS: meta, stream, idempotency keys (sorted set: key by time), the nodes' channel
-- ARGV: publish command, key ('' for none), window ms, max keys, max deltas, max bytes,
--       max age ms, deltas per message, then the deltas (JSON)
local FIXED = 8
local now = now_ms()
local key = ARGV[2]
if key ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. int(now - tonumber(ARGV[3])))
  if redis.call('ZSCORE', KEYS[3], key) then
    return 0
  end
end
local epoch, head, first, bytes = stream_meta(KEYS[1], KEYS[2], now)
local count = #ARGV - FIXED
local per_message = tonumber(ARGV[8])
local lines = {}
local message_first = head + 1
for i = 1, count do
  local delta = ARGV[FIXED + i]
  redis.call('XADD', KEYS[2], stream_id(epoch, head + i), 'd', delta, 't', int(now))
  bytes = bytes + #delta
  lines[#lines + 1] = delta
  if #lines == per_message or i == count then
    -- A message: "<epoch> <position of its first delta>", then one delta per line (JSON text
    -- has no raw newline).
    redis.call(ARGV[1], KEYS[4], int(epoch) .. ' ' .. int(message_first) .. '\n' .. table.concat(lines, '\n'))
    message_first = head + i + 1
    lines = {}
  end
end
head = head + count
first, bytes = trim(KEYS[2], epoch, head, first, bytes, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), now)
redis.call('HSET', KEYS[1], 'head', int(head), 'first', int(first), 'bytes', int(bytes))
if key ~= '' and tonumber(ARGV[4]) > 0 then
  redis.call('ZADD', KEYS[3], int(now), key)
  local over = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[4])
  if over > 0 then
    redis.call('ZPOPMIN', KEYS[3], over)
  end
end
return count
