-- Replaces a fan-out's record if it is still at the expected revision.
-- KEYS[1] the record (a hash: rev, state). ARGV: expected revision, new state (JSON).
-- Returns 1 when stored, 0 when another writer moved it first.
local current = redis.call('HGET', KEYS[1], 'rev')
if current ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'rev', tostring(tonumber(current) + 1), 'state', ARGV[2])
return 1
