//! `cedar bench scale`: the whole-CONUS archive (726 tiles × 480 monthly periods × 4 Landsat
//! collections, 1.39 million orders) in one submission. Submit time and Redis bytes per queued
//! order (and the same on an SQLite queue) against the same orders queued one job each (the
//! layout before export runs), `cedar
//! status --json` against the same command on a one-order submission, the RSS of a `cedar
//! worker` running the archive with thousands of EE tasks in flight against the same worker
//! idle, and what `show` (the tracking document, streamed) and `cancel` cost at that size.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::NaiveDate;

use cedar::collection::PRESET_IDS;
use cedar::emulator::RunningEmulator;
use cedar::jobs::JobSettings;
use cedar::queue::{Queue, Stage};
use cedar::submit::{self, Request};
use cedar::worker;

use super::rss::{Held, hold_in_flight, idle_memory, loaded_worker, print_memory, read_memory};
use super::{RedisArgs, Scratch, Table, emulated_ee, verdict, with_emulator};

/// Options of `cedar bench scale`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Orders queued one job each for the baseline (the layout before export runs).
    #[arg(long, default_value_t = 100_000)]
    pub baseline_jobs: usize,
    /// EE tasks in flight while the worker runs the archive (its `--max-active-exports`).
    #[arg(long, default_value_t = 2900)]
    pub in_flight: u64,
    /// Real seconds the loaded worker is watched once the tasks are in flight.
    #[arg(long, default_value_t = 30)]
    pub hold_secs: u64,
    /// Give up waiting for the tasks to be in flight after this many real seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Skip `cedar cancel` of the archive at the end (it writes a record per order).
    #[arg(long)]
    pub no_cancel: bool,
}

/// Runs the bench against an emulator whose tasks run long, so that they stay in flight.
pub(super) async fn run(a: ScaleArgs) -> anyhow::Result<()> {
    // EE runs 200 at once; each task lasts 600 emulated seconds at 10x, so the rest wait.
    let options = emulated_ee(600.0, 10.0, 200);
    with_emulator(&a.redis.redis, options, async |bench, emulator| {
        scale_in(bench, emulator, &a).await
    })
    .await
}

/// The size of the archive a bench builds.
#[derive(Debug, Clone, clap::Args)]
pub struct ArchiveArgs {
    /// Tiles of the CONUS grid, row-major from its corner (726 = all of it).
    #[arg(long, default_value_t = 726)]
    pub tiles: usize,
    /// Monthly periods from January 1985 (480 = 40 years).
    #[arg(long, default_value_t = 480)]
    pub months: u32,
}

impl ArchiveArgs {
    /// The archive's request on the grid `settings` give, and every tile of that grid.
    pub(super) fn request(
        &self,
        settings: &cedar::config::Settings,
    ) -> anyhow::Result<(Request, Vec<(u32, u32)>)> {
        let all_tiles: Vec<(u32, u32)> = settings.grid.limits.indices().collect();
        anyhow::ensure!(
            (1..=all_tiles.len()).contains(&self.tiles),
            "--tiles between 1 and {}",
            all_tiles.len()
        );
        Ok((archive(&all_tiles[..self.tiles], self.months)?, all_tiles))
    }
}

/// A one-order submission named `name` of the first tile, in the month before the archive's
/// first (which it would otherwise overlap): the baseline of a per-campaign figure.
pub(super) fn one_order(all_tiles: &[(u32, u32)], name: &str) -> anyhow::Result<Request> {
    let mut small = archive(&all_tiles[..1], 1)?;
    small.collections.truncate(1);
    small.name = Some(name.into());
    small.start = NaiveDate::from_ymd_opt(1984, 12, 1).expect("a date");
    // The period holding `end` is included (as in the original): one month.
    small.end = NaiveDate::from_ymd_opt(1984, 12, 15).expect("a date");
    Ok(small)
}

/// The archive's request: the Landsat presets × `tiles` × `months` monthly periods from 1985.
fn archive(tiles: &[(u32, u32)], months: u32) -> anyhow::Result<Request> {
    let start = NaiveDate::from_ymd_opt(1985, 1, 1).expect("a date");
    let end = start
        .checked_add_months(chrono::Months::new(months))
        .context("months out of range")?;
    Ok(Request {
        name: None,
        workload_tag: None,
        collections: PRESET_IDS
            .iter()
            .filter(|c| c.starts_with("LANDSAT/"))
            .map(|c| c.to_string())
            .collect(),
        tiles: tiles.to_vec(),
        start,
        end,
        freq: Some("1MS".parse()?),
        save_empty_metadata: false,
        error_if_empty: false,
        priority: None,
    })
}

/// Redis's `used_memory` (`INFO memory`), bytes.
async fn used_memory(redis: &str) -> anyhow::Result<u64> {
    let mut conn = cedar::queue::redis::connect(redis).await?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

/// Runs this binary with `args` on `config`, stdout to `out`; its wall time and stdout size.
async fn timed_cli(
    config: &Path,
    args: &[&str],
    out: &Path,
) -> anyhow::Result<(Duration, u64, String)> {
    let exe = std::env::current_exe().context("locating the cedar binary")?;
    let file = std::fs::File::create(out)?;
    let started = Instant::now();
    let output = tokio::process::Command::new(exe)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("CEDAR_LOG", "warn")
        .stdout(file)
        .stderr(std::process::Stdio::piped())
        .spawn()?
        .wait_with_output()
        .await?;
    let took = started.elapsed();
    // `status` exits 3 while the campaign runs, which is not a failure here.
    if !matches!(output.status.code(), Some(0 | 3 | 4 | 5)) {
        bail!(
            "cedar {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let size = std::fs::metadata(out)?.len();
    let head = std::fs::read(out)?
        .into_iter()
        .take(300)
        .map(char::from)
        .collect();
    Ok((took, size, head))
}

/// The size of an SQLite database with its write-ahead log (0 for none).
fn file_bytes(db: &Path) -> u64 {
    let wal = db.with_file_name(format!(
        "{}-wal",
        db.file_name().and_then(|n| n.to_str()).unwrap_or_default()
    ));
    [db, wal.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The last lines of a worker's log, for an error.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "{}:\n{}",
        log.display(),
        lines[lines.len().saturating_sub(20)..].join("\n")
    )
}

/// The fastest of `n` runs (the least disturbed by the machine).
async fn best_of(n: usize, config: &Path, args: &[&str], out: &Path) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..n {
        best = best.min(timed_cli(config, args, out).await?.0);
    }
    Ok(best)
}

async fn scale_in(
    bench: &Scratch,
    emulator: &RunningEmulator,
    a: &ScaleArgs,
) -> anyhow::Result<()> {
    let settings = Arc::new(bench.settings(Some(emulator))?);
    let config_path = bench.dir.join("cedar.toml");
    std::fs::write(&config_path, toml::to_string(&settings.config)?)?;
    let ctx = cedar::jobs::Context::connect(settings.clone(), JobSettings::default()).await?;
    let (req, all_tiles) = a.archive.request(&settings)?;
    let secs = |d: Duration| format!("{:.2}", d.as_secs_f64());
    let mib = |b: u64| format!("{:.1}", b as f64 / (1024.0 * 1024.0));

    // Baseline 1: the same kind of orders queued one job each, in a namespace of its own.
    let sample = submit::plan(&settings, &req, chrono::Utc::now())?;
    let jobs: Vec<_> = sample
        .submission
        .orders()
        .take(a.baseline_jobs)
        .map(|o| cedar::jobs::job_for(&sample.submission.name, &o, None))
        .collect();
    let one_by_one = Queue::open(&bench.redis, &bench.sub("jobs")).await?;
    let before = used_memory(&bench.redis).await?;
    let started = Instant::now();
    for chunk in jobs.chunks(20_000) {
        one_by_one
            .enqueue_bulk(Stage::Export, chunk, Duration::ZERO)
            .await?;
    }
    let per_job_time = started.elapsed();
    let per_job_bytes =
        used_memory(&bench.redis).await?.saturating_sub(before) as f64 / jobs.len().max(1) as f64;
    drop(jobs);
    drop(sample);

    // The archive.
    let before = used_memory(&bench.redis).await?;
    let started = Instant::now();
    let plan = submit::plan(&settings, &req, chrono::Utc::now())?;
    let planned = started.elapsed();
    let queued = submit::enqueue(&ctx, &plan).await?;
    let submitted = started.elapsed();
    let orders = plan.submission.order_count() as u64;
    anyhow::ensure!(queued == orders, "queued {queued} of {orders} orders");
    let per_order_bytes =
        used_memory(&bench.redis).await?.saturating_sub(before) as f64 / orders as f64;
    let name = plan.submission.name.clone();
    drop(plan);

    // The same archive on the single-machine queue: an SQLite file of its own.
    let db = bench.dir.join("cedar.db");
    let mut lite_config = settings.config.clone();
    lite_config.queue.url = format!("sqlite://{}", db.display());
    let lite_path = bench.dir.join("cedar-sqlite.toml");
    std::fs::write(&lite_path, toml::to_string(&lite_config)?)?;
    let lite =
        cedar::jobs::Context::connect(Arc::new(lite_config.validate()?), JobSettings::default())
            .await?;
    let empty_file = file_bytes(&db);
    let started = Instant::now();
    let lite_plan = submit::plan(&lite.settings, &req, chrono::Utc::now())?;
    let lite_queued = submit::enqueue(&lite, &lite_plan).await?;
    let lite_submitted = started.elapsed();
    anyhow::ensure!(
        lite_queued == orders,
        "SQLite queued {lite_queued} of {orders}"
    );
    let lite_bytes = file_bytes(&db).saturating_sub(empty_file) as f64 / orders as f64;
    let lite_name = lite_plan.submission.name.clone();
    drop(lite_plan);
    let out = bench.dir.join("status-sqlite.json");
    let lite_status = best_of(3, &lite_path, &["status", &lite_name, "--json"], &out).await?;

    // Baseline 2: `status --json` of a one-order submission in the same namespace.
    let small = one_order(&all_tiles, "bench-scale-one-order")?;
    let small_plan = submit::plan(&settings, &small, chrono::Utc::now())?;
    submit::enqueue(&ctx, &small_plan).await?;
    let out = bench.dir.join("status.json");
    let status_small = best_of(
        3,
        &config_path,
        &["status", "bench-scale-one-order", "--json"],
        &out,
    )
    .await?;
    let status_archive = best_of(3, &config_path, &["status", &name, "--json"], &out).await?;
    let (_, _, status_json) = timed_cli(&config_path, &["status", &name, "--json"], &out).await?;

    // The worker: idle baseline, then the archive with thousands of tasks in flight.
    eprintln!(
        "submitted {orders} orders in {} s; starting the workers",
        secs(submitted)
    );
    let worker = |config: &Path, log: &str| loaded_worker(bench, config, log, a.in_flight, 1000);
    let idle_mem = idle_memory(bench, &settings, &worker).await?;

    let mut loaded = worker(&config_path, "worker.log")?;
    let cap = worker::admission_cap(Some(a.in_flight), None, 1);
    let target = cap * 95 / 100;
    let log = bench.dir.join("worker.log");
    let held = hold_in_flight(&ctx, &mut loaded, target, a.timeout_secs, a.hold_secs, &log).await;
    let mem = loaded.pid().and_then(read_memory);
    let counts = ctx.tracker.counts(&name).await;
    let redis_running = used_memory(&bench.redis).await;
    loaded.stop().await;
    let Held { ramp, low, high } = held.with_context(|| tail(&log))?;
    eprintln!("worker held; `cedar show` and `cedar cancel` of the archive next");
    let mem = mem?;
    let counts = counts?;
    let redis_running = redis_running?;
    let document_published = ctx
        .bucket
        .list(&cedar::document::document_object(&settings, &name))
        .await?
        .first()
        .map(|o| o.size);

    // Everything else at that size: the document streamed by `show`, then `cancel`.
    let doc = bench.dir.join("show.json");
    let (show_time, show_bytes, _) = timed_cli(&config_path, &["show", &name], &doc).await?;
    std::fs::remove_file(&doc).ok();
    let cancel = if a.no_cancel {
        None
    } else {
        let out = bench.dir.join("cancel.txt");
        let took = timed_cli(&config_path, &["cancel", &name], &out).await?.0;
        let after = used_memory(&bench.redis).await?;
        Some((took, after))
    };

    println!(
        "cedar bench scale: {orders} orders ({} collections x {} tiles x {} months), one submission; \
         worker --max-active-exports {} (cap {cap}); EE runs 200 at once, tasks 600 s emulated at 10x",
        req.collections.len(),
        req.tiles.len(),
        a.archive.months,
        a.in_flight
    );
    let mut t = Table::new([
        "submit",
        "seconds",
        "Redis bytes/order",
        "÷ baseline",
        "target",
    ]);
    t.row([
        format!("baseline: {} orders queued one job each", a.baseline_jobs),
        secs(per_job_time),
        format!("{per_job_bytes:.0}"),
        "1".into(),
        "".into(),
    ]);
    t.row([
        format!("the archive, one export run (plan {} s)", secs(planned)),
        secs(submitted),
        format!("{per_order_bytes:.1}"),
        format!("{:.3}", per_order_bytes / per_job_bytes.max(1.0)),
        verdict(
            submitted <= Duration::from_secs(5) && per_order_bytes <= 200.0,
            "≤ 5 s, ≤ 200 B/order",
        ),
    ]);
    t.row([
        "the archive on SQLite (file bytes/order, WAL included)".into(),
        secs(lite_submitted),
        format!("{lite_bytes:.1}"),
        format!("{:.3}", lite_bytes / per_job_bytes.max(1.0)),
        verdict(lite_submitted <= Duration::from_secs(5), "≤ 5 s"),
    ]);
    t.print();
    let mut t = Table::new([
        "`cedar status NAME --json`",
        "seconds (best of 3)",
        "÷ baseline",
        "target",
    ]);
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64());
    t.row([
        "baseline: a one-order submission".into(),
        ms(status_small),
        "1".into(),
        "".into(),
    ]);
    t.row([
        "the archive on SQLite".into(),
        ms(lite_status),
        format!(
            "{:.2}",
            lite_status.as_secs_f64() / status_small.as_secs_f64().max(1e-6)
        ),
        verdict(lite_status <= Duration::from_secs(1), "≤ 1 s"),
    ]);
    t.row([
        "the archive".into(),
        ms(status_archive),
        format!(
            "{:.2}",
            status_archive.as_secs_f64() / status_small.as_secs_f64().max(1e-6)
        ),
        verdict(status_archive <= Duration::from_secs(1), "≤ 1 s"),
    ]);
    t.print();
    println!("status --json: {}", status_json.trim());
    println!(
        "worker: {target}+ tasks in flight after {} s, then {low}-{high} for {} s; orders at the end: {counts:?}",
        secs(ramp),
        a.hold_secs
    );
    print_memory(idle_mem, mem, "`cedar worker` running the archive");
    println!(
        "tracking document: published by the worker: {}; `cedar show` streamed {} MiB in {} s ({:.0} bytes/order)",
        document_published.map_or("not yet".into(), |b| format!("{} MiB", mib(b))),
        mib(show_bytes),
        secs(show_time),
        show_bytes as f64 / orders as f64
    );
    let queued = counts
        .get(&cedar::queue::tracking::OrderState::Queued)
        .copied()
        .unwrap_or(0);
    let started_orders = orders - queued;
    println!(
        "Redis while the worker ran: {:.0} bytes per started order ({started_orders} started: its record, its jobs, its operation in the snapshot)",
        redis_running.saturating_sub(before) as f64 / started_orders.max(1) as f64
    );
    if let Some((took, after)) = cancel {
        println!(
            "`cedar cancel` of the archive: {} s; then {:.0} Redis bytes per order (every order has a CANCELLED record)",
            secs(took),
            after.saturating_sub(before) as f64 / orders as f64
        );
    }
    Ok(())
}
