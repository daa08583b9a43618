-- Release: the units go back to stock and to the buyer's allowance, exactly once.
-- ARGV: reservation id, reason
-- HELD or COMMITTED -> RELEASED (COMMITTED only for an order's own reasons, see below).
-- RELEASED: unchanged. CONFIRMED: refused.
-- A release for a dead order (payment expired, cancelled, operator) also closes a reservation
-- that was released as revivable (its hold expired, its publish was reported failed): a commit
-- still in flight from a slow worker must not take the units back for an order that is gone.
-- Reply: reply(...) with status OK | UNCHANGED | REFUSED, or {'NOT_FOUND'} / {'NO_SALE'}.
local rid, reason = ARGV[1], ARGV[2]
if redis.call('EXISTS', SALE) == 0 then return {'NO_SALE'} end
local rec = load_rec(rid)
if not rec then return {'NOT_FOUND'} end
-- A compensation (publish reported failed) or an expiry only ever concerns a HELD reservation
-- the stream does not hold: once queued or COMMITTED its order is on the way or exists (the
-- publish went through after all, perhaps by a retry), and only the order's own lifecycle may
-- release it.
if (rec.s == 'COMMITTED' or (rec.s == 'HELD' and queued(rec)))
    and (reason == 'PUBLISH_FAILED' or reason == 'RESERVATION_EXPIRED') then
  local available = tonumber(redis.call('HGET', SALE, 'available'))
  return reply('UNCHANGED', rid, rec, available, -1, 0)
end
if rec.s == 'HELD' or rec.s == 'COMMITTED' then
  local after, signal, seq = release_units(rid, rec, reason)
  return reply('OK', rid, rec, after, signal, seq)
end
local available = tonumber(redis.call('HGET', SALE, 'available'))
if rec.s == 'RELEASED' then
  if (rec.r == 'RESERVATION_EXPIRED' or rec.r == 'PUBLISH_FAILED')
      and reason ~= 'RESERVATION_EXPIRED' and reason ~= 'PUBLISH_FAILED' then
    rec.r = reason
    save_rec(rid, rec)
  end
  return reply('UNCHANGED', rid, rec, available, -1, 0)
end
return reply('REFUSED', rid, rec, available, -1, 0)
