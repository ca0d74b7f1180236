-- Adds one process's journal to the fleet's activity counters, and records what the
-- process runs now. Every key is under ARGV[1] (`{prefix}:_:activity:`):
--   tenants                    zset: tenant -> when its counters were last written (ms)
--   stats:{tenant}             hash: `{counter}:{name}` -> count, counters s (started),
--                              c (completed), f (failed), d (total µs), u (fuel), m (peak
--                              memory, added up), b{i} (duration bucket i)
--   sessions:{tenant}          zset: session -> when it last saw work (ms)
--   session:{len}:{tenant}:{session}
--                              hash: created, last, executions, failed, e:{name}, f:{name}
--   versions:{name}            zset: digest -> when that version of processor `name` was
--                              first counted (ms, made later than every version counted
--                              before it); the versions_kept latest
--   versions:{name}:{digest}   hash: `{counter}:{digest}` -> count, the counters of stats for
--                              one version, over every tenant
--   live                       zset: process -> when its snapshot expires (ms)
--   live:{process}             string: what the process runs now (JSON)
-- ARGV[2] the journal (JSON): { ttl, tenants, names, idle, max_sessions, process, live_ttl,
--   stats = [[tenant, name, started, completed, failed, duration_us, fuel, memory,
--             [i, count, ...]], ...],
--   session_rows = [[tenant, session, first_ms, last_ms, executions, failed,
--                [[name, executions, failed], ...]], ...],
--   versions = [[name, digest, started, completed, failed, duration_us, fuel, memory,
--                [i, count, ...]], ...], versions_kept,
--   live = snapshot JSON | "" when nothing runs | absent when unchanged,
--   stopped = the key prefix of sessions' stop markers (`{prefix}:_:stopped:`) }
-- ARGV[3] now (Unix ms).
-- Returns {counter rows dropped, session rows dropped} at their bounds.
local p = ARGV[1]
local j = cjson.decode(ARGV[2])
local now = tonumber(ARGV[3])
local function int(x) return string.format('%d', x) end
local tenants = p .. 'tenants'
-- Fields one name takes at most in a tenant's counters (6 + 98 buckets), and in a session.
local ROW, SESSION_ROW = 104, 2
local dropped_rows, dropped_sessions = 0, 0

local function session_key(tenant, session)
  return p .. 'session:' .. #tenant .. ':' .. tenant .. ':' .. session
end

-- Notes that `tenant` was written: tenants idle past the retention are forgotten, and at
-- the cap the one idle longest makes room.
local function touch(tenant)
  if not redis.call('ZSCORE', tenants, tenant) then
    local idle = redis.call('ZRANGEBYSCORE', tenants, '-inf', now - j.ttl, 'LIMIT', 0, 100)
    for _, old in ipairs(idle) do
      redis.call('DEL', p .. 'stats:' .. old)
      redis.call('ZREM', tenants, old)
    end
    if redis.call('ZCARD', tenants) >= j.tenants then
      local oldest = redis.call('ZPOPMIN', tenants)
      if oldest[1] then redis.call('DEL', p .. 'stats:' .. oldest[1]) end
    end
  end
  redis.call('ZADD', tenants, 'GT', now, tenant)
  redis.call('PEXPIRE', tenants, j.ttl)
end

-- Adds a row of counters to the hash `key` under `name`, unless the hash already holds
-- `rows` others; returns whether it did.
local function add_row(key, name, row, rows)
  if redis.call('HEXISTS', key, 's:' .. name) == 0
      and redis.call('HLEN', key) >= rows * ROW then
    return false
  end
  redis.call('HINCRBY', key, 's:' .. name, int(row[3]))
  if row[4] > 0 then redis.call('HINCRBY', key, 'c:' .. name, int(row[4])) end
  if row[5] > 0 then redis.call('HINCRBY', key, 'f:' .. name, int(row[5])) end
  if row[6] > 0 then redis.call('HINCRBY', key, 'd:' .. name, int(row[6])) end
  if row[7] > 0 then redis.call('HINCRBY', key, 'u:' .. name, int(row[7])) end
  if row[8] > 0 then redis.call('HINCRBY', key, 'm:' .. name, int(row[8])) end
  local buckets = row[9]
  for i = 1, #buckets, 2 do
    redis.call('HINCRBY', key, 'b' .. int(buckets[i]) .. ':' .. name, int(buckets[i + 1]))
  end
  redis.call('PEXPIRE', key, j.ttl)
  return true
end

for _, row in ipairs(j.stats) do
  local tenant, name = row[1], row[2]
  touch(tenant)
  if not add_row(p .. 'stats:' .. tenant, name, row, j.names) then
    dropped_rows = dropped_rows + 1
  end
end

-- Per version: only what the fleet ran has rows (each name one a process resolved); a new
-- version past versions_kept makes room by dropping the one first counted longest ago.
for _, row in ipairs(j.versions or {}) do
  local seen, digest = p .. 'versions:' .. row[1], row[2]
  if not redis.call('ZSCORE', seen, digest) then
    while redis.call('ZCARD', seen) >= j.versions_kept do
      local oldest = redis.call('ZPOPMIN', seen)
      if not oldest[1] then break end
      redis.call('DEL', seen .. ':' .. oldest[1])
    end
    -- After every version counted before, even within one write (or from a process whose
    -- clock is behind): the order is the order the fleet first counted them in.
    local score = now
    local newest = redis.call('ZRANGE', seen, -1, -1, 'WITHSCORES')
    if newest[2] and tonumber(newest[2]) >= score then score = tonumber(newest[2]) + 1 end
    redis.call('ZADD', seen, score, digest)
  end
  redis.call('PEXPIRE', seen, j.ttl)
  add_row(seen .. ':' .. digest, digest, row, 1)
end

-- A row that only ends work (no execution started) of a session that was stopped and whose
-- counters are gone: the ends of what the stop cancelled, which must not bring it back.
local function ends_stopped_work(row)
  local tenant, session = row[1], row[2]
  return row[5] == 0 and j.stopped
    and redis.call('EXISTS', session_key(tenant, session)) == 0
    and redis.call('EXISTS', j.stopped .. #tenant .. ':' .. tenant .. ':' .. session) == 1
end

for _, row in ipairs(j.session_rows) do
  local tenant, session = row[1], row[2]
  if not ends_stopped_work(row) then
    touch(tenant)
    local listed = p .. 'sessions:' .. tenant
    redis.call('ZREMRANGEBYSCORE', listed, '-inf', now - j.idle)
    if not redis.call('ZSCORE', listed, session)
        and redis.call('ZCARD', listed) >= j.max_sessions then
      local oldest = redis.call('ZPOPMIN', listed)
      if oldest[1] then redis.call('DEL', session_key(tenant, oldest[1])) end
    end
    redis.call('ZADD', listed, 'GT', int(row[4]), session)
    redis.call('PEXPIRE', listed, j.idle)
    local key = session_key(tenant, session)
    redis.call('HSETNX', key, 'created', int(row[3]))
    local last = tonumber(redis.call('HGET', key, 'last') or '0')
    if row[4] > last then redis.call('HSET', key, 'last', int(row[4])) end
    redis.call('HINCRBY', key, 'executions', int(row[5]))
    redis.call('HINCRBY', key, 'failed', int(row[6]))
    for _, counts in ipairs(row[7]) do
      local name = counts[1]
      if redis.call('HEXISTS', key, 'e:' .. name) == 0
          and redis.call('HLEN', key) >= 4 + j.names * SESSION_ROW then
        dropped_sessions = dropped_sessions + 1
      else
        redis.call('HINCRBY', key, 'e:' .. name, int(counts[2]))
        if counts[3] > 0 then redis.call('HINCRBY', key, 'f:' .. name, int(counts[3])) end
      end
    end
    redis.call('PEXPIRE', key, j.idle)
  end
end

local live = p .. 'live'
redis.call('ZREMRANGEBYSCORE', live, '-inf', now)
if type(j.live) == 'string' then
  if j.live == '' then
    redis.call('DEL', live .. ':' .. j.process)
    redis.call('ZREM', live, j.process)
  else
    redis.call('SET', live .. ':' .. j.process, j.live, 'PX', j.live_ttl)
    redis.call('ZADD', live, now + j.live_ttl, j.process)
    redis.call('PEXPIRE', live, j.live_ttl)
  end
end
return {dropped_rows, dropped_sessions}
