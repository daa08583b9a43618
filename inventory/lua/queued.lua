-- Queued: JetStream acknowledged the reservation's order event, so its units stay the
-- reservation's until the order decides (see p in common.lua): no expiry, no compensation.
-- The gateway calls this before it tells the buyer "accepted".
-- ARGV: reservation id
-- HELD -> HELD, queued, out of the expiry set. Queued, COMMITTED or CONFIRMED: unchanged.
-- RELEASED because its hold passed or its publish was reported failed (the event got through
-- after all): taken again, queued, when stock and the buyer's limit allow (REVIVED), else
-- refused. Released for any other reason: refused.
-- Reply: reply(...) with status OK | UNCHANGED | REVIVED | REFUSED, or {'NOT_FOUND'} / {'NO_SALE'}.
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
if rec.r == 'RESERVATION_EXPIRED' or rec.r == 'PUBLISH_FAILED' then
  local limit = tonumber(redis.call('HGET', SALE, 'limit'))
  local after, signal, seq = take_units(rec.u, rec.q, limit)
  if after then
    rec.s = 'HELD'
    rec.r = ''
    rec.p = 1
    save_rec(rid, rec)
    return reply('REVIVED', rid, rec, after, signal, seq)
  end
end
return reply('REFUSED', rid, rec, available, -1, 0)
