//! An export run is a submission's export jobs kept as one backlog entry: the product
//! collections × tiles × periods, expanded one order at a time when admission takes it.
//!
//! A 1.39-million-order archive would otherwise queue 1.39 million payloads (about 760 bytes of
//! Redis each) before EE has run one of them. A run costs its plan (the collections, tiles and
//! periods) and one backlog entry, whatever its size: about 0.2 bytes of Redis per order for
//! the archive (`cedar bench scale`). Admission
//! ([`super::Queue::admit`]) takes the run's next order when the run is at the front of the
//! backlog, writes that order's job as [`OrderJob`] would be written, and moves the run's place
//! on by one turn: the backlog therefore hands out the same jobs, in the same order, as it would
//! if every job had been queued one by one (priorities first, then submissions taking turns).
//!
//! A submission has at most one run (`run/{tracking}` in the backlog): enqueueing it again while
//! it waits is a no-op, and the run and its plan go together when its last order is handed out
//! or the submission is cancelled.
//!
//! The order of a run's jobs is [`crate::queue::tracking::Submission::orders`]' order:
//! collection-major, then tile, then period; index `i` is collection `i / (tiles × periods)`,
//! tile `(i / periods) mod tiles`, period `i mod periods`.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::OrderJob;

/// The prefix of a run's member in the backlog. Job ids start with their tracking name, which can
/// never contain `/` (`naming` refuses it), so no job id can start with `run/`.
pub const RUN_PREFIX: &str = "run/";

/// A submission's export jobs, by the dimensions of its product; SQLite keeps it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRun {
    pub tracking: String,
    pub collections: Vec<String>,
    /// (row, col).
    pub tiles: Vec<(u32, u32)>,
    /// (first day, last day exclusive).
    pub periods: Vec<(NaiveDate, NaiveDate)>,
}

impl ExportRun {
    /// How many jobs the run holds.
    pub fn len(&self) -> u64 {
        (self.collections.len() * self.tiles.len() * self.periods.len()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its member in the backlog: `run/{tracking}`.
    pub fn member(&self) -> String {
        member(&self.tracking)
    }

    /// The job of order `index` (see the module's order), exactly as it would have been queued
    /// on its own.
    pub fn job(&self, index: u64) -> Option<OrderJob> {
        let (tiles, periods) = (self.tiles.len() as u64, self.periods.len() as u64);
        if tiles == 0 || periods == 0 {
            return None;
        }
        let c = (index / (tiles * periods)) as usize;
        let (row, col) = *self.tiles.get(((index / periods) % tiles) as usize)?;
        let (start, end) = *self.periods.get((index % periods) as usize)?;
        Some(OrderJob {
            v: 1,
            tracking: self.tracking.clone(),
            collection: self.collections.get(c)?.clone(),
            row,
            col,
            start,
            end,
            operation: None,
        })
    }

    /// The plan as the Redis plan hash stores it: `nt`, `np`, then `c:{i}` → collection,
    /// `t:{i}` → `"{row} {col}"`, `p:{i}` → `"{start} {end}"`.
    pub fn plan_fields(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("nt".to_owned(), self.tiles.len().to_string()),
            ("np".to_owned(), self.periods.len().to_string()),
        ];
        out.extend(
            self.collections
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("c:{i}"), c.clone())),
        );
        out.extend(
            self.tiles
                .iter()
                .enumerate()
                .map(|(i, (r, c))| (format!("t:{i}"), format!("{r} {c}"))),
        );
        out.extend(
            self.periods
                .iter()
                .enumerate()
                .map(|(i, (s, e))| (format!("p:{i}"), format!("{s} {e}"))),
        );
        out
    }
}

/// The backlog member of `tracking`'s run.
pub fn member(tracking: &str) -> String {
    format!("{RUN_PREFIX}{tracking}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;

    fn day(m: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, m, 1).unwrap()
    }

    #[test]
    fn indices_walk_collections_then_tiles_then_periods() {
        let run = ExportRun {
            tracking: "T".into(),
            collections: vec!["A".to_owned(), "B".to_owned()],
            tiles: vec![(1, 2), (3, 4), (5, 6)],
            periods: vec![(day(1), day(2)), (day(2), day(3))],
        };
        assert_eq!(run.len(), 12);
        let jobs: Vec<_> = (0..12).map(|i| run.job(i).unwrap()).collect();
        let keys: Vec<_> = jobs
            .iter()
            .map(|j| (j.collection.as_str(), j.row, j.start.month0()))
            .collect();
        assert_eq!(keys[0], ("A", 1, 0));
        assert_eq!(keys[1], ("A", 1, 1));
        assert_eq!(keys[2], ("A", 3, 0));
        assert_eq!(keys[6], ("B", 1, 0));
        assert_eq!(keys[11], ("B", 5, 1));
        assert_eq!(jobs[11].end, day(3));
        assert!(run.job(12).is_none());
        assert_eq!(run.member(), "run/T");
    }
}
