-- A processing job whose worker stopped renewing its lease (it died) goes back to the
-- front of its fair queue, at the queue's virtual time, ahead of every waiting job: it
-- was taken fairly once already, and its account paid for it in virtual time then.
-- KEYS: 1 job, 2 fair queue, 3 fair clock
-- ARGV: 1 job id, 2 now (ms), 3 GPU queue name
-- Returns 1 when the job waits in the queue, 0 when it is not a lapsed processing job.
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms') or '0') > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSETNX', KEYS[1], 'queue', ARGV[3])
local vt = redis.call('HGET', KEYS[3], 'vt') or '0'
redis.call('ZADD', KEYS[2], 'NX', vt, ARGV[1])
return 1
