//! The operations snapshot: what the sweeper last saw of every EE operation cedar waits for.
//!
//! Poll jobs never ask EE about their own task (see [`crate::jobs::poll`]): one sweeper, the
//! leader among all workers, pages `operations.list` and records each awaited operation's view
//! here; poll jobs read it. The snapshot lives beside the queue, in Redis (`redis.rs`) or in the
//! SQLite file (`sqlite.rs`); both backends keep the same state and answer alike:
//!
//! | Redis key | SQLite table | content |
//! |---|---|---|
//! | `{ns}:ops` (hash) | `ops` | operation name → view JSON |
//! | `{ns}:ops:waiting` (set) | `ops_waiting.name` | operations some poll job waits for |
//! | `{ns}:ops:waiter` (hash) | `ops_waiting.job` | awaited operation name → the id of the poll job waiting for it |
//! | `{ns}:ops:looked-up` (set) | `ops_looked_up` | operations already looked up once by name |
//! | `{ns}:ops:swept` (string) | `ops_sweep.swept_ms` | start of the last finished sweep (ms) |
//! | `{ns}:ops:sweeper` (string, PX) | `ops_sweep.leader`, `leader_until_ms` | the sweeper's leader lock |
//!
//! Views are opaque JSON strings here; [`crate::earthengine::types::OpView`] is their shape.

mod redis;
mod sqlite;

use std::collections::HashSet;
use std::time::Duration;

use self::redis::RedisSnapshot;
use self::sqlite::SqliteSnapshot;
use super::{Connection, QueueError};

/// Operation names per [`Snapshot::waiters`] step (one `HMGET`, one read).
const WAITERS_CHUNK: usize = 1_000;

/// The shortest leader lease [`Snapshot::lead`] grants: a shorter one could run out between
/// two of the leader's own calls.
const MIN_LEAD: Duration = Duration::from_secs(1);

/// The operations snapshot of one namespace.
#[derive(Clone)]
pub struct Snapshot {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Redis(RedisSnapshot),
    Sqlite(SqliteSnapshot),
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Redis(s) => s.fmt(f),
            Inner::Sqlite(s) => s.fmt(f),
        }
    }
}

/// Calls the same method on whichever backend holds the snapshot.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match &$self.inner {
            Inner::Redis($s) => $call,
            Inner::Sqlite($s) => $call,
        }
    };
}

impl Snapshot {
    /// The snapshot of `namespace` on `conn`.
    pub fn new(conn: &Connection, namespace: &str) -> Snapshot {
        let inner = match conn {
            Connection::Redis(c) => Inner::Redis(RedisSnapshot::new(c.clone(), namespace)),
            Connection::Sqlite(db) => Inner::Sqlite(SqliteSnapshot::new(db.clone(), namespace)),
        };
        Snapshot { inner }
    }

    /// The view JSON of `operation`, if the sweeper recorded one.
    pub async fn view(&self, operation: &str) -> Result<Option<String>, QueueError> {
        dispatch!(self, s => s.view(operation).await)
    }

    /// Every recorded view JSON (one per awaited operation), for the metrics.
    pub async fn views(&self) -> Result<Vec<String>, QueueError> {
        dispatch!(self, s => s.views().await)
    }

    /// When the last finished sweep started (ms since the epoch), if any finished.
    pub async fn swept_ms(&self) -> Result<Option<i64>, QueueError> {
        dispatch!(self, s => s.swept_ms().await)
    }

    /// Tells the sweeper to look for `operation`, which the poll job `job` (its id) waits for;
    /// the latest `job` recorded for an operation is the one [`Snapshot::waiters`] names.
    pub async fn wait_for(&self, operation: &str, job: &str) -> Result<(), QueueError> {
        dispatch!(self, s => s.wait_for(operation, job).await)
    }

    /// The operations poll jobs wait for.
    pub async fn waiting(&self) -> Result<HashSet<String>, QueueError> {
        dispatch!(self, s => s.waiting().await)
    }

    /// The ids of the poll jobs waiting for `operations` (each once; an operation nobody waits
    /// for, or awaited by a cedar that did not record its job, names none): the jobs the
    /// sweeper wakes when it sees those operations end.
    pub async fn waiters(&self, operations: &[String]) -> Result<Vec<String>, QueueError> {
        let mut jobs = dispatch!(self, s => s.waiters(operations).await)?;
        jobs.sort_unstable();
        jobs.dedup();
        Ok(jobs)
    }

    /// Nobody waits for `operation` any more (it ended, or was lost): it leaves the waiting set
    /// with its job, and its lookup is forgotten too, so that [`Snapshot::first_lookup`] is
    /// true again if it is ever awaited anew.
    pub async fn stop_waiting(&self, operation: &str) -> Result<(), QueueError> {
        dispatch!(self, s => s.stop_waiting(operation).await)
    }

    /// Records that `operation` is being looked up by name; true the first time only (until
    /// [`Snapshot::forget_lookup`] or [`Snapshot::stop_waiting`]).
    pub async fn first_lookup(&self, operation: &str) -> Result<bool, QueueError> {
        dispatch!(self, s => s.first_lookup(operation).await)
    }

    /// Forgets a lookup that failed, so that a later run tries again.
    pub async fn forget_lookup(&self, operation: &str) -> Result<(), QueueError> {
        dispatch!(self, s => s.forget_lookup(operation).await)
    }

    /// Takes or keeps the sweeper's leader lock for `lease` (at least 1 s), in one atomic step:
    /// `worker` takes the lock if nobody holds it, renews it for `lease` if it holds it already,
    /// and gets false while another worker's lease runs. A leader that dies loses the lock when
    /// its lease runs out.
    pub async fn lead(&self, worker: &str, lease: Duration) -> Result<bool, QueueError> {
        let lease_ms = lease.max(MIN_LEAD).as_millis() as u64;
        dispatch!(self, s => s.lead(worker, lease_ms).await)
    }

    /// Writes a finished sweep at once: the `views` (name, JSON) it found, the removal of every
    /// operation not in `waiting` (recorded before or in `views`), the removal of the views of
    /// the `unlisted` operations (awaited, but not in the list: they stay awaited, without a
    /// view), and `started_ms` as the last sweep's start ([`Snapshot::swept_ms`]). Returns the
    /// names no longer awaited that were removed.
    pub async fn record_sweep(
        &self,
        views: &[(String, String)],
        waiting: &HashSet<String>,
        unlisted: &[String],
        started_ms: i64,
    ) -> Result<Vec<String>, QueueError> {
        dispatch!(self, s => s.record_sweep(views, waiting, unlisted, started_ms).await)
    }
}
