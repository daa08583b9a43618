-- Judges every global descriptor of one request at once, and charges them only if none that
-- counts is over its limit ("a request is judged as a whole").
--
-- KEYS: two per descriptor: the current window's counter, the previous window's counter.
-- ARGV[1]: now (ms); ARGV[2]: 1 when something outside Redis already refused the request
--          (then nothing is charged); then five per descriptor:
--          algorithm ('F' fixed window, 'S' sliding window), limit, window (ms), hits,
--          shadow (1 = counts but never refuses).
-- Reply: {charged (0/1), then per descriptor: over (0/1), count after (or now), reset (ms)}
-- hits = 0 only checks: over when nothing is left.
local now = tonumber(ARGV[1])
local blocked = ARGV[2] == '1'
local n = (#ARGV - 2) / 5
local counts, overs, resets = {}, {}, {}
for i = 1, n do
  local a = 2 + (i - 1) * 5
  local algo, limit, window, hits = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local shadow = ARGV[a + 5] == '1'
  local elapsed = now % window
  local count = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  if algo == 'S' then
    local previous = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
    count = count + math.floor(previous * (window - elapsed) / window)
  end
  counts[i] = count
  resets[i] = window - elapsed
  local over
  if hits == 0 then over = count >= limit else over = count + hits > limit end
  overs[i] = over
  if over and not shadow then blocked = true end
end
local out = {blocked and 0 or 1}
for i = 1, n do
  local a = 2 + (i - 1) * 5
  local window, hits = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local count = counts[i]
  if not blocked and hits > 0 then
    redis.call('INCRBY', KEYS[2 * i - 1], hits)
    -- Keep the counter through the next window too: the sliding window reads it there.
    redis.call('PEXPIRE', KEYS[2 * i - 1], 2 * window)
    count = count + hits
  end
  out[#out + 1] = overs[i] and 1 or 0
  out[#out + 1] = count
  out[#out + 1] = resets[i]
end
return out
