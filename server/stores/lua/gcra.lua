-- uses: gcra
-- A rate limit (GCRA, lib/gcra.lua): may one more request pass now?
--
-- KEYS[1] string  the theoretical arrival time (TAT), in ms
-- ARGV[1] now, in ms (the caller's clock)
-- ARGV[2] emission interval in ms (1000 / rate per second)
-- ARGV[3] burst: requests allowed at once above the rate
--
-- Returns 0 if the request passes (and spends its share), else the number of
-- ms to wait before it would pass (nothing is spent). The key expires once it
-- no longer limits anything.
local now, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = gcra_tat(KEYS[1], now)
local wait = gcra_wait(tat, now, interval, tonumber(ARGV[3]))
if wait == 0 then
    gcra_spend(KEYS[1], tat, now, interval)
end
return wait
