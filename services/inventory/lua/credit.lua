-- Credit: the second half of a transfer; applies it to the destination bucket exactly once.
-- KEYS[1] the bucket's fs:{sid#k}:sale; KEYS[2] its fs:{sid#k}:in  SET of applied transfer ids
-- ARGV: transfer id, units, the sale's generation when the Give ran (see give.lua)
-- A transfer from another generation is stale: a rebuild ran since its Give and counted its
-- units afresh, so it changes nothing here.
-- Reply: {1 applied now | 0 applied before | -1 no such bucket | -2 stale (nothing changed),
--         available}
local tid, n, gen = ARGV[1], tonumber(ARGV[2]), ARGV[3] or '0'
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local available = tonumber(redis.call('HGET', KEYS[1], 'available'))
if (redis.call('HGET', KEYS[1], 'gen') or '0') ~= gen then return {-2, available} end
if redis.call('SADD', KEYS[2], tid) == 0 then return {0, available} end
redis.call('HINCRBY', KEYS[1], 'total', n)
return {1, redis.call('HINCRBY', KEYS[1], 'available', n)}
