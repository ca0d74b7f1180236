-- Store one key-value entry of a session within its byte quota, and push back the expiry
-- of all the session's keys.
-- KEYS[1]  the session's key-value hash
-- KEYS[2]  the session's byte counter (keys and values together)
-- KEYS[3]  the session's state hash
-- ARGV[1]  the entry's key
-- ARGV[2]  the entry's value
-- ARGV[3]  the session's byte limit
-- ARGV[4]  the session's idle expiry, in milliseconds
-- Returns {1, total} when stored, {0, total it would have reached} when over the limit.
local old = redis.call('HSTRLEN', KEYS[1], ARGV[1])
local old_total = 0
if old > 0 or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  old_total = old + string.len(ARGV[1])
end
local total = tonumber(redis.call('GET', KEYS[2]) or '0') - old_total + string.len(ARGV[1]) + string.len(ARGV[2])
if total > tonumber(ARGV[3]) then
  return {0, total}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], total)
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ARGV[4])
end
return {1, total}
