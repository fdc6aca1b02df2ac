//! Benchmarks: `cedar bench scale|web|requests|rss|e2e|download|utilisation` measure an
//! archive-size submission (submit, Redis bytes, status, worker memory) and its web console, EE
//! requests per tile-period, worker memory, campaign throughput against the original CEDAR's
//! sequential loop, download throughput against copy + fsync, and EE run-slot use, each as a
//! ratio against a baseline measured in the same run.
//!
//! Speed and memory targets live here, never in timed tests: a figure taken on a busy or slow
//! machine only means something next to a baseline taken on the same machine a moment earlier.
//! Each bench starts what it needs itself — an in-process EE emulator on a free port, a scratch
//! folder for the bucket and the downloads, a Redis namespace of its own — and deletes the
//! namespace (SCAN + DEL, never FLUSHALL) and the folder afterwards, whether it succeeded or not.

mod download;
mod e2e;
mod requests;
mod rss;
mod scale;
mod utilisation;
mod web;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{Months, NaiveDate};

use cedar::config::{Config, Settings};
use cedar::emulator::{self, EmulatorOptions, RunningEmulator};
use cedar::jobs::JobSettings;
use cedar::queue::tracking::OrderState;
use cedar::submit::{Plan, Request};
use cedar::worker::WorkerOptions;

/// The benchmarks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// EE requests per completed tile-period, N tasks in flight, on emulated time.
    Requests(requests::RequestsArgs),
    /// Peak RSS of a `cedar worker` process with N jobs queued and thousands in flight.
    Rss(rss::RssArgs),
    /// Tile-periods per second through export → poll → download → clean with `cedar worker`
    /// processes, against the original CEDAR's sequential loop on the real Python EE client.
    E2e(e2e::E2eArgs),
    /// EE run-slot utilisation when EE's queue holds fewer tasks than cedar may admit, alone
    /// and with another pipeline sharing the project.
    Utilisation(utilisation::UtilisationArgs),
    /// MB/s of `copy_verified` from the emulator's bucket (`file://`, `gs://`) against `cp -r`.
    Download(download::DownloadArgs),
    /// The whole-CONUS archive (1.39 million orders) in one submission: submit, Redis bytes per
    /// order, `status --json`, worker RSS with thousands of tasks in flight, `show`, `cancel`.
    Scale(scale::ScaleArgs),
    /// The web console on the archive campaign: the campaign page, `/` and the map's view
    /// against the same requests for a one-order campaign.
    Web(web::WebArgs),
}

/// The Redis every bench runs against.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL; the bench works in a namespace of its own and deletes it afterwards.
    #[arg(long = "redis", default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
}

/// Runs one benchmark and prints its table.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Requests(a) => requests::run(a).await,
        BenchCommand::Rss(a) => rss::run(a).await,
        BenchCommand::E2e(a) => e2e::run(a).await,
        BenchCommand::Download(a) => download::run(a).await,
        BenchCommand::Utilisation(a) => utilisation::run(a).await,
        BenchCommand::Scale(a) => scale::run(a).await,
        BenchCommand::Web(a) => web::run(a).await,
    }
}

/// The EE project and bucket name the emulator serves.
const PROJECT: &str = "cedar-bench";

/// Collections the campaigns draw from; both have scenes in every month of the
/// [`MAX_MONTHS`] months from [`CAMPAIGN_START`].
const COLLECTIONS: [&str; 2] = ["LANDSAT/LC08/C02/T1_L2", "LANDSAT/LE07/C02/T1_L2"];
const CAMPAIGN_START: (i32, u32, u32) = (2014, 1, 1);
const MAX_MONTHS: u32 = 96;

/// `[export] prefix_template` of every bench: the default folder, one sub-folder per tile. The
/// emulator's bucket is a local folder, and both its listing and the `file://` bucket list a
/// prefix by walking the folder that holds it; with every export in one folder each listing
/// would cost O(objects in the bucket), which GCS's prefix index does not, and a campaign of
/// thousands of tile-periods would measure that walk.
const PREFIX_TEMPLATE: &str = "CEDAR_PREARD/{tile}";

// ---------------------------------------------------------------------------------------------
// What every bench shares

/// An emulated EE whose tasks take `task_seconds` on a clock `time_scale` times faster than
/// the wall, with `max_concurrent_exports` run slots and Google's queue cap.
pub(super) fn emulated_ee(
    task_seconds: f64,
    time_scale: f64,
    max_concurrent_exports: u32,
) -> EmulatorOptions {
    EmulatorOptions {
        task_seconds,
        time_scale,
        max_concurrent_exports,
        queue_limit: cedar::earthengine::EE_QUEUE_CAP as usize,
        ..EmulatorOptions::default()
    }
}

/// Runs `body` with a fresh [`Scratch`] and an emulator on it, then shuts both down and deletes
/// the scratch data whatever `body` returned.
async fn with_emulator(
    redis: &str,
    options: EmulatorOptions,
    body: impl AsyncFnOnce(&Scratch, &RunningEmulator) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let bench = Scratch::new(redis)?;
    let emulator = bench.emulator(options).await?;
    let result = body(&bench, &emulator).await;
    emulator.shutdown().await;
    bench.cleanup().await;
    result
}

/// A bench's own namespace and scratch folder.
struct Scratch {
    redis: String,
    namespace: String,
    dir: PathBuf,
}

impl Scratch {
    fn new(redis: &str) -> anyhow::Result<Self> {
        let (namespace, dir) = scratch_dir()?;
        Ok(Scratch {
            redis: redis.to_string(),
            namespace,
            dir,
        })
    }

    /// A second namespace inside this one, deleted with it.
    fn sub(&self, name: &str) -> String {
        format!("{}:{name}", self.namespace)
    }

    /// Settings pointing at this bench's Redis namespace, folders and (if any) emulator.
    fn settings(&self, emulator: Option<&RunningEmulator>) -> anyhow::Result<Settings> {
        Ok(self.config(emulator)?.validate()?)
    }

    /// The configuration behind [`Scratch::settings`], for a bench to adjust before validating.
    fn config(&self, emulator: Option<&RunningEmulator>) -> anyhow::Result<Config> {
        let mut c = Config::default();
        c.earthengine.project = PROJECT.into();
        if let Some(e) = emulator {
            c.earthengine.endpoint = e.url();
        }
        c.earthengine.credentials = Some("none".into());
        c.export.bucket = PROJECT.into();
        c.export.prefix_template = PREFIX_TEMPLATE.into();
        c.store.url = url::Url::from_directory_path(self.dir.join("bucket"))
            .map_err(|()| anyhow::anyhow!("{} is not absolute", self.dir.display()))?
            .to_string();
        c.download.dest = self.dir.join("downloads").display().to_string();
        c.queue.url = self.redis.clone();
        c.queue.namespace = self.namespace.clone();
        // A free port: a worker already running on this host holds the default one.
        c.metrics.listen = "127.0.0.1:0".into();
        Ok(c)
    }

    /// An emulator on a free loopback port that writes into this bench's bucket folder.
    async fn emulator(&self, options: EmulatorOptions) -> anyhow::Result<RunningEmulator> {
        start_emulator(&self.dir.join("bucket"), options).await
    }

    /// Deletes the namespace and the folder; problems are reported, not returned, so that
    /// they never hide the bench's own result.
    async fn cleanup(self) {
        match delete_namespace(&self.redis, &self.namespace).await {
            Ok(_) => {}
            Err(e) => eprintln!(
                "warning: could not delete Redis namespace {}: {e:#}",
                self.namespace
            ),
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: could not remove {}: {e}", self.dir.display());
        }
    }
}

/// A fresh name (also the Redis namespace) and scratch folder, with `bucket/` and
/// `downloads/` in it.
fn scratch_dir() -> anyhow::Result<(String, PathBuf)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!("cedar-bench-{}-{nanos}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    for sub in ["bucket", "downloads"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    Ok((name, dir))
}

/// An emulator on a free loopback port serving project and bucket [`PROJECT`], whose bucket
/// is the folder `bucket_dir`.
async fn start_emulator(
    bucket_dir: &Path,
    options: EmulatorOptions,
) -> anyhow::Result<RunningEmulator> {
    let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(
        bucket_dir,
    )?);
    Ok(emulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        store,
        EmulatorOptions {
            project: Some(PROJECT.into()),
            bucket: Some(PROJECT.into()),
            ..options
        },
    )
    .await?)
}

/// The keys of `namespace`, in SCAN batches.
async fn scan_keys(
    conn: &mut redis::aio::ConnectionManager,
    namespace: &str,
) -> anyhow::Result<Vec<Vec<String>>> {
    let pattern = format!("{namespace}:*");
    let mut batches = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            batches.push(keys);
        }
        if next == 0 {
            return Ok(batches);
        }
        cursor = next;
    }
}

/// Deletes every key of `namespace`; returns how many.
async fn delete_namespace(redis: &str, namespace: &str) -> anyhow::Result<u64> {
    let mut conn = cedar::queue::redis::connect(redis).await?;
    let mut deleted = 0;
    // SCAN may return a key twice; DEL of a missing key is harmless.
    for keys in scan_keys(&mut conn, namespace).await? {
        let n: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        deleted += n;
    }
    Ok(deleted)
}

/// A campaign of `jobs` monthly tile-periods: collections × tiles × months, the smallest number
/// of collections and months whose product is exactly `jobs`, else the nearest above it.
pub(crate) fn campaign(settings: &Settings, jobs: u64) -> anyhow::Result<Request> {
    let all_tiles: Vec<(u32, u32)> = settings.grid.limits.indices().collect();
    let max_tiles = all_tiles.len() as u64;
    let max = COLLECTIONS.len() as u64 * u64::from(MAX_MONTHS) * max_tiles;
    anyhow::ensure!(
        (1..=max).contains(&jobs),
        "between 1 and {max} jobs, please"
    );
    let exact = (1..=COLLECTIONS.len() as u64).find_map(|c| {
        (1..=u64::from(MAX_MONTHS)).find_map(|m| {
            let per = c * m;
            (jobs.is_multiple_of(per) && jobs / per <= max_tiles).then_some((c, m, jobs / per))
        })
    });
    let (collections, months, tiles) = exact.unwrap_or_else(|| {
        let c = COLLECTIONS.len() as u64;
        let m = u64::from(MAX_MONTHS).min(jobs.div_ceil(c * max_tiles).max(1));
        (c, m, jobs.div_ceil(c * m))
    });
    let (y, mo, d) = CAMPAIGN_START;
    let start = NaiveDate::from_ymd_opt(y, mo, d).expect("valid start date");
    let end = start
        .checked_add_months(Months::new(months as u32))
        .and_then(|d| d.pred_opt())
        .expect("end date in range");
    Ok(Request {
        name: None,
        workload_tag: None,
        collections: COLLECTIONS[..collections as usize]
            .iter()
            .map(|c| c.to_string())
            .collect(),
        tiles: all_tiles[..tiles as usize].to_vec(),
        start,
        end,
        freq: Some("1MS".parse()?),
        save_empty_metadata: false,
        error_if_empty: false,
        priority: None,
    })
}

/// Runs `plan` to the end on `workers` in-process workers sharing the queue: submits it, waits
/// until every order ended (or `timeout` passes), takes `snapshot` while the workers still run
/// (so that nothing their drain does is counted), then stops them. Returns the wall time from
/// submit to the last order ended, the final counts and the snapshot.
async fn run_in_process<S>(
    settings: &Arc<Settings>,
    jobs: &JobSettings,
    opts: &WorkerOptions,
    workers: usize,
    plan: &Plan,
    timeout: Duration,
    snapshot: impl FnOnce() -> S,
) -> anyhow::Result<(Duration, BTreeMap<OrderState, u64>, S)> {
    let submitter = cedar::jobs::Context::connect(settings.clone(), jobs.clone()).await?;
    let total = plan.submission.order_count() as u64;
    let name = &plan.submission.name;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut running = Vec::new();
    for _ in 0..workers.max(1) {
        let ctx = cedar::jobs::Context::connect(settings.clone(), jobs.clone()).await?;
        let mut stop = stop_rx.clone();
        running.push(tokio::spawn(cedar::worker::run(
            ctx,
            opts.clone(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
    }
    let started = Instant::now();
    cedar::submit::enqueue(&submitter, plan).await?;
    let deadline = started + timeout;
    let counts = loop {
        let counts = submitter.tracker.counts(name).await?;
        if ended(&counts) >= total {
            break counts;
        }
        if Instant::now() > deadline {
            // Drained before the cleanup, which would otherwise race their last writes.
            let _ = stop_tx.send(true);
            for w in running {
                let _ = w.await;
            }
            anyhow::bail!(
                "not done after {} s: {}",
                timeout.as_secs(),
                describe_counts(&counts)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wall = started.elapsed();
    let snap = snapshot();
    let _ = stop_tx.send(true);
    for w in running {
        w.await??;
    }
    Ok((wall, counts, snap))
}

fn describe(plan: &Plan) -> String {
    let s = &plan.submission;
    format!(
        "{} collections x {} tiles x {} months",
        s.collections.len(),
        s.tiles.len(),
        s.periods.len()
    )
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn pct(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

fn verdict(met: bool, target: &str) -> String {
    format!("{target} {}", if met { "met" } else { "MISSED" })
}

/// A plain-text table: a header, a rule, left-aligned first column, right-aligned others.
struct Table<const N: usize> {
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    fn new(header: [&str; N]) -> Self {
        Table {
            rows: vec![header.map(str::to_string)],
        }
    }

    fn row(&mut self, row: [String; N]) {
        self.rows.push(row);
    }

    fn print(&self) {
        let mut widths = [0usize; N];
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |row: &[String; N]| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(i, (cell, w))| {
                    let pad = " ".repeat(w - cell.chars().count());
                    if i == 0 {
                        format!("{cell}{pad}")
                    } else {
                        format!("{pad}{cell}")
                    }
                })
                .collect();
            println!("| {} |", cells.join(" | "));
        };
        line(&self.rows[0]);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        println!("|-{}-|", rule.join("-|-"));
        for row in &self.rows[1..] {
            line(row);
        }
        println!();
    }
}

// ---------------------------------------------------------------------------------------------
// What the benches that run a campaign share

/// Orders in a final state.
fn ended(counts: &BTreeMap<OrderState, u64>) -> u64 {
    counts
        .iter()
        .filter(|(s, _)| {
            matches!(
                s,
                OrderState::Cleaned
                    | OrderState::Empty
                    | OrderState::Failed
                    | OrderState::Cancelled
                    | OrderState::Lost
            )
        })
        .map(|(_, n)| n)
        .sum()
}

/// The non-zero counts of a tally, `STATE n, …`.
fn describe_counts(counts: &BTreeMap<OrderState, u64>) -> String {
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{} {n}", s.as_str()))
        .collect();
    parts.join(", ")
}

/// A `cedar worker` child process, this very binary.
struct WorkerProcess {
    child: tokio::process::Child,
}

impl WorkerProcess {
    fn spawn(config: &Path, log: &Path, args: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the cedar binary")?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = tokio::process::Command::new(exe)
            .arg("--config")
            .arg(config)
            .arg("worker")
            .args(args)
            .env("CEDAR_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("starting cedar worker")?;
        Ok(WorkerProcess { child })
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the worker has exited")
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("cedar worker exited early: {status}");
        }
        Ok(())
    }

    /// SIGTERM, as systemd would, then SIGKILL if the drain overruns.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar::submit;

    #[test]
    fn campaigns_have_exactly_the_jobs_asked_for_when_possible() {
        let mut c = Config::default();
        c.export.bucket = "b-1".into();
        let s = c.validate().unwrap();
        for (jobs, collections, tiles, months) in
            [(1000, 1, 500, 2), (100_000, 2, 625, 80), (7, 1, 7, 1)]
        {
            let r = campaign(&s, jobs).unwrap();
            let plan = submit::plan(&s, &r, chrono::Utc::now()).unwrap();
            assert_eq!(plan.submission.order_count() as u64, jobs);
            assert_eq!(
                (
                    r.collections.len(),
                    r.tiles.len(),
                    plan.submission.periods.len()
                ),
                (collections, tiles, months)
            );
        }
        assert!(campaign(&s, 0).is_err());
    }
}
