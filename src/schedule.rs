//! Continuous ingest: `[[ingest]]` entries ([`crate::ingest`]) submit each new period on a cron
//! schedule (UTC).
//!
//! Every worker runs the schedule; a period's
//! submission has a deterministic tracking name (`INGEST-{name}-{period start}`) and recording a
//! name that exists fails, so each ingest × period is submitted exactly once however many
//! workers run and however often they restart. On start a worker catches up every period that
//! became due while nothing ran, from the last one submitted (or `backfill_start`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::jobs::Context;
use crate::queue::tracking::TrackingError;
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
                collections: ingest.collections.clone(),
                tiles: ingest.tiles.clone(),
                start: period.start,
                end: period.end,
                freq: None,
                save_empty_metadata: ingest.save_empty_metadata,
                error_if_empty: false,
            };
            let plan = submit::plan(&ctx.settings, &req, now)?;
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
