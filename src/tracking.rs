//! Tracking: the record of one submission and the state of each of its orders.
//!
//! The source of truth lives beside the queue ([`crate::queue::Connection`]). In Redis: one hash
//! per submission, one field per order, and a per-state tally kept in step by a Lua script. In the
//! SQLite file: one row per order and one per (submission, state) tally, kept in step in one
//! transaction. Either way any number of workers can update different orders at once without
//! losing each other's changes. The tracking **document** in the store
//! (`{tracking.prefix}/{name}.json`, with the original CEDAR's top-level keys `program`,
//! `submission`, `tracking`, `orders`, `metadata`) is a projection re-rendered from that state,
//! so whoever writes it last writes everything.
//!
//! States move forward only (QUEUED → PENDING → RUNNING → SUCCEEDED → DOWNLOADED → CLEANED, or to
//! EMPTY/FAILED/CANCELLED/LOST); a late or repeated job cannot move an order back. Only
//! `cedar retry` resets a failed order to QUEUED.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::order::{Order, OrderNames};
use crate::period::Period;
use crate::queue::{Connection, QueueError, sqlite::Db};

/// Errors of tracking state.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("tracking {0:?} does not exist; `cedar list` shows the known submissions")]
    Unknown(String),
    #[error("tracking {name:?}: corrupt record: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("tracking {0:?} already exists; submissions need unique names")]
    Exists(String),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The tracking state's database could not be opened.
    #[error("tracking state: {0}")]
    Open(#[from] QueueError),
}

impl TrackingError {
    /// True when trying again later may succeed: any Redis error (connection trouble, as the
    /// jobs always treated it), a busy or failing SQLite file.
    pub fn is_retryable(&self) -> bool {
        match self {
            TrackingError::Redis(_) => true,
            TrackingError::Sqlite(e) => crate::queue::sqlite::is_retryable(e),
            TrackingError::Open(e) => e.is_retryable(),
            TrackingError::Unknown(_)
            | TrackingError::Corrupt { .. }
            | TrackingError::Exists(_) => false,
        }
    }
}

/// The state of one order: EE's operation states plus cedar's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderState {
    /// Waiting for an admission slot or a worker.
    Queued,
    Pending,
    Running,
    Cancelling,
    Succeeded,
    /// Every piece is in the destination, verified.
    Downloaded,
    /// Downloaded, and the export objects are gone from the bucket.
    Cleaned,
    /// The collection has no scenes for this tile and period: no EE task was started.
    Empty,
    Failed,
    Cancelled,
    /// EE no longer knows the operation.
    Lost,
}

impl OrderState {
    pub const ALL: [OrderState; 11] = [
        OrderState::Queued,
        OrderState::Pending,
        OrderState::Running,
        OrderState::Cancelling,
        OrderState::Succeeded,
        OrderState::Downloaded,
        OrderState::Cleaned,
        OrderState::Empty,
        OrderState::Failed,
        OrderState::Cancelled,
        OrderState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Queued => "QUEUED",
            OrderState::Pending => "PENDING",
            OrderState::Running => "RUNNING",
            OrderState::Cancelling => "CANCELLING",
            OrderState::Succeeded => "SUCCEEDED",
            OrderState::Downloaded => "DOWNLOADED",
            OrderState::Cleaned => "CLEANED",
            OrderState::Empty => "EMPTY",
            OrderState::Failed => "FAILED",
            OrderState::Cancelled => "CANCELLED",
            OrderState::Lost => "LOST",
        }
    }

    pub fn parse(s: &str) -> Option<OrderState> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// How far along the pipeline a state is; updates never lower it (except `retry`).
    pub fn rank(self) -> u8 {
        match self {
            OrderState::Queued => 0,
            OrderState::Pending => 1,
            OrderState::Running => 2,
            OrderState::Cancelling => 3,
            OrderState::Succeeded => 4,
            OrderState::Downloaded => 5,
            OrderState::Cleaned
            | OrderState::Empty
            | OrderState::Failed
            | OrderState::Cancelled
            | OrderState::Lost => 6,
        }
    }

    /// Finished successfully: nothing more will happen to it.
    pub fn is_complete(self) -> bool {
        matches!(self, OrderState::Cleaned | OrderState::Empty)
    }

    /// Finished without its files; `cedar retry` can re-queue it.
    pub fn is_failed(self) -> bool {
        matches!(
            self,
            OrderState::Failed | OrderState::Cancelled | OrderState::Lost
        )
    }

    /// An EE task may be queued or running for it.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            OrderState::Pending | OrderState::Running | OrderState::Cancelling
        )
    }
}

/// An object copied to the destination and verified; clean deletes exactly these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedObject {
    /// Full object name in the export bucket.
    pub name: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
}

/// What is known about one order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderStatus {
    pub state: OrderState,
    /// The EE operation, `projects/{p}/operations/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// EE's own attempt count of the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ee_attempt: Option<u32>,
    /// How many times cedar submitted an export for this order (grows with `cedar retry`).
    #[serde(default)]
    pub exports: u32,
    /// Why it failed, in EE's or cedar's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Scenes in the export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<u32>,
    /// The verified objects, kept until clean has deleted them from the bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<VerifiedObject>,
    /// How many files were downloaded (kept after clean drops `objects`).
    #[serde(default)]
    pub files: u32,
    #[serde(default)]
    pub bytes: u64,
    /// When cedar started the export (cedar's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported: Option<DateTime<Utc>>,
    /// EE's times of the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<DateTime<Utc>>,
    pub updated: DateTime<Utc>,
}

impl OrderStatus {
    pub fn new(state: OrderState) -> Self {
        OrderStatus {
            state,
            operation: None,
            ee_attempt: None,
            exports: 0,
            error: None,
            images: None,
            objects: Vec::new(),
            files: 0,
            bytes: 0,
            exported: None,
            created: None,
            started: None,
            ended: None,
            updated: Utc::now(),
        }
    }
}

/// What was asked for, recorded once at submit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub name: String,
    pub submitted: DateTime<Utc>,
    pub collections: Vec<String>,
    /// (row, col) in the order given.
    pub tiles: Vec<(u32, u32)>,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_freq: Option<String>,
    pub periods: Vec<Period>,
    pub save_empty_metadata: bool,
    pub error_if_empty: bool,
}

impl Submission {
    /// Every order, collection-major, then tile, then period (the original's order).
    pub fn orders(&self) -> impl Iterator<Item = Order> + '_ {
        self.collections.iter().flat_map(move |c| {
            self.tiles.iter().flat_map(move |(row, col)| {
                self.periods.iter().map(move |p| Order {
                    collection: c.clone(),
                    row: *row,
                    col: *col,
                    period: *p,
                })
            })
        })
    }

    pub fn order_count(&self) -> usize {
        self.collections.len() * self.tiles.len() * self.periods.len()
    }
}

/// The key of an order within its tracking hash.
pub fn order_key(order: &Order) -> String {
    format!(
        "{}|{}|{}|{}",
        order.collection, order.row, order.col, order.period.start
    )
}

/// Sets an order's status and keeps the per-state tally in step, atomically; refuses to move
/// an order backwards unless forced. Returns 1 when written, 0 when refused.
///
/// KEYS: orders hash, counts hash, dirty set. ARGV: order key, status JSON, new state, new
/// rank, force ("1"/"0"), tracking name. `__RANKS__` is replaced by the rank of every state.
const SET_STATUS: &str = r#"
local ranks = {__RANKS__}
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local old_state = cjson.decode(old)['state']
  if ARGV[5] ~= '1' and tonumber(ARGV[4]) < (ranks[old_state] or 0) then return 0 end
  redis.call('HINCRBY', KEYS[2], old_state, -1)
else
  -- No field yet: the order was QUEUED (submit records none per order).
  redis.call('HINCRBY', KEYS[2], 'QUEUED', -1)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('SADD', KEYS[3], ARGV[6])
return 1
"#;

/// Tracking state under a namespace, in Redis or in the SQLite file of the queue.
#[derive(Clone)]
pub struct Tracker {
    inner: TrackerInner,
}

#[derive(Clone)]
enum TrackerInner {
    Redis(RedisTracker),
    Sqlite(SqliteTracker),
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, ns) = match &self.inner {
            TrackerInner::Redis(t) => ("redis", &*t.ns),
            TrackerInner::Sqlite(t) => ("sqlite", &*t.ns),
        };
        f.debug_struct("Tracker")
            .field("backend", &kind)
            .field("ns", &ns)
            .finish()
    }
}

/// Calls the same method on whichever backend holds the tracking state.
macro_rules! dispatch {
    ($self:ident, $t:ident => $call:expr) => {
        match &$self.inner {
            TrackerInner::Redis($t) => $call,
            TrackerInner::Sqlite($t) => $call,
        }
    };
}

impl Tracker {
    /// The tracking state of `namespace` on `conn`.
    pub fn new(conn: &Connection, namespace: &str) -> Self {
        let inner = match conn {
            Connection::Redis(c) => TrackerInner::Redis(RedisTracker::new(c.clone(), namespace)),
            Connection::Sqlite(db) => TrackerInner::Sqlite(SqliteTracker {
                db: db.clone(),
                ns: Arc::from(namespace),
            }),
        };
        Tracker { inner }
    }

    /// Opens the queue URL `url` (see [`crate::queue::QueueUrl`]) and returns the tracking state
    /// of `namespace` there.
    pub async fn open(url: &str, namespace: &str) -> Result<Self, TrackingError> {
        Ok(Tracker::new(&Connection::open(url).await?, namespace))
    }

    /// Records a new submission with every order QUEUED. Fails if the name is taken.
    pub async fn create(&self, sub: &Submission) -> Result<(), TrackingError> {
        dispatch!(self, t => t.create(sub).await)
    }

    pub async fn submission(&self, name: &str) -> Result<Submission, TrackingError> {
        dispatch!(self, t => t.submission(name).await)
    }

    /// Every submission name, oldest first.
    pub async fn list(&self) -> Result<Vec<String>, TrackingError> {
        dispatch!(self, t => t.list().await)
    }

    pub async fn status(
        &self,
        name: &str,
        order: &Order,
    ) -> Result<Option<OrderStatus>, TrackingError> {
        dispatch!(self, t => t.status(name, order).await)
    }

    /// The statuses of `orders` (in that order; `None` = no record yet, i.e. QUEUED). Read in
    /// one round trip, so callers walk a large submission in bounded chunks.
    pub async fn statuses(
        &self,
        name: &str,
        orders: &[Order],
    ) -> Result<Vec<Option<OrderStatus>>, TrackingError> {
        if orders.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = orders.iter().map(order_key).collect();
        let raw: Vec<Option<String>> = dispatch!(self, t => t.raw_statuses(name, keys).await)?;
        raw.into_iter()
            .map(|r| {
                r.map(|r| {
                    serde_json::from_str(&r).map_err(|e| TrackingError::Corrupt {
                        name: name.to_string(),
                        reason: e.to_string(),
                    })
                })
                .transpose()
            })
            .collect()
    }

    /// Writes `status` unless it would move the order backwards (then returns false).
    /// `force` allows going back (retry).
    pub async fn set(
        &self,
        name: &str,
        order: &Order,
        status: &OrderStatus,
        force: bool,
    ) -> Result<bool, TrackingError> {
        dispatch!(self, t => t.set(name, order, status, force).await)
    }

    /// Reads the order's status, applies `f`, writes it back (forward-only unless `force`).
    pub async fn update(
        &self,
        name: &str,
        order: &Order,
        force: bool,
        f: impl FnOnce(&mut OrderStatus),
    ) -> Result<OrderStatus, TrackingError> {
        let mut s = self
            .status(name, order)
            .await?
            .unwrap_or_else(|| OrderStatus::new(OrderState::Queued));
        f(&mut s);
        s.updated = Utc::now();
        self.set(name, order, &s, force).await?;
        Ok(s)
    }

    /// Orders per state.
    pub async fn counts(&self, name: &str) -> Result<BTreeMap<OrderState, u64>, TrackingError> {
        dispatch!(self, t => t.counts(name).await)
    }

    /// Every order's status, by order key.
    pub async fn all(&self, name: &str) -> Result<BTreeMap<String, OrderStatus>, TrackingError> {
        dispatch!(self, t => t.all(name).await)
    }

    /// Names whose document needs re-publishing, taken (each at most `n`).
    pub async fn take_dirty(&self, n: usize) -> Result<Vec<String>, TrackingError> {
        dispatch!(self, t => t.take_dirty(n).await)
    }

    pub async fn mark_dirty(&self, name: &str) -> Result<(), TrackingError> {
        dispatch!(self, t => t.mark_dirty(name).await)
    }

    /// Forgets a submission's state (its document in the store stays).
    pub async fn forget(&self, name: &str) -> Result<(), TrackingError> {
        dispatch!(self, t => t.forget(name).await)
    }
}

/// Tracking state in Redis, under a namespace.
#[derive(Clone)]
struct RedisTracker {
    conn: ConnectionManager,
    ns: String,
}

impl RedisTracker {
    fn new(conn: ConnectionManager, namespace: &str) -> Self {
        RedisTracker {
            conn,
            ns: namespace.to_string(),
        }
    }

    fn orders_key(&self, name: &str) -> String {
        format!("{}:tracking:{name}:orders", self.ns)
    }
    fn counts_key(&self, name: &str) -> String {
        format!("{}:tracking:{name}:counts", self.ns)
    }
    fn submission_key(&self, name: &str) -> String {
        format!("{}:tracking:{name}:submission", self.ns)
    }
    fn index_key(&self) -> String {
        format!("{}:trackings", self.ns)
    }
    fn dirty_key(&self) -> String {
        format!("{}:tracking:dirty", self.ns)
    }

    /// Records a new submission with every order QUEUED. Fails if the name is taken.
    pub async fn create(&self, sub: &Submission) -> Result<(), TrackingError> {
        let mut c = self.conn.clone();
        let json = serde_json::to_string(sub).expect("submission serializes");
        let created: bool = c.set_nx(self.submission_key(&sub.name), json).await?;
        if !created {
            return Err(TrackingError::Exists(sub.name.clone()));
        }
        // Orders start QUEUED without a record each: a missing order field means QUEUED, so a
        // 100,000-order submission costs a few commands, not 100,000 writes.
        let _: () = redis::pipe()
            .hset(self.counts_key(&sub.name), "QUEUED", sub.order_count())
            .ignore()
            .zadd(
                self.index_key(),
                &sub.name,
                sub.submitted.timestamp_millis(),
            )
            .ignore()
            .sadd(self.dirty_key(), &sub.name)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    pub async fn submission(&self, name: &str) -> Result<Submission, TrackingError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = c.get(self.submission_key(name)).await?;
        let raw = raw.ok_or_else(|| TrackingError::Unknown(name.to_string()))?;
        serde_json::from_str(&raw).map_err(|e| TrackingError::Corrupt {
            name: name.to_string(),
            reason: e.to_string(),
        })
    }

    /// Every submission name, oldest first.
    pub async fn list(&self) -> Result<Vec<String>, TrackingError> {
        let mut c = self.conn.clone();
        Ok(c.zrange(self.index_key(), 0, -1).await?)
    }

    pub async fn status(
        &self,
        name: &str,
        order: &Order,
    ) -> Result<Option<OrderStatus>, TrackingError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = c.hget(self.orders_key(name), order_key(order)).await?;
        raw.map(|r| {
            serde_json::from_str(&r).map_err(|e| TrackingError::Corrupt {
                name: name.to_string(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    async fn raw_statuses(
        &self,
        name: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<String>>, TrackingError> {
        let mut c = self.conn.clone();
        Ok(redis::cmd("HMGET")
            .arg(self.orders_key(name))
            .arg(&keys)
            .query_async(&mut c)
            .await?)
    }

    /// Writes `status` unless it would move the order backwards (then returns false).
    /// `force` allows going back (retry).
    pub async fn set(
        &self,
        name: &str,
        order: &Order,
        status: &OrderStatus,
        force: bool,
    ) -> Result<bool, TrackingError> {
        let mut c = self.conn.clone();
        let script = redis::Script::new(&set_status_script());
        let json = serde_json::to_string(status).expect("status serializes");
        let written: i64 = script
            .key(self.orders_key(name))
            .key(self.counts_key(name))
            .key(self.dirty_key())
            .arg(order_key(order))
            .arg(json)
            .arg(status.state.as_str())
            .arg(status.state.rank())
            .arg(if force { "1" } else { "0" })
            .arg(name)
            .invoke_async(&mut c)
            .await?;
        Ok(written == 1)
    }

    /// Orders per state.
    pub async fn counts(&self, name: &str) -> Result<BTreeMap<OrderState, u64>, TrackingError> {
        let mut c = self.conn.clone();
        let raw: BTreeMap<String, i64> = c.hgetall(self.counts_key(name)).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| Some((OrderState::parse(&k)?, v.max(0) as u64)))
            .filter(|(_, v)| *v > 0)
            .collect())
    }

    /// Every order's status, by order key (streams through HSCAN for large campaigns).
    pub async fn all(&self, name: &str) -> Result<BTreeMap<String, OrderStatus>, TrackingError> {
        let mut c = self.conn.clone();
        let mut out = BTreeMap::new();
        let mut iter: redis::AsyncIter<(String, String)> = c.hscan(self.orders_key(name)).await?;
        let mut bad = None;
        while let Some(item) = iter.next_item().await {
            let (k, v) = item?;
            match serde_json::from_str(&v) {
                Ok(s) => {
                    out.insert(k, s);
                }
                Err(e) => bad = Some(e.to_string()),
            }
        }
        if let Some(reason) = bad {
            return Err(TrackingError::Corrupt {
                name: name.to_string(),
                reason,
            });
        }
        Ok(out)
    }

    /// Names whose document needs re-publishing, taken (each at most `n`).
    pub async fn take_dirty(&self, n: usize) -> Result<Vec<String>, TrackingError> {
        let mut c = self.conn.clone();
        let names: Vec<String> = redis::cmd("SPOP")
            .arg(self.dirty_key())
            .arg(n)
            .query_async(&mut c)
            .await?;
        Ok(names)
    }

    pub async fn mark_dirty(&self, name: &str) -> Result<(), TrackingError> {
        let mut c = self.conn.clone();
        let _: () = c.sadd(self.dirty_key(), name).await?;
        Ok(())
    }

    /// Forgets a submission's state in Redis (its document in the store stays).
    pub async fn forget(&self, name: &str) -> Result<(), TrackingError> {
        let mut c = self.conn.clone();
        let _: () = redis::pipe()
            .del(self.orders_key(name))
            .ignore()
            .del(self.counts_key(name))
            .ignore()
            .del(self.submission_key(name))
            .ignore()
            .zrem(self.index_key(), name)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }
}

/// Tracking state in the queue's SQLite file, under a namespace: tables `submissions`,
/// `orders`, `order_counts` and `dirty` (see [`crate::queue::sqlite::SCHEMA`]). Every write runs
/// in one `BEGIN IMMEDIATE` transaction, which does what the Redis scripts do atomically.
#[derive(Clone)]
struct SqliteTracker {
    db: Arc<Db>,
    ns: Arc<str>,
}

/// Reads only the state of a stored status, as the Redis script does with `cjson`.
#[derive(Deserialize)]
struct StateOnly {
    state: String,
}

fn corrupt(name: &str, e: serde_json::Error) -> TrackingError {
    TrackingError::Corrupt {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

impl SqliteTracker {
    async fn create(&self, sub: &Submission) -> Result<(), TrackingError> {
        let json = serde_json::to_string(sub).expect("submission serializes");
        // Orders start QUEUED without a row each (a missing row means QUEUED).
        let count = sub.order_count() as i64;
        let (ns, name, submitted) = (
            self.ns.clone(),
            sub.name.clone(),
            sub.submitted.timestamp_millis(),
        );
        self.db
            .write(move |tx| -> Result<(), TrackingError> {
                let created = tx.execute(
                    "INSERT OR IGNORE INTO submissions (ns, name, submitted_ms, body)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![&*ns, name, submitted, json],
                )?;
                if created == 0 {
                    return Err(TrackingError::Exists(name));
                }
                tx.execute(
                    "INSERT INTO order_counts (ns, tracking, state, n) VALUES (?1, ?2, 'QUEUED', ?3)
                     ON CONFLICT (ns, tracking, state) DO UPDATE SET n = ?3",
                    params![&*ns, name, count],
                )?;
                tx.execute(
                    "INSERT OR IGNORE INTO dirty (ns, tracking) VALUES (?1, ?2)",
                    params![&*ns, name],
                )?;
                Ok(())
            })
            .await
    }

    async fn submission(&self, name: &str) -> Result<Submission, TrackingError> {
        let (ns, key) = (self.ns.clone(), name.to_owned());
        let raw: Option<String> = self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT body FROM submissions WHERE ns = ?1 AND name = ?2",
                    params![&*ns, key],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        let raw = raw.ok_or_else(|| TrackingError::Unknown(name.to_string()))?;
        serde_json::from_str(&raw).map_err(|e| corrupt(name, e))
    }

    async fn list(&self) -> Result<Vec<String>, TrackingError> {
        let ns = self.ns.clone();
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT name FROM submissions WHERE ns = ?1 ORDER BY submitted_ms, name",
                )?
                .query_map(params![&*ns], |r| r.get(0))?
                .collect()
            })
            .await?)
    }

    async fn status(
        &self,
        name: &str,
        order: &Order,
    ) -> Result<Option<OrderStatus>, TrackingError> {
        let (ns, tracking, key) = (self.ns.clone(), name.to_owned(), order_key(order));
        let raw: Option<String> = self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT status FROM orders WHERE ns = ?1 AND tracking = ?2 AND key = ?3",
                    params![&*ns, tracking, key],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| corrupt(name, e)))
            .transpose()
    }

    /// As [`SET_STATUS`]: forward-only unless forced, the tally moved in the same transaction.
    async fn raw_statuses(
        &self,
        name: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<String>>, TrackingError> {
        let (ns, tracking) = (self.ns.clone(), name.to_owned());
        self.db
            .read(move |c| {
                let mut q = c.prepare_cached(
                    "SELECT status FROM orders WHERE ns = ?1 AND tracking = ?2 AND key = ?3",
                )?;
                keys.iter()
                    .map(|k| {
                        q.query_row(params![&*ns, tracking, k], |r| r.get(0))
                            .optional()
                    })
                    .collect()
            })
            .await
            .map_err(TrackingError::from)
    }

    async fn set(
        &self,
        name: &str,
        order: &Order,
        status: &OrderStatus,
        force: bool,
    ) -> Result<bool, TrackingError> {
        let json = serde_json::to_string(status).expect("status serializes");
        let (ns, tracking, key, state) = (
            self.ns.clone(),
            name.to_owned(),
            order_key(order),
            status.state,
        );
        self.db
            .write(move |tx| -> Result<bool, TrackingError> {
                let old: Option<String> = tx
                    .query_row(
                        "SELECT status FROM orders WHERE ns = ?1 AND tracking = ?2 AND key = ?3",
                        params![&*ns, tracking, key],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(old) = old {
                    let old_state = serde_json::from_str::<StateOnly>(&old)
                        .map_err(|e| corrupt(&tracking, e))?
                        .state;
                    let old_rank = OrderState::parse(&old_state).map_or(0, OrderState::rank);
                    if !force && state.rank() < old_rank {
                        return Ok(false);
                    }
                    tx.execute(
                        "UPDATE order_counts SET n = n - 1
                         WHERE ns = ?1 AND tracking = ?2 AND state = ?3",
                        params![&*ns, tracking, old_state],
                    )?;
                } else {
                    // No row yet: the order was QUEUED.
                    tx.execute(
                        "UPDATE order_counts SET n = n - 1
                         WHERE ns = ?1 AND tracking = ?2 AND state = 'QUEUED'",
                        params![&*ns, tracking],
                    )?;
                }
                tx.execute(
                    "INSERT INTO orders (ns, tracking, key, status) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (ns, tracking, key) DO UPDATE SET status = ?4",
                    params![&*ns, tracking, key, json],
                )?;
                tx.execute(
                    "INSERT INTO order_counts (ns, tracking, state, n) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT (ns, tracking, state) DO UPDATE SET n = n + 1",
                    params![&*ns, tracking, state.as_str()],
                )?;
                tx.execute(
                    "INSERT OR IGNORE INTO dirty (ns, tracking) VALUES (?1, ?2)",
                    params![&*ns, tracking],
                )?;
                Ok(true)
            })
            .await
    }

    async fn counts(&self, name: &str) -> Result<BTreeMap<OrderState, u64>, TrackingError> {
        let (ns, tracking) = (self.ns.clone(), name.to_owned());
        let raw: Vec<(String, i64)> = self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT state, n FROM order_counts WHERE ns = ?1 AND tracking = ?2 AND n > 0",
                )?
                .query_map(params![&*ns, tracking], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
            })
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| Some((OrderState::parse(&k)?, v as u64)))
            .collect())
    }

    async fn all(&self, name: &str) -> Result<BTreeMap<String, OrderStatus>, TrackingError> {
        let (ns, tracking) = (self.ns.clone(), name.to_owned());
        let rows: Vec<(String, String)> = self
            .db
            .read(move |c| {
                c.prepare_cached("SELECT key, status FROM orders WHERE ns = ?1 AND tracking = ?2")?
                    .query_map(params![&*ns, tracking], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .await?;
        rows.into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_str(&v).map_err(|e| corrupt(name, e))?)))
            .collect()
    }

    async fn take_dirty(&self, n: usize) -> Result<Vec<String>, TrackingError> {
        let ns = self.ns.clone();
        self.db
            .write(move |tx| -> Result<Vec<String>, TrackingError> {
                let names: Vec<String> = tx
                    .prepare_cached("SELECT tracking FROM dirty WHERE ns = ?1 LIMIT ?2")?
                    .query_map(params![&*ns, n as i64], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for name in &names {
                    tx.execute(
                        "DELETE FROM dirty WHERE ns = ?1 AND tracking = ?2",
                        params![&*ns, name],
                    )?;
                }
                Ok(names)
            })
            .await
    }

    async fn mark_dirty(&self, name: &str) -> Result<(), TrackingError> {
        let (ns, name) = (self.ns.clone(), name.to_owned());
        self.db
            .write(move |tx| -> Result<(), TrackingError> {
                tx.execute(
                    "INSERT OR IGNORE INTO dirty (ns, tracking) VALUES (?1, ?2)",
                    params![&*ns, name],
                )?;
                Ok(())
            })
            .await
    }

    async fn forget(&self, name: &str) -> Result<(), TrackingError> {
        let (ns, name) = (self.ns.clone(), name.to_owned());
        self.db
            .write(move |tx| -> Result<(), TrackingError> {
                tx.execute(
                    "DELETE FROM orders WHERE ns = ?1 AND tracking = ?2",
                    params![&*ns, name],
                )?;
                tx.execute(
                    "DELETE FROM order_counts WHERE ns = ?1 AND tracking = ?2",
                    params![&*ns, name],
                )?;
                tx.execute(
                    "DELETE FROM submissions WHERE ns = ?1 AND name = ?2",
                    params![&*ns, name],
                )?;
                Ok(())
            })
            .await
    }
}

/// [`SET_STATUS`] with the rank table filled in from [`OrderState::rank`].
fn set_status_script() -> String {
    let ranks: Vec<String> = OrderState::ALL
        .iter()
        .map(|s| format!("{}={}", s.as_str(), s.rank()))
        .collect();
    SET_STATUS.replace("__RANKS__", &ranks.join(","))
}

/// Orders read per round trip while rendering a document.
const DOCUMENT_CHUNK: usize = 1000;

/// Renders a submission's tracking document — the original CEDAR's keys `program`,
/// `submission`, `tracking`, `orders`, `metadata` — as compact JSON.
///
/// Order statuses are read and written out in chunks, so a 100,000-order submission never
/// holds more than one chunk of statuses (plus the output) in memory.
pub async fn render(
    settings: &Settings,
    tracker: &Tracker,
    name: &str,
) -> Result<Vec<u8>, TrackingError> {
    use serde_json::json;
    let sub = tracker.submission(name).await?;
    let grid = &settings.grid;
    let tiles: Vec<serde_json::Value> = sub
        .tiles
        .iter()
        .filter_map(|(row, col)| grid.tile(*row, *col).ok())
        .map(|t| tile_json(&t, grid.res, grid.size))
        .collect();
    let head = json!({
        "program": program(),
        "submission": {
            "submitted": sub.submitted,
            "collections": sub.collections,
            "tile_grid": {
                "ul": grid.ul, "crs": grid.crs.as_str(), "res": grid.res,
                "size": grid.size, "name": grid.name,
                "limits": [[grid.limits.rows.0, grid.limits.rows.1], [grid.limits.cols.0, grid.limits.cols.1]],
            },
            "tile_indices": sub.tiles.iter().map(|(r, c)| [r, c]).collect::<Vec<_>>(),
            "period_start": sub.period_start,
            "period_end": sub.period_end,
            "period_freq": sub.period_freq,
        },
        "tracking": {
            "submitted": sub.submitted,
            "name": sub.name,
            "prefix": settings.config.tracking.prefix,
            "collections": sub.collections,
            "tiles": tiles,
            "name_template": settings.name_template.as_str(),
            "prefix_template": settings.prefix_template.as_str(),
        },
    });
    let mut out = serde_json::to_vec(&head).expect("document head serializes");
    out.pop(); // the closing brace; orders and metadata follow
    out.extend_from_slice(b",\"orders\":[");
    let mut metadata = Vec::new();
    let queued = OrderStatus::new(OrderState::Queued);
    let orders: Vec<Order> = sub.orders().collect();
    let mut first = true;
    for chunk in orders.chunks(DOCUMENT_CHUNK) {
        let statuses = tracker.statuses(name, chunk).await?;
        for (order, status) in chunk.iter().zip(statuses) {
            let status = status.unwrap_or_else(|| queued.clone());
            if status.state == OrderState::Empty && !sub.save_empty_metadata {
                continue;
            }
            let names = order
                .names(settings, sub.submitted)
                .unwrap_or_else(|_| OrderNames {
                    name: order_key(order),
                    prefix: String::new(),
                });
            if !first {
                out.push(b',');
                metadata.push(b',');
            }
            first = false;
            serde_json::to_writer(
                &mut out,
                &json!({"name": names.name, "prefix": names.prefix, "status": status}),
            )
            .expect("order serializes");
            serde_json::to_writer(&mut metadata, &names.metadata_object())
                .expect("name serializes");
        }
    }
    out.extend_from_slice(b"],\"metadata\":[");
    out.extend_from_slice(&metadata);
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// The object name of a tracking document.
pub fn document_object(settings: &Settings, name: &str) -> String {
    format!(
        "{}/{name}.json",
        settings.config.tracking.prefix.trim_end_matches('/')
    )
}

/// Re-renders a submission's tracking document from the tracking state and writes it to the
/// store.
pub async fn publish(
    settings: &Settings,
    tracker: &Tracker,
    bucket: &dyn crate::store::ExportBucket,
    name: &str,
) -> Result<(), PublishError> {
    let body = render(settings, tracker, name).await?;
    bucket
        .put(&document_object(settings, name), body.into())
        .await?;
    Ok(())
}

/// Errors of writing a tracking document.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Tracking(#[from] TrackingError),
    #[error("writing the tracking document: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// `program` as the original wrote it: name, version, and the EE API used.
pub fn program() -> serde_json::Value {
    serde_json::json!({
        "name": "cedar",
        "version": env!("CARGO_PKG_VERSION"),
        "ee": "rest-v1",
    })
}

/// A tile as the original's `Tile.to_dict()`: index, crs, bounds, res, size.
pub fn tile_json(tile: &crate::grid::Tile, res: [f64; 2], size: [u32; 2]) -> serde_json::Value {
    serde_json::json!({
        "index": [tile.row, tile.col],
        "crs": tile.crs.as_str(),
        "bounds": tile.bounds.to_array(),
        "res": res,
        "size": size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_rank() {
        for s in OrderState::ALL {
            assert_eq!(OrderState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert!(OrderState::Downloaded.rank() > OrderState::Succeeded.rank());
        assert!(OrderState::Empty.is_complete() && OrderState::Lost.is_failed());
    }

    #[test]
    fn the_script_embeds_every_rank() {
        let s = set_status_script();
        for st in OrderState::ALL {
            assert!(s.contains(&format!("{}={}", st.as_str(), st.rank())));
        }
        assert!(!s.contains("__RANKS__"));
    }
}
