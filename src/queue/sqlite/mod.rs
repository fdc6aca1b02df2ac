//! The SQLite side of the queue: single-machine mode, one database file (`db.rs`) instead of a
//! Redis server.
//!
//! The file holds everything Redis holds otherwise — the jobs of every stage, the admission
//! slots, the EE rate window, the tracking state ([`crate::queue::tracking`]) and the operations
//! snapshot ([`super::snapshot`]) — in the tables of [`SCHEMA`], every row keyed by namespace so
//! that several deployments (or tests) can share one file. The queue operations below implement
//! exactly the semantics of the Lua scripts of [`super::redis`], each as one `BEGIN IMMEDIATE`
//! transaction; their comments say why.

mod db;
mod eecu;
mod runs;

use std::{sync::Arc, time::Duration};

use rusqlite::{OptionalExtension, Transaction, params};
use serde::Deserialize;

pub(in crate::queue) use self::db::now_ms;
pub use self::db::{BUSY_TIMEOUT, Db, SCHEMA, is_retryable, not_a_file, path_of};
use super::{
    ADMIT_LIMIT, BacklogPlace, DeadReason, Depth, ENQUEUE_CHUNK, FailResult, Figure, LEASE_EXPIRED,
    Leased, QueueError, REAP_LIMIT, RateDecision, RetryPolicy, Stage, WAKE_CHUNK,
};

/// The queue of every stage in one database file, under one namespace.
#[derive(Clone)]
pub struct SqliteQueue {
    db: Arc<Db>,
    ns: Arc<str>,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue")
            .field("path", &self.db.path())
            .field("namespace", &self.ns)
            .finish()
    }
}

/// Reads only the tracking name of a payload.
#[derive(Deserialize)]
struct TrackingOnly {
    tracking: String,
}

/// Takes the next value of a sequence (Redis `INCR`).
fn next_seq(tx: &Transaction, ns: &str, name: &str) -> rusqlite::Result<i64> {
    tx.query_row(
        "INSERT INTO counters (ns, name, value) VALUES (?1, ?2, 1)
         ON CONFLICT (ns, name) DO UPDATE SET value = value + 1 RETURNING value",
        params![ns, name],
        |r| r.get(0),
    )
}

/// One admission figure in `counters`; `None` when unset.
fn read_figure(tx: &Transaction, ns: &str, figure: Figure) -> rusqlite::Result<Option<i64>> {
    tx.query_row(
        "SELECT value FROM counters WHERE ns = ?1 AND name = ?2",
        params![ns, figure.key()],
        |r| r.get(0),
    )
    .optional()
}

/// Makes a job dead with its reason and frees its admission slot.
fn kill(
    tx: &Transaction,
    ns: &str,
    stage: &str,
    id: &str,
    why: &DeadReason,
) -> Result<(), QueueError> {
    let why = serde_json::to_string(why)?;
    tx.execute(
        "UPDATE jobs SET state = 'dead', run_at = NULL, owner = NULL, dead_reason = ?4
         WHERE ns = ?1 AND stage = ?2 AND id = ?3",
        params![ns, stage, id, why],
    )?;
    tx.execute(
        "DELETE FROM slots WHERE ns = ?1 AND id = ?2",
        params![ns, id],
    )?;
    Ok(())
}

/// A [`DeadReason`] as the Lua `dead_reason` helper writes it.
fn dead(reason: &str, attempts: u32, last_error: &str, now: i64) -> DeadReason {
    DeadReason {
        reason: reason.to_owned(),
        attempts,
        last_error: last_error.to_owned(),
        at_ms: now as u64,
    }
}

/// Records a failed run (attempts + 1, last error kept, lease dropped); returns the attempts.
fn spend_attempt(
    tx: &Transaction,
    ns: &str,
    stage: &str,
    id: &str,
    error: &str,
) -> rusqlite::Result<u32> {
    tx.query_row(
        "UPDATE jobs SET attempts = attempts + 1, last_error = ?4, owner = NULL
         WHERE ns = ?1 AND stage = ?2 AND id = ?3 RETURNING attempts",
        params![ns, stage, id, error],
        |r| r.get(0),
    )
}

/// Reaps at most `limit` expired leases: the lost run counts as a failed attempt (a job that
/// kills its worker every time must end up dead), then back to due or dead. As REAP_LUA.
fn reap_expired(
    tx: &Transaction,
    ns: &str,
    stage: &str,
    now: i64,
    limit: usize,
    max_attempts: u32,
) -> Result<u64, QueueError> {
    let expired: Vec<String> = tx
        .prepare_cached(
            "SELECT id FROM jobs WHERE ns = ?1 AND stage = ?2 AND state = 'leased' AND run_at <= ?3
             ORDER BY run_at, id LIMIT ?4",
        )?
        .query_map(params![ns, stage, now, limit as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &expired {
        let attempts = spend_attempt(tx, ns, stage, id, LEASE_EXPIRED)?;
        if attempts >= max_attempts {
            let why = dead(DeadReason::ATTEMPTS_EXHAUSTED, attempts, LEASE_EXPIRED, now);
            kill(tx, ns, stage, id, &why)?;
        } else {
            tx.execute(
                "UPDATE jobs SET state = 'due', run_at = ?4 WHERE ns = ?1 AND stage = ?2 AND id = ?3",
                params![ns, stage, id, now],
            )?;
        }
    }
    Ok(expired.len() as u64)
}

/// Deletes jobs from every state (complete, cancel); returns how many existed. As REMOVE_LUA.
fn remove(
    tx: &Transaction,
    ns: &str,
    stage: &str,
    ids: &[String],
    free_slot: bool,
) -> rusqlite::Result<u64> {
    let mut removed = 0;
    for id in ids {
        removed += tx.execute(
            "DELETE FROM jobs WHERE ns = ?1 AND stage = ?2 AND id = ?3",
            params![ns, stage, id],
        )? as u64;
        if free_slot {
            tx.execute(
                "DELETE FROM slots WHERE ns = ?1 AND id = ?2",
                params![ns, id],
            )?;
        }
    }
    Ok(removed)
}

impl SqliteQueue {
    pub fn new(db: Arc<Db>, namespace: &str) -> Self {
        SqliteQueue {
            db,
            ns: Arc::from(namespace),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The local clock in ms, the clock every `run_at` is measured on.
    pub async fn now_ms(&self) -> Result<u64, QueueError> {
        Ok(now_ms() as u64)
    }

    /// Answers when the database can be read.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.db
            .read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await
            .map_err(QueueError::from)
    }

    /// Adds the jobs that do not exist yet, whatever the state of those that do (as
    /// ENQUEUE_LUA); export jobs go to the backlog in enqueue order.
    pub(crate) async fn enqueue_encoded(
        &self,
        stage: Stage,
        jobs: &[(String, Vec<u8>)],
        delay: Duration,
        place: BacklogPlace<'_>,
    ) -> Result<u64, QueueError> {
        let mut added = 0;
        let (band, turns) = (place.band(), format!("export:turns:{}", place.tracking));
        // One transaction per chunk: other processes get the write lock between chunks.
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            let ns = self.ns.clone();
            let chunk = chunk.to_vec();
            let turns = turns.clone();
            added += self
                .db
                .write(move |tx| -> Result<u64, QueueError> {
                    let now = now_ms();
                    let backlog = stage == Stage::Export;
                    let mut added = 0;
                    // As ENQUEUE_LUA: the submission's turns start no earlier than its band's
                    // front, so that submissions of one priority take turns.
                    let mut turn: i64 = 0;
                    if backlog {
                        turn = runs::last_turn(tx, &ns, &turns, band)?;
                    }
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO jobs (ns, stage, id, payload, tracking, state, run_at, enqueued_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                    )?;
                    for (id, payload) in &chunk {
                        let exists: bool = tx.query_row(
                            "SELECT EXISTS (SELECT 1 FROM jobs WHERE ns = ?1 AND stage = ?2 AND id = ?3)",
                            params![&*ns, stage.name(), id],
                            |r| r.get(0),
                        )?;
                        if exists {
                            continue;
                        }
                        let tracking = serde_json::from_slice::<TrackingOnly>(payload)
                            .ok()
                            .map(|t| t.tracking);
                        let (state, run_at) = if backlog {
                            turn += 1;
                            ("backlog", band + turn)
                        } else {
                            ("due", now + delay.as_millis() as i64)
                        };
                        added += insert.execute(params![
                            &*ns,
                            stage.name(),
                            id,
                            payload,
                            tracking,
                            state,
                            run_at,
                            now
                        ])? as u64;
                    }
                    if backlog && added > 0 {
                        tx.execute(
                            "INSERT INTO counters (ns, name, value) VALUES (?1, ?2, ?3)
                             ON CONFLICT (ns, name) DO UPDATE SET value = ?3",
                            params![&*ns, turns, turn],
                        )?;
                    }
                    Ok(added)
                })
                .await?;
        }
        Ok(added)
    }

    /// Reaps a bounded number of expired leases (spending an attempt each), then leases up to `n`
    /// due jobs to `worker` for `lease`. As LEASE_LUA.
    pub async fn lease(
        &self,
        stage: Stage,
        worker: &str,
        n: usize,
        lease: Duration,
        policy: &RetryPolicy,
    ) -> Result<Vec<Leased>, QueueError> {
        let (ns, worker, max_attempts) = (self.ns.clone(), worker.to_owned(), policy.max_attempts);
        self.db
            .write(move |tx| -> Result<Vec<Leased>, QueueError> {
                let now = now_ms();
                reap_expired(tx, &ns, stage.name(), now, REAP_LIMIT, max_attempts)?;
                let due: Vec<Leased> = tx
                    .prepare_cached(
                        "SELECT id, payload, attempts FROM jobs
                         WHERE ns = ?1 AND stage = ?2 AND state = 'due' AND run_at <= ?3
                         ORDER BY run_at, id LIMIT ?4",
                    )?
                    .query_map(params![&*ns, stage.name(), now, n as i64], |r| {
                        Ok(Leased {
                            id: r.get(0)?,
                            payload: r.get(1)?,
                            attempts: r.get(2)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                let until = now + lease.as_millis() as i64;
                for job in &due {
                    tx.execute(
                        "UPDATE jobs SET state = 'leased', run_at = ?4, owner = ?5
                         WHERE ns = ?1 AND stage = ?2 AND id = ?3",
                        params![&*ns, stage.name(), job.id, until, worker],
                    )?;
                }
                Ok(due)
            })
            .await
    }

    /// Reaps up to a bounded number of expired leases; returns how many.
    pub async fn reap(&self, stage: Stage, policy: &RetryPolicy) -> Result<u64, QueueError> {
        let (ns, max_attempts) = (self.ns.clone(), policy.max_attempts);
        self.db
            .write(move |tx| {
                reap_expired(tx, &ns, stage.name(), now_ms(), REAP_LIMIT, max_attempts)
            })
            .await
    }

    /// Extends every lease `worker` still holds by `lease`; returns (renewed, lost). Nothing is
    /// ever lost here: every transition that takes a job from its owner clears `owner` in the
    /// same transaction, so the owner's leases are exactly the rows naming it (Redis keeps a
    /// separate per-worker set, which can go stale).
    pub async fn renew(
        &self,
        stage: Stage,
        worker: &str,
        lease: Duration,
    ) -> Result<(u64, u64), QueueError> {
        let (ns, worker) = (self.ns.clone(), worker.to_owned());
        self.db
            .write(move |tx| -> Result<(u64, u64), QueueError> {
                let renewed = tx.execute(
                    "UPDATE jobs SET run_at = ?4
                     WHERE ns = ?1 AND stage = ?2 AND owner = ?3 AND state = 'leased'",
                    params![
                        &*ns,
                        stage.name(),
                        worker,
                        now_ms() + lease.as_millis() as i64
                    ],
                )?;
                Ok((renewed as u64, 0))
            })
            .await
    }

    /// Removes a finished job; returns false if it was already gone. The admission slot is kept
    /// (it is freed when the poll ends).
    pub async fn complete(&self, stage: Stage, id: &str) -> Result<bool, QueueError> {
        let (ns, ids) = (self.ns.clone(), vec![id.to_owned()]);
        self.db
            .write(move |tx| -> Result<bool, QueueError> {
                Ok(remove(tx, &ns, stage.name(), &ids, false)? == 1)
            })
            .await
    }

    /// Puts a leased job back in due after `delay`, or at once if it was woken while leased;
    /// fenced by owner, no attempt spent. As RESCHEDULE_LUA.
    pub(crate) async fn reschedule(
        &self,
        stage: Stage,
        worker: &str,
        id: &str,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        let (ns, worker, id) = (self.ns.clone(), worker.to_owned(), id.to_owned());
        self.db
            .write(move |tx| -> Result<bool, QueueError> {
                let now = now_ms();
                let n = tx.execute(
                    "UPDATE jobs
                     SET state = 'due', run_at = CASE WHEN woken THEN ?5 ELSE ?6 END,
                         owner = NULL, woken = 0
                     WHERE ns = ?1 AND stage = ?2 AND id = ?3 AND state = 'leased' AND owner = ?4",
                    params![
                        &*ns,
                        stage.name(),
                        id,
                        worker,
                        now,
                        now + delay.as_millis() as i64
                    ],
                )?;
                Ok(n == 1)
            })
            .await
    }

    /// Makes due now those of `ids` that are due later, and marks the leased ones so that their
    /// next snooze is due at once; returns how many became due now. As WAKE_LUA.
    pub async fn wake(&self, stage: Stage, ids: &[String]) -> Result<u64, QueueError> {
        let mut woken = 0;
        for chunk in ids.chunks(WAKE_CHUNK) {
            let (ns, chunk) = (self.ns.clone(), chunk.to_vec());
            woken += self
                .db
                .write(move |tx| -> Result<u64, QueueError> {
                    let now = now_ms();
                    let mut due = tx.prepare_cached(
                        "UPDATE jobs SET run_at = ?4
                         WHERE ns = ?1 AND stage = ?2 AND id = ?3 AND state = 'due' AND run_at > ?4",
                    )?;
                    let mut leased = tx.prepare_cached(
                        "UPDATE jobs SET woken = 1
                         WHERE ns = ?1 AND stage = ?2 AND id = ?3 AND state = 'leased'",
                    )?;
                    let mut n = 0;
                    for id in &chunk {
                        n += due.execute(params![&*ns, stage.name(), id, now])? as u64;
                        leased.execute(params![&*ns, stage.name(), id])?;
                    }
                    Ok(n)
                })
                .await?;
        }
        Ok(woken)
    }

    /// Records a failed run of the job `worker` holds: retried after the policy's backoff, or
    /// dead once `policy.max_attempts` runs have failed. As FAIL_LUA; the delay comes from
    /// [`RetryPolicy::delay`], the one place the formula lives.
    pub async fn fail(
        &self,
        stage: Stage,
        worker: &str,
        id: &str,
        error: &str,
        policy: &RetryPolicy,
    ) -> Result<FailResult, QueueError> {
        let (ns, worker, id, error, policy) = (
            self.ns.clone(),
            worker.to_owned(),
            id.to_owned(),
            error.to_owned(),
            *policy,
        );
        self.db
            .write(move |tx| -> Result<FailResult, QueueError> {
                let now = now_ms();
                let owner: Option<String> = tx
                    .query_row(
                        "SELECT owner FROM jobs
                         WHERE ns = ?1 AND stage = ?2 AND id = ?3 AND state = 'leased'",
                        params![&*ns, stage.name(), id],
                        |r| r.get(0),
                    )
                    .optional()?
                    .flatten();
                if owner.as_deref() != Some(worker.as_str()) {
                    return Ok(FailResult::Stale);
                }
                let attempts = spend_attempt(tx, &ns, stage.name(), &id, &error)?;
                if attempts >= policy.max_attempts.max(1) {
                    let why = dead(DeadReason::ATTEMPTS_EXHAUSTED, attempts, &error, now);
                    kill(tx, &ns, stage.name(), &id, &why)?;
                    return Ok(FailResult::Buried);
                }
                let delay = policy.delay(attempts, rand::random::<f64>());
                let at = now + delay.as_millis() as i64;
                tx.execute(
                    "UPDATE jobs SET state = 'due', run_at = ?4 WHERE ns = ?1 AND stage = ?2 AND id = ?3",
                    params![&*ns, stage.name(), id, at],
                )?;
                Ok(FailResult::Retried { at_ms: at as u64 })
            })
            .await
    }

    /// Buries a job at once (a fatal error): dead with `reason`, admission slot freed. Returns
    /// false if the job does not exist. As BURY_LUA.
    pub async fn bury(&self, stage: Stage, id: &str, reason: &str) -> Result<bool, QueueError> {
        let (ns, id, reason) = (self.ns.clone(), id.to_owned(), reason.to_owned());
        self.db
            .write(move |tx| -> Result<bool, QueueError> {
                let exists: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM jobs WHERE ns = ?1 AND stage = ?2 AND id = ?3)",
                    params![&*ns, stage.name(), id],
                    |r| r.get(0),
                )?;
                if !exists {
                    return Ok(false);
                }
                let attempts = spend_attempt(tx, &ns, stage.name(), &id, &reason)?;
                let why = dead(DeadReason::FATAL, attempts, &reason, now_ms());
                kill(tx, &ns, stage.name(), &id, &why)?;
                Ok(true)
            })
            .await
    }

    /// Why `id` is dead, if it is.
    pub async fn dead_reason(
        &self,
        stage: Stage,
        id: &str,
    ) -> Result<Option<DeadReason>, QueueError> {
        let (ns, id) = (self.ns.clone(), id.to_owned());
        let raw: Option<String> = self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT dead_reason FROM jobs
                     WHERE ns = ?1 AND stage = ?2 AND id = ?3 AND state = 'dead'",
                    params![&*ns, stage.name(), id],
                    |r| r.get(0),
                )
                .optional()
                .map(Option::flatten)
            })
            .await?;
        Ok(match raw {
            Some(json) => Some(serde_json::from_str(&json)?),
            None => None,
        })
    }

    /// Up to `limit` dead jobs of `stage`, by id.
    pub async fn dead_jobs(
        &self,
        stage: Stage,
        limit: usize,
    ) -> Result<Vec<(String, DeadReason)>, QueueError> {
        let ns = self.ns.clone();
        let rows: Vec<(String, String)> = self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT id, dead_reason FROM jobs
                     WHERE ns = ?1 AND stage = ?2 AND state = 'dead' AND dead_reason IS NOT NULL
                     ORDER BY id LIMIT ?3",
                )?
                .query_map(params![&*ns, stage.name(), limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect()
            })
            .await?;
        rows.into_iter()
            .map(|(id, json)| Ok((id, serde_json::from_str(&json)?)))
            .collect()
    }

    /// Failed runs recorded for `id` (0 if none).
    pub async fn attempts(&self, stage: Stage, id: &str) -> Result<u32, QueueError> {
        let (ns, id) = (self.ns.clone(), id.to_owned());
        let n: Option<u32> = self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT attempts FROM jobs WHERE ns = ?1 AND stage = ?2 AND id = ?3",
                    params![&*ns, stage.name(), id],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Gives every dead job of `tracking` a fresh set of attempts (`cedar retry`); export jobs go
    /// back to the backlog. As REQUEUE_DEAD_LUA.
    pub async fn requeue_dead(&self, stage: Stage, tracking: &str) -> Result<u64, QueueError> {
        let (ns, tracking) = (self.ns.clone(), tracking.to_owned());
        self.db
            .write(move |tx| -> Result<u64, QueueError> {
                let now = now_ms();
                let ids: Vec<String> = tx
                    .prepare_cached(
                        "SELECT id FROM jobs
                         WHERE ns = ?1 AND stage = ?2 AND tracking = ?3 AND state = 'dead'
                         ORDER BY id",
                    )?
                    .query_map(params![&*ns, stage.name(), tracking], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for id in &ids {
                    let (state, run_at) = match stage {
                        Stage::Export => (
                            "backlog",
                            BacklogPlace::default().band() + next_seq(tx, &ns, "export:seq")?,
                        ),
                        _ => ("due", now),
                    };
                    tx.execute(
                        "UPDATE jobs SET state = ?4, run_at = ?5, attempts = 0, dead_reason = NULL
                         WHERE ns = ?1 AND stage = ?2 AND id = ?3",
                        params![&*ns, stage.name(), id, state, run_at],
                    )?;
                }
                Ok(ids.len() as u64)
            })
            .await
    }

    /// Removes the export run of `tracking` and its plan; returns how many orders it held.
    pub async fn remove_run(&self, tracking: &str) -> Result<u64, QueueError> {
        let (ns, tracking) = (self.ns.clone(), tracking.to_owned());
        self.db
            .write(move |tx| -> Result<u64, QueueError> {
                Ok(runs::remove_runs(tx, &ns, &tracking)?)
            })
            .await
    }

    /// Removes the jobs `ids` from `stage`, whatever their state, and frees their admission
    /// slots (a subset's cancel); returns how many were there.
    pub async fn remove_jobs(&self, stage: Stage, ids: &[String]) -> Result<u64, QueueError> {
        let (ns, ids) = (self.ns.clone(), ids.to_vec());
        self.db
            .write(move |tx| -> Result<u64, QueueError> {
                Ok(remove(tx, &ns, stage.name(), &ids, true)?)
            })
            .await
    }

    /// Removes every job of `tracking` from `stage`, whatever its state, and frees their
    /// admission slots (cancel); returns how many.
    pub async fn remove_tracking(&self, stage: Stage, tracking: &str) -> Result<u64, QueueError> {
        let (ns, tracking) = (self.ns.clone(), tracking.to_owned());
        self.db
            .write(move |tx| -> Result<u64, QueueError> {
                let ids: Vec<String> = tx
                    .prepare_cached(
                        "SELECT id FROM jobs WHERE ns = ?1 AND stage = ?2 AND tracking = ?3",
                    )?
                    .query_map(params![&*ns, stage.name(), tracking], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let held = if stage == Stage::Export {
                    runs::remove_runs(tx, &ns, &tracking)?
                } else {
                    0
                };
                Ok(held + remove(tx, &ns, stage.name(), &ids, true)?)
            })
            .await
    }

    /// Counts the jobs of `stage` in each state.
    pub async fn depth(&self, stage: Stage) -> Result<Depth, QueueError> {
        let ns = self.ns.clone();
        let now = now_ms();
        let (due_now, scheduled, leased, dead, backlog, oldest): (
            i64,
            i64,
            i64,
            i64,
            i64,
            Option<i64>,
        ) = self
            .db
            .read(move |c| {
                let held = if stage == Stage::Export {
                    runs::held(c, &ns)?
                } else {
                    0
                };
                c.query_row(
                    "SELECT
                       coalesce(sum(state = 'due' AND run_at <= ?3), 0),
                       coalesce(sum(state = 'due' AND run_at > ?3), 0),
                       coalesce(sum(state = 'leased'), 0),
                       coalesce(sum(state = 'dead'), 0),
                       coalesce(sum(state = 'backlog'), 0),
                       min(CASE WHEN state = 'due' THEN run_at END)
                     FROM jobs WHERE ns = ?1 AND stage = ?2",
                    params![&*ns, stage.name(), now],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get::<_, i64>(4)? + held,
                            r.get(5)?,
                        ))
                    },
                )
            })
            .await?;
        Ok(Depth {
            due_now: due_now as u64,
            scheduled: scheduled as u64,
            leased: leased as u64,
            dead: dead as u64,
            backlog: backlog as u64,
            oldest_due_age_secs: oldest
                .filter(|at| *at <= now)
                .map(|at| ((now - at) / 1000) as u64)
                .unwrap_or(0),
        })
    }

    /// The ids leased by `worker`.
    pub async fn leased_by(&self, stage: Stage, worker: &str) -> Result<Vec<String>, QueueError> {
        let (ns, worker) = (self.ns.clone(), worker.to_owned());
        Ok(self
            .db
            .read(move |c| {
                let mut q = c.prepare_cached(
                    "SELECT id FROM jobs
                     WHERE ns = ?1 AND stage = ?2 AND state = 'leased' AND owner = ?3",
                )?;
                q.query_map(params![&*ns, stage.name(), worker], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .await?)
    }

    /// Leases of `stage` that have expired but were not reaped yet.
    pub async fn expired_leases(&self, stage: Stage) -> Result<u64, QueueError> {
        let ns = self.ns.clone();
        let n: i64 = self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT count(*) FROM jobs
                     WHERE ns = ?1 AND stage = ?2 AND state = 'leased' AND run_at <= ?3",
                    params![&*ns, stage.name(), now_ms()],
                    |r| r.get(0),
                )
            })
            .await?;
        Ok(n as u64)
    }

    /// Moves export jobs from the backlog to due while fewer than `max_active` hold an admission
    /// slot, taking a slot for each, in one transaction: concurrent admitters never overshoot
    /// the cap. As ADMIT_LUA.
    pub async fn admit(&self, max_active: u64) -> Result<u64, QueueError> {
        let ns = self.ns.clone();
        self.db
            .write(move |tx| -> Result<u64, QueueError> {
                if read_figure(tx, &ns, Figure::Paused)?.is_some() {
                    return Ok(0);
                }
                let cap = read_figure(tx, &ns, Figure::Room)?
                    .map_or(max_active as i64, |room| room.min(max_active as i64));
                let active: i64 = tx.query_row(
                    "SELECT count(*) FROM slots WHERE ns = ?1",
                    params![&*ns],
                    |r| r.get(0),
                )?;
                let free = (cap - active).min(ADMIT_LIMIT as i64);
                if free <= 0 {
                    return Ok(0);
                }
                runs::admit(tx, &ns, free)
            })
            .await
    }

    /// Puts the export job `worker` holds back at the front of the backlog and frees its slot;
    /// false if `worker` no longer holds it. As PUSH_BACK_LUA.
    pub async fn push_back(&self, worker: &str, id: &str) -> Result<bool, QueueError> {
        let (ns, worker, id) = (self.ns.clone(), worker.to_owned(), id.to_owned());
        self.db
            .write(move |tx| -> Result<bool, QueueError> {
                let stage = Stage::Export.name();
                let front = runs::backlog_front(tx, &ns, i64::MIN, i64::MAX)?;
                let n = tx.execute(
                    "UPDATE jobs SET state = 'backlog', run_at = ?5, owner = NULL, woken = 0
                     WHERE ns = ?1 AND stage = ?2 AND id = ?3 AND state = 'leased' AND owner = ?4",
                    params![&*ns, stage, id, worker, front.map_or(0, |f| f - 1)],
                )?;
                if n == 1 {
                    tx.execute(
                        "DELETE FROM slots WHERE ns = ?1 AND id = ?2",
                        params![&*ns, id],
                    )?;
                }
                Ok(n == 1)
            })
            .await
    }

    /// One admission figure; `None` when unset.
    pub async fn figure(&self, figure: Figure) -> Result<Option<i64>, QueueError> {
        let ns = self.ns.clone();
        self.db
            .write(move |tx| -> Result<Option<i64>, QueueError> {
                Ok(read_figure(tx, &ns, figure)?)
            })
            .await
    }

    /// Sets (or, with `None`, clears) one admission figure.
    pub async fn set_figure(&self, figure: Figure, value: Option<i64>) -> Result<(), QueueError> {
        let ns = self.ns.clone();
        self.db
            .write(move |tx| -> Result<(), QueueError> {
                match value {
                    Some(v) => tx.execute(
                        "INSERT INTO counters (ns, name, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT (ns, name) DO UPDATE SET value = ?3",
                        params![&*ns, figure.key(), v],
                    )?,
                    None => tx.execute(
                        "DELETE FROM counters WHERE ns = ?1 AND name = ?2",
                        params![&*ns, figure.key()],
                    )?,
                };
                Ok(())
            })
            .await
    }

    /// Adds `by` to one admission figure (unset counts 0); returns the new value.
    pub async fn add_figure(&self, figure: Figure, by: i64) -> Result<i64, QueueError> {
        let ns = self.ns.clone();
        self.db
            .write(move |tx| -> Result<i64, QueueError> {
                Ok(tx.query_row(
                    "INSERT INTO counters (ns, name, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (ns, name) DO UPDATE SET value = value + ?3 RETURNING value",
                    params![&*ns, figure.key(), by],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    /// Frees the admission slot of `id`; returns false if it held none.
    pub async fn release_slot(&self, id: &str) -> Result<bool, QueueError> {
        let (ns, id) = (self.ns.clone(), id.to_owned());
        self.db
            .write(move |tx| -> Result<bool, QueueError> {
                Ok(tx.execute(
                    "DELETE FROM slots WHERE ns = ?1 AND id = ?2",
                    params![&*ns, id],
                )? == 1)
            })
            .await
    }

    /// Jobs holding an admission slot.
    pub async fn active_count(&self) -> Result<u64, QueueError> {
        let ns = self.ns.clone();
        let n: i64 = self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT count(*) FROM slots WHERE ns = ?1",
                    params![&*ns],
                    |r| r.get(0),
                )
            })
            .await?;
        Ok(n as u64)
    }

    /// Takes one call from the EE budget of `limit_per_sec` calls per second, shared by every
    /// process on this file: a fixed one-second window, as RATE_LUA.
    pub async fn acquire_rate(&self, limit_per_sec: u64) -> Result<RateDecision, QueueError> {
        let ns = self.ns.clone();
        self.db
            .write(move |tx| -> Result<RateDecision, QueueError> {
                let now = now_ms();
                let second = now / 1000;
                // Old windows never pile up (Redis lets their keys expire).
                tx.execute(
                    "DELETE FROM rate WHERE ns = ?1 AND second < ?2",
                    params![&*ns, second - 1],
                )?;
                let calls: i64 = tx.query_row(
                    "INSERT INTO rate (ns, second, calls) VALUES (?1, ?2, 1)
                     ON CONFLICT (ns, second) DO UPDATE SET calls = calls + 1 RETURNING calls",
                    params![&*ns, second],
                    |r| r.get(0),
                )?;
                Ok(if calls as u64 <= limit_per_sec {
                    RateDecision::Go
                } else {
                    RateDecision::WaitMs((1000 - now % 1000) as u64)
                })
            })
            .await
    }
}
