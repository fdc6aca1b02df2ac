//! The daemon end to end: `cedar submit` and `cedar worker` processes (the real binary, so a
//! worker can be SIGKILLed) against a real Redis, the in-process EE emulator on port 0, a local
//! directory as the export bucket and another as the destination.
//!
//! Each test gets its own [`Campaign`]: an emulator, a Redis namespace, a bucket, a destination
//! and a configuration file. Dropping it kills the workers it started and deletes its Redis keys
//! (SCAN + DEL on the namespace, never FLUSHALL). `CEDAR_TEST_REDIS` overrides the Redis server
//! (default `redis://127.0.0.1:6379`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedar::config::{Config, Settings};
use cedar::emulator::{
    ApiMethod, DuplicateRequest, EmulatorOptions, Fault, RunningEmulator, Stats,
};
use cedar::order::{Piece, piece_object, tile_pieces};
use cedar::queue::Stage;
use serde_json::Value;

use crate::support::{
    Emulated, FAST_WORKER, LC08, Namespace, Process, Run, TestConfig, assert_exported_once,
    cedar_command, configured, files, four_tiles, one_tile, redis_connection, redis_url, run,
    wait_until,
};

const LC09: &str = "LANDSAT/LC09/C02/T1_L2";
const LE07: &str = "LANDSAT/LE07/C02/T1_L2";
/// The bucket name the configuration exports to and the emulator insists on.
const BUCKET: &str = "cedar-e2e-bucket";
/// Pieces of 2048 pixels: a 5000-pixel tile is 3×3 pieces, the last row and column 904 wide.
const FILE_DIMENSIONS: u32 = 2048;
/// How long any campaign in these tests may take.
const DEADLINE: Duration = Duration::from_secs(120);

/// One test's isolated bundle: emulator, Redis namespace, bucket, destination, configuration,
/// and the worker processes started for it.
struct Campaign {
    /// Dropped first: the workers are gone before the namespace's keys are deleted, so nothing
    /// writes into it any more.
    workers: Vec<Process>,
    namespace: Namespace,
    emulator: RunningEmulator,
    config: PathBuf,
    bucket: PathBuf,
    dest: PathBuf,
    dir: tempfile::TempDir,
}

impl Campaign {
    /// Starts an emulator with `options` (bucket, file sizes and a higher export concurrency
    /// filled in unless given) and writes the configuration that points cedar at it.
    async fn start(test: &str, options: EmulatorOptions) -> Campaign {
        let env = Emulated::start(EmulatorOptions {
            bucket: Some(BUCKET.to_owned()),
            ..options
        })
        .await;
        let namespace = Namespace::new(&format!("daemon:{test}"));
        let config = TestConfig {
            file_dimensions: Some(FILE_DIMENSIONS),
            metrics_listen: None,
            ..env.config(BUCKET, &redis_url(), &namespace.name)
        }
        .write(env.path("cedar.toml"));
        let Emulated {
            emulator,
            bucket,
            dest,
            dir,
        } = env;
        Campaign {
            workers: Vec::new(),
            namespace,
            emulator,
            config,
            bucket,
            dest,
            dir,
        }
    }

    /// The emulator options every test starts from: fast tasks, eight running at once.
    fn options() -> EmulatorOptions {
        EmulatorOptions {
            task_seconds: 1.0,
            max_concurrent_exports: 8,
            ..EmulatorOptions::default()
        }
    }

    /// A `cedar` command with this campaign's configuration and none of the caller's.
    fn command(&self, args: &[&str]) -> Command {
        configured(cedar_command(), self.dir.path(), &self.config, args)
    }

    /// Runs a `cedar` command to completion without blocking the runtime the emulator runs on.
    async fn cedar(&self, args: &[&str]) -> Run {
        self.cedar_env(args, &[]).await
    }

    /// [`Campaign::cedar`] with environment overrides (`CEDAR__SECTION__KEY`).
    async fn cedar_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        run(cmd).await
    }

    /// `cedar submit ARGS --json`; returns the tracking name.
    async fn submit(&self, args: &[&str]) -> String {
        let mut all = vec!["submit", "--json"];
        all.extend_from_slice(args);
        let run = self.cedar(&all).await;
        assert_eq!(run.code, Some(0), "submit failed: {run:?}");
        run.json()["tracking_name"]
            .as_str()
            .expect("tracking_name")
            .to_owned()
    }

    /// Starts a `cedar` worker with fast polling and short leases; returns its index.
    fn spawn_worker(&mut self) -> usize {
        let n = self.workers.len();
        let cmd = self.command(FAST_WORKER);
        let log = self.dir.path().join(format!("worker-{n}.log"));
        self.workers.push(Process::spawn(cmd, log));
        n
    }

    /// Jobs leased right now by worker `n` (lease owners are named `{stage}-{host}-{pid}-…`).
    async fn leases_of(&self, n: usize) -> usize {
        let pid = self.workers[n].id().expect("a live worker");
        self.stage_hashes("HVALS", "owner")
            .await
            .into_iter()
            .flat_map(|(_, owners)| owners)
            .filter(|o| o.contains(&format!("-{pid}-")))
            .count()
    }

    /// `cmd` (`HKEYS` or `HVALS`) of every stage's queue hash `{namespace}:{stage}:{hash}`.
    async fn stage_hashes(&self, cmd: &str, hash: &str) -> Vec<(Stage, Vec<String>)> {
        let mut conn = redis_connection().await;
        let mut out = Vec::new();
        for stage in Stage::ALL {
            let values: Vec<String> = redis::cmd(cmd)
                .arg(format!("{}:{}:{hash}", self.namespace.name, stage.name()))
                .query_async(&mut conn)
                .await
                .unwrap();
            out.push((stage, values));
        }
        out
    }

    /// SIGKILLs worker `n`: no drain, no hand-back, its leases simply expire.
    fn kill_worker(&mut self, n: usize) {
        self.workers[n].kill();
    }

    /// `status --json` once: (the JSON, the exit code).
    async fn status(&self, name: &str) -> (Value, Option<i32>) {
        let run = self.cedar(&["status", name, "--json"]).await;
        assert!(
            matches!(run.code, Some(0 | 3 | 4 | 5)),
            "status failed: {run:?}"
        );
        (run.json(), run.code)
    }

    /// EE starts the next `n` `image:export` tasks but their answers are lost (503): a retry
    /// must find the task it started, not start a second one.
    fn lose_export_answers(&self, n: u32) {
        self.emulator.inject(Fault::NextRequests {
            method: Some(ApiMethod::ImageExport),
            count: n,
            status: 503,
            message: None,
            processed: true,
        });
    }

    /// Submits the eight orders of the EE-behaviour tests (four tiles × two quarters of LC08),
    /// waits until they end and checks every one ended CLEANED; returns the submission's name.
    async fn eight_cleaned(&self) -> String {
        let name = self.submit(&four_tiles(LC08, "2021-12-31", "3MS")).await;
        let (status, code) = self.wait_done(&name).await;
        assert_eq!(code, Some(0), "{status}");
        assert_eq!(counts(&status), BTreeMap::from([("CLEANED".to_owned(), 8)]));
        name
    }

    /// Polls `status --json` until the submission is done; returns the last answer.
    async fn wait_done(&self, name: &str) -> (Value, Option<i32>) {
        wait_until(DEADLINE, Duration::from_millis(500), move || async move {
            let (json, code) = self.status(name).await;
            if json["done"] == Value::Bool(true) {
                Ok((json, code))
            } else {
                Err(format!("{name} not done: {json}"))
            }
        })
        .await
    }

    /// Polls `cond` on the emulator's stats until it holds.
    async fn wait_stats(&self, what: &str, cond: impl Fn(&Stats) -> bool) -> Stats {
        let cond = &cond;
        wait_until(DEADLINE, Duration::from_millis(100), move || async move {
            let stats = self.emulator.stats();
            if cond(&stats) {
                Ok(stats)
            } else {
                Err(format!("{what}: {stats:#?}"))
            }
        })
        .await
    }

    /// `cedar show NAME`: the tracking document as Redis renders it now.
    async fn show(&self, name: &str) -> Value {
        let run = self.cedar(&["show", name]).await;
        assert_eq!(run.code, Some(0), "show failed: {run:?}");
        run.json()
    }

    /// The settings the binary reads, for the grid and naming.
    fn settings(&self) -> Settings {
        Config::load(Some(&self.config), std::iter::empty::<(String, String)>())
            .unwrap()
            .validate()
            .unwrap()
    }

    fn bucket_files(&self) -> BTreeMap<String, u64> {
        files(&self.bucket)
    }

    fn dest_files(&self) -> BTreeMap<String, u64> {
        files(&self.dest)
    }

    /// The files in submission `tracking`'s folder of dest (relative to it), with their sizes.
    fn dest_files_of(&self, tracking: &str) -> BTreeMap<String, u64> {
        self.dest_files()
            .into_iter()
            .filter_map(|(f, n)| Some((f.strip_prefix(&format!("{tracking}/"))?.to_owned(), n)))
            .collect()
    }

    /// Jobs still in the queues, per `{stage}:{part}` (and `ee:active`), zeros left out.
    async fn queued(&self) -> BTreeMap<String, u64> {
        let mut conn = redis_connection().await;
        let mut out = BTreeMap::new();
        for stage in Stage::ALL {
            for (part, cmd) in [
                ("data", "HLEN"),
                ("due", "ZCARD"),
                ("leased", "ZCARD"),
                ("dead", "HLEN"),
                ("backlog", "ZCARD"),
            ] {
                let n: u64 = redis::cmd(cmd)
                    .arg(format!("{}:{}:{part}", self.namespace.name, stage.name()))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if n > 0 {
                    out.insert(format!("{}:{part}", stage.name()), n);
                }
            }
        }
        let active: u64 = redis::cmd("SCARD")
            .arg(format!("{}:ee:active", self.namespace.name))
            .query_async(&mut conn)
            .await
            .unwrap();
        if active > 0 {
            out.insert("ee:active".to_owned(), active);
        }
        out
    }

    /// Job ids of `tracking` still stored in any stage.
    /// The jobs of `tracking` and the queue keys left, once the last acknowledgements arrived:
    /// `status` says done when the last order is recorded, just before its job is acked.
    async fn drained(&self, tracking: &str) -> (Vec<String>, BTreeMap<String, u64>) {
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(100),
            || async {
                let left = (self.jobs_of(tracking).await, self.queued().await);
                if left.0.is_empty() && left.1.is_empty() {
                    Ok(left)
                } else {
                    Err(format!("{left:?}"))
                }
            },
        )
        .await
    }

    async fn jobs_of(&self, tracking: &str) -> Vec<String> {
        self.stage_hashes("HKEYS", "data")
            .await
            .into_iter()
            .flat_map(|(stage, ids)| {
                ids.into_iter()
                    .filter(|id| id.starts_with(&format!("{tracking}|")))
                    .map(move |id| format!("{}:{id}", stage.name()))
            })
            .collect()
    }

    /// The tracking document the workers published in the bucket.
    fn published(&self, name: &str) -> Option<Value> {
        let path = self.bucket.join(format!("CEDAR_TRACKING/{name}.json"));
        let body = std::fs::read(path).ok()?;
        serde_json::from_slice(&body).ok()
    }
}

/// `{state: count}` of a `status --json` answer.
fn counts(status: &Value) -> BTreeMap<String, u64> {
    status["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

/// `{state: count}` of a tracking document's orders.
fn document_counts(doc: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for o in doc["orders"].as_array().unwrap() {
        *out.entry(o["status"]["state"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    out
}

fn state(order: &Value) -> &str {
    order["status"]["state"].as_str().unwrap()
}

/// An order's name, which is also its EE task description.
fn order_name(order: &Value) -> &str {
    order["name"].as_str().unwrap()
}

/// The EE requests the emulator answered, all methods together.
fn ee_requests(stats: &Stats) -> u64 {
    stats
        .requests
        .iter()
        .filter(|(m, _)| m.as_str() != "token")
        .map(|(_, n)| n)
        .sum()
}

/// Checks that every exported order of `doc` is in `{dest}/{tracking}/` exactly as EE wrote it:
/// every piece the tile grid predicts, each a TIFF of the piece's pixel size and the image's
/// bands and of the size the emulator recorded, plus the metadata JSON; and that `dest` holds nothing
/// else for this tracking. Returns the number of files checked.
fn assert_downloaded(campaign: &Campaign, doc: &Value, tracking: &str) -> usize {
    let settings = campaign.settings();
    let files = campaign.dest_files();
    let mut expected = BTreeSet::new();
    for order in doc["orders"].as_array().unwrap() {
        let name = order_name(order);
        match state(order) {
            "CLEANED" => {}
            "EMPTY" => {
                if expected.insert(format!("{tracking}/{name}.json")) {
                    let meta: Value = serde_json::from_slice(
                        &std::fs::read(campaign.dest.join(format!("{tracking}/{name}.json")))
                            .unwrap(),
                    )
                    .unwrap();
                    assert_eq!(meta["task"]["status"]["state"], "EMPTY", "{name}");
                }
                continue;
            }
            _ => continue,
        }
        let index = &order["status"];
        let tile = {
            // The tile index is recorded in the metadata JSON beside the pieces.
            let meta_path = campaign.dest.join(format!("{tracking}/{name}.json"));
            let meta: Value = serde_json::from_slice(
                &std::fs::read(&meta_path)
                    .unwrap_or_else(|e| panic!("{}: {e}", meta_path.display())),
            )
            .unwrap();
            let [row, col] = [0, 1].map(|i| meta["tile"]["index"][i].as_u64().unwrap() as u32);
            let bands = meta["image"]["band_order"].as_array().unwrap().len() as f64;
            assert!(bands > 0.0, "{name}: no bands in {meta}");
            (settings.grid.tile(row, col).unwrap(), bands)
        };
        let (tile, bands) = tile;
        expected.insert(format!("{tracking}/{name}.json"));
        let base = format!("{tracking}/{name}");
        let objects = index["objects"].as_array().unwrap();
        let recorded: BTreeMap<String, u64> = objects
            .iter()
            .map(|o| {
                let n = o["name"].as_str().unwrap();
                (
                    n.rsplit('/').next().unwrap().to_owned(),
                    o["size"].as_u64().unwrap(),
                )
            })
            .collect();
        let pieces = tile_pieces(&tile, FILE_DIMENSIONS);
        assert_eq!(pieces.len(), 9, "a 5000-pixel tile is 3×3 pieces of 2048");
        // The metadata JSON and every piece, nothing else, is what clean may delete.
        assert_eq!(objects.len(), pieces.len() + 1, "{name}: {objects:?}");
        assert_eq!(recorded.len(), objects.len(), "{name}: each object once");
        for piece in pieces {
            let file = piece_object(&base, piece);
            let (w, h) = match piece {
                Piece::At { y, x } => (
                    (u64::from(tile.width) - x).min(u64::from(FILE_DIMENSIONS)),
                    (u64::from(tile.height) - y).min(u64::from(FILE_DIMENSIONS)),
                ),
                Piece::Whole => (u64::from(tile.width), u64::from(tile.height)),
            };
            let got = files
                .get(&file)
                .unwrap_or_else(|| panic!("{file} missing from dest"));
            let short = file.rsplit('/').next().unwrap();
            assert_eq!(recorded.get(short), Some(got), "{file} as recorded");
            let bytes = std::fs::read(campaign.dest.join(&file)).unwrap();
            let mut tiff = tiff::decoder::Decoder::new(std::io::Cursor::new(bytes))
                .unwrap_or_else(|e| panic!("{file} is not a TIFF: {e}"));
            assert_eq!(
                tiff.dimensions().unwrap(),
                (w as u32, h as u32),
                "{file}: size"
            );
            let samples = tiff.get_tag_u32(tiff::tags::Tag::SamplesPerPixel).unwrap();
            assert_eq!(f64::from(samples), bands, "{file}: bands");
            expected.insert(file);
        }
    }
    let ours: BTreeSet<String> = files
        .keys()
        .filter(|f| f.starts_with(&format!("{tracking}/")))
        .cloned()
        .collect();
    assert_eq!(ours, expected, "dest holds exactly the expected files");
    ours.len()
}

/// The bucket holds nothing but tracking documents.
///
/// The bucket here is a folder written through object_store's `LocalFileSystem`, which writes
/// each object to a staging file `{name}#{n}` and renames it into place: a worker SIGKILLed in
/// the middle of a write leaves that staging file behind. A Cloud Storage bucket has no such
/// files (an interrupted upload never becomes an object), so they are not objects left over.
fn assert_bucket_empty(campaign: &Campaign) {
    let staging = |f: &str| {
        f.rsplit_once('#')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let left: Vec<String> = campaign
        .bucket_files()
        .into_keys()
        .filter(|f| !f.starts_with("CEDAR_TRACKING/") && !staging(f))
        .collect();
    assert!(
        left.is_empty(),
        "export objects left in the bucket: {left:?}"
    );
}

/// 3 collections × 4 tiles × 3 periods with two workers: every order ends CLEANED or EMPTY,
/// every piece is in dest with the size EE wrote, the bucket is empty, each tile-period was
/// exported once, and the published tracking document agrees with `status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_runs_to_completion_with_two_workers() {
    let mut c = Campaign::start("full", Campaign::options()).await;
    c.spawn_worker();
    c.spawn_worker();
    let started = Instant::now();
    let name = c
        .submit(&four_tiles(
            &format!("{LC08},{LC09},{LE07}"),
            "2021-12-31",
            "2MS",
        ))
        .await;
    let (status, code) = c.wait_done(&name).await;
    let elapsed = started.elapsed();
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["total"], 36);
    let by_state = counts(&status);
    let cleaned = by_state.get("CLEANED").copied().unwrap_or(0);
    let empty = by_state.get("EMPTY").copied().unwrap_or(0);
    assert_eq!(cleaned + empty, 36, "{status}");
    assert!(cleaned >= 20, "most orders have scenes: {status}");
    // Landsat 9 has no scenes before 2021-10-31, so its July–August orders are all EMPTY.
    assert!(empty >= 4, "{status}");

    let doc = c.show(&name).await;
    let lc09_july = doc["orders"]
        .as_array()
        .unwrap()
        .iter()
        .zip(
            // Orders come collection-major, then tile, then period.
            [LC08, LC09, LE07]
                .iter()
                .flat_map(|c| std::iter::repeat_n(*c, 12)),
        )
        .filter(|(o, coll)| *coll == LC09 && order_name(o).contains("2021-07-01"))
        .map(|(o, _)| state(o).to_owned())
        .collect::<Vec<_>>();
    assert_eq!(lc09_july, vec!["EMPTY"; 4], "LC09 before its first scene");

    let files = assert_downloaded(&c, &doc, &name);
    assert_bucket_empty(&c);

    let stats = c.emulator.stats();
    assert_exported_once(&stats);
    assert_eq!(stats.exports_by_description.len() as u64, cleaned);
    assert_eq!(stats.requests.get("image.export"), Some(&cleaned));
    let requests = ee_requests(&stats);
    let per = requests as f64 / 36.0;
    println!(
        "36 tile-periods ({cleaned} exported, {empty} empty), {files} files in {elapsed:.1?}: \
         {requests} EE requests = {per:.2} per completed tile-period \
         ({:.2} per export); requests {:?}",
        requests as f64 / cleaned as f64,
        stats.requests
    );
    assert!(
        per <= 2.2,
        "{per:.2} EE requests per tile-period: {stats:#?}"
    );

    // The workers re-publish the document a few seconds after the last change.
    let (c_ref, name_ref, by_state_ref) = (&c, &name, &by_state);
    let published = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        move || async move {
            let doc = c_ref.published(name_ref);
            match doc.filter(|d| document_counts(d) == *by_state_ref) {
                Some(doc) => Ok(doc),
                None => Err(format!(
                    "published document never agreed with status {by_state_ref:?}: {:?}",
                    c_ref.published(name_ref).map(|d| document_counts(&d))
                )),
            }
        },
    )
    .await;
    let keys: Vec<&str> = published
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "program",
            "submission",
            "tracking",
            "orders",
            "metadata",
            "eecu_seconds"
        ]
    );
    assert_eq!(published["tracking"]["name"], name.as_str());
    assert_eq!(published["orders"].as_array().unwrap().len(), 36);
    // The extra key is the sum of the EECU each ended task used, recorded on its order.
    let per_order: f64 = published["orders"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["status"]["eecu_seconds"].as_f64())
        .sum();
    let total = published["eecu_seconds"].as_f64().unwrap();
    assert!(total > 0.0, "{total}");
    assert!((total - per_order).abs() < 1e-6, "{total} vs {per_order}");
    assert_eq!(c.drained(&name).await.1, BTreeMap::new(), "queues drained");
}

/// Each submission's EE calls carry its workload tag: the one given with `--workload-tag`, else
/// its tracking name made to fit EE's rule (here simply lowercased); the tag is in its document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_campaign_tags_its_ee_calls_with_its_workload_tag() {
    let mut c = Campaign::start("tags", Campaign::options()).await;
    let mut tagged = four_tiles(LC08, "2021-08-31", "2MS");
    tagged.extend(["--workload-tag", "conus-l8"]);
    let first = c.submit(&tagged).await;
    // Tracking names carry the submission time to the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = c.submit(&four_tiles(LE07, "2021-08-31", "2MS")).await;
    c.spawn_worker();
    let mut exported = BTreeMap::new();
    let mut computed = BTreeMap::new();
    for (name, tag) in [
        (&first, "conus-l8".to_owned()),
        (&second, second.to_lowercase()),
    ] {
        let (status, code) = c.wait_done(name).await;
        assert_eq!(code, Some(0), "{status}");
        let cleaned = counts(&status).get("CLEANED").copied().unwrap_or(0);
        assert!(cleaned > 0, "{status}");
        exported.insert(tag.clone(), cleaned);
        // One scene listing per order, empty or not.
        computed.insert(tag.clone(), status["total"].as_u64().unwrap());
        assert_eq!(c.show(name).await["tracking"]["workload_tag"], tag.as_str());
    }
    let stats = c.emulator.stats();
    assert_eq!(stats.exports_by_workload_tag, exported, "{stats:#?}");
    assert_eq!(stats.computes_by_workload_tag, computed, "{stats:#?}");
}

/// Empty tile-periods: recorded EMPTY with a metadata JSON by default, without one with
/// `--no-save-empty-metadata`, and failed with a clear message with `--error-if-empty`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_orders_are_recorded_or_failed_as_asked() {
    let mut c = Campaign::start("empty", Campaign::options()).await;
    c.spawn_worker();
    // Landsat 9's first scene is on 2021-10-31: these months have none anywhere.
    let tiles = ["--tile", "10,14", "--tile", "11,15"];
    let submit = |start: &'static str, end: &'static str, flags: &'static [&'static str]| {
        let mut args = vec!["--collection", LC09, "--start", start, "--end", end];
        args.extend_from_slice(&tiles);
        args.extend_from_slice(flags);
        args
    };
    let saved = c.submit(&submit("2021-07-01", "2021-08-01", &[])).await;
    let unsaved = c
        .submit(&submit(
            "2021-08-01",
            "2021-09-01",
            &["--no-save-empty-metadata"],
        ))
        .await;
    let failing = c
        .submit(&submit("2021-09-01", "2021-10-01", &["--error-if-empty"]))
        .await;

    let (status, code) = c.wait_done(&saved).await;
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(counts(&status), BTreeMap::from([("EMPTY".to_owned(), 2)]));
    let doc = c.show(&saved).await;
    let files = assert_downloaded(&c, &doc, &saved);
    assert_eq!(files, 2, "one metadata JSON per empty order");

    let (status, code) = c.wait_done(&unsaved).await;
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(counts(&status), BTreeMap::from([("EMPTY".to_owned(), 2)]));
    let written = c.dest_files_of(&unsaved);
    assert!(written.is_empty(), "{written:?}");

    let (status, code) = c.wait_done(&failing).await;
    assert_eq!(code, Some(4), "a failed order fails status: {status}");
    assert_eq!(counts(&status), BTreeMap::from([("FAILED".to_owned(), 2)]));
    let run = c.cedar(&["status", &failing]).await;
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stdout.contains("FAILED=2"), "{run:?}");
    let doc = c.show(&failing).await;
    for order in doc["orders"].as_array().unwrap() {
        let error = order["status"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("no LANDSAT/LC09/C02/T1_L2 scenes for tile")
                && error.contains("--error-if-empty"),
            "{order}"
        );
    }
    let written = c.dest_files_of(&failing);
    assert!(written.is_empty(), "{written:?}");

    let stats = c.emulator.stats();
    assert!(stats.exports_by_description.is_empty(), "{stats:#?}");
    assert_bucket_empty(&c);
    // Nothing waits to run; the failed orders' export jobs stay dead for `cedar retry`. The
    // order is recorded FAILED before the worker acknowledges the job, so wait for the ack.
    let want = BTreeMap::from([("export:data".to_owned(), 2), ("export:dead".to_owned(), 2)]);
    let c = &c;
    let got = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let want = want.clone();
        async move {
            let q = c.queued().await;
            if q == want {
                Ok(q)
            } else {
                Err(format!("{q:?}"))
            }
        }
    })
    .await;
    assert_eq!(got, want);
    assert_eq!(c.jobs_of(&failing).await.len(), 2);
}

/// Throttling and outages on a third of EE's answers, and exports that EE started although
/// their answer was lost: every order still completes, each exported exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_outages_are_retried_and_export_once() {
    let mut c = Campaign::start(
        "storm",
        EmulatorOptions {
            throttle_rate: 0.2,
            unavailable_rate: 0.15,
            seed: 7,
            ..Campaign::options()
        },
    )
    .await;
    // The first answers to image:export are lost after EE started the task: the retry must
    // get the same task back through its requestId, not a second one.
    c.lose_export_answers(3);
    c.spawn_worker();
    c.spawn_worker();
    let name = c.eight_cleaned().await;
    let stats = c.emulator.stats();
    let refused = stats.responses.get("429").copied().unwrap_or(0)
        + stats.responses.get("503").copied().unwrap_or(0);
    println!(
        "storm: {refused} of {} EE answers were 429/503; requests {:?}",
        ee_requests(&stats),
        stats.requests
    );
    assert!(refused >= 10, "the storm happened: {stats:#?}");
    assert!(
        stats.requests.get("image.export").copied().unwrap_or(0) > 8,
        "some exports were retried: {stats:#?}"
    );
    assert_eq!(stats.exports_by_description.len(), 8);
    assert_exported_once(&stats);
    let doc = c.show(&name).await;
    assert_downloaded(&c, &doc, &name);
    assert_bucket_empty(&c);
    assert_eq!(c.drained(&name).await.1, BTreeMap::new());
}

/// EE answers a repeated `requestId` with 409 ALREADY_EXISTS instead of the first operation
/// (Google does not document which): exports whose first answer was lost find their task in
/// `operations.list` and the campaign completes, each order exported once and none FAILED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_id_answered_already_exists_finds_the_running_task() {
    let mut c = Campaign::start(
        "conflict",
        EmulatorOptions {
            duplicate_request: DuplicateRequest::AlreadyExists,
            ..Campaign::options()
        },
    )
    .await;
    // EE starts these tasks but their answers are lost: each retry gets the 409.
    c.lose_export_answers(3);
    c.spawn_worker();
    let name = c.eight_cleaned().await;
    let stats = c.emulator.stats();
    assert_eq!(
        stats.responses.get("409").copied(),
        Some(3),
        "three retries met the conflict: {stats:#?}"
    );
    assert_eq!(stats.exports_by_description.len(), 8);
    assert_exported_once(&stats);
    let doc = c.show(&name).await;
    assert_downloaded(&c, &doc, &name);
    assert_bucket_empty(&c);
}

/// EE names operations with the project number in `operations.list` and `operations.get` but
/// with the project ID in the answer to `image:export`: the sweeper matches them by ID, so the
/// campaign completes from the list alone, none LOST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_named_with_the_project_number_are_matched_by_id() {
    let mut c = Campaign::start(
        "number",
        EmulatorOptions {
            project: Some("cedar-e2e".to_owned()),
            project_number: Some(123_456_789_012),
            ..Campaign::options()
        },
    )
    .await;
    c.spawn_worker();
    c.eight_cleaned().await;
    let stats = c.emulator.stats();
    // Matched by name, no order would be found in the list: each would need operations.get.
    let gets = stats.requests.get("operations.get").copied().unwrap_or(0);
    assert!(gets < 8, "the list answered for the orders: {stats:#?}");
    assert_exported_once(&stats);
}

/// EE drops finished tasks from `operations.list` at once: every order's end is learnt from
/// `operations.get` after its task left the list, and none is LOST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_operations_that_leave_the_list_are_looked_up_not_lost() {
    let mut c = Campaign::start(
        "unlisted",
        EmulatorOptions {
            list_retention_secs: Some(0.0),
            ..Campaign::options()
        },
    )
    .await;
    c.spawn_worker();
    let name = c.eight_cleaned().await;
    let stats = c.emulator.stats();
    let gets = stats.requests.get("operations.get").copied().unwrap_or(0);
    assert!(gets >= 8, "each end was learnt by name: {stats:#?}");
    assert_exported_once(&stats);
    let doc = c.show(&name).await;
    assert_downloaded(&c, &doc, &name);
}

/// Tasks leave `operations.list` once finished and `operations.get` answers 404 NOT_FOUND for
/// them: only then, with EE saying the operation does not exist, are orders LOST, and their
/// slots freed; nothing is downloaded from a task cedar cannot see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_lost_only_when_ee_says_its_operation_does_not_exist() {
    let mut c = Campaign::start(
        "lost",
        EmulatorOptions {
            list_retention_secs: Some(0.0),
            ..Campaign::options()
        },
    )
    .await;
    c.emulator.inject(Fault::NextRequests {
        method: Some(ApiMethod::OperationsGet),
        count: 10_000,
        status: 404,
        message: Some("Operation not found.".to_owned()),
        processed: false,
    });
    c.spawn_worker();
    let name = c.submit(&four_tiles(LC08, "2021-12-31", "3MS")).await;
    let (status, _) = c.wait_done(&name).await;
    assert_eq!(
        counts(&status),
        BTreeMap::from([("LOST".to_owned(), 8)]),
        "{status}"
    );
    let stats = c.emulator.stats();
    let gets = stats.requests.get("operations.get").copied().unwrap_or(0);
    assert!(
        gets >= 8,
        "each order was asked about by name before it was LOST: {stats:#?}"
    );
    assert_exported_once(&stats);
}

/// EE tasks that fail are reported with EE's message; `cedar retry` exports them again (a new
/// task each) and brings them home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tasks_are_reported_and_retry_brings_them_home() {
    const MESSAGE: &str = "User memory limit exceeded.";
    let mut c = Campaign::start("failed", Campaign::options()).await;
    c.emulator.inject(Fault::NextTasksFail {
        count: 3,
        message: Some(MESSAGE.to_owned()),
    });
    c.spawn_worker();
    let name = c.submit(&four_tiles(LC08, "2021-12-31", "3MS")).await;
    let (status, code) = c.wait_done(&name).await;
    assert_eq!(code, Some(4), "{status}");
    assert_eq!(
        counts(&status),
        BTreeMap::from([("CLEANED".to_owned(), 5), ("FAILED".to_owned(), 3)])
    );
    let doc = c.show(&name).await;
    let failed: BTreeSet<String> = doc["orders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| state(o) == "FAILED")
        .map(|o| {
            let error = o["status"]["error"].as_str().unwrap_or_default();
            assert!(error.contains(MESSAGE), "EE's message is shown: {o}");
            order_name(o).to_owned()
        })
        .collect();
    assert_eq!(failed.len(), 3);

    let run = c.cedar(&["retry", &name]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("3 orders re-queued"), "{run:?}");
    let (status, code) = c.wait_done(&name).await;
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(counts(&status), BTreeMap::from([("CLEANED".to_owned(), 8)]));

    let stats = c.emulator.stats();
    for (description, n) in &stats.exports_by_description {
        let want = if failed.contains(description) { 2 } else { 1 };
        assert_eq!(*n, want, "{description}: {stats:#?}");
    }
    assert_eq!(stats.exports_by_description.len(), 8);
    let doc = c.show(&name).await;
    for o in doc["orders"].as_array().unwrap() {
        let exports = o["status"]["exports"].as_u64().unwrap();
        let want = if failed.contains(order_name(o)) { 2 } else { 1 };
        assert_eq!(exports, want, "{o}");
    }
    assert_downloaded(&c, &doc, &name);
    assert_bucket_empty(&c);
    assert_eq!(c.drained(&name).await.1, BTreeMap::new());
}

/// `cedar cancel` on a running submission: every order CANCELLED, every EE task cancelled, and
/// nothing of the submission left in the queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_submission() {
    let mut c = Campaign::start(
        "cancel",
        EmulatorOptions {
            task_seconds: 600.0,
            max_concurrent_exports: 2,
            ..Campaign::options()
        },
    )
    .await;
    c.spawn_worker();
    let name = c.submit(&four_tiles(LC08, "2021-09-30", "3MS")).await;
    // Two tasks run, two wait in EE's queue.
    c.wait_stats("four tasks in EE", |s| {
        s.operations.get("RUNNING") == Some(&2) && s.operations.get("PENDING") == Some(&2)
    })
    .await;
    let (c_ref, name_ref) = (&c, &name);
    wait_until(DEADLINE, Duration::from_millis(200), move || async move {
        let (status, _) = c_ref.status(name_ref).await;
        let active: u64 = ["PENDING", "RUNNING"]
            .iter()
            .filter_map(|s| counts(&status).get(*s).copied())
            .sum();
        if active == 4 {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;

    let run = c.cedar(&["cancel", &name]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("4 orders cancelled"), "{run:?}");
    let stats = c
        .wait_stats("EE tasks cancelled", |s| {
            s.operations.get("CANCELLED") == Some(&4)
        })
        .await;
    assert_eq!(stats.requests.get("operations.cancel"), Some(&4));
    let (status, code) = c.status(&name).await;
    assert_eq!(code, Some(5), "cancelled orders are not complete: {status}");
    assert_eq!(
        counts(&status),
        BTreeMap::from([("CANCELLED".to_owned(), 4)])
    );
    let doc = c.show(&name).await;
    for o in doc["orders"].as_array().unwrap() {
        assert_eq!(o["status"]["error"], "cancelled by cedar cancel", "{o}");
    }
    // The poll jobs end once the sweep has seen each task end.
    let (jobs, queued) = c.drained(&name).await;
    assert_eq!((jobs, queued), (Vec::new(), BTreeMap::new()));
    // What the exports wrote before their tasks were cancelled (their metadata JSON) is gone.
    assert!(
        run.stderr
            .contains("4 exported objects of the cancelled orders deleted"),
        "{run:?}"
    );
    assert_bucket_empty(&c);
    // The poll jobs ran after the cancel (they saw each task end, deleted what was left and
    // ended): none brought its order back.
    let (status, _) = c.status(&name).await;
    assert_eq!(
        counts(&status),
        BTreeMap::from([("CANCELLED".to_owned(), 4)])
    );
    assert_eq!(c.queued().await, BTreeMap::new());
}

/// A task EE did not cancel (it answered the cancel with 503) runs on and writes its files: the
/// order stays CANCELLED, and its poll job, kept by `cancel`, deletes those files once EE says
/// the task ended, so nothing is stranded in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ends_after_its_cancel_leaves_nothing_in_the_bucket() {
    let mut c = Campaign::start(
        "cancel-late",
        EmulatorOptions {
            // Long enough that the task still runs when `cancel` comes.
            task_seconds: 6.0,
            ..Campaign::options()
        },
    )
    .await;
    c.spawn_worker();
    let name = c.submit(&one_tile("2021-09-30")).await;
    c.wait_stats("the task runs", |s| s.operations.get("RUNNING") == Some(&1))
        .await;
    c.emulator.inject(Fault::NextRequests {
        method: Some(ApiMethod::OperationsCancel),
        count: 1,
        status: 503,
        message: None,
        processed: false,
    });
    let run = c.cedar(&["cancel", &name]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("1 order cancelled"), "{run:?}");
    let stats = c
        .wait_stats("the task succeeded anyway", |s| {
            s.operations.get("SUCCEEDED") == Some(&1)
        })
        .await;
    assert!(stats.objects_written > 1, "{stats:#?}");
    let (jobs, queued) = c.drained(&name).await;
    assert_eq!((jobs, queued), (Vec::new(), BTreeMap::new()));
    assert_bucket_empty(&c);
    let (status, code) = c.status(&name).await;
    assert_eq!(code, Some(5), "{status}");
    assert_eq!(
        counts(&status),
        BTreeMap::from([("CANCELLED".to_owned(), 1)])
    );
    assert!(c.dest_files_of(&name).is_empty(), "nothing downloaded");
}

/// Cancelling one tile of a running campaign stops exactly its orders: its tasks in EE are
/// cancelled, its orders still held by the backlog's run never reach EE (the run hands them out
/// later and each gives its admission slot straight back), and the rest of the campaign runs to
/// completion with nothing left queued and nothing left in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_one_tile_stops_its_orders_and_the_rest_completes() {
    let mut c = Campaign::start(
        "cancel-tile",
        EmulatorOptions {
            // Long enough that tile 10,14's first two tasks still run when `cancel` comes.
            task_seconds: 6.0,
            ..Campaign::options()
        },
    )
    .await;
    // 4 tiles × 4 quarters; two EE tasks at a time, so most orders wait in the run.
    let name = c.submit(&four_tiles(LC08, "2022-06-30", "3MS")).await;
    let mut args = FAST_WORKER.to_vec();
    args.extend(["--max-active-exports", "2"]);
    let cmd = c.command(&args);
    let log = c.dir.path().join("worker-0.log");
    c.workers.push(Process::spawn(cmd, log));
    // The first two orders in the backlog's order are tile 10,14's first two quarters.
    c.wait_stats("two tasks in EE", |s| {
        s.operations.get("PENDING").unwrap_or(&0) + s.operations.get("RUNNING").unwrap_or(&0) == 2
    })
    .await;

    let run = c.cedar(&["cancel", &name, "--tile", "10,14"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("4 orders cancelled"), "{run:?}");

    let (status, code) = c.wait_done(&name).await;
    assert_eq!(code, Some(5), "some cancelled, none failed: {status}");
    assert_eq!(
        counts(&status),
        BTreeMap::from([("CANCELLED".to_owned(), 4), ("CLEANED".to_owned(), 12)])
    );
    let stats = c.emulator.stats();
    let (tile, rest): (Vec<_>, Vec<_>) = stats
        .exports_by_description
        .iter()
        .partition(|(d, _)| d.contains("h014v010"));
    assert!(
        tile.len() <= 2,
        "tile 10,14 reached EE past the cancel: {tile:?}"
    );
    assert_eq!(rest.len(), 12, "{rest:?}");
    assert!(
        stats.exports_by_description.values().all(|n| *n == 1),
        "{:?}",
        stats.exports_by_description
    );
    let doc = c.show(&name).await;
    for o in doc["orders"].as_array().unwrap() {
        let cancelled = order_name(o).contains("h014v010");
        assert_eq!(
            state(o),
            if cancelled { "CANCELLED" } else { "CLEANED" },
            "{o}"
        );
    }
    // No job, no admission slot, no export object is left behind.
    let (jobs, queued) = c.drained(&name).await;
    assert_eq!((jobs, queued), (Vec::new(), BTreeMap::new()));
    assert_bucket_empty(&c);
}

/// A worker SIGKILLed mid-run loses nothing and duplicates nothing: its leased jobs come back
/// after their lease and the other worker finishes every order, each exported and downloaded
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_and_duplicates_nothing() {
    let mut c = Campaign::start(
        "crash",
        EmulatorOptions {
            task_seconds: 2.0,
            ..Campaign::options()
        },
    )
    .await;
    let doomed = c.spawn_worker();
    let name = c
        .submit(&four_tiles(&format!("{LC08},{LE07}"), "2021-12-31", "2MS"))
        .await;
    // Let the first worker take jobs and start exports, then start the survivor and kill the
    // first while its EE tasks are still running and it holds leases.
    c.wait_stats("exports started", |s| {
        s.requests.get("image.export").copied().unwrap_or(0) >= 4
    })
    .await;
    c.spawn_worker();
    let c_ref = &c;
    let held = wait_until(DEADLINE, Duration::from_millis(10), move || async move {
        let held = c_ref.leases_of(doomed).await;
        if held > 0 {
            Ok(held)
        } else {
            Err(format!("worker {doomed} never held a lease"))
        }
    })
    .await;
    let queued = c.queued().await;
    c.kill_worker(doomed);
    println!("killed worker {doomed} holding {held} leases; queues {queued:?}");
    let at_kill = c.emulator.stats();
    assert!(
        at_kill.succeeded_by_description.len() < 24,
        "killed mid-run: {at_kill:#?}"
    );

    let (status, code) = c.wait_done(&name).await;
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["total"], 24);
    let stats = c.emulator.stats();
    assert_exported_once(&stats);
    let by_state = counts(&status);
    assert_eq!(
        stats.exports_by_description.len() as u64,
        by_state.get("CLEANED").copied().unwrap_or(0),
        "{status}"
    );
    let doc = c.show(&name).await;
    assert_downloaded(&c, &doc, &name);
    assert_bucket_empty(&c);
    let (jobs, queued) = c.drained(&name).await;
    assert_eq!(jobs, Vec::<String>::new());
    assert_eq!(queued, BTreeMap::new(), "nothing left in the queues");
}

/// The same items submitted twice: while the first submission runs, the second is refused and
/// leaves nothing behind; once the first has finished, the second is a campaign of its own — new
/// EE tasks (its own `requestId`), every order CLEANED, its files in its own folder — and the
/// first campaign's files stay as they were.
#[tokio::test]
async fn the_same_items_again_are_refused_while_running_then_run_as_their_own_campaign() {
    let mut c = Campaign::start("twice", Campaign::options()).await;
    let args = four_tiles(LC08, "2021-09-01", "2MS");
    let first = c.submit(&args).await;
    // No worker runs yet, so the first submission is certainly still running. Tracking names
    // carry the submission time to the second: a submit in the same second would only repeat
    // the first's name.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut again = vec!["submit", "--json"];
    again.extend_from_slice(&args);
    let refused = c.cedar(&again).await;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("still running") && refused.stderr.contains(&first),
        "{refused:?}"
    );
    let listed = c.cedar(&["list"]).await;
    assert_eq!(listed.stdout.lines().count(), 1, "nothing left: {listed:?}");
    // Nor can a running submission be cleaned away under its own feet.
    let clean = c.cedar(&["clean", &first]).await;
    assert_eq!(clean.code, Some(2), "{clean:?}");
    assert!(clean.stderr.contains("still running"), "{clean:?}");

    c.spawn_worker();
    let (status, code) = c.wait_done(&first).await;
    assert_eq!(code, Some(0), "{status}");
    let first_files = c.dest_files_of(&first);
    let cleaned = counts(&status).get("CLEANED").copied().unwrap_or(0);
    assert!(cleaned > 0 && !first_files.is_empty(), "{status}");

    // Tracking names carry the submission time to the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = c.submit(&args).await;
    assert_ne!(second, first);
    // Watched without a terminal: a line at each change, the last one the final counts.
    let watched = c.cedar(&["status", &second, "--watch"]).await;
    assert_eq!(watched.code, Some(0), "{watched:?}");
    let lines: Vec<&str> = watched.stdout.lines().collect();
    assert!(
        lines.len() >= 2 && lines.iter().all(|l| l.starts_with(&format!("{second}: "))),
        "{watched:?}"
    );
    assert!(lines[lines.len() - 1].contains("CLEANED="), "{watched:?}");
    let missing = c.cedar(&["status", "NO-SUCH-SUBMISSION"]).await;
    assert_eq!(missing.code, Some(2), "{missing:?}");
    assert!(missing.stderr.contains("does not exist"), "{missing:?}");
    let (status, code) = c.wait_done(&second).await;
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(
        counts(&status).get("CLEANED").copied().unwrap_or(0),
        cleaned,
        "{status}"
    );
    let stats = c.emulator.stats();
    assert_eq!(
        stats.requests.get("image.export").copied().unwrap_or(0),
        2 * cleaned,
        "each submission exports each order once: {stats:#?}"
    );
    let files = c.dest_files();
    for (f, n) in &first_files {
        assert_eq!(files.get(&format!("{first}/{f}")), Some(n), "first: {f}");
        assert_eq!(files.get(&format!("{second}/{f}")), Some(n), "second: {f}");
    }
    assert_bucket_empty(&c);
}

/// The download stage refuses object names that would escape the destination, writing
/// nothing anywhere, and still copies a well-named object.
#[tokio::test]
async fn download_refuses_names_that_escape_the_destination() {
    use cedar::jobs::JobError;
    use cedar::jobs::download::{DownloadOptions, copy_verified};
    use cedar::store::{Destination, ExportBucket, ObjectInfo, ObjectStoreBucket};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("dest");
    let dest = Destination::local(&root);
    let store = Arc::new(object_store::memory::InMemory::new());
    let bucket = ObjectStoreBucket::new(store, object_store::path::Path::from(""));
    let body = bytes::Bytes::from_static(b"II*\0 a well-named piece");
    bucket
        .put("CEDAR_PREARD/ok.tif", body.clone())
        .await
        .unwrap();
    let info = |name: &str| ObjectInfo {
        name: name.to_owned(),
        size: body.len() as u64,
        md5: None,
        crc32c: None,
        generation: None,
    };

    for (tracking, object) in [
        ("T", "CEDAR_PREARD/../../evil.tif"),
        ("T", "../evil.tif"),
        ("T", "CEDAR_PREARD/.."),
        ("T", "CEDAR_PREARD/..\\..\\evil.tif"),
        ("../T", "CEDAR_PREARD/ok.tif"),
        ("T/../..", "CEDAR_PREARD/ok.tif"),
    ] {
        let err = copy_verified(
            &bucket,
            &dest,
            tracking,
            &[info(object)],
            false,
            &DownloadOptions::default(),
        )
        .await
        .expect_err(object);
        match &err {
            JobError::Fatal(m) => assert!(
                m.contains("refused object") && m.contains("would escape the destination"),
                "{tracking} {object}: {m}"
            ),
            other => panic!("{tracking} {object}: not fatal: {other:?}"),
        }
        assert_eq!(
            files(dir.path()),
            BTreeMap::new(),
            "{tracking} {object}: nothing written"
        );
    }

    let (verified, bytes) = copy_verified(
        &bucket,
        &dest,
        "T",
        &[info("CEDAR_PREARD/ok.tif")],
        false,
        &DownloadOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(bytes, body.len() as u64);
    assert_eq!(verified.len(), 1);
    assert_eq!(
        files(dir.path()),
        BTreeMap::from([("dest/T/ok.tif".to_owned(), body.len() as u64)])
    );
}

/// Bad submissions exit 2 with one clear error line and queue nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_refused_and_queue_nothing() {
    let c = Campaign::start("bad", Campaign::options()).await;
    let good = [
        "--start",
        "2021-07-01",
        "--end",
        "2021-12-31",
        "--freq",
        "3MS",
    ];
    let cases: [(&[&str], &str); 4] = [
        (
            &["--collection", "NASA/NOPE", "--tile", "10,14"],
            "unknown collection \"NASA/NOPE\"",
        ),
        (&["--collection", LC08, "--tile", "99,14"], "outside"),
        (&one_tile("2021-01-01"), "not after start"),
        (
            &["--collection", LC08, "--tile", "10,14", "--tile", "10,14"],
            "tile 10,14 is given twice",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["submit"];
        all.extend_from_slice(args);
        if !args.contains(&"--start") {
            all.extend_from_slice(&good);
        }
        let run = c.cedar(&all).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {run:?}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(want),
            "{args:?}: {run:?}"
        );
        assert_eq!(run.stdout, "", "{args:?}");
    }
    // A prefix template that walks out of the bucket folder renders names with '..'.
    let run = c
        .cedar_env(
            &[&["submit"][..], &one_tile("2021-12-31")].concat(),
            &[("CEDAR__EXPORT__PREFIX_TEMPLATE", "CEDAR/../../{collection}")],
        )
        .await;
    assert_eq!(run.code, Some(2), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {run:?}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("CEDAR/../../{collection}"),
        "{run:?}"
    );
    assert_eq!(
        c.namespace.keys().await,
        Vec::<String>::new(),
        "nothing recorded"
    );
    assert_eq!(c.bucket_files(), BTreeMap::new(), "no tracking document");
}
