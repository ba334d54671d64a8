-- Subscriptions this node held end (cancelled, or they fell behind what the stream retains),
-- unless they were acquired again since (another lease).
-- KEYS: waiting, this node's held set
-- ARGV: node, record prefix, then token and lease pairs
for i = 3, #ARGV, 2 do
  local token = ARGV[i]
  local record = ARGV[2] .. token
  local r = redis.call('HMGET', record, 'holder', 'lease', 'identity')
  if r[1] == ARGV[1] and r[2] == ARGV[i + 1] then
    redis.call('DEL', record)
    unwait(KEYS[1], token, r[3])
    redis.call('SREM', KEYS[2], token)
  end
end
return 0
