-- Records that one item of a batch ended, and starts the next item if the batch goes on.
-- Each call writes what its item brings (its result) and a few counters: a batch of N
-- items costs O(N) in all, whatever N.
-- KEYS[1] the batch's record (see batch_open.lua). ARGV: the item's index, its result
-- (JSON), its fuel, its peak memory, and the failure that dooms the batch (JSON `[index,
-- error]`, or '' when it does not).
-- Returns {started, item, doomed}: the index of the item this end starts (-1 for none, -2
-- when the record has expired), that item's state (JSON) or false, and 1 when the batch
-- is doomed (0 otherwise).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-2, false, 0}
end
local index = ARGV[1]
if tonumber(index) >= tonumber(redis.call('HGET', KEYS[1], 'n')) then
  return {-1, false, redis.call('HEXISTS', KEYS[1], 'fail')}
end
if redis.call('HSETNX', KEYS[1], 'r:' .. index, ARGV[2]) == 0 then
  -- The item's job ran twice: start again what it started then, if that has not ended.
  local started = tonumber(redis.call('HGET', KEYS[1], 's:' .. index) or '-1')
  if started < 0 or redis.call('HEXISTS', KEYS[1], 'r:' .. started) == 1 then
    return {-1, false, redis.call('HEXISTS', KEYS[1], 'fail')}
  end
  return {started, redis.call('HGET', KEYS[1], 'item:' .. started),
    redis.call('HEXISTS', KEYS[1], 'fail')}
end
redis.call('HINCRBY', KEYS[1], 'fuel', ARGV[3])
local peak = tonumber(redis.call('HGET', KEYS[1], 'peak') or '0')
if tonumber(ARGV[4]) > peak then
  redis.call('HSET', KEYS[1], 'peak', ARGV[4])
end
if ARGV[5] ~= '' then
  redis.call('HSETNX', KEYS[1], 'fail', ARGV[5])
end
local doomed = redis.call('HEXISTS', KEYS[1], 'fail')
local started = -1
local item = false
if doomed == 0 then
  local next = tonumber(redis.call('HGET', KEYS[1], 'next'))
  if next < tonumber(redis.call('HGET', KEYS[1], 'n')) then
    started = next
    redis.call('HSET', KEYS[1], 'next', next + 1)
    item = redis.call('HGET', KEYS[1], 'item:' .. next)
  end
end
redis.call('HSET', KEYS[1], 's:' .. index, started)
return {started, item, doomed}
