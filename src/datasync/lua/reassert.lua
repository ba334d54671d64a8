-- After an outage: this node still holds these subscriptions. Those that Redis lost or that
-- another node took meanwhile are returned (their clients must resync), as are those released
-- since the list was made (their lease moved on: the node no longer holds them); those put back
-- to waiting by a reap (this node was taken for dead while it was cut off) are held again.
-- KEYS: waiting, this node's held set
-- ARGV: node, record prefix, then token and lease pairs
local lost = {}
for i = 3, #ARGV, 2 do
  local token = ARGV[i]
  local record = ARGV[2] .. token
  local r = redis.call('HMGET', record, 'holder', 'lease', 'state', 'identity')
  if r[2] ~= ARGV[i + 1] or (r[3] ~= 'w' and r[1] ~= ARGV[1]) then
    lost[#lost + 1] = token
  elseif r[3] == 'w' then
    redis.call('HSET', record, 'state', 'h', 'holder', ARGV[1], 'exact', 1)
    redis.call('PERSIST', record)
    unwait(KEYS[1], token, r[4])
    redis.call('SADD', KEYS[2], token)
  end
end
return lost
