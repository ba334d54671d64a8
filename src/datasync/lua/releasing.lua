-- A connection of this node closed: its subscriptions are released once its writer is done;
-- meanwhile acquisitions elsewhere wait for that instead of being refused.
-- ARGV: node, timeout ms, record prefix, then token and lease pairs
for i = 4, #ARGV, 2 do
  local record = ARGV[3] .. ARGV[i]
  local r = redis.call('HMGET', record, 'holder', 'lease', 'state')
  if r[1] == ARGV[1] and r[2] == ARGV[i + 1] and r[3] == 'h' then
    redis.call('HSET', record, 'state', 'r')
    redis.call('PEXPIRE', record, ARGV[2])
  end
end
return 0
