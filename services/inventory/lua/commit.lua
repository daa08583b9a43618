-- Commit: the order is persisted; hold the units until the payment deadline.
-- ARGV: reservation id, hold_until (ms)
-- HELD -> COMMITTED. COMMITTED or CONFIRMED: unchanged. RELEASED because it expired or its
-- publish was reported failed (the order exists after all): taken again if stock and the
-- buyer's limit allow (REVIVED), else refused.
-- Reply: reply(...) with status OK | UNCHANGED | REVIVED | REFUSED, or {'NOT_FOUND'} / {'NO_SALE'}.
local rid, hold_until = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', SALE) == 0 then return {'NO_SALE'} end
local status, rec, available, signal, seq = commit_one(rid, hold_until)
if status == 'NOT_FOUND' then return {'NOT_FOUND'} end
return reply(status, rid, rec, available, signal, seq)
