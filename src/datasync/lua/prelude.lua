-- Shared by the DataSync scripts (src/datasync/cluster.rs). Every key of a deployment carries
-- the same hash tag, so a script may also touch keys whose names it builds from prefixes given
-- in ARGV (subscription records, node sets): they live on the same Redis Cluster slot.

-- Milliseconds on Redis's clock, so that every node's deadlines agree.
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- A whole number as Redis and Rust read it (never in exponent form).
local function int(number)
  return string.format('%d', number)
end

-- The Redis Stream id of position `seq` in `epoch`.
local function stream_id(epoch, seq)
  return int(epoch) .. '-' .. int(seq)
end

-- The shared stream's epoch, head (newest position), first retained position and bytes. With
-- none recorded (a new deployment, or a Redis that lost its data) an epoch starts: the time in
-- milliseconds, so that it differs from any earlier one.
local function stream_meta(meta, stream, now)
  local m = redis.call('HMGET', meta, 'epoch', 'head', 'first', 'bytes')
  if not m[1] then
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', int(now), 'head', 0, 'first', 1, 'bytes', 0)
    return now, 0, 1, 0
  end
  return tonumber(m[1]), tonumber(m[2]), tonumber(m[3]), tonumber(m[4])
end

-- Drops the oldest entries beyond the retention: by count and bytes never the newest, by age
-- any. At most 10,000 per call, so that no call holds Redis for long (the next one trims the
-- rest). Entries are `d` (the delta) and `t` (when it was added). Returns the new first
-- position and bytes.
local function trim(stream, epoch, head, first, bytes, max_count, max_bytes, max_age, now)
  local kept = first
  local budget = 10000
  while budget > 0 and kept <= head do
    local batch = redis.call('XRANGE', stream, stream_id(epoch, kept), '+', 'COUNT', math.min(100, budget))
    if #batch == 0 then
      break
    end
    local stop = false
    for _, entry in ipairs(batch) do
      local seq = tonumber(string.match(entry[1], '%-(%d+)$'))
      local fields = entry[2]
      local count = head - seq + 1
      local over = count > 1 and (count > max_count or bytes > max_bytes)
      if not over and now - tonumber(fields[4]) <= max_age then
        stop = true
        break
      end
      bytes = bytes - #fields[2]
      kept = seq + 1
      budget = budget - 1
    end
    if stop then
      break
    end
  end
  if kept ~= first then
    redis.call('XTRIM', stream, 'MINID', stream_id(epoch, kept))
  end
  return kept, bytes
end

-- Besides `waiting` (every waiting token by deadline), each identity has its own sorted set:
-- `waiting` followed by the identity as records keep it ('=' and the identity); subscriptions
-- without an identity are only in `waiting`.

-- Takes `token`, bound to `identity` ('' for none), off the waiting sets.
local function unwait(waiting, token, identity)
  redis.call('ZREM', waiting, token)
  if identity and identity ~= '' then
    redis.call('ZREM', waiting .. identity, token)
  end
end

-- Pops the `over` tokens nearest their deadline from sorted set `set` and deletes them: their
-- records, and their entries in `also` (the other waiting set each is in, given its identity).
local function evict(set, over, records, also)
  if over <= 0 then
    return
  end
  local evicted = redis.call('ZPOPMIN', set, over)
  for i = 1, #evicted, 2 do
    also(evicted[i])
    redis.call('DEL', records .. evicted[i])
  end
end

-- Lists `token` (bound to `identity`) among the waiting subscriptions until `deadline`, forgets
-- those whose deadline passed (their records expired), and evicts (deletes) the ones nearest
-- their deadline beyond `max_mine` of the identity's, then beyond `max` of all.
local function wait_for(waiting, token, deadline, max, records, now, identity, max_mine)
  redis.call('ZREMRANGEBYSCORE', waiting, '-inf', int(now))
  if identity ~= '' then
    local mine = waiting .. identity
    redis.call('ZREMRANGEBYSCORE', mine, '-inf', int(now))
    redis.call('ZADD', mine, int(deadline), token)
    evict(mine, redis.call('ZCARD', mine) - max_mine, records, function(evicted)
      redis.call('ZREM', waiting, evicted)
    end)
    -- The set lasts as long as its latest deadline, so an identity that stops authorizing
    -- leaves nothing behind.
    local last = redis.call('ZRANGE', mine, -1, -1, 'WITHSCORES')
    if #last == 2 then
      redis.call('PEXPIREAT', mine, last[2])
    end
  end
  redis.call('ZADD', waiting, int(deadline), token)
  evict(waiting, redis.call('ZCARD', waiting) - max, records, function(evicted)
    local bound = redis.call('HGET', records .. evicted, 'identity')
    if bound and bound ~= '' then
      redis.call('ZREM', waiting .. bound, evicted)
    end
  end)
end
