-- Trims the shared stream to its retention (by age: publishing trims by count and bytes).
-- KEYS: meta, stream
-- ARGV: max deltas, max bytes, max age ms
local m = redis.call('HMGET', KEYS[1], 'epoch', 'head', 'first', 'bytes')
if not m[1] then
  return 0
end
local first = tonumber(m[3])
local kept, bytes = trim(KEYS[2], tonumber(m[1]), tonumber(m[2]), first, tonumber(m[4]), tonumber(ARGV[1]),
  tonumber(ARGV[2]), tonumber(ARGV[3]), now_ms())
if kept ~= first then
  redis.call('HSET', KEYS[1], 'first', int(kept), 'bytes', int(bytes))
end
return kept - first
