-- Finish a job: move it to a terminal status and refund what was not delivered, once.
-- Everything charged beyond the net cost is refunded: a success costs its stored images,
-- a failure nothing, except a job cancelled after a worker claimed it, which costs it all.
-- A queued job leaves its fair queue; a processing one leaves the in-flight counts.
-- KEYS: 1 job, 2 account, 3 active set, 4 usage hash, 5 webhooks-due set, 6 leases set,
--       7 dispatch outbox, 8 in-flight hash
-- ARGV: 1 allowed source statuses (comma separated), 2 expected attempt ('' = any),
--       3 now (ms), 4 target status, 5 net cost in xTokens,
--       6 delivered images, 7 webhook first-attempt time (ms, '' = no webhook),
--       8 policy violation (0/1), 9 fair queue key prefix, 10.. field/value pairs to set
-- Returns {ok, refund, freed} | {stale, status} | {gone, ''}: freed is the images in flight
-- the job gave back to an account with a cap (room for jobs it held back), else 0.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'gone', ''} end
if not string.find(',' .. ARGV[1] .. ',', ',' .. status .. ',', 1, true) then
  return {'stale', status}
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then
  return {'stale', status}
end
local charged = tonumber(redis.call('HGET', KEYS[1], 'charged'))
local refunded = tonumber(redis.call('HGET', KEYS[1], 'refunded') or '0')
local cost = tonumber(ARGV[5])
local refund = charged - refunded - cost
if refund < 0 then refund = 0 end
if refund > 0 then
  redis.call('HINCRBY', KEYS[2], 'balance', refund)
  redis.call('HINCRBY', KEYS[1], 'refunded', refund)
  redis.call('HINCRBY', KEYS[4], 'refunded', refund)
end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'finished_ms', ARGV[3], 'cost', cost,
  unpack(ARGV, 10))
local id = redis.call('HGET', KEYS[1], 'id')
redis.call('ZREM', KEYS[3], id)
redis.call('ZREM', KEYS[6], id)
redis.call('ZREM', KEYS[7], id)
leave_fair_queue(KEYS[1], ARGV[9], id)
local freed = count_out(KEYS[1], KEYS[8])
if redis.call('HEXISTS', KEYS[2], 'max_inflight_images') == 0 then freed = 0 end
redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
redis.call('HINCRBY', KEYS[4], 'images', tonumber(ARGV[6]))
redis.call('HINCRBY', KEYS[4], 'policy_violations', tonumber(ARGV[8]))
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[7], id)
end
return {'ok', tostring(refund), freed}
