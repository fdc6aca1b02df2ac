//! Ingest entries, the pure part: an `[[ingest]]` entry as written ([`IngestConfig`]), validated
//! ([`Ingest`]), and which of its periods are due on a given day.
//!
//! Each entry names its collections, tiles and a period rule — a frequency plus a lag, e.g.
//! "each complete month, 5 days after it ends". A period's submission has a deterministic
//! tracking name (`INGEST-{name}-{period start}`), so the periods already submitted are read back
//! from the tracking names. Running the schedule (cron ticks, submitting) is [`crate::schedule`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use chrono::{Days, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::grid::{TileGrid, parse_range, parse_tile};
use crate::naming::check_workload_tag;
use crate::period::{Frequency, Period, periods};

/// The first day periods are anchored to when an entry has no `backfill_start`.
const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(2000, 1, 1).expect("valid date");

/// Which tiles an entry covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TilesConfig {
    /// `"all"`: every tile within the grid's limits.
    All(String),
    /// `["ROW,COL", …]`.
    List(Vec<String>),
}

/// One `[[ingest]]` entry as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]

pub struct IngestConfig {
    pub name: String,
    /// Cron expression in UTC with seconds: `sec min hour day-of-month month day-of-week`,
    /// e.g. `"0 0 6 * * *"` (06:00 every day).
    pub schedule: String,
    pub collections: Vec<String>,
    /// `"all"` or a list of `"ROW,COL"`; or use `rows`/`cols`.
    #[serde(default)]
    pub tiles: Option<TilesConfig>,
    /// `"A-B"` rows (inclusive), with `cols`.
    #[serde(default)]
    pub rows: Option<String>,
    #[serde(default)]
    pub cols: Option<String>,
    /// Period frequency (`1MS`, `3MS`, `1YS`, `16D`, …).
    pub freq: String,
    /// Days after a period ends before it is submitted (EE needs time to ingest scenes).
    #[serde(default)]
    pub lag_days: u32,
    /// First period to ingest; without it, ingest starts with the latest complete period.
    #[serde(default)]
    pub backfill_start: Option<NaiveDate>,
    #[serde(default = "yes")]
    pub save_empty_metadata: bool,
    /// The EE workload tag of its submissions' calls; unset, each submission's tracking name
    /// gives one ([`crate::naming::workload_tag_for`]).
    #[serde(default)]
    pub workload_tag: Option<String>,
    /// Its submissions' priority (0–9999, higher first); default 200, above a manual
    /// submission's 100, so a daily ingest is not stuck behind a backfill.
    #[serde(default)]
    pub priority: Option<u32>,
}

fn yes() -> bool {
    true
}

/// A validated ingest entry.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub name: String,
    pub schedule: cron::Schedule,
    pub collections: Vec<String>,
    pub tiles: Vec<(u32, u32)>,
    pub freq: Frequency,
    pub lag_days: u32,
    pub backfill_start: Option<NaiveDate>,
    pub save_empty_metadata: bool,
    pub workload_tag: Option<String>,
    pub priority: u32,
}

impl IngestConfig {
    /// Validates the entry against the grid and collections; one `(key, message)` per problem.
    pub fn resolve(
        &self,
        index: usize,
        grid: Option<&TileGrid>,
        collections: &BTreeSet<String>,
    ) -> Result<Ingest, Vec<(String, String)>> {
        let key = |field: &str| format!("ingest[{index}].{field}");
        let mut errs = Vec::new();
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errs.push((
                key("name"),
                format!("{:?} must be letters, digits, '-' or '_'", self.name),
            ));
        }
        let schedule = cron::Schedule::from_str(&self.schedule)
            .map_err(|e| {
                // The cron crate's message spans lines (the input, a caret, the reason); a
                // problem is one line.
                let reason = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
                errs.push((
                    key("schedule"),
                    format!(
                        "{:?} is not a cron expression ({reason}); write sec min hour day month weekday, e.g. \"0 0 6 * * *\"",
                        self.schedule
                    ),
                ))
            })
            .ok();
        let freq = Frequency::from_str(&self.freq)
            .map_err(|e| errs.push((key("freq"), e.to_string())))
            .ok();
        if self.collections.is_empty() {
            errs.push((
                key("collections"),
                "must list at least one collection".into(),
            ));
        }
        for c in &self.collections {
            if !collections.contains(c) {
                errs.push((
                    key("collections"),
                    format!("unknown collection {c:?}; configure it under [collections.\"ID\"]"),
                ));
            }
        }
        let tiles = match self.tiles(grid) {
            Ok(t) => t,
            Err(m) => {
                errs.push((key("tiles"), m));
                Vec::new()
            }
        };
        if let Some(g) = grid {
            for (r, c) in &tiles {
                if let Err(e) = g.tile(*r, *c) {
                    errs.push((key("tiles"), e.to_string()));
                    break;
                }
            }
        }
        if let Some(Err(e)) = self.workload_tag.as_deref().map(check_workload_tag) {
            errs.push((key("workload_tag"), e));
        }
        if let Some(p) = self.priority.filter(|p| *p > crate::order::MAX_PRIORITY) {
            errs.push((
                key("priority"),
                format!("{p} is out of range; use 0 to 9999 (higher runs first; default 200)"),
            ));
        }
        match (schedule, freq) {
            (Some(schedule), Some(freq)) if errs.is_empty() => Ok(Ingest {
                name: self.name.clone(),
                schedule,
                collections: self.collections.clone(),
                tiles,
                freq,
                lag_days: self.lag_days,
                backfill_start: self.backfill_start,
                save_empty_metadata: self.save_empty_metadata,
                workload_tag: self.workload_tag.clone(),
                priority: self.priority.unwrap_or(crate::order::INGEST_PRIORITY),
            }),
            _ => Err(errs),
        }
    }

    fn tiles(&self, grid: Option<&TileGrid>) -> Result<Vec<(u32, u32)>, String> {
        match (&self.tiles, &self.rows, &self.cols) {
            (Some(TilesConfig::All(s)), None, None) if s == "all" => Ok(grid
                .map(|g| g.limits.indices().collect())
                .unwrap_or_default()),
            (Some(TilesConfig::All(s)), None, None) => Err(format!(
                "{s:?}: write \"all\" or a list such as [\"3,10\", \"3,11\"]"
            )),
            (Some(TilesConfig::List(list)), None, None) if !list.is_empty() => list
                .iter()
                .map(|t| parse_tile(t))
                .collect(),
            (None, Some(rows), Some(cols)) => {
                let (r0, r1) = parse_range(rows)?;
                let (c0, c1) = parse_range(cols)?;
                Ok((r0..=r1)
                    .flat_map(|r| (c0..=c1).map(move |c| (r, c)))
                    .collect())
            }
            _ => Err(
                "give exactly one of tiles = \"all\", tiles = [\"ROW,COL\", …], or rows = \"A-B\" with cols = \"C-D\""
                    .into(),
            ),
        }
    }
}

impl Ingest {
    /// The tracking name of this entry's submission for `period`.
    pub fn tracking_name(&self, period: &Period) -> String {
        format!("INGEST-{}-{}", self.name, period.start)
    }

    fn prefix(&self) -> String {
        format!("INGEST-{}-", self.name)
    }

    /// The day `period` becomes due: `lag_days` after it ends.
    pub fn due_on(&self, period: &Period) -> NaiveDate {
        period.end + Days::new(u64::from(self.lag_days))
    }

    /// Whether `period` is complete and past its lag on `today`.
    fn is_due(&self, period: &Period, today: NaiveDate) -> bool {
        self.due_on(period) <= today
    }

    /// Every due period from the anchor on, oldest first.
    fn due_periods(&self, today: NaiveDate) -> Vec<Period> {
        let anchor = self.backfill_start.unwrap_or(EPOCH);
        if today <= anchor {
            return Vec::new();
        }
        periods(anchor, today, Some(self.freq))
            .map(|p| p.periods)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| self.is_due(p, today))
            .collect()
    }

    /// The periods to submit on `today`, given the period starts already submitted: everything
    /// due after the last submitted one (catching up what was missed), from `backfill_start`
    /// or, on the very first run, the latest due period.
    pub fn to_submit(&self, today: NaiveDate, submitted: &BTreeSet<NaiveDate>) -> Vec<Period> {
        let due = self.due_periods(today);
        let floor = match (self.backfill_start, submitted.first()) {
            (Some(b), _) => b,
            (None, Some(first)) => *first,
            (None, None) => match due.last() {
                Some(p) => p.start,
                None => return Vec::new(),
            },
        };
        due.into_iter()
            .filter(|p| p.start >= floor && !submitted.contains(&p.start))
            .collect()
    }

    /// The first period not submitted yet, and the day it is due: the oldest due period still
    /// missing (a day already past: the entry is behind), else the next one to become due.
    pub fn next_to_submit(
        &self,
        today: NaiveDate,
        submitted: &BTreeSet<NaiveDate>,
    ) -> Option<(Period, NaiveDate)> {
        let next = match self.to_submit(today, submitted).first() {
            Some(p) => *p,
            None => {
                let anchor = self.backfill_start.unwrap_or(EPOCH);
                // Far enough ahead for any period: ten years.
                let horizon = today + Days::new(3700);
                periods(anchor, horizon, Some(self.freq))
                    .ok()?
                    .periods
                    .into_iter()
                    .find(|p| !self.is_due(p, today) && !submitted.contains(&p.start))?
            }
        };
        Some((next, self.due_on(&next)))
    }

    /// Period starts already submitted for this entry, read from the tracking names.
    pub fn submitted_in(&self, names: &[String]) -> BTreeSet<NaiveDate> {
        self.submissions_in(names).into_keys().collect()
    }

    /// This entry's submissions among the tracking `names`, by period start.
    pub fn submissions_in<'a>(&self, names: &'a [String]) -> BTreeMap<NaiveDate, &'a str> {
        let prefix = self.prefix();
        names
            .iter()
            .filter_map(|n| Some((n.strip_prefix(&prefix)?.parse().ok()?, n.as_str())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest(freq: &str, lag: u32, backfill: Option<&str>) -> Ingest {
        IngestConfig {
            name: "l8".into(),
            schedule: "0 0 6 * * *".into(),
            collections: vec!["LANDSAT/LC08/C02/T1_L2".into()],
            tiles: Some(TilesConfig::List(vec!["3,10".into()])),
            rows: None,
            cols: None,
            freq: freq.into(),
            lag_days: lag,
            backfill_start: backfill.map(|d| d.parse().unwrap()),
            save_empty_metadata: true,
            workload_tag: None,
            priority: None,
        }
        .resolve(0, None, &["LANDSAT/LC08/C02/T1_L2".to_string()].into())
        .unwrap()
    }

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn starts(v: &[Period]) -> Vec<String> {
        v.iter().map(|p| p.start.to_string()).collect()
    }

    #[test]
    fn first_run_takes_the_latest_complete_period_after_the_lag() {
        let i = ingest("1MS", 5, None);
        // March ended, but only 4 days ago: February is the latest due month.
        assert_eq!(
            starts(&i.to_submit(d("2024-04-05"), &BTreeSet::new())),
            ["2024-02-01"]
        );
        assert_eq!(
            starts(&i.to_submit(d("2024-04-06"), &BTreeSet::new())),
            ["2024-03-01"]
        );
    }

    #[test]
    fn missed_periods_are_caught_up_once() {
        let i = ingest("1MS", 5, None);
        let done: BTreeSet<_> = [d("2024-01-01")].into();
        // Down from February to mid-May: February, March and April are due.
        assert_eq!(
            starts(&i.to_submit(d("2024-05-15"), &done)),
            ["2024-02-01", "2024-03-01", "2024-04-01"]
        );
        let done: BTreeSet<_> = [
            d("2024-01-01"),
            d("2024-02-01"),
            d("2024-03-01"),
            d("2024-04-01"),
        ]
        .into();
        assert!(i.to_submit(d("2024-05-15"), &done).is_empty());
    }

    #[test]
    fn backfill_starts_at_the_given_period() {
        let i = ingest("3MS", 0, Some("2023-01-01"));
        assert_eq!(
            starts(&i.to_submit(d("2023-10-01"), &BTreeSet::new())),
            ["2023-01-01", "2023-04-01", "2023-07-01"]
        );
        let done: BTreeSet<_> = [d("2023-01-01"), d("2023-04-01"), d("2023-07-01")].into();
        let (next, when) = i.next_to_submit(d("2023-10-01"), &done).unwrap();
        assert_eq!((next.start, when), (d("2023-10-01"), d("2024-01-01")));
    }

    #[test]
    fn the_next_period_to_submit_is_due_in_the_future_on_schedule_and_in_the_past_when_behind() {
        let i = ingest("1MS", 5, None);
        let next = |today: &str, done: &[&str]| {
            let done: BTreeSet<_> = done.iter().map(|s| d(s)).collect();
            let (p, due) = i.next_to_submit(d(today), &done).unwrap();
            (p.start.to_string(), p.end.to_string(), due.to_string())
        };
        // On schedule: March was submitted, April is due on May 6.
        assert_eq!(
            next("2024-04-10", &["2024-02-01", "2024-03-01"]),
            (
                "2024-04-01".into(),
                "2024-05-01".into(),
                "2024-05-06".into()
            )
        );
        // Nothing ran since January: February was due on March 6, and is still missing.
        assert_eq!(
            next("2024-05-15", &["2024-01-01"]),
            (
                "2024-02-01".into(),
                "2024-03-01".into(),
                "2024-03-06".into()
            )
        );
        // Never submitted: the latest due month is the first to submit.
        assert_eq!(
            next("2024-04-10", &[]),
            (
                "2024-03-01".into(),
                "2024-04-01".into(),
                "2024-04-06".into()
            )
        );
        // Before anything is due, the first period to become due.
        let daily = ingest("1D", 0, Some("2024-01-01"));
        let (p, due) = daily
            .next_to_submit(d("2024-01-01"), &BTreeSet::new())
            .unwrap();
        assert_eq!(
            (p.start, p.end, due),
            (d("2024-01-01"), d("2024-01-02"), d("2024-01-02"))
        );
    }

    #[test]
    fn names_round_trip() {
        let i = ingest("1MS", 0, None);
        let p = Period {
            start: d("2024-02-01"),
            end: d("2024-03-01"),
        };
        let names = vec![
            i.tracking_name(&p),
            "INGEST-other-2024-01-01".into(),
            "TRACKING_x".into(),
        ];
        assert_eq!(i.submitted_in(&names), [d("2024-02-01")].into());
        assert_eq!(
            i.submissions_in(&names),
            [(d("2024-02-01"), "INGEST-l8-2024-02-01")].into()
        );
    }

    #[test]
    fn bad_entries_name_each_field() {
        let c = IngestConfig {
            name: "bad name".into(),
            schedule: "every day".into(),
            collections: vec!["NOPE".into()],
            tiles: Some(TilesConfig::All("some".into())),
            rows: None,
            cols: None,
            freq: "1Y".into(),
            lag_days: 0,
            backfill_start: None,
            save_empty_metadata: true,
            workload_tag: Some("L8 monthly".into()),
            priority: Some(10_000),
        };
        let errs = c.resolve(2, None, &BTreeSet::new()).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        for k in [
            "name",
            "schedule",
            "freq",
            "collections",
            "tiles",
            "workload_tag",
            "priority",
        ] {
            assert!(
                keys.contains(&format!("ingest[2].{k}").as_str()),
                "{k}: {errs:?}"
            );
        }
    }
}
