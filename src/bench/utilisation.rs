//! `cedar bench utilisation`: how busy cedar keeps EE's run slots when EE's queue holds fewer
//! tasks than cedar may admit, alone and with another pipeline sharing the project.
//!
//! Everything is measured on the emulator's own timeline of every operation (created, started,
//! ended, on its clock):
//! - utilisation = busy slot-seconds ÷ (slots × span), the span running from the campaign's
//!   first task start to its last task end, busy counting every task (ours and the other
//!   pipeline's);
//! - the baseline wall = Σ our task seconds ÷ run slots: EE running our tasks back to back;
//! - starved seconds: time, while orders of the campaign were still to be exported, in which
//!   none of its tasks waited in EE's queue (a run slot that freed then had nothing of ours to
//!   take).

use std::sync::Arc;
use std::time::Duration;

use cedar::emulator::{EmulatorOptions, RunningEmulator, TimelineEntry};
use cedar::jobs::JobSettings;
use cedar::jobs::poll::SweepSettings;
use cedar::submit;
use cedar::worker::WorkerOptions;

use super::{RedisArgs, Scratch, Table, campaign, pct, run_in_process, verdict, with_emulator};

/// Options of `cedar bench utilisation` (the campaign by default).
#[derive(Debug, Clone, clap::Args)]
pub struct UtilisationArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Tile-periods submitted.
    #[arg(long, default_value_t = 400)]
    pub tile_periods: u64,
    /// EE run slots (tasks running at once).
    #[arg(long, default_value_t = 6)]
    pub slots: u32,
    /// Shortest emulated task, seconds.
    #[arg(long, default_value_t = 0.5)]
    pub task_seconds_min: f64,
    /// Longest emulated task, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub task_seconds_max: f64,
    /// EE's queue limit (tasks PENDING or RUNNING in the project).
    #[arg(long, default_value_t = 40)]
    pub queue_limit: usize,
    /// cedar's admission cap (`max_active_exports`).
    #[arg(long, default_value_t = 60)]
    pub admission_cap: u64,
    /// Tasks another pipeline keeps in the project in the second run.
    #[arg(long, default_value_t = 10)]
    pub other_tasks: usize,
    /// In-process workers sharing the queue.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Emulated seconds per real second (1: EE's time is real time).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Give up on a run after this many real seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// One run's figures, in emulated seconds.
struct Figures {
    orders: u64,
    wall: f64,
    task_sum: f64,
    span: f64,
    utilisation: f64,
    starved: f64,
    requests_per_order: f64,
}

pub(super) async fn run(a: UtilisationArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.time_scale > 0.0 && a.time_scale.is_finite(),
        "--time-scale must be positive"
    );
    anyhow::ensure!(
        a.task_seconds_min > 0.0 && a.task_seconds_max >= a.task_seconds_min,
        "--task-seconds-max must be at least --task-seconds-min, and both positive"
    );
    println!(
        "cedar bench utilisation: {} tile-periods, EE with {} run slots, tasks {}-{} s, queue limit {}, admission cap {}, {} workers, time scale {}x",
        a.tile_periods,
        a.slots,
        a.task_seconds_min,
        a.task_seconds_max,
        a.queue_limit,
        a.admission_cap,
        a.workers,
        a.time_scale
    );
    let mut t = Table::new([
        "run",
        "utilisation",
        "wall s",
        "÷ baseline (Σ task s ÷ slots)",
        "starved s",
        "EE requests per tile-period",
    ]);
    for others in [0, a.other_tasks] {
        let options = EmulatorOptions {
            task_seconds: a.task_seconds_min,
            task_seconds_max: Some(a.task_seconds_max),
            time_scale: a.time_scale,
            max_concurrent_exports: a.slots,
            queue_limit: a.queue_limit,
            other_tasks: others,
            ..EmulatorOptions::default()
        };
        let mut figures = None;
        with_emulator(&a.redis.redis, options, async |bench, emulator| {
            figures = Some(one_run(bench, emulator, &a).await?);
            Ok(())
        })
        .await?;
        let f = figures.expect("the run recorded its figures");
        let baseline = f.task_sum / f64::from(a.slots);
        let label = if others == 0 {
            "alone".to_owned()
        } else {
            format!("{others} tasks of another pipeline")
        };
        t.row([
            format!("{label} ({} orders)", f.orders),
            verdict(
                f.utilisation >= 0.95,
                &format!("{} ≥ 95%", pct(f.utilisation)),
            ),
            format!("{:.1} (span {:.1})", f.wall, f.span),
            if others == 0 {
                verdict(
                    f.wall <= 1.10 * baseline + 10.0,
                    &format!("{:.2} ({baseline:.1} s) ≤ 1.10 + 10 s", f.wall / baseline),
                )
            } else {
                format!("{:.2} ({baseline:.1} s)", f.wall / baseline)
            },
            verdict(f.starved <= 3.0, &format!("{:.1} ≤ 3", f.starved)),
            verdict(
                f.requests_per_order <= 2.2,
                &format!("{:.3} ≤ 2.2", f.requests_per_order),
            ),
        ]);
    }
    t.print();
    Ok(())
}

async fn one_run(
    bench: &Scratch,
    emulator: &RunningEmulator,
    a: &UtilisationArgs,
) -> anyhow::Result<Figures> {
    let settings = Arc::new(bench.settings(Some(emulator))?);
    let jobs = JobSettings::default();
    let defaults = SweepSettings::default();
    let scaled = |d: Duration| d.div_f64(a.time_scale);
    let sweep = SweepSettings {
        min_interval: scaled(defaults.min_interval),
        max_interval: scaled(defaults.max_interval),
        ..defaults
    };
    let opts = WorkerOptions {
        max_active_exports: Some(a.admission_cap),
        jobs: jobs.clone(),
        sweep,
        ..WorkerOptions::default()
    };
    let plan = submit::plan(
        &settings,
        &campaign(&settings, a.tile_periods)?,
        chrono::Utc::now(),
    )?;
    let total = plan.submission.order_count() as u64;
    let (wall, _, (stats, timeline)) = run_in_process(
        &settings,
        &jobs,
        &opts,
        a.workers,
        &plan,
        Duration::from_secs(a.timeout_secs),
        || (emulator.stats(), emulator.timeline()),
    )
    .await?;
    let wall = wall.as_secs_f64() * a.time_scale;
    let requests: u64 = stats.requests.values().sum();
    let mut f = measure(&timeline, a.slots);
    f.orders = total;
    f.wall = wall;
    f.requests_per_order = requests as f64 / total.max(1) as f64;
    Ok(f)
}

/// The timeline's figures (all but the wall and the requests).
fn measure(timeline: &[TimelineEntry], slots: u32) -> Figures {
    let ours: Vec<&TimelineEntry> = timeline.iter().filter(|o| !o.foreign).collect();
    let first = ours
        .iter()
        .filter_map(|o| o.started)
        .fold(f64::INFINITY, f64::min);
    let last = ours
        .iter()
        .filter_map(|o| o.ended)
        .fold(f64::NEG_INFINITY, f64::max);
    let span = (last - first).max(0.0);
    let busy: f64 = timeline
        .iter()
        .filter_map(|o| {
            let (s, e) = (o.started?, o.ended?);
            Some((e.min(last) - s.max(first)).max(0.0))
        })
        .sum();
    let task_sum: f64 = ours
        .iter()
        .filter_map(|o| Some(o.ended? - o.started?))
        .sum();
    // Starved: sampled every 10 ms from the first start to the creation of the last task (after
    // it, no order is left to export).
    let last_created = ours
        .iter()
        .map(|o| o.created)
        .fold(f64::NEG_INFINITY, f64::max);
    let step = 0.01;
    let mut starved = 0.0;
    let mut t = first;
    while t < last_created {
        let waiting = ours
            .iter()
            .any(|o| o.created <= t && o.started.is_none_or(|s| s > t));
        if !waiting {
            starved += step;
        }
        t += step;
    }
    Figures {
        orders: 0,
        wall: 0.0,
        task_sum,
        span,
        utilisation: if span > 0.0 {
            busy / (f64::from(slots) * span)
        } else {
            0.0
        },
        starved,
        requests_per_order: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(foreign: bool, created: f64, started: f64, ended: f64) -> TimelineEntry {
        TimelineEntry {
            name: String::new(),
            description: String::new(),
            foreign,
            state: "SUCCEEDED".into(),
            created,
            started: Some(started),
            ended: Some(ended),
        }
    }

    #[test]
    fn utilisation_and_starvation_come_from_the_timeline() {
        // One slot: ours run 0-1 and 2-3 (created at 0 and 1.5), another pipeline's 1-2.
        let timeline = [
            op(false, 0.0, 0.0, 1.0),
            op(true, 0.0, 1.0, 2.0),
            op(false, 1.5, 2.0, 3.0),
        ];
        let f = measure(&timeline, 1);
        assert!((f.span - 3.0).abs() < 1e-9);
        assert!((f.utilisation - 1.0).abs() < 1e-9);
        assert!((f.task_sum - 2.0).abs() < 1e-9);
        // From 0 to 1.5 nothing of ours waited in the queue, except at t = 0 exactly.
        assert!((f.starved - 1.5).abs() < 0.03, "{}", f.starved);
    }
}
