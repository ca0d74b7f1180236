-- Remove one key-value entry of a session and give its bytes back.
-- KEYS[1]  the session's key-value hash
-- KEYS[2]  the session's byte counter
-- ARGV[1]  the entry's key
-- Returns 1 if the entry existed, 0 if not.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local freed = redis.call('HSTRLEN', KEYS[1], ARGV[1]) + string.len(ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DECRBY', KEYS[2], freed)
return 1
