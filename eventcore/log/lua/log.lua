-- The event log's atomic writes. Each section below is one script, loaded by
-- eventcore/log/scripts.py and called through its typed wrappers. The projections'
-- scripts (views, snapshots, trim, prune, import) are in projections/lua/views.lua
-- and share the `_shared` helpers of this file.
--
-- Rules every script keeps:
--  * Every argument is checked before the first write, so a bad call writes
--    nothing (a Lua error after a write would not roll that write back).
--  * All keys of one call share one partition hash tag, so each call touches
--    one slot and runs on Redis Cluster. Keys come in KEYS; the only key built
--    here is a work stream in release_due, from a prefix that keys.py made,
--    because which queue a delayed task returns to is known only from its item.
--  * Stream entries carry the task id in field "task" and the encoded event in
--    field "e"; work entries carry "task", "attempt" and "spec" (the encoded
--    TaskSubmitted).

--- script: _shared
-- Helpers every script is prefixed with, here and in projections/lua/views.lua
-- (eventcore/log/scripts.py and projections/scripts.py put them in front).
-- Stream ids compare as (milliseconds, sequence), both arbitrarily long
-- decimal strings: Lua numbers are doubles and would round large ones.
local function parse(id)
  if type(id) ~= 'string' then return nil end
  return string.match(id, '^(%d+)-(%d+)$')
end
local function cmp_num(a, b)
  a = string.match(a, '^0*(%d-)$')
  b = string.match(b, '^0*(%d-)$')
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end
local function id_lt(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  local c = cmp_num(am, bm)
  if c ~= 0 then return c < 0 end
  return cmp_num(as, bs) < 0
end
-- Why `consumer` does not hold work entry `entry` (false when it does): the
-- lease check of settle and append_held. XPENDING names the entry's owner.
local function not_held(work, group, consumer, entry)
  local pend = redis.call('XPENDING', work, group, entry, entry, 1)
  if #pend == 0 then return 'entry ' .. entry .. ' is no longer pending' end
  if pend[1][2] ~= consumer then return 'lease lost to ' .. pend[1][2] end
  return false
end

--- script: submit
-- KEYS: events, delayed, delayed_items, then per task: work stream, idempotency key
--       (the events key stands in when a task has no idempotency key)
-- ARGV: idem_ttl_ms, n, then per task 6 fields:
--       task_id, submitted, idem (0|1), run_at_ms (0 = now), scheduled, item_head
-- Returns per task {1, event_id, task_id} when written, {0, "", existing_task_id}
-- when an idempotency key already named a task.
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
if not ttl or ttl <= 0 then return redis.error_reply('ERR eventcore submit: idem_ttl_ms must be > 0') end
if not n or n < 0 or n ~= math.floor(n) then return redis.error_reply('ERR eventcore submit: bad count') end
if #ARGV ~= 2 + 6 * n or #KEYS ~= 3 + 2 * n then
  return redis.error_reply('ERR eventcore submit: expected ' .. n .. ' tasks of 6 args and 2 keys')
end
for i = 0, n - 1 do
  local a = 3 + 6 * i
  if ARGV[a] == '' or ARGV[a + 1] == '' then return redis.error_reply('ERR eventcore submit: empty task id or event') end
  if ARGV[a + 2] ~= '0' and ARGV[a + 2] ~= '1' then return redis.error_reply('ERR eventcore submit: idem flag must be 0 or 1') end
  local run_at = tonumber(ARGV[a + 3])
  if not run_at or run_at < 0 then return redis.error_reply('ERR eventcore submit: bad run_at_ms') end
  if run_at > 0 and (ARGV[a + 4] == '' or ARGV[a + 5] == '') then
    return redis.error_reply('ERR eventcore submit: a delayed task needs its scheduled event and item')
  end
end
local out = {}
for i = 0, n - 1 do
  local a = 3 + 6 * i
  local tid = ARGV[a]
  local idem_key = KEYS[5 + 2 * i]
  local existing = false
  if ARGV[a + 2] == '1' then existing = redis.call('GET', idem_key) end
  if existing then
    out[#out + 1] = {0, '', existing}
  else
    local eid = redis.call('XADD', KEYS[1], '*', 'task', tid, 'e', ARGV[a + 1])
    local run_at = tonumber(ARGV[a + 3])
    if run_at > 0 then
      redis.call('XADD', KEYS[1], '*', 'task', tid, 'e', ARGV[a + 4])
      redis.call('ZADD', KEYS[2], run_at, tid)
      redis.call('HSET', KEYS[3], tid, ARGV[a + 5] .. ARGV[a + 1])
    else
      redis.call('XADD', KEYS[4 + 2 * i], '*', 'task', tid, 'attempt', '1', 'spec', ARGV[a + 1])
    end
    if ARGV[a + 2] == '1' then redis.call('SET', idem_key, tid, 'PX', ttl) end
    out[#out + 1] = {1, eid, tid}
  end
end
return out

--- script: append
-- KEYS: events
-- ARGV: n, then per event: task_id, event
-- Returns the entry ids.
local n = tonumber(ARGV[1])
if not n or n < 0 or #ARGV ~= 1 + 2 * n then return redis.error_reply('ERR eventcore append: expected n pairs') end
for i = 0, n - 1 do
  if ARGV[2 + 2 * i] == '' or ARGV[3 + 2 * i] == '' then
    return redis.error_reply('ERR eventcore append: empty task id or event')
  end
end
local out = {}
for i = 0, n - 1 do
  out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'task', ARGV[2 + 2 * i], 'e', ARGV[3 + 2 * i])
end
return out

--- script: settle
-- Ends a held work entry: appends the item's events, then
--   t (terminal):    records the outcome in done, forgets any cancel request;
--   r (retry):       puts the task in the delayed set with its next work item;
--   d (dead letter): copies the entry to the dead-letter stream, records the outcome;
-- and in every case XACKs and XDELs the work entry, all at once.
-- An item whose entry this consumer no longer holds, or whose task already has
-- an outcome, writes none of its events: it is answered as stale.
-- KEYS: events, done, cancels, delayed, delayed_items, dead_letters, then per item: work stream
-- ARGV: group, consumer, n, then per item:
--       task_id, entry_id, action (t|r|d), outcome, run_at_ms, extra, nev, ev1..evN
--       (outcome: the terminal event type, for t and d; extra: the item head for r,
--        the reason for d)
-- Returns per item {1, last_event_id} or {0, why}.
local group, consumer = ARGV[1], ARGV[2]
local n = tonumber(ARGV[3])
if group == '' or consumer == '' then return redis.error_reply('ERR eventcore settle: empty group or consumer') end
if not n or n < 0 or #KEYS ~= 6 + n then return redis.error_reply('ERR eventcore settle: expected one work key per item') end
local starts = {}
local a = 4
for i = 1, n do
  starts[i] = a
  local action = ARGV[a + 2]
  local nev = tonumber(ARGV[a + 6])
  if ARGV[a] == nil or ARGV[a] == '' or ARGV[a + 1] == nil or ARGV[a + 1] == '' then
    return redis.error_reply('ERR eventcore settle: empty task id or entry id')
  end
  if action ~= 't' and action ~= 'r' and action ~= 'd' then
    return redis.error_reply('ERR eventcore settle: action must be t, r or d')
  end
  if (action == 't' or action == 'd') and ARGV[a + 3] == '' then
    return redis.error_reply('ERR eventcore settle: an outcome is needed')
  end
  if action == 'r' and (not tonumber(ARGV[a + 4]) or ARGV[a + 5] == '') then
    return redis.error_reply('ERR eventcore settle: a retry needs run_at_ms and an item head')
  end
  if not nev or nev < 1 or nev ~= math.floor(nev) then
    return redis.error_reply('ERR eventcore settle: each item needs at least one event')
  end
  for j = 1, nev do
    if ARGV[a + 6 + j] == nil or ARGV[a + 6 + j] == '' then
      return redis.error_reply('ERR eventcore settle: missing event')
    end
  end
  a = a + 7 + nev
end
if a ~= #ARGV + 1 then return redis.error_reply('ERR eventcore settle: extra arguments') end

local out = {}
for i = 1, n do
  local s = starts[i]
  local tid, entry, action = ARGV[s], ARGV[s + 1], ARGV[s + 2]
  local work = KEYS[6 + i]
  local why = not_held(work, group, consumer, entry)
  if not why then
    local done = redis.call('HGET', KEYS[2], tid)
    if done then
      why = 'task already ended: ' .. done
      redis.call('XACK', work, group, entry)
      redis.call('XDEL', work, entry)
    end
  end
  if why then
    out[#out + 1] = {0, why}
  else
    local nev = tonumber(ARGV[s + 6])
    local eid = ''
    for j = 1, nev do
      eid = redis.call('XADD', KEYS[1], '*', 'task', tid, 'e', ARGV[s + 6 + j])
    end
    if action == 'r' then
      local spec = redis.call('XRANGE', work, entry, entry)
      local fields = spec[1] and spec[1][2] or {}
      local body = ''
      for f = 1, #fields, 2 do
        if fields[f] == 'spec' then body = fields[f + 1] end
      end
      redis.call('ZADD', KEYS[4], tonumber(ARGV[s + 4]), tid)
      redis.call('HSET', KEYS[5], tid, ARGV[s + 5] .. body)
    else
      if action == 'd' then
        local spec = redis.call('XRANGE', work, entry, entry)
        local fields = spec[1] and spec[1][2] or {'task', tid}
        redis.call('XADD', KEYS[6], '*', 'stream', work, 'entry', entry, 'reason', ARGV[s + 5], unpack(fields))
      end
      redis.call('HSET', KEYS[2], tid, ARGV[s + 3])
      redis.call('SREM', KEYS[3], tid)
    end
    redis.call('XACK', work, group, entry)
    redis.call('XDEL', work, entry)
    out[#out + 1] = {1, eid}
  end
end
return out

--- script: append_held
-- Appends events of a running task (claimed, started, progress) only while
-- `consumer` still holds its work entry, by the same check as settle: a worker
-- that lost its lease (frozen past it, then woken) writes nothing beside the
-- new owner's events or after the task ended.
-- KEYS: events, work stream
-- ARGV: group, consumer, entry_id, task_id, events...
-- Returns {1, event ids...} when written, {0, why} when not held.
local group, consumer, entry, tid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if group == nil or group == '' or consumer == nil or consumer == '' or entry == nil or entry == '' or tid == nil or tid == '' then
  return redis.error_reply('ERR eventcore append_held: group, consumer, entry id and task id are needed')
end
if #ARGV < 5 then return redis.error_reply('ERR eventcore append_held: no events') end
for i = 5, #ARGV do
  if ARGV[i] == '' then return redis.error_reply('ERR eventcore append_held: empty event') end
end
local why = not_held(KEYS[2], group, consumer, entry)
if why then return {0, why} end
local out = {1}
for i = 5, #ARGV do
  out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'task', tid, 'e', ARGV[i])
end
return out

--- script: release_due
-- Moves delayed tasks whose time has come back to their work streams.
-- KEYS: delayed, delayed_items
-- ARGV: now_ms, limit, work_prefix
-- Returns {released, orphans}: orphans are delayed ids that had no item (removed).
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if not now or not limit or limit < 1 or ARGV[3] == '' then
  return redis.error_reply('ERR eventcore release_due: bad now_ms, limit or prefix')
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
local released, orphans = 0, 0
for _, tid in ipairs(due) do
  local item = redis.call('HGET', KEYS[2], tid)
  local queue, prio, attempt, spec
  if item then queue, prio, attempt, spec = string.match(item, '^([^|]+)|([^|]+)|([^|]+)|(.*)$') end
  if queue then
    redis.call('XADD', ARGV[3] .. queue .. ':' .. prio, '*', 'task', tid, 'attempt', attempt, 'spec', spec)
    released = released + 1
  else
    orphans = orphans + 1
  end
  redis.call('ZREM', KEYS[1], tid)
  redis.call('HDEL', KEYS[2], tid)
end
return {released, orphans}

--- script: request_cancel
-- KEYS: events, done, cancels, delayed, delayed_items
-- ARGV: task_id, cancel_requested, cancelled
-- Returns {"done", outcome} (nothing written), {"cancelled", event_id} (it was
-- waiting in the delayed set and is now cancelled), or {"requested", event_id}
-- (the worker that claims or runs it will see the request).
local tid = ARGV[1]
if tid == nil or tid == '' or ARGV[2] == nil or ARGV[2] == '' or ARGV[3] == nil or ARGV[3] == '' then
  return redis.error_reply('ERR eventcore request_cancel: task id and both events are needed')
end
local done = redis.call('HGET', KEYS[2], tid)
if done then return {'done', done} end
local eid = redis.call('XADD', KEYS[1], '*', 'task', tid, 'e', ARGV[2])
if redis.call('ZREM', KEYS[4], tid) == 1 then
  redis.call('HDEL', KEYS[5], tid)
  eid = redis.call('XADD', KEYS[1], '*', 'task', tid, 'e', ARGV[3])
  redis.call('HSET', KEYS[2], tid, 'task.cancelled')
  return {'cancelled', eid}
end
redis.call('SADD', KEYS[3], tid)
return {'requested', eid}

--- script: renew
-- Resets the idle time of the entries this consumer still holds, without
-- touching their delivery counts, and never takes an entry from another consumer.
-- KEYS: work stream
-- ARGV: group, consumer, entry ids...
-- Returns the ids renewed; ids not returned are no longer held.
local group, consumer = ARGV[1], ARGV[2]
if group == nil or group == '' or consumer == nil or consumer == '' then
  return redis.error_reply('ERR eventcore renew: empty group or consumer')
end
local held = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == consumer then held[#held + 1] = ARGV[i] end
end
if #held > 0 then
  -- unpack() in the middle of an argument list yields only its first value,
  -- so the command is built as one table.
  local cmd = {'XCLAIM', KEYS[1], group, consumer, 0}
  for _, id in ipairs(held) do cmd[#cmd + 1] = id end
  cmd[#cmd + 1] = 'JUSTID'
  redis.call(unpack(cmd))
end
return held

--- script: claim
-- Takes up to `count` new entries from the given work streams, in the order
-- given (highest priority first), creating missing groups on the way; flags
-- tasks with a pending cancel request. One round trip instead of one per stream.
-- KEYS: cancels, then the work streams (one partition)
-- ARGV: group, consumer, count
-- Returns {entries, last_ids}: entries are {stream_index (0-based), id, fields, cancel (0|1)};
-- last_ids holds the newest id of every stream ("0-0" if empty), for a
-- blocking XREAD that must not miss what arrives after this call.
local group, consumer, want = ARGV[1], ARGV[2], tonumber(ARGV[3])
if group == nil or group == '' or consumer == nil or consumer == '' or not want or want < 0 then
  return redis.error_reply('ERR eventcore claim: bad group, consumer or count')
end
local entries, last = {}, {}
for i = 2, #KEYS do
  if want > 0 then
    local ok, reply = pcall(redis.call, 'XREADGROUP', 'GROUP', group, consumer, 'COUNT', want, 'STREAMS', KEYS[i], '>')
    if not ok then
      redis.call('XGROUP', 'CREATE', KEYS[i], group, '0', 'MKSTREAM')
      reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want, 'STREAMS', KEYS[i], '>')
    end
    if reply then
      for _, e in ipairs(reply[1][2]) do
        local fields = e[2]
        local tid = ''
        for f = 1, #fields, 2 do
          if fields[f] == 'task' then tid = fields[f + 1] end
        end
        entries[#entries + 1] = {i - 2, e[1], fields, redis.call('SISMEMBER', KEYS[1], tid)}
        want = want - 1
      end
    end
  end
  local newest = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
  last[#last + 1] = newest[1] and newest[1][1] or '0-0'
end
return {entries, last}

--- script: node_event
-- Appends a node event and keeps the node's last sign of life:
-- mode "seen" records now_ms, "gone" forgets the node (it stopped).
-- A non-empty `started` (the encoded NodeStarted) is kept as the node's info.
-- KEYS: nodes stream, nodes_seen hash, nodes_info hash
-- ARGV: node, event, mode (seen|gone), now_ms, started
if ARGV[1] == nil or ARGV[1] == '' or ARGV[2] == nil or ARGV[2] == '' or (ARGV[3] ~= 'seen' and ARGV[3] ~= 'gone') or not tonumber(ARGV[4]) then
  return redis.error_reply('ERR eventcore node_event: node, event, mode and now_ms are needed')
end
local eid = redis.call('XADD', KEYS[1], '*', 'node', ARGV[1], 'e', ARGV[2])
if ARGV[3] == 'seen' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
  if ARGV[5] ~= nil and ARGV[5] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[5]) end
else
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return eid

--- script: mark_lost
-- Declares a node lost, once: only if its last sign of life is still at or
-- before deadline_ms (so two watchers, or a node that just came back, never
-- produce a second NodeLost).
-- KEYS: nodes stream, nodes_seen hash, nodes_info hash
-- ARGV: node, deadline_ms, event
if ARGV[1] == nil or ARGV[1] == '' or not tonumber(ARGV[2]) or ARGV[3] == nil or ARGV[3] == '' then
  return redis.error_reply('ERR eventcore mark_lost: node, deadline_ms and event are needed')
end
local seen = redis.call('HGET', KEYS[2], ARGV[1])
if not seen or tonumber(seen) > tonumber(ARGV[2]) then return false end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return redis.call('XADD', KEYS[1], '*', 'node', ARGV[1], 'e', ARGV[3])

--- script: reroute
-- Moves a routed task's waiting work entry to another queue of the same
-- partition and records the move (TaskRerouted), at once. Only an entry that
-- still waits moves: it is there, holds this task, was never delivered to a
-- worker (its id is past the group's last-delivered id, so it is not pending
-- either) and its task has not ended. A claimed entry never moves. The new
-- entry keeps the attempt and carries the task's spec with its new queue.
-- KEYS: events, done, from work stream, to work stream (one partition)
-- ARGV: group, entry_id, task_id, rerouted event, spec for the new entry
-- Returns {1, event_id, new_entry_id}, or {0, why} when nothing was written.
local group, entry, tid = ARGV[1], ARGV[2], ARGV[3]
if group == nil or group == '' or not parse(entry) or tid == nil or tid == ''
    or ARGV[4] == nil or ARGV[4] == '' or ARGV[5] == nil or ARGV[5] == '' then
  return redis.error_reply('ERR eventcore reroute: group, entry id, task id, event and spec are needed')
end
if KEYS[3] == KEYS[4] then return redis.error_reply('ERR eventcore reroute: from and to are one stream') end
local got = redis.call('XRANGE', KEYS[3], entry, entry)
if #got == 0 then return {0, 'entry ' .. entry .. ' is gone'} end
local fields = got[1][2]
local owner, attempt = '', '1'
for f = 1, #fields, 2 do
  if fields[f] == 'task' then owner = fields[f + 1] end
  if fields[f] == 'attempt' then attempt = fields[f + 1] end
end
if owner ~= tid then return {0, 'entry ' .. entry .. ' holds another task'} end
local done = redis.call('HGET', KEYS[2], tid)
if done then return {0, 'task already ended: ' .. done} end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[3])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if info['name'] == group and not id_lt(info['last-delivered-id'], entry) then
    return {0, 'entry ' .. entry .. ' was delivered to a worker'}
  end
end
local eid = redis.call('XADD', KEYS[1], '*', 'task', tid, 'e', ARGV[4])
local new = redis.call('XADD', KEYS[4], '*', 'task', tid, 'attempt', attempt, 'spec', ARGV[5])
redis.call('XDEL', KEYS[3], entry)
return {1, eid, new}
