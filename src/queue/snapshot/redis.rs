//! The snapshot in Redis: a hash of views, two sets of names, a hash of awaiting jobs and two
//! strings, under `{ns}:ops`.

use std::collections::HashSet;
use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::queue::QueueError;
use crate::queue::redis::script;

/// The leader lock in one step, so that no other worker can take or drop it between the check
/// and the write (a missing key reads as `false` in Lua).
/// KEYS: 1 the lock. ARGV: 1 worker, 2 lease ms. Returns 1 when `worker` holds the lock.
const LEAD_LUA: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

static LEAD: LazyLock<Script> = LazyLock::new(|| script(&[LEAD_LUA]));

/// The snapshot of one namespace in Redis.
#[derive(Clone)]
pub(super) struct RedisSnapshot {
    conn: ConnectionManager,
    ns: String,
}

impl std::fmt::Debug for RedisSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot::Redis")
            .field("ns", &self.ns)
            .finish()
    }
}

impl RedisSnapshot {
    pub(super) fn new(conn: ConnectionManager, namespace: &str) -> Self {
        RedisSnapshot {
            conn,
            ns: namespace.to_owned(),
        }
    }

    fn ops_key(&self) -> String {
        format!("{}:ops", self.ns)
    }
    fn swept_key(&self) -> String {
        format!("{}:ops:swept", self.ns)
    }
    fn waiting_key(&self) -> String {
        format!("{}:ops:waiting", self.ns)
    }
    fn waiter_key(&self) -> String {
        format!("{}:ops:waiter", self.ns)
    }
    fn looked_up_key(&self) -> String {
        format!("{}:ops:looked-up", self.ns)
    }
    fn leader_key(&self) -> String {
        format!("{}:ops:sweeper", self.ns)
    }

    pub(super) async fn view(&self, operation: &str) -> Result<Option<String>, QueueError> {
        Ok(self.conn.clone().hget(self.ops_key(), operation).await?)
    }

    pub(super) async fn views(&self) -> Result<Vec<String>, QueueError> {
        Ok(redis::cmd("HVALS")
            .arg(self.ops_key())
            .query_async(&mut self.conn.clone())
            .await?)
    }

    pub(super) async fn swept_ms(&self) -> Result<Option<i64>, QueueError> {
        Ok(self.conn.clone().get(self.swept_key()).await?)
    }

    /// The name and its job in one `MULTI` block, so that the sweeper never sees one without
    /// the other.
    pub(super) async fn wait_for(&self, operation: &str, job: &str) -> Result<(), QueueError> {
        let _: () = redis::pipe()
            .atomic()
            .sadd(self.waiting_key(), operation)
            .ignore()
            .hset(self.waiter_key(), operation, job)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    pub(super) async fn waiting(&self) -> Result<HashSet<String>, QueueError> {
        Ok(self.conn.clone().smembers(self.waiting_key()).await?)
    }

    pub(super) async fn waiters(&self, operations: &[String]) -> Result<Vec<String>, QueueError> {
        let mut jobs = Vec::new();
        for chunk in operations.chunks(super::WAITERS_CHUNK) {
            let found: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.waiter_key())
                .arg(chunk)
                .query_async(&mut self.conn.clone())
                .await?;
            jobs.extend(found.into_iter().flatten());
        }
        Ok(jobs)
    }

    pub(super) async fn stop_waiting(&self, operation: &str) -> Result<(), QueueError> {
        let _: () = redis::pipe()
            .atomic()
            .srem(self.waiting_key(), operation)
            .ignore()
            .hdel(self.waiter_key(), operation)
            .ignore()
            .srem(self.looked_up_key(), operation)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// `SADD` answers whether the name was new.
    pub(super) async fn first_lookup(&self, operation: &str) -> Result<bool, QueueError> {
        Ok(self
            .conn
            .clone()
            .sadd(self.looked_up_key(), operation)
            .await?)
    }

    pub(super) async fn forget_lookup(&self, operation: &str) -> Result<(), QueueError> {
        let _: () = self
            .conn
            .clone()
            .srem(self.looked_up_key(), operation)
            .await?;
        Ok(())
    }

    /// [`LEAD_LUA`]; the lock expires by itself (`PX`), on the Redis clock.
    pub(super) async fn lead(&self, worker: &str, lease_ms: u64) -> Result<bool, QueueError> {
        let held: u64 = LEAD
            .key(self.leader_key())
            .arg(worker)
            .arg(lease_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(held == 1)
    }

    /// One `MULTI` block writes the views, drops the stale names and the unlisted views and sets
    /// the sweep's start.
    /// Only the leader writes views, so reading the names before the block is safe.
    pub(super) async fn record_sweep(
        &self,
        views: &[(String, String)],
        waiting: &HashSet<String>,
        unlisted: &[String],
        started_ms: i64,
    ) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let recorded: Vec<String> = conn.hkeys(self.ops_key()).await?;
        let mut stale: Vec<String> = recorded
            .into_iter()
            .chain(views.iter().map(|(name, _)| name.clone()))
            .filter(|name| !waiting.contains(name))
            .collect();
        stale.sort_unstable();
        stale.dedup();
        let mut p = redis::pipe();
        p.atomic();
        for (name, view) in views {
            p.hset(self.ops_key(), name, view).ignore();
        }
        for name in stale.iter().chain(unlisted) {
            p.hdel(self.ops_key(), name).ignore();
        }
        p.set(self.swept_key(), started_ms).ignore();
        let _: () = p.query_async(&mut conn).await?;
        Ok(stale)
    }
}
