-- Subscriptions this node held wait again, for the resume timeout, after the last delta their
-- connection wrote; those acquired again since (another lease) are left alone. The lease moves
-- on, so that a script still naming the released one (a reassertion whose snapshot predates the
-- release, a retried release) can no longer take it back for this node. One reaped meanwhile (this
-- node was taken for dead; it waits without a holder, under the same lease) is released too: its
-- lease moves on for the same reason, and it resumes exactly after what was written.
-- KEYS: waiting, this node's held set
-- ARGV: node, timeout ms, max waiting, record prefix, max waiting per identity, then token, lease
--       and position triples
local now = now_ms()
for i = 6, #ARGV, 3 do
  local token = ARGV[i]
  local record = ARGV[4] .. token
  local r = redis.call('HMGET', record, 'holder', 'lease', 'state', 'identity')
  local held_here = r[1] == ARGV[1] and r[3] ~= 'w'
  local reaped = r[1] == '' and r[3] == 'w'
  if r[2] == ARGV[i + 1] and (held_here or reaped) then
    redis.call('HSET', record, 'state', 'w', 'holder', '', 'after', ARGV[i + 2], 'exact', 1)
    redis.call('HINCRBY', record, 'lease', 1)
    redis.call('PEXPIRE', record, ARGV[2])
    redis.call('SREM', KEYS[2], token)
    wait_for(KEYS[1], token, now + tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], now, r[4] or '', tonumber(ARGV[5]))
  end
end
return 0
