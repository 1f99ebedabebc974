-- Accept a generation: idempotency check, debit, record and indexes, all or nothing.
-- KEYS: 1 account, 2 job, 3 idempotency key, 4 user index, 5 account index,
--       6 active set, 7 purge set, 8 usage hash, 9 dispatch outbox
-- ARGV: 1 job id, 2 cost, 3 fingerprint ('' = no Idempotency-Key), 4 idempotency TTL (s),
--       5 created (ms), 6 deadline (ms), 7 purge time (ms), 8 time (ms) at which the tick
--       sends the job unless the API reports it sent, 9.. job hash field/value pairs
-- Returns {outcome, detail}: accepted|replay|conflict -> job id; insufficient -> balance;
-- no_account -> ''.
local fingerprint = ARGV[3]
if fingerprint ~= '' then
  local previous = redis.call('GET', KEYS[3])
  if previous then
    local sep = string.find(previous, '|', 1, true)
    local seen, id = string.sub(previous, 1, sep - 1), string.sub(previous, sep + 1)
    if seen == fingerprint then return {'replay', id} end
    return {'conflict', id}
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'no_account', ''} end
local balance = tonumber(redis.call('HGET', KEYS[1], 'balance') or '0')
local cost = tonumber(ARGV[2])
if balance < cost then return {'insufficient', tostring(balance)} end
redis.call('HINCRBY', KEYS[1], 'balance', -cost)
redis.call('HSET', KEYS[2], unpack(ARGV, 9))
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[6], ARGV[6], ARGV[1])
redis.call('ZADD', KEYS[7], ARGV[7], ARGV[1])
redis.call('ZADD', KEYS[9], ARGV[8], ARGV[1])
redis.call('HINCRBY', KEYS[8], 'requests', 1)
redis.call('HINCRBY', KEYS[8], 'debited', cost)
if fingerprint ~= '' then
  redis.call('SET', KEYS[3], fingerprint .. '|' .. ARGV[1], 'EX', ARGV[4])
end
return {'accepted', ARGV[1]}
