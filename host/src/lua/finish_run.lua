-- Records a run's outcome once and announces it on the event stream.
-- KEYS[1] the run's record (a hash), KEYS[2] the event stream.
-- ARGV: result document, status (ok|failed), retention seconds, stream length kept,
--       run id, now (Unix ms).
-- Returns 1 when this call recorded the outcome, 0 when one was recorded already.
if redis.call('HEXISTS', KEYS[1], 'result') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'result', ARGV[1], 'status', ARGV[2], 'finished', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
  'type', 'run', 'run', ARGV[5], 'status', ARGV[2], 'result', ARGV[1])
return 1
