-- Release: the units go back to stock and to the buyer's allowance, exactly once.
-- ARGV: reservation id, reason
-- HELD or COMMITTED -> RELEASED. RELEASED: unchanged. CONFIRMED: refused.
-- Reply: reply(...) with status OK | UNCHANGED | REFUSED, or {'NOT_FOUND'} / {'NO_SALE'}.
local rid, reason = ARGV[1], ARGV[2]
if redis.call('EXISTS', SALE) == 0 then return {'NO_SALE'} end
local rec = load_rec(rid)
if not rec then return {'NOT_FOUND'} end
if rec.s == 'HELD' or rec.s == 'COMMITTED' then
  local after, signal, seq = release_units(rid, rec, reason)
  return reply('OK', rid, rec, after, signal, seq)
end
local available = tonumber(redis.call('HGET', SALE, 'available'))
if rec.s == 'RELEASED' then
  return reply('UNCHANGED', rid, rec, available, -1, 0)
end
return reply('REFUSED', rid, rec, available, -1, 0)
