-- A GPU worker holding `wanted` messages of a queue claims the fairest claimable jobs
-- waiting in it, lowest virtual finish tag first (see claim_job in _shared.lua). A queued
-- job whose account is at its cap on images in flight is skipped and keeps its place; a
-- job whose lease is alive (its worker is on it), finished or deleted leaves the queue.
-- KEYS: 1 fair queue, 2 fair clock, 3 leases set, 4 dispatch outbox, 5 in-flight hash
-- ARGV: 1 now (ms), 2 lease (ms), 3 allowed source statuses, 4 wanted, 5 job key prefix,
--       6 account key prefix, 7 fair queue key prefix, 8 most entries to look at,
--       9 rate window (ms)
-- Returns {id, attempt, id, attempt, ...} of the jobs claimed.
local now, lease_ms, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local limit, window = tonumber(ARGV[8]), tonumber(ARGV[9])
local vt = tonumber(redis.call('HGET', KEYS[2], 'vt') or '0')
local caps, inflight, claimed = {}, {}, {}
local held, seen = 0, 0

-- Whether a job of `account` with `images` would take it past its cap.
local function capped(account, images)
  if caps[account] == nil then
    local cap = redis.call('HGET', ARGV[6] .. account, 'max_inflight_images')
    caps[account] = tonumber(cap or '') or false
    inflight[account] = tonumber(redis.call('HGET', KEYS[5], 'acct:' .. account) or '0')
  end
  local cap = caps[account]
  -- A job bigger than the cap still runs, alone: otherwise it would wait forever.
  return cap and inflight[account] > 0 and inflight[account] + images > cap
end

while #claimed < 2 * wanted and seen < limit do
  local entries = redis.call('ZRANGE', KEYS[1], held, held + 31, 'WITHSCORES')
  if #entries == 0 then break end
  for i = 1, #entries, 2 do
    local id, tag = entries[i], tonumber(entries[i + 1])
    local job_key = ARGV[5] .. id
    local f = redis.call('HMGET', job_key, 'status', 'account', 'image_count')
    seen = seen + 1
    if f[1] == 'queued' and capped(f[2], tonumber(f[3])) then
      held = held + 1
    else
      local outcome = claim_job(job_key, id, now, lease_ms, ARGV[3], KEYS[3], KEYS[4],
        KEYS[5], ARGV[7])
      redis.call('ZREM', KEYS[1], id)
      if outcome[1] == 'claimed' then
        claimed[#claimed + 1] = id
        claimed[#claimed + 1] = outcome[2]
        if f[2] then inflight[f[2]] = (inflight[f[2]] or 0) + tonumber(f[3]) end
        if tag > vt then vt = tag end
      end
    end
    if #claimed >= 2 * wanted or seen >= limit then break end
  end
end

if #claimed > 0 then
  redis.call('HSET', KEYS[2], 'vt', vt)
  -- The queue's rate: jobs taken per second over windows of `window` ms, smoothed; a
  -- window that ends after a long idle time starts the measure again.
  local c = redis.call('HMGET', KEYS[2], 'window_ms', 'window_jobs', 'rate')
  local started, jobs = tonumber(c[1] or ''), tonumber(c[2] or '0') + #claimed / 2
  if not started or now - started > 10 * window then
    -- This pick opens the window: the rate counts the jobs taken after it.
    redis.call('HSET', KEYS[2], 'window_ms', now, 'window_jobs', 0)
    redis.call('HDEL', KEYS[2], 'rate')
  elseif now - started >= window then
    local sample = jobs * 1000 / (now - started)
    local rate = tonumber(c[3] or '')
    if rate then sample = 0.5 * sample + 0.5 * rate end
    redis.call('HSET', KEYS[2], 'window_ms', now, 'window_jobs', 0, 'rate', sample)
  else
    redis.call('HSET', KEYS[2], 'window_ms', started, 'window_jobs', jobs)
  end
end
return claimed
