-- One atomic state change of an agent or task record, with its event(s).
-- KEYS[1]   the record hash (tt:{town}:agent:{id} or tt:{town}:task:{id})
-- KEYS[2..] event streams: the town stream first, then per-agent streams
-- ARGV[1]   JSON spec; ARGV[2..] raw (binary-safe) values the spec refers to as {"$": n}
--           (e.g. a message that is not valid UTF-8 and so cannot travel inside JSON).
-- Every part of the spec is optional:
--   p           the town's key prefix ('tt:{town}:'): records under it are counted in the
--               state indexes (below) whenever this script changes them
--   absent      true  -> fail with EXISTS if the record already exists (creation)
--   require     true  -> fail with MISSING if the record does not exist
--   no_keys     [key..] -> fail with "FLAG <key>" if one exists (e.g. a stop flag)
--   from        [s..] -> fail with "STATE <current>" unless the current state is listed
--   guards      [[key, field, expected], ..] -> fail STALE unless HGET key field == expected
--               ('' expects the field to be absent; a list accepts any of its values;
--               a 'state' field is compared in its normal spelling)
--   in_list     {key, value} -> fail NOT_IN_LIST unless value is in the list (then LREM it)
--   claim       {key, name, id, prefix, dead} -> name index: fail "TAKEN <id>" if the name
--               points at another agent whose state is not in dead, else point it at id
--   del / set / incr        HDEL / HSET / HINCRBY on the record
--   companion   {key, incr, set, set_from, clear_current, only_if_current} -> same on a
--               second hash (the assignee of a task), only when that hash exists; incr is a
--               field name (+1) or {field: n}; set applies only if its state is in set_from
--   requeue     {src, dst, agent, tasks, running, now} -> put in-flight work back: move all
--               of list src to the front of list dst (order kept); each task key in tasks
--               whose state is in running for agent goes back to assigned
--   cmds        [[cmd, key, args..], ..] further writes (stop flag, inbox, backlog, ...);
--               a long RPUSH/LPUSH is sent in chunks (Lua's unpack stops near 8000 values)
--   take        {lists: [[key, 'LEFT'|'RIGHT'], ..], dst, task_prefix, if_key, if_states,
--               unless_keys} -> after the writes, LMOVE the next message from the first
--               non-empty list to the end of dst — only if if_key's state is in if_states and
--               none of unless_keys exists; the reply becomes {old state, message or false,
--               list number (none taken: 0 when the lists were empty, -1 when if_key or
--               unless_keys said no), HGETALL of its task if it is a task_assign, started,
--               its task's dependencies (deps:task after) or false, HGETALL of take.extra ..
--               its task id (the task's run options) or {}}
--   take.start  {agent, agent_key, agent_from, agent_set, task_set, open, ts, event: {type,
--               parts, fill}} -> start the taken task at once when it is open, assigned to
--               agent, and the agent's state is in agent_from: agent_set + current_task,
--               task_set, and an event whose data is parts joined by the fill values
--               ('tid' = task id, 'old' = agent's old state, 'ts' = ts, 'summary' = short id
--               and first line of the description, JSON-escaped); started = 1
--   event       {type, head, tail, old, new_key} -> XADD data = head [.. old_state ..]
--               [.. new_state read from new_key after the writes ..] .. tail
--   peek        [urgent list, stop flag key] -> the reply is {state, LLEN urgent, EXISTS flag}
--               (a worker's heartbeat: what may need its idle loop)
--   wait, deps_done, settled -> tasks that wait for other tasks (see "workflows" below)
--
-- Rules this script keeps (Redis never rolls a script back):
-- * every check, including the type of every key it will write, comes before the first
--   write; a refusal is an error reply and nothing is written;
-- * no work proportional to a payload: descriptions and messages are moved, never walked
--   (the start event's summary is cut from a bounded prefix);
-- * states are read in their normal spelling (lowercase, 'in_flight' = 'running'), the
--   spellings tinytown and its event messages use alike;
-- * every agent or task record it changes is filed again in the state indexes (keys.py):
--   {p}index:tasks, {p}index:task-state:{state}, {p}index:task-agent:{agent id} (zsets,
--   score = ms of the last change, µs as a fraction), {p}index:task-owner (hash: task id -> agent id, so a
--   reconcile can find the agent index a task was filed under), {p}index:agents,
--   {p}index:agent-state:{state} (sets).
--   Counts by state are their cardinalities. Index writes cannot fail the change: a
--   damaged index is rebuilt by a reconcile (status.reconcile).
-- * whatever task it makes terminal (or deletes) is passed on to the tasks waiting for it
--   (released, or cancelled), in this same run (see "workflows" below).
-- Returns the state the record had before the change (or false).
local spec = cjson.decode(ARGV[1])
local P = spec.p or ''
-- The server's time, read once per run: every time this run writes (hash and event stamps,
-- index scores) is the same instant.
local CLOCK
local function clock()  -- seconds, µs
  if not CLOCK then
    local t = redis.call('TIME')
    CLOCK = {tonumber(t[1]), tonumber(t[2])}
  end
  return CLOCK[1], CLOCK[2]
end
-- The index score of a change: ms with the µs as a fraction, as a string ('%.3f': a Lua
-- number would reach Redis as '%.14g', which drops the fraction), so changes made in the
-- same millisecond by separate steps (an assign_many) keep their order.
local function now_score()
  local s, us = clock()
  return string.format('%.3f', s * 1000 + us / 1000)
end
-- The server's time as chrono writes it: '+00:00' in hashes, 'Z' in JSON (models.hash_ts).
local function iso_of(secs, us, suffix)
  local days = math.floor(secs / 86400)
  local rem = secs - days * 86400
  local z = days + 719468  -- civil date from days since 1970 (H. Hinnant's algorithm)
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  local frac = us == 0 and '' or (us % 1000 == 0 and string.format('.%03d', us / 1000) or string.format('.%06d', us))
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d%s%s', y, m, d, math.floor(rem / 3600),
                       math.floor(rem % 3600 / 60), rem % 60, frac, suffix)
end
local function iso_now(suffix)
  local secs, us = clock()
  return iso_of(secs, us, suffix)
end
local NOW_MARK = '\226\129\163NOW\226\129\163'  -- transitions.NOW: the server's time goes there
local function now_fields(fields)  -- the same fields with NOW_MARK values set to the time
  local out, stamp = {}, nil
  for k, v in pairs(fields) do
    if v == NOW_MARK then stamp = stamp or iso_now('+00:00'); v = stamp end
    out[k] = v
  end
  return out
end
local function member(list, value)
  for _, v in ipairs(list or {}) do if v == value then return true end end
  return false
end
local function arg(v)  -- a raw value passed beside the spec
  if type(v) == 'table' and v['$'] then return ARGV[v['$']] end
  return v
end

-- ---------------------------------------------------------------- states
-- the tables below are filled in from models.py when the script is loaded (transitions.py)
local ALIAS = {{ALIASES}}
local TASK_STATES = {{TASK_STATES}}
local AGENT_STATES = {{AGENT_STATES}}
local function norm(raw)  -- the normal spelling of a state as read from a hash
  if type(raw) ~= 'string' then return raw end
  local s = string.lower(raw)
  return ALIAS[s] or s
end
local function debug_state(s) return string.upper(string.sub(s, 1, 1)) .. string.sub(s, 2) end

-- ---------------------------------------------------------------- type checks
local WRITES = {RPUSH = 'list', LPUSH = 'list', LREM = 'list', LTRIM = 'list', LMOVE = 'list',
                LSET = 'list', HSET = 'hash', HDEL = 'hash', HINCRBY = 'hash',
                HINCRBYFLOAT = 'hash', HSETNX = 'hash', SADD = 'set', SREM = 'set',
                ZADD = 'zset', ZREM = 'zset', ZINCRBY = 'zset', XADD = 'stream',
                INCR = 'string', INCRBY = 'string', INCRBYFLOAT = 'string', APPEND = 'string'}
local NEED = {}
local function need(key, kind) if key and kind then NEED[key] = NEED[key] or kind end end
-- What a read before the writes showed a key to hold ('none': nothing there): a read that
-- did not fail proves the type (or that the key is absent), so such a key needs no TYPE.
local KNOWN = {}
local function known(key, kind) if KNOWN[key] == nil then KNOWN[key] = kind end end
local function check_types()
  for key, want in pairs(NEED) do
    if KNOWN[key] ~= want and KNOWN[key] ~= 'none' then
      local got = redis.call('TYPE', key)['ok']
      if got ~= 'none' and got ~= want then
        return 'WRONGTYPE ' .. key .. ' holds a ' .. got .. ', not a ' .. want
      end
    end
  end
  return nil
end

-- ---------------------------------------------------------------- state indexes
local TOUCHED, ORDER = {}, {}
local function record_of(key)  -- 'task'|'agent', id — or nil for any other key
  if P == '' or string.sub(key, 1, #P) ~= P then return nil end
  local kind, id = string.match(string.sub(key, #P + 1), '^(%a+):([^:]+)$')
  if kind == 'task' or kind == 'agent' then return kind, id end
  return nil
end
local function filing(kind, exists, raw, owner)  -- exists, canonical state, owner (or false)
  if not exists then return false end
  local s = norm(raw)
  if kind == 'task' then
    if not TASK_STATES[s or ''] then s = 'pending' end  -- as models.TaskState.parse reads it
  elseif not AGENT_STATES[s or ''] then s = 'starting' end  -- as AgentState.parse reads it
  return true, s, owner or false
end
local function filed(kind, key)  -- how a record is filed now
  local ok, h = pcall(redis.call, 'HMGET', key, 'state', 'assigned_to')
  if not ok then return false end
  return filing(kind, h[1] or redis.call('EXISTS', key) == 1, h[1], h[2])
end
-- Records written in this run (whatever the script writes to a record goes through touch).
local DIRTY = {}
local HEAD = {}  -- {exists, state, assigned_to} of KEYS[1], as the checks read it
-- Note a record (and how it is filed) before this script changes it; pre = {exists, state,
-- assigned_to} as this run just read them, when it did (saves reading them again).
local function touch(key, pre)
  if key == KEYS[1] and not DIRTY[key] then pre = pre or HEAD[1] end
  DIRTY[key] = true
  if TOUCHED[key] then return end
  local kind, id = record_of(key)
  if not kind then return end
  local exists, s, owner
  if pre then exists, s, owner = filing(kind, pre[1], pre[2], pre[3])
  else exists, s, owner = filed(kind, key) end
  TOUCHED[key] = {kind = kind, id = id, exists = exists, state = s, owner = owner}
  ORDER[#ORDER + 1] = key
end
local function file_again()  -- after the writes: each changed record in its index entries
  for _, key in ipairs(ORDER) do
    local b = TOUCHED[key]
    local exists, s, owner = filed(b.kind, key)
    if b.kind == 'task' then
      if b.exists and (not exists or b.state ~= s) then
        pcall(redis.call, 'ZREM', P .. 'index:task-state:' .. b.state, b.id)
      end
      if b.owner and (not exists or b.owner ~= owner) then
        pcall(redis.call, 'ZREM', P .. 'index:task-agent:' .. b.owner, b.id)
      end
      if exists and owner and owner ~= b.owner then
        pcall(redis.call, 'HSET', P .. 'index:task-owner', b.id, owner)
      elseif (not exists or not owner) and b.owner then
        pcall(redis.call, 'HDEL', P .. 'index:task-owner', b.id)
      end
      if exists then
        local ms = now_score()
        pcall(redis.call, 'ZADD', P .. 'index:tasks', ms, b.id)
        pcall(redis.call, 'ZADD', P .. 'index:task-state:' .. s, ms, b.id)
        if owner then pcall(redis.call, 'ZADD', P .. 'index:task-agent:' .. owner, ms, b.id) end
      else
        pcall(redis.call, 'ZREM', P .. 'index:tasks', b.id)
      end
    else
      local moved = not b.exists or not exists or b.state ~= s
      if b.exists and moved then
        pcall(redis.call, 'SREM', P .. 'index:agent-state:' .. b.state, b.id)
      end
      if exists then  -- (no score to renew: an agent that stays put is filed already)
        if not b.exists then pcall(redis.call, 'SADD', P .. 'index:agents', b.id) end
        if moved then pcall(redis.call, 'SADD', P .. 'index:agent-state:' .. s, b.id) end
      else
        pcall(redis.call, 'SREM', P .. 'index:agents', b.id)
      end
    end
  end
end

-- ---------------------------------------------------------------- writes
local function emit(event_type, data)
  for i = 2, #KEYS do
    redis.call('XADD', KEYS[i], 'MAXLEN', '~', (i == 2) and 1000 or 100, '*',
      'event_type', event_type, 'data', data)
  end
end
local CHUNK = 1000
local function call(cmd)  -- redis.call(unpack(cmd)), raw values resolved, in chunks of CHUNK
  local args = {}
  for i, v in ipairs(cmd) do args[i] = arg(v) end
  if #args <= CHUNK then return redis.call(unpack(args)) end
  for i = 3, #args, CHUNK do
    redis.call(args[1], args[2], unpack(args, i, math.min(i + CHUNK - 1, #args)))
  end
end
local function hset(key, fields)
  local args = {}
  for k, v in pairs(fields) do args[#args + 1] = k; args[#args + 1] = v end
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
end
-- A summary of a description for the start event: the first line, trimmed, cut to max_chars
-- characters with '...' (models.truncate_summary) — read from a bounded prefix, so a huge
-- description costs nothing; nil when that prefix is not valid UTF-8 (the worker decides).
local function summary(text, max_chars)
  local head = string.sub(text, 1, 1024)
  local line = string.match(head, '^[^\n]*')
  local goes_on = #line == #head and #head < #text  -- the first line is longer than the prefix
  line = line:gsub('\r$', ''):match('^%s*(.-)%s*$')
  local starts, i, n = {}, 1, #line
  while i <= n do
    local b = string.byte(line, i)
    local len = (b < 0x80 and 1) or (b >= 0xC2 and b <= 0xDF and 2) or (b >= 0xE0 and b <= 0xEF and 3)
                or (b >= 0xF0 and b <= 0xF4 and 4) or 0
    if len == 0 then return nil end
    if i + len - 1 > n then
      if goes_on then break end  -- a character cut by the prefix bound, not a broken one
      return nil
    end
    for j = i + 1, i + len - 1 do
      local cc = string.byte(line, j)
      if cc < 0x80 or cc > 0xBF then return nil end
    end
    starts[#starts + 1] = i
    i = i + len
  end
  if #starts > max_chars then return string.sub(line, 1, starts[max_chars - 2] - 1) .. '...' end
  if goes_on then return line .. '...' end
  return line
end
local function json_inner(s) return string.sub(cjson.encode(s), 2, -2) end  -- escaped, unquoted

-- ================================================================ workflows (issue 12)
-- Tasks that wait for other tasks, and gates (keys: keys.py deps:*, gate:*; API:
-- core/workflows.py). Self-contained: the rest of the script calls WF.check() with its
-- other checks (before any write), WF.apply() after its writes (before the take, which
-- may then take a task released here) and after_of() in the take. The WF functions are
-- made only by a run that may need them (may_pass_on): making closures is a good part of
-- what a run costs, and most runs (assign, take, heartbeat) finish no task.
--
-- A task that waits is a 'pending' task with no assignee, outside the backlog, plus
-- deps:task:{id} (kind, agent, after ...), deps:on:{id} (its dependencies not completed
-- yet) and its id in deps:dependents:{dep} of each dependency.
--   wait       {task, after = [ids], new, kind, agent, fields = {..}} -> record that the task
--              waits for the tasks in after (at its creation — fields: its deps:task record —
--              or, not new, more of them for a task that still waits); refused with
--              DEP_MISSING <id> (no such task), DEP_DONE <id> <state> (failed or cancelled),
--              DEP_SELF <id>, DEP_CYCLE <id> (it waits, transitively, for the task) or
--              NOT_WAITING <state>. With nothing left open it is released in this run.
--   deps_done  task id -> fail DEP_OPEN <n> unless it waits for nothing (a gate's approval)
--   settled    [ids] -> pass on these tasks' terminal state (the sweep: tasks another
--              program finished)
-- Passing on, in every run: each task this run makes terminal or deletes (or names in
-- settled) is looked up in its deps:dependents set. Completed: it leaves each dependent's
-- deps:on set, and a dependent left with none that is still pending is released —
-- 'assigned' to its agent with its task_assign message (kind agent) or appended to the
-- backlog (kind backlog), with an event; a gate stays pending for a person. Failed,
-- cancelled or deleted: every pending task waiting for it, transitively, is cancelled with
-- a result naming it (short id and first line), one event each. The cost is O(tasks
-- reached), never O(payload); every key it may write is type-checked in WF.check.
local FINISHED = {completed = true, failed = true, cancelled = true}
-- Whether this run may make a task terminal or delete one (the roots WF.check looks for),
-- or is about waits: when not, the workflows part has nothing to do.
local function may_pass_on()
  if P == '' then return false end
  if spec.wait or spec.deps_done or spec.settled then return true end
  local function ends(s)
    if type(s) ~= 'string' then return false end
    s = norm(s)
    return FINISHED[s] or s == 'deleted' or s == 'settled'
  end
  if spec.set and ends(spec.set.state) then return true end
  if spec.companion and spec.companion.set and ends(spec.companion.set.state) then return true end
  for _, cmd in ipairs(spec.cmds or {}) do
    local name = string.upper(tostring(cmd[1]))
    if name == 'DEL' then return true end
    if name == 'HSET' and #cmd <= 64 then
      for j = 3, #cmd - 1, 2 do if cmd[j] == 'state' and ends(cmd[j + 1]) then return true end end
    end
  end
  return false
end
local function workflows()  -- the WF functions, made for this run
  local WF = {ROOTS = {}}
  function WF.key(kind, id) return P .. 'deps:' .. kind .. ':' .. id end
  function WF.state(id)  -- a task's state, normal spelling; false: no record; nil: unreadable
    local key = P .. 'task:' .. id
    local ok, s = pcall(redis.call, 'HGET', key, 'state')
    if not ok then return nil end
    known(key, 'hash')
    if not s then return redis.call('EXISTS', key) == 1 and 'pending' end
    s = norm(s)
    return TASK_STATES[s] and s or 'pending'  -- as models.TaskState.parse reads it
  end
  function WF.stamps()  -- now, as hash ('...+00:00') and JSON ('...Z') timestamps (models.hash_ts)
    WF.ts = WF.ts or {hash = iso_now('+00:00'), json = iso_now('Z')}
    return WF.ts
  end
  function WF.event(etype, aid, tid, old, new, message)
    local data = cjson.encode({event_type = etype, agent_id = aid, task_id = tid, old_state = old,
                               new_state = new, message = message, timestamp = WF.stamps().json})
    redis.call('XADD', P .. 'events', 'MAXLEN', '~', 1000, '*', 'event_type', etype, 'data', data)
    if aid then
      redis.call('XADD', P .. 'events:agent:' .. aid, 'MAXLEN', '~', 100, '*', 'event_type', etype, 'data', data)
    end
  end
  function WF.line(id, n)  -- the first line of a task's description, at most n characters (or nil)
    local ok, d = pcall(redis.call, 'HGET', P .. 'task:' .. id, 'description')
    return ok and d and summary(d, n) or nil
  end
  function WF.record(id)  -- kind, agent, sender and message id of a waiting task (false: absent)
    local ok, h = pcall(redis.call, 'HMGET', WF.key('task', id), 'kind', 'agent', 'from', 'msg_id')
    if not ok then return false, false, false, false end
    known(WF.key('task', id), 'hash')
    return h[1], h[2], h[3], h[4]
  end
  function WF.need_for(d, kind, agent)  -- what releasing or cancelling d may write (type checks)
    if not kind then kind, agent = WF.record(d) end
    need(P .. 'task:' .. d, 'hash'); need(WF.key('task', d), 'hash'); need(WF.key('on', d), 'set')
    need(P .. 'events', 'stream')
    if agent then need(P .. 'inbox:' .. agent, 'list'); need(P .. 'events:agent:' .. agent, 'stream') end
    if kind == 'backlog' then need(P .. 'backlog', 'list') end
  end
  function WF.release(d)  -- deliver a task that has nothing left to wait for
    local kind, agent, from, mid = WF.record(d)
    if not ((kind == 'agent' and agent and from and mid) or kind == 'backlog') then return end  -- a gate
    local tkey, ts = P .. 'task:' .. d, WF.stamps()
    local line = WF.line(d, 80) or string.sub(d, 1, 4)
    touch(tkey)
    if kind == 'agent' then
      redis.call('HSET', tkey, 'state', 'assigned', 'assigned_to', agent, 'updated_at', ts.hash)
      redis.call('RPUSH', P .. 'inbox:' .. agent, cjson.encode({id = mid, from = from, to = agent,
        type = 'task_assign', task_id = d, priority = 'normal', created_at = ts.json, correlation_id = cjson.null}))
      WF.event('task_assigned', agent, d, 'Pending', 'Assigned', 'Task released (its dependencies are done): ' .. line)
    else
      redis.call('HSET', tkey, 'updated_at', ts.hash)
      redis.call('RPUSH', P .. 'backlog', d)
      WF.event('task_delegated', nil, d, 'Pending', 'Pending', 'Task added to backlog (its dependencies are done): ' .. line)
    end
    redis.call('HSET', WF.key('task', d), 'released_at', ts.hash)
  end
  function WF.cancel(d, why)
    local tkey, ts = P .. 'task:' .. d, WF.stamps()
    local _, agent = WF.record(d)
    touch(tkey)
    redis.call('HSET', tkey, 'state', 'cancelled', 'result', 'Cancelled: ' .. why, 'completed_at', ts.hash,
               'updated_at', ts.hash)
    WF.event('task_failed', agent or nil, d, 'Pending', 'Cancelled', 'Task cancelled: ' .. why)
  end
  -- Pass the terminal state of roots ({id, state, why}) on to the tasks that wait for them;
  -- with write false, only note the keys that would be written (for the type checks).
  function WF.walk(roots, write)
    local queue, seen, i = {}, {}, 1
    for j, r in ipairs(roots) do queue[j] = r end
    while i <= #queue do
      local q = queue[i]
      i = i + 1
      local key = WF.key('dependents', q.id)
      need(key, 'set')
      local ok, ds = pcall(redis.call, 'SMEMBERS', key)
      if ok and not write then known(key, 'set') end
      for _, d in ipairs(ok and ds or {}) do
        if q.state == 'completed' then
          if not write then
            WF.need_for(d)
          else
            local on = WF.key('on', d)
            if redis.call('SREM', on, q.id) == 1 and redis.call('SCARD', on) == 0 and WF.state(d) == 'pending' then
              WF.release(d)
            end
          end
        elseif not seen[d] and WF.state(d) == 'pending' then
          seen[d] = true
          if write then WF.cancel(d, q.why) else WF.need_for(d) end
          queue[#queue + 1] = {id = d, state = 'cancelled', why = q.why}
        end
      end
      if write then redis.call('SREM', P .. 'deps:watched', q.id) end
    end
  end
  function WF.check()  -- refusals and type checks; nil when the run may go on
    if P == '' then return nil end
    local w = spec.wait
    if w then
      for _, id in ipairs(w.after) do
        if id == w.task then return 'DEP_SELF ' .. id end
        local s = WF.state(id)
        if not s then return 'DEP_MISSING ' .. id end
        if s == 'failed' or s == 'cancelled' then return 'DEP_DONE ' .. id .. ' ' .. s end
        need(WF.key('dependents', id), 'set')
      end
      if not w.new then
        local s = WF.state(w.task)
        local ok, h = pcall(redis.call, 'HMGET', WF.key('task', w.task), 'kind', 'released_at')
        if s ~= 'pending' or not ok or not h[1] or h[2] then return 'NOT_WAITING ' .. tostring(s) end
        local wanted, queue, seen, i = {}, {w.task}, {[w.task] = true}, 1
        for _, id in ipairs(w.after) do wanted[id] = true end
        while i <= #queue do  -- a cycle: a new dependency that waits, transitively, for this task
          local ok2, ds = pcall(redis.call, 'SMEMBERS', WF.key('dependents', queue[i]))
          i = i + 1
          for _, d in ipairs(ok2 and ds or {}) do
            if wanted[d] then return 'DEP_CYCLE ' .. d end
            if not seen[d] then seen[d] = true; queue[#queue + 1] = d end
          end
        end
      end
      need(P .. 'deps:watched', 'set'); need(P .. 'deps:all', 'zset')
      WF.need_for(w.task, w.kind, w.agent)
    end
    if spec.deps_done then
      local ok, n = pcall(redis.call, 'SCARD', WF.key('on', spec.deps_done))
      if ok and n > 0 then return 'DEP_OPEN ' .. n end
    end
    -- the tasks this run may make terminal or delete (or that it is told were), read before
    -- the writes: their first lines name them in their dependents' results
    local roots, seen = {}, {}
    local function root(key, s)
      if type(key) ~= 'string' or type(s) ~= 'string' then return end
      s = norm(s)
      if not (FINISHED[s] or s == 'deleted' or s == 'settled') then return end
      local kind, id = record_of(key)
      if kind ~= 'task' or seen[id] then return end
      local ok_n, n = pcall(redis.call, 'SCARD', WF.key('dependents', id))
      if ok_n and n == 0 then return end  -- nothing waits for it (a wrong type: refused below)
      if ok_n then known(WF.key('dependents', id), 'set') else need(WF.key('dependents', id), 'set') end
      local before = WF.state(id)
      if s == 'settled' then
        if before ~= false and not FINISHED[before or ''] then return end
      elseif not before or FINISHED[before] then return end  -- new, unreadable or finished already
      seen[id] = true
      local ok, kind_of = pcall(redis.call, 'HGET', WF.key('task', id), 'kind')
      roots[#roots + 1] = {id = id, line = WF.line(id, 60), gate = ok and kind_of == 'gate',
                           state = s == 'settled' and (before or 'deleted') or s}
    end
    if spec.set then root(KEYS[1], spec.set.state) end
    if spec.companion and spec.companion.set then root(spec.companion.key, spec.companion.set.state) end
    for _, cmd in ipairs(spec.cmds or {}) do
      local name = string.upper(tostring(cmd[1]))
      if name == 'DEL' then
        for j = 2, #cmd do root(cmd[j], 'deleted') end
      elseif name == 'HSET' and #cmd <= 64 then
        for j = 3, #cmd - 1, 2 do if cmd[j] == 'state' then root(cmd[2], cmd[j + 1]) end end
      end
    end
    for _, id in ipairs(spec.settled or {}) do root(P .. 'task:' .. id, 'settled') end
    if #roots > 0 then need(P .. 'events', 'stream') end
    if #roots > 0 or spec.settled then need(P .. 'deps:watched', 'set') end
    WF.walk(roots, false)
    WF.ROOTS = roots
    return nil
  end
  function WF.apply()  -- after the script's writes
    if P == '' then return end
    local w = spec.wait
    if w then
      local dk, on = WF.key('task', w.task), WF.key('on', w.task)
      if w.new then
        hset(dk, w.fields)
      else  -- more dependencies for a task that still waits: the new ones after the old, in order
        local ok, old = pcall(cjson.decode, redis.call('HGET', dk, 'after') or '[]')
        local list, have = {}, {}
        for _, id in ipairs(ok and type(old) == 'table' and old or {}) do list[#list + 1] = id; have[id] = true end
        for _, id in ipairs(w.after) do
          if not have[id] then list[#list + 1] = id; have[id] = true end
        end
        redis.call('HSET', dk, 'after', #list > 0 and cjson.encode(list) or '[]')
      end
      for _, id in ipairs(w.after) do
        redis.call('SADD', WF.key('dependents', id), w.task)
        if WF.state(id) ~= 'completed' then
          redis.call('SADD', on, id)
          redis.call('SADD', P .. 'deps:watched', id)
        end
      end
      redis.call('ZADD', P .. 'deps:all', 'NX', now_score(), w.task)
      if w.kind ~= 'gate' and redis.call('SCARD', on) == 0 and WF.state(w.task) == 'pending' then
        WF.release(w.task)
      end
    end
    local live = {}
    for _, r in ipairs(WF.ROOTS) do
      local s = WF.state(r.id)
      if s == false then s = 'deleted' end
      if s and (FINISHED[s] or s == 'deleted') then
        local verb = (s == 'deleted' and 'was deleted') or (s == 'cancelled' and 'was cancelled')
                     or (r.gate and 'was rejected') or 'failed'
        live[#live + 1] = {id = r.id, state = s,
                           why = 'dependency ' .. string.sub(r.id, 1, 4) .. (r.line and (' (' .. r.line .. ')') or '')
                                 .. ' ' .. verb}
      end
    end
    if #live > 0 then WF.walk(live, true) end
    for _, id in ipairs(spec.settled or {}) do  -- passed on (or nothing waits for it any more)
      local s = WF.state(id)
      if s == false or FINISHED[s or ''] then redis.call('SREM', P .. 'deps:watched', id) end
    end
  end
  return WF
end
local function after_of(tid)  -- a task's dependencies (JSON list), or false: the worker's inputs
  if P == '' then return false end
  local ok, a = pcall(redis.call, 'HGET', P .. 'deps:task:' .. tid, 'after')
  return ok and a or false
end
-- ================================================================ (end of workflows)

-- ---------------------------------------------------------------- checks (no writes)
local key = KEYS[1]
-- the record's state and assignee in one read; a record of another type fails the HGET
-- below, after the checks that come first (EXISTS, MISSING, FLAG), as it always did
local read_ok, head = pcall(redis.call, 'HMGET', key, 'state', 'assigned_to')
local exists = not read_ok or head[1] ~= false or redis.call('EXISTS', key) == 1
if read_ok then
  known(key, exists and 'hash' or 'none')
  HEAD[1] = {exists, head[1], head[2]}
end
if spec.absent and exists then return redis.error_reply('EXISTS') end
if spec.require and not exists then return redis.error_reply('MISSING') end
for _, k in ipairs(spec.no_keys or {}) do
  if redis.call('EXISTS', k) == 1 then return redis.error_reply('FLAG ' .. k) end
end
local state = exists and (read_ok and head[1] or redis.call('HGET', key, 'state'))  -- false: no record
local now_state = norm(state)
if spec.from and not member(spec.from, now_state) then
  return redis.error_reply('STATE ' .. tostring(state))
end
if spec.guards then
  for _, g in ipairs(spec.guards) do
    local ok, v = pcall(redis.call, 'HGET', g[1], g[2])
    if ok then known(g[1], 'hash') end
    v = (ok and v) or ''
    local seen = g[2] == 'state' and norm(v) or v
    local good = seen == g[3]
    if type(g[3]) == 'table' then good = member(g[3], seen) end
    if not good then return redis.error_reply('STALE ' .. g[1] .. ' ' .. g[2] .. '=' .. v) end
  end
end
if spec.in_list then
  need(spec.in_list.key, 'list')
  local ok, pos = pcall(redis.call, 'LPOS', spec.in_list.key, arg(spec.in_list.value))
  if not (ok and pos) then return redis.error_reply('NOT_IN_LIST') end
  known(spec.in_list.key, 'list')
end
for _, cmd in ipairs(spec.cmds or {}) do
  local name = string.upper(tostring(cmd[1]))
  if #cmd > CHUNK and name ~= 'RPUSH' and name ~= 'LPUSH' then
    return redis.error_reply('TOO_LONG ' .. name .. ' with ' .. #cmd .. ' arguments')
  end
  need(cmd[2], WRITES[name])
  if name == 'LMOVE' then need(cmd[3], 'list') end
end
if spec.claim then
  need(spec.claim.key, 'hash')
  local ok, owner = pcall(redis.call, 'HGET', spec.claim.key, spec.claim.name)
  if ok then known(spec.claim.key, 'hash') end
  if ok and owner and owner ~= spec.claim.id then
    local owner_state = redis.call('HGET', spec.claim.prefix .. owner, 'state')
    if owner_state and not member(spec.claim.dead, norm(owner_state)) then
      return redis.error_reply('TAKEN ' .. owner)
    end
  end
end
if spec.set or spec.del or spec.incr or spec.absent then need(key, 'hash') end
if spec.companion then need(spec.companion.key, 'hash') end
if spec.requeue then
  need(spec.requeue.src, 'list'); need(spec.requeue.dst, 'list')
  for _, t in ipairs(spec.requeue.tasks or {}) do need(t, 'hash') end
end
local t = spec.take
if spec.event or (t and t.start) then for i = 2, #KEYS do need(KEYS[i], 'stream') end end
if t then
  for _, src in ipairs(t.lists) do need(src[1], 'list') end
  need(t.dst, 'list')
  if t.start then need(t.start.agent_key, 'hash') end
end
local WF = may_pass_on() and workflows()
local refused = WF and WF.check()  -- workflows: refusals and the keys passing on may write
if refused then return redis.error_reply(refused) end
local wrong = check_types()
if wrong then return redis.error_reply(wrong) end

-- ---------------------------------------------------------------- writes
if spec.claim then redis.call('HSET', spec.claim.key, spec.claim.name, spec.claim.id) end
if spec.in_list then redis.call('LREM', spec.in_list.key, 1, arg(spec.in_list.value)) end
if spec.del or spec.set or spec.incr then touch(key) end  -- (filed as read at the top)
if spec.del and #spec.del > 0 then redis.call('HDEL', key, unpack(spec.del)) end
if spec.set then hset(key, spec.set) end
if spec.incr then
  for k, v in pairs(spec.incr) do redis.call('HINCRBY', key, k, v) end
end
local c = spec.companion
local ch = c and redis.call('HMGET', c.key, 'state', 'assigned_to', 'current_task')
if c and (ch[1] or redis.call('EXISTS', c.key) == 1) then
  touch(c.key, {true, ch[1], ch[2]})
  local current = ch[3]
  if not c.only_if_current or current == c.only_if_current then
    if type(c.incr) == 'table' then
      for k, v in pairs(c.incr) do redis.call('HINCRBY', c.key, k, v) end
    elseif c.incr then redis.call('HINCRBY', c.key, c.incr, 1) end
    local cstate = norm(ch[1])  -- (the counters are other fields: the state is as read)
    if c.set and (not c.set_from or member(c.set_from, cstate)) then hset(c.key, c.set) end
  end
  if c.clear_current and current == c.clear_current then redis.call('HDEL', c.key, 'current_task') end
end
local q = spec.requeue
if q then
  for _ = 1, redis.call('LLEN', q.src) do redis.call('LMOVE', q.src, q.dst, 'RIGHT', 'LEFT') end
  for _, tk in ipairs(q.tasks or {}) do
    local st = norm(redis.call('HGET', tk, 'state'))
    if member(q.running, st) and redis.call('HGET', tk, 'assigned_to') == q.agent then
      touch(tk)
      redis.call('HSET', tk, 'state', 'assigned', 'updated_at', q.now)
    end
  end
end
if spec.cmds then
  for _, cmd in ipairs(spec.cmds) do
    local name = string.upper(tostring(cmd[1]))
    if name == 'DEL' then
      for i = 2, #cmd do touch(cmd[i]) end
    elseif WRITES[name] == 'hash' then
      touch(cmd[2])
    end
    call(cmd)
  end
end
local ev = spec.event
if ev then
  local data = ev.head
  if ev.old and state then data = data .. '"old_state":' .. cjson.encode(debug_state(now_state)) .. ',' end
  local new = ev.new_key and redis.call('HGET', ev.new_key, 'state')
  if new then data = data .. '"new_state":' .. cjson.encode(debug_state(norm(new))) .. ',' end
  data = data .. ev.tail
  emit(ev.type, data)
end
if WF then WF.apply() end  -- workflows: release or cancel the tasks waiting for what this run finished
local taken = false
local if_state = t and t.if_key and redis.call('HGET', t.if_key, 'state')
local may_take = t ~= nil and (not t.if_key or member(t.if_states, norm(if_state)))
for _, k in ipairs(t and t.unless_keys or {}) do
  if redis.call('EXISTS', k) == 1 then may_take = false end
end
if may_take then
  for i, src in ipairs(t.lists) do
    local msg = redis.call('LMOVE', src[1], t.dst, src[2], 'RIGHT')
    if msg then taken = {state or '', msg, i, {}, 0, {}}; break end
  end
  if taken then
    local ok, m = pcall(cjson.decode, taken[2])
    if ok and type(m) == 'table' and m.type == 'task_assign' and type(m.task_id) == 'string' then
      local tkey = t.task_prefix .. m.task_id
      local hok, flat = pcall(redis.call, 'HGETALL', tkey)  -- a wrong-typed record: the worker decides
      local go = t.start
      if hok then
        taken[4] = flat
        taken[6] = after_of(m.task_id) or false
        if t.extra then
          local eok, extra = pcall(redis.call, 'HGETALL', t.extra .. m.task_id)
          if eok then taken[7] = extra end
        end
        if go then
          local h = {}
          for j = 1, #flat, 2 do h[flat[j]] = flat[j + 1] end
          local araw  -- the agent's state, read again only if this run may have changed it
          if go.agent_key == t.if_key then araw = if_state  -- (no hash was written since)
          elseif go.agent_key == key and not DIRTY[key] then araw = state
          else araw = redis.call('HGET', go.agent_key, 'state') end
          local astate = norm(araw)
          local short = summary(h.description or '', 80)
          if h.assigned_to == go.agent and member(go.open, norm(h.state)) and member(go.agent_from, astate)
              and short then
            touch(go.agent_key, {true, araw, false})
            touch(tkey, {true, h.state, h.assigned_to})
            local fields = {current_task = m.task_id}
            for k, v in pairs(now_fields(go.agent_set)) do fields[k] = v end
            hset(go.agent_key, fields)
            hset(tkey, now_fields(go.task_set))
            local fills = {tid = m.task_id, old = debug_state(astate or 'starting'), ts = iso_now('Z'),
                           summary = json_inner(string.sub(m.task_id, 1, 4) .. ': ' .. short)}
            local data = go.event.parts[1]
            for j, f in ipairs(go.event.fill) do data = data .. fills[f] .. go.event.parts[j + 1] end
            emit(go.event.type, data)
            taken[5] = 1
          end
        end
      end
    end
  end
end
file_again()
if t then return taken or {state or '', false, may_take and 0 or -1, {}, 0, {}} end
if spec.peek then  -- a heartbeat: what may need the idle worker (urgent mail, a stop flag)
  return {state or false, redis.call('LLEN', spec.peek[1]), redis.call('EXISTS', spec.peek[2])}
end
return state
