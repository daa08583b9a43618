-- Shared by every inventory script (prepended to each).
--
-- Keys of one sale all carry the hash tag {sale_id}, so every script touches one slot:
--   KEYS[1] fs:{sid}:sale   HASH  total limit starts ends hold available held sold sigseq
--   KEYS[2] fs:{sid}:users  HASH  user_id -> units held or sold
--   KEYS[3] fs:{sid}:idem   HASH  user_id \0 idempotency_key -> reservation id
--   KEYS[4] fs:{sid}:exp    ZSET  reservation id -> expiry (ms) of HELD reservations
--   KEYS[5] fs:{sid}:res    HASH  reservation id -> JSON {u, q, s, c, e, k, r, p}
-- A record's p = 1 says its order event is in the stream (the gateway marked it queued after
-- JetStream acknowledged the publish): from then on only the order's own lifecycle may release
-- its units, never an expiry or a compensation, however long the order takes to be written.
-- Times are Unix milliseconds from Redis's own clock, so every replica agrees.
-- Invariant kept by every script: available + held + sold == total, none negative.

local SALE, USERS, IDEM, EXP, RES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A reservation as a flat reply:
-- {status, rid, user, qty, state, created, expires, key, reason, available, signal, seq, queued}
-- signal: -1 none, 1 stock just reached zero, 0 stock just came back above zero.
local function reply(status, rid, rec, available, signal, seq)
  return {status, rid, rec.u, rec.q, rec.s, rec.c, rec.e, rec.k, rec.r, available, signal, seq,
    rec.p or 0}
end

-- True for a reservation whose order event the stream holds (see p above).
local function queued(rec)
  return rec.p == 1
end

local function load_rec(rid)
  local raw = redis.call('HGET', RES, rid)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function save_rec(rid, rec)
  redis.call('HSET', RES, rid, cjson.encode(rec))
end

local function bump_signal()
  return redis.call('HINCRBY', SALE, 'sigseq', 1)
end

-- Where a sale's signal numbering starts when Redis creates (or recreates) it: the Redis clock
-- in microseconds, so a sale rebuilt after Redis lost it numbers its signals above every one
-- sent before (gateways ignore a number lower than the last they saw).
local function first_signal()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Returns a HELD or COMMITTED reservation's units to stock and to the buyer's allowance.
-- Returns available-after, signal, seq.
local function release_units(rid, rec, reason)
  local before = tonumber(redis.call('HGET', SALE, 'available'))
  local after = redis.call('HINCRBY', SALE, 'available', rec.q)
  redis.call('HINCRBY', SALE, 'held', -rec.q)
  if redis.call('HINCRBY', USERS, rec.u, -rec.q) <= 0 then
    redis.call('HDEL', USERS, rec.u)
  end
  redis.call('ZREM', EXP, rid)
  rec.s = 'RELEASED'
  rec.r = reason
  rec.e = 0
  save_rec(rid, rec)
  if before == 0 and after > 0 then
    return after, 0, bump_signal()
  end
  return after, -1, 0
end

-- Takes units for a buyer if stock and the per-user limit allow. Returns available-after,
-- signal, seq; or nil and a refusal status.
local function take_units(user, qty, limit)
  local available = tonumber(redis.call('HGET', SALE, 'available'))
  local have = tonumber(redis.call('HGET', USERS, user) or '0')
  if have + qty > limit then return nil, 'USER_LIMIT', available end
  if available < qty then return nil, 'SOLD_OUT', available end
  local after = redis.call('HINCRBY', SALE, 'available', -qty)
  redis.call('HINCRBY', SALE, 'held', qty)
  redis.call('HINCRBY', USERS, user, qty)
  if after == 0 then
    return after, 1, bump_signal()
  end
  return after, -1, 0
end

-- Commit of one reservation (see commit.lua). Returns status, rec, available, signal, seq;
-- status OK | UNCHANGED | REVIVED | REFUSED | NOT_FOUND.
local function commit_one(rid, hold_until)
  local rec = load_rec(rid)
  if not rec then return 'NOT_FOUND', nil, 0, -1, 0 end
  local available = tonumber(redis.call('HGET', SALE, 'available'))
  if rec.s == 'HELD' then
    rec.s = 'COMMITTED'
    rec.e = hold_until
    save_rec(rid, rec)
    redis.call('ZREM', EXP, rid)
    return 'OK', rec, available, -1, 0
  end
  if rec.s == 'COMMITTED' or rec.s == 'CONFIRMED' then
    return 'UNCHANGED', rec, available, -1, 0
  end
  if rec.r == 'RESERVATION_EXPIRED' or rec.r == 'PUBLISH_FAILED' then
    local limit = tonumber(redis.call('HGET', SALE, 'limit'))
    local after, signal, seq = take_units(rec.u, rec.q, limit)
    if after then
      rec.s = 'COMMITTED'
      rec.e = hold_until
      rec.r = ''
      save_rec(rid, rec)
      return 'REVIVED', rec, after, signal, seq
    end
  end
  return 'REFUSED', rec, available, -1, 0
end
