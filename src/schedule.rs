//! Continuous ingest: `[[ingest]]` entries ([`crate::ingest`]) submit each new period on a cron
//! schedule (UTC).
//!
//! Every worker runs the schedule; a period's
//! submission has a deterministic tracking name (`INGEST-{name}-{period start}`) and recording a
//! name that exists fails, so each ingest × period is submitted exactly once however many
//! workers run and however often they restart. On start a worker catches up every period that
//! became due while nothing ran, from the last one submitted (or `backfill_start`).
//!
//! [`status`] reads back what each entry has done — the newest period submitted and the newest
//! complete, the due periods still missing, the failed orders — for `cedar ingest list` and for
//! the `cedar_ingest_*` metrics every worker exports.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use crate::config::Settings;
use crate::ingest::Ingest;
use crate::jobs::Context;
use crate::period::Period;
use crate::queue::tracking::{OrderState, Tracker, TrackingError};
use crate::submit::{self, Request};

/// Submits every due, not yet submitted period of every entry; returns the names submitted.
pub async fn tick(ctx: &Context, now: DateTime<Utc>) -> anyhow::Result<Vec<String>> {
    let today = now.date_naive();
    let names = ctx.tracker.list().await?;
    let mut done = Vec::new();
    for ingest in &ctx.settings.ingests {
        for period in ingest.to_submit(today, &ingest.submitted_in(&names)) {
            let name = ingest.tracking_name(&period);
            let req = Request {
                name: Some(name.clone()),
                workload_tag: ingest.workload_tag.clone(),
                priority: Some(ingest.priority),
                collections: ingest.collections.clone(),
                tiles: ingest.tiles.clone(),
                start: period.start,
                end: period.end,
                freq: None,
                save_empty_metadata: ingest.save_empty_metadata,
                error_if_empty: false,
            };
            let mut plan = submit::plan(&ctx.settings, &req, now)?;
            plan.submission.ingest = Some(ingest.name.clone());
            match submit::enqueue(ctx, &plan).await {
                Ok(n) => {
                    tracing::info!(ingest = %ingest.name, tracking = %name, jobs = n, "ingest submitted a period");
                    done.push(name);
                }
                // Another worker submitted it first: exactly once.
                Err(submit::SubmitError::Tracking(TrackingError::Exists(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(done)
}

/// Runs the schedule until `stop` changes: a catch-up tick at once, then one at each cron time.
pub async fn run_loop(ctx: Context, mut stop: tokio::sync::watch::Receiver<bool>) {
    if ctx.settings.ingests.is_empty() {
        return;
    }
    let mut next = Utc::now();
    loop {
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = tick(&ctx, Utc::now()).await {
            tracing::warn!(error = %e, "ingest tick failed; trying again at the next schedule");
        }
        next = next_fire(&ctx.settings, Utc::now())
            .unwrap_or_else(|| Utc::now() + chrono::Duration::hours(1));
    }
}

/// The earliest next cron time over all entries.
pub fn next_fire(settings: &Settings, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    settings
        .ingests
        .iter()
        .filter_map(|i| i.schedule.after(&after).next())
        .min()
}

/// What an `[[ingest]]` entry has done and has still to do, read from the tracking state: what
/// `cedar ingest list` prints and what every worker exports as `cedar_ingest_*` metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestStatus {
    /// The entry's name.
    pub name: String,
    /// The newest period submitted.
    pub last_submitted: Option<SubmittedPeriod>,
    /// The newest period whose every order is complete (CLEANED or EMPTY).
    pub last_complete: Option<Period>,
    /// Due periods not submitted yet, oldest first: how far behind its schedule the entry is.
    pub missing: Vec<Period>,
    /// The first period not submitted yet and the day it is due (already past when `missing`
    /// is not empty).
    pub next: Option<(Period, NaiveDate)>,
    /// Orders FAILED, CANCELLED or LOST over every period submitted.
    pub failed_orders: u64,
    /// The periods those orders are in.
    pub failed_periods: usize,
}

/// One period an entry submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmittedPeriod {
    /// Its tracking name, `INGEST-{name}-{period start}`.
    pub tracking: String,
    pub period: Period,
    /// When the submission was recorded.
    pub submitted: DateTime<Utc>,
    /// Its orders per state (states without orders left out).
    pub orders: BTreeMap<OrderState, u64>,
}

/// The status of each of `ingests` at `now`, from every submission's orders per state
/// ([`Tracker::tallies`], which the caller has read). Besides, it reads at most two submission
/// records per entry (the newest and the newest complete), however many periods the entry has
/// submitted.
pub async fn status(
    tracker: &Tracker,
    ingests: &[Ingest],
    tallies: &BTreeMap<String, BTreeMap<OrderState, u64>>,
    now: DateTime<Utc>,
) -> Result<Vec<IngestStatus>, TrackingError> {
    let today = now.date_naive();
    let names: Vec<String> = tallies.keys().cloned().collect();
    let mut out = Vec::with_capacity(ingests.len());
    for ingest in ingests {
        let subs = ingest.submissions_in(&names);
        let submitted = subs.keys().copied().collect();
        let tally = |name: &str| tallies.get(name).cloned().unwrap_or_default();
        let last_submitted = match subs.last_key_value() {
            Some((_, name)) => submitted_period(tracker, name, tally(name)).await?,
            None => None,
        };
        let complete = subs.values().rev().find(|name| {
            let t = tally(name);
            !t.is_empty() && t.keys().all(|s| s.is_complete())
        });
        let last_complete = match (complete, &last_submitted) {
            (Some(name), Some(last)) if *name == last.tracking => Some(last.period),
            (Some(name), _) => submitted_period(tracker, name, BTreeMap::new())
                .await?
                .map(|p| p.period),
            (None, _) => None,
        };
        let failed: Vec<u64> = subs
            .values()
            .map(|name| {
                tally(name)
                    .iter()
                    .filter(|(s, _)| s.is_failed())
                    .map(|(_, n)| n)
                    .sum::<u64>()
            })
            .filter(|n| *n > 0)
            .collect();
        out.push(IngestStatus {
            name: ingest.name.clone(),
            last_submitted,
            last_complete,
            missing: ingest.to_submit(today, &submitted),
            next: ingest.next_to_submit(today, &submitted),
            failed_orders: failed.iter().sum(),
            failed_periods: failed.len(),
        });
    }
    Ok(out)
}

/// The period submission `name` covers; `None` if it was forgotten since it was listed.
async fn submitted_period(
    tracker: &Tracker,
    name: &str,
    orders: BTreeMap<OrderState, u64>,
) -> Result<Option<SubmittedPeriod>, TrackingError> {
    match tracker.submission(name).await {
        Ok(sub) => Ok(Some(SubmittedPeriod {
            tracking: sub.name,
            period: Period {
                start: sub.period_start,
                end: sub.period_end,
            },
            submitted: sub.submitted,
            orders,
        })),
        Err(TrackingError::Unknown(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
