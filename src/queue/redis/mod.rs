//! The Redis side of the queue: its key layout, and the calls of the Lua scripts (in `scripts.rs`)
//! that move jobs between states.
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
//! | `{ns}:{stage}:woken` | set | ids woken while leased: their next snooze is due at once (until it, or their removal) |
//! | `{ns}:export:backlog` | zset | id or run member → place (priority band + the submission's turn); export jobs waiting for an admission slot |
//! | `{ns}:export:runs` | hash | run member (`run/{tracking}`) → `"{next} {end} {enqueued ms}"`: a submission's export jobs not expanded yet ([`crate::queue::run`]) |
//! | `{ns}:export:plan:{tracking}` | hash | what a run's jobs are made of: `nt`/`np`, `c:{i}`, `t:{i}`, `p:{i}` |
//! | `{ns}:export:turns` | hash | submission → its last turn in the backlog (round-robin) |
//! | `{ns}:export:seq` | string | the sequence of `cedar retry`'s re-queued exports |
//! | `{ns}:export:room` | string | the admission cap learnt from EE's queue (`jobs::admission`) |
//! | `{ns}:export:paused` | string | admission paused (why), e.g. the EECU budget is spent |
//! | `{ns}:ee:*` | string | other admission figures: EE's queue limit, other pipelines' tasks, accepted exports |
//! | `{ns}:ee:active` | set | ids holding an EE admission slot (admitted, until the poll ends) |
//! | `{ns}:ee:rate:{unix second}` | string | EE calls in that second (expires after 2 s) |
//! | `{ns}:eecu:buckets`, `{ns}:eecu:counted` | hash, zset | the EECU window ([`crate::queue::eecu`]) |
//!
//! All times come from the Redis clock (`TIME` inside the scripts): workers on many machines
//! share one queue, and their own clocks may disagree by more than a lease.
//!
//! Some scripts derive a worker's lease-set key from the owner they read (`{prefix}:worker:{owner}`)
//! instead of declaring it in `KEYS`. That is fine on one Redis server; cedar does not support
//! Redis Cluster.

mod connect;
mod eecu;
mod scripts;

use std::time::Duration;

use redis::{AsyncCommands, aio::ConnectionManager};
use serde::Deserialize;

pub use self::connect::{connect, connect_now, connect_with_ca};
pub(in crate::queue) use self::scripts::script;
use self::scripts::{
    ADMIT, BURY, ENQUEUE, ENQUEUE_RUN, FAIL, LEASE, PUSH_BACK, RATE, REAP, REMOVE, REMOVE_RUN,
    RENEW, REQUEUE_DEAD, RESCHEDULE, WAKE,
};
use super::run::{self, ExportRun};
use super::{
    ADMIT_LIMIT, BacklogPlace, DeadReason, Depth, ENQUEUE_CHUNK, FailResult, Figure, Leased,
    QueueError, REAP_LIMIT, RateDecision, RetryPolicy, Stage, WAKE_CHUNK,
};

/// Ids per script call when re-queueing or removing a campaign's jobs.
const SCAN_CHUNK: usize = 1_000;

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
        place: BacklogPlace<'_>,
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
                .key(self.key(stage, "turns"))
                .arg(mode)
                .arg(delay.as_millis() as u64)
                .arg(place.band())
                .arg(BacklogPlace::BAND_WIDTH)
                .arg(place.tracking);
            for (id, payload) in chunk {
                call.arg(id).arg(payload.as_slice());
            }
            let n: u64 = call.invoke_async(&mut conn).await?;
            added += n;
        }
        Ok(added)
    }

    /// Adds a submission's export jobs as one run (see [`super::Queue::enqueue_run`]); returns
    /// how many jobs it holds, 0 if it was there already.
    pub(crate) async fn enqueue_run(
        &self,
        export: &ExportRun,
        place: BacklogPlace<'_>,
    ) -> Result<u64, QueueError> {
        let stage = Stage::Export;
        let mut call = ENQUEUE_RUN.prepare_invoke();
        call.key(self.key(stage, "backlog"))
            .key(self.key(stage, "runs"))
            .key(self.plan_key(&export.tracking))
            .key(self.key(stage, "turns"))
            .arg(export.member())
            .arg(export.len())
            .arg(place.band())
            .arg(BacklogPlace::BAND_WIDTH)
            .arg(place.tracking);
        for (field, value) in export.plan_fields() {
            call.arg(field).arg(value);
        }
        Ok(call.invoke_async(&mut self.conn.clone()).await?)
    }

    fn plan_key(&self, tracking: &str) -> String {
        format!("{}:export:plan:{tracking}", self.namespace)
    }

    /// Every field and value of `hash` whose field matches `pattern`, paged with HSCAN.
    async fn hscan(&self, hash: &str, pattern: &str) -> Result<Vec<(String, String)>, QueueError> {
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(hash)
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_CHUNK)
                .query_async(&mut conn)
                .await?;
            out.extend(page);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// The order indices of `tracking` its run has not handed out yet, as `[from, to)` (at
    /// most one range: a submission has one run).
    pub async fn run_ranges(&self, tracking: &str) -> Result<Vec<(u64, u64)>, QueueError> {
        let value: Option<String> = self
            .conn
            .clone()
            .hget(self.key(Stage::Export, "runs"), run::member(tracking))
            .await?;
        Ok(value.as_deref().and_then(run_range).into_iter().collect())
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
            .key(self.key(stage, "woken"))
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
    /// (snooze, or release with no delay), or at once if it was woken while leased; false if
    /// `worker` no longer owns the lease.
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
            .key(self.key(stage, "woken"))
            .arg(self.prefix(stage))
            .arg(id)
            .arg(worker)
            .arg(delay.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// Makes due now those of `ids` that are due later, and marks the leased ones so that their
    /// next snooze is due at once; returns how many became due now (see
    /// [`super::Queue::wake`]).
    pub async fn wake(&self, stage: Stage, ids: &[String]) -> Result<u64, QueueError> {
        let mut woken = 0;
        for chunk in ids.chunks(WAKE_CHUNK) {
            let mut call = WAKE.prepare_invoke();
            call.key(self.key(stage, "due"))
                .key(self.key(stage, "leased"))
                .key(self.key(stage, "woken"));
            for id in chunk {
                call.arg(id);
            }
            let n: u64 = call.invoke_async(&mut self.conn.clone()).await?;
            woken += n;
        }
        Ok(woken)
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

    /// Up to `limit` dead jobs of `stage`, paged with HSCAN (bounded, never HGETALL).
    pub async fn dead_jobs(
        &self,
        stage: Stage,
        limit: usize,
    ) -> Result<Vec<(String, DeadReason)>, QueueError> {
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        while out.len() < limit {
            let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(self.key(stage, "dead"))
                .arg(cursor)
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut conn)
                .await?;
            for (id, json) in page {
                if out.len() < limit && !out.iter().any(|(seen, _)| *seen == id) {
                    out.push((id, serde_json::from_str(&json)?));
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(out)
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
        let mut candidates: Vec<String> = self
            .hscan(&self.key(stage, hash), &pattern)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
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
                .arg(mode)
                .arg(BacklogPlace::default().band());
            for id in chunk {
                call.arg(id);
            }
            let moved: u64 = call.invoke_async(&mut self.conn.clone()).await?;
            n += moved;
        }
        Ok(n)
    }

    /// Removes the export run of `tracking` and its plan, in one step; returns how many orders
    /// it still held.
    pub async fn remove_run(&self, tracking: &str) -> Result<u64, QueueError> {
        let stage = Stage::Export;
        Ok(REMOVE_RUN
            .key(self.key(stage, "backlog"))
            .key(self.key(stage, "runs"))
            .key(self.plan_key(tracking))
            .arg(run::member(tracking))
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// Removes the jobs `ids` from `stage`, whatever their state, and frees their admission
    /// slots (a subset's cancel); returns how many were there.
    pub async fn remove_jobs(&self, stage: Stage, ids: &[String]) -> Result<u64, QueueError> {
        let mut n = 0;
        for chunk in ids.chunks(SCAN_CHUNK) {
            n += self.remove(stage, chunk, true).await?;
        }
        Ok(n)
    }

    /// Removes every job of `tracking` from `stage`, whatever its state, and frees their
    /// admission slots (cancel); returns how many. A worker running one of them finishes its
    /// run, but its outcome finds nothing left to reschedule.
    pub async fn remove_tracking(&self, stage: Stage, tracking: &str) -> Result<u64, QueueError> {
        let mut n = 0;
        if stage == Stage::Export {
            // The run first, so that admission cannot expand a job of it after the scan below.
            n += self.remove_run(tracking).await?;
        }
        let ids = self.ids_of_tracking(stage, "data", tracking).await?;
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
        type Counts = (u64, u64, u64, u64, u64, Vec<(String, f64)>, Vec<String>);
        let (due_now, scheduled, leased, dead, members, oldest, runs): Counts = redis::pipe()
            .zcount(&due, "-inf", now)
            .zcount(&due, format!("({now}"), "+inf")
            .zcard(self.key(stage, "leased"))
            .hlen(self.key(stage, "dead"))
            .zcard(backlog)
            .zrange_withscores(&due, 0, 0)
            .hvals(self.key(stage, "runs"))
            .query_async(&mut self.conn.clone())
            .await?;
        // A run is one member holding many jobs (one run per submission still queueing).
        let in_runs: u64 = runs
            .iter()
            .filter_map(|v| run_range(v))
            .map(|(from, to)| to.saturating_sub(from))
            .sum();
        let backlog = members.saturating_sub(runs.len() as u64) + in_runs;
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
            .key(self.figure_key(Figure::Room))
            .key(self.figure_key(Figure::Paused))
            .key(self.key(Stage::Export, "runs"))
            .key(self.key(Stage::Export, "data"))
            .key(self.key(Stage::Export, "enqueued"))
            .arg(max_active)
            .arg(ADMIT_LIMIT)
            .arg(self.plan_key(""))
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// Puts the export job `worker` holds back at the front of the backlog and frees its slot;
    /// false if `worker` no longer holds it.
    pub async fn push_back(&self, worker: &str, id: &str) -> Result<bool, QueueError> {
        let stage = Stage::Export;
        let n: u64 = PUSH_BACK
            .key(self.key(stage, "leased"))
            .key(self.key(stage, "owner"))
            .key(self.key(stage, "backlog"))
            .key(self.active_key())
            .key(self.key(stage, "woken"))
            .arg(self.prefix(stage))
            .arg(id)
            .arg(worker)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    fn figure_key(&self, figure: Figure) -> String {
        format!("{}:{}", self.namespace, figure.key())
    }

    /// One admission figure; `None` when unset.
    pub async fn figure(&self, figure: Figure) -> Result<Option<i64>, QueueError> {
        Ok(self.conn.clone().get(self.figure_key(figure)).await?)
    }

    /// Sets (or, with `None`, clears) one admission figure.
    pub async fn set_figure(&self, figure: Figure, value: Option<i64>) -> Result<(), QueueError> {
        let key = self.figure_key(figure);
        match value {
            Some(v) => self.conn.clone().set::<_, _, ()>(key, v).await?,
            None => self.conn.clone().del::<_, ()>(key).await?,
        }
        Ok(())
    }

    /// Adds `by` to one admission figure (unset counts 0); returns the new value.
    pub async fn add_figure(&self, figure: Figure, by: i64) -> Result<i64, QueueError> {
        Ok(self.conn.clone().incr(self.figure_key(figure), by).await?)
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

/// The `(next, end)` indices of a run's value in `{ns}:export:runs`.
fn run_range(value: &str) -> Option<(u64, u64)> {
    let mut parts = value.split(' ').map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(from)), Some(Ok(to))) => Some((from, to)),
        _ => None,
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
}
