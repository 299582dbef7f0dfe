-- uses: board
-- Read a leaderboard period: a range of ranks, the ranks around a user, or given users.
--
-- KEYS[1] zset, KEYS[2] hash, KEYS[3] hidden users' hash (see apply_records.lua)
-- ARGV[1] "1" descending, "0" ascending
-- ARGV[2] mode: "range" | "around" | "users"
--   range:  ARGV[3] first rank (0-based), ARGV[4] count, ARGV[5] optional anchor user:
--           if given and still ranked, start right after it (keyset paging)
--   around: ARGV[3] user_id, ARGV[4] radius
--   users:  ARGV[3..] user ids
-- Returns a flat list of {rank0, user_id, username, score} quadruples
-- (score as a string), in rank order for range/around, argument order for users
-- (users without a record are left out). A hidden user is in no range, but
-- "users" still answers for them with the rank their score would have, so a
-- shadow-banned player sees their own score as if nothing happened.
local desc = ARGV[1] == '1'
local mode = ARGV[2]

local function range(first, last, out)
    if last < first then
        return out
    end
    local rows
    if desc then
        rows = redis.call('ZREVRANGE', KEYS[1], first, last, 'WITHSCORES')
    else
        rows = redis.call('ZRANGE', KEYS[1], first, last, 'WITHSCORES')
    end
    for j = 1, #rows, 2 do
        local user = string.sub(rows[j], string.find(rows[j], ':', 1, true) + 1)
        local _, _, name = parse(redis.call('HGET', KEYS[2], user))
        out[#out + 1] = first + (j - 1) / 2
        out[#out + 1] = user
        out[#out + 1] = name
        out[#out + 1] = rows[j + 1]
    end
    return out
end

if mode == 'range' then
    local first, count = tonumber(ARGV[3]), tonumber(ARGV[4])
    if ARGV[5] and ARGV[5] ~= '' then
        local held = redis.call('HGET', KEYS[2], ARGV[5])
        if held then
            local _, member = parse(held)
            local r = rank_of(KEYS[1], member, desc)
            if r then
                first = r + 1
            end
        end
    end
    return range(first, first + count - 1, {})
elseif mode == 'around' then
    local held = redis.call('HGET', KEYS[2], ARGV[3])
    if not held then
        return {}
    end
    local _, member = parse(held)
    local r = rank_of(KEYS[1], member, desc)
    if not r then
        return {}
    end
    local radius = tonumber(ARGV[4])
    local first = r - radius
    if first < 0 then
        first = 0
    end
    return range(first, r + radius, {})
else
    local out = {}
    for i = 3, #ARGV do
        local held = redis.call('HGET', KEYS[2], ARGV[i])
        if held then
            local _, member, name = parse(held)
            local r = rank_of(KEYS[1], member, desc)
            local score = nil
            if r then
                score = redis.call('ZSCORE', KEYS[1], member)
            else
                score = redis.call('HGET', KEYS[3], ARGV[i])
                if score and score ~= '' then
                    r = would_be_rank(KEYS[1], score, desc)
                else
                    score = nil
                end
            end
            if score then
                out[#out + 1] = r
                out[#out + 1] = ARGV[i]
                out[#out + 1] = name
                out[#out + 1] = score
            end
        end
    end
    return out
end
