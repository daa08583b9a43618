-- Expire: release HELD reservations whose hold has passed and whose order event the stream
-- does not hold (a queued one waits for its order, see common.lua). Safe to run from many replicas at
-- once: each release re-checks state and expiry inside this atomic script.
-- ARGV: most reservations to release in this call
-- Reply: {released count, available, signal, seq, finished (1 when the sale is over and holds
--         nothing more to expire), rid...}
local batch = tonumber(ARGV[1])
if redis.call('EXISTS', SALE) == 0 then return {0, 0, -1, 0, 1} end
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', EXP, '-inf', now, 'LIMIT', 0, batch)
local out = {0, 0, -1, 0, 0}
local released = {}
for _, rid in ipairs(due) do
  local rec = load_rec(rid)
  if rec and rec.s == 'HELD' and not queued(rec) and rec.e <= now then
    local _, signal, seq = release_units(rid, rec, 'RESERVATION_EXPIRED')
    if signal >= 0 then out[3] = signal; out[4] = seq end
    released[#released + 1] = rid
  else
    redis.call('ZREM', EXP, rid)
  end
end
out[1] = #released
out[2] = tonumber(redis.call('HGET', SALE, 'available'))
local ends = tonumber(redis.call('HGET', SALE, 'ends'))
if now >= ends and redis.call('ZCARD', EXP) == 0 then out[5] = 1 end
for _, rid in ipairs(released) do out[#out + 1] = rid end
return out
