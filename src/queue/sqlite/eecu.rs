//! The EECU window in the SQLite file (see [`crate::queue::eecu`]): buckets and the marks of
//! counted operations are rows of `counters`, named `eecu:bucket:{start}` (the start padded to
//! 15 digits, so that names sort by time) and `eecu:counted:{operation}` (value: when, ms).

use rusqlite::{OptionalExtension, params};

use super::{SqliteQueue, now_ms};
use crate::queue::QueueError;

const BUCKET: &str = "eecu:bucket:";
const COUNTED: &str = "eecu:counted:";

/// The bounds of every name that starts with `prefix` (`:` + 1 is `;`).
fn range(prefix: &str) -> (String, String) {
    (
        prefix.to_owned(),
        format!("{};", prefix.trim_end_matches(':')),
    )
}

impl SqliteQueue {
    /// As RECORD_LUA (`redis/eecu.rs`).
    pub(in crate::queue) async fn record_eecu(
        &self,
        operation: &str,
        milli: u64,
        bucket_ms: u64,
        keep_ms: u64,
    ) -> Result<bool, QueueError> {
        let (ns, operation) = (self.ns.clone(), operation.to_owned());
        self.db
            .write(move |tx| -> Result<bool, QueueError> {
                let mark = format!("{COUNTED}{operation}");
                let seen: Option<i64> = tx
                    .query_row(
                        "SELECT value FROM counters WHERE ns = ?1 AND name = ?2",
                        params![&*ns, mark],
                        |r| r.get(0),
                    )
                    .optional()?;
                if seen.is_some() {
                    return Ok(false);
                }
                let now = now_ms();
                let (lo, hi) = range(COUNTED);
                tx.execute(
                    "DELETE FROM counters WHERE ns = ?1 AND name >= ?2 AND name < ?3 AND value <= ?4",
                    params![&*ns, lo, hi, now - keep_ms as i64],
                )?;
                tx.execute(
                    "INSERT INTO counters (ns, name, value) VALUES (?1, ?2, ?3)",
                    params![&*ns, mark, now],
                )?;
                let start = now - now.rem_euclid(bucket_ms as i64);
                tx.execute(
                    "INSERT INTO counters (ns, name, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (ns, name) DO UPDATE SET value = value + ?3",
                    params![&*ns, format!("{BUCKET}{start:015}"), milli as i64],
                )?;
                Ok(true)
            })
            .await
    }

    /// As BUCKETS_LUA (`redis/eecu.rs`): the clock and the buckets still in the window.
    pub(in crate::queue) async fn eecu_buckets(
        &self,
        bucket_ms: u64,
        window_ms: u64,
    ) -> Result<(u64, Vec<(u64, u64)>), QueueError> {
        let ns = self.ns.clone();
        self.db
            .write(move |tx| -> Result<(u64, Vec<(u64, u64)>), QueueError> {
                let now = now_ms();
                // Buckets whose end is a window old leave it.
                let oldest = now - (bucket_ms + window_ms) as i64;
                let (lo, hi) = range(BUCKET);
                tx.execute(
                    "DELETE FROM counters WHERE ns = ?1 AND name >= ?2 AND name <= ?3",
                    params![&*ns, lo, format!("{BUCKET}{oldest:015}")],
                )?;
                let rows: Vec<(String, i64)> = tx
                    .prepare_cached(
                        "SELECT name, value FROM counters WHERE ns = ?1 AND name >= ?2 AND name < ?3",
                    )?
                    .query_map(params![&*ns, lo, hi], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let mut buckets = Vec::with_capacity(rows.len());
                for (name, milli) in rows {
                    let start = name[BUCKET.len()..].parse::<u64>().map_err(|e| {
                        QueueError::Reply {
                            script: "eecu buckets",
                            detail: format!("{name}: {e}"),
                        }
                    })?;
                    buckets.push((start, milli.max(0) as u64));
                }
                Ok((now as u64, buckets))
            })
            .await
    }
}
