-- Set fields on a job only while it is still in the expected status (the prepare stage
-- records its results this way, so a job cancelled meanwhile stays cancelled).
-- KEYS: 1 job
-- ARGV: 1 expected status, 2.. field/value pairs
-- Returns 1 when the fields were set, 0 otherwise.
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
