-- Opens a run's record, unless another submission owns the id.
-- KEYS[1] the run's record (a hash). ARGV: the submission's token, seconds to keep the
-- record, then field/value pairs.
-- Returns 1 when this submission owns the record (new, or its own from an earlier try),
-- 0 when another submission does.
local owner = redis.call('HGET', KEYS[1], 'token')
if owner and owner ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'token', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
