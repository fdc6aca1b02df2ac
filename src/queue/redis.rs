//! The Redis side of the queue: key layout and the Lua scripts that move jobs between states.
//!
//! Every key lives under `{namespace}:{stage}:…` (`{namespace}:ee:…` for the EE-wide admission
//! slots and rate limiter):
//!
//! | key | type | content |
//! |---|---|---|
//! | `{ns}:{stage}:data` | hash | id → payload JSON; a job exists while it is here |
//! | `{ns}:{stage}:due` | zset | id → run-at (ms) |
//! | `{ns}:{stage}:leased` | zset | id → lease expiry (ms) |
//! | `{ns}:{stage}:owner` | hash | id → worker name holding the lease |
//! | `{ns}:{stage}:worker:{name}` | set | ids leased by one worker (expires 3 leases after its last renewal) |
//! | `{ns}:{stage}:attempts` | hash | id → failed runs so far (our own counter; apalis's is per process) |
//! | `{ns}:{stage}:error` | hash | id → last error message |
//! | `{ns}:{stage}:enqueued` | hash | id → first enqueue time (ms) |
//! | `{ns}:{stage}:dead` | hash | id → [`DeadReason`] JSON |
//! | `{ns}:export:backlog` | zset | id → enqueue sequence; export jobs waiting for an admission slot |
//! | `{ns}:export:seq` | string | the backlog sequence |
//! | `{ns}:ee:active` | set | ids holding an EE admission slot (admitted, until the poll ends) |
//! | `{ns}:ee:rate:{unix second}` | string | EE calls in that second (expires after 2 s) |
//!
//! All times come from the Redis clock (`TIME` inside the scripts): workers on many machines
//! share one queue, and their own clocks may disagree by more than a lease.
//!
//! Some scripts derive a worker's lease-set key from the owner they read (`{prefix}:worker:{owner}`)
//! instead of declaring it in `KEYS`. That is fine on one Redis server; cedar does not support
//! Redis Cluster.

use std::{sync::LazyLock, time::Duration};

use redis::{AsyncCommands, Script, aio::ConnectionManager, aio::ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use super::{QueueError, RetryPolicy, Stage};

/// The namespace used when the configuration does not name one.
pub const DEFAULT_NAMESPACE: &str = "cedar";

/// Jobs sent to Redis per script call by [`RedisQueue::enqueue_bulk`]: big enough to amortise the
/// round trip, small enough that one script never blocks Redis for long (about 20 ms).
pub(super) const ENQUEUE_CHUNK: usize = 5_000;

/// Expired leases reaped per lease or heartbeat call; bounds the time one script runs.
pub(super) const REAP_LIMIT: usize = 100;

/// Jobs moved from backlog to due per [`RedisQueue::admit`] call; bounds the time one script runs.
pub(super) const ADMIT_LIMIT: usize = 1_000;

/// Ids per script call when re-queueing or removing a campaign's jobs.
const SCAN_CHUNK: usize = 1_000;

/// Redis time in milliseconds. Prepended to every script that needs the clock.
const NOW_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// `reap(id)`: the lease of `id` expired, so its worker died or stalled past its lease. The job
/// goes back to due, and the lost run counts as a failed attempt: a job that kills its worker
/// every time must end up dead instead of looping forever.
/// KEYS: 1 due, 2 leased, 3 owner, 4 attempts, 5 error, 6 dead, 7 ee:active.
/// ARGV: 1 key prefix `{ns}:{stage}`, then the caller's own arguments.
const REAP_LUA: &str = r#"
local function dead_reason(reason, attempts, last_error)
  return cjson.encode({reason = reason, attempts = attempts, last_error = last_error, at_ms = now})
end
local function reap(id, max_attempts)
  redis.call('ZREM', KEYS[2], id)
  local owner = redis.call('HGET', KEYS[3], id)
  if owner then
    redis.call('HDEL', KEYS[3], id)
    redis.call('SREM', ARGV[1] .. ':worker:' .. owner, id)
  end
  local attempts = redis.call('HINCRBY', KEYS[4], id, 1)
  local err = 'lease expired (worker lost)'
  redis.call('HSET', KEYS[5], id, err)
  if attempts >= max_attempts then
    redis.call('HSET', KEYS[6], id, dead_reason('attempts exhausted', attempts, err))
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
/// twice. Export jobs go to the backlog, scored by a sequence so admission is first come, first
/// served.
/// KEYS: 1 data, 2 enqueued, 3 target zset (due or backlog), 4 backlog sequence.
/// ARGV: 1 'due'|'backlog', 2 delay ms (due only), then id, payload pairs.
const ENQUEUE_LUA: &str = r#"
local backlog = ARGV[1] == 'backlog'
local score = now + tonumber(ARGV[2])
local seq = 0
if backlog then seq = tonumber(redis.call('GET', KEYS[4]) or '0') end
local added = 0
local seen = {}
-- Jobs go in batches of ENQUEUE_BATCH: one HMGET tells which exist, then one HSET per hash
-- and one ZADD write the new ones. That is a handful of calls per batch instead of four per
-- job. `unpack` only ever spreads one batch (at most 2 x ENQUEUE_BATCH values), far below
-- Lua's stack limit (about 8,000) that apalis-redis 1.0.0 crashed on with unbounded lists.
local i = 3
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
        z[#z + 1] = seq
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
if backlog and added > 0 then redis.call('SET', KEYS[4], seq) end
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
/// 10 backlog. ARGV: 1 prefix, 2 '1' to also free the admission slot, then ids.
const REMOVE_LUA: &str = r#"
local removed = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local owner = redis.call('HGET', KEYS[3], id)
  if owner then redis.call('SREM', ARGV[1] .. ':worker:' .. owner, id) end
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[10], id)
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
/// Never spends an attempt: this is snooze and release; FAIL is the path that does.
/// KEYS: 1 due, 2 leased, 3 owner. ARGV: 1 prefix, 2 id, 3 worker, 4 delay ms.
const RESCHEDULE_LUA: &str = r#"
local id = ARGV[2]
if redis.call('HGET', KEYS[3], id) ~= ARGV[3] then return 0 end
redis.call('ZREM', KEYS[2], id)
redis.call('HDEL', KEYS[3], id)
redis.call('SREM', ARGV[1] .. ':worker:' .. ARGV[3], id)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), id)
return 1
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
  redis.call('HSET', KEYS[6], id, dead_reason('attempts exhausted', attempts, ARGV[4]))
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
redis.call('HSET', KEYS[6], id, dead_reason('fatal', attempts, ARGV[3]))
redis.call('SREM', KEYS[7], id)
return 1
"#;

/// Gives dead jobs a fresh set of attempts (`cedar retry`). Export jobs go back to the backlog so
/// they wait for an admission slot like any other.
/// KEYS: 1 dead, 2 attempts, 3 target zset, 4 backlog sequence, 5 data.
/// ARGV: 1 'due'|'backlog', then ids.
const REQUEUE_DEAD_LUA: &str = r#"
local backlog = ARGV[1] == 'backlog'
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('HDEL', KEYS[1], id) == 1 and redis.call('HEXISTS', KEYS[5], id) == 1 then
    redis.call('HSET', KEYS[2], id, 0)
    local score = now
    if backlog then score = redis.call('INCR', KEYS[4]) end
    redis.call('ZADD', KEYS[3], score, id)
    n = n + 1
  end
end
return n
"#;

/// Moves at most `max_active - |active|` jobs from the export backlog to due and takes an
/// admission slot for each, in one atomic step: admitters on many machines can never overshoot
/// the cap, and the due set never holds more than the cap (no crowd of 100k due jobs).
/// KEYS: 1 backlog, 2 due, 3 ee:active. ARGV: 1 max active, 2 per-call limit.
const ADMIT_LUA: &str = r#"
local free = tonumber(ARGV[1]) - redis.call('SCARD', KEYS[3])
if free <= 0 then return 0 end
free = math.min(free, tonumber(ARGV[2]))
local ids = redis.call('ZRANGE', KEYS[1], 0, free - 1)
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], now, id)
  redis.call('SADD', KEYS[3], id)
end
return #ids
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

fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}

static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
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
static LEASE: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, REAP_LUA, LEASE_LUA]));
static REAP: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, REAP_LUA, REAP_ONLY_LUA]));
static RENEW: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, RENEW_LUA]));
static REMOVE: LazyLock<Script> = LazyLock::new(|| script(&[REMOVE_LUA]));
static RESCHEDULE: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, RESCHEDULE_LUA]));
static FAIL: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, REAP_LUA, FAIL_LUA]));
static BURY: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, REAP_LUA, BURY_LUA]));
static REQUEUE_DEAD: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, REQUEUE_DEAD_LUA]));
static ADMIT: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, ADMIT_LUA]));
static RATE: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, RATE_LUA]));

/// A job handed to a worker under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub id: String,
    /// The payload JSON as enqueued.
    pub payload: Vec<u8>,
    /// Failed runs so far (0 on the first run).
    pub attempts: u32,
}

/// What [`RedisQueue::fail`] did with a failed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailResult {
    /// Back in due; runs again at `at_ms` (Redis clock).
    Retried { at_ms: u64 },
    /// All attempts spent: the job is dead.
    Buried,
    /// The caller no longer owns the lease (it expired and was reaped): nothing changed.
    Stale,
}

/// Answer of the global EE rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead now.
    Go,
    /// The window is full; try again after this many ms.
    WaitMs(u64),
}

/// Why a job is dead, as stored in `{ns}:{stage}:dead`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadReason {
    /// `"fatal"` (buried by the handler) or `"attempts exhausted"`.
    pub reason: String,
    pub attempts: u32,
    pub last_error: String,
    pub at_ms: u64,
}

/// How many jobs of one stage are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    /// Due now and waiting for a worker.
    pub due_now: u64,
    /// Due later (snoozed, backing off, delayed).
    pub scheduled: u64,
    pub leased: u64,
    pub dead: u64,
    /// Export jobs waiting for an admission slot (0 for other stages).
    pub backlog: u64,
    /// How long the oldest due-now job has been waiting, in seconds (0 if none).
    pub oldest_due_age_secs: u64,
}

/// A connection to `url` (`redis://` or `rediss://`) with the timeouts every cedar connection
/// uses, shared by the queue, the tracking state and the operations snapshot.
///
/// The connection manager reconnects by itself. Its response timeout is 10 s instead of the
/// 500 ms default, which under load turns a slow reply into an error that kills apalis workers
/// (apalis-redis#76).
pub async fn connect(url: &str) -> Result<ConnectionManager, QueueError> {
    connect_with_ca(url, None).await
}

/// [`connect`], trusting only the CA certificates of the PEM file `tls_ca_file` (for a
/// `rediss://` server with a private CA) instead of the system's trust store.
pub async fn connect_with_ca(
    url: &str,
    tls_ca_file: Option<&std::path::Path>,
) -> Result<ConnectionManager, QueueError> {
    let client = match tls_ca_file {
        None => redis::Client::open(url)?,
        Some(path) => {
            let tls_ca = |reason: String| QueueError::TlsCa {
                path: path.display().to_string(),
                reason,
            };
            let root_cert = std::fs::read(path).map_err(|e| tls_ca(e.to_string()))?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
            .map_err(|e| tls_ca(e.to_string()))?
        }
    };
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    Ok(client.get_connection_manager_with_config(config).await?)
}

/// The queue of every stage, in one Redis, under one namespace.
#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    namespace: String,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisQueue {
    /// Connects to `url` (`redis://` or `rediss://`, see [`connect`]).
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, QueueError> {
        Ok(Self::new(connect(url).await?, namespace))
    }

    pub fn new(conn: ConnectionManager, namespace: &str) -> Self {
        RedisQueue {
            conn,
            namespace: namespace.to_owned(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn prefix(&self, stage: Stage) -> String {
        format!("{}:{}", self.namespace, stage.name())
    }

    fn key(&self, stage: Stage, part: &str) -> String {
        format!("{}:{}:{}", self.namespace, stage.name(), part)
    }

    fn active_key(&self) -> String {
        format!("{}:ee:active", self.namespace)
    }

    fn worker_key(&self, stage: Stage, worker: &str) -> String {
        format!("{}:worker:{}", self.prefix(stage), worker)
    }

    /// KEYS 1–7 shared by the scripts that include `REAP_LUA`.
    fn reap_keys(&self, stage: Stage) -> [String; 7] {
        [
            self.key(stage, "due"),
            self.key(stage, "leased"),
            self.key(stage, "owner"),
            self.key(stage, "attempts"),
            self.key(stage, "error"),
            self.key(stage, "dead"),
            self.active_key(),
        ]
    }

    /// Answers when Redis does (readiness).
    pub async fn ping(&self) -> Result<(), QueueError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Redis clock in ms, the clock every score is measured on.
    pub async fn now_ms(&self) -> Result<u64, QueueError> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Adds jobs not queued yet (see [`super::Queue::enqueue_bulk`]); payloads already encoded.
    pub(crate) async fn enqueue_encoded(
        &self,
        stage: Stage,
        jobs: &[(String, Vec<u8>)],
        delay: Duration,
    ) -> Result<u64, QueueError> {
        let (mode, target) = match stage {
            Stage::Export => ("backlog", self.key(stage, "backlog")),
            _ => ("due", self.key(stage, "due")),
        };
        let mut conn = self.conn.clone();
        let mut added = 0;
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            let mut call = ENQUEUE.prepare_invoke();
            call.key(self.key(stage, "data"))
                .key(self.key(stage, "enqueued"))
                .key(&target)
                .key(self.key(stage, "seq"))
                .arg(mode)
                .arg(delay.as_millis() as u64);
            for (id, payload) in chunk {
                call.arg(id).arg(payload.as_slice());
            }
            let n: u64 = call.invoke_async(&mut conn).await?;
            added += n;
        }
        Ok(added)
    }

    /// Reaps a bounded number of expired leases (spending an attempt each), then leases up to `n`
    /// due jobs to `worker` for `lease`.
    pub async fn lease(
        &self,
        stage: Stage,
        worker: &str,
        n: usize,
        lease: Duration,
        policy: &RetryPolicy,
    ) -> Result<Vec<Leased>, QueueError> {
        let mut call = LEASE.prepare_invoke();
        for key in self.reap_keys(stage) {
            call.key(key);
        }
        call.key(self.key(stage, "data"))
            .key(self.worker_key(stage, worker))
            .arg(self.prefix(stage))
            .arg(worker)
            .arg(n)
            .arg(lease.as_millis() as u64)
            .arg(REAP_LIMIT)
            .arg(policy.max_attempts);
        let rows: Vec<(String, Vec<u8>, u32)> = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(rows
            .into_iter()
            .map(|(id, payload, attempts)| Leased {
                id,
                payload,
                attempts,
            })
            .collect())
    }

    /// Reaps up to a bounded number of expired leases; returns how many.
    pub async fn reap(&self, stage: Stage, policy: &RetryPolicy) -> Result<u64, QueueError> {
        let mut call = REAP.prepare_invoke();
        for key in self.reap_keys(stage) {
            call.key(key);
        }
        call.arg(self.prefix(stage))
            .arg(REAP_LIMIT)
            .arg(policy.max_attempts);
        Ok(call.invoke_async(&mut self.conn.clone()).await?)
    }

    /// Extends every lease `worker` still holds by `lease`; returns (renewed, lost).
    pub async fn renew(
        &self,
        stage: Stage,
        worker: &str,
        lease: Duration,
    ) -> Result<(u64, u64), QueueError> {
        Ok(RENEW
            .key(self.key(stage, "leased"))
            .key(self.key(stage, "owner"))
            .key(self.worker_key(stage, worker))
            .arg(worker)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    async fn remove(
        &self,
        stage: Stage,
        ids: &[String],
        free_slot: bool,
    ) -> Result<u64, QueueError> {
        let mut call = REMOVE.prepare_invoke();
        for key in self.reap_keys(stage) {
            call.key(key);
        }
        call.key(self.key(stage, "data"))
            .key(self.key(stage, "enqueued"))
            .key(self.key(stage, "backlog"))
            .arg(self.prefix(stage))
            .arg(if free_slot { "1" } else { "0" });
        for id in ids {
            call.arg(id);
        }
        Ok(call.invoke_async(&mut self.conn.clone()).await?)
    }

    /// Removes a finished job; returns false if it was already gone. The admission slot is kept:
    /// an export job is done when its EE task starts, and the slot is freed when the poll ends.
    pub async fn complete(&self, stage: Stage, id: &str) -> Result<bool, QueueError> {
        Ok(self.remove(stage, &[id.to_owned()], false).await? == 1)
    }

    /// Puts the job `worker` holds back in due after `delay` without spending an attempt
    /// (snooze, or release with no delay); false if `worker` no longer owns the lease.
    pub(crate) async fn reschedule(
        &self,
        stage: Stage,
        worker: &str,
        id: &str,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        let n: u64 = RESCHEDULE
            .key(self.key(stage, "due"))
            .key(self.key(stage, "leased"))
            .key(self.key(stage, "owner"))
            .arg(self.prefix(stage))
            .arg(id)
            .arg(worker)
            .arg(delay.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// Records a failed run of the job `worker` holds: retried after the policy's backoff, or
    /// buried once `policy.max_attempts` runs have failed, with `error` kept as the last error.
    pub async fn fail(
        &self,
        stage: Stage,
        worker: &str,
        id: &str,
        error: &str,
        policy: &RetryPolicy,
    ) -> Result<FailResult, QueueError> {
        let mut call = FAIL.prepare_invoke();
        for key in self.reap_keys(stage) {
            call.key(key);
        }
        call.arg(self.prefix(stage))
            .arg(id)
            .arg(worker)
            .arg(error)
            .arg(policy.max_attempts.max(1));
        let delays = policy.schedule_ms();
        if delays.is_empty() {
            // Never read (max_attempts 1 buries on the first failure), but keeps ARGV[#ARGV] valid.
            call.arg(0);
        }
        for ms in delays {
            call.arg(ms);
        }
        let (code, value): (i64, u64) = call.invoke_async(&mut self.conn.clone()).await?;
        match code {
            1 => Ok(FailResult::Retried { at_ms: value }),
            0 => Ok(FailResult::Buried),
            -1 => Ok(FailResult::Stale),
            other => Err(QueueError::Reply {
                script: "fail",
                detail: format!("code {other}"),
            }),
        }
    }

    /// Buries a job at once (a fatal error): dead with `reason`, admission slot freed. Returns
    /// false if the job does not exist.
    pub async fn bury(&self, stage: Stage, id: &str, reason: &str) -> Result<bool, QueueError> {
        let mut call = BURY.prepare_invoke();
        for key in self.reap_keys(stage) {
            call.key(key);
        }
        call.key(self.key(stage, "data"))
            .key(self.key(stage, "backlog"))
            .arg(self.prefix(stage))
            .arg(id)
            .arg(reason);
        let n: u64 = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(n == 1)
    }

    /// Why `id` is dead, if it is.
    pub async fn dead_reason(
        &self,
        stage: Stage,
        id: &str,
    ) -> Result<Option<DeadReason>, QueueError> {
        let raw: Option<String> = self.conn.clone().hget(self.key(stage, "dead"), id).await?;
        Ok(match raw {
            Some(json) => Some(serde_json::from_str(&json)?),
            None => None,
        })
    }

    /// Failed runs recorded for `id` (0 if none).
    pub async fn attempts(&self, stage: Stage, id: &str) -> Result<u32, QueueError> {
        let n: Option<u32> = self
            .conn
            .clone()
            .hget(self.key(stage, "attempts"), id)
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Ids in `hash` whose payload belongs to `tracking`. Scans with a MATCH on the id prefix,
    /// then checks the payload's own tracking field, so a tracking name that is a prefix of
    /// another (or contains `|`) never selects the other's jobs.
    async fn ids_of_tracking(
        &self,
        stage: Stage,
        hash: &str,
        tracking: &str,
    ) -> Result<Vec<String>, QueueError> {
        #[derive(Deserialize)]
        struct TrackingOnly {
            tracking: String,
        }
        let pattern = format!("{}|*", glob_escape(tracking));
        let mut conn = self.conn.clone();
        let mut candidates: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(self.key(stage, hash))
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_CHUNK)
                .query_async(&mut conn)
                .await?;
            candidates.extend(page.into_iter().map(|(id, _)| id));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // HSCAN may return an element twice; the scripts are idempotent, but counts must not be.
        candidates.sort_unstable();
        candidates.dedup();
        let mut ids = Vec::with_capacity(candidates.len());
        for chunk in candidates.chunks(SCAN_CHUNK) {
            let payloads: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.key(stage, "data"))
                .arg(chunk)
                .query_async(&mut conn)
                .await?;
            for (id, payload) in chunk.iter().zip(payloads) {
                let Some(payload) = payload else { continue };
                if serde_json::from_str::<TrackingOnly>(&payload)?.tracking == tracking {
                    ids.push(id.clone());
                }
            }
        }
        Ok(ids)
    }

    /// Gives every dead job of `tracking` a fresh set of attempts (`cedar retry`); returns how
    /// many. Export jobs go back to the backlog.
    pub async fn requeue_dead(&self, stage: Stage, tracking: &str) -> Result<u64, QueueError> {
        let ids = self.ids_of_tracking(stage, "dead", tracking).await?;
        let (mode, target) = match stage {
            Stage::Export => ("backlog", self.key(stage, "backlog")),
            _ => ("due", self.key(stage, "due")),
        };
        let mut n = 0;
        for chunk in ids.chunks(SCAN_CHUNK) {
            let mut call = REQUEUE_DEAD.prepare_invoke();
            call.key(self.key(stage, "dead"))
                .key(self.key(stage, "attempts"))
                .key(&target)
                .key(self.key(stage, "seq"))
                .key(self.key(stage, "data"))
                .arg(mode);
            for id in chunk {
                call.arg(id);
            }
            let moved: u64 = call.invoke_async(&mut self.conn.clone()).await?;
            n += moved;
        }
        Ok(n)
    }

    /// Removes every job of `tracking` from `stage`, whatever its state, and frees their
    /// admission slots (cancel); returns how many. A worker running one of them finishes its
    /// run, but its outcome finds nothing left to reschedule.
    pub async fn remove_tracking(&self, stage: Stage, tracking: &str) -> Result<u64, QueueError> {
        let ids = self.ids_of_tracking(stage, "data", tracking).await?;
        let mut n = 0;
        for chunk in ids.chunks(SCAN_CHUNK) {
            n += self.remove(stage, chunk, true).await?;
        }
        Ok(n)
    }

    /// Counts the jobs of `stage` in each state.
    pub async fn depth(&self, stage: Stage) -> Result<Depth, QueueError> {
        let now = self.now_ms().await?;
        let due = self.key(stage, "due");
        // Only export fills its backlog; for the other stages the key never exists and counts 0.
        let backlog = self.key(stage, "backlog");
        let (due_now, scheduled, leased, dead, backlog, oldest): (
            u64,
            u64,
            u64,
            u64,
            u64,
            Vec<(String, f64)>,
        ) = redis::pipe()
            .zcount(&due, "-inf", now)
            .zcount(&due, format!("({now}"), "+inf")
            .zcard(self.key(stage, "leased"))
            .hlen(self.key(stage, "dead"))
            .zcard(backlog)
            .zrange_withscores(&due, 0, 0)
            .query_async(&mut self.conn.clone())
            .await?;
        let oldest_due_age_secs = oldest
            .first()
            .map(|(_, score)| *score as u64)
            .filter(|score| *score <= now)
            .map(|score| (now - score) / 1000)
            .unwrap_or(0);
        Ok(Depth {
            due_now,
            scheduled,
            leased,
            dead,
            backlog,
            oldest_due_age_secs,
        })
    }

    /// The ids Redis records as leased by `worker` (its lease set; stale entries are filtered by
    /// the owner checks of `release`).
    pub async fn leased_by(&self, stage: Stage, worker: &str) -> Result<Vec<String>, QueueError> {
        Ok(self
            .conn
            .clone()
            .smembers(self.worker_key(stage, worker))
            .await?)
    }

    /// Leases of `stage` that have expired but were not reaped yet: jobs whose worker died or
    /// stopped renewing.
    pub async fn expired_leases(&self, stage: Stage) -> Result<u64, QueueError> {
        let now = self.now_ms().await?;
        Ok(self
            .conn
            .clone()
            .zcount(self.key(stage, "leased"), "-inf", now)
            .await?)
    }

    /// Moves export jobs from the backlog to due while fewer than `max_active` hold an admission
    /// slot; returns how many moved (at most 1,000 per call).
    pub async fn admit(&self, max_active: u64) -> Result<u64, QueueError> {
        Ok(ADMIT
            .key(self.key(Stage::Export, "backlog"))
            .key(self.key(Stage::Export, "due"))
            .key(self.active_key())
            .arg(max_active)
            .arg(ADMIT_LIMIT)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// Frees the admission slot of `id` (its EE task has ended); returns false if it held none.
    pub async fn release_slot(&self, id: &str) -> Result<bool, QueueError> {
        let n: u64 = self.conn.clone().srem(self.active_key(), id).await?;
        Ok(n == 1)
    }

    /// Jobs holding an admission slot.
    pub async fn active_count(&self) -> Result<u64, QueueError> {
        Ok(self.conn.clone().scard(self.active_key()).await?)
    }

    /// Takes one call from the global EE budget of `limit_per_sec` calls per second, shared by
    /// every process on this Redis.
    pub async fn acquire_rate(&self, limit_per_sec: u64) -> Result<RateDecision, QueueError> {
        let wait: u64 = RATE
            .arg(format!("{}:ee:rate:", self.namespace))
            .arg(limit_per_sec)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(if wait == 0 {
            RateDecision::Go
        } else {
            RateDecision::WaitMs(wait)
        })
    }
}

/// Escapes the glob characters of a Redis MATCH pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_escape_quotes_pattern_characters() {
        assert_eq!(glob_escape("camp-1"), "camp-1");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn scripts_never_unpack_unbounded_lists() {
        // apalis-redis 1.0.0 crashed every worker with `unpack` over an unbounded list. Only
        // the enqueue script unpacks, and only batches of ENQUEUE_BATCH jobs.
        assert!(ENQUEUE_LUA.contains("#ids < ENQUEUE_BATCH"));
        for lua in [
            REAP_LUA,
            LEASE_LUA,
            RENEW_LUA,
            REMOVE_LUA,
            RESCHEDULE_LUA,
            FAIL_LUA,
            BURY_LUA,
            REQUEUE_DEAD_LUA,
            ADMIT_LUA,
            RATE_LUA,
        ] {
            assert!(!lua.contains("unpack"));
        }
    }
}
