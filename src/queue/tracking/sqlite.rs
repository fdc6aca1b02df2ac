//! Tracking state in the queue's SQLite file: tables `submissions`, `orders` (a row per order
//! that has a status), `order_counts` (the per-state tally) and `dirty` (see
//! [`SCHEMA`](crate::queue::sqlite::SCHEMA)), every write one `BEGIN IMMEDIATE` transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::types::FromSql;
use rusqlite::{OptionalExtension, params};
use serde::Deserialize;

use super::{EECU_FIELD, OrderState, OrderStatus, Submission, TrackingError, order_key, stored};
use crate::order::Order;
use crate::queue::sqlite::Db;

/// Tracking state in the queue's SQLite file, under a namespace.
#[derive(Clone)]
pub(super) struct SqliteTracker {
    db: Arc<Db>,
    pub(super) ns: Arc<str>,
}

/// Marks submission `?2` of namespace `?1` for the document publisher.
const MARK_DIRTY: &str = "INSERT OR IGNORE INTO dirty (ns, tracking) VALUES (?1, ?2)";

/// Reads only the state and EECU of a stored status (short or long form), as the Redis script
/// does with `cjson`.
#[derive(Deserialize)]
struct StateOnly {
    #[serde(alias = "s")]
    state: String,
    #[serde(default, alias = "eecu")]
    eecu_seconds: Option<f64>,
}

impl SqliteTracker {
    pub(super) fn new(db: Arc<Db>, namespace: &str) -> Self {
        SqliteTracker {
            db,
            ns: Arc::from(namespace),
        }
    }

    pub(super) async fn create(&self, sub: &Submission) -> Result<(), TrackingError> {
        let json = serde_json::to_string(sub).expect("submission serializes");
        // The tally starts with every order QUEUED; no row is written per order.
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
                    "INSERT INTO order_counts (ns, tracking, state, n) VALUES (?1, ?2, ?3, 0)
                     ON CONFLICT (ns, tracking, state) DO UPDATE SET n = 0",
                    params![&*ns, name, EECU_FIELD],
                )?;
                tx.execute(MARK_DIRTY, params![&*ns, name])?;
                Ok(())
            })
            .await
    }

    pub(super) async fn submission(&self, name: &str) -> Result<Submission, TrackingError> {
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
        serde_json::from_str(&raw).map_err(|e| TrackingError::corrupt(name, e))
    }

    pub(super) async fn submitted_ms(&self, name: &str) -> Result<Option<i64>, TrackingError> {
        let (ns, key) = (self.ns.clone(), name.to_owned());
        Ok(self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT submitted_ms FROM submissions WHERE ns = ?1 AND name = ?2",
                    params![&*ns, key],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?)
    }

    pub(super) async fn list(&self) -> Result<Vec<String>, TrackingError> {
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

    pub(super) async fn raw_statuses(
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

    /// The Redis `SET_STATUS` script as one transaction.
    pub(super) async fn set(
        &self,
        name: &str,
        order: &Order,
        status: &OrderStatus,
        force: bool,
    ) -> Result<bool, TrackingError> {
        let written = self
            .set_many(name, &[(order.clone(), status.clone())], force)
            .await?;
        Ok(written.first().copied().unwrap_or(false))
    }

    /// [`Self::set`] for many orders in one transaction.
    pub(super) async fn set_many(
        &self,
        name: &str,
        items: &[(Order, OrderStatus)],
        force: bool,
    ) -> Result<Vec<bool>, TrackingError> {
        let rows: Vec<(String, String, OrderState, i64)> = items
            .iter()
            .map(|(order, status)| {
                (
                    order_key(order),
                    stored::encode(status),
                    status.state,
                    stored::eecu_ms(status),
                )
            })
            .collect();
        let (ns, tracking) = (self.ns.clone(), name.to_owned());
        self.db
            .write(move |tx| -> Result<Vec<bool>, TrackingError> {
                let written = rows
                    .iter()
                    .map(|(key, json, state, eecu)| {
                        set_in(tx, &ns, &tracking, key, json, *state, *eecu, force)
                    })
                    .collect::<Result<Vec<bool>, TrackingError>>()?;
                if written.iter().any(|w| *w) {
                    tx.execute(MARK_DIRTY, params![&*ns, tracking])?;
                }
                Ok(written)
            })
            .await
    }

    pub(super) async fn counts(
        &self,
        name: &str,
    ) -> Result<BTreeMap<OrderState, u64>, TrackingError> {
        let raw: Vec<(String, i64)> = self
            .rows_of(
                name,
                "SELECT state, n FROM order_counts WHERE ns = ?1 AND tracking = ?2 AND n > 0",
            )
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| Some((OrderState::parse(&k)?, v as u64)))
            .collect())
    }

    /// The EECU-seconds sum `set` keeps, in ms; `None` for a submission recorded before it was
    /// kept.
    pub(super) async fn eecu_ms(&self, name: &str) -> Result<Option<i64>, TrackingError> {
        let (ns, tracking) = (self.ns.clone(), name.to_owned());
        Ok(self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT n FROM order_counts WHERE ns = ?1 AND tracking = ?2 AND state = ?3",
                    params![&*ns, tracking, EECU_FIELD],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?)
    }

    pub(super) async fn all(
        &self,
        name: &str,
    ) -> Result<BTreeMap<String, OrderStatus>, TrackingError> {
        let rows: Vec<(String, String)> = self
            .rows_of(
                name,
                "SELECT key, status FROM orders WHERE ns = ?1 AND tracking = ?2",
            )
            .await?;
        rows.into_iter()
            .map(|(k, v)| {
                Ok((
                    k,
                    stored::decode(&v).map_err(|e| TrackingError::corrupt(name, e))?,
                ))
            })
            .collect()
    }

    pub(super) async fn take_dirty(&self, n: usize) -> Result<Vec<String>, TrackingError> {
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

    pub(super) async fn mark_dirty(&self, name: &str) -> Result<(), TrackingError> {
        self.execute_for(name, &[MARK_DIRTY]).await
    }

    pub(super) async fn forget(&self, name: &str) -> Result<(), TrackingError> {
        self.execute_for(
            name,
            &[
                "DELETE FROM orders WHERE ns = ?1 AND tracking = ?2",
                "DELETE FROM order_counts WHERE ns = ?1 AND tracking = ?2",
                "DELETE FROM submissions WHERE ns = ?1 AND name = ?2",
            ],
        )
        .await
    }

    /// The two-column rows of `sql` for submission `name` (`?1` = the namespace, `?2` = `name`).
    async fn rows_of<V>(
        &self,
        name: &str,
        sql: &'static str,
    ) -> Result<Vec<(String, V)>, TrackingError>
    where
        V: FromSql + Send + 'static,
    {
        let (ns, tracking) = (self.ns.clone(), name.to_owned());
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(sql)?
                    .query_map(params![&*ns, tracking], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .await?)
    }

    /// Runs `statements` in one write transaction, each with `?1` = the namespace and `?2` =
    /// the tracking name `name`.
    async fn execute_for(
        &self,
        name: &str,
        statements: &'static [&'static str],
    ) -> Result<(), TrackingError> {
        let (ns, name) = (self.ns.clone(), name.to_owned());
        self.db
            .write(move |tx| -> Result<(), TrackingError> {
                for sql in statements {
                    tx.execute(sql, params![&*ns, name])?;
                }
                Ok(())
            })
            .await
    }
}

/// One status write of [`SqliteTracker::set_many`], inside its transaction: refused (false) when
/// it would move the order backwards unless `force`; the tally and the EECU sum follow.
#[allow(clippy::too_many_arguments)]
fn set_in(
    tx: &rusqlite::Transaction,
    ns: &str,
    tracking: &str,
    key: &str,
    json: &str,
    state: OrderState,
    new_eecu: i64,
    force: bool,
) -> Result<bool, TrackingError> {
    let old: Option<String> = tx
        .query_row(
            "SELECT status FROM orders WHERE ns = ?1 AND tracking = ?2 AND key = ?3",
            params![ns, tracking, key],
            |r| r.get(0),
        )
        .optional()?;
    let mut old_eecu = 0;
    // No row yet: the order was QUEUED.
    let mut old_state = OrderState::Queued.as_str().to_owned();
    if let Some(old) = old {
        let old = serde_json::from_str::<StateOnly>(&old)
            .map_err(|e| TrackingError::corrupt(tracking, e))?;
        old_eecu = old.eecu_seconds.map_or(0, |s| (s * 1000.0).round() as i64);
        let old_rank = OrderState::parse(&old.state).map_or(0, OrderState::rank);
        if !force && state.rank() < old_rank {
            return Ok(false);
        }
        old_state = old.state;
    }
    tx.execute(
        "UPDATE order_counts SET n = n - 1 WHERE ns = ?1 AND tracking = ?2 AND state = ?3",
        params![ns, tracking, old_state],
    )?;
    tx.execute(
        "INSERT INTO orders (ns, tracking, key, status) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (ns, tracking, key) DO UPDATE SET status = ?4",
        params![ns, tracking, key, json],
    )?;
    tx.execute(
        "INSERT INTO order_counts (ns, tracking, state, n) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (ns, tracking, state) DO UPDATE SET n = n + 1",
        params![ns, tracking, state.as_str()],
    )?;
    if new_eecu != old_eecu {
        tx.execute(
            "UPDATE order_counts SET n = n + ?4 WHERE ns = ?1 AND tracking = ?2 AND state = ?3",
            params![ns, tracking, EECU_FIELD, new_eecu - old_eecu],
        )?;
    }
    Ok(true)
}
