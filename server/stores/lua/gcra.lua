-- A rate limit (GCRA): may one more request pass now?
--
-- KEYS[1] string  the theoretical arrival time (TAT), in ms
-- ARGV[1] now, in ms (the caller's clock)
-- ARGV[2] emission interval in ms (1000 / rate per second)
-- ARGV[3] burst: requests allowed at once above the rate
--
-- Returns 0 if the request passes (and spends its share), else the number of
-- ms to wait before it would pass (nothing is spent). The key expires once it
-- no longer limits anything.
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = interval * tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
    tat = now
end
local new_tat = tat + interval
local wait = new_tat - tolerance - now
if wait > 0 then
    return math.ceil(wait)
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(new_tat - now) + 1)
return 0
