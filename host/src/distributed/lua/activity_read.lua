-- Reads the fleet's activity counters (keys as in activity_flush.lua) as one JSON document:
-- { live = [snapshot JSON, ...], stats = { tenant = [field, value, ...] },
--   sessions = { tenant = { session = [field, value, ...] } }, counted = { tenant = n } }.
-- ARGV[1] the key prefix, ARGV[2] what: `stats` (counters and session counts), `sessions`
-- (the sessions themselves), `session` (one); ARGV[3] the tenant (empty: every tenant),
-- ARGV[4] the session, ARGV[5] now (Unix ms), ARGV[6] how long an idle session lasts (ms),
-- ARGV[7] most sessions listed in all (each tenant's most recent first).
local p, what, tenant, session = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, idle, most = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local out = { live = {}, stats = {}, sessions = {}, counted = {} }

local processes = redis.call('ZRANGEBYSCORE', p .. 'live', now, '+inf')
for _, process in ipairs(processes) do
  local snapshot = redis.call('GET', p .. 'live:' .. process)
  if snapshot then table.insert(out.live, snapshot) end
end

local function session_key(t, s)
  return p .. 'session:' .. #t .. ':' .. t .. ':' .. s
end

local tenants
if tenant ~= '' then
  tenants = { tenant }
else
  tenants = redis.call('ZRANGE', p .. 'tenants', 0, -1)
end

if what == 'session' then
  local fields = redis.call('HGETALL', session_key(tenant, session))
  if #fields > 0 then out.sessions[tenant] = { [session] = fields } end
  return cjson.encode(out)
end

local left = most
for _, t in ipairs(tenants) do
  local listed = p .. 'sessions:' .. t
  if what == 'stats' then
    local fields = redis.call('HGETALL', p .. 'stats:' .. t)
    if #fields > 0 then out.stats[t] = fields end
    out.counted[t] = redis.call('ZCOUNT', listed, now - idle, '+inf')
  elseif left > 0 then
    local ids = redis.call('ZREVRANGEBYSCORE', listed, '+inf', now - idle, 'LIMIT', 0, left)
    left = left - #ids
    local found = {}
    local any = false
    for _, s in ipairs(ids) do
      local fields = redis.call('HGETALL', session_key(t, s))
      if #fields > 0 then
        found[s] = fields
        any = true
      end
    end
    if any then out.sessions[t] = found end
  end
end
return cjson.encode(out)
