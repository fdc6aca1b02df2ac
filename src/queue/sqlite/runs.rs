//! Export runs on SQLite ([`crate::queue::run`]): the `runs` table sits in the backlog beside
//! the jobs in state `backlog`, ordered with them by `(run_at, id)` as Redis orders a sorted
//! set by score then member, and admission expands a run's next order into a job.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Transaction, params};

use super::SqliteQueue;
use super::db::now_ms;
use crate::queue::run::ExportRun;
use crate::queue::{BacklogPlace, QueueError};

const EXPORT: &str = "export";

/// The lowest place in the export backlog within `[lo, hi)`, jobs and runs alike.
pub(super) fn backlog_front(
    tx: &Transaction,
    ns: &str,
    lo: i64,
    hi: i64,
) -> rusqlite::Result<Option<i64>> {
    let jobs: Option<i64> = tx.query_row(
        "SELECT min(run_at) FROM jobs WHERE ns = ?1 AND stage = ?2
         AND state = 'backlog' AND run_at >= ?3 AND run_at < ?4",
        params![ns, EXPORT, lo, hi],
        |r| r.get(0),
    )?;
    let runs: Option<i64> = tx.query_row(
        "SELECT min(run_at) FROM runs WHERE ns = ?1 AND run_at >= ?2 AND run_at < ?3",
        params![ns, lo, hi],
        |r| r.get(0),
    )?;
    Ok(match (jobs, runs) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// The turn a submission's next job in the backlog follows (counter `turns`): its own last
/// turn, but no earlier than just before its band's front, so that submissions of one priority
/// take turns (as ENQUEUE_LUA).
pub(super) fn last_turn(
    tx: &Transaction,
    ns: &str,
    turns: &str,
    band: i64,
) -> rusqlite::Result<i64> {
    let last: Option<i64> = tx
        .query_row(
            "SELECT value FROM counters WHERE ns = ?1 AND name = ?2",
            params![ns, turns],
            |r| r.get(0),
        )
        .optional()?;
    let front = backlog_front(tx, ns, band, band + BacklogPlace::BAND_WIDTH)?;
    Ok(last.unwrap_or(0).max(front.map_or(0, |f| f - band - 1)))
}

/// Moves up to `free` export jobs from the backlog to due, each taking an admission slot,
/// expanding runs as they come to the front. As ADMIT_LUA after its cap checks.
pub(super) fn admit(tx: &Transaction, ns: &str, free: i64) -> Result<u64, QueueError> {
    let now = now_ms();
    let mut plans: HashMap<String, ExportRun> = HashMap::new();
    let mut admitted = 0i64;
    let mut steps = 0i64;
    let take = |tx: &Transaction, id: &str| -> rusqlite::Result<()> {
        tx.execute(
            "UPDATE jobs SET state = 'due', run_at = ?4 WHERE ns = ?1 AND stage = ?2 AND id = ?3",
            params![ns, EXPORT, id, now],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO slots (ns, id) VALUES (?1, ?2)",
            params![ns, id],
        )?;
        Ok(())
    };
    while admitted < free && steps < 4 * crate::queue::ADMIT_LIMIT as i64 {
        steps += 1;
        let job: Option<(i64, String)> = tx
            .prepare_cached(
                "SELECT run_at, id FROM jobs WHERE ns = ?1 AND stage = ?2 AND state = 'backlog'
                 ORDER BY run_at, id LIMIT 1",
            )?
            .query_row(params![ns, EXPORT], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let run: Option<(i64, String, String, i64, i64, i64)> = tx
            .prepare_cached(
                "SELECT run_at, member, tracking, next, end_index, enqueued_ms FROM runs
                 WHERE ns = ?1 ORDER BY run_at, member LIMIT 1",
            )?
            .query_row(params![ns], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .optional()?;
        let run_first = match (&job, &run) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((ja, jid)), Some((ra, rm, ..))) => (ra, rm) < (ja, jid),
        };
        if !run_first {
            let (_, id) = job.expect("a job is at the front");
            take(tx, &id)?;
            admitted += 1;
            continue;
        }
        let (run_at, member, tracking, next, end, enqueued) = run.expect("a run is at the front");
        if !plans.contains_key(&tracking) {
            let body: Option<String> = tx
                .query_row(
                    "SELECT body FROM run_plans WHERE ns = ?1 AND tracking = ?2",
                    params![ns, tracking],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(body) = body {
                plans.insert(tracking.clone(), serde_json::from_str(&body)?);
            }
        }
        // A run whose plan is gone cannot be expanded: it is dropped, as on Redis.
        let job = plans.get(&tracking).and_then(|plan| plan.job(next as u64));
        if let Some(job) = &job {
            let id = job.id();
            let added = tx.execute(
                "INSERT INTO jobs (ns, stage, id, payload, tracking, state, run_at, enqueued_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'backlog', 0, ?6) ON CONFLICT DO NOTHING",
                params![ns, EXPORT, id, serde_json::to_vec(job)?, tracking, enqueued],
            )?;
            if added == 1 {
                take(tx, &id)?;
                admitted += 1;
            }
        }
        if job.is_none() || next + 1 >= end {
            // A submission has one run: its plan goes with it.
            remove_runs(tx, ns, &tracking)?;
        } else {
            tx.execute(
                "UPDATE runs SET next = ?3, run_at = ?4 WHERE ns = ?1 AND member = ?2",
                params![ns, member, next + 1, run_at + 1],
            )?;
        }
    }
    Ok(admitted as u64)
}

/// Jobs the runs still hold (for `depth`).
pub(super) fn held(c: &rusqlite::Connection, ns: &str) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT coalesce(sum(end_index - next), 0) FROM runs WHERE ns = ?1",
        params![ns],
        |r| r.get(0),
    )
}

impl SqliteQueue {
    /// Adds a submission's export jobs as one run; returns how many jobs it holds, 0 if it was
    /// there already. As ENQUEUE_RUN_LUA.
    pub(crate) async fn enqueue_run(
        &self,
        export: &ExportRun,
        place: BacklogPlace<'_>,
    ) -> Result<u64, QueueError> {
        let ns = self.ns.clone();
        let member = export.member();
        let n = export.len() as i64;
        let body = serde_json::to_string(export)?;
        let tracking = export.tracking.clone();
        let (band, turns) = (place.band(), format!("export:turns:{}", place.tracking));
        self.db
            .write(move |tx| -> Result<u64, QueueError> {
                let exists: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM runs WHERE ns = ?1 AND member = ?2)",
                    params![&*ns, member],
                    |r| r.get(0),
                )?;
                if exists {
                    return Ok(0);
                }
                let turn = last_turn(tx, &ns, &turns, band)?;
                tx.execute(
                    "INSERT INTO run_plans (ns, tracking, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (ns, tracking) DO UPDATE SET body = ?3",
                    params![&*ns, tracking, body],
                )?;
                tx.execute(
                    "INSERT INTO runs (ns, member, tracking, next, end_index, run_at, enqueued_ms)
                     VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6)",
                    params![&*ns, member, tracking, n, band + turn + 1, now_ms()],
                )?;
                tx.execute(
                    "INSERT INTO counters (ns, name, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (ns, name) DO UPDATE SET value = ?3",
                    params![&*ns, turns, turn + n],
                )?;
                Ok(n as u64)
            })
            .await
    }

    /// The order indices of `tracking` its runs have not handed out yet, as `[from, to)`.
    pub async fn run_ranges(&self, tracking: &str) -> Result<Vec<(u64, u64)>, QueueError> {
        let (ns, tracking) = (self.ns.clone(), tracking.to_owned());
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT next, end_index FROM runs WHERE ns = ?1 AND tracking = ?2 ORDER BY member",
                )?
                .query_map(params![&*ns, tracking], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?)
    }
}

/// Removes the run and the plan of `tracking`; returns how many jobs it still held.
pub(super) fn remove_runs(tx: &Transaction, ns: &str, tracking: &str) -> rusqlite::Result<u64> {
    let held: i64 = tx.query_row(
        "SELECT coalesce(sum(end_index - next), 0) FROM runs WHERE ns = ?1 AND tracking = ?2",
        params![ns, tracking],
        |r| r.get(0),
    )?;
    tx.execute(
        "DELETE FROM runs WHERE ns = ?1 AND tracking = ?2",
        params![ns, tracking],
    )?;
    tx.execute(
        "DELETE FROM run_plans WHERE ns = ?1 AND tracking = ?2",
        params![ns, tracking],
    )?;
    Ok(held as u64)
}
