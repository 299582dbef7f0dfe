-- What the fraud engine knows about a player, read and updated in one call.
--
-- KEYS[1] list  the player's recent submissions, newest first: "<t_ms>|<delta>"
-- KEYS[2] zset  the IPs the player used: ip -> last seen (ms)
-- ARGV[1] now, in ms
-- ARGV[2] this submission's delta
-- ARGV[3] the client IP ("" if unknown)
-- ARGV[4] how many submissions the list keeps
-- ARGV[5] the identity window, in ms
--
-- Returns {history (as it was before this submission, newest first), the
-- number of distinct IPs within the window (this one included)}.
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[5])
local history = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1)
redis.call('LPUSH', KEYS[1], ARGV[1] .. '|' .. ARGV[2])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[4]) - 1)
redis.call('PEXPIRE', KEYS[1], window)
local ips = 0
if ARGV[3] ~= '' then
    redis.call('ZADD', KEYS[2], now, ARGV[3])
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
    redis.call('PEXPIRE', KEYS[2], window)
    ips = redis.call('ZCARD', KEYS[2])
end
return {history, ips}
