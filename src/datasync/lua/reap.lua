-- A node died: up to ARGV[6] of the subscriptions it held wait again, for the resume timeout.
-- Where their connections stood is unknown, so only clients that say where they stand
-- (offsets) resume them. Returns how many were taken from its set (the caller repeats until
-- fewer than asked).
-- KEYS: waiting, the dead node's held set
-- ARGV: dead node, its liveness key, timeout ms, max waiting, record prefix, batch, max waiting per
--       identity
if redis.call('EXISTS', ARGV[2]) == 1 then
  -- It came back: it keeps what it holds.
  return 0
end
local now = now_ms()
local tokens = redis.call('SPOP', KEYS[2], ARGV[6])
for _, token in ipairs(tokens) do
  local record = ARGV[5] .. token
  local r = redis.call('HMGET', record, 'holder', 'state', 'identity')
  if r[1] == ARGV[1] and r[2] ~= 'w' then
    redis.call('HSET', record, 'state', 'w', 'holder', '', 'exact', 0)
    redis.call('PEXPIRE', record, ARGV[3])
    wait_for(KEYS[1], token, now + tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], now, r[3] or '', tonumber(ARGV[7]))
  end
end
return #tokens
