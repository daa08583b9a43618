-- Credit: the second half of a transfer; applies it to the destination bucket exactly once.
-- KEYS[1] the bucket's fs:{sid#k}:sale; KEYS[2] its fs:{sid#k}:in  SET of applied transfer ids
-- ARGV: transfer id, units
-- Reply: {1 applied now | 0 applied before | -1 no such bucket (nothing changed), available}
local tid, n = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
if redis.call('SADD', KEYS[2], tid) == 0 then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'available'))}
end
redis.call('HINCRBY', KEYS[1], 'total', n)
return {1, redis.call('HINCRBY', KEYS[1], 'available', n)}
