-- Give back a nonce claim (lua/admit.lua), only if it is still this attempt's:
-- KEYS[1] the nonce key, ARGV[1] the value the attempt claimed it with. A
-- retry that has claimed the nonce since keeps its claim. Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
