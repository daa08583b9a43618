-- Give: the first half of a transfer of units between slots of a bucketed sale.
-- KEYS[1] the source's hash (the control record, or a bucket's fs:{sid#k}:sale)
-- KEYS[2] the source's journal fs:{..}:out  HASH transfer id -> "destination bucket:units"
-- ARGV: transfer id, destination bucket, most units to give, field ('pool' or 'available'),
--       least units to give when the source has them (a bucket gives at most half of what
--       it has beyond that, so stock spreads instead of hopping from bucket to bucket)
-- Takes up to the asked units from the field (a bucket also lowers its `total`, so its own
-- available + held + sold == total still holds) and journals them in the same script: units
-- are never in no place. The destination's Credit applies the journal entry exactly once, and
-- only in the same generation of the sale (`gen`, which a rebuild changes on every slot: the
-- rebuild counts journalled units afresh, so a Credit from before it must add nothing).
-- Journal entry: "destination bucket:units:generation".
-- Reply: {units given (0 when the source has none), entries now in the source's journal,
--         the generation}
local tid, to, want, field, least = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local have = tonumber(redis.call('HGET', KEYS[1], field) or '0')
local gen = redis.call('HGET', KEYS[1], 'gen') or '0'
local n = math.min(have, want)
if field == 'available' then n = math.min(n, math.max(least, math.floor(have / 2))) end
if n <= 0 then return {0, redis.call('HLEN', KEYS[2]), gen} end
redis.call('HINCRBY', KEYS[1], field, -n)
if field == 'available' then redis.call('HINCRBY', KEYS[1], 'total', -n) end
redis.call('HSET', KEYS[2], tid, to .. ':' .. n .. ':' .. gen)
return {n, redis.call('HLEN', KEYS[2]), gen}
