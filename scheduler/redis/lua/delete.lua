-- Delete a job's record and index entries. A job no worker has claimed yet is refunded
-- first; one a worker claimed stays charged (its work stops at the next denoising step).
-- KEYS: 1 job, 2 account, 3 user index, 4 account index, 5 active set, 6 purge set,
--       7 usage hash, 8 webhooks-due set, 9 leases set, 10 dispatch outbox,
--       11 in-flight hash
-- ARGV: 1 job id, 2 refundable statuses (comma separated), 3 fair queue key prefix
-- Returns {deleted, refund} | {gone, ''}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'gone', ''} end
local refund = 0
if string.find(',' .. ARGV[2] .. ',', ',' .. status .. ',', 1, true) then
  local charged = tonumber(redis.call('HGET', KEYS[1], 'charged'))
  local refunded = tonumber(redis.call('HGET', KEYS[1], 'refunded') or '0')
  refund = charged - refunded
  if refund > 0 then
    redis.call('HINCRBY', KEYS[2], 'balance', refund)
    redis.call('HINCRBY', KEYS[7], 'refunded', refund)
  end
end
leave_fair_queue(KEYS[1], ARGV[3], ARGV[1])
count_out(KEYS[1], KEYS[11])
redis.call('DEL', KEYS[1])
for i = 3, 6 do redis.call('ZREM', KEYS[i], ARGV[1]) end
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('ZREM', KEYS[9], ARGV[1])
redis.call('ZREM', KEYS[10], ARGV[1])
return {'deleted', tostring(refund)}
