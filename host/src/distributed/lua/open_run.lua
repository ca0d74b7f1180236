-- Opens a run's record, unless another submission owns the id, and gives the run its turn.
-- KEYS[1] the run's record (a hash), KEYS[2] the count of the tenant's runs going.
-- ARGV: the submission's token, seconds to keep the record, milliseconds to keep the count
-- (renewed at each submission), then field/value pairs.
-- Returns 0 when another submission owns the record, else 1 + the run's turn: how many of
-- the tenant's runs were going when it was first submitted.
local owner = redis.call('HGET', KEYS[1], 'token')
if owner and owner ~= ARGV[1] then
  return 0
end
local turn
if owner then
  turn = tonumber(redis.call('HGET', KEYS[1], 'turn')) or 0
else
  turn = math.max(redis.call('INCR', KEYS[2]) - 1, 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'turn', turn, unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1 + turn
