-- uses: source
-- Note a request of a player from an IP or a device (lib/source.lua).
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
-- Returns {requests in the last window before this one, distinct players}.
return source_seen(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), tonumber(ARGV[2]),
    tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
