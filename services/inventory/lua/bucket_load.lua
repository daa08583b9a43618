-- BucketLoad: one stock bucket of a bucketed sale (see `buckets` in the crate docs).
-- KEYS[1] fs:{sid#k}:sale. ARGV: limit, starts, ends, hold
-- Creates the bucket empty (its units arrive by transfer) or refreshes limit/window/hold of a
-- loaded one; never touches its stock counters.
-- Reply: {'CREATED' | 'UPDATED', total, available, held, sold}
local limit, starts, ends, hold =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'total', 0, 'limit', limit, 'starts', starts, 'ends', ends,
    'hold', hold, 'available', 0, 'held', 0, 'sold', 0, 'sigseq', 0)
  return {'CREATED', 0, 0, 0, 0}
end
redis.call('HSET', KEYS[1], 'limit', limit, 'starts', starts, 'ends', ends, 'hold', hold)
local s = redis.call('HMGET', KEYS[1], 'total', 'available', 'held', 'sold')
return {'UPDATED', tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4])}
