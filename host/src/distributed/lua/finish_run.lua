-- Records a run's outcome once and announces it on the event stream.
-- KEYS[1] the run's record (a hash), KEYS[2] the event stream, KEYS[3] the count of the
-- run's tenant's runs going (one less once this one has ended).
-- ARGV: result document, status (ok|failed|cancelled), retention seconds, stream length kept,
--       run id, now (Unix ms), the largest result announced with the outcome (bytes; a
--       larger one is read from the record), the document's signature (empty without a
--       fleet key).
-- Returns 1 when this call recorded the outcome, 0 when one was recorded already.
if redis.call('HEXISTS', KEYS[1], 'result') == 1 then
  return 0
end
if redis.call('HEXISTS', KEYS[1], 'turn') == 1 and redis.call('DECR', KEYS[3]) <= 0 then
  redis.call('DEL', KEYS[3])
end
redis.call('HSET', KEYS[1], 'result', ARGV[1], 'resultMac', ARGV[8], 'status', ARGV[2],
  'finished', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if #ARGV[1] <= tonumber(ARGV[7]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
    'type', 'run', 'run', ARGV[5], 'status', ARGV[2], 'result', ARGV[1], 'mac', ARGV[8])
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
    'type', 'run', 'run', ARGV[5], 'status', ARGV[2])
end
return 1
