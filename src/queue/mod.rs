//! A queue holds the durable jobs of every stage in Redis and hands them to workers under a lease.
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
//! A lease that is not renewed (the worker died) expires; the next worker to lease or heartbeat
//! reaps it back to `due`, spending one attempt so that a job which kills its worker every time
//! ends up `dead` instead of looping forever.
//!
//! - [`redis`]: the Redis data structures and Lua scripts ([`RedisQueue`]).
//! - [`backend`]: the apalis 1.0 backend that drives handlers from a [`RedisQueue`].

pub mod backend;
pub mod redis;

use std::{fmt, str::FromStr, time::Duration};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use self::backend::{BackendConfig, CedarBackend, backend, worker_name};
pub use self::redis::{DEFAULT_NAMESPACE, Depth, FailResult, Leased, RateDecision, RedisQueue};

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

/// What a handler returns in `Ok(..)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The job is finished: remove it.
    Done,
    /// Run the job again after `secs` seconds **without spending an attempt**: waiting is not
    /// failing (EE task still running, no admission slot yet, back-pressure).
    Snooze { secs: u64 },
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
            QueueError::Payload(_) | QueueError::Reply { .. } | QueueError::UnknownStage(_) => {
                false
            }
        }
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
}
