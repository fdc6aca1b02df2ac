//! Continuous ingest: each ingest × period is submitted exactly once however many workers tick
//! at once, periods missed while nothing ran are caught up on return, and what each entry did is
//! read back (newest period submitted and complete, periods missing, failures) — on Redis and on
//! the embedded SQLite queue.

use std::collections::BTreeMap;

use cedar::ingest::{Ingest, IngestConfig, TilesConfig};
use cedar::jobs::Context;
use cedar::period::Period;
use cedar::queue::tracking::{OrderState, OrderStatus};
use cedar::schedule::{status, tick};
use chrono::{DateTime, TimeZone, Utc};

use crate::support::{ContextBench, context_bench, redis_url};

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 6, 0, 0).unwrap()
}

async fn setup(queue_url: String, backfill: Option<&str>) -> ContextBench {
    context_bench("ingest", queue_url, |c| {
        c.ingest = vec![IngestConfig {
            name: "l8".into(),
            schedule: "0 0 6 * * *".into(),
            collections: vec!["LANDSAT/LC08/C02/T1_L2".into()],
            tiles: Some(TilesConfig::List(vec!["3,10".into(), "3,11".into()])),
            rows: None,
            cols: None,
            freq: "1MS".into(),
            lag_days: 5,
            backfill_start: backfill.map(|d| d.parse().unwrap()),
            save_empty_metadata: true,
        }];
    })
    .await
}

async fn names(ctx: &Context) -> Vec<String> {
    let mut n = ctx.tracker.list().await.unwrap();
    n.sort();
    n
}

async fn exactly_once_and_catch_up(queue_url: String) {
    let b = setup(queue_url, Some("2024-01-01")).await;
    // Four workers tick at the same moment: January to March are due (lag 5 days).
    let ticks = futures::future::join_all((0..4).map(|_| tick(&b.ctx, at(2024, 4, 10)))).await;
    let mut submitted: Vec<String> = ticks.into_iter().flat_map(|r| r.unwrap()).collect();
    submitted.sort();
    assert_eq!(
        submitted,
        vec![
            "INGEST-l8-2024-01-01",
            "INGEST-l8-2024-02-01",
            "INGEST-l8-2024-03-01"
        ],
        "each period submitted by exactly one of the concurrent ticks"
    );
    assert_eq!(names(&b.ctx).await, submitted);
    // Each submission queued one export per tile.
    let depth = b
        .ctx
        .queue
        .depth(cedar::queue::Stage::Export)
        .await
        .unwrap();
    assert_eq!(depth.backlog + depth.due_now, 3 * 2);
    // Ticking again the same day submits nothing.
    assert!(tick(&b.ctx, at(2024, 4, 10)).await.unwrap().is_empty());
    // Down until August 10: April, May and June are caught up once; July is not due yet (lag).
    assert_eq!(
        tick(&b.ctx, at(2024, 8, 5)).await.unwrap(),
        vec![
            "INGEST-l8-2024-04-01",
            "INGEST-l8-2024-05-01",
            "INGEST-l8-2024-06-01"
        ]
    );
    assert_eq!(
        tick(&b.ctx, at(2024, 8, 6)).await.unwrap(),
        vec!["INGEST-l8-2024-07-01"]
    );
    let sub = b
        .ctx
        .tracker
        .submission("INGEST-l8-2024-07-01")
        .await
        .unwrap();
    assert_eq!(sub.period_start.to_string(), "2024-07-01");
    assert_eq!(sub.period_end.to_string(), "2024-08-01");
    assert_eq!(sub.tiles, vec![(3, 10), (3, 11)]);
    assert_eq!(sub.ingest.as_deref(), Some("l8"), "the entry is recorded");
}

#[tokio::test]
async fn redis_ingest_submits_each_period_exactly_once_and_catches_up() {
    exactly_once_and_catch_up(redis_url()).await;
}

#[tokio::test]
async fn sqlite_ingest_submits_each_period_exactly_once_and_catches_up() {
    exactly_once_and_catch_up(String::new()).await;
}

#[tokio::test]
async fn without_backfill_ingest_starts_at_the_latest_complete_period() {
    let b = setup(redis_url(), None).await;
    assert_eq!(
        tick(&b.ctx, at(2024, 5, 10)).await.unwrap(),
        vec!["INGEST-l8-2024-04-01"]
    );
    // Missed June and July while down.
    assert_eq!(
        tick(&b.ctx, at(2024, 8, 10)).await.unwrap(),
        vec![
            "INGEST-l8-2024-05-01",
            "INGEST-l8-2024-06-01",
            "INGEST-l8-2024-07-01"
        ]
    );
}

/// What `cedar ingest list` prints and the worker exports: the newest period submitted and its
/// orders, the newest complete one, the due periods missing, the next one and failed orders.
async fn status_reads_back_what_each_entry_did(queue_url: String) {
    let b = setup(queue_url, Some("2024-01-01")).await;
    let ctx = &b.ctx;
    let now = at(2024, 4, 10);
    tick(ctx, now).await.unwrap();
    // January complete (one tile EMPTY), February with a FAILED order, March still QUEUED.
    let order = |name: &str, col: u32| {
        let start: chrono::NaiveDate = name.rsplit_once("l8-").unwrap().1.parse().unwrap();
        cedar::order::Order {
            collection: "LANDSAT/LC08/C02/T1_L2".into(),
            row: 3,
            col,
            period: cedar::period::Period {
                start,
                end: start + chrono::Months::new(1),
            },
        }
    };
    for (name, col, state) in [
        ("INGEST-l8-2024-01-01", 10, OrderState::Cleaned),
        ("INGEST-l8-2024-01-01", 11, OrderState::Empty),
        ("INGEST-l8-2024-02-01", 10, OrderState::Cleaned),
        ("INGEST-l8-2024-02-01", 11, OrderState::Failed),
    ] {
        let s = OrderStatus::new(state);
        assert!(
            ctx.tracker
                .set(name, &order(name, col), &s, false)
                .await
                .unwrap()
        );
    }
    let day = |s: &str| s.parse::<chrono::NaiveDate>().unwrap();
    let period = |start: &str, end: &str| Period {
        start: day(start),
        end: day(end),
    };

    // On April 10 nothing is missing: April is due on May 6.
    let tallies = ctx.tracker.tallies().await.unwrap();
    let s = &status(&ctx.tracker, &ctx.settings.ingests, &tallies, now)
        .await
        .unwrap()[0];
    assert_eq!(s.name, "l8");
    let last = s.last_submitted.as_ref().unwrap();
    assert_eq!(last.tracking, "INGEST-l8-2024-03-01");
    assert_eq!(last.period, period("2024-03-01", "2024-04-01"));
    assert_eq!(last.orders, BTreeMap::from([(OrderState::Queued, 2)]));
    let recorded = ctx.tracker.submission(&last.tracking).await.unwrap();
    assert_eq!(last.submitted, recorded.submitted);
    assert_eq!(s.last_complete, Some(period("2024-01-01", "2024-02-01")));
    assert_eq!(s.missing, vec![]);
    assert_eq!(
        s.next,
        Some((period("2024-04-01", "2024-05-01"), day("2024-05-06")))
    );
    assert_eq!((s.failed_orders, s.failed_periods), (1, 1));

    // Nothing ticked since: on June 20 April and May are due and missing, April since May 6.
    let s = &status(
        &ctx.tracker,
        &ctx.settings.ingests,
        &tallies,
        at(2024, 6, 20),
    )
    .await
    .unwrap()[0];
    assert_eq!(
        s.missing,
        vec![
            period("2024-04-01", "2024-05-01"),
            period("2024-05-01", "2024-06-01")
        ]
    );
    assert_eq!(
        s.next,
        Some((period("2024-04-01", "2024-05-01"), day("2024-05-06")))
    );

    // An entry that has submitted nothing yet: no period, and the first one to submit.
    let other = Ingest {
        name: "other".into(),
        ..ctx.settings.ingests[0].clone()
    };
    let s = &status(&ctx.tracker, &[other], &tallies, now).await.unwrap()[0];
    assert_eq!((s.last_submitted.as_ref(), s.last_complete), (None, None));
    assert_eq!(s.missing.len(), 3, "January to March are due: {s:?}");
    assert_eq!((s.failed_orders, s.failed_periods), (0, 0));
}

#[tokio::test]
async fn redis_ingest_status_reads_back_what_each_entry_did() {
    status_reads_back_what_each_entry_did(redis_url()).await;
}

#[tokio::test]
async fn sqlite_ingest_status_reads_back_what_each_entry_did() {
    status_reads_back_what_each_entry_did(String::new()).await;
}
