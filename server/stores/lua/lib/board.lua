-- A leaderboard period's keys (see apply_records.lua): the zset of ranked
-- members and the hash user_id -> "<version>|<member>|<username>".

-- version, member, username of a hash entry.
local function parse(meta)
    local a = string.find(meta, '|', 1, true)
    local b = string.find(meta, '|', a + 1, true)
    return tonumber(string.sub(meta, 1, a - 1)), string.sub(meta, a + 1, b - 1), string.sub(meta, b + 1)
end

-- The 0-based rank of a member (false if it is not ranked).
local function rank_of(ranked, member, desc)
    if desc then
        return redis.call('ZREVRANK', ranked, member)
    end
    return redis.call('ZRANK', ranked, member)
end

-- The 0-based rank a score would have if it were ranked (a hidden user's).
local function would_be_rank(ranked, score, desc)
    if desc then
        return redis.call('ZCOUNT', ranked, '(' .. score, '+inf')
    end
    return redis.call('ZCOUNT', ranked, '-inf', '(' .. score)
end
