//! `cedar bench rss`: peak resident memory of a `cedar worker` process with N jobs queued and
//! thousands of EE tasks in flight, against the same worker idle.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use cedar::config::Settings;
use cedar::emulator::RunningEmulator;
use cedar::jobs::JobSettings;
use cedar::queue::Stage;
use cedar::submit;
use cedar::worker;

use super::{
    RedisArgs, Scratch, Table, WorkerProcess, campaign, describe, describe_counts, emulated_ee,
    scan_keys, verdict, with_emulator,
};

/// Options of `cedar bench rss`.
#[derive(Debug, Clone, clap::Args)]
pub struct RssArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Jobs (tile-periods) queued.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: u64,
    /// EE tasks in flight (`--max-active-exports` of the worker, which caps it at 2,900).
    #[arg(long, default_value_t = 2900)]
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

/// Runs the bench against an emulator whose tasks run long, so that they stay in flight.
pub(super) async fn run(a: RssArgs) -> anyhow::Result<()> {
    let options = emulated_ee(a.task_seconds, a.time_scale, a.max_concurrent_exports);
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
    let worker_args = |config: &Path, log: &str| {
        loaded_worker(bench, config, log, a.in_flight, a.ee_requests_per_second)
    };
    let idle_mem = idle_memory(bench, &settings, &worker_args).await?;

    let ctx = cedar::jobs::Context::connect(settings.clone(), JobSettings::default()).await?;
    let req = campaign(&settings, a.jobs)?;
    let plan = submit::plan(&settings, &req, chrono::Utc::now())?;
    let queued = submit::enqueue(&ctx, &plan).await?;
    let redis_queued = namespace_memory(&bench.redis, &bench.namespace).await?;

    let mut loaded = worker_args(&config_path, "worker.log")?;
    let cap = worker::admission_cap(Some(a.in_flight), None, 1);
    let target = cap * 95 / 100;
    let log = bench.dir.join("worker.log");
    let result = hold_in_flight(&ctx, &mut loaded, target, a.timeout_secs, a.hold_secs, &log).await;
    let mem = loaded.pid().and_then(read_memory);
    let redis_loaded = namespace_memory(&bench.redis, &bench.namespace).await;
    let counts = ctx.tracker.counts(&plan.submission.name).await;
    let depth = ctx.queue.depth(Stage::Export).await;
    loaded.stop().await;
    let Held {
        ramp,
        low,
        high: peak_in_flight,
    } = result?;
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
    print_memory(idle_mem, mem, "loaded `cedar worker`");
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

/// `cedar worker` on `config` as the memory benches run it: admitting `in_flight` exports at
/// `ee_requests_per_second`, logging to `log` in the bench's folder.
pub(super) fn loaded_worker(
    bench: &Scratch,
    config: &Path,
    log: &str,
    in_flight: u64,
    ee_requests_per_second: u32,
) -> anyhow::Result<WorkerProcess> {
    WorkerProcess::spawn(
        config,
        &bench.dir.join(log),
        &[
            "--max-active-exports".into(),
            in_flight.to_string(),
            "--ee-requests-per-second".into(),
            ee_requests_per_second.to_string(),
            "--drain-secs".into(),
            "5".into(),
        ],
    )
}

/// The baseline of the memory benches: the same binary and configuration, started by `spawn`
/// in a namespace of its own with nothing to do, measured after 5 s.
pub(super) async fn idle_memory(
    bench: &Scratch,
    settings: &Settings,
    spawn: impl Fn(&Path, &str) -> anyhow::Result<WorkerProcess>,
) -> anyhow::Result<Memory> {
    let mut idle_config = settings.config.clone();
    idle_config.queue.namespace = bench.sub("idle");
    let idle_path = bench.dir.join("cedar-idle.toml");
    std::fs::write(&idle_path, toml::to_string(&idle_config)?)?;
    let log = "worker-idle.log";
    let mut idle = spawn(&idle_path, log)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    idle.check_alive().with_context(|| {
        format!(
            "the idle worker; its log: {}",
            bench.dir.join(log).display()
        )
    })?;
    let memory = read_memory(idle.pid()?)?;
    idle.stop().await;
    Ok(memory)
}

/// How a loaded worker kept its tasks in flight ([`hold_in_flight`]).
pub(super) struct Held {
    /// From the worker's start until `target` tasks were in flight.
    pub ramp: Duration,
    /// The fewest and most in flight during the hold.
    pub low: u64,
    pub high: u64,
}

/// Waits (at most `timeout_secs`) until `worker` has `target` EE tasks in flight, then watches
/// it keep them for `hold_secs`; fails, naming `log`, if it never gets there or exits.
pub(super) async fn hold_in_flight(
    ctx: &cedar::jobs::Context,
    worker: &mut WorkerProcess,
    target: u64,
    timeout_secs: u64,
    hold_secs: u64,
    log: &Path,
) -> anyhow::Result<Held> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(timeout_secs);
    loop {
        let n = in_flight(ctx).await?;
        if n >= target {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {n} tasks in flight after {timeout_secs} s (want {target}); see {}",
                log.display()
            );
        }
        worker.check_alive()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ramp = started.elapsed();
    let until = Instant::now() + Duration::from_secs(hold_secs);
    let (mut low, mut high) = (u64::MAX, 0);
    while Instant::now() < until {
        let n = in_flight(ctx).await?;
        (low, high) = (low.min(n), high.max(n));
        worker.check_alive()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(Held { ramp, low, high })
}

/// Tasks started in EE and not yet ended: the poll stage's jobs, due or leased.
pub(super) async fn in_flight(ctx: &cedar::jobs::Context) -> anyhow::Result<u64> {
    let d = ctx.queue.depth(Stage::Poll).await?;
    Ok(d.due_now + d.scheduled + d.leased)
}

/// The table of a loaded worker's memory (`label`) against the idle one's, and the 150 MiB target.
pub(super) fn print_memory(idle: Memory, loaded: Memory, label: &str) {
    let mib = |b: u64| format!("{:.1}", b as f64 / (1024.0 * 1024.0));
    let mut t = Table::new(["process", "VmHWM MiB", "VmRSS MiB", "÷ baseline", "target"]);
    t.row([
        "baseline: idle `cedar worker`".into(),
        mib(idle.hwm),
        mib(idle.rss),
        "1".into(),
        "".into(),
    ]);
    t.row([
        label.into(),
        mib(loaded.hwm),
        mib(loaded.rss),
        format!("{:.2}", loaded.hwm as f64 / idle.hwm.max(1) as f64),
        verdict(loaded.hwm <= 150 * 1024 * 1024, "≤ 150 MiB"),
    ]);
    t.print();
}

/// Memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Memory {
    /// Peak resident set (VmHWM), bytes.
    pub hwm: u64,
    /// Resident set now (VmRSS), bytes.
    pub rss: u64,
}

pub(super) fn read_memory(pid: u32) -> anyhow::Result<Memory> {
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
