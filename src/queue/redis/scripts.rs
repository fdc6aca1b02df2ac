//! The Lua scripts of the Redis queue: each moves jobs between states in one atomic step.
//!
//! A script is assembled from parts ([`script`]): preludes (the clock, the shared messages, the
//! reaper) and a body. The key layout they work on is in [`super`].

use std::sync::LazyLock;

use redis::Script;

use crate::queue::{DeadReason, LEASE_EXPIRED};

/// Redis time in milliseconds. Prepended to every script that needs the clock.
pub(super) const NOW_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// The messages a script may write, as Lua locals taken from the one place both backends take
/// them ([`DeadReason`], [`LEASE_EXPIRED`]), and `dead_reason`, which encodes a [`DeadReason`].
/// Needs `now` ([`NOW_LUA`]).
static DEAD_LUA: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
local FATAL = {}
local ATTEMPTS_EXHAUSTED = {}
local LEASE_EXPIRED = {}
local function dead_reason(reason, attempts, last_error)
  return cjson.encode({{reason = reason, attempts = attempts, last_error = last_error, at_ms = now}})
end
"#,
        lua_string(DeadReason::FATAL),
        lua_string(DeadReason::ATTEMPTS_EXHAUSTED),
        lua_string(LEASE_EXPIRED),
    )
});

/// `reap(id)`: the lease of `id` expired, so its worker died or stalled past its lease. The job
/// goes back to due, and the lost run counts as a failed attempt: a job that kills its worker
/// every time must end up dead instead of looping forever. Needs [`DEAD_LUA`].
/// KEYS: 1 due, 2 leased, 3 owner, 4 attempts, 5 error, 6 dead, 7 ee:active.
/// ARGV: 1 key prefix `{ns}:{stage}`, then the caller's own arguments.
const REAP_LUA: &str = r#"
local function reap(id, max_attempts)
  redis.call('ZREM', KEYS[2], id)
  local owner = redis.call('HGET', KEYS[3], id)
  if owner then
    redis.call('HDEL', KEYS[3], id)
    redis.call('SREM', ARGV[1] .. ':worker:' .. owner, id)
  end
  local attempts = redis.call('HINCRBY', KEYS[4], id, 1)
  redis.call('HSET', KEYS[5], id, LEASE_EXPIRED)
  if attempts >= max_attempts then
    redis.call('HSET', KEYS[6], id, dead_reason(ATTEMPTS_EXHAUSTED, attempts, LEASE_EXPIRED))
    redis.call('SREM', KEYS[7], id)
  else
    redis.call('ZADD', KEYS[1], now, id)
  end
end
local function reap_expired(limit, max_attempts)
  -- LIMIT keeps this bounded however many workers died at once; the rest wait for the next call.
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(expired) do reap(id, max_attempts) end
  return #expired
end
"#;

/// Adds jobs that do not exist yet. A job exists while its payload is in `data`, whatever its
/// state: a plain `ZADD NX due` would put a leased or dead job back into due, and it would run
/// twice. Export jobs go to the backlog, scored `band + turn`: the band orders priorities
/// (higher priority, lower band), the turn is the submission's own sequence, started no earlier
/// than the band's front, so that submissions of one priority take turns (round-robin) instead
/// of queueing behind each other.
/// KEYS: 1 data, 2 enqueued, 3 target zset (due or backlog), 4 turns hash (submission → last
/// turn). ARGV: 1 'due'|'backlog', 2 delay ms (due only), 3 band, 4 band width, 5 submission,
/// then id, payload pairs.
const ENQUEUE_LUA: &str = r#"
local backlog = ARGV[1] == 'backlog'
local score = now + tonumber(ARGV[2])
local band, width = tonumber(ARGV[3]), tonumber(ARGV[4])
local seq = 0
if backlog then
  seq = tonumber(redis.call('HGET', KEYS[4], ARGV[5]) or '0')
  local front = redis.call('ZRANGEBYSCORE', KEYS[3], band, '(' .. (band + width), 'WITHSCORES', 'LIMIT', 0, 1)
  if front[2] then seq = math.max(seq, tonumber(front[2]) - band - 1) end
end
local added = 0
local seen = {}
-- Jobs go in batches of ENQUEUE_BATCH: one HMGET tells which exist, then one HSET per hash
-- and one ZADD write the new ones. That is a handful of calls per batch instead of four per
-- job. `unpack` only ever spreads one batch (at most 2 x ENQUEUE_BATCH values), far below
-- Lua's stack limit (about 8,000) that apalis-redis 1.0.0 crashed on with unbounded lists.
local i = 6
while i <= #ARGV do
  local ids, payloads = {}, {}
  while i <= #ARGV and #ids < ENQUEUE_BATCH do
    ids[#ids + 1] = ARGV[i]
    payloads[#payloads + 1] = ARGV[i + 1]
    i = i + 2
  end
  local exists = redis.call('HMGET', KEYS[1], unpack(ids))
  local data, enq, z = {}, {}, {}
  for k, id in ipairs(ids) do
    if not exists[k] and not seen[id] then
      seen[id] = true
      data[#data + 1] = id
      data[#data + 1] = payloads[k]
      enq[#enq + 1] = id
      enq[#enq + 1] = now
      if backlog then
        seq = seq + 1
        z[#z + 1] = band + seq
      else
        z[#z + 1] = score
      end
      z[#z + 1] = id
      added = added + 1
    end
  end
  if #data > 0 then
    redis.call('HSET', KEYS[1], unpack(data))
    redis.call('HSET', KEYS[2], unpack(enq))
    redis.call('ZADD', KEYS[3], unpack(z))
  end
end
if backlog and added > 0 then redis.call('HSET', KEYS[4], ARGV[5], seq) end
return added
"#;

/// Reaps a bounded number of expired leases, then leases up to `n` due jobs to `worker`.
/// Never `unpack`s a list: apalis-redis 1.0.0 crashes every worker once ~8,000 jobs are due
/// because it does.
/// KEYS: reap keys 1–7, 8 data, 9 this worker's lease set.
/// ARGV: 1 prefix, 2 worker, 3 n, 4 lease ms, 5 reap limit, 6 max attempts.
const LEASE_LUA: &str = r#"
reap_expired(tonumber(ARGV[5]), tonumber(ARGV[6]))
local lease_ms = tonumber(ARGV[4])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local payload = redis.call('HGET', KEYS[8], id)
  -- A due id without payload was removed half-way by an older version; dropping it is the fix.
  if payload then
    redis.call('ZADD', KEYS[2], now + lease_ms, id)
    redis.call('HSET', KEYS[3], id, ARGV[2])
    redis.call('SADD', KEYS[9], id)
    out[#out + 1] = {id, payload, tonumber(redis.call('HGET', KEYS[4], id) or '0')}
  end
end
if #out > 0 then redis.call('PEXPIRE', KEYS[9], lease_ms * 3) end
return out
"#;

/// Heartbeat-side reaping, so expired leases come back even when no worker is fetching.
/// KEYS: reap keys 1–7. ARGV: 1 prefix, 2 limit, 3 max attempts.
const REAP_ONLY_LUA: &str = r#"
return reap_expired(tonumber(ARGV[2]), tonumber(ARGV[3]))
"#;

/// Extends every lease the worker still owns, fetched-but-buffered jobs included (apalis fetches a
/// batch and runs it later). A member whose lease was reaped, and perhaps re-leased elsewhere,
/// is dropped from the set instead. The set is bounded by batch size + concurrency of one worker,
/// so SMEMBERS is safe here.
/// KEYS: 1 leased, 2 owner, 3 this worker's lease set. ARGV: 1 worker, 2 lease ms.
const RENEW_LUA: &str = r#"
local lease_ms = tonumber(ARGV[2])
local renewed, lost = 0, 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if redis.call('HGET', KEYS[2], id) == ARGV[1] and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', now + lease_ms, id)
    renewed = renewed + 1
  else
    redis.call('SREM', KEYS[3], id)
    lost = lost + 1
  end
end
if renewed > 0 then redis.call('PEXPIRE', KEYS[3], lease_ms * 3) end
return {renewed, lost}
"#;

/// Removes jobs from every structure: completion, cancel. Not fenced by owner: a terminal outcome
/// from a worker whose lease expired is still true (the work is done, and jobs are idempotent).
/// KEYS: 1 due, 2 leased, 3 owner, 4 attempts, 5 error, 6 dead, 7 ee:active, 8 data, 9 enqueued,
/// 10 backlog, 11 woken. ARGV: 1 prefix, 2 '1' to also free the admission slot, then ids.
const REMOVE_LUA: &str = r#"
local removed = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local owner = redis.call('HGET', KEYS[3], id)
  if owner then redis.call('SREM', ARGV[1] .. ':worker:' .. owner, id) end
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[10], id)
  redis.call('SREM', KEYS[11], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('HDEL', KEYS[5], id)
  redis.call('HDEL', KEYS[6], id)
  redis.call('HDEL', KEYS[9], id)
  if ARGV[2] == '1' then redis.call('SREM', KEYS[7], id) end
  removed = removed + redis.call('HDEL', KEYS[8], id)
end
return removed
"#;

/// Puts a leased job back in due after `delay` ms. Fenced: only the current owner may reschedule,
/// or a stale worker would put a job another worker now holds back into due, to run twice at once.
/// Never spends an attempt: this is snooze and release; FAIL is the path that does. A job woken
/// while it ran (WAKE) is due at once instead: what it waits for happened during the run, which
/// may have looked just before.
/// KEYS: 1 due, 2 leased, 3 owner, 4 woken. ARGV: 1 prefix, 2 id, 3 worker, 4 delay ms.
const RESCHEDULE_LUA: &str = r#"
local id = ARGV[2]
if redis.call('HGET', KEYS[3], id) ~= ARGV[3] then return 0 end
redis.call('ZREM', KEYS[2], id)
redis.call('HDEL', KEYS[3], id)
redis.call('SREM', ARGV[1] .. ':worker:' .. ARGV[3], id)
local delay = tonumber(ARGV[4])
if redis.call('SREM', KEYS[4], id) == 1 then delay = 0 end
redis.call('ZADD', KEYS[1], now + delay, id)
return 1
"#;

/// Makes due now the jobs that are due later (what they wait for has happened), and marks the
/// leased ones woken so that their snooze (RESCHEDULE) comes back at once. Jobs already due now,
/// dead, in the backlog or gone are left alone, so waking twice is waking once.
/// KEYS: 1 due, 2 leased, 3 woken. ARGV: ids. Returns how many became due now.
const WAKE_LUA: &str = r#"
local n = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local at = redis.call('ZSCORE', KEYS[1], id)
  if at then
    if tonumber(at) > now then
      redis.call('ZADD', KEYS[1], 'XX', now, id)
      n = n + 1
    end
  elseif redis.call('ZSCORE', KEYS[2], id) then
    redis.call('SADD', KEYS[3], id)
  end
end
return n
"#;

/// Records a failed run: attempts + 1, last error kept; then either back to due after the
/// backoff delay for that attempt, or dead once `max_attempts` runs have failed. The delays are
/// computed (with jitter) by [`RetryPolicy`] in Rust and passed in, so the formula lives in one
/// place. Fenced by owner like RESCHEDULE.
/// KEYS: reap keys 1–7. ARGV: 1 prefix, 2 id, 3 worker, 4 error, 5 max attempts,
/// 6.. delay ms after failure 1, 2, ….
/// Returns {-1, 0} stale owner, {1, run_at ms} retried, {0, attempts} dead.
const FAIL_LUA: &str = r#"
local id = ARGV[2]
if redis.call('HGET', KEYS[3], id) ~= ARGV[3] then return {-1, 0} end
redis.call('ZREM', KEYS[2], id)
redis.call('HDEL', KEYS[3], id)
redis.call('SREM', ARGV[1] .. ':worker:' .. ARGV[3], id)
local attempts = redis.call('HINCRBY', KEYS[4], id, 1)
redis.call('HSET', KEYS[5], id, ARGV[4])
if attempts >= tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[6], id, dead_reason(ATTEMPTS_EXHAUSTED, attempts, ARGV[4]))
  redis.call('SREM', KEYS[7], id)
  return {0, attempts}
end
local at = now + tonumber(ARGV[5 + attempts] or ARGV[#ARGV])
redis.call('ZADD', KEYS[1], at, id)
return {1, at}
"#;

/// Buries a job at once (fatal error, AbortError): dead with its reason, admission slot freed.
/// Terminal, so not fenced (see REMOVE).
/// KEYS: reap keys 1–7, 8 data, 9 backlog. ARGV: 1 prefix, 2 id, 3 reason.
const BURY_LUA: &str = r#"
local id = ARGV[2]
if redis.call('HEXISTS', KEYS[8], id) == 0 then return 0 end
local owner = redis.call('HGET', KEYS[3], id)
if owner then
  redis.call('HDEL', KEYS[3], id)
  redis.call('SREM', ARGV[1] .. ':worker:' .. owner, id)
end
redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', KEYS[9], id)
local attempts = redis.call('HINCRBY', KEYS[4], id, 1)
redis.call('HSET', KEYS[5], id, ARGV[3])
redis.call('HSET', KEYS[6], id, dead_reason(FATAL, attempts, ARGV[3]))
redis.call('SREM', KEYS[7], id)
return 1
"#;

/// Gives dead jobs a fresh set of attempts (`cedar retry`). Export jobs go back to the backlog so
/// they wait for an admission slot like any other.
/// KEYS: 1 dead, 2 attempts, 3 target zset, 4 backlog sequence, 5 data.
/// ARGV: 1 'due'|'backlog', 2 the band of the default priority, then ids.
const REQUEUE_DEAD_LUA: &str = r#"
local backlog = ARGV[1] == 'backlog'
local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('HDEL', KEYS[1], id) == 1 and redis.call('HEXISTS', KEYS[5], id) == 1 then
    redis.call('HSET', KEYS[2], id, 0)
    local score = now
    if backlog then score = tonumber(ARGV[2]) + redis.call('INCR', KEYS[4]) end
    redis.call('ZADD', KEYS[3], score, id)
    n = n + 1
  end
end
return n
"#;

/// Moves at most `max_active - |active|` jobs from the export backlog to due and takes an
/// admission slot for each, in one atomic step: admitters on many machines can never overshoot
/// the cap, and the due set never holds more than the cap (no crowd of 100k due jobs).
/// The cap is the lowest of `max active` and the learnt room (`export:room`, see
/// `jobs::admission`); admission is paused while `export:paused` exists (EECU budget).
///
/// A backlog member that is a run (`run/{tracking}`, see `queue::run`) yields its next order:
/// the job is written (payload, enqueue time) as ENQUEUE would have written it, unless a job of
/// that id exists already, and the run moves one turn back (or goes, with its plan, after its
/// last order). A run whose plan is gone (it cannot be expanded) is dropped rather than left to
/// fail every admission. Steps are bounded even when a run's jobs all exist.
/// KEYS: 1 backlog, 2 due, 3 ee:active, 4 room, 5 paused, 6 runs, 7 data, 8 enqueued.
/// ARGV: 1 max active, 2 per-call limit, 3 plan key prefix `{ns}:export:plan:`.
const ADMIT_LUA: &str = r#"
if redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
local cap = tonumber(ARGV[1])
local room = redis.call('GET', KEYS[4])
if room then cap = math.min(cap, tonumber(room)) end
local free = cap - redis.call('SCARD', KEYS[3])
if free <= 0 then return 0 end
free = math.min(free, tonumber(ARGV[2]))
local admitted, steps = 0, 0
local function take(id)
  redis.call('ZADD', KEYS[2], now, id)
  redis.call('SADD', KEYS[3], id)
  admitted = admitted + 1
end
-- Writes the job of order `nxt` of the run of `tracking` unless it exists; false when the plan
-- cannot say what that order is.
local function expand(tracking, nxt, enq)
  local plan = ARGV[3] .. tracking
  local dims = redis.call('HMGET', plan, 'nt', 'np')
  local nt, np = tonumber(dims[1]), tonumber(dims[2])
  if not nt or not np or nt * np == 0 then return false end
  local v = redis.call('HMGET', plan, 'c:' .. math.floor(nxt / (nt * np)),
    't:' .. (math.floor(nxt / np) % nt), 'p:' .. (nxt % np))
  if not (v[1] and v[2] and v[3]) then return false end
  local row, col = string.match(v[2], '^(%d+) (%d+)$')
  local s, e = string.match(v[3], '^(%S+) (%S+)$')
  local jid = tracking .. '|' .. v[1] .. '|' .. row .. '|' .. col .. '|' .. s
  if redis.call('HEXISTS', KEYS[7], jid) == 0 then
    redis.call('HSET', KEYS[7], jid, cjson.encode({v = 1, tracking = tracking, collection = v[1],
      row = tonumber(row), col = tonumber(col), start = s, ['end'] = e}))
    redis.call('HSET', KEYS[8], jid, enq)
    take(jid)
  end
  return true
end
while admitted < free and steps < 4 * tonumber(ARGV[2]) do
  steps = steps + 1
  local front = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if not front[1] then break end
  local id, score = front[1], tonumber(front[2])
  redis.call('ZREM', KEYS[1], id)
  local run = string.sub(id, 1, 4) == 'run/' and redis.call('HGET', KEYS[6], id)
  if run then
    local tracking = string.sub(id, 5)
    local nxt, last, enq = string.match(run, '^(%d+) (%d+) (%d+)$')
    nxt, last = tonumber(nxt), tonumber(last)
    if expand(tracking, nxt, enq) and nxt + 1 < last then
      redis.call('HSET', KEYS[6], id, (nxt + 1) .. ' ' .. last .. ' ' .. enq)
      redis.call('ZADD', KEYS[1], score + 1, id)
    else
      redis.call('HDEL', KEYS[6], id)
      redis.call('DEL', ARGV[3] .. tracking)
    end
  else
    take(id)
  end
end
return admitted
"#;

/// Adds a run (see `queue::run`): its plan, and one backlog member placed as ENQUEUE places a
/// submission's first job, with the submission's turns moved on by the run's length, as if its
/// jobs had been queued one by one. A run that exists already is left alone (0).
/// KEYS: 1 backlog, 2 runs, 3 plan, 4 turns. ARGV: 1 member, 2 length, 3 band, 4 band width,
/// 5 submission, then plan field, value pairs.
const ENQUEUE_RUN_LUA: &str = r#"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
local n = tonumber(ARGV[2])
local band, width = tonumber(ARGV[3]), tonumber(ARGV[4])
local seq = tonumber(redis.call('HGET', KEYS[4], ARGV[5]) or '0')
local front = redis.call('ZRANGEBYSCORE', KEYS[1], band, '(' .. (band + width), 'WITHSCORES', 'LIMIT', 0, 1)
if front[2] then seq = math.max(seq, tonumber(front[2]) - band - 1) end
-- The plan goes in pieces of at most ENQUEUE_BATCH pairs: no `unpack` of an unbounded list.
redis.call('DEL', KEYS[3])
local i = 6
while i <= #ARGV do
  local fields = {}
  while i <= #ARGV and #fields < 2 * ENQUEUE_BATCH do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
    i = i + 2
  end
  redis.call('HSET', KEYS[3], unpack(fields))
end
redis.call('HSET', KEYS[2], ARGV[1], '0 ' .. n .. ' ' .. now)
redis.call('ZADD', KEYS[1], band + seq + 1, ARGV[1])
redis.call('HSET', KEYS[4], ARGV[5], seq + n)
return n
"#;

/// Removes the run of one submission and its plan (cancel, a failed submit), in one step;
/// returns how many jobs it still held.
/// KEYS: 1 backlog, 2 runs, 3 plan. ARGV: 1 member.
const REMOVE_RUN_LUA: &str = r#"
local n = 0
local run = redis.call('HGET', KEYS[2], ARGV[1])
if run then
  local nxt, last = string.match(run, '^(%d+) (%d+)')
  n = tonumber(last) - tonumber(nxt)
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('DEL', KEYS[3])
return n
"#;

/// Puts an export job its worker holds back at the front of the backlog and frees its admission
/// slot, without spending an attempt: EE's queue is full, so the slot goes back to admission.
/// KEYS: 1 leased, 2 owner, 3 backlog, 4 ee:active, 5 woken. ARGV: 1 prefix, 2 id, 3 worker.
const PUSH_BACK_LUA: &str = r#"
local id = ARGV[2]
if redis.call('HGET', KEYS[2], id) ~= ARGV[3] then return 0 end
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
redis.call('SREM', ARGV[1] .. ':worker:' .. ARGV[3], id)
redis.call('SREM', KEYS[5], id)
redis.call('SREM', KEYS[4], id)
local front = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local score = 0
if front[2] then score = tonumber(front[2]) - 1 end
redis.call('ZADD', KEYS[3], score, id)
return 1
"#;

/// Fixed one-second window shared by every process: returns 0 when the call may go now, else
/// the ms until the next window opens. The key expires after 2 s so old windows never pile up.
/// ARGV: 1 key prefix `{ns}:ee:rate:`, 2 limit per second.
const RATE_LUA: &str = r#"
local key = ARGV[1] .. math.floor(now / 1000)
local n = redis.call('INCR', key)
if n == 1 then redis.call('PEXPIRE', key, 2000) end
if n <= tonumber(ARGV[2]) then return 0 end
return 1000 - (now % 1000)
"#;

/// A script made of `parts` in order: preludes such as [`NOW_LUA`] first, then the body.
pub(in crate::queue) fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}

/// `s` as a Lua string literal.
fn lua_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

pub(super) static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        &format!("local ENQUEUE_BATCH = {ENQUEUE_BATCH}\n"),
        NOW_LUA,
        ENQUEUE_LUA,
    ])
});

/// Jobs per `unpack` in the enqueue script: bounded, so no call ever spreads a long list.
const ENQUEUE_BATCH: usize = 500;
// Two values per job must stay far below Lua's ~8,000-value stack limit.
const _: () = assert!(2 * ENQUEUE_BATCH < 8000);
pub(super) static LEASE: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW_LUA, &DEAD_LUA, REAP_LUA, LEASE_LUA]));
pub(super) static REAP: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW_LUA, &DEAD_LUA, REAP_LUA, REAP_ONLY_LUA]));
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, RENEW_LUA]));
pub(super) static REMOVE: LazyLock<Script> = LazyLock::new(|| script(&[REMOVE_LUA]));
pub(super) static RESCHEDULE: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW_LUA, RESCHEDULE_LUA]));
pub(super) static WAKE: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, WAKE_LUA]));
pub(super) static FAIL: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW_LUA, &DEAD_LUA, FAIL_LUA]));
pub(super) static BURY: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW_LUA, &DEAD_LUA, BURY_LUA]));
pub(super) static REQUEUE_DEAD: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW_LUA, REQUEUE_DEAD_LUA]));
pub(super) static ADMIT: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, ADMIT_LUA]));
pub(super) static ENQUEUE_RUN: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        &format!("local ENQUEUE_BATCH = {ENQUEUE_BATCH}\n"),
        NOW_LUA,
        ENQUEUE_RUN_LUA,
    ])
});
pub(super) static REMOVE_RUN: LazyLock<Script> = LazyLock::new(|| script(&[REMOVE_RUN_LUA]));
pub(super) static PUSH_BACK: LazyLock<Script> = LazyLock::new(|| script(&[PUSH_BACK_LUA]));
pub(super) static RATE: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, RATE_LUA]));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_never_unpack_unbounded_lists() {
        // apalis-redis 1.0.0 crashed every worker with `unpack` over an unbounded list. Only
        // the enqueue script unpacks, and only batches of ENQUEUE_BATCH jobs.
        assert!(ENQUEUE_LUA.contains("#ids < ENQUEUE_BATCH"));
        assert!(ENQUEUE_RUN_LUA.contains("#fields < 2 * ENQUEUE_BATCH"));
        for lua in [
            DEAD_LUA.as_str(),
            REAP_LUA,
            LEASE_LUA,
            RENEW_LUA,
            REMOVE_LUA,
            RESCHEDULE_LUA,
            WAKE_LUA,
            FAIL_LUA,
            BURY_LUA,
            REQUEUE_DEAD_LUA,
            ADMIT_LUA,
            REMOVE_RUN_LUA,
            PUSH_BACK_LUA,
            RATE_LUA,
        ] {
            assert!(!lua.contains("unpack"));
        }
    }

    #[test]
    fn scripts_write_the_shared_messages() {
        assert!(DEAD_LUA.contains("local FATAL = 'fatal'"));
        assert!(DEAD_LUA.contains("local ATTEMPTS_EXHAUSTED = 'attempts exhausted'"));
        assert!(DEAD_LUA.contains("local LEASE_EXPIRED = 'lease expired (worker lost)'"));
        assert_eq!(lua_string(r"it's a \ test"), r"'it\'s a \\ test'");
    }
}
