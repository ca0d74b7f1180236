-- Compare-and-set a session's state, and push back the expiry of all the session's keys.
-- KEYS[1]  the session's state hash (fields: version, sha256, state)
-- KEYS[2]  the session's key-value hash
-- KEYS[3]  the session's key-value byte counter
-- ARGV[1]  the expected version, or "" when the session should have no state yet
-- ARGV[2]  the new version
-- ARGV[3]  SHA-256 (hex) of the new state's RFC 8785 canonical JSON
-- ARGV[4]  the new state (JSON)
-- ARGV[5]  the session's idle expiry, in milliseconds
-- Returns {1} when stored, {0, current version or ""} when the state had moved.
local current = redis.call('HGET', KEYS[1], 'version')
if not current then
  current = ''
end
if current ~= ARGV[1] then
  return {0, current}
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'sha256', ARGV[3], 'state', ARGV[4])
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ARGV[5])
end
return {1}
