-- Opens a run's record, unless another submission owns the id, gives the run its turn and
-- lists it in the fleet's run index.
-- KEYS[1] the run's record (a hash), KEYS[2] the count of the tenant's runs going,
-- KEYS[3] the fleet's run index, KEYS[4] the tenant's run index, KEYS[5] the index's
-- tenants (by their latest submission).
-- ARGV: the submission's token, seconds to keep the record, milliseconds to keep the count
-- (renewed at each submission), the run's index entry (`{submitted ms, 13 digits}:{id}`),
-- the tenant, now (Unix ms), milliseconds to keep the index, the oldest entry kept (an
-- entry of that age, without the id), the fleet's index cap, a tenant's index cap, the
-- tenants cap, the key prefix of a tenant's index, the idempotency claim (`{run}
-- {fingerprint}`, or '' for a run without a key) and its window in milliseconds, then
-- field/value pairs. KEYS[6] is the idempotency key's record (unused without a claim).
-- Returns 0 when another submission owns the record, -1 when the idempotency key stands
-- for another run (read KEYS[6]), else 1 + the run's turn: how many of the tenant's runs
-- were going when it was first submitted.
local owner = redis.call('HGET', KEYS[1], 'token')
if owner and owner ~= ARGV[1] then
  return 0
end
if ARGV[13] ~= '' then
  local held = redis.call('GET', KEYS[6])
  if held and held ~= ARGV[13] then
    return -1
  end
  if not held then
    redis.call('SET', KEYS[6], ARGV[13], 'PX', ARGV[14])
  end
end
local turn
if owner then
  turn = tonumber(redis.call('HGET', KEYS[1], 'turn')) or 0
else
  turn = math.max(redis.call('INCR', KEYS[2]) - 1, 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  -- Listed newest last, within each index's age and count.
  local caps = { tonumber(ARGV[9]), tonumber(ARGV[10]) }
  for i = 1, 2 do
    local index = KEYS[2 + i]
    redis.call('ZADD', index, 0, ARGV[4])
    redis.call('ZREMRANGEBYLEX', index, '-', '(' .. ARGV[8])
    local over = redis.call('ZCARD', index) - caps[i]
    if over > 0 then
      redis.call('ZREMRANGEBYRANK', index, 0, over - 1)
    end
    redis.call('PEXPIRE', index, ARGV[7])
  end
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[5])
  local over = redis.call('ZCARD', KEYS[5]) - tonumber(ARGV[11])
  if over > 0 then
    local idle = redis.call('ZPOPMIN', KEYS[5], over)
    for i = 1, #idle, 2 do
      redis.call('DEL', ARGV[12] .. idle[i])
    end
  end
  redis.call('PEXPIRE', KEYS[5], ARGV[7])
end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'turn', turn, unpack(ARGV, 15))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1 + turn
