-- Confirm: paid, the units are sold for good.
-- ARGV: reservation id
-- HELD or COMMITTED -> CONFIRMED. CONFIRMED: unchanged.
-- RELEASED: the order is paid (Postgres says so), so its units are taken back when stock and
-- the buyer's limit allow (RECLAIMED); otherwise refused, changing nothing: the paid order then
-- has no unit, and its Confirm stays pending until units come back or an operator decides.
-- Reply: reply(...) with status OK | UNCHANGED | RECLAIMED | REFUSED, or {'NOT_FOUND'} / {'NO_SALE'}.
local rid = ARGV[1]
if redis.call('EXISTS', SALE) == 0 then return {'NO_SALE'} end
local rec = load_rec(rid)
if not rec then return {'NOT_FOUND'} end
local available = tonumber(redis.call('HGET', SALE, 'available'))
local function sell()
  redis.call('HINCRBY', SALE, 'held', -rec.q)
  redis.call('HINCRBY', SALE, 'sold', rec.q)
  redis.call('ZREM', EXP, rid)
  rec.s = 'CONFIRMED'
  rec.e = 0
  rec.r = ''
  save_rec(rid, rec)
end
if rec.s == 'HELD' or rec.s == 'COMMITTED' then
  sell()
  return reply('OK', rid, rec, available, -1, 0)
end
if rec.s == 'CONFIRMED' then
  return reply('UNCHANGED', rid, rec, available, -1, 0)
end
local limit = tonumber(redis.call('HGET', SALE, 'limit'))
local after, signal, seq = take_units(rec.u, rec.q, limit)
if after then
  sell()
  return reply('RECLAIMED', rid, rec, after, signal, seq)
end
return reply('REFUSED', rid, rec, available, -1, 0)
