-- Queued: JetStream acknowledged the reservation's order event, so its units stay the
-- reservation's until the order decides (see p in common.lua): no expiry, no compensation.
-- The gateway calls this before it tells the buyer "accepted".
-- ARGV: reservation id
-- HELD -> HELD, queued, out of the expiry set. Queued, COMMITTED or CONFIRMED: unchanged.
-- RELEASED (its hold passed, or a compensation ran, before the mark): refused, changing nothing.
-- It is not taken again here: the order consumer's commit decides that reservation (it takes the
-- units back when stock allows, else writes the order as lost), and a mark that revived it
-- behind the consumer's back could accept an order already written as lost.
-- Reply: reply(...) with status OK | UNCHANGED | REFUSED, or {'NOT_FOUND'} / {'NO_SALE'}.
local rid = ARGV[1]
if redis.call('EXISTS', SALE) == 0 then return {'NO_SALE'} end
local rec = load_rec(rid)
if not rec then return {'NOT_FOUND'} end
local available = tonumber(redis.call('HGET', SALE, 'available'))
if rec.s == 'HELD' and not queued(rec) then
  rec.p = 1
  rec.e = 0
  save_rec(rid, rec)
  redis.call('ZREM', EXP, rid)
  return reply('OK', rid, rec, available, -1, 0)
end
if rec.s ~= 'RELEASED' then
  return reply('UNCHANGED', rid, rec, available, -1, 0)
end
return reply('REFUSED', rid, rec, available, -1, 0)
