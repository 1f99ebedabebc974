-- A prepared job joins the fair queue of its GPU queue, with the prepare stage's results,
-- only while it is still queued (a job cancelled meanwhile stays out). Its virtual finish
-- tag is where its account's previous job there ends, or the queue's virtual time if the
-- account has fallen behind it, plus its images divided by the account's weight: each
-- account gets images in proportion to its weight, and one that floods the queue does not
-- delay another's next job by more than about one job per busy account.
-- A job already waiting keeps its tag (the outbox may send it here again).
-- KEYS: 1 job, 2 fair queue, 3 fair clock, 4 fair tags, 5 account
-- ARGV: 1 job id, 2 GPU queue name, 3.. field/value pairs to set
-- Returns 1 when the job waits in the queue, 0 when it is no longer queued.
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'queue', ARGV[2], unpack(ARGV, 3))
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 1 end
local f = redis.call('HMGET', KEYS[1], 'account', 'image_count')
local weight = tonumber(redis.call('HGET', KEYS[5], 'weight') or '') or 1
local vt = tonumber(redis.call('HGET', KEYS[3], 'vt') or '0')
local last = tonumber(redis.call('HGET', KEYS[4], f[1]) or '0')
local tag = math.max(vt, last) + tonumber(f[2]) / weight
redis.call('HSET', KEYS[4], f[1], tag)
redis.call('ZADD', KEYS[2], tag, ARGV[1])
return 1
