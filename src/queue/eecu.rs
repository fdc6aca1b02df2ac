//! The EECU window: the EECU-seconds (Earth Engine compute units) that ended tasks used, kept
//! beside the queue in time buckets so that every worker sees the same rolling total.
//!
//! A window (24 h by default, `[limits] eecu_window_secs`) is cut into [`BUCKETS`] buckets; each
//! ended task adds its use to the bucket of the moment its poll saw it end, once per EE
//! operation (a mark per operation makes a poll job that runs twice count once). A bucket counts
//! until its end is a whole window old, so the total never under-reports the last window; older
//! buckets and marks are dropped as the window is read.
//!
//! | Redis key | SQLite (`counters`) | content |
//! |---|---|---|
//! | `{ns}:eecu:buckets` (hash) | `eecu:bucket:{start}` | bucket start (ms) → milli-EECU-seconds |
//! | `{ns}:eecu:counted` (zset) | `eecu:counted:{operation}` | operation → when it was counted (ms) |

use std::time::Duration;

use super::{Queue, QueueError};

/// Buckets per window: hourly for the default 24 h window.
pub const BUCKETS: u64 = 24;

/// How long the mark of a counted operation is kept: long past any re-run of its poll job.
const MARK_KEEP: Duration = Duration::from_secs(86_400);

/// The EECU use recorded in the window, bucket by bucket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EecuUse {
    /// The queue's clock when it was read, ms.
    pub now_ms: u64,
    /// (bucket start ms, milli-EECU-seconds), oldest first.
    pub buckets: Vec<(u64, u64)>,
    /// The bucket length, ms.
    pub bucket_ms: u64,
}

impl EecuUse {
    /// EECU-seconds used in the window.
    pub fn seconds(&self) -> f64 {
        self.milli() as f64 / 1000.0
    }

    fn milli(&self) -> u64 {
        self.buckets.iter().map(|(_, m)| m).sum()
    }

    /// While the window's use is at or over `budget_seconds`: when it falls back under as the
    /// oldest buckets leave the window (ms, on the queue's clock). `None` when it is under now.
    pub fn over_until(&self, budget_seconds: f64, window: Duration) -> Option<u64> {
        let budget = (budget_seconds * 1000.0).round() as u64;
        let mut used = self.milli();
        if used < budget {
            return None;
        }
        let window = window.as_millis() as u64;
        let mut until = self.now_ms + window;
        for (start, milli) in &self.buckets {
            used -= milli;
            until = start + self.bucket_ms + window;
            if used < budget {
                break;
            }
        }
        Some(until)
    }
}

/// The bucket length of `window`.
fn bucket_ms(window: Duration) -> u64 {
    (window.as_millis() as u64 / BUCKETS).max(1)
}

impl Queue {
    /// Adds the `seconds` of EECU that `operation` used to the window's current bucket, unless
    /// that operation was counted already; returns whether it was counted now.
    pub async fn record_eecu(
        &self,
        operation: &str,
        seconds: f64,
        window: Duration,
    ) -> Result<bool, QueueError> {
        let milli = (seconds.max(0.0) * 1000.0).round() as u64;
        let keep = MARK_KEEP.max(window).as_millis() as u64;
        let bucket = bucket_ms(window);
        match &self.inner {
            super::QueueInner::Redis(q) => q.record_eecu(operation, milli, bucket, keep).await,
            super::QueueInner::Sqlite(q) => q.record_eecu(operation, milli, bucket, keep).await,
        }
    }

    /// The EECU use of the last `window`; buckets that left it are dropped.
    pub async fn eecu_use(&self, window: Duration) -> Result<EecuUse, QueueError> {
        let bucket = bucket_ms(window);
        let window = window.as_millis() as u64;
        let (now_ms, mut buckets) = match &self.inner {
            super::QueueInner::Redis(q) => q.eecu_buckets(bucket, window).await?,
            super::QueueInner::Sqlite(q) => q.eecu_buckets(bucket, window).await?,
        };
        buckets.sort_unstable();
        Ok(EecuUse {
            now_ms,
            buckets,
            bucket_ms: bucket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_lasts_until_enough_old_buckets_leave_the_window() {
        let window = Duration::from_secs(24 * 3600);
        let hour = 3_600_000;
        let u = EecuUse {
            now_ms: 10 * hour,
            buckets: vec![(hour, 3_000), (2 * hour, 5_000), (9 * hour, 2_000)],
            bucket_ms: hour,
        };
        assert_eq!(u.seconds(), 10.0);
        assert_eq!(u.over_until(10.5, window), None);
        // 10 ≥ 10: the first bucket must leave (at its end + 24 h) to fall to 7.
        assert_eq!(u.over_until(10.0, window), Some(2 * hour + 24 * hour));
        // Under 4 needs the first two gone.
        assert_eq!(u.over_until(4.0, window), Some(3 * hour + 24 * hour));
        // Under 1 needs all three gone.
        assert_eq!(u.over_until(1.0, window), Some(10 * hour + 24 * hour));
        assert_eq!(bucket_ms(window), hour);
        assert_eq!(bucket_ms(Duration::from_millis(5)), 1);
    }
}
