//! Single-machine mode end to end: no Redis anywhere. The real `cedar` binary runs `submit` and
//! `worker` with `[queue] url = "sqlite:///…/cedar.db"` against the in-process EE emulator, a
//! local directory as the export bucket and another as the destination; then a worker is
//! SIGKILLed mid-run and another one finishes the campaign from the same file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedar::emulator::{self, EmulatorOptions, RunningEmulator, Stats};
use cedar::queue::{Depth, Queue, Stage};
use object_store::local::LocalFileSystem;
use serde_json::Value;

const BUCKET: &str = "cedar-single-bucket";
const NAMESPACE: &str = "single";
const DEADLINE: Duration = Duration::from_secs(120);

/// One test's emulator, folders, database file and worker processes.
struct Machine {
    emulator: RunningEmulator,
    dir: tempfile::TempDir,
    config: PathBuf,
    db: PathBuf,
    workers: Vec<Option<Child>>,
}

impl Machine {
    async fn start(task_seconds: f64) -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, dest) = (dir.path().join("bucket"), dir.path().join("dest"));
        std::fs::create_dir_all(&bucket).unwrap();
        std::fs::create_dir_all(&dest).unwrap();
        let emulator = emulator::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(LocalFileSystem::new_with_prefix(&bucket).unwrap()),
            EmulatorOptions {
                bucket: Some(BUCKET.to_owned()),
                task_seconds,
                max_concurrent_exports: 8,
                bytes_per_pixel: 1.0 / 4096.0,
                ..EmulatorOptions::default()
            },
        )
        .await
        .unwrap();
        let db = dir.path().join("state").join("cedar.db");
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        let config = dir.path().join("cedar.toml");
        // An absolute path: sqlite:// + /tmp/… = sqlite:///tmp/….
        std::fs::write(
            &config,
            format!(
                r#"[earthengine]
project = "cedar-e2e"
endpoint = "{endpoint}"
credentials = "none"
timeout_secs = 10

[queue]
url = "sqlite://{db}"
namespace = "{NAMESPACE}"

[export]
bucket = "{BUCKET}"
file_dimensions = 2048

[store]
url = "file://{bucket}"

[download]
dest = "{dest}"

[metrics]
listen = "127.0.0.1:0"
"#,
                endpoint = emulator.url(),
                db = db.display(),
                bucket = bucket.display(),
                dest = dest.display(),
            ),
        )
        .unwrap();
        Machine {
            emulator,
            dir,
            config,
            db,
            workers: Vec::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cedar"));
        cmd.current_dir(self.dir.path())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("CEDAR_CONFIG")
            .env("CEDAR_LOG", "info");
        for (k, _) in std::env::vars() {
            if k.starts_with("CEDAR__") {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// Runs a command to completion without blocking the emulator's runtime.
    async fn cedar(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = tokio::process::Command::from(self.command(args))
            .output()
            .await
            .expect("run cedar");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn json(&self, args: &[&str]) -> Value {
        let (code, out, err) = self.cedar(args).await;
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

    fn log(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("worker-{n}.log"))
    }

    fn spawn_worker(&mut self) -> usize {
        let n = self.workers.len();
        let log = std::fs::File::create(self.log(n)).unwrap();
        let child = self
            .command(&[
                "worker",
                "--poll-interval-secs",
                "1",
                "--lease-secs",
                "5",
                "--drain-secs",
                "5",
            ])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn cedar worker");
        self.workers.push(Some(child));
        n
    }

    /// SIGKILL: no drain, no hand-back; the leases it holds simply expire.
    fn kill_worker(&mut self, n: usize) {
        if let Some(mut child) = self.workers[n].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    async fn wait_done(&self, name: &str) -> Value {
        let until = Instant::now() + DEADLINE;
        loop {
            let status = self.json(&["status", name, "--json"]).await;
            if status["done"] == Value::Bool(true) {
                return status;
            }
            assert!(
                Instant::now() < until,
                "{name} not done: {status}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn wait_stats(&self, cond: impl Fn(&Stats) -> bool) {
        let until = Instant::now() + DEADLINE;
        while !cond(&self.emulator.stats()) {
            assert!(Instant::now() < until, "{:#?}", self.emulator.stats());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        (0..self.workers.len())
            .map(|n| {
                let log = std::fs::read_to_string(self.log(n)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- worker {n} ---\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                )
            })
            .collect()
    }

    fn files(root: &Path) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    out.insert(rel, path.metadata().unwrap().len());
                }
            }
        }
        out
    }

    /// Checks a finished campaign: every order CLEANED or EMPTY, each exported order's verified
    /// objects in `dest/{name}/` with their recorded sizes, an EMPTY order's metadata JSON
    /// there, the bucket empty but for the tracking document, every description exported once,
    /// and nothing left in the SQLite queue.
    async fn assert_complete(&self, name: &str, total: u64) {
        let status = self.wait_done(name).await;
        assert_eq!(status["total"], total, "{status}");
        let doc = self.json(&["show", name]).await;
        let dest = Self::files(&self.dir.path().join("dest"));
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
        let bucket = Self::files(&self.dir.path().join("bucket"));
        let left: Vec<_> = bucket
            .keys()
            .filter(|f| !f.starts_with("CEDAR_TRACKING/"))
            .collect();
        assert!(
            left.is_empty(),
            "export objects left in the bucket: {left:?}"
        );
        assert!(bucket.contains_key(&format!("CEDAR_TRACKING/{name}.json")));

        let stats = self.emulator.stats();
        let twice: Vec<_> = stats
            .exports_by_description
            .iter()
            .filter(|(_, n)| **n != 1)
            .collect();
        assert!(twice.is_empty(), "exported more than once: {twice:?}");
        assert_eq!(stats.exports_by_description.len(), exported);

        // The last clean job records CLEANED just before the queue acknowledges it: give the
        // acknowledgement a moment.
        let queue = Queue::open(&format!("sqlite://{}", self.db.display()), NAMESPACE)
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let mut left = Vec::new();
            for stage in Stage::ALL {
                let depth = queue.depth(stage).await.unwrap();
                if depth != Depth::default() {
                    left.push((stage, depth));
                }
            }
            let active = queue.active_count().await.unwrap();
            if left.is_empty() && active == 0 {
                break;
            }
            assert!(
                Instant::now() < until,
                "left in the queue: {left:?}, {active} slots\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().filter_map(Option::as_mut) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

const LC08: &str = "LANDSAT/LC08/C02/T1_L2";
const LE07: &str = "LANDSAT/LE07/C02/T1_L2";

/// submit, then one worker, all on the SQLite file: the campaign completes like on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_completes_on_sqlite_without_redis() {
    let mut m = Machine::start(1.0).await;
    let name = m
        .submit(&[
            "--collection",
            LC08,
            "--rows",
            "10-11",
            "--cols",
            "14-15",
            "--start",
            "2021-07-01",
            "--end",
            "2021-10-31",
            "--freq",
            "2MS",
        ])
        .await;
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
        .submit(&[
            "--collection",
            &format!("{LC08},{LE07}"),
            "--rows",
            "10-11",
            "--cols",
            "14-15",
            "--start",
            "2021-07-01",
            "--end",
            "2021-12-31",
            "--freq",
            "2MS",
        ])
        .await;
    let doomed = m.spawn_worker();
    m.wait_stats(|s| s.requests.get("image.export").copied().unwrap_or(0) >= 4)
        .await;
    m.kill_worker(doomed);
    assert!(
        m.emulator.stats().succeeded_by_description.len() < 24,
        "killed mid-run"
    );
    m.spawn_worker();
    m.assert_complete(&name, 24).await;
}
