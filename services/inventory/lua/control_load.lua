-- ControlLoad: the control record of a bucketed sale, in the sale's own slot {sid}.
-- KEYS[1] fs:{sid}:sale  HASH total limit starts ends hold buckets batch pool sigseq
-- ARGV: total, limit, starts, ends, hold, buckets, batch, refresh_only (1 = never create)
-- `pool` holds the units no bucket has been given yet. Stock and bucket count are fixed once
-- loaded; a sale loaded without buckets cannot gain them (and the other way round).
-- Reply: {status, total, pool}; status CREATED | UPDATED | STOCK_FIXED | BUCKETS_FIXED |
-- MISSING (refresh_only, not loaded)
local total, limit, starts, ends, hold, buckets, batch = tonumber(ARGV[1]), tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if redis.call('EXISTS', KEYS[1]) == 0 and ARGV[8] == '1' then return {'MISSING', 0, 0} end
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- Signals are numbered from the Redis clock (microseconds), as in common.lua.
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'total', total, 'limit', limit, 'starts', starts, 'ends', ends,
    'hold', hold, 'buckets', buckets, 'batch', batch, 'pool', total,
    'sigseq', tonumber(t[1]) * 1000000 + tonumber(t[2]))
  return {'CREATED', total, total}
end
local s = redis.call('HMGET', KEYS[1], 'total', 'buckets', 'pool')
if tonumber(s[2] or '1') ~= buckets then return {'BUCKETS_FIXED', tonumber(s[2] or '1'), 0} end
if tonumber(s[1]) ~= total then return {'STOCK_FIXED', tonumber(s[1]), tonumber(s[3])} end
redis.call('HSET', KEYS[1], 'limit', limit, 'starts', starts, 'ends', ends, 'hold', hold)
return {'UPDATED', total, tonumber(s[3])}
