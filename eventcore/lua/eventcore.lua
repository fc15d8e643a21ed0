-- eventcore's atomic writes. Each section below is one script, loaded by
-- eventcore/scripts.py and called through its typed wrappers.
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
-- Helpers every script is prefixed with (scripts.py puts them in front).
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

--- script: write_views
-- Writes one batch of view changes, their feed entries and the watermark at
-- once, so views never disagree with each other after a crash: the runner
-- acks the batch's entries only after this returns.
-- KEYS: feed, watermark, nodes hash, queues hash, stats hash, then one key per task view
-- ARGV: feed_maxlen, n_tasks, task views..., n_nodes, (field, view)..., n_queues,
--       (field, view)..., n_stats, (field, view)..., n_feed, 8 fields per feed
--       entry (entity, id, queue, kind, status, node, tenant, view),
--       n_marks, (stream, id)..., n_index, 4 fields per index op (a|r, key, score, member)
-- Index keys come in ARGV: which indexes a task enters or leaves (its status,
-- queue, node...) is known only from its views; keys.py builds them, all
-- under the same {v} tag as KEYS.
local maxlen = tonumber(ARGV[1])
if not maxlen or maxlen < 1 then return redis.error_reply('ERR eventcore write_views: bad maxlen') end
local a = 2
local sections = {}
for _, width in ipairs({1, 2, 2, 2, 8, 2, 4}) do
  local n = tonumber(ARGV[a])
  if not n or n < 0 or n ~= math.floor(n) or a + n * width > #ARGV then
    return redis.error_reply('ERR eventcore write_views: bad section count at ' .. a)
  end
  sections[#sections + 1] = {a + 1, n}
  a = a + 1 + n * width
end
if a ~= #ARGV + 1 then return redis.error_reply('ERR eventcore write_views: extra arguments') end
for i = 0, sections[7][2] - 1 do
  local o = sections[7][1] + 4 * i
  if (ARGV[o] ~= 'a' and ARGV[o] ~= 'r') or not tonumber(ARGV[o + 2]) or ARGV[o + 1] == '' then
    return redis.error_reply('ERR eventcore write_views: bad index op')
  end
end
if #KEYS ~= 5 + sections[1][2] then return redis.error_reply('ERR eventcore write_views: one key per task view') end
local s = sections[1]
for i = 0, s[2] - 1 do redis.call('SET', KEYS[6 + i], ARGV[s[1] + i]) end
for h = 2, 4 do
  s = sections[h]
  for i = 0, s[2] - 1 do redis.call('HSET', KEYS[1 + h], ARGV[s[1] + 2 * i], ARGV[s[1] + 2 * i + 1]) end
end
s = sections[5]
local names = {'entity', 'id', 'queue', 'kind', 'status', 'node', 'tenant', 'view'}
for i = 0, s[2] - 1 do
  local cmd = {'XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*'}
  for f = 1, 8 do
    cmd[#cmd + 1] = names[f]
    cmd[#cmd + 1] = ARGV[s[1] + 8 * i + f - 1]
  end
  redis.call(unpack(cmd))
end
s = sections[6]
for i = 0, s[2] - 1 do redis.call('HSET', KEYS[2], ARGV[s[1] + 2 * i], ARGV[s[1] + 2 * i + 1]) end
local marks = s[2]
s = sections[7]
for i = 0, s[2] - 1 do
  local o = s[1] + 4 * i
  if ARGV[o] == 'a' then
    redis.call('ZADD', ARGV[o + 1], ARGV[o + 2], ARGV[o + 3])
  else
    redis.call('ZREM', ARGV[o + 1], ARGV[o + 3])
  end
end
return marks

--- script: publish_snapshot
-- Makes a fully written snapshot the latest one, at once: renames its staging
-- hash to its final key (dropping the staging TTL), points `latest` at it and
-- drops the snapshot it replaces. Refuses, writing nothing, if the staging hash
-- does not hold the expected number of fields (a write went missing) or if
-- another snapshot was published since this one started (the pointer no
-- longer names `previous`).
-- KEYS: pointer, staging hash, final hash, previous snapshot hash (the final key when none)
-- ARGV: id, expected field count, previous id ('' when none)
local want = tonumber(ARGV[2])
if ARGV[1] == nil or ARGV[1] == '' or not want or ARGV[3] == nil then
  return redis.error_reply('ERR eventcore publish_snapshot: id, field count and previous id are needed')
end
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[3] then
  return redis.error_reply('ERR eventcore publish_snapshot: snapshot ' .. current .. ' was published meanwhile')
end
local have = redis.call('HLEN', KEYS[2])
if have ~= want then
  return redis.error_reply('ERR eventcore publish_snapshot: staging holds ' .. have .. ' fields, expected ' .. want)
end
redis.call('RENAME', KEYS[2], KEYS[3])
redis.call('PERSIST', KEYS[3])
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] ~= '' and KEYS[4] ~= KEYS[3] then redis.call('UNLINK', KEYS[4]) end
return have

--- script: trim_stream
-- Trims a log stream below `limit` (a snapshot's watermark for it), but never
-- past what a consumer group still needs: its oldest pending entry, and every
-- entry after its last-delivered id. Reading the groups and trimming in one
-- script means no group can be created or fall behind in between. When entries
-- are removed, the trim mark keeps the lowest id kept, so readers know the log
-- is incomplete below it.
-- KEYS: stream, trim mark
-- ARGV: limit (an entry id)
-- Returns {minid, entries trimmed, group that held the trim back ('' if none)}.
local limit = ARGV[1]
if not parse(limit) then return redis.error_reply('ERR eventcore trim_stream: limit must be an entry id') end
if redis.call('EXISTS', KEYS[1]) == 0 then return {limit, 0, ''} end
local minid, held = limit, ''
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local bound = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], info['name'])[2]
    if id_lt(oldest, bound) then bound = oldest end
  end
  if id_lt(bound, minid) then minid, held = bound, info['name'] end
end
local trimmed = redis.call('XTRIM', KEYS[1], 'MINID', minid)
if trimmed > 0 then
  local mark = redis.call('GET', KEYS[2])
  if not mark or id_lt(mark, minid) then redis.call('SET', KEYS[2], minid) end
end
return {minid, trimmed, held}

--- script: prune_done
-- Forgets the recorded outcome of tasks whose events were all trimmed, except
-- a task waiting in the delayed set or with a cancel request on record (the
-- caller has checked the work streams, which only a scan could).
-- KEYS: done, delayed, cancels
-- ARGV: task ids
-- Returns how many were forgotten.
local pruned = 0
for i = 1, #ARGV do
  local tid = ARGV[i]
  if tid ~= '' and not redis.call('ZSCORE', KEYS[2], tid) and redis.call('SISMEMBER', KEYS[3], tid) == 0 then
    pruned = pruned + redis.call('HDEL', KEYS[1], tid)
  end
end
return pruned

--- script: import_entries
-- Appends exported entries to one stream with their original ids, in order.
-- An entry already there with the same fields is skipped (importing twice
-- writes nothing new); one below the trim mark was trimmed here and is skipped
-- too. The first entry that can be neither (another entry has its id, or the
-- stream already holds newer entries) stops the call: what came before it is
-- written, nothing after. A task's terminal event also records its outcome in
-- `done`, as settle does, if none is recorded.
-- KEYS: stream, trim mark, done (the stream stands in when it is not a task log)
-- ARGV: n, then per entry: id, task id, outcome ('' unless it ends its task), nfields, (field, value)...
-- Returns {added, present, trimmed, stop (1-based, 0 = none), reason, newest id}.
local n = tonumber(ARGV[1])
if not n or n < 0 or n ~= math.floor(n) then return redis.error_reply('ERR eventcore import_entries: bad count') end
local starts = {}
local a = 2
for i = 1, n do
  starts[i] = a
  local nf = tonumber(ARGV[a + 3])
  if not parse(ARGV[a]) or ARGV[a] == '0-0' then
    return redis.error_reply('ERR eventcore import_entries: bad entry id at entry ' .. i)
  end
  if ARGV[a + 1] == nil or ARGV[a + 2] == nil or not nf or nf < 1 or nf ~= math.floor(nf) then
    return redis.error_reply('ERR eventcore import_entries: bad entry ' .. i)
  end
  if ARGV[a + 2] ~= '' and (ARGV[a + 1] == '' or KEYS[3] == KEYS[1]) then
    return redis.error_reply('ERR eventcore import_entries: an outcome needs a task id and a done hash')
  end
  for j = 0, 2 * nf - 1 do
    if ARGV[a + 4 + j] == nil then return redis.error_reply('ERR eventcore import_entries: missing field at entry ' .. i) end
  end
  a = a + 4 + 2 * nf
end
if a ~= #ARGV + 1 then return redis.error_reply('ERR eventcore import_entries: extra arguments') end

local newest = '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then newest = info[i + 1] end
  end
end
local mark = redis.call('GET', KEYS[2])
local added, present, trimmed = 0, 0, 0
for i = 1, n do
  local s = starts[i]
  local id, nf = ARGV[s], tonumber(ARGV[s + 3])
  if id_lt(newest, id) then
    local cmd = {'XADD', KEYS[1], id}
    for j = 0, 2 * nf - 1 do cmd[#cmd + 1] = ARGV[s + 4 + j] end
    redis.call(unpack(cmd))
    newest = id
    added = added + 1
    if ARGV[s + 2] ~= '' then redis.call('HSETNX', KEYS[3], ARGV[s + 1], ARGV[s + 2]) end
  else
    local got = redis.call('XRANGE', KEYS[1], id, id)
    if #got == 1 then
      local fields = got[1][2]
      local same = #fields == 2 * nf
      for j = 1, #fields do
        if same and fields[j] ~= ARGV[s + 3 + j] then same = false end
      end
      if not same then return {added, present, trimmed, i, 'conflict', newest} end
      present = present + 1
    elseif mark and id_lt(id, mark) then
      trimmed = trimmed + 1
    else
      return {added, present, trimmed, i, 'order', newest}
    end
  end
end
return {added, present, trimmed, 0, '', newest}

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
