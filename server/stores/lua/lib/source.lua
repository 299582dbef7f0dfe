-- What the fraud engine knows about a source of requests (an IP or a device).
-- source_seen notes one request of `user` and returns {requests in the last
-- frequency window before this one (a sliding estimate from two fixed
-- windows), distinct players within the identity window (this one included)}.
--   current, previous: the counters of the current and previous fixed windows
--   users: zset user_id -> last seen (ms); at most `most` are remembered
--   into: how far into the current window now is, from 0 to 1
local function source_seen(current, previous, users, now, into, window, user, identity, most)
    local count = redis.call('INCR', current) - 1
    if count == 0 then
        redis.call('PEXPIRE', current, 2 * window)
    end
    local before = tonumber(redis.call('GET', previous) or '0')
    local recent = math.floor(count + before * (1 - into))
    redis.call('ZADD', users, now, user)
    redis.call('ZREMRANGEBYSCORE', users, '-inf', now - identity)
    local seen = redis.call('ZCARD', users)
    if seen > most then
        redis.call('ZREMRANGEBYRANK', users, 0, seen - most - 1)
        seen = most
    end
    redis.call('PEXPIRE', users, identity)
    return {recent, seen}
end
