-- Extend a worker's lease on a job it still owns; also used to record prepare results.
-- KEYS: 1 job
-- ARGV: 1 expected status, 2 expected attempt ('' = any), 3.. field/value pairs to set
-- Returns 1 when the fields were set, 0 when the job moved on or belongs to another attempt.
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
