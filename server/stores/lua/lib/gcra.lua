-- GCRA rate limits. A key holds the theoretical arrival time (TAT) in ms.
-- gcra_tat: the key's TAT, or now if that is later (one GET; pass it on below).
-- gcra_wait: ms to wait before one more request passes (0: it passes now).
-- gcra_spend: spend one request (call only when gcra_wait said 0).
local function gcra_tat(key, now)
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then
        return now
    end
    return tat
end

local function gcra_wait(tat, now, interval, burst)
    local wait = tat + interval - interval * burst - now
    if wait > 0 then
        return math.ceil(wait)
    end
    return 0
end

local function gcra_spend(key, tat, now, interval)
    local new_tat = tat + interval
    redis.call('SET', key, string.format('%d', new_tat), 'PX', math.ceil(new_tat - now) + 1)
end
