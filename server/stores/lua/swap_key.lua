-- Swap a rebuilt key in: RENAME KEYS[1] to KEYS[2], or, if nothing was built
-- into KEYS[1] (RENAME would fail), delete KEYS[2] so no stale entry survives.
if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.call('RENAME', KEYS[1], KEYS[2])
end
return redis.call('DEL', KEYS[2])
