//! Single-machine mode end to end: no Redis anywhere. The real `cedar` binary runs `submit` and
//! `worker` with `[queue] url = "sqlite:///…/cedar.db"` against the in-process EE emulator, a
//! local directory as the export bucket and another as the destination; then a worker is
//! SIGKILLed mid-run and another one finishes the campaign from the same file.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cedar::emulator::{EmulatorOptions, Stats};
use cedar::queue::{Depth, Queue, Stage};
use serde_json::Value;

use crate::support::{
    Emulated, FAST_WORKER, Process, assert_exported_once, cedar_command, configured, files,
    four_tiles, run, small_exports, wait_until,
};

const BUCKET: &str = "cedar-single-bucket";
const NAMESPACE: &str = "single";
const DEADLINE: Duration = Duration::from_secs(120);

/// One test's emulator, folders, database file and worker processes.
struct Machine {
    workers: Vec<Process>,
    env: Emulated,
    config: PathBuf,
    db: PathBuf,
}

impl Machine {
    async fn start(task_seconds: f64) -> Machine {
        let env = Emulated::start(EmulatorOptions {
            task_seconds,
            max_concurrent_exports: 8,
            ..small_exports(BUCKET)
        })
        .await;
        let db = env.path("state").join("cedar.db");
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        // An absolute path: sqlite:// + /tmp/… = sqlite:///tmp/….
        let config = env
            .config(BUCKET, &format!("sqlite://{}", db.display()), NAMESPACE)
            .write(env.path("cedar.toml"));
        Machine {
            workers: Vec::new(),
            env,
            config,
            db,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        configured(cedar_command(), self.env.dir.path(), &self.config, args)
    }

    async fn json(&self, args: &[&str]) -> Value {
        let (code, out, err) = run(self.command(args)).await.parts();
        assert!(matches!(code, Some(0 | 1 | 3)), "{args:?}: {out}{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}{err}"))
    }

    async fn submit(&self, args: &[&str]) -> String {
        let mut all = vec!["submit", "--json"];
        all.extend_from_slice(args);
        self.json(&all).await["tracking_name"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn spawn_worker(&mut self) -> usize {
        let n = self.workers.len();
        let cmd = self.command(FAST_WORKER);
        let log = self.env.path(&format!("worker-{n}.log"));
        self.workers.push(Process::spawn(cmd, log));
        n
    }

    /// SIGKILL: no drain, no hand-back; the leases it holds simply expire.
    fn kill_worker(&mut self, n: usize) {
        self.workers[n].kill();
    }

    async fn wait_done(&self, name: &str) -> Value {
        wait_until(DEADLINE, Duration::from_millis(500), move || async move {
            let status = self.json(&["status", name, "--json"]).await;
            if status["done"] == Value::Bool(true) {
                Ok(status)
            } else {
                Err(format!("{name} not done: {status}\n{}", self.logs()))
            }
        })
        .await
    }

    async fn wait_stats(&self, cond: impl Fn(&Stats) -> bool) {
        let cond = &cond;
        wait_until(DEADLINE, Duration::from_millis(100), move || async move {
            let stats = self.env.emulator.stats();
            if cond(&stats) {
                Ok(())
            } else {
                Err(format!("{stats:#?}"))
            }
        })
        .await
    }

    fn logs(&self) -> String {
        self.workers.iter().map(|w| w.tail(30)).collect()
    }

    /// Checks a finished campaign: every order CLEANED or EMPTY, each exported order's verified
    /// objects in `dest/{name}/` with their recorded sizes, an EMPTY order's metadata JSON
    /// there, the bucket empty but for the tracking document, every description exported once,
    /// and nothing left in the SQLite queue.
    async fn assert_complete(&self, name: &str, total: u64) {
        let status = self.wait_done(name).await;
        assert_eq!(status["total"], total, "{status}");
        let doc = self.json(&["show", name]).await;
        let dest = files(&self.env.dest);
        let mut exported = 0;
        for order in doc["orders"].as_array().unwrap() {
            let order_name = order["name"].as_str().unwrap();
            let state = order["status"]["state"].as_str().unwrap();
            let meta = format!("{name}/{order_name}.json");
            assert!(dest.contains_key(&meta), "{meta} missing: {dest:?}");
            match state {
                "EMPTY" => {}
                "CLEANED" => {
                    exported += 1;
                    let objects = order["status"]["objects"].as_array().unwrap();
                    assert!(objects.len() > 1, "{order}");
                    for o in objects {
                        let file = o["name"].as_str().unwrap().rsplit('/').next().unwrap();
                        assert_eq!(
                            dest.get(&format!("{name}/{file}")),
                            Some(&o["size"].as_u64().unwrap()),
                            "{file} in dest"
                        );
                    }
                }
                other => panic!("{order_name} ended {other}: {status}\n{}", self.logs()),
            }
        }
        assert!(exported > 0, "some orders have scenes: {status}");
        let bucket = files(&self.env.bucket);
        let left: Vec<_> = bucket
            .keys()
            .filter(|f| !f.starts_with("CEDAR_TRACKING/"))
            .collect();
        assert!(
            left.is_empty(),
            "export objects left in the bucket: {left:?}"
        );
        assert!(bucket.contains_key(&format!("CEDAR_TRACKING/{name}.json")));

        let stats = self.env.emulator.stats();
        assert_exported_once(&stats);
        assert_eq!(stats.exports_by_description.len(), exported);

        // The last clean job records CLEANED just before the queue acknowledges it: give the
        // acknowledgement a moment.
        let queue = &Queue::open(&format!("sqlite://{}", self.db.display()), NAMESPACE)
            .await
            .unwrap();
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(100),
            move || async move {
                let mut left = Vec::new();
                for stage in Stage::ALL {
                    let depth = queue.depth(stage).await.unwrap();
                    if depth != Depth::default() {
                        left.push((stage, depth));
                    }
                }
                let active = queue.active_count().await.unwrap();
                if left.is_empty() && active == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "left in the queue: {left:?}, {active} slots\n{}",
                        self.logs()
                    ))
                }
            },
        )
        .await;
    }
}

const LC08: &str = "LANDSAT/LC08/C02/T1_L2";
const LE07: &str = "LANDSAT/LE07/C02/T1_L2";

/// submit, then one worker, all on the SQLite file: the campaign completes like on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_completes_on_sqlite_without_redis() {
    let mut m = Machine::start(1.0).await;
    let name = m.submit(&four_tiles(LC08, "2021-10-31", "2MS")).await;
    assert!(m.db.exists(), "submit created the database file");
    let worker = m.spawn_worker();
    m.assert_complete(&name, 8).await;
    m.kill_worker(worker);
}

/// A worker SIGKILLed mid-run: its leases expire, a second worker takes its jobs from the same
/// file, and every tile-period is still exported exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_on_sqlite_loses_and_duplicates_nothing() {
    let mut m = Machine::start(2.0).await;
    let name = m
        .submit(&four_tiles(&format!("{LC08},{LE07}"), "2021-12-31", "2MS"))
        .await;
    let doomed = m.spawn_worker();
    m.wait_stats(|s| s.requests.get("image.export").copied().unwrap_or(0) >= 4)
        .await;
    m.kill_worker(doomed);
    assert!(
        m.env.emulator.stats().succeeded_by_description.len() < 24,
        "killed mid-run"
    );
    m.spawn_worker();
    m.assert_complete(&name, 24).await;
}

/// SIGTERM with a drain shorter than the work in hand: what the drain did not finish is handed
/// back, due at once for another worker, instead of waiting out the 60 s lease.
#[tokio::test]
async fn a_stopped_worker_hands_back_what_it_did_not_finish() {
    let m = Machine::start(60.0).await;
    m.submit(&four_tiles(LC08, "2021-10-31", "2MS")).await;
    // One EE request a second: most exports wait for the rate window, holding their leases.
    let cmd = m.command(&[
        "worker",
        "--ee-requests-per-second",
        "1",
        "--lease-secs",
        "60",
        "--drain-secs",
        "1",
    ]);
    let mut worker = Process::spawn(cmd, m.env.path("worker.log"));
    let queue = Queue::open(&format!("sqlite://{}", m.db.display()), NAMESPACE)
        .await
        .unwrap();
    let q = &queue;
    wait_until(DEADLINE, Duration::from_millis(100), move || async move {
        let d = q.depth(Stage::Export).await.unwrap();
        if d.leased >= 2 {
            Ok(())
        } else {
            Err(format!("{d:?}"))
        }
    })
    .await;
    let pid = worker.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_until(DEADLINE, Duration::from_millis(100), || {
        let gone = worker.exited();
        async move {
            if gone {
                Ok(())
            } else {
                Err("still draining".to_owned())
            }
        }
    })
    .await;
    let d = queue.depth(Stage::Export).await.unwrap();
    assert_eq!(d.leased, 0, "handed back: {d:?}\n{}", worker.log());
    assert!(d.due_now >= 2, "{d:?}");
    assert!(
        worker
            .log()
            .contains("handed back the jobs the drain did not finish"),
        "{}",
        worker.log()
    );
}
