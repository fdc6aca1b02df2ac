//! A queue holds the durable jobs of every stage and hands them to workers under a lease.
//!
//! One job is one order (collection × tile × period) at one [`Stage`]. Its payload, an
//! [`OrderJob`], is a durable contract: identifiers only, versioned, new fields defaulted.
//!
//! # Job state machine (per stage)
//!
//! ```text
//!            enqueue                lease (fetch)              Outcome::Done
//! (export) backlog ──admit──▶ due ───────────────▶ leased ─────────────────────▶ (removed)
//!                              ▲  ▲  ▲                │ │ │ │
//!                              │  │  └─ Snooze(secs) ─┘ │ │ │   no attempt spent
//!                              │  └──── release ────────┘ │ │   shutdown, no attempt spent
//!                              └──── fail (backoff) ──────┘ │   attempt + 1, or dead when spent
//!                   dead ◀──────────── bury (fatal) ─────────┘
//!                    │ requeue_dead (`cedar retry`)
//!                    └──────────▶ due (or the export backlog)
//! ```
//!
//! A job due later can be woken ([`Queue::wake`]) when what it waits for has happened: it is due
//! at once, as if its delay had run out; one woken while leased snoozes for no time.
//!
//! A lease that is not renewed (the worker died) expires; the next worker to lease or heartbeat
//! reaps it back to `due`, spending one attempt so that a job which kills its worker every time
//! ends up `dead` instead of looping forever.
//!
//! [`Queue`] is the one handle the rest of cedar uses. `[queue] url` picks where it lives
//! ([`Connection::open`]): Redis (`redis://`, `rediss://`), the primary deployment, shared by
//! workers on any number of machines; or an SQLite file (`sqlite://PATH`, the default
//! `sqlite://cedar.db` when the URL is empty), for one machine without a server. Both run the
//! same state machine with the same guarantees; the tracking state ([`tracking`]) and the
//! operations [`snapshot`] live in the same place as the queue.
//!
//! - [`redis`]: the Redis data structures and Lua scripts ([`RedisQueue`]).
//! - [`sqlite`]: the same operations as SQL transactions on one file ([`SqliteQueue`]).
//! - [`snapshot`]: the EE operations snapshot shared by the poll jobs and their sweeper.
//! - [`eecu`]: the EECU ended tasks used in a rolling window, for the EECU budget.
//! - [`run`]: a submission's export jobs as one backlog entry, expanded at admission.
//! - [`backend`](mod@backend): the apalis 1.0 backend that drives handlers from a [`Queue`].

pub mod backend;
pub mod eecu;
pub mod redis;
pub mod run;
pub mod snapshot;
pub mod sqlite;
pub mod tracking;

use std::{fmt, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::sync::Notify;

pub use self::backend::{BackendConfig, CedarBackend, backend, worker_name};
pub use self::eecu::EecuUse;
pub use self::redis::RedisQueue;
pub use self::run::ExportRun;
pub use self::snapshot::Snapshot;
pub use self::sqlite::SqliteQueue;

/// The namespace used when the configuration does not name one.
pub const DEFAULT_NAMESPACE: &str = "cedar";

/// Jobs written per enqueue step (one script call on Redis, one transaction on SQLite): big
/// enough to amortise the round trip, small enough that one step never holds Redis or the
/// file's write lock for long (about 20 ms).
const ENQUEUE_CHUNK: usize = 5_000;

/// Expired leases reaped per lease or heartbeat call; bounds the time one step runs.
const REAP_LIMIT: usize = 100;

/// Jobs moved from backlog to due per [`Queue::admit`] call; bounds the time one step runs.
const ADMIT_LIMIT: usize = 1_000;

/// Ids per [`Queue::wake`] step (one script call, one transaction).
const WAKE_CHUNK: usize = 1_000;

/// The last error recorded for a job whose lease expired: its worker died, or stalled past the
/// lease without renewing it.
pub const LEASE_EXPIRED: &str = "lease expired (worker lost)";

/// A stage of the order lifecycle; each stage is its own queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Export,
    Poll,
    Download,
    Clean,
}

impl Stage {
    /// Every stage, in lifecycle order.
    pub const ALL: [Stage; 4] = [Stage::Export, Stage::Poll, Stage::Download, Stage::Clean];

    /// The stable queue name used in Redis keys and metrics. Never derived from a Rust type path:
    /// renaming a type must not move a running campaign to an empty queue.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Export => "export",
            Stage::Poll => "poll",
            Stage::Download => "download",
            Stage::Clean => "clean",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stage {
    type Err = QueueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.name() == s)
            .ok_or_else(|| QueueError::UnknownStage(s.to_owned()))
    }
}

fn payload_v1() -> u16 {
    1
}

/// The payload of every queued job: which order, and (from poll on) which EE operation.
///
/// This is a durable contract read by workers of other versions: identifiers only, and every
/// field added later must carry `#[serde(default)]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderJob {
    /// Payload version; absent means 1.
    #[serde(default = "payload_v1")]
    pub v: u16,
    /// Tracking name of the campaign the order belongs to.
    pub tracking: String,
    pub collection: String,
    pub row: u32,
    pub col: u32,
    /// First day of the period (inclusive).
    pub start: NaiveDate,
    /// Last day of the period (exclusive).
    pub end: NaiveDate,
    /// The EE operation name, once the export has been started.
    #[serde(default)]
    pub operation: Option<String>,
}

impl OrderJob {
    /// The deterministic job id, `{tracking}|{collection}|{row}|{col}|{start}`: enqueueing the
    /// same order twice is a no-op while the first is still queued.
    pub fn id(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.tracking, self.collection, self.row, self.col, self.start
        )
    }
}

/// A payload the queue can store: serialisable, with a deterministic id and a tracking name.
///
/// apalis's `push_bulk` builds tasks without ids, so the backend derives them from the payload.
pub trait QueueJob: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The deterministic id of the job (equal payloads, equal ids).
    fn job_id(&self) -> String;
    /// The tracking name, used by `cedar retry` and cancel to select a campaign's jobs.
    fn tracking(&self) -> &str;
}

impl QueueJob for OrderJob {
    fn job_id(&self) -> String {
        self.id()
    }

    fn tracking(&self) -> &str {
        &self.tracking
    }
}

/// Where new export jobs go in the admission backlog: by priority (higher first), then taking
/// turns (round-robin) with the other submissions of the same priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogPlace<'a> {
    /// 0–9999, as EE's own task priority; higher goes first.
    pub priority: u32,
    /// The submission whose turns these jobs take.
    pub tracking: &'a str,
}

impl BacklogPlace<'_> {
    /// Backlog places one priority's band spans: more turns than any campaign has orders.
    pub const BAND_WIDTH: i64 = 1 << 33;

    /// The lowest backlog score of this priority's band (scores stay exact in Lua's doubles:
    /// 10,000 × 2^33 < 2^53).
    pub fn band(&self) -> i64 {
        i64::from(crate::order::MAX_PRIORITY - self.priority.min(crate::order::MAX_PRIORITY))
            * Self::BAND_WIDTH
    }
}

impl Default for BacklogPlace<'_> {
    fn default() -> Self {
        BacklogPlace {
            priority: crate::order::DEFAULT_PRIORITY,
            tracking: "",
        }
    }
}

/// Figures shared by every worker that steer admission (see `jobs::admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// The admission cap learnt from EE's queue (unset: the configured cap).
    Room,
    /// Set while admission is paused (the EECU budget is spent): the pause's end, unix ms.
    Paused,
    /// The queue limit EE named in its last "Too many tasks" answer.
    EeQueueLimit,
    /// Other pipelines' tasks queued in EE at the last sweep.
    OtherTasks,
    /// Exports EE accepted since the room last grew.
    Accepted,
}

impl Figure {
    /// Its Redis key under the namespace, and its name in SQLite's `counters`.
    pub fn key(self) -> &'static str {
        match self {
            Figure::Room => "export:room",
            Figure::Paused => "export:paused",
            Figure::EeQueueLimit => "ee:queue_limit",
            Figure::OtherTasks => "ee:other_tasks",
            Figure::Accepted => "ee:accepted",
        }
    }
}

/// What a handler returns in `Ok(..)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The job is finished: remove it.
    Done,
    /// Run the job again after `secs` seconds **without spending an attempt**: waiting is not
    /// failing (EE task still running, no admission slot yet, back-pressure).
    Snooze { secs: u64 },
    /// Export only: give the admission slot back and wait at the front of the backlog, without
    /// spending an attempt (EE's queue is full; a slot that frees is the signal to try again).
    Backlog,
}

/// Queue-level retries of failed jobs: exponential backoff with full jitter, capped.
///
/// Defaults: `max_attempts` 8, `base` 2 s, `factor` 2, `cap` 10 min, full jitter. After the
/// k-th failure the job waits a uniformly random time in `[0, min(cap, base × factor^(k-1))]`;
/// the `max_attempts`-th failure buries it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Failed runs after which the job is dead (default 8).
    pub max_attempts: u32,
    /// Ceiling of the first delay (default 2 s).
    pub base: Duration,
    /// Growth of the ceiling per failure (default 2).
    pub factor: f64,
    /// Largest ceiling (default 10 min).
    pub cap: Duration,
    /// Full jitter (default true); false waits the ceiling exactly.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_secs(2),
            factor: 2.0,
            cap: Duration::from_secs(600),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The largest delay after the `failures`-th failure (1-based).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(64) as i32;
        let ms = self.base.as_millis() as f64 * self.factor.powi(exp);
        let cap = self.cap.as_millis() as f64;
        Duration::from_millis(ms.min(cap).max(0.0) as u64)
    }

    /// The delay after the `failures`-th failure, given a uniform random `unit` in `[0, 1)`.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(failures);
        if self.jitter {
            ceiling.mul_f64(unit.clamp(0.0, 1.0))
        } else {
            ceiling
        }
    }

    /// The delays after failures `1..max_attempts`, jittered with `rand`. The fail script picks
    /// one by the attempt count it reads in Redis, so the formula lives only here.
    pub(crate) fn schedule_ms(&self) -> Vec<u64> {
        (1..self.max_attempts.max(1))
            .map(|k| self.delay(k, rand::random::<f64>()).as_millis() as u64)
            .collect()
    }
}

/// Errors of the queue, classified where they happen.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Talking to Redis failed; [`QueueError::is_retryable`] tells a dropped connection or a
    /// timeout (retry) from a script or protocol error (fatal).
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A payload could not be encoded or decoded: a bug or a foreign writer, never retryable.
    #[error("job payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// A script answered something this version does not understand.
    #[error("unexpected reply from {script}: {detail}")]
    Reply {
        script: &'static str,
        detail: String,
    },
    #[error("unknown stage {0:?}; expected export, poll, download or clean")]
    UnknownStage(String),
    /// A statement on the SQLite file failed; [`sqlite::is_retryable`] tells a busy database or
    /// a disk problem (retry) from anything else (fatal).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The SQLite file cannot be opened or was written by a newer cedar.
    #[error("sqlite database {path}: {reason}")]
    Database { path: String, reason: String },
    /// The first connection to a Redis `[queue] url` failed, and what answers there says why:
    /// nothing listens, or the server is not Redis. `reason` gives the fix; `retryable` is true
    /// when waiting may help (Redis is starting).
    #[error("{reason}")]
    Connect { reason: String, retryable: bool },
    /// `[queue] url` names no backend cedar knows.
    #[error("{0} is not a redis://, rediss:// or sqlite:// URL")]
    Url(String),
    /// `[queue] tls_ca_file` cannot be read or holds no usable certificate.
    #[error("queue.tls_ca_file {path}: {reason}")]
    TlsCa { path: String, reason: String },
}

impl QueueError {
    /// True for errors worth retrying: connection refused/reset/dropped, timeouts, a replica
    /// being promoted or Redis still loading its data set.
    pub fn is_retryable(&self) -> bool {
        match self {
            QueueError::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        ::redis::ErrorKind::Server(
                            ::redis::ServerErrorKind::BusyLoading
                                | ::redis::ServerErrorKind::TryAgain
                                | ::redis::ServerErrorKind::MasterDown
                                | ::redis::ServerErrorKind::ReadOnly
                        )
                    )
            }
            QueueError::Sqlite(e) => sqlite::is_retryable(e),
            QueueError::Connect { retryable, .. } => *retryable,
            QueueError::Payload(_)
            | QueueError::Reply { .. }
            | QueueError::UnknownStage(_)
            | QueueError::Database { .. }
            | QueueError::Url(_)
            | QueueError::TlsCa { .. } => false,
        }
    }
}

/// What a `[queue] url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueUrl {
    /// A Redis server, `redis://…` or `rediss://…` (TLS).
    Redis(String),
    /// An SQLite file on this machine.
    Sqlite(PathBuf),
}

impl QueueUrl {
    /// The database an empty `[queue] url` stands for: `cedar.db` in the working directory.
    pub const DEFAULT_SQLITE: &'static str = "sqlite://cedar.db";

    /// Reads a queue URL: `redis://…`, `rediss://…`, `sqlite:///abs/path`, `sqlite://rel.db`
    /// (relative to the working directory), or "" for [`QueueUrl::DEFAULT_SQLITE`].
    pub fn parse(url: &str) -> Option<QueueUrl> {
        let url = if url.is_empty() {
            Self::DEFAULT_SQLITE
        } else {
            url
        };
        if let Some(path) = sqlite::path_of(url) {
            return Some(QueueUrl::Sqlite(path));
        }
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "redis" | "rediss") => {
                Some(QueueUrl::Redis(url.to_owned()))
            }
            _ => None,
        }
    }
}

/// Where the queue, the tracking state and the operations snapshot live; clones share one
/// connection (Redis: a reconnecting connection manager; SQLite: one connection per process).
#[derive(Clone)]
pub enum Connection {
    Redis(::redis::aio::ConnectionManager),
    Sqlite(Arc<sqlite::Db>),
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Connection::Redis(_) => f.write_str("Connection::Redis"),
            Connection::Sqlite(db) => f.debug_tuple("Connection::Sqlite").field(db).finish(),
        }
    }
}

impl Connection {
    /// Connects to what `url` names (see [`QueueUrl::parse`]); an SQLite file is created, with
    /// its schema, if it does not exist.
    pub async fn open(url: &str) -> Result<Connection, QueueError> {
        Self::open_with_ca(url, None).await
    }

    /// [`Connection::open`], trusting the CA certificates in the PEM file `tls_ca_file` (`[queue]
    /// tls_ca_file`) for a `rediss://` URL instead of the system's trust store.
    pub async fn open_with_ca(
        url: &str,
        tls_ca_file: Option<&std::path::Path>,
    ) -> Result<Connection, QueueError> {
        match QueueUrl::parse(url) {
            Some(QueueUrl::Redis(url)) => Ok(Connection::Redis(
                redis::connect_with_ca(&url, tls_ca_file).await?,
            )),
            Some(QueueUrl::Sqlite(path)) => Ok(Connection::Sqlite(sqlite::Db::open(&path).await?)),
            None => Err(QueueError::Url(redact_url(url))),
        }
    }

    /// [`Connection::open_with_ca`] for a command a person waits on: a Redis that does not
    /// answer is an error at once, not after the reconnecting manager's backoff. Workers use
    /// `open_with_ca`, which rides out a Redis restart.
    pub async fn open_now(
        url: &str,
        tls_ca_file: Option<&std::path::Path>,
    ) -> Result<Connection, QueueError> {
        match QueueUrl::parse(url) {
            Some(QueueUrl::Redis(url)) => Ok(Connection::Redis(
                redis::connect_now(&url, tls_ca_file).await?,
            )),
            _ => Connection::open_with_ca(url, tls_ca_file).await,
        }
    }
}

/// The queue of every stage under one namespace, in Redis or in an SQLite file.
///
/// Every method does the same on both backends; the docs of [`RedisQueue`] describe each
/// operation, and [`SqliteQueue`] follows them.
#[derive(Clone)]
pub struct Queue {
    inner: QueueInner,
    /// One signal per stage (`Stage as usize`), shared by the clones of this handle: a call that
    /// makes a job due now raises its stage's, and that stage's idle worker in this process
    /// fetches at once instead of at its next look ([`backend`](mod@backend)).
    nudges: [Arc<Notify>; Stage::ALL.len()],
}

#[derive(Clone)]
enum QueueInner {
    Redis(RedisQueue),
    Sqlite(SqliteQueue),
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            QueueInner::Redis(q) => q.fmt(f),
            QueueInner::Sqlite(q) => q.fmt(f),
        }
    }
}

/// Calls the same method on whichever backend the queue uses.
macro_rules! dispatch {
    ($self:ident, $q:ident => $call:expr) => {
        match &$self.inner {
            QueueInner::Redis($q) => $call,
            QueueInner::Sqlite($q) => $call,
        }
    };
}

impl Queue {
    /// The queue of `namespace` on `conn`.
    pub fn new(conn: &Connection, namespace: &str) -> Queue {
        let inner = match conn {
            Connection::Redis(c) => QueueInner::Redis(RedisQueue::new(c.clone(), namespace)),
            Connection::Sqlite(db) => QueueInner::Sqlite(SqliteQueue::new(db.clone(), namespace)),
        };
        Queue {
            inner,
            nudges: Default::default(),
        }
    }

    /// Tells this process's idle worker of `stage` that a job may be due now. Workers in other
    /// processes find it at their next look (`[worker] idle_poll_ms`).
    fn nudge(&self, stage: Stage) {
        // notify_one keeps one permit when no worker waits, so a nudge sent while the worker
        // is busy is not lost.
        self.nudges[stage as usize].notify_one();
    }

    /// The signal [`Queue::nudge`] raises for `stage`.
    pub(crate) fn nudges(&self, stage: Stage) -> Arc<Notify> {
        self.nudges[stage as usize].clone()
    }

    /// Opens `url` (see [`QueueUrl::parse`]) and returns the queue of `namespace` there.
    pub async fn open(url: &str, namespace: &str) -> Result<Queue, QueueError> {
        Ok(Queue::new(&Connection::open(url).await?, namespace))
    }

    pub fn namespace(&self) -> &str {
        dispatch!(self, q => q.namespace())
    }

    /// Succeeds when the backend answers (readiness).
    pub async fn ping(&self) -> Result<(), QueueError> {
        dispatch!(self, q => q.ping().await)
    }

    /// The clock every run-at and lease is measured on, in ms.
    pub async fn now_ms(&self) -> Result<u64, QueueError> {
        dispatch!(self, q => q.now_ms().await)
    }

    /// Adds jobs that are not queued yet and returns how many were added; enqueueing an order
    /// twice is a no-op whatever its state. Export jobs go to the backlog (`delay` ignored) and
    /// become due when [`Queue::admit`] gives them an admission slot.
    pub async fn enqueue_bulk<J: QueueJob>(
        &self,
        stage: Stage,
        jobs: &[J],
        delay: Duration,
    ) -> Result<u64, QueueError> {
        self.enqueue_placed(stage, jobs, delay, BacklogPlace::default())
            .await
    }

    /// [`Queue::enqueue_bulk`] with export jobs placed in the backlog by `place` (priority,
    /// then turns among submissions).
    pub async fn enqueue_placed<J: QueueJob>(
        &self,
        stage: Stage,
        jobs: &[J],
        delay: Duration,
        place: BacklogPlace<'_>,
    ) -> Result<u64, QueueError> {
        let mut encoded = Vec::with_capacity(jobs.len());
        for job in jobs {
            encoded.push((job.job_id(), serde_json::to_vec(job)?));
        }
        self.enqueue_encoded_placed(stage, &encoded, delay, place)
            .await
    }

    /// Adds a submission's export jobs as one run in the backlog, placed by `place` as its
    /// first job would be ([`run`]): admission expands it an order at a time, so an
    /// archive-size submission costs a few writes and its plan instead of a payload per order.
    /// Returns how many jobs the run holds; 0 if it was added before (enqueueing twice is a
    /// no-op while the run waits).
    pub async fn enqueue_run(
        &self,
        export: &ExportRun,
        place: BacklogPlace<'_>,
    ) -> Result<u64, QueueError> {
        if export.is_empty() {
            return Ok(0);
        }
        let added = dispatch!(self, q => q.enqueue_run(export, place).await)?;
        if added > 0 {
            self.nudge(Stage::Export);
        }
        Ok(added)
    }

    /// The order indices of `tracking` ([`run`]'s order) that its runs still hold, as
    /// `[from, to)` ranges: orders whose export job has not been written yet.
    pub async fn run_ranges(&self, tracking: &str) -> Result<Vec<(u64, u64)>, QueueError> {
        dispatch!(self, q => q.run_ranges(tracking).await)
    }

    /// [`Queue::enqueue_bulk`] for payloads already encoded (the apalis sink encodes them).
    pub(crate) async fn enqueue_encoded(
        &self,
        stage: Stage,
        jobs: &[(String, Vec<u8>)],
        delay: Duration,
    ) -> Result<u64, QueueError> {
        self.enqueue_encoded_placed(stage, jobs, delay, BacklogPlace::default())
            .await
    }

    async fn enqueue_encoded_placed(
        &self,
        stage: Stage,
        jobs: &[(String, Vec<u8>)],
        delay: Duration,
        place: BacklogPlace<'_>,
    ) -> Result<u64, QueueError> {
        let added = dispatch!(self, q => q.enqueue_encoded(stage, jobs, delay, place).await)?;
        if added > 0 && delay.is_zero() {
            self.nudge(stage);
        }
        Ok(added)
    }

    /// Reaps expired leases as [`Queue::reap`] does, then leases up to `n` due jobs to `worker`.
    pub async fn lease(
        &self,
        stage: Stage,
        worker: &str,
        n: usize,
        lease: Duration,
        policy: &RetryPolicy,
    ) -> Result<Vec<Leased>, QueueError> {
        dispatch!(self, q => q.lease(stage, worker, n, lease, policy).await)
    }

    /// Reaps up to 100 expired leases; returns how many. The lost run of each counts as a failed
    /// attempt, with [`LEASE_EXPIRED`] as its last error: the job is due again at once, or dead
    /// ([`DeadReason::ATTEMPTS_EXHAUSTED`]) when that was its `policy.max_attempts`-th failure.
    /// Live leases are untouched.
    pub async fn reap(&self, stage: Stage, policy: &RetryPolicy) -> Result<u64, QueueError> {
        dispatch!(self, q => q.reap(stage, policy).await)
    }

    /// Extends every lease `worker` still holds by `lease`; returns (renewed, lost).
    pub async fn renew(
        &self,
        stage: Stage,
        worker: &str,
        lease: Duration,
    ) -> Result<(u64, u64), QueueError> {
        dispatch!(self, q => q.renew(stage, worker, lease).await)
    }

    /// Removes a finished job (its admission slot is kept); false if it was already gone.
    pub async fn complete(&self, stage: Stage, id: &str) -> Result<bool, QueueError> {
        dispatch!(self, q => q.complete(stage, id).await)
    }

    /// Runs the job `worker` holds again after `delay` (at once if it was woken while it ran,
    /// see [`Queue::wake`]) without spending an attempt; false if `worker` no longer owns the
    /// lease.
    pub async fn snooze(
        &self,
        stage: Stage,
        worker: &str,
        id: &str,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        dispatch!(self, q => q.reschedule(stage, worker, id, delay).await)
    }

    /// Puts a job `worker` holds back to due now without spending an attempt.
    pub async fn release(&self, stage: Stage, worker: &str, id: &str) -> Result<bool, QueueError> {
        let released = dispatch!(self, q => q.reschedule(stage, worker, id, Duration::ZERO).await)?;
        if released {
            self.nudge(stage);
        }
        Ok(released)
    }

    /// Makes the jobs among `ids` that are due later due now, as if their delay had run out
    /// (what they wait for has happened); returns how many. A job running now is marked
    /// instead, so that its next snooze puts it back due at once rather than after its delay:
    /// the run may have looked just before the news. Jobs already due now, dead, in the export
    /// backlog or gone are left alone; waking twice is waking once.
    pub async fn wake(&self, stage: Stage, ids: &[String]) -> Result<u64, QueueError> {
        let woken = dispatch!(self, q => q.wake(stage, ids).await)?;
        if woken > 0 {
            self.nudge(stage);
        }
        Ok(woken)
    }

    /// Records a failed run of the job `worker` holds: retried after backoff, or dead.
    pub async fn fail(
        &self,
        stage: Stage,
        worker: &str,
        id: &str,
        error: &str,
        policy: &RetryPolicy,
    ) -> Result<FailResult, QueueError> {
        dispatch!(self, q => q.fail(stage, worker, id, error, policy).await)
    }

    /// Buries a job at once (fatal error); false if it does not exist.
    pub async fn bury(&self, stage: Stage, id: &str, reason: &str) -> Result<bool, QueueError> {
        dispatch!(self, q => q.bury(stage, id, reason).await)
    }

    /// Why `id` is dead, if it is.
    pub async fn dead_reason(
        &self,
        stage: Stage,
        id: &str,
    ) -> Result<Option<DeadReason>, QueueError> {
        dispatch!(self, q => q.dead_reason(stage, id).await)
    }

    /// Up to `limit` dead jobs of `stage` with why each died (the web console lists them; the
    /// count is in [`Queue::depth`]). Which ones, when there are more, is up to the backend.
    pub async fn dead_jobs(
        &self,
        stage: Stage,
        limit: usize,
    ) -> Result<Vec<(String, DeadReason)>, QueueError> {
        dispatch!(self, q => q.dead_jobs(stage, limit).await)
    }

    /// Failed runs recorded for `id` (0 if none).
    pub async fn attempts(&self, stage: Stage, id: &str) -> Result<u32, QueueError> {
        dispatch!(self, q => q.attempts(stage, id).await)
    }

    /// Gives every dead job of `tracking` a fresh set of attempts; returns how many.
    pub async fn requeue_dead(&self, stage: Stage, tracking: &str) -> Result<u64, QueueError> {
        dispatch!(self, q => q.requeue_dead(stage, tracking).await)
    }

    /// Removes the export run of `tracking` (the orders it has not handed out yet) and its
    /// plan; returns how many orders it held. Jobs it handed out stay.
    pub async fn remove_run(&self, tracking: &str) -> Result<u64, QueueError> {
        dispatch!(self, q => q.remove_run(tracking).await)
    }

    /// Removes the jobs `ids` from `stage` (the backlog included) and frees their slots;
    /// returns how many were there. A run that still holds one of those orders hands its job
    /// out later: the export job then finds the order's state and gives the slot back.
    pub async fn remove_jobs(&self, stage: Stage, ids: &[String]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        dispatch!(self, q => q.remove_jobs(stage, ids).await)
    }

    /// Removes every job of `tracking` from `stage` and frees their slots; returns how many.
    pub async fn remove_tracking(&self, stage: Stage, tracking: &str) -> Result<u64, QueueError> {
        dispatch!(self, q => q.remove_tracking(stage, tracking).await)
    }

    /// Counts the jobs of `stage` in each state.
    pub async fn depth(&self, stage: Stage) -> Result<Depth, QueueError> {
        dispatch!(self, q => q.depth(stage).await)
    }

    /// The ids the queue records as leased by `worker`: heartbeats compare them with the jobs
    /// the process holds, and hand back any it does not (lost acknowledgements).
    pub async fn leased_by(&self, stage: Stage, worker: &str) -> Result<Vec<String>, QueueError> {
        dispatch!(self, q => q.leased_by(stage, worker).await)
    }

    /// Leases of `stage` that have expired but were not reaped yet.
    pub async fn expired_leases(&self, stage: Stage) -> Result<u64, QueueError> {
        dispatch!(self, q => q.expired_leases(stage).await)
    }

    /// Moves export jobs from the backlog to due while fewer than `max_active` hold an
    /// admission slot; returns how many moved.
    pub async fn admit(&self, max_active: u64) -> Result<u64, QueueError> {
        dispatch!(self, q => q.admit(max_active).await)
    }

    /// Puts the export job `worker` holds back at the front of the backlog and frees its
    /// admission slot, without spending an attempt; false if `worker` no longer holds it.
    pub async fn push_back(&self, worker: &str, id: &str) -> Result<bool, QueueError> {
        let moved = dispatch!(self, q => q.push_back(worker, id).await)?;
        if moved {
            self.nudge(Stage::Export);
        }
        Ok(moved)
    }

    /// One admission figure; `None` when unset.
    pub async fn figure(&self, figure: Figure) -> Result<Option<i64>, QueueError> {
        dispatch!(self, q => q.figure(figure).await)
    }

    /// Until when admission is paused because the EECU budget is spent ([`Figure::Paused`]);
    /// `None` while it is not.
    pub async fn paused_until(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, QueueError> {
        let until = self.figure(Figure::Paused).await?;
        Ok(until.and_then(chrono::DateTime::from_timestamp_millis))
    }

    /// Sets (or, with `None`, clears) one admission figure.
    pub async fn set_figure(&self, figure: Figure, value: Option<i64>) -> Result<(), QueueError> {
        dispatch!(self, q => q.set_figure(figure, value).await)?;
        if figure == Figure::Room || figure == Figure::Paused {
            self.nudge(Stage::Export);
        }
        Ok(())
    }

    /// Adds `by` to one admission figure (unset counts 0); returns the new value.
    pub async fn add_figure(&self, figure: Figure, by: i64) -> Result<i64, QueueError> {
        dispatch!(self, q => q.add_figure(figure, by).await)
    }

    /// Frees the admission slot of `id`; false if it held none. A freed slot lets the export
    /// stage admit one more job from its backlog.
    pub async fn release_slot(&self, id: &str) -> Result<bool, QueueError> {
        let freed = dispatch!(self, q => q.release_slot(id).await)?;
        if freed {
            self.nudge(Stage::Export);
        }
        Ok(freed)
    }

    /// Jobs holding an admission slot.
    pub async fn active_count(&self) -> Result<u64, QueueError> {
        dispatch!(self, q => q.active_count().await)
    }

    /// Takes one call from the EE budget of `limit_per_sec` calls per second shared by every
    /// process on this queue.
    pub async fn acquire_rate(&self, limit_per_sec: u64) -> Result<RateDecision, QueueError> {
        dispatch!(self, q => q.acquire_rate(limit_per_sec).await)
    }
}

/// A job handed to a worker under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub id: String,
    /// The payload JSON as enqueued.
    pub payload: Vec<u8>,
    /// Failed runs so far (0 on the first run).
    pub attempts: u32,
}

/// What [`Queue::fail`] did with a failed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailResult {
    /// Back in due; runs again at `at_ms` (on the queue's clock, [`Queue::now_ms`]).
    Retried { at_ms: u64 },
    /// All attempts spent: the job is dead.
    Buried,
    /// The caller no longer owns the lease (it expired and was reaped): nothing changed.
    Stale,
}

/// Answer of the shared EE rate limiter ([`Queue::acquire_rate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead now.
    Go,
    /// The window is full; try again after this many ms.
    WaitMs(u64),
}

/// Why a job is dead, stored as JSON beside it (Redis `{ns}:{stage}:dead`, SQLite
/// `jobs.dead_reason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadReason {
    /// [`DeadReason::FATAL`] or [`DeadReason::ATTEMPTS_EXHAUSTED`].
    pub reason: String,
    pub attempts: u32,
    pub last_error: String,
    pub at_ms: u64,
}

impl DeadReason {
    /// The handler gave up at once ([`Queue::bury`]).
    pub const FATAL: &'static str = "fatal";
    /// The job failed `max_attempts` times (a lost lease counts as a failure).
    pub const ATTEMPTS_EXHAUSTED: &'static str = "attempts exhausted";
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

/// A URL with any password replaced by `***`, for logs and messages.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        // Not a URL: it may still hold a secret, so show only its shape.
        Err(_) if raw.contains('@') => "<unparseable URL with credentials>".to_string(),
        Err(_) => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> OrderJob {
        OrderJob {
            v: 1,
            tracking: "camp".into(),
            collection: "S2".into(),
            row: 3,
            col: 4,
            start: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
            end: NaiveDate::from_ymd_opt(2024, 2, 1).unwrap(),
            operation: None,
        }
    }

    #[test]
    fn queue_urls_pick_the_backend() {
        assert_eq!(
            QueueUrl::parse("redis://:pw@h:6379/0"),
            Some(QueueUrl::Redis("redis://:pw@h:6379/0".into()))
        );
        assert!(matches!(
            QueueUrl::parse("rediss://h"),
            Some(QueueUrl::Redis(_))
        ));
        assert_eq!(
            QueueUrl::parse("sqlite:///var/lib/cedar/cedar.db"),
            Some(QueueUrl::Sqlite("/var/lib/cedar/cedar.db".into()))
        );
        assert_eq!(
            QueueUrl::parse("sqlite://state/cedar.db"),
            Some(QueueUrl::Sqlite("state/cedar.db".into()))
        );
        assert_eq!(
            QueueUrl::parse(""),
            Some(QueueUrl::Sqlite("cedar.db".into()))
        );
        for bad in ["sqlite://", "http://h", "cedar.db", "postgres://h/db"] {
            assert_eq!(QueueUrl::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn stage_names_are_stable_and_round_trip() {
        let names: Vec<_> = Stage::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["export", "poll", "download", "clean"]);
        for s in Stage::ALL {
            assert_eq!(s.name().parse::<Stage>().unwrap(), s);
        }
        assert!("Export".parse::<Stage>().is_err());
    }

    #[test]
    fn job_id_is_deterministic_and_ignores_operation() {
        let a = job();
        let mut b = job();
        b.operation = Some("projects/p/operations/X".into());
        assert_eq!(a.id(), "camp|S2|3|4|2024-01-01");
        assert_eq!(a.id(), b.id());
    }

    #[test]
    fn payload_defaults_version_and_operation() {
        let json = r#"{"tracking":"t","collection":"c","row":1,"col":2,"start":"2024-01-01","end":"2024-01-02"}"#;
        let j: OrderJob = serde_json::from_str(json).unwrap();
        assert_eq!(j.v, 1);
        assert_eq!(j.operation, None);
    }

    #[test]
    fn retry_ceiling_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_secs(2));
        assert_eq!(p.ceiling(2), Duration::from_secs(4));
        assert_eq!(p.ceiling(5), Duration::from_secs(32));
        assert_eq!(p.ceiling(12), Duration::from_secs(600));
        assert_eq!(p.ceiling(1000), Duration::from_secs(600));
    }

    #[test]
    fn full_jitter_stays_within_ceiling() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(3, 0.0), Duration::ZERO);
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(4));
        assert!(p.delay(3, 0.999_999) < Duration::from_secs(8));
        let exact = RetryPolicy { jitter: false, ..p };
        assert_eq!(exact.delay(3, 0.1), Duration::from_secs(8));
        let schedule = p.schedule_ms();
        assert_eq!(schedule.len(), 7);
        for (k, ms) in schedule.iter().enumerate() {
            assert!(*ms <= p.ceiling(k as u32 + 1).as_millis() as u64);
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact_url("redis://u:pw@h"), "redis://u:***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert!(!redact_url("not a url pw@x").contains("pw"));
    }
}
