//! Keeping EE full when its queue is capped or shared (issue 10), on Redis and on SQLite: a
//! full EE queue pushes back on admission, not on the job, and a higher-priority campaign
//! passes a backfill that shares EE with it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cedar::emulator::EmulatorOptions;
use serde_json::Value;
use std::process::Command;

use crate::support::{
    Emulated, FAST_WORKER, LC08, Namespace, Process, assert_exported_once, cedar_command,
    configured, four_tiles, redis_url, run, wait_until,
};

const BUCKET: &str = "cedar-sharing";

/// One backend's campaign: the emulator, a queue (a Redis namespace or an SQLite file), one
/// worker.
struct Shared {
    env: Emulated,
    config: PathBuf,
    _namespace: Option<Namespace>,
    worker: Option<Process>,
}

impl Shared {
    async fn start(backend: &str, test: &str, options: EmulatorOptions) -> Shared {
        let env = Emulated::start(EmulatorOptions {
            bucket: Some(BUCKET.to_owned()),
            ..options
        })
        .await;
        let (url, namespace) = match backend {
            "redis" => {
                let ns = Namespace::new(&format!("sharing:{test}"));
                (redis_url(), Some(ns))
            }
            _ => (format!("sqlite://{}", env.path("cedar.db").display()), None),
        };
        let ns = namespace
            .as_ref()
            .map_or_else(|| "cedar".to_owned(), |n| n.name.clone());
        let config = env.config(BUCKET, &url, &ns).write(env.path("cedar.toml"));
        Shared {
            env,
            config,
            _namespace: namespace,
            worker: None,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        configured(cedar_command(), self.env.dir.path(), &self.config, args)
    }

    fn spawn_worker(&mut self, extra: &[&str]) {
        let mut args = FAST_WORKER.to_vec();
        args.extend_from_slice(extra);
        let log = self.env.path("worker.log");
        self.worker = Some(Process::spawn(self.command(&args), log));
    }

    async fn submit(&self, args: &[&str]) -> String {
        let mut all = vec!["submit", "--json"];
        all.extend_from_slice(args);
        let r = run(self.command(&all)).await;
        assert_eq!(r.code, Some(0), "submit: {r:?}");
        r.json()["tracking_name"].as_str().unwrap().to_owned()
    }

    async fn status(&self, name: &str) -> Value {
        let r = run(self.command(&["status", name, "--json"])).await;
        assert!(matches!(r.code, Some(0 | 1 | 3 | 4)), "status: {r:?}");
        r.json()
    }

    async fn wait_done(&self, name: &str) -> Value {
        wait_until(
            Duration::from_secs(180),
            Duration::from_millis(500),
            || async {
                let s = self.status(name).await;
                if s["done"] == Value::Bool(true) {
                    Ok(s)
                } else {
                    Err(format!(
                        "{name} not done: {s}\n{}\nEE: {:?}",
                        self.tail(),
                        self.env.emulator.stats().operations
                    ))
                }
            },
        )
        .await
    }

    fn tail(&self) -> String {
        self.worker.as_ref().map(|w| w.tail(30)).unwrap_or_default()
    }
}

fn cleaned(status: &Value) -> u64 {
    status["counts"]["CLEANED"].as_u64().unwrap_or(0)
}

macro_rules! on_both {
    ($($test:ident => $body:ident),* $(,)?) => {
        mod redis_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$body("redis").await })*
        }
        mod sqlite_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$body("sqlite").await })*
        }
    };
}

on_both!(
    a_full_ee_queue_pushes_back_and_admission_follows_it => full_queue,
    a_higher_priority_campaign_passes_a_backfill => priorities,
);

/// EE's queue holds 4 tasks, cedar may admit 12: the refused exports give their slots back and
/// wait at the front of the backlog (no attempt spent, no scene listed twice), admission learns
/// EE's room from its answer, and every order comes home exported once.
async fn full_queue(backend: &str) {
    let mut c = Shared::start(
        backend,
        "full",
        EmulatorOptions {
            task_seconds: 0.5,
            max_concurrent_exports: 2,
            queue_limit: 4,
            ..EmulatorOptions::default()
        },
    )
    .await;
    // 4 tiles × 3 periods = 12 orders, all admitted at once at first.
    let name = c.submit(&four_tiles(LC08, "2021-09-30", "1MS")).await;
    c.spawn_worker(&["--max-active-exports", "12"]);
    let status = c.wait_done(&name).await;
    assert_eq!(cleaned(&status), 12, "{status}\n{}", c.tail());
    let stats = c.env.emulator.stats();
    assert_exported_once(&stats);
    let refused = stats.responses.get("429").copied().unwrap_or(0);
    assert!(refused >= 1, "EE's queue was never full: {stats:?}");
    // Once EE named its limit, admission stayed under it: the first wave's refusals, and a
    // probe now and then, but not a refusal per order per wake.
    assert!(
        refused <= 10,
        "admission kept knocking: {refused} refusals: {stats:?}"
    );
    // A refused export keeps the scenes it listed: one listing per order.
    assert_eq!(
        stats.requests.get("value.compute").copied(),
        Some(12),
        "{stats:?}"
    );
}

/// A backfill of 24 orders runs on one EE run slot; a campaign of priority 200 submitted after
/// it started passes it and finishes first.
async fn priorities(backend: &str) {
    let mut c = Shared::start(
        backend,
        "priorities",
        EmulatorOptions {
            task_seconds: 0.4,
            max_concurrent_exports: 1,
            ..EmulatorOptions::default()
        },
    )
    .await;
    let backfill = c.submit(&four_tiles(LC08, "2021-12-31", "1MS")).await;
    c.spawn_worker(&["--max-active-exports", "2"]);
    // Let the backfill start before the urgent campaign arrives.
    wait_until(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let s = c.status(&backfill).await;
            if cleaned(&s) >= 1 {
                Ok(())
            } else {
                Err(format!("backfill not started: {s}"))
            }
        },
    )
    .await;
    // The same tiles a month later: items of its own (the backfill's would be refused).
    let mut args = four_tiles(LC08, "2022-01-31", "1MS");
    args[7] = "2022-01-01";
    args.extend(["--priority", "200"]);
    let urgent = c.submit(&args).await;
    let started = Instant::now();
    let done = c.wait_done(&urgent).await;
    assert_eq!(cleaned(&done), 4, "{done}");
    let backfill_now = c.status(&backfill).await;
    assert!(
        cleaned(&backfill_now) < 24 && backfill_now["done"] != Value::Bool(true),
        "the backfill finished before the urgent campaign ({:?}): {backfill_now}",
        started.elapsed()
    );
    let end = c.wait_done(&backfill).await;
    assert_eq!(cleaned(&end), 24, "{end}");
    assert_exported_once(&c.env.emulator.stats());
}
