-- Waiting room of one sale; every key carries the hash tag {wr:<sale>} (one slot).
-- KEYS[1] wr:{..}:room     HASH rate (admissions/s), cap (most active buyers), window (ms an
--                          admitted buyer may take to buy), opens (ms), seq (last arrival
--                          number), admitted (highest number admitted), credit, last (ms),
--                          soldout (0/1)
-- KEYS[2] wr:{..}:numbers  HASH user -> arrival number
-- KEYS[3] wr:{..}:order    HASH arrival number -> user
-- KEYS[4] wr:{..}:active   ZSET user -> admission deadline (ms), admitted and not done
-- KEYS[5] wr:{..}:used     HASH arrival number -> idempotency key of the purchase that spent
--                          its token
-- ARGV[1] op: OPEN | JOIN | STATUS | REDEEM | SOLDOUT | RESTOCK | TICK (admission only).
-- The room keeps Redis's clock (TIME), never a caller's: every gateway sees the same
-- admissions and the same deadlines whatever its own clock says.
-- Admission releases arrival numbers strictly in order: `admitted` is a watermark, raised by
-- the credit `rate` earns per second (at most `cap` saved up) and by the free active slots.
-- An admitted buyer may buy until their deadline; after it their slot is someone else's.
local ROOM, NUMBERS, ORDER, ACTIVE, USED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op = ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

if op == 'OPEN' then
  -- ARGV: rate, cap, window, opens
  redis.call('HSET', ROOM, 'rate', ARGV[2], 'cap', ARGV[3], 'window', ARGV[4], 'opens', ARGV[5])
  if redis.call('HSETNX', ROOM, 'seq', 0) == 1 then
    redis.call('HSET', ROOM, 'admitted', 0, 'credit', 0, 'last', ARGV[5], 'soldout', 0)
  end
  return {'OK', 0, 0, '0', 0, now}
end

local r = redis.call('HMGET', ROOM, 'rate', 'cap', 'window', 'opens', 'seq', 'admitted',
  'credit', 'last', 'soldout')
if not r[1] then return {'NO_ROOM'} end
local rate, cap, window, opens = tonumber(r[1]), tonumber(r[2]), tonumber(r[3]), tonumber(r[4])
local seq, admitted, credit, last = tonumber(r[5]), tonumber(r[6]), tonumber(r[7]), tonumber(r[8])
local soldout = r[9] == '1'

-- Slots whose deadline passed are free again.
redis.call('ZREMRANGEBYSCORE', ACTIVE, '-inf', now)

-- A buyer whose admission passed unused (admitted, nothing spent, no slot any more).
local function lapsed(user, n)
  return n <= admitted and redis.call('HEXISTS', USED, n) == 0
    and not redis.call('ZSCORE', ACTIVE, user)
end

-- A new arrival, or one whose admission lapsed, takes the next number before admission runs,
-- so they may be admitted at once.
if op == 'JOIN' and not soldout then
  local held = redis.call('HGET', NUMBERS, ARGV[2])
  if not held or lapsed(ARGV[2], tonumber(held)) then
    seq = redis.call('HINCRBY', ROOM, 'seq', 1)
    redis.call('HSET', NUMBERS, ARGV[2], seq)
    redis.call('HSET', ORDER, seq, ARGV[2])
  end
end

-- Admit in arrival order as far as credit and free slots allow.
if now > last then
  if now > opens then
    local from = math.max(last, opens)
    credit = math.min(credit + (now - from) * rate / 1000, cap)
  end
  last = now
end
local room = cap - redis.call('ZCARD', ACTIVE)
local k = math.min(math.floor(credit), room, seq - admitted)
if soldout or now < opens then k = 0 end
for n = admitted + 1, admitted + k do
  redis.call('ZADD', ACTIVE, now + window, redis.call('HGET', ORDER, n))
end
if k > 0 then admitted = admitted + k; credit = credit - k end
redis.call('HSET', ROOM, 'admitted', admitted, 'credit', credit, 'last', last)

-- Reply: {status, number, admitted, rate (string), deadline (ms, when admitted), now (ms)}
local function reply(status, n, deadline)
  return {status, n, admitted, tostring(rate), deadline or 0, now}
end
if op == 'SOLDOUT' then
  redis.call('HSET', ROOM, 'soldout', 1)
  return reply('OK', 0)
end
if op == 'RESTOCK' then
  redis.call('HSET', ROOM, 'soldout', 0)
  return reply('OK', 0)
end
if op == 'TICK' then
  return reply(soldout and 'SOLD_OUT' or 'OK', 0)
end

local user, n = ARGV[2], tonumber(ARGV[3])
if op == 'JOIN' then
  n = tonumber(redis.call('HGET', NUMBERS, user) or '0')
  if n == 0 then return reply('SOLD_OUT', 0) end
elseif redis.call('HGET', NUMBERS, user) ~= tostring(n) then
  return reply('NOT_YOURS', n)
end
local spent = redis.call('HGET', USED, n)
if spent then
  -- The same purchase retried with its idempotency key may pass (the inventory answers it
  -- with the original reservation); anything else is a second use.
  if op == 'REDEEM' and ARGV[4] ~= '' and spent == ARGV[4] then
    return reply('REDEEMED', n)
  end
  return reply('USED', n)
end
if soldout then return reply('SOLD_OUT', n) end
if n > admitted then return reply('WAITING', n) end
local deadline = redis.call('ZSCORE', ACTIVE, user)
if not deadline then return reply('LAPSED', n) end
if op == 'REDEEM' then
  redis.call('HSET', USED, n, ARGV[4])
  redis.call('ZREM', ACTIVE, user)
  return reply('REDEEMED', n)
end
return reply('ADMITTED', n, tonumber(deadline))
