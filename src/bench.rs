//! Benchmarks: `cedar bench enqueue|requests|rss|e2e|download` measure submit throughput, EE
//! requests per tile-period, worker memory, campaign throughput against the original CEDAR's
//! sequential loop, and download throughput against `cp -r`, each as a ratio against a baseline
//! measured in the same run.
//!
//! Speed and memory targets live here, never in timed tests: a figure taken on a busy or slow
//! machine only means something next to a baseline taken on the same machine a moment earlier.
//! Each bench starts what it needs itself — an in-process EE emulator on a free port, a scratch
//! folder for the bucket and the downloads, a Redis namespace of its own — and deletes the
//! namespace (SCAN + DEL, never FLUSHALL) and the folder afterwards, whether it succeeded or not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{Months, NaiveDate};
use tokio::sync::watch;

use cedar::config::{Config, Settings};
use cedar::emulator::{self, EmulatorOptions, RunningEmulator};
use cedar::jobs::JobSettings;
use cedar::jobs::poll::SweepSettings;
use cedar::queue::Stage;
use cedar::queue::tracking::OrderState;
use cedar::submit::{self, Plan, Request};
use cedar::worker::{self, WorkerOptions};

/// The benchmarks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Submit throughput: plan + record + enqueue N jobs, against `redis-benchmark` LPUSH -P 64.
    Enqueue(EnqueueArgs),
    /// EE requests per completed tile-period, N tasks in flight, on emulated time.
    Requests(RequestsArgs),
    /// Peak RSS of a `cedar worker` process with N jobs queued and thousands in flight.
    Rss(RssArgs),
    /// Tile-periods per second through export → poll → download → clean with `cedar worker`
    /// processes, against the original CEDAR's sequential loop on the real Python EE client.
    E2e(E2eArgs),
    /// MB/s of `copy_verified` from the emulator's bucket (`file://`, `gs://`) against `cp -r`.
    Download(DownloadArgs),
}

/// The Redis every bench runs against.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL; the bench works in a namespace of its own and deletes it afterwards.
    #[arg(long = "redis", default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
}

/// Options of `cedar bench enqueue`.
#[derive(Debug, Clone, clap::Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Jobs (tile-periods) to submit.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: u64,
}

/// Options of `cedar bench requests`. Durations marked "emulated" run `time_scale` times faster
/// than real time; the worker's own timers are real time and scaled here to match.
#[derive(Debug, Clone, clap::Args)]
pub struct RequestsArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Tile-periods submitted, all admitted at once (`max_active_exports` = this).
    #[arg(long, default_value_t = 1000)]
    pub in_flight: u64,
    /// Emulated seconds each EE task runs.
    #[arg(long, default_value_t = 300.0)]
    pub task_seconds: f64,
    /// Emulated seconds per real second.
    #[arg(long, default_value_t = 200.0)]
    pub time_scale: f64,
    /// Tasks EE runs at once; the rest wait PENDING.
    #[arg(long, default_value_t = 100)]
    pub max_concurrent_exports: u32,
    /// In-process workers sharing the queue (one of them leads the sweeper).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Jobs run at once per stage, per worker.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// EE requests per real second across all workers (the worker default is 50).
    #[arg(long, default_value_t = 1000)]
    pub ee_requests_per_second: u32,
    /// Real seconds a poll job waits before reading the snapshot again (snoozes count whole
    /// seconds, so 1 is the least).
    #[arg(long, default_value_t = 1)]
    pub poll_interval_secs: u64,
    /// Real ms between sweeps at the fastest; default: the worker's 2 s ÷ time scale.
    #[arg(long)]
    pub sweep_min_ms: Option<u64>,
    /// Real ms between sweeps at the slowest; default: the worker's 120 s ÷ time scale.
    #[arg(long)]
    pub sweep_max_ms: Option<u64>,
    /// Completed tasks a sweep aims to find per page read; default: the worker's.
    #[arg(long)]
    pub completions_per_page: Option<f64>,
    /// Give up when the campaign is not done after this many real seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

/// Options of `cedar bench rss`.
#[derive(Debug, Clone, clap::Args)]
pub struct RssArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Jobs (tile-periods) queued.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: u64,
    /// EE tasks in flight (`--max-active-exports` of the worker, which caps it at 2,900).
    #[arg(long, default_value_t = 3000)]
    pub in_flight: u64,
    /// Real seconds the loaded worker is watched once the tasks are in flight.
    #[arg(long, default_value_t = 30)]
    pub hold_secs: u64,
    /// Emulated seconds each EE task runs: long, so the tasks stay in flight.
    #[arg(long, default_value_t = 600.0)]
    pub task_seconds: f64,
    /// Emulated seconds per real second.
    #[arg(long, default_value_t = 10.0)]
    pub time_scale: f64,
    /// Tasks EE runs at once; the rest wait PENDING.
    #[arg(long, default_value_t = 200)]
    pub max_concurrent_exports: u32,
    /// EE requests per real second (the worker's `--ee-requests-per-second`).
    #[arg(long, default_value_t = 1000)]
    pub ee_requests_per_second: u32,
    /// Give up waiting for the tasks to be in flight after this many real seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

/// Where the workers of `cedar bench e2e` read the export bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BucketAccess {
    /// `gs://` through the emulator's Cloud Storage JSON API, as the Python baseline does.
    Gs,
    /// `file://` on the folder the emulator writes into.
    File,
}

/// Options of `cedar bench e2e`. EE tasks finish at once, so the figure is cedar's own
/// throughput: queue, EE client, bucket and destination.
#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Tile-periods submitted.
    #[arg(long, default_value_t = 5000)]
    pub tile_periods: u64,
    /// `cedar worker` processes sharing the queue.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Jobs run at once per stage, per worker (the worker's `--concurrency`).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// EE requests per real second across all workers; the emulator has no quota, so high.
    #[arg(long, default_value_t = 10_000)]
    pub ee_requests_per_second: u32,
    /// How the workers read the export bucket.
    #[arg(long, value_enum, default_value_t = BucketAccess::Gs)]
    pub bucket: BucketAccess,
    /// Tile-periods the (slow, sequential) baseline runs: the first ones of the same campaign.
    #[arg(long, default_value_t = 200)]
    pub baseline_items: u64,
    /// The Python that has `earthengine-api` and `google-cloud-storage` installed.
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// The baseline script, relative to the working directory (`scripts/bench` runs from the
    /// crate root).
    #[arg(long, default_value = "scripts/baseline_cedar_original.py")]
    pub baseline_script: PathBuf,
    /// Give up when cedar, or the baseline, is not done after this many real seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// Options of `cedar bench download`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// GiB of pieces in the bucket.
    #[arg(long, default_value_t = 2.0)]
    pub gib: f64,
    /// MiB per piece: a 1024×1024 piece of 8 int16 bands is 16 MiB.
    #[arg(long, default_value_t = 16)]
    pub piece_mib: u64,
}

/// Runs one benchmark and prints its table.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Enqueue(a) => enqueue(a).await,
        BenchCommand::Requests(a) => requests(a).await,
        BenchCommand::Rss(a) => rss(a).await,
        BenchCommand::E2e(a) => e2e(a).await,
        BenchCommand::Download(a) => download(a).await,
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

/// Emulated bytes per pixel per band: small, so downloads cost little and the bench measures
/// cedar rather than the disk.
const BYTES_PER_PIXEL: f64 = 1.0 / 65536.0;

// ---------------------------------------------------------------------------------------------
// cedar bench enqueue

async fn enqueue(a: EnqueueArgs) -> anyhow::Result<()> {
    let bench = Scratch::new(&a.redis.redis)?;
    let result = enqueue_in(&bench, &a).await;
    bench.cleanup().await;
    result
}

async fn enqueue_in(bench: &Scratch, a: &EnqueueArgs) -> anyhow::Result<()> {
    // Same jobs, same Redis, same moment: the baseline is what this Redis does for the simplest
    // pipelined write, so the ratio says how much of it cedar's bookkeeping keeps.
    let lpush_before = lpush_baseline(&bench.redis, &bench.key("lpush"), a.jobs).await?;

    let settings = bench.settings(None)?;
    let ctx =
        cedar::jobs::Context::connect(Arc::new(settings.clone()), JobSettings::default()).await?;
    let req = campaign(&settings, a.jobs)?;
    let started = Instant::now();
    let plan = submit::plan(&settings, &req, chrono::Utc::now())?;
    let planned = started.elapsed();
    let added = submit::enqueue(&ctx, &plan).await?;
    let submitted = started.elapsed();
    anyhow::ensure!(
        added == plan.submission.order_count() as u64,
        "enqueued {added} of {} jobs",
        plan.submission.order_count()
    );
    let depth = ctx.queue.depth(Stage::Export).await?;

    // The queue alone, without recording the orders: the same jobs into a second namespace.
    let jobs: Vec<_> = plan
        .submission
        .orders()
        .map(|o| cedar::jobs::job_for(&plan.submission.name, &o, None))
        .collect();
    let queue_only = cedar::queue::Queue::open(&bench.redis, &bench.sub("q")).await?;
    let bulk_started = Instant::now();
    let mut bulk_added = 0;
    for chunk in jobs.chunks(20_000) {
        bulk_added += queue_only
            .enqueue_bulk(Stage::Export, chunk, Duration::ZERO)
            .await?;
    }
    let bulk = bulk_started.elapsed();
    anyhow::ensure!(bulk_added == added, "enqueue_bulk added {bulk_added}");
    let lpush_after = lpush_baseline(&bench.redis, &bench.key("lpush"), a.jobs).await?;
    // The better of two baseline runs: other users of the Redis can only slow it down, and a
    // slowed baseline would flatter the ratio.
    let lpush = lpush_before.max(lpush_after);

    let n = added as f64;
    let rate = |d: Duration| n / d.as_secs_f64();
    println!(
        "cedar bench enqueue: {added} jobs ({}), Redis {}",
        describe(&plan),
        cedar::queue::redact_url(&bench.redis)
    );
    println!("export backlog after submit: {}", depth.backlog);
    let mut t = Table::new(["measure", "seconds", "jobs/s", "÷ baseline", "target"]);
    t.row([
        "baseline: redis-benchmark LPUSH -P 64 (ops/s)".into(),
        "".into(),
        format!("{lpush:.0}"),
        "1".into(),
        format!("best of {lpush_before:.0}, {lpush_after:.0}"),
    ]);
    t.row([
        "submit::plan (validate, render names)".into(),
        secs(planned),
        format!("{:.0}", rate(planned)),
        pct(rate(planned) / lpush),
        "".into(),
    ]);
    t.row([
        "submit::enqueue (record, publish, enqueue)".into(),
        secs(submitted - planned),
        format!("{:.0}", rate(submitted - planned)),
        pct(rate(submitted - planned) / lpush),
        "".into(),
    ]);
    let ratio = rate(submitted) / lpush;
    t.row([
        "plan + enqueue (what `cedar submit` does)".into(),
        secs(submitted),
        format!("{:.0}", rate(submitted)),
        pct(ratio),
        verdict(ratio >= 0.25, "≥ 25%"),
    ]);
    t.row([
        "Queue::enqueue_bulk alone".into(),
        secs(bulk),
        format!("{:.0}", rate(bulk)),
        pct(rate(bulk) / lpush),
        "".into(),
    ]);
    t.print();
    Ok(())
}

/// Runs `redis-benchmark -P 64 -n N -q LPUSH key xxx` (the `-t lpush` test on a key of this
/// bench's namespace, so the cleanup removes it) and returns its requests per second.
async fn lpush_baseline(redis: &str, key: &str, n: u64) -> anyhow::Result<f64> {
    let out = tokio::process::Command::new("redis-benchmark")
        .args(["-u", redis, "-P", "64", "-n", &n.to_string(), "-q"])
        .args(["LPUSH", key, "xxx"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running redis-benchmark (it ships with redis-tools / redis-server)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "redis-benchmark failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_requests_per_second(&text)
        .with_context(|| format!("no \"requests per second\" in redis-benchmark output {text:?}"))
}

/// The figure of `…: 488585.34 requests per second, p50=…`; progress lines before it are
/// separated by carriage returns.
fn parse_requests_per_second(text: &str) -> Option<f64> {
    text.split(['\r', '\n']).rev().find_map(|line| {
        let (before, _) = line.split_once(" requests per second")?;
        before.split_whitespace().next_back()?.parse().ok()
    })
}

// ---------------------------------------------------------------------------------------------
// cedar bench requests

async fn requests(a: RequestsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.time_scale > 0.0 && a.time_scale.is_finite(),
        "--time-scale must be positive"
    );
    let options = EmulatorOptions {
        task_seconds: a.task_seconds,
        time_scale: a.time_scale,
        max_concurrent_exports: a.max_concurrent_exports,
        queue_limit: 3000,
        ..EmulatorOptions::default()
    };
    with_emulator(&a.redis.redis, options, async |bench, emulator| {
        requests_in(bench, emulator, &a).await
    })
    .await
}

async fn requests_in(
    bench: &Scratch,
    emulator: &RunningEmulator,
    a: &RequestsArgs,
) -> anyhow::Result<()> {
    let settings = Arc::new(bench.settings(Some(emulator))?);
    let jobs = JobSettings {
        ee_requests_per_second: a.ee_requests_per_second,
        poll_interval: Duration::from_secs(a.poll_interval_secs.max(1)),
        ..JobSettings::default()
    };
    let defaults = SweepSettings::default();
    let scaled = |d: Duration| d.div_f64(a.time_scale);
    let sweep = SweepSettings {
        min_interval: a
            .sweep_min_ms
            .map(Duration::from_millis)
            .unwrap_or_else(|| scaled(defaults.min_interval)),
        max_interval: a
            .sweep_max_ms
            .map(Duration::from_millis)
            .unwrap_or_else(|| scaled(defaults.max_interval)),
        completions_per_page: a
            .completions_per_page
            .unwrap_or(defaults.completions_per_page),
    };
    let opts = WorkerOptions {
        concurrency: a.concurrency,
        drain: Duration::from_secs(5),
        max_active_exports: Some(a.in_flight),
        jobs: jobs.clone(),
        sweep: sweep.clone(),
        ..WorkerOptions::default()
    };

    let submitter = cedar::jobs::Context::connect(settings.clone(), jobs.clone()).await?;
    let req = campaign(&settings, a.in_flight)?;
    let plan = submit::plan(&settings, &req, chrono::Utc::now())?;
    let total = plan.submission.order_count() as u64;
    let name = plan.submission.name.clone();

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..a.workers.max(1) {
        let ctx = cedar::jobs::Context::connect(settings.clone(), jobs.clone()).await?;
        let mut stop = stop_rx.clone();
        workers.push(tokio::spawn(worker::run(ctx, opts.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    let started = Instant::now();
    submit::enqueue(&submitter, &plan).await?;
    let deadline = started + Duration::from_secs(a.timeout_secs);
    let counts = loop {
        let counts = submitter.tracker.counts(&name).await?;
        if ended(&counts) >= total {
            break counts;
        }
        if Instant::now() > deadline {
            // Drained before the cleanup, which would otherwise race their last writes.
            let _ = stop_tx.send(true);
            for w in workers {
                let _ = w.await;
            }
            bail!(
                "not done after {} s: {}",
                a.timeout_secs,
                describe_counts(&counts)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wall = started.elapsed();
    // Read before the workers stop, so that nothing the drain does is counted.
    let stats = emulator.stats();
    let _ = stop_tx.send(true);
    for w in workers {
        w.await??;
    }

    let count = |s: OrderState| counts.get(&s).copied().unwrap_or(0);
    let completed = count(OrderState::Cleaned) + count(OrderState::Empty);
    let exported = stats.requests.get("image.export").copied().unwrap_or(0);
    let all: u64 = stats.requests.values().sum();
    let scale = a.time_scale;
    // What EE alone needs: the exports run `max_concurrent_exports` at a time.
    let ideal = (exported as f64 / f64::from(a.max_concurrent_exports)).ceil() * a.task_seconds;
    println!(
        "cedar bench requests: {total} tile-periods ({}), {} in flight; EE runs {} at once, tasks {} s emulated, time scale {scale}x",
        describe(&plan),
        a.in_flight.min(total),
        a.max_concurrent_exports,
        a.task_seconds
    );
    println!(
        "workers: {} x concurrency {}, EE budget {}/s, poll interval {} s, sweep interval {}-{} ms (real), {} completions per page",
        a.workers.max(1),
        a.concurrency,
        a.ee_requests_per_second,
        jobs.poll_interval.as_secs(),
        sweep.min_interval.as_millis(),
        sweep.max_interval.as_millis(),
        sweep.completions_per_page
    );
    println!("orders: {}", describe_counts(&counts));
    let mut t = Table::new([
        "EE method",
        "requests",
        "per completed tile-period",
        "target",
    ]);
    for (method, n) in &stats.requests {
        t.row([
            method.clone(),
            n.to_string(),
            format!("{:.3}", *n as f64 / completed.max(1) as f64),
            "".into(),
        ]);
    }
    let per = all as f64 / completed.max(1) as f64;
    t.row([
        "total".into(),
        all.to_string(),
        format!("{per:.3}"),
        verdict(per <= 2.2, "≤ 2.2"),
    ]);
    t.row([
        "baseline: value.compute + image.export".into(),
        (completed + exported).to_string(),
        format!(
            "{:.3}",
            (completed + exported) as f64 / completed.max(1) as f64
        ),
        format!(
            "ratio {:.3}",
            all as f64 / (completed + exported).max(1) as f64
        ),
    ]);
    t.print();
    let mut t = Table::new(["time", "real s", "emulated s", "÷ baseline"]);
    t.row([
        "baseline: EE running every task back to back".into(),
        format!("{:.1}", ideal / scale),
        format!("{ideal:.0}"),
        "1".into(),
    ]);
    t.row([
        "submit to last order done".into(),
        secs(wall),
        format!("{:.0}", wall.as_secs_f64() * scale),
        format!("{:.2}", wall.as_secs_f64() * scale / ideal.max(1e-9)),
    ]);
    t.print();
    Ok(())
}

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

fn describe_counts(counts: &BTreeMap<OrderState, u64>) -> String {
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{} {n}", s.as_str()))
        .collect();
    parts.join(", ")
}

// ---------------------------------------------------------------------------------------------
// cedar bench rss

async fn rss(a: RssArgs) -> anyhow::Result<()> {
    let options = EmulatorOptions {
        task_seconds: a.task_seconds,
        time_scale: a.time_scale,
        max_concurrent_exports: a.max_concurrent_exports,
        queue_limit: 3000,
        ..EmulatorOptions::default()
    };
    with_emulator(&a.redis.redis, options, async |bench, emulator| {
        rss_in(bench, emulator, &a).await
    })
    .await
}

async fn rss_in(bench: &Scratch, emulator: &RunningEmulator, a: &RssArgs) -> anyhow::Result<()> {
    let settings = Arc::new(bench.settings(Some(emulator))?);
    let config_path = bench.dir.join("cedar.toml");
    std::fs::write(&config_path, toml::to_string(&settings.config)?)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let worker_args = |config: &Path, log: &str| -> anyhow::Result<WorkerProcess> {
        WorkerProcess::spawn(
            config,
            &bench.dir.join(log),
            &[
                "--max-active-exports".into(),
                a.in_flight.to_string(),
                "--ee-requests-per-second".into(),
                a.ee_requests_per_second.to_string(),
                "--drain-secs".into(),
                "5".into(),
            ],
        )
    };

    // Baseline: the same binary and configuration with nothing to do, in another namespace.
    let mut idle_config = settings.config.clone();
    idle_config.queue.namespace = bench.sub("idle");
    let idle_path = bench.dir.join("cedar-idle.toml");
    std::fs::write(&idle_path, toml::to_string(&idle_config)?)?;
    let idle = worker_args(&idle_path, "worker-idle.log")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_mem = idle.memory()?;
    idle.stop().await;

    let ctx = cedar::jobs::Context::connect(settings.clone(), JobSettings::default()).await?;
    let req = campaign(&settings, a.jobs)?;
    let plan = submit::plan(&settings, &req, chrono::Utc::now())?;
    let queued = submit::enqueue(&ctx, &plan).await?;
    let redis_queued = namespace_memory(&bench.redis, &bench.namespace).await?;

    let mut loaded = worker_args(&config_path, "worker.log")?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.timeout_secs);
    let cap = worker::admission_cap(Some(a.in_flight), None, 1);
    // In flight means started in EE: admitted and past export, so waiting in the poll stage.
    let target = cap * 95 / 100;
    let mut peak_in_flight = 0;
    let result = async {
        loop {
            let in_flight = in_flight(&ctx).await?;
            peak_in_flight = peak_in_flight.max(in_flight);
            if in_flight >= target {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "only {in_flight} tasks in flight after {} s (want {target}); see {}",
                    a.timeout_secs,
                    bench.dir.join("worker.log").display()
                );
            }
            loaded.check_alive()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let ramp = started.elapsed();
        let hold_until = Instant::now() + Duration::from_secs(a.hold_secs);
        let mut low = u64::MAX;
        while Instant::now() < hold_until {
            let n = in_flight(&ctx).await?;
            peak_in_flight = peak_in_flight.max(n);
            low = low.min(n);
            loaded.check_alive()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok((ramp, low))
    }
    .await;
    let mem = loaded.memory();
    let redis_loaded = namespace_memory(&bench.redis, &bench.namespace).await;
    let counts = ctx.tracker.counts(&plan.submission.name).await;
    let depth = ctx.queue.depth(Stage::Export).await;
    loaded.stop().await;
    let (ramp, low) = result?;
    let mem = mem?;
    let redis_loaded = redis_loaded?;
    let counts = counts?;
    let depth = depth?;

    println!(
        "cedar bench rss: {queued} jobs queued ({}), --max-active-exports {} (cap {cap}), EE runs {} at once, tasks {} s emulated, time scale {}x",
        describe(&plan),
        a.in_flight,
        a.max_concurrent_exports,
        a.task_seconds,
        a.time_scale
    );
    println!(
        "in flight: {target}+ after {:.1} s, then {low}-{peak_in_flight} for {} s; backlog {} at the end; orders: {}",
        ramp.as_secs_f64(),
        a.hold_secs,
        depth.backlog,
        describe_counts(&counts)
    );
    let mib = |b: u64| format!("{:.1}", b as f64 / (1024.0 * 1024.0));
    let mut t = Table::new(["process", "VmHWM MiB", "VmRSS MiB", "÷ baseline", "target"]);
    t.row([
        "baseline: idle `cedar worker`".into(),
        mib(idle_mem.hwm),
        mib(idle_mem.rss),
        "1".into(),
        "".into(),
    ]);
    t.row([
        "loaded `cedar worker`".into(),
        mib(mem.hwm),
        mib(mem.rss),
        format!("{:.2}", mem.hwm as f64 / idle_mem.hwm.max(1) as f64),
        verdict(mem.hwm <= 150 * 1024 * 1024, "≤ 150 MiB"),
    ]);
    t.print();
    let mut t = Table::new(["Redis MEMORY USAGE of the namespace", "MiB", "bytes/job"]);
    t.row([
        "after submit".into(),
        mib(redis_queued),
        format!("{:.0}", redis_queued as f64 / queued.max(1) as f64),
    ]);
    t.row([
        "at the end of the hold".into(),
        mib(redis_loaded),
        format!("{:.0}", redis_loaded as f64 / queued.max(1) as f64),
    ]);
    t.print();
    Ok(())
}

/// Tasks started in EE and not yet ended: the poll stage's jobs, due or leased.
async fn in_flight(ctx: &cedar::jobs::Context) -> anyhow::Result<u64> {
    let d = ctx.queue.depth(Stage::Poll).await?;
    Ok(d.due_now + d.scheduled + d.leased)
}

/// Memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// Peak resident set (VmHWM), bytes.
    hwm: u64,
    /// Resident set now (VmRSS), bytes.
    rss: u64,
}

fn read_memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("{path} has no {name}"))?;
        let kb: u64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{path}: {name}{line}"))?;
        Ok(kb * 1024)
    };
    Ok(Memory {
        hwm: field("VmHWM:")?,
        rss: field("VmRSS:")?,
    })
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

    fn memory(&self) -> anyhow::Result<Memory> {
        read_memory(self.pid()?)
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

/// Bytes Redis holds for every key of `namespace` (`MEMORY USAGE … SAMPLES 0`: exact, and
/// blind to other users of the same Redis).
async fn namespace_memory(redis: &str, namespace: &str) -> anyhow::Result<u64> {
    let mut conn = cedar::queue::redis::connect(redis).await?;
    let mut total = 0;
    for keys in scan_keys(&mut conn, namespace).await? {
        let mut p = redis::pipe();
        for k in &keys {
            p.cmd("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").arg(0);
        }
        let sizes: Vec<Option<u64>> = p.query_async(&mut conn).await?;
        total += sizes.into_iter().flatten().sum::<u64>();
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// cedar bench e2e

async fn e2e(a: E2eArgs) -> anyhow::Result<()> {
    let options = EmulatorOptions {
        // A task ends at the emulator's next tick (2 ms) and EE runs any number at once:
        // what is left to measure is cedar (and, for the baseline, the original's loop).
        task_seconds: 0.0,
        max_concurrent_exports: 1_000_000,
        ..EmulatorOptions::default()
    };
    with_emulator(&a.redis.redis, options, async |bench, emulator| {
        e2e_in(bench, emulator, &a).await
    })
    .await
}

async fn e2e_in(bench: &Scratch, emulator: &RunningEmulator, a: &E2eArgs) -> anyhow::Result<()> {
    let mut config = bench.config(Some(emulator))?;
    if a.bucket == BucketAccess::Gs {
        config.store.url = format!("gs://{PROJECT}");
        config.store.endpoint = emulator.url();
    }
    let settings = Arc::new(config.validate()?);
    let config_path = bench.dir.join("cedar.toml");
    std::fs::write(&config_path, toml::to_string(&settings.config)?)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let req = campaign(&settings, a.tile_periods)?;
    let plan = submit::plan(&settings, &req, chrono::Utc::now())?;
    let total = plan.submission.order_count() as u64;
    let ctx = cedar::jobs::Context::connect(settings.clone(), JobSettings::default()).await?;

    // The workers start first, so that the clock measures the campaign, not process start-up.
    let cap = worker::admission_cap(Some(u64::MAX), None, 1);
    let mut workers = Vec::new();
    for i in 0..a.workers.max(1) {
        workers.push(WorkerProcess::spawn(
            &config_path,
            &bench.dir.join(format!("worker-{i}.log")),
            &[
                "--concurrency".into(),
                a.concurrency.to_string(),
                "--max-active-exports".into(),
                cap.to_string(),
                "--ee-requests-per-second".into(),
                a.ee_requests_per_second.to_string(),
                "--poll-interval-secs".into(),
                "1".into(),
                "--drain-secs".into(),
                "5".into(),
            ],
        )?);
    }
    let campaign_run = e2e_campaign(bench, emulator, &ctx, &plan, &mut workers, a).await;
    for w in workers {
        w.stop().await;
    }
    let (wall, counts, cedar_requests) = campaign_run?;

    // The baseline on the first tile-periods of the same campaign, under a prefix of its own.
    let items: Vec<serde_json::Value> = plan
        .submission
        .orders()
        .take(a.baseline_items as usize)
        .map(|o| baseline_item(&settings, &plan.submission, &o))
        .collect::<anyhow::Result<_>>()?;
    let items_path = bench.dir.join("baseline-items.json");
    std::fs::write(&items_path, serde_json::to_vec(&items)?)
        .with_context(|| format!("writing {}", items_path.display()))?;
    let before = emulator.stats();
    let base = run_baseline(bench, emulator, a, &items_path).await?;
    let baseline_requests = request_counts(&emulator.stats(), &before);
    anyhow::ensure!(
        base.items == items.len() as u64,
        "the baseline ran {} of {} items",
        base.items,
        items.len()
    );

    let count = |s: OrderState| counts.get(&s).copied().unwrap_or(0);
    let empty = count(OrderState::Empty);
    let cedar_rate = total as f64 / wall.as_secs_f64();
    let ratio = cedar_rate / base.items_per_second.max(1e-9);
    println!(
        "cedar bench e2e: {total} tile-periods ({}), EE tasks instant (task_seconds 0, no concurrency limit), prefix_template {PREFIX_TEMPLATE:?}, bucket {}",
        describe(&plan),
        match a.bucket {
            BucketAccess::Gs => "gs:// through the emulator's Cloud Storage JSON API",
            BucketAccess::File => "file:// on the emulator's folder",
        }
    );
    println!(
        "cedar: {} `cedar worker` processes x concurrency {}, max-active-exports {cap}, EE budget {}/s, poll interval 1 s; orders: {}",
        a.workers.max(1),
        a.concurrency,
        a.ee_requests_per_second,
        describe_counts(&counts)
    );
    println!(
        "baseline: {} (the real client, sequential: getInfo, Export.image.toCloudStorage().start(), task.status() until done, list + download), first {} tile-periods, {} objects, start-up {:.1} s not counted",
        base.client, base.items, base.objects, base.init_seconds
    );
    let mut t = Table::new([
        "run",
        "tile-periods",
        "empty",
        "seconds",
        "tile-periods/s",
        "÷ baseline",
        "target",
    ]);
    t.row([
        "baseline: original CEDAR loop, Python earthengine-api".into(),
        base.items.to_string(),
        base.empty.to_string(),
        format!("{:.2}", base.seconds),
        format!("{:.1}", base.items_per_second),
        "1".into(),
        "".into(),
    ]);
    t.row([
        format!(
            "cedar: {} workers, submit to last order done",
            a.workers.max(1)
        ),
        total.to_string(),
        empty.to_string(),
        secs(wall),
        format!("{cedar_rate:.1}"),
        format!("{ratio:.1}x"),
        verdict(ratio >= 20.0, "≥ 20x"),
    ]);
    t.print();
    let mut t = Table::new([
        "request (counted by the emulator)",
        "baseline per tile-period",
        "cedar per tile-period",
    ]);
    let methods: std::collections::BTreeSet<&String> = baseline_requests
        .keys()
        .chain(cedar_requests.keys())
        .collect();
    let per = |m: &BTreeMap<String, u64>, k: &String, n: u64| {
        format!(
            "{:.2}",
            m.get(k).copied().unwrap_or(0) as f64 / n.max(1) as f64
        )
    };
    for k in methods {
        t.row([
            k.clone(),
            per(&baseline_requests, k, base.items),
            per(&cedar_requests, k, total),
        ]);
    }
    t.print();
    Ok(())
}

/// Submits the campaign to the running workers and waits for every order to end; returns the
/// wall time, the final counts and the requests the emulator saw meanwhile.
async fn e2e_campaign(
    bench: &Scratch,
    emulator: &RunningEmulator,
    ctx: &cedar::jobs::Context,
    plan: &Plan,
    workers: &mut [WorkerProcess],
    a: &E2eArgs,
) -> anyhow::Result<(Duration, BTreeMap<OrderState, u64>, BTreeMap<String, u64>)> {
    // Long enough for both to connect and start polling their queues.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for w in workers.iter_mut() {
        w.check_alive()?;
    }
    let total = plan.submission.order_count() as u64;
    let before = emulator.stats();
    let started = Instant::now();
    submit::enqueue(ctx, plan).await?;
    let deadline = started + Duration::from_secs(a.timeout_secs);
    let counts = loop {
        let counts = ctx.tracker.counts(&plan.submission.name).await?;
        if ended(&counts) >= total {
            break counts;
        }
        if Instant::now() > deadline {
            bail!(
                "not done after {} s: {}; see the worker logs in {}",
                a.timeout_secs,
                describe_counts(&counts),
                bench.dir.display()
            );
        }
        for w in workers.iter_mut() {
            w.check_alive()?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wall = started.elapsed();
    let requests = request_counts(&emulator.stats(), &before);
    let failed: u64 = [OrderState::Failed, OrderState::Lost, OrderState::Cancelled]
        .iter()
        .filter_map(|s| counts.get(s))
        .sum();
    anyhow::ensure!(
        failed == 0,
        "{failed} orders did not complete ({}); a throughput of failures means nothing",
        describe_counts(&counts)
    );
    Ok((wall, counts, requests))
}

/// EE API and storage API requests per method between two snapshots of the emulator's stats.
fn request_counts(after: &emulator::Stats, before: &emulator::Stats) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (now, then, kind) in [
        (&after.requests, &before.requests, "EE"),
        (&after.storage_requests, &before.storage_requests, "storage"),
    ] {
        for (method, n) in now {
            let d = n - then.get(method).copied().unwrap_or(0);
            if d > 0 {
                out.insert(format!("{kind} {method}"), d);
            }
        }
    }
    out
}

/// What `scripts/baseline_cedar_original.py` prints on its last line.
#[derive(Debug, serde::Deserialize)]
struct BaselineRun {
    client: String,
    items: u64,
    empty: u64,
    objects: u64,
    init_seconds: f64,
    seconds: f64,
    items_per_second: f64,
}

async fn run_baseline(
    bench: &Scratch,
    emulator: &RunningEmulator,
    a: &E2eArgs,
    items: &Path,
) -> anyhow::Result<BaselineRun> {
    let dest = bench.dir.join("baseline-downloads");
    std::fs::create_dir_all(&dest)?;
    let mut cmd = tokio::process::Command::new(&a.python);
    cmd.arg(&a.baseline_script)
        .arg("--emulator")
        .arg(emulator.url())
        .args(["--project", PROJECT, "--bucket", PROJECT])
        .arg("--items")
        .arg(items)
        .arg("--dest")
        .arg(&dest)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(a.timeout_secs), cmd.output())
        .await
        .with_context(|| format!("the baseline was not done after {} s", a.timeout_secs))?
        .with_context(|| {
            format!(
                "running {} {} (see --python, --baseline-script)",
                a.python.display(),
                a.baseline_script.display()
            )
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the baseline failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("reading the baseline's result {last:?}"))
}

/// One tile-period as the baseline script reads it: what the original's `create_ard` and
/// `Export.image.toCloudStorage` need, taken from the same settings cedar runs with.
fn baseline_item(
    settings: &Settings,
    sub: &cedar::queue::tracking::Submission,
    order: &cedar::order::Order,
) -> anyhow::Result<serde_json::Value> {
    use cedar::collection::{DataType, FilterValue};
    let spec = settings
        .collections
        .get(&order.collection)
        .with_context(|| format!("collection {} is not configured", order.collection))?;
    let tile = settings.grid.tile(order.row, order.col)?;
    let names = order.names(settings.item_templates(), sub.submitted)?;
    let crs = match &tile.crs {
        cedar::grid::Crs::Code(s) | cedar::grid::Crs::Wkt(s) => s.clone(),
    };
    let inner = tile
        .bounds
        .inset(cedar::earthengine::expression::FOOTPRINT_INSET);
    let b = &tile.bounds;
    let t = &tile.transform;
    let export = &settings.config.export;
    // The Python client's method for cedar's cast.
    let cast = match spec.data_type {
        DataType::Int8 => "toInt8",
        DataType::Uint8 => "toUint8",
        DataType::Int16 => "toInt16",
        DataType::Uint16 => "toUint16",
        DataType::Int32 => "toInt32",
        DataType::Uint32 => "toUint32",
        DataType::Float => "toFloat",
        DataType::Double => "toDouble",
    };
    let filters: Vec<serde_json::Value> = spec
        .filters
        .iter()
        .map(|f| {
            let value = match &f.value {
                FilterValue::Number(n) => serde_json::json!(n),
                FilterValue::Text(s) => serde_json::json!(s),
            };
            serde_json::json!({"property": f.property, "op": f.op.symbol(), "value": value})
        })
        .collect();
    Ok(serde_json::json!({
        "collection": spec.id,
        "bands": spec.bands.iter().map(|b| b.native.as_str()).collect::<Vec<_>>(),
        "names": spec.bands.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        "nodata": spec.nodata,
        "cast": cast,
        "mosaic_per_day": spec.mosaic_per_day,
        "filters": filters,
        "footprint": {"crs": crs, "coordinates": [inner.left, inner.bottom, inner.right, inner.top]},
        "start": order.period.start.to_string(),
        "end": order.period.end.to_string(),
        "crs": crs,
        "crs_transform": [t.scale_x, t.shear_x, t.translate_x, t.shear_y, t.scale_y, t.translate_y],
        "dimensions": tile.dimensions(),
        "region": [b.left, b.bottom, b.right, b.top],
        "file_dimensions": export.file_dimensions,
        "cloud_optimized": export.cloud_optimized,
        "max_pixels": export.max_pixels,
        "description": names.name,
        "file_name_prefix": format!("baseline/{}", names.object_base()),
        "tracking": sub.name,
    }))
}

// ---------------------------------------------------------------------------------------------
// cedar bench download

/// The folder the download bench's pieces are exported under.
const DOWNLOAD_PREFIX: &str = "CEDAR_PREARD/";

async fn download(a: DownloadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.gib > 0.0 && a.gib.is_finite() && a.piece_mib > 0,
        "--gib and --piece-mib must be positive"
    );
    let (_, dir) = scratch_dir()?;
    let result = download_in(&dir, &a).await;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("warning: could not remove {}: {e}", dir.display());
    }
    result
}

/// Size and checksums of one piece, as written.
#[derive(Debug, Clone, Copy)]
struct PieceSums {
    md5: [u8; 16],
    crc32c: u32,
}

async fn download_in(dir: &Path, a: &DownloadArgs) -> anyhow::Result<()> {
    let bucket_dir = dir.join("bucket");
    let piece_bytes = a.piece_mib * 1024 * 1024;
    let pieces = ((a.gib * f64::from(1u32 << 30)) / piece_bytes as f64)
        .ceil()
        .max(1.0) as usize;
    let generate_dir = bucket_dir.clone();
    let sums = tokio::task::spawn_blocking(move || {
        write_pieces(&generate_dir, pieces, piece_bytes as usize)
    })
    .await??;
    let total: u64 = piece_bytes * pieces as u64;
    let emulator = start_emulator(&bucket_dir, EmulatorOptions::default()).await?;
    let result = download_runs(dir, &bucket_dir, &emulator, &sums, total).await;
    emulator.shutdown().await;
    let CopyTimes {
        cp_before,
        cp_after,
        cp_sync,
        fsync_each,
        file,
        gs,
    } = result?;

    let mb_per_s = |d: Duration| total as f64 / 1e6 / d.as_secs_f64();
    let baseline = cp_before.min(cp_after);
    println!(
        "cedar bench download: {pieces} pieces of {} MiB ({:.2} GiB) in the emulator's bucket folder {}, copied to a local folder on the same disk",
        a.piece_mib,
        total as f64 / f64::from(1u32 << 30),
        bucket_dir.display()
    );
    println!(
        "page cache: every run reads the same source files, read once in full just before it (warm); each run starts after `sync`; cedar fsyncs every file it writes, cp does not (see the cp + sync row); MB = 10^6 bytes"
    );
    let mut t = Table::new(["copy", "list s", "copy s", "MB/s", "÷ baseline", "checks"]);
    t.row([
        "baseline: cp -r (best of two)".into(),
        "".into(),
        secs(baseline),
        format!("{:.0}", mb_per_s(baseline)),
        "1".into(),
        format!(
            "runs {:.0} and {:.0} MB/s",
            mb_per_s(cp_before),
            mb_per_s(cp_after)
        ),
    ]);
    t.row([
        "cp -r, then sync".into(),
        "".into(),
        secs(cp_sync),
        format!("{:.0}", mb_per_s(cp_sync)),
        format!("{:.2}", baseline.as_secs_f64() / cp_sync.as_secs_f64()),
        "".into(),
    ]);
    t.row([
        "copy + fsync of each file in turn (std::fs::copy, sync_all)".into(),
        "".into(),
        secs(fsync_each),
        format!("{:.0}", mb_per_s(fsync_each)),
        format!("{:.2}", baseline.as_secs_f64() / fsync_each.as_secs_f64()),
        "the durability cedar gives each file".into(),
    ]);
    for (label, run, checks) in [
        (
            "cedar copy_verified from file://",
            file,
            "size, md5, crc32c (from the generation manifest: a local listing has none)",
        ),
        (
            "cedar copy_verified from gs:// (emulator JSON API)",
            gs,
            "size, md5, crc32c (from objects.list)",
        ),
    ] {
        t.row([
            label.into(),
            secs(run.list),
            secs(run.copy),
            format!("{:.0}", mb_per_s(run.copy)),
            format!("{:.2}", baseline.as_secs_f64() / run.copy.as_secs_f64()),
            checks.into(),
        ]);
    }
    t.print();
    Ok(())
}

/// Writes `pieces` random pieces named as EE names the pieces of 5000×5000 exports split at
/// 1024 pixels, and returns their checksums by object name.
fn write_pieces(
    bucket_dir: &Path,
    pieces: usize,
    piece_bytes: usize,
) -> anyhow::Result<BTreeMap<String, PieceSums>> {
    use md5::Digest as _;
    use rand::RngCore as _;
    let per_export = cedar::order::expected_pieces(5000, 5000, 1024);
    let mut sums = BTreeMap::new();
    let mut rng = rand::rng();
    let mut body = vec![0u8; piece_bytes];
    for i in 0..pieces {
        let base = format!("{DOWNLOAD_PREFIX}bench_{:03}", i / per_export.len());
        let name = cedar::order::piece_object(&base, per_export[i % per_export.len()]);
        rng.fill_bytes(&mut body);
        let path = bucket_dir.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &body).with_context(|| format!("writing {}", path.display()))?;
        sums.insert(
            name,
            PieceSums {
                md5: md5::Md5::digest(&body).into(),
                crc32c: crc32c::crc32c(&body),
            },
        );
    }
    Ok(sums)
}

/// Listing and copying time of one `copy_verified` run.
#[derive(Debug, Clone, Copy)]
struct CopyRun {
    list: Duration,
    copy: Duration,
}

/// `cp -r` before, cedar from `file://`, cedar from `gs://`, `cp -r` after, `cp -r` + sync,
/// a copy fsyncing each file.
async fn download_runs(
    dir: &Path,
    bucket_dir: &Path,
    emulator: &RunningEmulator,
    sums: &BTreeMap<String, PieceSums>,
    total: u64,
) -> anyhow::Result<CopyTimes> {
    let cp_before = cp_run(bucket_dir, &dir.join("cp-1"), false).await?;
    let file_url = url::Url::from_directory_path(bucket_dir)
        .map_err(|()| anyhow::anyhow!("{} is not absolute", bucket_dir.display()))?;
    let file = copy_run(
        bucket_dir,
        &dir.join("cedar-file"),
        cedar::store::open_bucket(file_url.as_str(), None, Arc::new(cedar::auth::NoAuth))?,
        sums,
        total,
        true,
    )
    .await?;
    let gs = copy_run(
        bucket_dir,
        &dir.join("cedar-gs"),
        cedar::store::open_bucket(
            &format!("gs://{PROJECT}"),
            Some(&emulator.url()),
            Arc::new(cedar::auth::NoAuth),
        )?,
        sums,
        total,
        false,
    )
    .await?;
    let cp_after = cp_run(bucket_dir, &dir.join("cp-2"), false).await?;
    let cp_sync = cp_run(bucket_dir, &dir.join("cp-3"), true).await?;
    let fsync_each = fsync_copy_run(bucket_dir, &dir.join("fsync-copy")).await?;
    Ok(CopyTimes {
        cp_before,
        cp_after,
        cp_sync,
        fsync_each,
        file,
        gs,
    })
}

/// The times of every copy of `cedar bench download`.
#[derive(Debug, Clone, Copy)]
struct CopyTimes {
    cp_before: Duration,
    cp_after: Duration,
    cp_sync: Duration,
    fsync_each: Duration,
    file: CopyRun,
    gs: CopyRun,
}

/// Times a copy of every file, one after the other, each fsynced before the next: the
/// durability cedar gives each download, without its checks. Deletes `dest` afterwards.
async fn fsync_copy_run(bucket_dir: &Path, dest: &Path) -> anyhow::Result<Duration> {
    sync().await?;
    warm(bucket_dir).await?;
    let (from, to) = (bucket_dir.to_path_buf(), dest.to_path_buf());
    let took = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut stack = vec![from.clone()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let path = entry?.path();
                let target = to.join(path.strip_prefix(&from)?);
                if path.is_dir() {
                    std::fs::create_dir_all(&target)?;
                    stack.push(path);
                } else {
                    std::fs::copy(&path, &target)?;
                    std::fs::File::open(&target)?.sync_all()?;
                }
            }
        }
        Ok(started.elapsed())
    })
    .await??;
    std::fs::remove_dir_all(dest)?;
    Ok(took)
}

/// Reads every file under `dir` once, so that the copy that follows reads from the page cache.
async fn warm(dir: &Path) -> anyhow::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    std::io::copy(&mut std::fs::File::open(&path)?, &mut std::io::sink())?;
                }
            }
        }
        Ok(())
    })
    .await?
}

async fn sync() -> anyhow::Result<()> {
    let status = tokio::process::Command::new("sync").status().await?;
    anyhow::ensure!(status.success(), "sync failed: {status}");
    Ok(())
}

/// Times `cp -r bucket dest` (and a `sync` after it when `then_sync`), then deletes `dest`.
async fn cp_run(bucket_dir: &Path, dest: &Path, then_sync: bool) -> anyhow::Result<Duration> {
    sync().await?;
    warm(bucket_dir).await?;
    let started = Instant::now();
    let status = tokio::process::Command::new("cp")
        .arg("-r")
        .arg(bucket_dir)
        .arg(dest)
        .status()
        .await
        .context("running cp")?;
    anyhow::ensure!(status.success(), "cp -r failed: {status}");
    if then_sync {
        sync().await?;
    }
    let took = started.elapsed();
    std::fs::remove_dir_all(dest)?;
    Ok(took)
}

/// Lists the pieces in `bucket` and times `copy_verified` of all of them into `dest`, checked
/// against the manifest; `add_sums` supplies the checksums a local listing lacks.
async fn copy_run(
    bucket_dir: &Path,
    dest: &Path,
    bucket: Arc<dyn cedar::store::ExportBucket>,
    sums: &BTreeMap<String, PieceSums>,
    total: u64,
    add_sums: bool,
) -> anyhow::Result<CopyRun> {
    sync().await?;
    warm(bucket_dir).await?;
    let started = Instant::now();
    let mut objects = bucket.list(DOWNLOAD_PREFIX).await?;
    let list = started.elapsed();
    anyhow::ensure!(
        objects.len() == sums.len(),
        "listed {} of {} pieces",
        objects.len(),
        sums.len()
    );
    for o in &mut objects {
        let s = sums
            .get(&o.name)
            .with_context(|| format!("listed an unknown object {}", o.name))?;
        if add_sums {
            o.md5 = Some(s.md5);
            o.crc32c = Some(s.crc32c);
        }
        anyhow::ensure!(
            o.md5 == Some(s.md5) && o.crc32c == Some(s.crc32c),
            "{}: the listing's checksums are not the ones written",
            o.name
        );
    }
    let destination = cedar::store::Destination::local(dest);
    let started = Instant::now();
    let (verified, bytes) = cedar::jobs::download::copy_verified(
        bucket.as_ref(),
        &destination,
        "bench",
        &objects,
        true,
    )
    .await
    .map_err(|e| anyhow::anyhow!("copy_verified: {e}"))?;
    let copy = started.elapsed();
    anyhow::ensure!(
        verified.len() == sums.len() && bytes == total,
        "copied {} objects, {bytes} bytes; expected {}, {total}",
        verified.len(),
        sums.len()
    );
    std::fs::remove_dir_all(dest)?;
    Ok(CopyRun { list, copy })
}

// ---------------------------------------------------------------------------------------------
// What every bench shares

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

    /// A key of this bench's namespace.
    fn key(&self, name: &str) -> String {
        format!("{}:bench:{name}", self.namespace)
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
            bytes_per_pixel: BYTES_PER_PIXEL,
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
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_benchmark_output() {
        let out = "LPUSH k xxx: rps=0.0 (overall: 0.0) avg_msec=-nan (overall: -nan)\r\
                   LPUSH k:lpush xxx: 488585.34 requests per second, p50=4.735 msec\n";
        assert_eq!(parse_requests_per_second(out), Some(488585.34));
        assert_eq!(parse_requests_per_second("nothing"), None);
    }

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
