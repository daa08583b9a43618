-- Reserve. ARGV: user, qty, idempotency key ('' = none), new reservation id
-- Reply: reply(...) with status RESERVED | DUPLICATE, or
--        {status, available} with status NOT_FOUND | NOT_ACTIVE | INVALID | USER_LIMIT | SOLD_OUT
--        | KEY_REUSED (the key made a reservation of another quantity).
-- Refusals and duplicates change nothing.
local user, qty, key, rid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local s = redis.call('HMGET', SALE, 'limit', 'starts', 'ends', 'hold', 'available')
if not s[1] then return {'NOT_FOUND', 0} end
local limit, starts, ends, hold, available =
  tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4]), tonumber(s[5])

local ikey = user .. '\0' .. key
if key ~= '' then
  local prev = redis.call('HGET', IDEM, ikey)
  if prev then
    local rec = load_rec(prev)
    if rec and rec.q ~= qty then return {'KEY_REUSED', available} end
    if rec then return reply('DUPLICATE', prev, rec, available, -1, 0) end
  end
end

local now = now_ms()
if now < starts or now >= ends then return {'NOT_ACTIVE', available} end
if qty < 1 or qty > limit then return {'INVALID', available} end

local after, signal, seq = take_units(user, qty, limit)
if not after then return {signal, seq} end

local rec = {u = user, q = qty, s = 'HELD', c = now, e = now + hold, k = key, r = ''}
save_rec(rid, rec)
redis.call('ZADD', EXP, rec.e, rid)
if key ~= '' then redis.call('HSET', IDEM, ikey, rid) end
return reply('RESERVED', rid, rec, after, signal, seq)
