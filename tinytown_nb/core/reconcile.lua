-- File records again in the state indexes, from what the records say now (status.reconcile).
-- KEYS      agent or task record keys (tt:{town}:agent:{id} / tt:{town}:task:{id})
-- ARGV[1]   the town's key prefix, 'tt:{town}:'
-- For each record: removed from every index entry it should not be in, added to the ones
-- it should (a missing record is removed everywhere). Index keys are described in
-- transition.lua and keys.py. Returns how many records were filed.
local P = ARGV[1]
-- the tables below are filled in from models.py when the script is loaded (transitions.py)
local ALIAS = {{ALIASES}}
local TASK_STATES = {{TASK_STATES}}
local AGENT_STATES = {{AGENT_STATES}}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function norm(raw)
  if type(raw) ~= 'string' then return raw end
  local s = string.lower(raw)
  return ALIAS[s] or s
end
local filed = 0
for _, key in ipairs(KEYS) do
  local kind, id = string.match(string.sub(key, #P + 1), '^(%a+):([^:]+)$')
  local ok, h = pcall(redis.call, 'HMGET', key, 'state', 'assigned_to')
  local exists = ok and redis.call('EXISTS', key) == 1
  local s = exists and norm(h[1]) or nil
  if kind == 'task' then
    if exists and not TASK_STATES[s or ''] then s = 'pending' end
    local owner = exists and h[2] or nil
    for state in pairs(TASK_STATES) do
      if state ~= s then redis.call('ZREM', P .. 'index:task-state:' .. state, id) end
    end
    local old = redis.call('HGET', P .. 'index:task-owner', id)
    if old and old ~= owner then pcall(redis.call, 'ZREM', P .. 'index:task-agent:' .. old, id) end
    if exists then
      redis.call('ZADD', P .. 'index:tasks', 'NX', now, id)
      redis.call('ZADD', P .. 'index:task-state:' .. s, 'NX', now, id)
      if owner then
        pcall(redis.call, 'ZADD', P .. 'index:task-agent:' .. owner, 'NX', now, id)
        redis.call('HSET', P .. 'index:task-owner', id, owner)
      else
        redis.call('HDEL', P .. 'index:task-owner', id)
      end
    else
      redis.call('ZREM', P .. 'index:tasks', id)
      redis.call('HDEL', P .. 'index:task-owner', id)
    end
    filed = filed + 1
  elseif kind == 'agent' then
    if exists and not AGENT_STATES[s or ''] then s = 'starting' end
    for state in pairs(AGENT_STATES) do
      if state ~= s then redis.call('SREM', P .. 'index:agent-state:' .. state, id) end
    end
    if exists then
      redis.call('SADD', P .. 'index:agents', id)
      redis.call('SADD', P .. 'index:agent-state:' .. s, id)
    else
      redis.call('SREM', P .. 'index:agents', id)
    end
    filed = filed + 1
  end
end
return filed
