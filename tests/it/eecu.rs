//! EECU: each ended task's `batchEecuUsageSeconds` on its order, per submission and in the
//! queue's rolling window (once per operation), and the `[limits] eecu_hours_per_day` budget
//! that pauses admission, on both backends.

use std::time::Duration;

use cedar::emulator::EmulatorOptions;
use cedar::queue::{Figure, Stage};
use serde_json::Value;

use crate::backends::{TestQueue, on_both};
use crate::metrics::{get, sample};
use crate::support::{
    Emulated, FAST_WORKER, Process, cedar_command, configured, free_port, one_tile, run,
    small_exports, wait_until,
};

const BUCKET: &str = "cedar-eecu-bucket";
/// The budget's window in the campaign test: short, so that the pause ends within the test.
const WINDOW_SECS: u64 = 5;

on_both!(
    an_operation_counts_once_and_leaves_the_window_after_it,
    a_spent_budget_pauses_admission_until_the_window_moves_on,
);

/// A poll job that runs twice records its task's EECU once; the use leaves the window once the
/// window has passed the bucket it was recorded in.
async fn an_operation_counts_once_and_leaves_the_window_after_it(t: TestQueue) {
    let window = Duration::from_millis(1200);
    let q = &t.queue;
    assert!(
        q.record_eecu("projects/p/operations/A", 2.5, window)
            .await
            .unwrap()
    );
    let other = t.other_process().await;
    assert!(
        !other
            .record_eecu("projects/p/operations/A", 2.5, window)
            .await
            .unwrap(),
        "the second run of the same operation counts nothing"
    );
    assert!(
        q.record_eecu("projects/p/operations/B", 0.75, window)
            .await
            .unwrap()
    );
    let used = other.eecu_use(window).await.unwrap();
    assert_eq!(used.seconds(), 3.25, "{used:?}");
    assert!(used.over_until(3.0, window).is_some());
    assert_eq!(used.over_until(3.5, window), None);
    tokio::time::sleep(window + Duration::from_millis(200)).await;
    let used = q.eecu_use(window).await.unwrap();
    assert_eq!(used.seconds(), 0.0, "{used:?}");
    // Still counted: a late re-run after the window does not count again either.
    assert!(
        !q.record_eecu("projects/p/operations/A", 2.5, window)
            .await
            .unwrap()
    );
}

/// A campaign whose every task spends the whole budget: after the first task ends, admission
/// admits nothing until the window has moved past its use, then the next order goes; the
/// campaign completes, with its EECU in status, the document's extra key and the metrics.
async fn a_spent_budget_pauses_admission_until_the_window_moves_on(t: TestQueue) {
    let env = Emulated::start(EmulatorOptions {
        task_seconds: 1.0,
        ..small_exports(BUCKET)
    })
    .await;
    let port = free_port();
    let mut config = crate::support::TestConfig {
        metrics_listen: Some(format!("127.0.0.1:{port}")),
        ..env.config(BUCKET, &t.url, &t.namespace)
    }
    .toml();
    // 0.36 EECU-seconds a window: the emulator bills every task more. One task ends every
    // window at best, which would slow the adaptive sweeper down to a minute between sweeps.
    config.push_str(&format!(
        "\n[limits]\nmax_active_exports = 1\neecu_hours_per_day = 0.0001\neecu_window_secs = {WINDOW_SECS}\n\n[worker]\nsweep_max_interval_secs = 2\n"
    ));
    let config_path = env.path("cedar.toml");
    std::fs::write(&config_path, config).unwrap();
    let cedar = |args: &[&str]| configured(cedar_command(), env.dir.path(), &config_path, args);

    let mut submit = vec!["submit", "--json"];
    submit.extend(one_tile("2021-10-01"));
    submit.extend(["--freq", "1MS"]);
    let (code, out, err) = run(cedar(&submit)).await.parts();
    assert_eq!(code, Some(0), "{out}{err}");
    let name = serde_json::from_str::<Value>(&out).unwrap()["tracking_name"]
        .as_str()
        .unwrap()
        .to_owned();
    let _worker = Process::spawn(cedar(FAST_WORKER), env.path("worker.log"));
    let q = &t.queue;
    let status = |name: String| {
        let cmd = cedar(&["status", &name, "--json"]);
        async move {
            let (_, out, err) = run(cmd).await.parts();
            serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"))
        }
    };
    let queued = |s: &Value| s["counts"]["QUEUED"].as_u64().unwrap_or(0);

    // The first task ends and spends the budget: admission pauses.
    let until = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            match q.figure(Figure::Paused).await.unwrap() {
                Some(until) => Ok(until as u64),
                None => Err("admission never paused".to_string()),
            }
        },
    )
    .await;
    let now = q.now_ms().await.unwrap();
    assert!(
        until > now && until <= now + (WINDOW_SECS + 1) * 1000,
        "paused until {until}, now {now}"
    );
    // The order's record follows its pause by a moment.
    let first = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let s = status(name.clone()).await;
            if s["eecu_seconds"].as_f64().unwrap() > 0.36 {
                Ok(s)
            } else {
                Err(format!("no EECU in status: {s}"))
            }
        },
    )
    .await;
    let waiting = queued(&first);
    assert!(waiting >= 1, "orders wait behind the pause: {first}");
    assert!(first["admission_paused_until"].is_string(), "{first}");
    let (_, text, _) = run(cedar(&["status", &name])).await.parts();
    assert!(
        text.contains("admission is paused by the EECU budget"),
        "{text}"
    );

    // Nothing is admitted while the pause lasts, though a slot is free.
    let quiet = Duration::from_millis(until.saturating_sub(now).saturating_sub(700));
    tokio::time::sleep(quiet).await;
    let depth = q.depth(Stage::Export).await.unwrap();
    assert_eq!(depth.backlog, waiting, "{depth:?}");
    assert_eq!(q.active_count().await.unwrap(), 0);
    assert!(q.now_ms().await.unwrap() < until, "the check ran late");
    assert_eq!(queued(&status(name.clone()).await), waiting);

    // After the window the pause ends by itself and the next order goes.
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let s = status(name.clone()).await;
            if queued(&s) < waiting {
                Ok(())
            } else {
                Err(format!("admission never resumed: {s}"))
            }
        },
    )
    .await;
    assert!(
        q.now_ms().await.unwrap() >= until,
        "admitted before the pause ended"
    );

    let done = wait_until(
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            let s = status(name.clone()).await;
            if s["done"] == true {
                Ok(s)
            } else {
                Err(format!("campaign never finished: {s}"))
            }
        },
    )
    .await;
    assert_eq!(done["counts"]["QUEUED"], Value::Null, "{done}");
    let eecu = done["eecu_seconds"].as_f64().unwrap();
    let used = q.eecu_use(Duration::from_secs(WINDOW_SECS)).await.unwrap();
    assert!(eecu > first["eecu_seconds"].as_f64().unwrap(), "{done}");
    assert!(
        used.seconds() <= eecu + 1e-3,
        "window {used:?}, total {eecu}"
    );

    // Counted once per task by the worker that saw it end (rounded to whole seconds).
    let (_, _, metrics) = get(&format!("http://127.0.0.1:{port}/metrics")).await;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("cedar_eecu_seconds_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!((counted - eecu).abs() <= 1.0, "{counted} vs {eecu}");
    assert!(sample(&metrics, "cedar_eecu_budget_seconds").unwrap() > 0.35);
}
