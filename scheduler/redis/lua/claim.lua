-- A worker claims a job: queued -> processing, or takes over a processing job whose
-- claimant stopped renewing its lease. Each claim gets a new attempt number.
-- KEYS: 1 job, 2 leases set, 3 dispatch outbox
-- ARGV: 1 now (ms), 2 lease (ms), 3 allowed source statuses, comma separated, 4 job id
-- Returns {claimed, attempt} | {busy, lease_until_ms} | {terminal, status} | {gone, ''}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'gone', ''} end
if not string.find(',' .. ARGV[3] .. ',', ',' .. status .. ',', 1, true) then
  return {'terminal', status}
end
local now = tonumber(ARGV[1])
if status == 'processing' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms') or '0')
  if lease > now then return {'busy', tostring(lease)} end
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
local lease_until = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'processing', 'lease_until_ms', lease_until)
redis.call('HSETNX', KEYS[1], 'started_ms', ARGV[1])
redis.call('ZADD', KEYS[2], lease_until, ARGV[4])
-- Claimed: from now on the lease, not the outbox, brings the job back if its worker dies.
redis.call('ZREM', KEYS[3], ARGV[4])
return {'claimed', tostring(attempt)}
