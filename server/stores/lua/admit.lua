-- uses: gcra, source
-- Admit a batch of score submissions: for each, in order, atomically
--   1. its nonce: already used -> status 1, nothing else happens;
--   2. the player's and the IP's rate limits (lib/gcra.lua): over either ->
--      status 2 with the ms to wait, nothing is spent and the nonce stays free;
--   3. spend both, claim the nonce (SET EX, with this attempt's claim value, so
--      that only this attempt can give it back: lua/release_claim.lua), and — when scoring — read and
--      update the player's history and IPs and the IP's and device's requests
--      and players (lib/source.lua): status 0.
--
-- KEYS: 11 per submission: nonce, player rate, IP rate, player history (a string
--   of 32 hex digits per submission, oldest first, at most `history length kept`:
--   t_ms and delta, each a signed 64-bit big-endian integer; deltas beyond 2^53
--   are rounded as Lua numbers are), player IPs (zset ip -> last seen), IP
--   window counter, IP previous window counter, IP players, device window
--   counter, device previous window counter, device players
-- ARGV[1..11]: now (ms), player interval (ms), player burst, IP interval (ms),
--   IP burst, "1" to score, history length kept, identity window (ms),
--   frequency window (ms), how far into the current frequency window now is
--   (0..1), most players kept per source
-- ARGV[12..]: 6 per submission: nonce TTL (s), delta, IP ("" if unknown),
--   player, "1" if the device keys are real, claim value
--
-- Returns one array per submission: {status, ms to wait, history (the string as
-- it was before this one: "" when there is none), the player's IPs, IP
-- requests, IP players, device requests, device players}; the signals are
-- 0 / "" when not scored.
local now = tonumber(ARGV[1])
local user_interval, user_burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local ip_interval, ip_burst = tonumber(ARGV[4]), tonumber(ARGV[5])
local score = ARGV[6] == '1'
local keep = tonumber(ARGV[7])
local identity, window, into = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local most = tonumber(ARGV[11])

local MIN_INT64, MAX_INT64 = -9223372036854775808, 9223372036854774784  -- 2^63 - 1024
local out = {}
for i = 0, #KEYS / 11 - 1 do
    local k, a = i * 11, 12 + i * 6
    local ip, user = ARGV[a + 2], ARGV[a + 3]
    local result = {0, 0, '', 0, 0, 1, 0, 1}
    if redis.call('EXISTS', KEYS[k + 1]) == 1 then
        result[1] = 1
    else
        local user_tat = gcra_tat(KEYS[k + 2], now)
        local wait = gcra_wait(user_tat, now, user_interval, user_burst)
        local ip_tat = 0
        if ip ~= '' then
            ip_tat = gcra_tat(KEYS[k + 3], now)
            wait = math.max(wait, gcra_wait(ip_tat, now, ip_interval, ip_burst))
        end
        if wait > 0 then
            result[1], result[2] = 2, wait
        else
            gcra_spend(KEYS[k + 2], user_tat, now, user_interval)
            if ip ~= '' then
                gcra_spend(KEYS[k + 3], ip_tat, now, ip_interval)
            end
            redis.call('SET', KEYS[k + 1], ARGV[a + 5], 'EX', tonumber(ARGV[a]))
            if score then
                -- Returned as stored, for the caller to unpack: no parsing here.
                local history = redis.call('GET', KEYS[k + 4]) or ''
                result[3] = history
                -- A double's integers, clamped to what a signed 64-bit field holds.
                local delta = math.max(MIN_INT64, math.min(tonumber(ARGV[a + 1]), MAX_INT64))
                history = history .. string.format('%016x%016x', now, delta)
                if #history > 32 * keep then
                    history = string.sub(history, -32 * keep)
                end
                redis.call('SET', KEYS[k + 4], history, 'PX', identity)
                if ip ~= '' then
                    redis.call('ZADD', KEYS[k + 5], now, ip)
                    redis.call('ZREMRANGEBYSCORE', KEYS[k + 5], '-inf', now - identity)
                    redis.call('PEXPIRE', KEYS[k + 5], identity)
                    result[4] = redis.call('ZCARD', KEYS[k + 5])
                    local seen = source_seen(KEYS[k + 6], KEYS[k + 7], KEYS[k + 8], now, into,
                        window, user, identity, most)
                    result[5], result[6] = seen[1], seen[2]
                end
                if ARGV[a + 4] == '1' then
                    local seen = source_seen(KEYS[k + 9], KEYS[k + 10], KEYS[k + 11], now, into,
                        window, user, identity, most)
                    result[7], result[8] = seen[1], seen[2]
                end
            end
        end
    end
    out[#out + 1] = result
end
return out
