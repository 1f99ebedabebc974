-- Extend the lease of a job this attempt still owns.
-- KEYS: 1 job, 2 leases set
-- ARGV: 1 attempt, 2 new lease end (ms), 3 job id
-- Returns 1 when renewed, 0 when the job moved on or belongs to another attempt.
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return 0 end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_until_ms', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
