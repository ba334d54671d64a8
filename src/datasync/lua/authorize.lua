-- authorizeSubscription: records a subscription that waits, from the stream's head, to be
-- acquired on any node. Returns 0 when the token is taken (the caller draws another).
-- KEYS: meta, stream, waiting (sorted set: token by deadline), the subscription's record
-- ARGV: items (JSON), identity ('=' and the identity, or '' for none), timeout ms, max waiting,
--       record prefix, token, max waiting per identity
local now = now_ms()
if redis.call('EXISTS', KEYS[4]) == 1 then
  return 0
end
local epoch, head = stream_meta(KEYS[1], KEYS[2], now)
redis.call('HSET', KEYS[4], 'items', ARGV[1], 'identity', ARGV[2], 'epoch', int(epoch), 'start', int(head),
  'after', int(head), 'state', 'w', 'holder', '', 'exact', 1, 'lease', 0)
redis.call('PEXPIRE', KEYS[4], ARGV[3])
wait_for(KEYS[3], ARGV[6], now + tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], now, ARGV[2], tonumber(ARGV[7]))
return 1
