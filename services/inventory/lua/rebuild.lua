-- Rebuild: replace a sale's state with the orders Postgres has (after Redis lost it, or to
-- repair drift). Records Redis has and was not given are kept as they are: their orders are
-- still on the way, or were decided (committed, say) after the caller read Postgres, and
-- dropping them would sell their units twice.
-- ARGV: total, limit, starts, ends, hold, seen, then 9 per reservation:
--       id, user, quantity, state (COMMITTED | CONFIRMED | RELEASED), created, expires,
--       idempotency key, release reason, queued (1 | 0)
-- seen: PRESENT or MISSING, what the caller saw of the sale when it read the orders (a rebuild
-- from a reading taken before Redis lost the sale would drop what the stream wrote since);
-- ANY for the buckets of a sale whose presence the caller checked.
-- RELEASED records (closed orders) hold no units; they keep their keys answering.
-- total -1 fits a stock bucket to exactly its reservations (see buckets in the crate docs).
-- Reply: {'OK' | 'OVERSOLD' | 'CHANGED', total, available, held, sold, seq}; only OK changes
-- anything. seq numbers the stock signal the caller sends for the rebuilt sale (gateways learn
-- at once whether its stock is back; a sale Redis had lost numbers from the clock, see
-- common.lua).
local total, limit, starts, ends, hold, seen =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  ARGV[6]
local exists = redis.call('EXISTS', SALE) == 1
if (seen == 'PRESENT' and not exists) or (seen == 'MISSING' and exists) then
  return {'CHANGED', 0, 0, 0, 0, 0}
end
local records, given = {}, {}
for i = 7, #ARGV, 9 do
  given[ARGV[i]] = true
  local rec = {u = ARGV[i + 1], q = tonumber(ARGV[i + 2]), s = ARGV[i + 3],
    c = tonumber(ARGV[i + 4]), e = tonumber(ARGV[i + 5]), k = ARGV[i + 6], r = ARGV[i + 7]}
  if ARGV[i + 8] == '1' then rec.p = 1 end
  records[#records + 1] = {ARGV[i], rec}
end
local existing = redis.call('HGETALL', RES)
for i = 1, #existing, 2 do
  if not given[existing[i]] then
    records[#records + 1] = {existing[i], cjson.decode(existing[i + 1])}
  end
end
local held, sold = 0, 0
for _, entry in ipairs(records) do
  local rec = entry[2]
  if rec.s == 'CONFIRMED' then
    sold = sold + rec.q
  elseif rec.s ~= 'RELEASED' then
    held = held + rec.q
  end
end
if total < 0 then total = held + sold end
if held + sold > total then return {'OVERSOLD', total, 0, held, sold, 0} end
redis.call('DEL', USERS, IDEM, EXP, RES)
for _, entry in ipairs(records) do
  local rid, rec = entry[1], entry[2]
  save_rec(rid, rec)
  if rec.s ~= 'RELEASED' then redis.call('HINCRBY', USERS, rec.u, rec.q) end
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
