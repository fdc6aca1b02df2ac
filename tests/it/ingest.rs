//! Continuous ingest: each ingest × period is submitted exactly once however many workers tick
//! at once, periods missed while nothing ran are caught up on return, and what each entry did is
//! read back (newest period submitted and complete, periods missing, failures) — on Redis and on
//! the embedded SQLite queue.

use std::collections::BTreeMap;
use std::time::Duration;

use cedar::emulator::{ApiMethod, Fault};
use cedar::ingest::{Ingest, IngestConfig, TilesConfig};
use cedar::jobs::Context;
use cedar::period::Period;
use cedar::queue::tracking::{OrderState, OrderStatus, Tracker};
use cedar::schedule::{status, tick};
use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone, Utc};

use crate::metrics::{
    BUCKET, DEADLINE, LiveWorker, alert_rules, get, run_promtool, sample, scrape_until,
};
use crate::support::{ContextBench, LC08, context_bench, redis_url, small_exports, wait_until};

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
            priority: None,
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

// ---------------------------------------------------------------------------------------------
// Live workers: the ingest metrics, and the behind-schedule alert on what they exported
// ---------------------------------------------------------------------------------------------

/// EE's message for the task the emulator fails.
const EE_FAILURE: &str = "User memory limit exceeded.";

/// 00:00 UTC of `day`, in seconds, as the metrics give times.
fn midnight(day: NaiveDate) -> f64 {
    day.and_time(NaiveTime::MIN).and_utc().timestamp() as f64
}

/// The `cedar_ingest_*` samples of a scrape, as (series, value), sorted.
fn ingest_samples(text: &str) -> Vec<(String, String)> {
    let mut samples: Vec<(String, String)> = text
        .lines()
        .filter(|l| l.starts_with("cedar_ingest_"))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.to_owned())
        })
        .collect();
    samples.sort();
    samples
}

/// The sum over scrapes of one series.
fn total(scrapes: &[&str], series: &str) -> f64 {
    scrapes.iter().filter_map(|t| sample(t, series)).sum()
}

/// Two workers run two `[[ingest]]` entries against the emulator: `monthly` (July and August
/// 2021, where the emulator has scenes; its first EE task fails) and `daily` (yesterday). Each
/// worker's `/metrics` carries the same ingest facts, the right period ends and order counts, one
/// EE failure counted once; it passes `promtool check metrics`, and `cedar ingest list` prints the
/// same; a job given up (an export EE refuses) is counted apart. Then the series they exported
/// are replayed to Prometheus's rule engine as if every worker had stopped:
/// CedarIngestBehindSchedule stays quiet for a period and fires for `daily` before two more have
/// passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_workers_export_each_ingest_entry_and_a_stopped_one_is_caught() {
    let today = Utc::now().date_naive();
    let day = |s: &str| s.parse::<NaiveDate>().unwrap();
    // August 2021 became due today; September is due in 30 days.
    let lag = (today - day("2021-09-01")).num_days();
    let mut w = LiveWorker::configure_with(&redis_url(), small_exports(BUCKET)).await;
    let mut config = std::fs::read_to_string(&w.config).unwrap();
    config.push_str(&format!(
        r#"
[[ingest]]
name = "monthly"
schedule = "0 0 6 * * *"
collections = ["{LC08}"]
tiles = ["10,14"]
freq = "1MS"
lag_days = {lag}
backfill_start = "2021-07-01"

[[ingest]]
name = "daily"
schedule = "0 0 6 * * *"
collections = ["{LC08}"]
tiles = ["10,14"]
freq = "1D"
"#
    ));
    std::fs::write(&w.config, config).unwrap();
    // One EE task at a time, in the order the periods were submitted: July's fails.
    w.env.emulator.inject(Fault::NextTasksFail {
        count: 1,
        message: Some(EE_FAILURE.to_owned()),
    });
    let one_at_a_time = ["--max-active-exports", "1"];
    let bases = [
        format!("http://{}", w.spawn(&one_at_a_time).await),
        format!("http://{}", w.spawn(&one_at_a_time).await),
    ];

    let l8 = r#"collection="LANDSAT/LC08/C02/T1_L2""#;
    let ee_failures =
        format!(r#"cedar_order_failures_total{{{l8},origin="ingest",cause="ee_task"}}"#);
    let settled = |t: &str| {
        sample(
            t,
            r#"cedar_ingest_latest_period_orders{ingest="monthly",state="CLEANED"}"#,
        ) == Some(1.0)
            && sample(
                t,
                r#"cedar_ingest_last_complete_period_end_timestamp_seconds{ingest="daily"}"#,
            ) == Some(midnight(today))
    };
    for base in &bases {
        scrape_until(base, "both entries' periods to settle", settled).await;
    }
    // The failure is counted by the worker whose poll saw it; wait until one has.
    let (bases_ref, ee_failures_ref) = (&bases, &ee_failures);
    wait_until(DEADLINE, Duration::from_millis(500), move || async move {
        let mut texts = Vec::new();
        for base in bases_ref {
            texts.push(get(&format!("{base}/metrics")).await.2);
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        if total(&refs, ee_failures_ref) >= 1.0 {
            Ok(())
        } else {
            Err(format!(
                "no worker counted the EE failure yet:\n{}",
                texts.join("\n")
            ))
        }
    })
    .await;
    let mut scrapes: Vec<String> = Vec::new();
    for base in &bases {
        scrapes.push(get(&format!("{base}/metrics")).await.2);
    }

    // What the tracking state says: July failed in EE, August and yesterday are complete.
    let (code, july, _) = w
        .cedar(&["status", "INGEST-monthly-2021-07-01", "--json"])
        .await;
    assert_eq!(code, Some(4), "{july}");
    assert!(july.contains(r#""FAILED":1"#), "{july}");
    let (code, august, _) = w
        .cedar(&["status", "INGEST-monthly-2021-08-01", "--json"])
        .await;
    assert_eq!(code, Some(0), "{august}");
    assert!(august.contains(r#""CLEANED":1"#), "{august}");
    let yesterday = format!("INGEST-daily-{}", today - Days::new(1));
    let (code, daily, _) = w.cedar(&["status", &yesterday, "--json"]).await;
    assert_eq!(code, Some(0), "{daily}");
    let tracker = Tracker::open(&redis_url(), &namespace_of(&w.config))
        .await
        .unwrap();
    let august_recorded = tracker
        .submission("INGEST-monthly-2021-08-01")
        .await
        .unwrap();
    assert_eq!(august_recorded.ingest.as_deref(), Some("monthly"));
    let daily_recorded = tracker.submission(&yesterday).await.unwrap();

    // Every worker exports the same ingest facts, read from the shared tracking state.
    let refs: Vec<&str> = scrapes.iter().map(String::as_str).collect();
    assert_eq!(ingest_samples(refs[0]), ingest_samples(refs[1]));
    for text in &refs {
        run_promtool(&["check", "metrics"], Some(text));
        let g =
            |metric: &str, ingest: &str| sample(text, &format!(r#"{metric}{{ingest="{ingest}"}}"#));
        assert_eq!(
            g(
                "cedar_ingest_last_submitted_period_end_timestamp_seconds",
                "monthly"
            ),
            Some(midnight(day("2021-09-01")))
        );
        assert_eq!(
            g(
                "cedar_ingest_last_complete_period_end_timestamp_seconds",
                "monthly"
            ),
            Some(midnight(day("2021-09-01")))
        );
        assert_eq!(
            g("cedar_ingest_last_submission_timestamp_seconds", "monthly"),
            Some(august_recorded.submitted.timestamp() as f64)
        );
        assert_eq!(
            g("cedar_ingest_next_due_timestamp_seconds", "monthly"),
            Some(midnight(today + Days::new(30)))
        );
        assert_eq!(
            g("cedar_ingest_next_period_seconds", "monthly"),
            Some(30.0 * 86400.0)
        );
        for state in OrderState::ALL {
            let series = format!(
                r#"cedar_ingest_latest_period_orders{{ingest="monthly",state="{}"}}"#,
                state.as_str()
            );
            let want = if state == OrderState::Cleaned {
                1.0
            } else {
                0.0
            };
            assert_eq!(sample(text, &series), Some(want), "{series}");
        }
        assert_eq!(
            g(
                "cedar_ingest_last_submitted_period_end_timestamp_seconds",
                "daily"
            ),
            Some(midnight(today))
        );
        assert_eq!(
            g("cedar_ingest_last_submission_timestamp_seconds", "daily"),
            Some(daily_recorded.submitted.timestamp() as f64)
        );
        assert_eq!(
            g("cedar_ingest_next_due_timestamp_seconds", "daily"),
            Some(midnight(today + Days::new(1)))
        );
        assert_eq!(
            g("cedar_ingest_next_period_seconds", "daily"),
            Some(86400.0)
        );
        assert!(
            !text.contains("INGEST-"),
            "a tracking name leaked into a label"
        );
    }
    // The EE failure is counted once, by one worker, and not again as a job given up; nothing
    // failed in a manual submission.
    assert_eq!(total(&refs, &ee_failures), 1.0);
    for (origin, cause) in [
        ("ingest", "lost"),
        ("ingest", "job"),
        ("manual", "ee_task"),
        ("manual", "lost"),
        ("manual", "job"),
    ] {
        let series =
            format!(r#"cedar_order_failures_total{{{l8},origin="{origin}",cause="{cause}"}}"#);
        assert_eq!(total(&refs, &series), 0.0, "{series}");
    }

    // `cedar ingest list` prints the same facts.
    let (code, list, stderr) = w.cedar(&["ingest", "list"]).await;
    assert_eq!(code, Some(0), "{list}{stderr}");
    let row = |name: &str| -> Vec<String> {
        let line = list
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("no {name} in:\n{list}"));
        line.split('\t').map(str::to_owned).collect()
    };
    let due = (day("2021-10-01") + Days::new(lag as u64)).to_string();
    assert_eq!(
        row("monthly")[2..9],
        [
            "2021-08-01..2021-09-01",
            "CLEANED=1",
            "2021-08-01..2021-09-01",
            "-",
            "1 order in 1 period",
            "2021-09-01..2021-10-01",
            due.as_str(),
        ],
        "{list}"
    );
    let daily = row("daily");
    assert_eq!(
        daily[2],
        format!("{}..{today}", today - Days::new(1)),
        "{list}"
    );
    assert_eq!((daily[5].as_str(), daily[6].as_str()), ("-", "-"), "{list}");

    // A job given up for an ingest order: July again (`cedar retry`), its export refused by EE
    // with HTTP 400, which is fatal. It counts as a job, not as an EE task failure.
    w.env.emulator.inject(Fault::NextRequests {
        method: Some(ApiMethod::ImageExport),
        count: 1,
        status: 400,
        message: Some("Invalid argument.".to_owned()),
        processed: false,
    });
    let (code, out, err) = w.cedar(&["retry", "INGEST-monthly-2021-07-01"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let given_up = format!(r#"cedar_order_failures_total{{{l8},origin="ingest",cause="job"}}"#);
    let given_up_ref = &given_up;
    let after = wait_until(DEADLINE, Duration::from_millis(500), move || async move {
        let mut texts = Vec::new();
        for base in bases_ref {
            texts.push(get(&format!("{base}/metrics")).await.2);
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        if total(&refs, given_up_ref) >= 1.0 {
            Ok(texts)
        } else {
            Err(format!(
                "no worker counted the job given up:\n{}",
                texts.join("\n")
            ))
        }
    })
    .await;
    let after: Vec<&str> = after.iter().map(String::as_str).collect();
    assert_eq!(total(&after, &given_up), 1.0);
    assert_eq!(
        total(&after, &ee_failures),
        1.0,
        "the EE failure is not counted again"
    );
    let (code, july, _) = w
        .cedar(&["status", "INGEST-monthly-2021-07-01", "--json"])
        .await;
    assert_eq!(code, Some(4), "{july}");

    // No worker from now on: the series above, replayed, are all Prometheus keeps.
    drop(w);
    behind_schedule_alert_catches_a_stopped_ingest(&bases, &refs);
}

/// The namespace a test configuration's `[queue]` names.
fn namespace_of(config: &std::path::Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    value["queue"]["namespace"].as_str().unwrap().to_owned()
}

/// Writes a `promtool test rules` file whose input is the ingest series of `scrapes` (one per
/// worker at `bases`), as exported today and yesterday, after which no worker reports anything,
/// and runs it against CedarIngestBehindSchedule exactly as alerts.yml has it. promtool counts
/// time from 1970, so rules are evaluated once a day (every minute would take hours).
fn behind_schedule_alert_catches_a_stopped_ingest(bases: &[String], scrapes: &[&str]) {
    const ALERT: &str = "CedarIngestBehindSchedule";
    let rule = alert_rules()
        .into_iter()
        .find(|r| r["alert"].as_str() == Some(ALERT))
        .expect("the alert is in alerts.yml");
    let today = (Utc::now().timestamp() / 86400) as u64;
    let mut input = Vec::new();
    for (base, text) in bases.iter().zip(scrapes) {
        let instance = base.trim_start_matches("http://");
        for (series, value) in ingest_samples(text) {
            let (name, labels) = series.trim_end_matches('}').split_once('{').unwrap();
            input.push(serde_json::json!({
                "series": format!(r#"{name}{{{labels},instance="{instance}",job="cedar"}}"#),
                "values": format!("_x{} {value} {value}", today - 1),
            }));
        }
    }
    let expected = |ingest: &str| {
        let mut annotations = serde_json::Map::new();
        for key in ["summary", "description", "runbook"] {
            let text = rule["annotations"][key]
                .as_str()
                .unwrap()
                .replace("{{ $labels.ingest }}", ingest);
            assert!(
                !text.contains("{{"),
                "{key} of {ALERT} uses more than the ingest label"
            );
            annotations.insert(key.to_owned(), text.into());
        }
        serde_json::json!({
            "exp_labels": {"ingest": ingest, "severity": rule["labels"]["severity"].as_str()},
            "exp_annotations": annotations,
        })
    };
    let at = |days: u64, alerts: Vec<serde_json::Value>| serde_json::json!({"eval_time": format!("{}d", today + days), "alertname": ALERT, "exp_alerts": alerts});
    let tests = serde_json::json!({
        "rule_files": ["rule.yml"],
        "evaluation_interval": "1d",
        "tests": [{
            "name": "the workers that reported both entries stopped",
            "interval": "1d",
            "input_series": input,
            "alert_rule_test": [
                // A period past the next one's due time: still within the grace.
                at(2, vec![]),
                // Two: `daily` is behind (after the rule's `for`, at the next evaluation);
                // `monthly`'s next period is not due for a month.
                at(4, vec![expected("daily")]),
                // The last values are held for 10 days, then nothing is left to alert on.
                at(11, vec![]),
            ],
        }],
    });
    let dir = tempfile::tempdir().unwrap();
    let group = serde_json::json!({"groups": [{"name": "cedar-ingest", "rules": [rule]}]});
    std::fs::write(
        dir.path().join("rule.yml"),
        serde_norway::to_string(&group).unwrap(),
    )
    .unwrap();
    let file = dir.path().join("stopped_ingest_test.yml");
    std::fs::write(&file, serde_norway::to_string(&tests).unwrap()).unwrap();
    let out = run_promtool(&["test", "rules", file.to_str().unwrap()], None);
    assert!(out.contains("SUCCESS"), "{out}");
}
