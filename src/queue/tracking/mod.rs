//! Tracking state: the record of one submission and the state of each of its orders.
//!
//! The source of truth lives beside the queue ([`Connection`]), one backend per file: in Redis
//! (`redis.rs`): one hash per submission, one field per order, and a per-state tally kept in step
//! by a Lua script. In the SQLite file (`sqlite.rs`): one row per order and one per (submission,
//! state) tally, kept in step in one transaction. Either way any number of workers can update
//! different orders at once without losing each other's changes. The tracking **document** in
//! the store ([`crate::document`], `{tracking.prefix}/{name}.json`, with the original CEDAR's
//! top-level keys `program`, `submission`, `tracking`, `orders`, `metadata`) is a projection
//! re-rendered from that state, so whoever writes it last writes everything.
//!
//! States move forward only (QUEUED → PENDING → RUNNING → SUCCEEDED → DOWNLOADED → CLEANED, or to
//! EMPTY/FAILED/CANCELLED/LOST); a late or repeated job cannot move an order back. Only
//! `cedar retry` resets a failed order to QUEUED.

mod redis;
mod sqlite;
mod stored;

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use self::redis::RedisTracker;
use self::sqlite::SqliteTracker;
use crate::order::Order;
use crate::period::Period;
use crate::queue::{Connection, QueueError};

/// The tally's field (Redis) or row (SQLite) beside the states that holds the EECU its ended
/// tasks used, in ms, kept by [`Tracker::set`].
const EECU_FIELD: &str = "eecu_ms";
use crate::recipe::Recipe;

/// Errors of tracking state.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    #[error("Redis: {0}")]
    Redis(#[from] ::redis::RedisError),
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
    /// The stored record of `name` cannot be read back: `e` says why.
    fn corrupt(name: &str, e: serde_json::Error) -> Self {
        TrackingError::Corrupt {
            name: name.to_string(),
            reason: e.to_string(),
        }
    }

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
    /// EECU-seconds EE billed for the task (`batchEecuUsageSeconds`), set when poll sees it end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eecu_seconds: Option<f64>,
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
            eecu_seconds: None,
            updated: stamp(),
        }
    }
}

/// Now, to the millisecond: the precision order times are stored with ([`stored`]), so that a
/// status reads back equal to the one written.
pub fn stamp() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default()
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
    /// What its exports are, frozen at submit; `None` for submissions recorded by versions that
    /// did not freeze it (workers then use their own configuration, as those versions did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<Recipe>,
    /// The EE workload tag every EE call made for it carries (`submit --workload-tag`, an
    /// `[[ingest]]` entry's `workload_tag`, else derived from the name at submit); `None` for
    /// submissions recorded before tags were, which get the derived one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_tag: Option<String>,
    /// The `[[ingest]]` entry that submitted it ([`crate::schedule`]); `None` for a submission
    /// made by hand (`cedar submit`), and for one recorded by a version that did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<String>,
    /// Its place among submissions sharing EE (0–9999, higher first; `submit --priority`,
    /// `[[ingest]] priority`); `None` for submissions recorded before priorities were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

impl Submission {
    /// The workload tag its EE calls carry: the recorded one, else the one its name gives
    /// ([`crate::naming::workload_tag_for`]).
    pub fn workload_tag(&self) -> String {
        self.workload_tag
            .clone()
            .unwrap_or_else(|| crate::naming::workload_tag_for(&self.name))
    }

    /// Its priority: the recorded one, else the default of its kind (ingest or by hand).
    pub fn priority(&self) -> u32 {
        self.priority.unwrap_or(if self.ingest.is_some() {
            crate::order::INGEST_PRIORITY
        } else {
            crate::order::DEFAULT_PRIORITY
        })
    }

    /// Where its export jobs go in the admission backlog.
    pub fn backlog_place(&self) -> crate::queue::BacklogPlace<'_> {
        crate::queue::BacklogPlace {
            priority: self.priority(),
            tracking: &self.name,
        }
    }

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

    /// The order at `index` of [`Submission::orders`], computed (the index must be below
    /// [`Submission::order_count`]).
    pub fn order_at(&self, index: usize) -> Order {
        let (nt, np) = (self.tiles.len(), self.periods.len());
        let (c, rest) = (index / (nt * np), index % (nt * np));
        let (row, col) = self.tiles[rest / np];
        Order {
            collection: self.collections[c].clone(),
            row,
            col,
            period: self.periods[rest % np],
        }
    }

    /// Its export jobs as one backlog run ([`crate::queue::run`]), in [`Submission::orders`]'
    /// order.
    pub fn export_run(&self) -> crate::queue::ExportRun {
        crate::queue::ExportRun {
            tracking: self.name.clone(),
            collections: self.collections.clone(),
            tiles: self.tiles.clone(),
            periods: self.periods.iter().map(|p| (p.start, p.end)).collect(),
        }
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

/// Orders per round trip of [`Tracker::walk`].
pub const WALK_CHUNK: usize = 1_000;

/// A pass over orders and their statuses in chunks ([`Tracker::walk`]).
pub struct Walk<'a, I> {
    tracker: &'a Tracker,
    name: String,
    orders: I,
}

impl<I: Iterator<Item = Order>> Walk<'_, I> {
    /// The next chunk: each order with its status (`None`: no record yet, i.e. QUEUED); `None`
    /// once every order was handed out.
    pub async fn next(
        &mut self,
    ) -> Result<Option<Vec<(Order, Option<OrderStatus>)>>, TrackingError> {
        let chunk: Vec<Order> = self.orders.by_ref().take(WALK_CHUNK).collect();
        if chunk.is_empty() {
            return Ok(None);
        }
        let statuses = self.tracker.statuses(&self.name, &chunk).await?;
        Ok(Some(chunk.into_iter().zip(statuses).collect()))
    }
}

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
            Connection::Sqlite(db) => {
                TrackerInner::Sqlite(SqliteTracker::new(db.clone(), namespace))
            }
        };
        Tracker { inner }
    }

    /// Opens the queue URL `url` (see [`crate::queue::QueueUrl`]) and returns the tracking state
    /// of `namespace` there.
    pub async fn open(url: &str, namespace: &str) -> Result<Self, TrackingError> {
        Ok(Tracker::new(&Connection::open(url).await?, namespace))
    }

    /// Records a new submission with every order QUEUED (no record per order: a missing record
    /// means QUEUED, so a 100,000-order submission costs a few writes), lists it and marks its
    /// document dirty. [`TrackingError::Exists`] if the name is taken.
    pub async fn create(&self, sub: &Submission) -> Result<(), TrackingError> {
        dispatch!(self, t => t.create(sub).await)
    }

    /// The submission recorded as `name`; [`TrackingError::Unknown`] if there is none.
    pub async fn submission(&self, name: &str) -> Result<Submission, TrackingError> {
        dispatch!(self, t => t.submission(name).await)
    }

    /// When the submission named `name` was made, in ms since the epoch (one cheap lookup);
    /// `None` if there is none.
    pub async fn submitted_ms(&self, name: &str) -> Result<Option<i64>, TrackingError> {
        dispatch!(self, t => t.submitted_ms(name).await)
    }

    /// Every submission name, oldest (by submission time) first.
    pub async fn list(&self) -> Result<Vec<String>, TrackingError> {
        dispatch!(self, t => t.list().await)
    }

    /// The status of `order` in `name`; `None` while it has no record (QUEUED).
    pub async fn status(
        &self,
        name: &str,
        order: &Order,
    ) -> Result<Option<OrderStatus>, TrackingError> {
        let mut one = self.statuses(name, std::slice::from_ref(order)).await?;
        Ok(one.pop().flatten())
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
                r.map(|r| stored::decode(&r).map_err(|e| TrackingError::corrupt(name, e)))
                    .transpose()
            })
            .collect()
    }

    /// Walks `orders` of `name` with their statuses, [`WALK_CHUNK`] at a time (one round trip
    /// each), so that a pass over an archive-size submission holds one chunk in memory.
    pub fn walk<I: Iterator<Item = Order>>(&self, name: &str, orders: I) -> Walk<'_, I> {
        Walk {
            tracker: self,
            name: name.to_owned(),
            orders,
        }
    }

    /// Writes `status` unless it would move the order backwards ([`OrderState::rank`]; then
    /// returns false); `force` allows going back (retry). In the same atomic step the per-state
    /// tally moves from the old state (QUEUED without a record) to the new one, and the
    /// submission's document is marked dirty, so concurrent workers never lose each other's
    /// updates.
    pub async fn set(
        &self,
        name: &str,
        order: &Order,
        status: &OrderStatus,
        force: bool,
    ) -> Result<bool, TrackingError> {
        dispatch!(self, t => t.set(name, order, status, force).await)
    }

    /// [`Tracker::set`] for many orders of `name` in one round trip (one transaction); which
    /// were written, in order.
    pub async fn set_many(
        &self,
        name: &str,
        items: &[(Order, OrderStatus)],
        force: bool,
    ) -> Result<Vec<bool>, TrackingError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        dispatch!(self, t => t.set_many(name, items, force).await)
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
        s.updated = stamp();
        self.set(name, order, &s, force).await?;
        Ok(s)
    }

    /// Orders per state, from the tally kept by [`Tracker::set`]; states with none are left out.
    pub async fn counts(&self, name: &str) -> Result<BTreeMap<OrderState, u64>, TrackingError> {
        dispatch!(self, t => t.counts(name).await)
    }

    /// EECU-seconds the ended EE tasks of `name` used: the running sum [`Tracker::set`] keeps
    /// (one read), or for a submission recorded before it was kept the sum over its orders
    /// (which reads every order, as [`Tracker::all`]).
    pub async fn eecu_seconds(&self, name: &str) -> Result<f64, TrackingError> {
        if let Some(ms) = dispatch!(self, t => t.eecu_ms(name).await)? {
            return Ok(ms as f64 / 1000.0);
        }
        Ok(self
            .all(name)
            .await?
            .values()
            .filter_map(|s| s.eecu_seconds)
            .sum())
    }

    /// Every submission's orders per state ([`Tracker::counts`]), by name: one tally read per
    /// submission.
    pub async fn tallies(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<OrderState, u64>>, TrackingError> {
        let mut out = BTreeMap::new();
        for name in self.list().await? {
            let counts = self.counts(&name).await?;
            out.insert(name, counts);
        }
        Ok(out)
    }

    /// Every order's status, by order key.
    pub async fn all(&self, name: &str) -> Result<BTreeMap<String, OrderStatus>, TrackingError> {
        dispatch!(self, t => t.all(name).await)
    }

    /// Takes up to `n` names whose document needs re-publishing: each is handed out once until
    /// it is marked dirty again.
    pub async fn take_dirty(&self, n: usize) -> Result<Vec<String>, TrackingError> {
        dispatch!(self, t => t.take_dirty(n).await)
    }

    /// Marks the document of `name` for re-publishing.
    pub async fn mark_dirty(&self, name: &str) -> Result<(), TrackingError> {
        dispatch!(self, t => t.mark_dirty(name).await)
    }

    /// Forgets a submission: its record, orders and tally, and its place in [`Tracker::list`]
    /// (its document in the store stays).
    pub async fn forget(&self, name: &str) -> Result<(), TrackingError> {
        dispatch!(self, t => t.forget(name).await)
    }
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
    fn a_record_without_an_ingest_entry_reads_as_made_by_hand() {
        let day = |m| NaiveDate::from_ymd_opt(2024, m, 1).unwrap();
        let mut sub = Submission {
            name: "TRACKING_x".into(),
            submitted: Utc::now(),
            collections: vec!["C".into()],
            tiles: vec![(1, 2)],
            period_start: day(1),
            period_end: day(2),
            period_freq: None,
            periods: vec![Period {
                start: day(1),
                end: day(2),
            }],
            save_empty_metadata: true,
            error_if_empty: false,
            recipe: None,
            workload_tag: None,
            ingest: None,
            priority: None,
        };
        // Older versions wrote no `ingest` key; a manual submission still writes none.
        let json = serde_json::to_value(&sub).unwrap();
        assert!(json.get("ingest").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<Submission>(json).unwrap(), sub);
        sub.ingest = Some("daily".into());
        let json = serde_json::to_string(&sub).unwrap();
        assert!(json.contains(r#""ingest":"daily""#), "{json}");
        assert_eq!(serde_json::from_str::<Submission>(&json).unwrap(), sub);
    }
}
