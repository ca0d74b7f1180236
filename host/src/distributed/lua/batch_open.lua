-- Writes a batch's record (a hash), unless a run of the same step wrote it already.
-- KEYS[1] the record. ARGV[1] seconds to keep it, then field/value pairs: `base` (the input
-- without its items), `n` (items), `item:I` (each item), `next` (the next item to start),
-- `fuel`, `peak`, and for items that ended at once `r:I` (result), `s:I` (what it started)
-- and `fail` (the first failure that dooms the batch).
-- Returns 1 when written, 0 when the record was there.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
-- In slices: Lua's `unpack` takes a few thousand values at most.
local first = 2
while first <= #ARGV do
  local last = math.min(first + 1999, #ARGV)
  redis.call('HSET', KEYS[1], unpack(ARGV, first, last))
  first = last + 1
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
