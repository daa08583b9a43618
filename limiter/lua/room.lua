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
-- ARGV[1] op: OPEN | JOIN | STATUS | REDEEM | SOLDOUT | RESTOCK | TICK (admission only);  ARGV[2] now (ms, the caller's clock;
-- admission never runs backwards: it only counts time after the latest `last`).
-- Admission releases arrival numbers strictly in order: `admitted` is a watermark, raised by
-- the credit `rate` earns per second (at most `cap` saved up) and by the free active slots.
local ROOM, NUMBERS, ORDER, ACTIVE, USED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, now = ARGV[1], tonumber(ARGV[2])

if op == 'OPEN' then
  -- ARGV: rate, cap, window, opens
  redis.call('HSET', ROOM, 'rate', ARGV[3], 'cap', ARGV[4], 'window', ARGV[5], 'opens', ARGV[6])
  if redis.call('HSETNX', ROOM, 'seq', 0) == 1 then
    redis.call('HSET', ROOM, 'admitted', 0, 'credit', 0, 'last', ARGV[6], 'soldout', 0)
  end
  return {'OK'}
end

local r = redis.call('HMGET', ROOM, 'rate', 'cap', 'window', 'opens', 'seq', 'admitted',
  'credit', 'last', 'soldout')
if not r[1] then return {'NO_ROOM'} end
local rate, cap, window, opens = tonumber(r[1]), tonumber(r[2]), tonumber(r[3]), tonumber(r[4])
local seq, admitted, credit, last = tonumber(r[5]), tonumber(r[6]), tonumber(r[7]), tonumber(r[8])
local soldout = r[9] == '1'

-- A new arrival takes the next number before admission runs, so it may be admitted at once.
if op == 'JOIN' and not soldout and not redis.call('HGET', NUMBERS, ARGV[3]) then
  seq = redis.call('HINCRBY', ROOM, 'seq', 1)
  redis.call('HSET', NUMBERS, ARGV[3], seq)
  redis.call('HSET', ORDER, seq, ARGV[3])
end

-- Admit in arrival order as far as credit and free slots allow.
redis.call('ZREMRANGEBYSCORE', ACTIVE, '-inf', now)
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
  local user = redis.call('HGET', ORDER, n)
  redis.call('ZADD', ACTIVE, now + window, user)
end
if k > 0 then admitted = admitted + k; credit = credit - k end
redis.call('HSET', ROOM, 'admitted', admitted, 'credit', credit, 'last', last)

-- Reply: {status, number, admitted, rate (string)}
if op == 'SOLDOUT' then
  redis.call('HSET', ROOM, 'soldout', 1)
  return {'OK', 0, admitted, tostring(rate)}
end
if op == 'RESTOCK' then
  redis.call('HSET', ROOM, 'soldout', 0)
  return {'OK', 0, admitted, tostring(rate)}
end
if op == 'TICK' then
  return {soldout and 'SOLD_OUT' or 'OK', 0, admitted, tostring(rate)}
end
if op == 'JOIN' then
  local user = ARGV[3]
  local n = tonumber(redis.call('HGET', NUMBERS, user) or '0')
  if n == 0 then return {'SOLD_OUT', 0, admitted, tostring(rate)} end
  return {'JOINED', n, admitted, tostring(rate)}
end
local user, n = ARGV[3], tonumber(ARGV[4])
if redis.call('HGET', NUMBERS, user) ~= tostring(n) then return {'NOT_YOURS', n, admitted, tostring(rate)} end
local spent = redis.call('HGET', USED, n)
if spent then
  -- The same purchase retried with its idempotency key may pass (the inventory answers it
  -- with the original reservation); anything else is a second use.
  if op == 'REDEEM' and ARGV[5] ~= '' and spent == ARGV[5] then
    return {'REDEEMED', n, admitted, tostring(rate)}
  end
  return {'USED', n, admitted, tostring(rate)}
end
if soldout then return {'SOLD_OUT', n, admitted, tostring(rate)} end
if op == 'STATUS' then
  if n <= admitted then return {'ADMITTED', n, admitted, tostring(rate)} end
  return {'WAITING', n, admitted, tostring(rate)}
end
if op == 'REDEEM' then
  if n > admitted then return {'WAITING', n, admitted, tostring(rate)} end
  redis.call('HSET', USED, n, ARGV[5])
  redis.call('ZREM', ACTIVE, user)
  return {'REDEEMED', n, admitted, tostring(rate)}
end
return {'BAD_OP'}
