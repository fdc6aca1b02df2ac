//! The operations snapshot: what the sweeper last saw of every EE operation cedar waits for.
//!
//! Poll jobs never ask EE about their own task (see [`crate::jobs::poll`]): one sweeper, the
//! leader among all workers, pages `operations.list` and records each awaited operation's view
//! here; poll jobs read it. The snapshot lives beside the queue, in Redis or in the SQLite file:
//!
//! | Redis key | SQLite table | content |
//! |---|---|---|
//! | `{ns}:ops` (hash) | `ops` | operation name → view JSON |
//! | `{ns}:ops:waiting` (set) | `ops_waiting` | operations some poll job waits for |
//! | `{ns}:ops:looked-up` (set) | `ops_looked_up` | operations already looked up once by name |
//! | `{ns}:ops:swept` (string) | `ops_sweep.swept_ms` | start of the last finished sweep (ms) |
//! | `{ns}:ops:sweeper` (string, PX) | `ops_sweep.leader`, `leader_until_ms` | the sweeper's leader lock |
//!
//! Views are opaque JSON strings here; [`crate::earthengine::types::OpView`] is their shape.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use rusqlite::{OptionalExtension, params};

use super::sqlite::{Db, now_ms};
use super::{Connection, QueueError};

/// The operations snapshot of one namespace.
#[derive(Clone)]
pub struct Snapshot {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Redis { conn: ConnectionManager, ns: String },
    Sqlite { db: Arc<Db>, ns: Arc<str> },
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Redis { ns, .. } => f.debug_struct("Snapshot::Redis").field("ns", ns).finish(),
            Inner::Sqlite { db, ns } => f
                .debug_struct("Snapshot::Sqlite")
                .field("path", &db.path())
                .field("ns", ns)
                .finish(),
        }
    }
}

fn ops_key(ns: &str) -> String {
    format!("{ns}:ops")
}
fn swept_key(ns: &str) -> String {
    format!("{ns}:ops:swept")
}
fn waiting_key(ns: &str) -> String {
    format!("{ns}:ops:waiting")
}
fn looked_up_key(ns: &str) -> String {
    format!("{ns}:ops:looked-up")
}
fn leader_key(ns: &str) -> String {
    format!("{ns}:ops:sweeper")
}

/// Adds `name` to the name set `table` (`ops_waiting` or `ops_looked_up`); true when it was
/// new, as `SADD` answers 1.
async fn add_name(
    db: &Arc<Db>,
    ns: &Arc<str>,
    table: &'static str,
    name: &str,
) -> Result<bool, QueueError> {
    let (ns, name) = (ns.clone(), name.to_owned());
    db.write(move |tx| -> Result<bool, QueueError> {
        let sql = format!("INSERT OR IGNORE INTO {table} (ns, name) VALUES (?1, ?2)");
        Ok(tx.execute(&sql, params![&*ns, name])? == 1)
    })
    .await
}

impl Snapshot {
    /// The snapshot of `namespace` on `conn`.
    pub fn new(conn: &Connection, namespace: &str) -> Snapshot {
        let inner = match conn {
            Connection::Redis(c) => Inner::Redis {
                conn: c.clone(),
                ns: namespace.to_owned(),
            },
            Connection::Sqlite(db) => Inner::Sqlite {
                db: db.clone(),
                ns: Arc::from(namespace),
            },
        };
        Snapshot { inner }
    }

    /// The view JSON of `operation`, if the sweeper recorded one.
    pub async fn view(&self, operation: &str) -> Result<Option<String>, QueueError> {
        match &self.inner {
            Inner::Redis { conn, ns } => Ok(conn.clone().hget(ops_key(ns), operation).await?),
            Inner::Sqlite { db, ns } => {
                let (ns, op) = (ns.clone(), operation.to_owned());
                Ok(db
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
        }
    }

    /// Every recorded view JSON (one per awaited operation), for the metrics.
    pub async fn views(&self) -> Result<Vec<String>, QueueError> {
        match &self.inner {
            Inner::Redis { conn, ns } => Ok(redis::cmd("HVALS")
                .arg(ops_key(ns))
                .query_async(&mut conn.clone())
                .await?),
            Inner::Sqlite { db, ns } => {
                let ns = ns.clone();
                Ok(db
                    .read(move |c| {
                        c.prepare_cached("SELECT view FROM ops WHERE ns = ?1")?
                            .query_map(params![&*ns], |r| r.get(0))?
                            .collect()
                    })
                    .await?)
            }
        }
    }

    /// When the last finished sweep started (ms since the epoch), if any finished.
    pub async fn swept_ms(&self) -> Result<Option<i64>, QueueError> {
        match &self.inner {
            Inner::Redis { conn, ns } => Ok(conn.clone().get(swept_key(ns)).await?),
            Inner::Sqlite { db, ns } => {
                let ns = ns.clone();
                Ok(db
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
        }
    }

    /// Tells the sweeper to look for `operation`.
    pub async fn wait_for(&self, operation: &str) -> Result<(), QueueError> {
        match &self.inner {
            Inner::Redis { conn, ns } => {
                let _: () = conn.clone().sadd(waiting_key(ns), operation).await?;
                Ok(())
            }
            Inner::Sqlite { db, ns } => {
                add_name(db, ns, "ops_waiting", operation).await.map(|_| ())
            }
        }
    }

    /// The operations poll jobs wait for.
    pub async fn waiting(&self) -> Result<HashSet<String>, QueueError> {
        match &self.inner {
            Inner::Redis { conn, ns } => Ok(conn.clone().smembers(waiting_key(ns)).await?),
            Inner::Sqlite { db, ns } => {
                let ns = ns.clone();
                Ok(db
                    .read(move |c| {
                        c.prepare_cached("SELECT name FROM ops_waiting WHERE ns = ?1")?
                            .query_map(params![&*ns], |r| r.get(0))?
                            .collect()
                    })
                    .await?)
            }
        }
    }

    /// Nobody waits for `operation` any more (it ended, or was lost).
    pub async fn stop_waiting(&self, operation: &str) -> Result<(), QueueError> {
        match &self.inner {
            Inner::Redis { conn, ns } => {
                let _: () = redis::pipe()
                    .srem(waiting_key(ns), operation)
                    .ignore()
                    .srem(looked_up_key(ns), operation)
                    .ignore()
                    .query_async(&mut conn.clone())
                    .await?;
                Ok(())
            }
            Inner::Sqlite { db, ns } => {
                let (ns, op) = (ns.clone(), operation.to_owned());
                db.write(move |tx| -> Result<(), QueueError> {
                    for table in ["ops_waiting", "ops_looked_up"] {
                        tx.execute(
                            &format!("DELETE FROM {table} WHERE ns = ?1 AND name = ?2"),
                            params![&*ns, op],
                        )?;
                    }
                    Ok(())
                })
                .await
            }
        }
    }

    /// Records that `operation` is being looked up by name; true the first time only.
    pub async fn first_lookup(&self, operation: &str) -> Result<bool, QueueError> {
        match &self.inner {
            Inner::Redis { conn, ns } => {
                Ok(conn.clone().sadd(looked_up_key(ns), operation).await?)
            }
            Inner::Sqlite { db, ns } => add_name(db, ns, "ops_looked_up", operation).await,
        }
    }

    /// Forgets a lookup that failed, so that a later run tries again.
    pub async fn forget_lookup(&self, operation: &str) -> Result<(), QueueError> {
        match &self.inner {
            Inner::Redis { conn, ns } => {
                let _: () = conn.clone().srem(looked_up_key(ns), operation).await?;
                Ok(())
            }
            Inner::Sqlite { db, ns } => {
                let (ns, op) = (ns.clone(), operation.to_owned());
                db.write(move |tx| -> Result<(), QueueError> {
                    tx.execute(
                        "DELETE FROM ops_looked_up WHERE ns = ?1 AND name = ?2",
                        params![&*ns, op],
                    )?;
                    Ok(())
                })
                .await
            }
        }
    }

    /// Takes or keeps the sweeper's leader lock for `lease` (at least 1 s); true when `worker`
    /// holds it. A leader that dies loses the lock when the lease runs out.
    pub async fn lead(&self, worker: &str, lease: Duration) -> Result<bool, QueueError> {
        let lease_ms = lease.as_millis().max(1000) as u64;
        match &self.inner {
            Inner::Redis { conn, ns } => {
                let mut conn = conn.clone();
                let leader: Option<String> = redis::cmd("SET")
                    .arg(leader_key(ns))
                    .arg(worker)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease_ms)
                    .query_async(&mut conn)
                    .await?;
                if leader.is_some() {
                    return Ok(true);
                }
                let holder: Option<String> = conn.get(leader_key(ns)).await?;
                if holder.as_deref() != Some(worker) {
                    return Ok(false);
                }
                let _: () = conn.pexpire(leader_key(ns), lease_ms as i64).await?;
                Ok(true)
            }
            Inner::Sqlite { db, ns } => {
                let (ns, worker) = (ns.clone(), worker.to_owned());
                db.write(move |tx| -> Result<bool, QueueError> {
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
        }
    }

    /// Writes a finished sweep at once: the `views` (name, JSON) it found, the removal of every
    /// operation no longer in `waiting`, and `started_ms` as the last sweep's start. Returns the
    /// names removed.
    pub async fn record_sweep(
        &self,
        views: &[(String, String)],
        waiting: &HashSet<String>,
        started_ms: i64,
    ) -> Result<Vec<String>, QueueError> {
        match &self.inner {
            Inner::Redis { conn, ns } => {
                let mut conn = conn.clone();
                let mut p = redis::pipe();
                p.atomic();
                for (name, view) in views {
                    p.hset(ops_key(ns), name, view).ignore();
                }
                // Operations nobody waits for any more leave the snapshot.
                let stale: Vec<String> = conn.hkeys(ops_key(ns)).await?;
                let stale: Vec<String> =
                    stale.into_iter().filter(|n| !waiting.contains(n)).collect();
                for name in &stale {
                    p.hdel(ops_key(ns), name).ignore();
                }
                p.set(swept_key(ns), started_ms).ignore();
                let _: () = p.query_async(&mut conn).await?;
                Ok(stale)
            }
            Inner::Sqlite { db, ns } => {
                let (ns, views, waiting) = (ns.clone(), views.to_vec(), waiting.clone());
                db.write(move |tx| -> Result<Vec<String>, QueueError> {
                    for (name, view) in &views {
                        tx.execute(
                            "INSERT INTO ops (ns, name, view) VALUES (?1, ?2, ?3)
                             ON CONFLICT (ns, name) DO UPDATE SET view = ?3",
                            params![&*ns, name, view],
                        )?;
                    }
                    let names: Vec<String> = tx
                        .prepare_cached("SELECT name FROM ops WHERE ns = ?1")?
                        .query_map(params![&*ns], |r| r.get(0))?
                        .collect::<Result<_, _>>()?;
                    let stale: Vec<String> =
                        names.into_iter().filter(|n| !waiting.contains(n)).collect();
                    for name in &stale {
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
    }
}
