-- acquireSubscription: this node takes a subscription, wherever it was authorized or last
-- held, and learns where it resumes. A record's state is 'w' (waiting), 'h' (held by `holder`)
-- or 'r' (its holder's connection closed and is finishing its writes).
-- KEYS: meta, stream, waiting, the record, this node's held set
-- ARGV: node, identity ('=' and the identity, or ''), epoch of the client's offset ('' when it
--       gave none), position of the client's offset, liveness key prefix, held set prefix, token,
--       reclaim ('1': this node holds the record but no open connection here holds it, so a
--       client that gives its offset takes it as from a releasing holder)
-- Replies: {'none'}: no subscription this client may take; {'gone'}: it cannot resume from
-- its position (it is dropped); {'held', holder, state}: another holder has it; {'ok', items,
-- epoch, after, head, lease}: taken, to resume after `after`.
local now = now_ms()
local record = redis.call('HMGET', KEYS[4], 'items', 'identity', 'epoch', 'start', 'after', 'state', 'holder',
  'exact')
if not record[1] then
  return { 'none' }
end
if record[2] ~= '' and record[2] ~= ARGV[2] then
  return { 'none' }
end
local token, state, holder = ARGV[7], record[6], record[7]
local given = ARGV[3] ~= ''
local exact = record[8] == '1'
if state ~= 'w' then
  if redis.call('EXISTS', ARGV[5] .. holder) == 0 then
    -- Its node died before reaping: where its connection stood is unknown.
    exact = false
  elseif not (given and (state == 'r' or (ARGV[8] == '1' and holder == ARGV[1]))) then
    return { 'held', holder, state }
  end
end
local function drop()
  redis.call('DEL', KEYS[4])
  unwait(KEYS[3], token, record[2])
  if holder ~= '' then
    redis.call('SREM', ARGV[6] .. holder, token)
  end
  return { 'gone' }
end
local epoch, head, first = stream_meta(KEYS[1], KEYS[2], now)
if tonumber(record[3]) ~= epoch then
  return drop()
end
local after
if given then
  after = tonumber(ARGV[4])
  if tonumber(ARGV[3]) ~= epoch or after < tonumber(record[4]) or after > head then
    return drop()
  end
else
  if not exact then
    return drop()
  end
  after = tonumber(record[5])
end
if after + 1 < first then
  return drop()
end
if holder ~= '' then
  redis.call('SREM', ARGV[6] .. holder, token)
end
local lease = redis.call('HINCRBY', KEYS[4], 'lease', 1)
redis.call('HSET', KEYS[4], 'state', 'h', 'holder', ARGV[1], 'after', int(after), 'exact', 1)
redis.call('PERSIST', KEYS[4])
unwait(KEYS[3], token, record[2])
redis.call('SADD', KEYS[5], token)
return { 'ok', record[1], int(epoch), int(after), int(head), int(lease) }
