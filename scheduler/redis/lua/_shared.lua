-- Functions shared by the scripts that claim, finish and delete jobs: scripts.py puts this
-- file in front of each of them, so a claim and its in-flight count stay one atomic change.
--
-- In-flight images: the job's `inflight` field holds the images its first claim counted,
-- so a job counts once however often it is taken over (a lapsed lease), and leaves the
-- count once, on whichever path ends its processing (finish, fail, cancel, delete).
local function count_in(job_key, inflight_key)
  local f = redis.call('HMGET', job_key, 'account', 'queue', 'image_count', 'inflight')
  if f[4] then return end
  redis.call('HSET', job_key, 'inflight', f[3])
  redis.call('HINCRBY', inflight_key, 'acct:' .. f[1], f[3])
  if f[2] then redis.call('HINCRBY', inflight_key, 'queue:' .. f[2], f[3]) end
end

local function drop_field(hash, field, by)
  if redis.call('HINCRBY', hash, field, -by) <= 0 then redis.call('HDEL', hash, field) end
end

-- Takes a job off the in-flight counts; returns the images it counted (0 when none).
local function count_out(job_key, inflight_key)
  local f = redis.call('HMGET', job_key, 'account', 'queue', 'inflight')
  if not f[3] then return 0 end
  local images = tonumber(f[3])
  drop_field(inflight_key, 'acct:' .. f[1], images)
  if f[2] then drop_field(inflight_key, 'queue:' .. f[2], images) end
  redis.call('HDEL', job_key, 'inflight')
  return images
end

-- Removes a job from the fair queue it waits in, if any.
local function leave_fair_queue(job_key, fair_prefix, id)
  local queue = redis.call('HGET', job_key, 'queue')
  if queue then redis.call('ZREM', fair_prefix .. queue, id) end
end

-- queued -> processing, or a takeover of a processing job whose lease lapsed, under a new
-- attempt number. Returns {claimed, attempt} | {busy, lease_until_ms} | {terminal, status}
-- | {gone, ''}.
local function claim_job(job_key, id, now, lease_ms, sources, leases_key, outbox_key,
                         inflight_key, fair_prefix)
  local status = redis.call('HGET', job_key, 'status')
  if not status then return {'gone', ''} end
  if not string.find(',' .. sources .. ',', ',' .. status .. ',', 1, true) then
    return {'terminal', status}
  end
  if status == 'processing' then
    local lease = tonumber(redis.call('HGET', job_key, 'lease_until_ms') or '0')
    if lease > now then return {'busy', tostring(lease)} end
  end
  local attempt = redis.call('HINCRBY', job_key, 'attempt', 1)
  local lease_until = now + lease_ms
  redis.call('HSET', job_key, 'status', 'processing', 'lease_until_ms', lease_until)
  redis.call('HSETNX', job_key, 'started_ms', now)
  redis.call('ZADD', leases_key, lease_until, id)
  -- Claimed: from now on the lease, not the outbox, brings the job back if its worker dies.
  redis.call('ZREM', outbox_key, id)
  count_in(job_key, inflight_key)
  leave_fair_queue(job_key, fair_prefix, id)
  return {'claimed', tostring(attempt)}
end

