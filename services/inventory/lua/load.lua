-- LoadSale. ARGV: total, limit, starts, ends, hold, refresh_only (1 = never create)
-- Creates the sale, or refreshes limit/window/hold of a loaded one without touching its stock.
-- Reply: {status, total, available, held, sold}; status CREATED | UPDATED | STOCK_FIXED |
-- BUCKETS_FIXED (the sale is loaded with stock buckets) | MISSING (refresh_only, not loaded).
local total, limit, starts, ends, hold =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('EXISTS', SALE) == 0 and ARGV[6] == '1' then return {'MISSING', 0, 0, 0, 0} end
if redis.call('EXISTS', SALE) == 0 then
  redis.call('HSET', SALE, 'total', total, 'limit', limit, 'starts', starts, 'ends', ends,
    'hold', hold, 'available', total, 'held', 0, 'sold', 0, 'sigseq', first_signal())
  return {'CREATED', total, total, 0, 0}
end
local buckets = redis.call('HGET', SALE, 'buckets')
if buckets then return {'BUCKETS_FIXED', tonumber(buckets), 0, 0, 0} end
local s = redis.call('HMGET', SALE, 'total', 'available', 'held', 'sold')
if tonumber(s[1]) ~= total then
  return {'STOCK_FIXED', tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4])}
end
redis.call('HSET', SALE, 'limit', limit, 'starts', starts, 'ends', ends, 'hold', hold)
return {'UPDATED', tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4])}
