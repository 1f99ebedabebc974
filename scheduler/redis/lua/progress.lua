-- A worker records a processing job's denoising progress, only while its attempt owns the
-- job: a worker that lost it (cancelled, finished, taken over) leaves the record alone.
-- KEYS: 1 job
-- ARGV: 1 attempt, 2 progress ("<attempt>:<steps done>:<steps total>")
-- Returns 1 when written, 0 when the job moved on or belongs to another attempt.
local current = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if current[1] ~= 'processing' or current[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
return 1
