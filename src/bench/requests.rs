//! `cedar bench requests`: EE requests per completed tile-period with N tasks in flight, on
//! emulated time, against the two requests (compute + export) a tile-period needs at least.

use std::sync::Arc;
use std::time::Duration;

use cedar::emulator::RunningEmulator;
use cedar::jobs::JobSettings;
use cedar::jobs::poll::SweepSettings;
use cedar::queue::tracking::OrderState;
use cedar::submit;
use cedar::worker::WorkerOptions;

use super::{
    RedisArgs, Scratch, Table, campaign, describe, describe_counts, emulated_ee, run_in_process,
    secs, verdict, with_emulator,
};

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

/// Runs the bench against an emulator on emulated time, in-process workers and a namespace of
/// its own.
pub(super) async fn run(a: RequestsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.time_scale > 0.0 && a.time_scale.is_finite(),
        "--time-scale must be positive"
    );
    let options = emulated_ee(a.task_seconds, a.time_scale, a.max_concurrent_exports);
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

    let plan = submit::plan(
        &settings,
        &campaign(&settings, a.in_flight)?,
        chrono::Utc::now(),
    )?;
    let total = plan.submission.order_count() as u64;
    let (wall, counts, stats) = run_in_process(
        &settings,
        &jobs,
        &opts,
        a.workers,
        &plan,
        Duration::from_secs(a.timeout_secs),
        || emulator.stats(),
    )
    .await?;

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
