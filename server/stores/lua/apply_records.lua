-- uses: board
-- Apply committed record states to one leaderboard period, publish its new top N.
--
-- KEYS[1] zset   score -> member "<tiebreak hex>:<user_id>"
-- KEYS[2] hash   user_id -> "<version>|<member>|<username>"
-- KEYS[3] string publication sequence number
-- KEYS[4] hash   user_id -> score of a hidden (banned or shadow-banned) user, "" if no record
-- ARGV[1] "1" for a descending board, "0" for ascending
-- ARGV[2] how many top entries to publish
-- ARGV[3] the pub/sub channel
-- ARGV[4] the leaderboard id (for the published message)
-- ARGV[5] "" or a visibility change: "hide" or "show"
-- ARGV[6] the user whose visibility changes ("" if none)
-- ARGV[7..] groups of 5: user_id, score, member, version, username
--
-- A state is applied only if its version is newer than the one held, so
-- states may arrive in any order, twice, or after a rebuild: Redis converges
-- on PostgreSQL's latest. A hidden user's record is kept (its version and
-- score) but not ranked, so nobody else sees it; showing the user ranks it
-- again. Returns {seq, rank_1, rank_2, ...} with 0-based ranks after the whole
-- batch (-1 if the user has no record here; a hidden user gets the rank their
-- score would have).
local desc = ARGV[1] == '1'
local top_n = tonumber(ARGV[2])
local FIRST = 7

local applied = 0
local change, changed_user = ARGV[5], ARGV[6]
if change ~= '' then
    local held = redis.call('HGET', KEYS[2], changed_user)
    local member = nil
    if held then
        local _
        _, member = parse(held)
    end
    if change == 'hide' then
        if redis.call('HEXISTS', KEYS[4], changed_user) == 0 then
            local score = member and redis.call('ZSCORE', KEYS[1], member)
            redis.call('HSET', KEYS[4], changed_user, score or '')
            if score then
                redis.call('ZREM', KEYS[1], member)
                applied = applied + 1
            end
        end
    else
        local score = redis.call('HGET', KEYS[4], changed_user)
        if score then
            redis.call('HDEL', KEYS[4], changed_user)
            if member and score ~= '' then
                redis.call('ZADD', KEYS[1], score, member)
                applied = applied + 1
            end
        end
    end
end

for i = FIRST, #ARGV, 5 do
    local user, score, member, version, name = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4]
    local held = redis.call('HGET', KEYS[2], user)
    local held_version, held_member = 0, nil
    if held then
        held_version, held_member = parse(held)
    end
    if version > held_version then
        redis.call('HSET', KEYS[2], user, version .. '|' .. member .. '|' .. name)
        if redis.call('HEXISTS', KEYS[4], user) == 1 then
            redis.call('HSET', KEYS[4], user, score)
        else
            if held_member and held_member ~= member then
                redis.call('ZREM', KEYS[1], held_member)
            end
            redis.call('ZADD', KEYS[1], score, member)
            applied = applied + 1
        end
    end
end

local result = {}
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
if applied > 0 then
    seq = redis.call('INCR', KEYS[3])
    local top
    if desc then
        top = redis.call('ZREVRANGE', KEYS[1], 0, top_n - 1, 'WITHSCORES')
    else
        top = redis.call('ZRANGE', KEYS[1], 0, top_n - 1, 'WITHSCORES')
    end
    -- JSON is assembled by hand: cjson prints numbers with 14 digits at most,
    -- and scores need up to 16. Redis prints a double that holds an integer
    -- as plain digits, so the score text is already valid JSON.
    local entries = {}
    for j = 1, #top, 2 do
        local user = string.sub(top[j], string.find(top[j], ':', 1, true) + 1)
        local _, _, name = parse(redis.call('HGET', KEYS[2], user))
        entries[#entries + 1] = '{"rank":' .. ((j + 1) / 2) .. ',"user_id":"' .. user
            .. '","username":' .. cjson.encode(name) .. ',"score":' .. top[j + 1] .. '}'
    end
    -- %d, not concatenation: Lua prints numbers with 14 digits, and seq has 16.
    redis.call('PUBLISH', ARGV[3], '{"leaderboard":' .. cjson.encode(ARGV[4]) .. ',"seq":' .. string.format('%d', seq)
        .. ',"entries":[' .. table.concat(entries, ',') .. ']}')
end
result[1] = seq

for i = FIRST, #ARGV, 5 do
    local held = redis.call('HGET', KEYS[2], ARGV[i])
    local rank = false
    if held then
        local _, member = parse(held)
        local hidden = redis.call('HGET', KEYS[4], ARGV[i])
        if hidden and hidden ~= '' then
            -- The rank a hidden user's score would have: their own ack looks as usual.
            rank = would_be_rank(KEYS[1], hidden, desc)
        else
            rank = rank_of(KEYS[1], member, desc)
        end
    end
    result[#result + 1] = rank or -1
end
return result
