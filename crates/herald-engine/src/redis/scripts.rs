//! The Lua scripts of the Redis engine: each step that must be atomic — a publish with its
//! dedupe, and every transition of a group's entry — is one script, run by Redis alone.
//!
//! Every script touches one stream's keys only (see `keys.rs`: they share a hash tag), so they
//! run unchanged on a Redis Cluster. Group scripts take `KEYS` in `GroupKeys::all` order:
//! events, due, dead, stats, info, meta.
//!
//! An entry of a group is in exactly one of these states, all in Redis:
//! - pending, owned by a process's holder consumer (`hold:<process>`): read, not yet handed out;
//! - pending, owned by a member's consumer (`m:<process>:<member>`): in flight, its delivery
//!   count is the attempt;
//! - pending, owned by `_scheduled`, its seq in the `due` sorted set: waiting for a retry;
//! - acked: done, or dead-lettered (a copy in the `dead` stream).
//!
//! Every verb checks that the entry is still owned by the member and at the attempt it was
//! delivered with, so a verb on a delivery that timed out and went elsewhere is refused (acks
//! through the member's fence, see `ACK`).
//!
//! Numbers too large for Lua's `tostring` (µs since the epoch) are formatted with `%.0f`.

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by the group scripts.
const GROUP_PRELUDE: &str = r#"
local events, due, dead, stats, info = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local SCHEDULED = '_scheduled'
local function int(x) return string.format('%.0f', x) end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- The consumer holding entry `seq`, its delivery count and how long ago (ms) it was delivered,
-- or nil.
local function pending(group, seq)
  local ok, p = pcall(redis.call, 'XPENDING', events, group, '0-' .. seq, '0-' .. seq, 1)
  if not ok or #p == 0 then return nil, 0, 0 end
  return p[1][2], tonumber(p[1][4]), tonumber(p[1][3])
end
-- Remembers when a first attempt was delivered, once it failed (successes need not pay for it).
local function first_delivered(seq, count, idle_ms, now)
  if count == 1 then
    redis.call('HSETNX', info, 'f:' .. seq, int(math.floor(now / 1000) - idle_ms))
  end
end
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
-- Moves an entry to the dead-letter stream, with why, and acks it.
local function bury(group, seq, attempts, now)
  local entry = redis.call('XRANGE', events, '0-' .. seq, '0-' .. seq)
  local dead_ms = int(math.floor(now / 1000))
  local first = redis.call('HGET', info, 'f:' .. seq) or dead_ms
  local err = redis.call('HGET', info, 'e:' .. seq) or ''
  local has_error = redis.call('HEXISTS', info, 'e:' .. seq)
  if #entry > 0 then
    redis.call('XADD', dead, '*', 'seq', seq, 'attempts', attempts, 'error', err,
      'has_error', has_error, 'first', first, 'dead', dead_ms, 'e', field(entry[1][2], 'e'))
    redis.call('HINCRBY', stats, 'dead_lettered', 1)
  end
  redis.call('XACK', events, group, '0-' .. seq)
  redis.call('ZREM', due, seq)
  redis.call('HDEL', info, 'f:' .. seq, 'e:' .. seq)
end
"#;

fn group_script(body: &str) -> Script {
    Script::new(&format!("{GROUP_PRELUDE}\n{body}"))
}

/// What the scripts that store events share: the seq of an entry id, and `stamp`, which
/// records a stored range of seqs in the stream's `meta` and time index.
///
/// The time index holds per call its first seq (zero-padded, so that calls with the same
/// store time sort by seq) scored by the call's store time: Redis's `TIME`, never going
/// backwards per stream (`meta`'s `t`), so that the index is sorted by seq too.
macro_rules! stamp_prelude {
    () => {
        r#"
local function seq_text(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if ms ~= '0' then
    error('entry id ' .. tostring(id) .. ' is not 0-<seq>: the stream holds entries of an '
      .. 'older format')
  end
  return seq
end
local function stamp(meta, times, cap, first, last)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local stamp = t[1] .. string.format('%06d', tonumber(t[2]))
  local previous = redis.call('HGET', meta, 't')
  if previous and tonumber(previous) > now then stamp = previous end
  redis.call('ZADD', times, stamp, string.format('%020d', first))
  if cap > 0 then
    -- Each index entry stands for at least one event: `cap` of them cover what is kept.
    redis.call('ZREMRANGEBYRANK', times, 0, string.format('%d', -(cap + 1)))
  end
  redis.call('HSET', meta, 'seq', string.format('%d', last), 't', stamp)
  redis.call('HINCRBY', meta, 'published', last - first + 1)
end
"#
    };
}

/// How many windows a dedupe bucket outlives its own (it is read as the previous, current and
/// next bucket).
pub(crate) const DEDUPE_BUCKET_WINDOWS_KEPT: u64 = 3;

/// Runs right after the `XADD`s of a chunk of events under ids of the engine's making
/// (`chunk_ids.rs`), on the connection that sent them: records the chunk as `<first seq>:<count>`
/// in the current dedupe bucket, taking its entries for the stream's last ones, so that a
/// publisher sending one of those ids again gets a duplicate (PRODUCT.md section 3; `PUBLISH`
/// finds it); and records every seq past `meta`'s `seq` up to the stream's last entry (entries
/// of other connections included) in `meta` and the time index. It never sees an event.
///
/// Another connection's `XADD`s may have come between the chunk's (a pipeline is not a
/// transaction): the record is then wrong, which the caller sees from the `XADD`s' own replies
/// and mends before it answers anyone (`chunk_pipeline.rs`).
/// KEYS: meta, events, the time index, the current dedupe bucket. ARGV: max events (0: no cap),
/// the chunk's record field (`ChunkIds::record_field`), its number of events. Returns the first
/// seq it recorded for the chunk.
pub(crate) const STAMP: &str = concat!(
    stamp_prelude!(),
    r#"
local meta, events, times, bucket = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- The last entry's id, rather than `XINFO STREAM`'s `last-generated-id`: that reply carries
-- the first and last entries and more, and was a third of this script's cost.
local top = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)[1]
local last
if top then
  last = tonumber(seq_text(top[1]))
else
  -- Trimmed empty meanwhile: the stream still knows the last id it gave.
  local info = redis.call('XINFO', 'STREAM', events)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = tonumber(seq_text(info[i + 1])) end
  end
end
local count = tonumber(ARGV[3])
local first = last - count + 1
redis.call('HSET', bucket, ARGV[2], string.format('%d:%d', first, count))
local previous = tonumber(redis.call('HGET', meta, 'seq') or '0')
if last > previous then stamp(meta, times, tonumber(ARGV[1]), previous + 1, last) end
return first
"#
);

/// Marks, in `PUBLISH`'s ARGV[3], an event whose publisher chose its id: looked up.
pub(crate) const PUBLISH_DEDUPED: char = 'd';
/// Marks, in `PUBLISH`'s ARGV[3], an event whose id Herald generated: stored without a look-up
/// (no earlier event can have it, `herald_core::IdOrigin`), and recorded like every stored id.
pub(crate) const PUBLISH_GENERATED: char = 'g';

/// Stores a chunk of one stream's events of which some carry an id their publisher chose.
/// KEYS: meta, events, the time index, then the dedupe buckets of the previous, current and
/// next window. ARGV: dedupe window (ms), max events (0: no cap), one letter per event
/// ([`PUBLISH_DEDUPED`] or [`PUBLISH_GENERATED`]), then each event's id and JSON. Returns, per event, its new seq, or minus the seq of the event it duplicates.
///
/// Dedupe ids live in one hash per window-long time bucket (`HMGET`/`HSET` of the whole batch,
/// two commands per batch rather than two per event): an id written in bucket `b` is found
/// while `b` is the previous, current or next bucket, so for at least a window and at most
/// two, whatever the processes' clocks disagree on by less than a window.
///
/// Per stored event the script does one `XADD` (id `0-*`: Redis numbers the entry) and nothing
/// else that Redis would not do for a plain `XADD`, because Redis's one thread running this
/// loop is what bounds publishing: the store time is written once per call into the time
/// index (every event of a call shares it), not into each entry.
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(&PUBLISH_SOURCE));

/// [`PUBLISH`]'s text, which a publish connection sends with each call (`EVAL`, never missing
/// from a restarted Redis; `chunk_pipeline.rs`).
pub(crate) static PUBLISH_SOURCE: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
{prelude}
local meta, events, times = KEYS[1], KEYS[2], KEYS[3]
local cap = tonumber(ARGV[2])
local origins = ARGV[3]
local count = #origins
local DEDUPED = string.byte('{PUBLISH_DEDUPED}')
local ids = {{}}
local chosen = 0
for k = 1, count do
  if string.byte(origins, k) == DEDUPED then
    chosen = chosen + 1
    ids[chosen] = ARGV[2 + 2 * k]
  end
end
-- An id the engine made for a chunk (`chunk_ids.rs`) is found by the chunk's record, which
-- `STAMP` wrote as `<first seq>:<count>` under the id's time and tag digits.
local chunk_fields, chunk_of, position = {{}}, {{}}, {{}}
for j = 1, chosen do
  local id = ids[j]
  -- The position as the engine writes it, three lowercase hex digits: `tonumber` alone would
  -- also read ' 1a' or '01A', other ids.
  local digits = string.sub(id, 16, 18)
  if #id == 36 and string.sub(id, 15, 15) == '7' and string.sub(id, 20, 24) == '{mark:x}-'
    and string.find(digits, '^[0-9a-f][0-9a-f][0-9a-f]$') then
    chunk_fields[#chunk_fields + 1] = '\1' .. string.sub(id, 1, 13) .. string.sub(id, 25)
    chunk_of[j] = #chunk_fields
    position[j] = tonumber(digits, 16)
  end
end
local function lookup(bucket, fields)
  if #fields == 0 then return {{}} end
  return redis.call('HMGET', bucket, unpack(fields))
end
local before, current, after = lookup(KEYS[4], ids), lookup(KEYS[5], ids), lookup(KEYS[6], ids)
local chunks_before = lookup(KEYS[4], chunk_fields)
local chunks_current = lookup(KEYS[5], chunk_fields)
local chunks_after = lookup(KEYS[6], chunk_fields)
local function in_chunk(record, k)
  if not record then return nil end
  local first, count = string.match(record, '^(%d+):(%d+)$')
  if not first or k >= tonumber(count) then return nil end
  return string.format('%d', tonumber(first) + k)
end
-- The seq the j-th chosen id was stored with, or nil.
local function recorded_seq(j)
  local seq = before[j] or current[j] or after[j]
  if seq then return seq end
  local c = chunk_of[j]
  if not c then return nil end
  local k = position[j]
  return in_chunk(chunks_before[c], k) or in_chunk(chunks_current[c], k)
    or in_chunk(chunks_after[c], k)
end
local previous = tonumber(redis.call('HGET', meta, 'seq') or '0')
local fresh = {{}}
local remembered = {{}}
local recorded = 0
local stored = 0
local last = previous
local out = {{}}
local j = 0
for k = 1, count do
  local deduped = string.byte(origins, k) == DEDUPED
  local id = ARGV[2 + 2 * k]
  local prior = nil
  if deduped then
    j = j + 1
    prior = recorded_seq(j) or fresh[id]
  end
  if prior then
    out[k] = -tonumber(prior)
  else
    local entry
    if cap > 0 then
      entry = redis.call('XADD', events, 'MAXLEN', '~', ARGV[2], '0-*', 'e', ARGV[3 + 2 * k])
    else
      entry = redis.call('XADD', events, '0-*', 'e', ARGV[3 + 2 * k])
    end
    local text = seq_text(entry)
    last = tonumber(text)
    fresh[id] = text
    remembered[2 * recorded + 1] = id
    remembered[2 * recorded + 2] = text
    recorded = recorded + 1
    stored = stored + 1
    out[k] = last
  end
end
if recorded > 0 then
  redis.call('HSET', KEYS[5], unpack(remembered))
  redis.call('PEXPIRE', KEYS[5], {kept} * tonumber(ARGV[1]))
end
-- From past `meta`'s `seq`: entries a pipeline added and has not stamped yet are recorded too.
if stored > 0 then stamp(meta, times, cap, previous + 1, last) end
redis.call('HINCRBY', meta, 'duplicates', count - stored)
return out
"#,
        prelude = stamp_prelude!(),
        kept = DEDUPE_BUCKET_WINDOWS_KEPT,
        mark = super::chunk_ids::MARK
    )
});

/// Hands entries held by a process to one of its members. ARGV: group, holder, member, seqs.
/// Returns 1 per entry handed over, 0 per entry the holder no longer owns.
pub(crate) static ASSIGN: LazyLock<Script> = LazyLock::new(|| {
    group_script(
        r#"
local group, holder, member = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local delivered = 0
for i = 4, #ARGV do
  local seq = ARGV[i]
  if pending(group, seq) == holder then
    redis.call('XCLAIM', events, group, member, 0, '0-' .. seq, 'RETRYCOUNT', 1, 'JUSTID')
    delivered = delivered + 1
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.call('HINCRBY', stats, 'delivered', delivered)
return out
"#,
    )
});

/// Hands retries that are due to a member. ARGV: group, member, max count. Returns the µs until
/// the next retry of this group on this stream is due (-1: none), then per delivery its seq,
/// attempt and event JSON.
pub(crate) static TAKE_DUE: LazyLock<Script> = LazyLock::new(|| {
    group_script(
        r#"
local group, member = ARGV[1], ARGV[2]
local now = now_us()
local seqs = redis.call('ZRANGEBYSCORE', due, '-inf', int(now), 'LIMIT', 0, tonumber(ARGV[3]))
local out = {-1}
local delivered, redelivered = 0, 0
for _, seq in ipairs(seqs) do
  redis.call('ZREM', due, seq)
  local owner, count = pending(group, seq)
  if owner == SCHEDULED then
    local attempt = count + 1
    local claimed = redis.call('XCLAIM', events, group, member, 0, '0-' .. seq,
      'RETRYCOUNT', attempt)
    local entry = claimed[1]
    if entry and entry[2] then
      out[#out + 1] = tonumber(seq)
      out[#out + 1] = attempt
      out[#out + 1] = field(entry[2], 'e')
      delivered = delivered + 1
      if attempt > 1 then redelivered = redelivered + 1 end
    else
      -- Trimmed by retention meanwhile: nothing left to deliver.
      redis.call('XACK', events, group, '0-' .. seq)
      redis.call('HDEL', info, 'f:' .. seq, 'e:' .. seq)
    end
  end
end
redis.call('HINCRBY', stats, 'delivered', delivered)
redis.call('HINCRBY', stats, 'redelivered', redelivered)
local nxt = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
if #nxt > 0 then
  local wait = tonumber(nxt[2]) - now
  if wait < 0 then wait = 0 end
  out[1] = wait
end
return out
"#,
    )
});

/// Acks deliveries of one member. ARGV: group, member, n, the n entry ids (`<seq>-0`), then
/// pairs of position (1-based) and attempt for the entries delivered more than once (the
/// others were first attempts). Returns 1 per ack recorded, 0 per delivery no longer in flight
/// to the member at that attempt — or, when every entry has the same answer (an unfenced
/// consumer's batch), that answer once: a reply of a thousand integers cost the Herald process
/// more to parse than the acks cost Redis (docs/PERFORMANCE.md).
///
/// Only another process moves a member's entries behind its back: `RECOVER`, when it takes the
/// member's process for dead (its own task moves them only after forgetting the delivery, and
/// refuses verbs on it). `RECOVER` marks the member's consumer `fenced:<consumer>` first; until
/// a consumer is fenced, every entry its process still holds as in flight is its own at that
/// attempt, so the acks are one `XACK` with no per-entry look-up. A fenced consumer's acks are
/// checked one by one against the pending list, as every other verb is. The look-up was most
/// of this script's cost, and the script was most of Redis's work per consumed event.
pub(crate) static ACK: LazyLock<Script> = LazyLock::new(|| {
    group_script(
        r#"
local group, member, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
-- The i-th entry id is ARGV[3 + i], passed on as a range rather than copied into a table
-- first (the copy was a sixth of the script's cost for a batch of 800).
local function id(i) return ARGV[3 + i] end
local attempts = {}
for i = 4 + n, #ARGV, 2 do attempts[tonumber(ARGV[i])] = tonumber(ARGV[i + 1]) end
local out = {}
-- Every entry's answer, when they share one.
local all = nil
local acked = 0
if redis.call('HEXISTS', info, 'fenced:' .. member) == 0 then
  acked = redis.call('XACK', events, group, unpack(ARGV, 4, 3 + n))
  -- Short only when the group itself is gone: then nothing was recorded.
  all = acked > 0 and 1 or 0
else
  -- The member's pending entries over the batch's range, in one look-up rather than one per
  -- entry: a range of n seqs holds at most n of them.
  local low, high = math.huge, 0
  for i = 1, n do
    local seq = tonumber(string.sub(id(i), 3))
    if seq < low then low = seq end
    if seq > high then high = seq end
  end
  local owned = {}
  local ok, p = pcall(redis.call, 'XPENDING', events, group, '0-' .. int(low),
    '0-' .. int(high), high - low + 1, member)
  if ok then
    for _, entry in ipairs(p) do owned[entry[1]] = tonumber(entry[4]) end
  end
  local mine = {}
  for i = 1, n do
    if owned[id(i)] ~= nil and owned[id(i)] == (attempts[i] or 1) then
      mine[#mine + 1] = id(i)
      out[i] = 1
    else
      out[i] = 0
    end
  end
  if #mine > 0 then acked = redis.call('XACK', events, group, unpack(mine)) end
end
-- Only an entry that failed before has notes (a first attempt's delivery time, an error).
for i, _ in pairs(attempts) do
  if (all or out[i]) == 1 then
    local seq = string.sub(id(i), 3)
    redis.call('HDEL', info, 'f:' .. seq, 'e:' .. seq)
  end
end
if acked > 0 then redis.call('HINCRBY', stats, 'acked', acked) end
if all ~= nil then return all end
return out
"#,
    )
});

/// A failed attempt: nack, ack timeout, a member leaving, or reject. ARGV: group, member, seq,
/// attempt, retry delay (µs), max retries (-1: dead-letter now), counter to bump ('' for none),
/// '1' when a reason follows, the reason. Returns 0 when the delivery is no longer in flight to
/// the member at that attempt, 1 when a retry is scheduled, 2 when it was dead-lettered.
pub(crate) static FAIL: LazyLock<Script> = LazyLock::new(|| {
    group_script(
        r#"
local group, member, seq = ARGV[1], ARGV[2], ARGV[3]
local owner, count, idle_ms = pending(group, seq)
if owner ~= member or count ~= tonumber(ARGV[4]) then return 0 end
if ARGV[7] ~= '' then redis.call('HINCRBY', stats, ARGV[7], 1) end
if ARGV[8] == '1' then redis.call('HSET', info, 'e:' .. seq, ARGV[9]) end
local now = now_us()
first_delivered(seq, count, idle_ms, now)
local max_retries = tonumber(ARGV[6])
if max_retries < 0 or count > max_retries then
  bury(group, seq, count, now)
  return 2
end
redis.call('XCLAIM', events, group, SCHEDULED, 0, '0-' .. seq, 'JUSTID')
redis.call('ZADD', due, int(now + tonumber(ARGV[5])), seq)
return 1
"#,
    )
});

/// Still working: checks that the entry is still the member's (the ack deadline is the
/// process's own timer; the entry's idle time keeps counting from its delivery, which dates a
/// first attempt should it fail). ARGV: group, member, seq, attempt. Returns 1, or 0 when it is
/// no longer in flight to the member.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    group_script(
        r#"
local group, member, seq = ARGV[1], ARGV[2], ARGV[3]
local owner, count = pending(group, seq)
if owner ~= member or count ~= tonumber(ARGV[4]) then return 0 end
return 1
"#,
    )
});

/// Gives back entries a process held without handing them out: due at once, never delivered.
/// ARGV: group, holder, seqs. Returns how many went back.
pub(crate) static RELEASE_HELD: LazyLock<Script> = LazyLock::new(|| {
    group_script(
        r#"
local group, holder = ARGV[1], ARGV[2]
local now = now_us()
local released = 0
for i = 3, #ARGV do
  local seq = ARGV[i]
  if pending(group, seq) == holder then
    redis.call('XCLAIM', events, group, SCHEDULED, 0, '0-' .. seq, 'RETRYCOUNT', 0, 'JUSTID')
    redis.call('ZADD', due, int(now), seq)
    released = released + 1
  end
end
return released
"#,
    )
});

/// Recovers an entry of a process taken for dead (its heartbeat expired): held entries are
/// due at once, never delivered; a member's delivery counts as a failed attempt. ARGV: group,
/// consumer, seq, delivery count, max retries. Returns 0 when the entry moved meanwhile, 1 when
/// it is due again, 2 when it was dead-lettered.
pub(crate) static RECOVER: LazyLock<Script> = LazyLock::new(|| {
    group_script(
        r#"
local group, consumer, seq = ARGV[1], ARGV[2], ARGV[3]
local owner, count, idle_ms = pending(group, seq)
if owner ~= consumer or count ~= tonumber(ARGV[4]) then return 0 end
local now = now_us()
if string.sub(consumer, 1, 5) == 'hold:' then
  redis.call('XCLAIM', events, group, SCHEDULED, 0, '0-' .. seq, 'RETRYCOUNT', 0, 'JUSTID')
  redis.call('ZADD', due, int(now), seq)
  return 1
end
-- From now on the member's acks are checked entry by entry (see `ACK`).
redis.call('HSET', info, 'fenced:' .. consumer, 1)
redis.call('HSET', info, 'e:' .. seq, "the member's process was lost")
first_delivered(seq, count, idle_ms, now)
if count > tonumber(ARGV[5]) then
  bury(group, seq, count, now)
  return 2
end
redis.call('XCLAIM', events, group, SCHEDULED, 0, '0-' .. seq, 'JUSTID')
redis.call('ZADD', due, int(now), seq)
return 1
"#,
    )
});

/// Puts up to ARGV[2] dead letters back into the group, attempts reset, due now. ARGV: group,
/// count. Returns how many letters were taken and how many were redriven (a letter whose event
/// retention has trimmed cannot be).
pub(crate) static REDRIVE: LazyLock<Script> = LazyLock::new(|| {
    group_script(
        r#"
local group = ARGV[1]
local letters = redis.call('XRANGE', dead, '-', '+', 'COUNT', tonumber(ARGV[2]))
local now = now_us()
local redriven = 0
for _, letter in ipairs(letters) do
  local seq = field(letter[2], 'seq')
  local claimed = redis.call('XCLAIM', events, group, SCHEDULED, 0, '0-' .. seq,
    'FORCE', 'JUSTID', 'RETRYCOUNT', 0)
  if #claimed > 0 then
    redis.call('ZADD', due, int(now), seq)
    redriven = redriven + 1
  end
  redis.call('HDEL', info, 'f:' .. seq, 'e:' .. seq)
  redis.call('XDEL', dead, letter[1])
end
return {#letters, redriven}
"#,
    )
});

/// Removes a member's consumer once it owns nothing (deleting a consumer drops its pending
/// entries, which would lose them). ARGV: group, member.
pub(crate) static FORGET_CONSUMER: LazyLock<Script> = LazyLock::new(|| {
    group_script(
        r#"
local ok, p = pcall(redis.call, 'XPENDING', events, ARGV[1], '-', '+', 1, ARGV[2])
if ok and #p == 0 then
  redis.call('XGROUP', 'DELCONSUMER', events, ARGV[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// A group's state on one stream. ARGV: group. Returns nil when the group has no Redis group on
/// the stream; otherwise pending entries in all, those owned by `_scheduled`, those held by
/// processes, the due set's size, the dead letters, the counters delivered, acked, nacked,
/// redelivered and dead_lettered, the last seq the group read, and the stream's last seq.
pub(crate) static GROUP_STATS: LazyLock<Script> = LazyLock::new(|| {
    group_script(
        r#"
local group = ARGV[1]
local ok, summary = pcall(redis.call, 'XPENDING', events, group)
if not ok then return nil end
local total, scheduled, held = tonumber(summary[1]), 0, 0
if summary[4] then
  for _, consumer in ipairs(summary[4]) do
    if consumer[1] == SCHEDULED then scheduled = scheduled + tonumber(consumer[2]) end
    if string.sub(consumer[1], 1, 5) == 'hold:' then held = held + tonumber(consumer[2]) end
  end
end
local read = 0
for _, g in ipairs(redis.call('XINFO', 'GROUPS', events)) do
  if field(g, 'name') == group then
    local id = field(g, 'last-delivered-id')
    read = tonumber(string.match(id, '^0%-(%d+)$')) or 0
  end
end
local counters = {}
for _, name in ipairs({'delivered', 'acked', 'nacked', 'redelivered', 'dead_lettered'}) do
  counters[#counters + 1] = tonumber(redis.call('HGET', stats, name) or '0')
end
local last = tonumber(redis.call('HGET', KEYS[6], 'seq') or '0')
return {total, scheduled, held, redis.call('ZCARD', due), redis.call('XLEN', dead),
  counters[1], counters[2], counters[3], counters[4], counters[5], read, last}
"#,
    )
});
