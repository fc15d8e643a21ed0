-- The projections' atomic writes: views, snapshots, trimming, pruning and
-- importing. Each section below is one script, loaded by projections/scripts.py
-- (which puts the `_shared` helpers of eventcore/lua/eventcore.lua in front of
-- every script) and called through its typed wrappers.
--
-- The rules of eventcore/lua/eventcore.lua hold here too: every argument is
-- checked before the first write, and all keys of one call share one hash tag.

--- script: write_views
-- Writes one batch of view changes, their feed entries and the watermark at
-- once, so views never disagree with each other after a crash: the runner
-- acks the batch's entries only after this returns.
-- A writer that holds the shard's lease passes its token: when the lease key
-- holds anything else (the lease lapsed and another projector took it), the
-- call writes nothing and answers LEASE. An empty token checks no lease.
-- KEYS: feed, watermark, nodes hash, queues hash, stats hash, lease, then one key per task view
-- ARGV: feed_maxlen, lease token, n_tasks, task views..., n_nodes, (field, view)..., n_queues,
--       (field, view)..., n_stats, (field, view)..., n_feed, 8 fields per feed
--       entry (entity, id, queue, kind, status, node, tenant, view),
--       n_marks, (stream, id)..., n_index, 4 fields per index op (a|r, key, score, member)
-- Index keys come in ARGV: which indexes a task enters or leaves (its status,
-- queue, node...) is known only from its views; keys.py builds them, all
-- under the same shard tag as KEYS.
local maxlen = tonumber(ARGV[1])
if not maxlen or maxlen < 1 then return redis.error_reply('ERR eventcore write_views: bad maxlen') end
local a = 3
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
if #KEYS ~= 6 + sections[1][2] then return redis.error_reply('ERR eventcore write_views: one key per task view') end
if ARGV[2] ~= '' then
  local holder = redis.call('GET', KEYS[6])
  if holder ~= ARGV[2] then
    return redis.error_reply('LEASE eventcore write_views: the lease is held by ' .. (holder or 'nobody'))
  end
end
local s = sections[1]
for i = 0, s[2] - 1 do redis.call('SET', KEYS[7 + i], ARGV[s[1] + i]) end
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


--- script: renew_lease
-- Extends a projector's lease on a view shard, if it still holds it.
-- KEYS: lease
-- ARGV: token, ttl (ms)
-- Returns 1 if renewed, 0 if the lease names another holder or none.
local ttl = tonumber(ARGV[2])
if not ttl or ttl < 1 then return redis.error_reply('ERR eventcore renew_lease: bad ttl') end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1

--- script: release_lease
-- Gives up a projector's lease on a view shard, if it still holds it.
-- KEYS: lease
-- ARGV: token
-- Returns 1 if released, 0 if it was not held with that token.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1

--- script: expire_tasks
-- Takes finished tasks out of a shard's views (views.retention): for each
-- task whose view is still exactly the one the caller read (so nothing new
-- was folded into it meanwhile), deletes the view and removes the task from
-- its indexes. A writer holding the shard's lease passes its token, as for
-- write_views; an empty token checks no lease.
-- KEYS: lease, then one view key per task
-- ARGV: lease token, then per task: the view as read, the task id, the
--       number of index keys, the index keys (under the shard's tag)
-- Returns how many tasks were taken out.
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[1])
  if holder ~= ARGV[1] then
    return redis.error_reply('LEASE eventcore expire_tasks: the lease is held by ' .. (holder or 'nobody'))
  end
end
local a, removed = 2, 0
for i = 2, #KEYS do
  local n = tonumber(ARGV[a + 2])
  if ARGV[a] == nil or not n or n < 0 or a + 2 + n > #ARGV then
    return redis.error_reply('ERR eventcore expire_tasks: bad arguments for task ' .. (i - 1))
  end
  if redis.call('GET', KEYS[i]) == ARGV[a] then
    redis.call('DEL', KEYS[i])
    for j = 1, n do redis.call('ZREM', ARGV[a + 2 + j], ARGV[a + 1]) end
    removed = removed + 1
  end
  a = a + 3 + n
end
if a ~= #ARGV + 1 then return redis.error_reply('ERR eventcore expire_tasks: extra arguments') end
return removed
