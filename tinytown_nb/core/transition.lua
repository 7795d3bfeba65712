-- One atomic state change of an agent or task record, with its event(s).
-- KEYS[1]   the record hash (tt:{town}:agent:{id} or tt:{town}:task:{id})
-- KEYS[2..] event streams: the town stream first, then per-agent streams
-- ARGV[1]   JSON spec; every part is optional:
--   absent      true  -> fail with EXISTS if the record already exists (creation)
--   require     true  -> fail with MISSING if the record does not exist
--   no_keys     [key..] -> fail with "FLAG <key>" if one exists (e.g. a stop flag)
--   from        [s..] -> fail with "STATE <current>" unless the current state is listed
--               (every spelling that reads as an allowed state: models.spellings)
--   guards      [[key, field, expected], ..] -> fail STALE unless HGET key field == expected
--               ('' expects the field to be absent; a list accepts any of its values)
--   in_list     {key, value} -> fail NOT_IN_LIST unless value is in the list (then LREM it)
--   claim       {key, name, id, prefix, dead} -> name index: fail "TAKEN <id>" if the name
--               points at another agent whose state is not in dead, else point it at id
--   del / set / incr        HDEL / HSET / HINCRBY on the record
--   companion   {key, incr, set, set_from, clear_current, only_if_current} -> same on a
--               second hash (the assignee of a task), only when that hash exists; incr is a
--               field name (+1) or {field: n}; set applies only if its state is in set_from
--   requeue     {src, dst, agent, tasks, running, now} -> put in-flight work back: move all
--               of list src to the front of list dst (order kept); each task key in tasks
--               whose state is in running (its spellings) for agent goes back to assigned
--   cmds        [[cmd, key, args..], ..] further writes (stop flag, inbox, backlog, ...);
--               a long RPUSH/LPUSH is sent in chunks (Lua's unpack stops near 8000 values)
--   take        {lists: [[key, 'LEFT'|'RIGHT'], ..], dst, task_prefix, if_key, if_states,
--               unless_keys} -> after the writes, LMOVE the next message from the first
--               non-empty list to the end of dst — only if if_key's state is in if_states and
--               none of unless_keys exists; the reply becomes {old state, message or false,
--               list number, HGETALL of its task if it is a task_assign, started}
--   take.start  {agent, agent_key, agent_from, agent_set, task_set, open, ts, event: {type,
--               parts, fill}} -> start the taken task at once when it is open, assigned to
--               agent, and the agent's state is in agent_from: agent_set + current_task,
--               task_set, and an event whose data is parts joined by the fill values
--               ('tid' = task id, 'old' = agent's old state, 'ts' = ts, 'summary' = short id
--               and first line of the description, JSON-escaped); started = 1
--   event       {type, head, tail, old, new_key} -> XADD data = head [.. old_state ..]
--               [.. new_state read from new_key after the writes ..] .. tail
-- Returns the state the record had before the change (or false).
local spec = cjson.decode(ARGV[1])
local function member(list, value)
  for _, v in ipairs(list) do if v == value then return true end end
  return false
end
local function debug_state(s) return string.upper(string.sub(s, 1, 1)) .. string.sub(s, 2) end
local function emit(event_type, data)
  for i = 2, #KEYS do
    redis.call('XADD', KEYS[i], 'MAXLEN', '~', (i == 2) and 1000 or 100, '*',
      'event_type', event_type, 'data', data)
  end
end
local CHUNK = 1000
local function call(cmd)  -- redis.call(unpack(cmd)), never with more than CHUNK arguments
  if #cmd <= CHUNK then return redis.call(unpack(cmd)) end
  for i = 3, #cmd, CHUNK do
    redis.call(cmd[1], cmd[2], unpack(cmd, i, math.min(i + CHUNK - 1, #cmd)))
  end
end
local function summary(text, max_chars)  -- models.truncate_summary: first line, trimmed, cut
  local first = string.match(text, '^[^\n]*'):gsub('\r$', ''):match('^%s*(.-)%s*$')
  local starts = {}  -- byte offset of each UTF-8 character
  for pos in string.gmatch(first, '()[^\128-\191]') do starts[#starts + 1] = pos end
  if #starts <= max_chars then return first end
  return string.sub(first, 1, starts[max_chars - 2] - 1) .. '...'
end
local function json_inner(s) return string.sub(cjson.encode(s), 2, -2) end  -- escaped, unquoted
local key = KEYS[1]
local exists = redis.call('EXISTS', key) == 1
if spec.absent and exists then return redis.error_reply('EXISTS') end
if spec.require and not exists then return redis.error_reply('MISSING') end
for _, k in ipairs(spec.no_keys or {}) do
  if redis.call('EXISTS', k) == 1 then return redis.error_reply('FLAG ' .. k) end
end
local state = exists and redis.call('HGET', key, 'state')  -- false when there is no record
if spec.from and not member(spec.from, state) then  -- spellings: aliases included
  return redis.error_reply('STATE ' .. tostring(state))
end
if spec.guards then
  for _, g in ipairs(spec.guards) do
    local v = redis.call('HGET', g[1], g[2]) or ''
    local ok = v == g[3]
    if type(g[3]) == 'table' then
      for _, want in ipairs(g[3]) do if v == want then ok = true end end
    end
    if not ok then return redis.error_reply('STALE ' .. g[1] .. ' ' .. g[2] .. '=' .. v) end
  end
end
if spec.in_list and not redis.call('LPOS', spec.in_list.key, spec.in_list.value) then
  return redis.error_reply('NOT_IN_LIST')
end
for _, cmd in ipairs(spec.cmds or {}) do
  local name = string.upper(tostring(cmd[1]))
  if #cmd > CHUNK and name ~= 'RPUSH' and name ~= 'LPUSH' then
    return redis.error_reply('TOO_LONG ' .. name .. ' with ' .. #cmd .. ' arguments')
  end
end
if spec.claim then
  local owner = redis.call('HGET', spec.claim.key, spec.claim.name)
  if owner and owner ~= spec.claim.id then
    local owner_state = redis.call('HGET', spec.claim.prefix .. owner, 'state')
    if owner_state and not member(spec.claim.dead, owner_state) then
      return redis.error_reply('TAKEN ' .. owner)
    end
  end
end
-- all checks passed: from here on only writes
if spec.claim then redis.call('HSET', spec.claim.key, spec.claim.name, spec.claim.id) end
if spec.in_list then redis.call('LREM', spec.in_list.key, 1, spec.in_list.value) end
if spec.del and #spec.del > 0 then redis.call('HDEL', key, unpack(spec.del)) end
if spec.set then
  local args = {}
  for k, v in pairs(spec.set) do args[#args + 1] = k; args[#args + 1] = v end
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
end
if spec.incr then
  for k, v in pairs(spec.incr) do redis.call('HINCRBY', key, k, v) end
end
local c = spec.companion
if c and redis.call('EXISTS', c.key) == 1 then
  local current = redis.call('HGET', c.key, 'current_task')
  if not c.only_if_current or current == c.only_if_current then
    if type(c.incr) == 'table' then
      for k, v in pairs(c.incr) do redis.call('HINCRBY', c.key, k, v) end
    elseif c.incr then redis.call('HINCRBY', c.key, c.incr, 1) end
    local cstate = redis.call('HGET', c.key, 'state')
    local allowed = not c.set_from
    for _, s in ipairs(c.set_from or {}) do if s == cstate then allowed = true end end
    if c.set and allowed then
      local args = {}
      for k, v in pairs(c.set) do args[#args + 1] = k; args[#args + 1] = v end
      if #args > 0 then redis.call('HSET', c.key, unpack(args)) end
    end
  end
  if c.clear_current and current == c.clear_current then redis.call('HDEL', c.key, 'current_task') end
end
local q = spec.requeue
if q then
  for _ = 1, redis.call('LLEN', q.src) do redis.call('LMOVE', q.src, q.dst, 'RIGHT', 'LEFT') end
  for _, t in ipairs(q.tasks or {}) do
    local st = redis.call('HGET', t, 'state')
    if member(q.running, st) and redis.call('HGET', t, 'assigned_to') == q.agent then
      redis.call('HSET', t, 'state', 'assigned', 'updated_at', q.now)
    end
  end
end
if spec.cmds then
  for _, cmd in ipairs(spec.cmds) do call(cmd) end
end
local ev = spec.event
if ev then
  local data = ev.head
  if ev.old and state then data = data .. '"old_state":' .. cjson.encode(debug_state(state)) .. ',' end
  local new = ev.new_key and redis.call('HGET', ev.new_key, 'state')
  if new then data = data .. '"new_state":' .. cjson.encode(debug_state(new)) .. ',' end
  data = data .. ev.tail
  emit(ev.type, data)
end
local taken = false
local t = spec.take
local may_take = t ~= nil and (not t.if_key or member(t.if_states, redis.call('HGET', t.if_key, 'state')))
for _, k in ipairs(t and t.unless_keys or {}) do
  if redis.call('EXISTS', k) == 1 then may_take = false end
end
if may_take then
  for i, src in ipairs(spec.take.lists) do
    local msg = redis.call('LMOVE', src[1], spec.take.dst, src[2], 'RIGHT')
    if msg then taken = {state or '', msg, i, {}, 0}; break end
  end
  if taken then
    local ok, m = pcall(cjson.decode, taken[2])
    if ok and type(m) == 'table' and m.type == 'task_assign' and type(m.task_id) == 'string' then
      local tkey = spec.take.task_prefix .. m.task_id
      taken[4] = redis.call('HGETALL', tkey)
      local go = spec.take.start
      if go then
        local h = {}
        for j = 1, #taken[4], 2 do h[taken[4][j]] = taken[4][j + 1] end
        local astate = redis.call('HGET', go.agent_key, 'state')
        if h.assigned_to == go.agent and member(go.open, h.state) and member(go.agent_from, astate) then
          local args = {'current_task', m.task_id}
          for k, v in pairs(go.agent_set) do args[#args + 1] = k; args[#args + 1] = v end
          redis.call('HSET', go.agent_key, unpack(args))
          args = {}
          for k, v in pairs(go.task_set) do args[#args + 1] = k; args[#args + 1] = v end
          redis.call('HSET', tkey, unpack(args))
          local fills = {tid = m.task_id, old = debug_state(astate or 'starting'), ts = go.ts,
                         summary = json_inner(string.sub(m.task_id, 1, 4) .. ': ' .. summary(h.description or '', 80))}
          local data = go.event.parts[1]
          for j, f in ipairs(go.event.fill) do data = data .. fills[f] .. go.event.parts[j + 1] end
          emit(go.event.type, data)
          taken[5] = 1
        end
      end
    end
  end
end
if spec.take then return taken or {state or '', false, 0, {}, 0} end
return state
