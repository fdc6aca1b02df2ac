//! An export run is a submission's export jobs kept as one backlog entry: the product
//! collections × tiles × periods, expanded one order at a time when admission takes it.
//!
//! A 1.39-million-order archive would otherwise queue 1.39 million payloads (about 760 bytes of
//! Redis each) before EE has run one of them. A run costs its plan (the collections, tiles and
//! periods, a few tens of kilobytes) and one backlog entry, whatever its size. Admission
//! ([`super::Queue::admit`]) takes the run's next order when the run is at the front of the
//! backlog, writes that order's job as [`OrderJob`] would be written, and moves the run's place
//! on by one turn: the backlog therefore hands out the same jobs, in the same order, as it would
//! if every job had been queued one by one (priorities first, then submissions taking turns).
//!
//! The order of a run's jobs is [`crate::queue::tracking::Submission::orders`]' order:
//! collection-major, then tile, then period; index `i` is collection `i / (tiles × periods)`,
//! tile `(i / periods) mod tiles`, period `i mod periods`.

use chrono::NaiveDate;

use super::OrderJob;

/// The prefix of a run's member in the backlog. Job ids start with their tracking name, which can
/// never contain `/` (`naming` refuses it), so no job id can start with `run/`.
pub const RUN_PREFIX: &str = "run/";

/// A submission's export jobs, by the dimensions of its product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRun<'a> {
    pub tracking: &'a str,
    pub collections: &'a [String],
    /// (row, col).
    pub tiles: &'a [(u32, u32)],
    /// (first day, last day exclusive).
    pub periods: Vec<(NaiveDate, NaiveDate)>,
}

impl ExportRun<'_> {
    /// How many jobs the run holds.
    pub fn len(&self) -> u64 {
        (self.collections.len() * self.tiles.len() * self.periods.len()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its member in the backlog: `run/{tracking}/0`.
    pub fn member(&self) -> String {
        member(self.tracking, 0)
    }

    /// The job of order `index` (see the module's order), exactly as it would have been queued
    /// on its own.
    pub fn job(&self, index: u64) -> Option<OrderJob> {
        let plan = Dims {
            tiles: self.tiles.len() as u64,
            periods: self.periods.len() as u64,
        };
        let (c, t, p) = plan.split(index)?;
        let (row, col) = *self.tiles.get(t)?;
        let (start, end) = *self.periods.get(p)?;
        Some(OrderJob {
            v: 1,
            tracking: self.tracking.to_owned(),
            collection: self.collections.get(c)?.clone(),
            row,
            col,
            start,
            end,
            operation: None,
        })
    }

    /// The plan as the Redis plan hash stores it: `nc`, `nt`, `np`, then `c:{i}` → collection,
    /// `t:{i}` → `"{row} {col}"`, `p:{i}` → `"{start} {end}"`.
    pub fn plan_fields(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("nc".to_owned(), self.collections.len().to_string()),
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

/// A run's member in the backlog.
pub fn member(tracking: &str, first: u64) -> String {
    format!("{RUN_PREFIX}{tracking}/{first}")
}

/// The tracking name of a run's member; `None` for a job id.
pub fn tracking_of(member: &str) -> Option<&str> {
    let rest = member.strip_prefix(RUN_PREFIX)?;
    rest.rsplit_once('/').map(|(tracking, _)| tracking)
}

/// The shape of a run's product.
#[derive(Debug, Clone, Copy)]
struct Dims {
    tiles: u64,
    periods: u64,
}

impl Dims {
    /// (collection, tile, period) of `index`.
    fn split(self, index: u64) -> Option<(usize, usize, usize)> {
        if self.tiles == 0 || self.periods == 0 {
            return None;
        }
        let per_collection = self.tiles * self.periods;
        Some((
            (index / per_collection) as usize,
            ((index / self.periods) % self.tiles) as usize,
            (index % self.periods) as usize,
        ))
    }
}

/// A run as SQLite stores its plan (one JSON body per submission).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredPlan {
    pub tracking: String,
    pub collections: Vec<String>,
    pub tiles: Vec<(u32, u32)>,
    pub periods: Vec<(NaiveDate, NaiveDate)>,
}

impl StoredPlan {
    pub fn of(run: &ExportRun<'_>) -> StoredPlan {
        StoredPlan {
            tracking: run.tracking.to_owned(),
            collections: run.collections.to_vec(),
            tiles: run.tiles.to_vec(),
            periods: run.periods.clone(),
        }
    }

    pub fn run(&self) -> ExportRun<'_> {
        ExportRun {
            tracking: &self.tracking,
            collections: &self.collections,
            tiles: &self.tiles,
            periods: self.periods.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(m: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, m, 1).unwrap()
    }

    #[test]
    fn indices_walk_collections_then_tiles_then_periods() {
        let collections = vec!["A".to_owned(), "B".to_owned()];
        let tiles = vec![(1, 2), (3, 4), (5, 6)];
        let run = ExportRun {
            tracking: "T",
            collections: &collections,
            tiles: &tiles,
            periods: vec![(day(1), day(2)), (day(2), day(3))],
        };
        assert_eq!(run.len(), 12);
        let jobs: Vec<_> = (0..12).map(|i| run.job(i).unwrap()).collect();
        let keys: Vec<_> = jobs
            .iter()
            .map(|j| (j.collection.as_str(), j.row, j.start.month0()))
            .collect();
        use chrono::Datelike;
        assert_eq!(keys[0], ("A", 1, 0));
        assert_eq!(keys[1], ("A", 1, 1));
        assert_eq!(keys[2], ("A", 3, 0));
        assert_eq!(keys[6], ("B", 1, 0));
        assert_eq!(keys[11], ("B", 5, 1));
        assert_eq!(jobs[11].end, day(3));
        assert!(run.job(12).is_none());
    }

    #[test]
    fn members_never_look_like_job_ids() {
        assert_eq!(member("camp|x", 0), "run/camp|x/0");
        assert_eq!(tracking_of(&member("camp|x", 0)), Some("camp|x"));
        assert_eq!(tracking_of("camp|C|1|2|2024-01-01"), None);
    }
}
