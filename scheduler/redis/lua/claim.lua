-- A worker claims one job by id (see claim_job in _shared.lua).
-- KEYS: 1 job, 2 leases set, 3 dispatch outbox, 4 in-flight hash
-- ARGV: 1 now (ms), 2 lease (ms), 3 allowed source statuses, comma separated, 4 job id,
--       5 fair queue key prefix
return claim_job(KEYS[1], ARGV[4], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], KEYS[2],
  KEYS[3], KEYS[4], ARGV[5])
