-- What the fraud engine knows about a source of requests (an IP or a device).
--
-- KEYS[1] string  requests in the current frequency window
-- KEYS[2] string  requests in the previous frequency window
-- KEYS[3] zset    the players seen from this source: user_id -> last seen (ms)
-- ARGV[1] now, in ms
-- ARGV[2] how far into the current window now is, from 0 to 1
-- ARGV[3] the frequency window, in ms
-- ARGV[4] the player
-- ARGV[5] the identity window, in ms
-- ARGV[6] the most players kept per source (the oldest are forgotten)
--
-- Returns {requests in the last window before this one (a sliding estimate
-- from the two fixed windows), distinct players within the identity window
-- (this one included)}.
local now = tonumber(ARGV[1])
local frequency_window = tonumber(ARGV[3])
local identity_window = tonumber(ARGV[5])
local current = redis.call('INCR', KEYS[1]) - 1
if current == 0 then
    redis.call('PEXPIRE', KEYS[1], 2 * frequency_window)
end
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local recent = math.floor(current + previous * (1 - tonumber(ARGV[2])))
redis.call('ZADD', KEYS[3], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - identity_window)
local users = redis.call('ZCARD', KEYS[3])
local most = tonumber(ARGV[6])
if users > most then
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, users - most - 1)
    users = most
end
redis.call('PEXPIRE', KEYS[3], identity_window)
return {recent, users}
