-- Commit: the order is persisted; hold the units until the payment deadline.
-- ARGV: reservation id, hold_until (ms)
-- HELD -> COMMITTED. COMMITTED or CONFIRMED: unchanged. RELEASED because it expired or its
-- publish was reported failed (the order exists after all): taken again if stock and the
-- buyer's limit allow (REVIVED), else refused.
-- Reply: reply(...) with status OK | UNCHANGED | REVIVED | REFUSED, or {'NOT_FOUND'} / {'NO_SALE'}.
local rid, hold_until = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', SALE) == 0 then return {'NO_SALE'} end
local rec = load_rec(rid)
if not rec then return {'NOT_FOUND'} end
local available = tonumber(redis.call('HGET', SALE, 'available'))
if rec.s == 'HELD' then
  rec.s = 'COMMITTED'
  rec.e = hold_until
  save_rec(rid, rec)
  redis.call('ZREM', EXP, rid)
  return reply('OK', rid, rec, available, -1, 0)
end
if rec.s == 'COMMITTED' or rec.s == 'CONFIRMED' then
  return reply('UNCHANGED', rid, rec, available, -1, 0)
end
if rec.r == 'RESERVATION_EXPIRED' or rec.r == 'PUBLISH_FAILED' then
  local limit = tonumber(redis.call('HGET', SALE, 'limit'))
  local after, signal, seq = take_units(rec.u, rec.q, limit)
  if after then
    rec.s = 'COMMITTED'
    rec.e = hold_until
    rec.r = ''
    save_rec(rid, rec)
    return reply('REVIVED', rid, rec, after, signal, seq)
  end
end
return reply('REFUSED', rid, rec, available, -1, 0)
