//! The snapshot in the queue's SQLite file: tables `ops`, `ops_waiting` (with each operation's
//! job), `ops_looked_up` and `ops_sweep` (see [`SCHEMA`](crate::queue::sqlite::SCHEMA)), each write one transaction.

use std::collections::HashSet;
use std::sync::Arc;

use rusqlite::{OptionalExtension, params};

use crate::queue::QueueError;
use crate::queue::sqlite::{Db, now_ms};

/// The snapshot of one namespace in the SQLite file.
#[derive(Clone)]
pub(super) struct SqliteSnapshot {
    db: Arc<Db>,
    ns: Arc<str>,
}

impl std::fmt::Debug for SqliteSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot::Sqlite")
            .field("path", &self.db.path())
            .field("ns", &self.ns)
            .finish()
    }
}

impl SqliteSnapshot {
    pub(super) fn new(db: Arc<Db>, namespace: &str) -> Self {
        SqliteSnapshot {
            db,
            ns: Arc::from(namespace),
        }
    }

    /// Adds `name` to the name set `table` (`ops_looked_up`); true when it was
    /// new, as `SADD` answers 1.
    async fn add_name(&self, table: &'static str, name: &str) -> Result<bool, QueueError> {
        let (ns, name) = (self.ns.clone(), name.to_owned());
        self.db
            .write(move |tx| -> Result<bool, QueueError> {
                let sql = format!("INSERT OR IGNORE INTO {table} (ns, name) VALUES (?1, ?2)");
                Ok(tx.execute(&sql, params![&*ns, name])? == 1)
            })
            .await
    }

    /// Removes `name` from each name set of `tables`.
    async fn remove_name(
        &self,
        tables: &'static [&'static str],
        name: &str,
    ) -> Result<(), QueueError> {
        let (ns, name) = (self.ns.clone(), name.to_owned());
        self.db
            .write(move |tx| -> Result<(), QueueError> {
                for table in tables {
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE ns = ?1 AND name = ?2"),
                        params![&*ns, name],
                    )?;
                }
                Ok(())
            })
            .await
    }

    pub(super) async fn view(&self, operation: &str) -> Result<Option<String>, QueueError> {
        let (ns, op) = (self.ns.clone(), operation.to_owned());
        Ok(self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT view FROM ops WHERE ns = ?1 AND name = ?2",
                    params![&*ns, op],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?)
    }

    /// Every value the one-column query `sql` (`?1` is the namespace) returns.
    async fn column<C>(&self, sql: &'static str) -> Result<C, QueueError>
    where
        C: FromIterator<String> + Send + 'static,
    {
        let ns = self.ns.clone();
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(sql)?
                    .query_map(params![&*ns], |r| r.get(0))?
                    .collect()
            })
            .await?)
    }

    pub(super) async fn views(&self) -> Result<Vec<String>, QueueError> {
        self.column("SELECT view FROM ops WHERE ns = ?1").await
    }

    pub(super) async fn swept_ms(&self) -> Result<Option<i64>, QueueError> {
        let ns = self.ns.clone();
        Ok(self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT swept_ms FROM ops_sweep WHERE ns = ?1",
                    params![&*ns],
                    |r| r.get(0),
                )
                .optional()
                .map(Option::flatten)
            })
            .await?)
    }

    pub(super) async fn wait_for(&self, operation: &str, job: &str) -> Result<(), QueueError> {
        let (ns, name, job) = (self.ns.clone(), operation.to_owned(), job.to_owned());
        self.db
            .write(move |tx| -> Result<(), QueueError> {
                tx.execute(
                    "INSERT INTO ops_waiting (ns, name, job) VALUES (?1, ?2, ?3)
                     ON CONFLICT (ns, name) DO UPDATE SET job = ?3",
                    params![&*ns, name, job],
                )?;
                Ok(())
            })
            .await
    }

    pub(super) async fn waiting(&self) -> Result<HashSet<String>, QueueError> {
        self.column("SELECT name FROM ops_waiting WHERE ns = ?1")
            .await
    }

    pub(super) async fn waiters(&self, operations: &[String]) -> Result<Vec<String>, QueueError> {
        let mut jobs = Vec::new();
        for chunk in operations.chunks(super::WAITERS_CHUNK) {
            let (ns, chunk) = (self.ns.clone(), chunk.to_vec());
            let found: Vec<String> = self
                .db
                .read(move |c| {
                    let mut q = c.prepare_cached(
                        "SELECT job FROM ops_waiting
                         WHERE ns = ?1 AND name = ?2 AND job IS NOT NULL",
                    )?;
                    let mut found = Vec::new();
                    for name in &chunk {
                        if let Some(job) =
                            q.query_row(params![&*ns, name], |r| r.get(0)).optional()?
                        {
                            found.push(job);
                        }
                    }
                    Ok(found)
                })
                .await?;
            jobs.extend(found);
        }
        Ok(jobs)
    }

    pub(super) async fn stop_waiting(&self, operation: &str) -> Result<(), QueueError> {
        self.remove_name(&["ops_waiting", "ops_looked_up"], operation)
            .await
    }

    pub(super) async fn first_lookup(&self, operation: &str) -> Result<bool, QueueError> {
        self.add_name("ops_looked_up", operation).await
    }

    pub(super) async fn forget_lookup(&self, operation: &str) -> Result<(), QueueError> {
        self.remove_name(&["ops_looked_up"], operation).await
    }

    /// The lock is the `leader` row with its expiry, checked and written in one transaction on
    /// the local clock.
    pub(super) async fn lead(&self, worker: &str, lease_ms: u64) -> Result<bool, QueueError> {
        let (ns, worker) = (self.ns.clone(), worker.to_owned());
        self.db
            .write(move |tx| -> Result<bool, QueueError> {
                let now = now_ms();
                let holder: Option<(Option<String>, Option<i64>)> = tx
                    .query_row(
                        "SELECT leader, leader_until_ms FROM ops_sweep WHERE ns = ?1",
                        params![&*ns],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let free = match &holder {
                    Some((Some(leader), Some(until))) => *until <= now || *leader == worker,
                    _ => true,
                };
                if free {
                    tx.execute(
                        "INSERT INTO ops_sweep (ns, leader, leader_until_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT (ns) DO UPDATE SET leader = ?2, leader_until_ms = ?3",
                        params![&*ns, worker, now + lease_ms as i64],
                    )?;
                }
                Ok(free)
            })
            .await
    }

    pub(super) async fn record_sweep(
        &self,
        views: &[(String, String)],
        waiting: &HashSet<String>,
        unlisted: &[String],
        started_ms: i64,
    ) -> Result<Vec<String>, QueueError> {
        let (ns, views, waiting) = (self.ns.clone(), views.to_vec(), waiting.clone());
        let unlisted = unlisted.to_vec();
        self.db
            .write(move |tx| -> Result<Vec<String>, QueueError> {
                for (name, view) in &views {
                    tx.execute(
                        "INSERT INTO ops (ns, name, view) VALUES (?1, ?2, ?3)
                         ON CONFLICT (ns, name) DO UPDATE SET view = ?3",
                        params![&*ns, name, view],
                    )?;
                }
                let names: Vec<String> = tx
                    .prepare_cached("SELECT name FROM ops WHERE ns = ?1 ORDER BY name")?
                    .query_map(params![&*ns], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let stale: Vec<String> =
                    names.into_iter().filter(|n| !waiting.contains(n)).collect();
                for name in stale.iter().chain(&unlisted) {
                    tx.execute(
                        "DELETE FROM ops WHERE ns = ?1 AND name = ?2",
                        params![&*ns, name],
                    )?;
                }
                tx.execute(
                    "INSERT INTO ops_sweep (ns, swept_ms) VALUES (?1, ?2)
                     ON CONFLICT (ns) DO UPDATE SET swept_ms = ?2",
                    params![&*ns, started_ms],
                )?;
                Ok(stale)
            })
            .await
    }
}
