-- A player's rolling risk profile, updated after a flagged or blocked submission.
--
-- KEYS[1] hash  flags, blocks, last_risk, last_decision, last_at (ms), ewma_risk
-- KEYS[2] zset  times of recent blocks (ms), for the automatic shadow ban
-- ARGV[1] now, in ms
-- ARGV[2] "flag" or "block"
-- ARGV[3] the submission's risk
-- ARGV[4] the shadow-ban window, in ms
--
-- Returns the number of blocks within the shadow-ban window (this one included).
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[4])
local risk = tonumber(ARGV[3])
local ewma = tonumber(redis.call('HGET', KEYS[1], 'ewma_risk') or '0')
redis.call('HINCRBY', KEYS[1], ARGV[2] .. 's', 1)
redis.call('HSET', KEYS[1], 'last_risk', ARGV[3], 'last_decision', ARGV[2], 'last_at', ARGV[1],
    'ewma_risk', string.format('%.4f', 0.7 * ewma + 0.3 * risk))
redis.call('PEXPIRE', KEYS[1], 30 * 86400000)
if ARGV[2] ~= 'block' then
    return redis.call('ZCOUNT', KEYS[2], now - window, '+inf')
end
redis.call('ZADD', KEYS[2], now, ARGV[1] .. ':' .. redis.call('HGET', KEYS[1], 'blocks'))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('PEXPIRE', KEYS[2], window)
return redis.call('ZCARD', KEYS[2])
