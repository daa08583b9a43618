-- Confirm: paid, the units are sold for good.
-- ARGV: reservation id
-- HELD or COMMITTED -> CONFIRMED. CONFIRMED: unchanged. RELEASED: refused.
-- Reply: reply(...) with status OK | UNCHANGED | REFUSED, or {'NOT_FOUND'} / {'NO_SALE'}.
local rid = ARGV[1]
if redis.call('EXISTS', SALE) == 0 then return {'NO_SALE'} end
local rec = load_rec(rid)
if not rec then return {'NOT_FOUND'} end
local available = tonumber(redis.call('HGET', SALE, 'available'))
if rec.s == 'HELD' or rec.s == 'COMMITTED' then
  redis.call('HINCRBY', SALE, 'held', -rec.q)
  redis.call('HINCRBY', SALE, 'sold', rec.q)
  redis.call('ZREM', EXP, rid)
  rec.s = 'CONFIRMED'
  rec.e = 0
  save_rec(rid, rec)
  return reply('OK', rid, rec, available, -1, 0)
end
if rec.s == 'CONFIRMED' then
  return reply('UNCHANGED', rid, rec, available, -1, 0)
end
return reply('REFUSED', rid, rec, available, -1, 0)
