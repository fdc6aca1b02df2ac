//! `cedar soak`: a campaign of N tile-periods run to the end under every fault at once, then
//! checked against what really happened.
//!
//! It orchestrates real processes in a scratch folder of its own: a `redis-server` on a free
//! port with AOF on, the EE emulator in-process (it also serves the bucket through the Cloud
//! Storage JSON API, so cedar runs its real `gs://` client), and two or more `cedar worker`
//! child processes with short leases. The faults:
//!
//! - EE answers 10% of requests 429 and 10% 503; 5% of tasks end FAILED on their first attempt
//!   only, and the soak runs `cedar retry NAME` when FAILED orders appear, as an operator would;
//! - the first download of a GeoTIFF is cut mid-stream;
//! - one worker is SIGKILLed every `--kill-every-secs` and restarted (worker 0 never is);
//! - Redis is restarted once (SIGTERM, then SIGKILL if it lingers), from its AOF.
//!
//! The campaign runs in two submissions over disjoint tiles. The **storm** (about 80%) gets
//! every fault; once it is home the workers are left alone and the **calm** (the rest) runs
//! with EE's faults only, between two quiet moments, so the workers' counters can be compared
//! exactly with the emulator's (a SIGKILLed worker takes its counters with it).
//!
//! At the end it prints each invariant with PASS or FAIL and exits 1 if any failed:
//! (0) the faults happened; (1) every tile-period exported exactly once; (2) every file in the
//! destination has the size, MD5 and CRC32C of what EE wrote; (3) the bucket holds only
//! tracking documents; (4) every tracking document agrees with the destination; (5) no job left
//! behind; (6) the metrics agree with the emulator over the calm.
//!
//! [`driver`] runs the campaign and gathers the facts, [`process`] is its Redis server and how it
//! stops a child, and [`invariants`] holds the checks: pure functions of those facts.

mod driver;
mod invariants;
mod process;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use driver::Soak;

/// Options of `cedar soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Tile-periods in the campaign (the nearest product of collections × tiles × months above
    /// it when it has no exact one).
    #[arg(long, default_value_t = 300)]
    pub tile_periods: u64,
    /// `cedar worker` processes; worker 0 is never killed, the others take turns.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Seconds between two SIGKILLs of a worker during the storm.
    #[arg(long, default_value_t = 30)]
    pub kill_every_secs: u64,
    /// Lease of every worker: how soon a killed worker's jobs run elsewhere.
    #[arg(long, default_value_t = 10)]
    pub lease_secs: u64,
    /// Give up (and fail) when the campaign is not home after this many seconds.
    #[arg(long, default_value_t = 1500)]
    pub seconds_budget: u64,
    /// Emulated seconds each EE task runs.
    #[arg(long, default_value_t = 2.0)]
    pub task_seconds: f64,
    /// Seed of the emulator's faults and catalogue.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The Redis server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Keep the scratch folder (it is always kept when an invariant fails).
    #[arg(long)]
    pub keep: bool,
}

/// The bucket the emulator serves and the configuration exports to.
const BUCKET: &str = "cedar-soak";
/// Pieces of 2560 pixels: a 5000-pixel tile is 2 × 2 pieces.
const FILE_DIMENSIONS: u32 = 2560;
/// The part of the campaign that runs under every fault.
const STORM_SHARE: f64 = 0.8;
/// EE's fault rates: 10% 429 + 10% 503, 5% of first attempts FAILED.
const THROTTLE_RATE: f64 = 0.1;
const UNAVAILABLE_RATE: f64 = 0.1;
const FAIL_RATE: f64 = 0.05;
/// The cut download stops after this many bytes.
const CUT_AFTER_BYTES: u64 = 512;
/// How often the supervisor looks at the campaign.
const TICK: Duration = Duration::from_millis(500);

/// Runs the soak; exit 0 when every invariant holds.
pub async fn run(args: SoakArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.workers >= 2, "--workers must be at least 2");
    anyhow::ensure!(args.tile_periods >= 2, "--tile-periods must be at least 2");
    let started = Instant::now();
    let dir = scratch_dir()?;
    println!("cedar soak: scratch folder {}", dir.display());
    let mut soak = Soak::start(&args, &dir).await?;
    let outcome = soak.campaign(&args, started).await;
    let report = match outcome {
        Ok(run) => soak.check(run, started).await,
        Err(e) => Err(e),
    };
    soak.stop().await;
    let ok = match report {
        Ok(ok) => ok,
        Err(e) => {
            println!("FAIL the soak did not complete: {e:#}");
            print_tail(&dir);
            false
        }
    };
    println!("took {:.0}s", started.elapsed().as_secs_f64());
    if ok && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("kept {}", dir.display());
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn scratch_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("cedar-soak-{}-{nanos}", std::process::id()));
    for sub in ["bucket", "dest", "redis", "logs"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    Ok(dir)
}

/// The last lines of every log, for a run that did not complete.
fn print_tail(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("logs")) else {
        return;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains('#'))
            .collect();
        println!("--- {} ---", entry.file_name().to_string_lossy());
        for l in &lines[lines.len().saturating_sub(8)..] {
            println!("{l}");
        }
    }
}
