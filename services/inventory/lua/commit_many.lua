-- CommitMany: commit_one for each reservation of one sale, in one atomic call (the order
-- consumer's batch path).
-- ARGV: rid1, hold_until1, rid2, hold_until2, ...
-- Reply: {'NO_SALE'} or {'OK', available, signal, seq, status1, state1, reason1, status2, ...}
-- where status is OK | UNCHANGED | REVIVED | REFUSED | NOT_FOUND.
if redis.call('EXISTS', SALE) == 0 then return {'NO_SALE'} end
local out = {'OK', 0, -1, 0}
for i = 1, #ARGV, 2 do
  local status, rec, available, signal, seq = commit_one(ARGV[i], tonumber(ARGV[i + 1]))
  if signal >= 0 then out[3] = signal; out[4] = seq end
  out[#out + 1] = status
  out[#out + 1] = rec and rec.s or ''
  out[#out + 1] = rec and rec.r or ''
end
out[2] = tonumber(redis.call('HGET', SALE, 'available'))
return out
