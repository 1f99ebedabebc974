-- Sliding-window rate limit: the previous fixed window counts in proportion to how much
-- of it still overlaps the sliding window.
-- KEYS: 1 current window counter, 2 previous window counter
-- ARGV: 1 limit, 2 fraction of the current window elapsed (0..1), 3 window length (ms)
-- Returns {allowed (0/1), current count, previous count}
local limit = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local estimate = previous * (1 - tonumber(ARGV[2])) + current
if estimate + 1 > limit then return {0, current, previous} end
current = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return {1, current, previous}
