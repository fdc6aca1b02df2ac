//! Tracking: the record of one submission and the state of each of its orders.
//!
//! The source of truth lives in Redis — one hash per submission, one field per order, and a
//! per-state tally kept in step by a Lua script — so any number of workers can update different
//! orders at once without losing each other's changes. The tracking **document** in the store
//! (`{tracking.prefix}/{name}.json`, with the original CEDAR's top-level keys `program`,
//! `submission`, `tracking`, `orders`, `metadata`) is a projection re-rendered from Redis, so
//! whoever writes it last writes everything.
//!
//! States move forward only (QUEUED → PENDING → RUNNING → SUCCEEDED → DOWNLOADED → CLEANED, or to
//! EMPTY/FAILED/CANCELLED/LOST); a late or repeated job cannot move an order back. Only
//! `cedar retry` resets a failed order to QUEUED.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::order::{Order, OrderNames};
use crate::period::Period;

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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<VerifiedObject>,
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
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('SADD', KEYS[3], ARGV[6])
return 1
"#;

/// Tracking state in Redis, under a namespace.
#[derive(Clone)]
pub struct Tracker {
    conn: ConnectionManager,
    ns: String,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker").field("ns", &self.ns).finish()
    }
}

impl Tracker {
    pub fn new(conn: ConnectionManager, namespace: &str) -> Self {
        Tracker {
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
        let status = serde_json::to_string(&OrderStatus::new(OrderState::Queued))
            .expect("status serializes");
        let key = self.orders_key(&sub.name);
        let orders: Vec<Order> = sub.orders().collect();
        for chunk in orders.chunks(5000) {
            let mut p = redis::pipe();
            for o in chunk {
                p.hset_nx(&key, order_key(o), &status).ignore();
            }
            let _: () = p.query_async(&mut c).await?;
        }
        let _: () = redis::pipe()
            .hset(self.counts_key(&sub.name), "QUEUED", orders.len())
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

/// [`SET_STATUS`] with the rank table filled in from [`OrderState::rank`].
fn set_status_script() -> String {
    let ranks: Vec<String> = OrderState::ALL
        .iter()
        .map(|s| format!("{}={}", s.as_str(), s.rank()))
        .collect();
    SET_STATUS.replace("__RANKS__", &ranks.join(","))
}

/// The tracking document: the original CEDAR's keys, rendered from Redis.
pub fn document(
    settings: &Settings,
    sub: &Submission,
    statuses: &BTreeMap<String, OrderStatus>,
) -> serde_json::Value {
    use serde_json::json;
    let grid = &settings.grid;
    let mut orders = Vec::new();
    let mut metadata = Vec::new();
    let mut tiles = Vec::new();
    for (row, col) in &sub.tiles {
        if let Ok(t) = grid.tile(*row, *col) {
            tiles.push(tile_json(&t, grid.res, grid.size));
        }
    }
    for order in sub.orders() {
        let key = order_key(&order);
        let status = statuses
            .get(&key)
            .cloned()
            .unwrap_or_else(|| OrderStatus::new(OrderState::Queued));
        if status.state == OrderState::Empty && !sub.save_empty_metadata {
            continue;
        }
        let names = order
            .names(settings, sub.submitted)
            .unwrap_or_else(|_| OrderNames {
                name: key.clone(),
                prefix: String::new(),
            });
        metadata.push(json!(names.metadata_object()));
        orders.push(json!({
            "name": names.name,
            "prefix": names.prefix,
            "status": status,
        }));
    }
    json!({
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
        "orders": orders,
        "metadata": metadata,
    })
}

/// The object name of a tracking document.
pub fn document_object(settings: &Settings, name: &str) -> String {
    format!(
        "{}/{name}.json",
        settings.config.tracking.prefix.trim_end_matches('/')
    )
}

/// Re-renders a submission's tracking document from Redis and writes it to the store.
pub async fn publish(
    settings: &Settings,
    tracker: &Tracker,
    bucket: &dyn crate::store::ExportBucket,
    name: &str,
) -> Result<(), PublishError> {
    let sub = tracker.submission(name).await?;
    let statuses = tracker.all(name).await?;
    let doc = document(settings, &sub, &statuses);
    let body = serde_json::to_vec_pretty(&doc).expect("document serializes");
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
