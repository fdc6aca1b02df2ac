//! Continuous ingest: each ingest × period is submitted exactly once however many workers tick
//! at once, and periods missed while nothing ran are caught up on return — on Redis and on the
//! embedded SQLite queue.

use cedar::ingest::{IngestConfig, TilesConfig};
use cedar::jobs::Context;
use cedar::schedule::tick;
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
            workload_tag: None,
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
    // Without a workload_tag key, each period's calls are tagged with its tracking name.
    assert_eq!(
        sub.workload_tag.as_deref(),
        Some("ingest-l8-2024-07-01"),
        "frozen into the submission"
    );
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
