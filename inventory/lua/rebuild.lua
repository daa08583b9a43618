-- Rebuild: replace a sale's state with the orders Postgres has (after Redis lost it, or to
-- repair drift). HELD reservations that Redis has and Postgres does not know yet are kept:
-- their orders are still on the way, and dropping them would sell their units twice.
-- ARGV: total, limit, starts, ends, hold, then 7 per reservation:
--       id, user, quantity, state (COMMITTED | CONFIRMED), created, expires, idempotency key
-- total -1 fits a stock bucket to exactly its reservations (see buckets in the crate docs).
-- Reply: {'OK' | 'OVERSOLD', total, available, held, sold, seq}; OVERSOLD changes nothing.
-- seq numbers the stock signal the caller sends for the rebuilt sale (gateways learn at once
-- whether its stock is back; a sale Redis had lost numbers from the clock, see common.lua).
local total, limit, starts, ends, hold =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local records, given = {}, {}
for i = 6, #ARGV, 7 do
  given[ARGV[i]] = true
  records[#records + 1] = {ARGV[i], {u = ARGV[i + 1], q = tonumber(ARGV[i + 2]), s = ARGV[i + 3],
    c = tonumber(ARGV[i + 4]), e = tonumber(ARGV[i + 5]), k = ARGV[i + 6], r = ''}}
end
local existing = redis.call('HGETALL', RES)
for i = 1, #existing, 2 do
  local rec = cjson.decode(existing[i + 1])
  if rec.s == 'HELD' and not given[existing[i]] then records[#records + 1] = {existing[i], rec} end
end
local held, sold = 0, 0
for _, entry in ipairs(records) do
  local rec = entry[2]
  if rec.s == 'CONFIRMED' then sold = sold + rec.q else held = held + rec.q end
end
if total < 0 then total = held + sold end
if held + sold > total then return {'OVERSOLD', total, 0, held, sold, 0} end
redis.call('DEL', USERS, IDEM, EXP, RES)
for _, entry in ipairs(records) do
  local rid, rec = entry[1], entry[2]
  save_rec(rid, rec)
  redis.call('HINCRBY', USERS, rec.u, rec.q)
  if rec.s == 'HELD' and not queued(rec) then redis.call('ZADD', EXP, rec.e, rid) end
  if rec.k ~= '' then redis.call('HSET', IDEM, rec.u .. '\0' .. rec.k, rid) end
end
local available = total - held - sold
redis.call('HSET', SALE, 'total', total, 'limit', limit, 'starts', starts, 'ends', ends,
  'hold', hold, 'available', available, 'held', held, 'sold', sold)
if redis.call('HEXISTS', SALE, 'sigseq') == 0 then
  redis.call('HSET', SALE, 'sigseq', first_signal())
end
return {'OK', total, available, held, sold, bump_signal()}
