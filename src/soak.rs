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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use md5::{Digest, Md5};
use serde_json::Value;
use tokio::process::{Child, Command};

use cedar::config::{Config, Settings};
use cedar::emulator::{self, EmulatorOptions, Fault, RunningEmulator, Stats, WrittenObject};
use cedar::jobs::{Context, JobSettings};
use cedar::order::parse_piece;
use cedar::queue::tracking::{OrderState, OrderStatus, order_key};
use cedar::queue::{Depth, Stage};
use cedar::submit;

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
/// Small files: the soak is about cedar, not the disk.
const BYTES_PER_PIXEL: f64 = 1.0 / 16384.0;
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

/// A free loopback port (bound, read, released).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// SIGTERM through `kill(1)`: std and tokio only send SIGKILL.
async fn sigterm(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
}

/// Waits for `child` to exit for up to `grace`, then SIGKILLs it.
async fn reap(child: &mut Child, grace: Duration) {
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The processes

/// The soak's own `redis-server`, with AOF in a folder that survives its restart.
struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
    binary: String,
}

impl Redis {
    async fn start(binary: &str, dir: &Path) -> anyhow::Result<Redis> {
        let port = free_port()?;
        let child = Self::spawn(binary, dir, port)?;
        let redis = Redis {
            child,
            port,
            dir: dir.to_owned(),
            binary: binary.to_owned(),
        };
        redis.wait_ready().await?;
        Ok(redis)
    }

    fn spawn(binary: &str, dir: &Path, port: u16) -> anyhow::Result<Child> {
        Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes"])
            .arg("--dir")
            .arg(dir.join("redis"))
            .arg("--logfile")
            .arg(dir.join("logs/redis.log"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary} (apt install redis-server)"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("redis-server on port {} did not answer in 20 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM (Redis writes its AOF and exits), SIGKILL if it lingers, then the same server on
    /// the same port and folder: the data comes back from the AOF.
    async fn restart(&mut self) -> anyhow::Result<Duration> {
        let began = Instant::now();
        sigterm(&self.child).await;
        reap(&mut self.child, Duration::from_secs(10)).await;
        self.child = Self::spawn(&self.binary, &self.dir, self.port)?;
        self.wait_ready().await?;
        Ok(began.elapsed())
    }
}

/// One `cedar worker` child process, in one of the worker slots.
struct Worker {
    slot: usize,
    life: usize,
    child: Child,
    metrics: SocketAddr,
}

/// Everything the soak started.
struct Soak {
    dir: PathBuf,
    config: PathBuf,
    redis: Redis,
    emulator: RunningEmulator,
    settings: Arc<Settings>,
    ctx: Context,
    workers: Vec<Worker>,
    lives: Vec<usize>,
    worker_args: Vec<String>,
    http: reqwest::Client,
    /// Worker exits nobody asked for: (slot, life, status).
    died: Vec<String>,
}

/// What happened during the run, for the checks.
struct RunLog {
    storm: String,
    calm: Option<String>,
    kills: u64,
    redis_restart: Option<Duration>,
    /// Runs of `cedar retry`.
    retries: u64,
    /// Orders FAILED (or LOST, CANCELLED) when they ran.
    requeued: u64,
    calm_metrics: Option<CalmMetrics>,
}

/// The workers' counters and the emulator's stats at both ends of the calm.
struct CalmMetrics {
    before: Vec<String>,
    after: Vec<String>,
    ee_before: Stats,
    ee_after: Stats,
    /// Orders of the calm that were exported (CLEANED).
    cleaned: u64,
}

impl Soak {
    async fn start(args: &SoakArgs, dir: &Path) -> anyhow::Result<Soak> {
        // Workers run a copy of this binary: a rebuild in the target folder during a long run
        // must not swap the program under the workers restarted after it.
        let exe = std::env::current_exe().context("locating the cedar binary")?;
        std::fs::copy(&exe, dir.join("cedar"))
            .with_context(|| format!("copying {} into the scratch folder", exe.display()))?;
        let redis = Redis::start(&args.redis_server, dir).await?;
        let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(
            dir.join("bucket"),
        )?);
        let emulator = emulator::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            store,
            EmulatorOptions {
                bucket: Some(BUCKET.into()),
                task_seconds: args.task_seconds,
                max_concurrent_exports: 100,
                throttle_rate: THROTTLE_RATE,
                unavailable_rate: UNAVAILABLE_RATE,
                fail_rate: FAIL_RATE,
                fail_repeats: false,
                seed: args.seed,
                bytes_per_pixel: BYTES_PER_PIXEL,
                ..EmulatorOptions::default()
            },
        )
        .await?;
        emulator.inject(Fault::TruncateNextDownload {
            object_contains: ".tif".into(),
            after_bytes: CUT_AFTER_BYTES,
        });
        let config = dir.join("cedar.toml");
        std::fs::write(
            &config,
            format!(
                r#"[earthengine]
project = "cedar-soak"
endpoint = "{ee}"
credentials = "none"
timeout_secs = 10

[queue]
url = "{redis}"
namespace = "soak"

[export]
bucket = "{BUCKET}"
file_dimensions = {FILE_DIMENSIONS}

[store]
url = "gs://{BUCKET}"
endpoint = "{ee}"

[download]
dest = "{dest}"

[metrics]
listen = "127.0.0.1:0"
"#,
                ee = emulator.url(),
                redis = redis.url(),
                dest = dir.join("dest").display(),
            ),
        )?;
        let settings = Arc::new(
            Config::load(Some(&config), std::iter::empty::<(String, String)>())?.validate()?,
        );
        let ctx = cedar::jobs::Context::connect(settings.clone(), JobSettings::default()).await?;
        let worker_args = [
            "worker",
            "--concurrency",
            "8",
            "--poll-interval-secs",
            "1",
            "--drain-secs",
            "10",
            "--max-active-exports",
            "400",
            "--ee-requests-per-second",
            "1000",
            "--lease-secs",
            &args.lease_secs.to_string(),
            // A job's run makes two EE calls, a fifth of which fail: a 2 s base would give
            // some jobs minutes of backoff and the soak a long tail.
            "--retry-base-ms",
            "200",
        ]
        .map(str::to_owned)
        .to_vec();
        let mut soak = Soak {
            dir: dir.to_owned(),
            config,
            redis,
            emulator,
            settings,
            ctx,
            workers: Vec::new(),
            lives: vec![0; args.workers],
            worker_args,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            died: Vec::new(),
        };
        for slot in 0..args.workers {
            let w = soak.spawn_worker(slot)?;
            soak.workers.push(w);
        }
        Ok(soak)
    }

    /// A `cedar` command on this soak's configuration, with none of the caller's overrides.
    fn command(&self) -> Command {
        let mut cmd = Command::new(self.dir.join("cedar"));
        cmd.arg("--config")
            .arg(&self.config)
            .env_remove("CEDAR_CONFIG")
            .env_remove("STORAGE_EMULATOR_HOST")
            .stdin(std::process::Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("CEDAR__") {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    fn spawn_worker(&mut self, slot: usize) -> anyhow::Result<Worker> {
        let life = self.lives[slot];
        self.lives[slot] += 1;
        let log_path = self.dir.join(format!("logs/worker-{slot}-{life}.log"));
        let log = std::fs::File::create(&log_path)?;
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let child = self
            .command()
            .args(&self.worker_args)
            .env("CEDAR__METRICS__LISTEN", metrics.to_string())
            .env("CEDAR_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting cedar worker")?;
        Ok(Worker {
            slot,
            life,
            child,
            metrics,
        })
    }

    /// SIGKILLs the worker in `slot` and starts a new one there.
    async fn kill_and_restart(&mut self, slot: usize) -> anyhow::Result<()> {
        let index = self.workers.iter().position(|w| w.slot == slot).unwrap();
        let mut old = self.workers.remove(index);
        old.child.kill().await?;
        let w = self.spawn_worker(slot)?;
        self.workers.push(w);
        Ok(())
    }

    /// Restarts workers that exited without being asked, and remembers that they did.
    async fn revive(&mut self) -> anyhow::Result<()> {
        let mut dead = Vec::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Some(status) = w.child.try_wait()? {
                dead.push(i);
                self.died
                    .push(format!("worker {}.{} exited: {status}", w.slot, w.life));
            }
        }
        for i in dead.into_iter().rev() {
            let slot = self.workers.remove(i).slot;
            let w = self.spawn_worker(slot)?;
            self.workers.push(w);
        }
        Ok(())
    }

    /// `cedar retry NAME`, the operator's command.
    async fn retry(&self, name: &str) -> anyhow::Result<()> {
        let out = self.command().args(["retry", name]).output().await?;
        anyhow::ensure!(
            out.status.success(),
            "cedar retry {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    async fn submit(&self, request: &submit::Request) -> anyhow::Result<String> {
        let plan = submit::plan(&self.settings, request, chrono::Utc::now())?;
        submit::enqueue(&self.ctx, &plan).await?;
        Ok(plan.submission.name)
    }

    /// Every worker's `/metrics`, once each answers.
    async fn scrape_all(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for w in &self.workers {
            let url = format!("http://{}/metrics", w.metrics);
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                match self.http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        out.push(r.text().await?);
                        break;
                    }
                    _ if Instant::now() < until => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    other => bail!(
                        "worker {}.{} serves no metrics at {url}: {other:?}",
                        w.slot,
                        w.life
                    ),
                }
            }
        }
        Ok(out)
    }

    /// Every stage's queue empty, no dead job, no admission slot held.
    async fn queues(&self) -> anyhow::Result<(BTreeMap<&'static str, Depth>, u64)> {
        let mut depths = BTreeMap::new();
        for stage in Stage::ALL {
            let d = self.ctx.queue.depth(stage).await?;
            if d != Depth::default() {
                depths.insert(stage.name(), d);
            }
        }
        Ok((depths, self.ctx.queue.active_count().await?))
    }

    async fn wait_queues_empty(&self, within: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + within;
        loop {
            let (depths, active) = self.queues().await?;
            if depths.is_empty() && active == 0 {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("queues not empty: {depths:?}, {active} admission slots");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs the storm, then the calm; returns what happened.
    async fn campaign(&mut self, args: &SoakArgs, started: Instant) -> anyhow::Result<RunLog> {
        let deadline = started + Duration::from_secs(args.seconds_budget);
        let mut request = crate::bench::campaign(&self.settings, args.tile_periods)?;
        request.save_empty_metadata = true;
        let per_tile = (request.collections.len() as u64)
            * cedar::period::periods(request.start, request.end, request.freq)?
                .periods
                .len() as u64;
        let tiles = request.tiles.clone();
        let storm_tiles = ((tiles.len() as f64 * STORM_SHARE).round() as usize)
            .clamp(1, tiles.len().saturating_sub(1).max(1));
        let mut storm_req = request.clone();
        storm_req.tiles = tiles[..storm_tiles].to_vec();
        let calm_req = (storm_tiles < tiles.len()).then(|| {
            let mut r = request.clone();
            r.tiles = tiles[storm_tiles..].to_vec();
            r
        });
        let storm_total = storm_tiles as u64 * per_tile;
        println!(
            "campaign: {} tile-periods ({} collection(s) x {} tiles x {} periods): storm {storm_total}, calm {}",
            per_tile * tiles.len() as u64,
            request.collections.len(),
            tiles.len(),
            per_tile / request.collections.len() as u64,
            per_tile * (tiles.len() - storm_tiles) as u64,
        );
        let storm = self.submit(&storm_req).await?;
        println!("storm: submitted {storm}");
        let mut log = RunLog {
            storm: storm.clone(),
            calm: None,
            kills: 0,
            redis_restart: None,
            retries: 0,
            requeued: 0,
            calm_metrics: None,
        };

        // The storm: every fault at once.
        let kill_every = Duration::from_secs(args.kill_every_secs.max(1));
        let mut next_kill = Instant::now() + kill_every;
        let mut last_report = Instant::now();
        loop {
            tokio::time::sleep(TICK).await;
            anyhow::ensure!(
                Instant::now() < deadline,
                "storm not home after --seconds-budget {}",
                args.seconds_budget
            );
            self.revive().await?;
            if Instant::now() >= next_kill {
                let slot = 1 + (log.kills as usize % (self.lives.len() - 1));
                self.kill_and_restart(slot).await?;
                log.kills += 1;
                next_kill = Instant::now() + kill_every;
            }
            let counts = match self.ctx.tracker.counts(&storm).await {
                Ok(c) => c,
                // Redis may be restarting.
                Err(_) => continue,
            };
            let (complete, failed) = tally(&counts);
            if log.redis_restart.is_none()
                && (complete * 3 >= storm_total || complete == storm_total)
            {
                let took = self.redis.restart().await?;
                println!(
                    "storm: Redis restarted from its AOF ({:.1}s down) with {complete}/{storm_total} orders home",
                    took.as_secs_f64()
                );
                log.redis_restart = Some(took);
                continue;
            }
            if failed > 0 {
                log.retries += 1;
                log.requeued += failed;
                self.retry(&storm).await?;
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                last_report = Instant::now();
                println!(
                    "storm: {:>4.0}s {complete}/{storm_total} home, {} kills, {} failed orders retried",
                    started.elapsed().as_secs_f64(),
                    log.kills,
                    log.requeued
                );
            }
            if complete == storm_total && log.redis_restart.is_some() {
                break;
            }
        }
        // Leftovers are reported by invariant (5); the calm can still run and be measured.
        if let Err(e) = self.wait_queues_empty(Duration::from_secs(60)).await {
            println!("storm: {e:#}");
        }
        println!(
            "storm: home after {:.0}s: {} kills, Redis restarted, {} retry runs on {} failed orders",
            started.elapsed().as_secs_f64(),
            log.kills,
            log.retries,
            log.requeued
        );

        // The calm: EE's faults only, the same workers throughout.
        let Some(calm_req) = calm_req else {
            return Ok(log);
        };
        let before = self.scrape_all().await?;
        let ee_before = self.emulator.stats();
        let calm = self.submit(&calm_req).await?;
        println!("calm: submitted {calm}");
        let calm_total = (calm_req.tiles.len() as u64) * per_tile;
        let lives_before: Vec<(usize, usize)> =
            self.workers.iter().map(|w| (w.slot, w.life)).collect();
        loop {
            tokio::time::sleep(TICK).await;
            anyhow::ensure!(
                Instant::now() < deadline,
                "calm not home after --seconds-budget {}",
                args.seconds_budget
            );
            self.revive().await?;
            let counts = self.ctx.tracker.counts(&calm).await?;
            let (complete, failed) = tally(&counts);
            if failed > 0 {
                log.retries += 1;
                log.requeued += failed;
                self.retry(&calm).await?;
            }
            if complete == calm_total {
                break;
            }
        }
        if let Err(e) = self.wait_queues_empty(Duration::from_secs(60)).await {
            println!("calm: {e:#}");
        }
        let lives_after: Vec<(usize, usize)> =
            self.workers.iter().map(|w| (w.slot, w.life)).collect();
        anyhow::ensure!(
            lives_before == lives_after,
            "a worker died during the calm ({:?}), so its counters are lost",
            self.died
        );
        let after = self.scrape_all().await?;
        let ee_after = self.emulator.stats();
        let cleaned = self
            .ctx
            .tracker
            .counts(&calm)
            .await?
            .get(&OrderState::Cleaned)
            .copied()
            .unwrap_or(0);
        println!("calm: home after {:.0}s", started.elapsed().as_secs_f64());
        log.calm = Some(calm);
        log.calm_metrics = Some(CalmMetrics {
            before,
            after,
            ee_before,
            ee_after,
            cleaned,
        });
        Ok(log)
    }

    /// Stops every worker with SIGTERM (each drains and publishes its documents), then checks
    /// and prints every invariant.
    async fn check(&mut self, log: RunLog, started: Instant) -> anyhow::Result<bool> {
        for w in &self.workers {
            sigterm(&w.child).await;
        }
        for w in &mut self.workers {
            reap(&mut w.child, Duration::from_secs(30)).await;
        }
        self.workers.clear();
        let names: Vec<String> = std::iter::once(log.storm.clone())
            .chain(log.calm.clone())
            .collect();
        let mut orders = Vec::new();
        for name in &names {
            let sub = self.ctx.submission(name).await?;
            let statuses = self.ctx.tracker.all(name).await?;
            for order in sub.orders() {
                let names = order.names(self.settings.item_templates(), sub.submitted)?;
                let status = statuses
                    .get(&order_key(&order))
                    .cloned()
                    .unwrap_or_else(|| OrderStatus::new(OrderState::Queued));
                orders.push(OrderFacts {
                    tracking: name.clone(),
                    name: names.name.clone(),
                    base: names.object_base(),
                    status,
                });
            }
        }
        let stats = self.emulator.stats();
        let manifest = self.emulator.objects();
        let mut table = Vec::new();
        table.push(faults_happened(&stats, &log, &self.died));
        table.push(exported_once(&orders, &stats));
        let dest_files = files(&self.dir.join("dest"));
        table.push(dest_matches(
            &orders,
            &manifest,
            &dest_files,
            &self.dir.join("dest"),
        ));
        let bucket_files = files(&self.dir.join("bucket"));
        table.push(bucket_empty(&bucket_files, &self.settings));
        table.push(documents_agree(
            &self.settings,
            &self.dir,
            &names,
            &orders,
            &dest_files,
        ));
        let (depths, active) = self.queues().await?;
        table.push(no_job_left(&depths, active));
        table.push(metrics_agree(log.calm_metrics.as_ref()));

        println!();
        println!(
            "cedar soak: {} tile-periods, {} workers, {:.0}s",
            orders.len(),
            self.lives.len(),
            started.elapsed().as_secs_f64()
        );
        let ee: u64 = stats
            .requests
            .iter()
            .filter(|(m, _)| m.as_str() != "token")
            .map(|(_, n)| n)
            .sum();
        println!(
            "EE requests {ee} ({:.2} per tile-period), answered 429 {} and 503 {}; storage requests {:?}",
            ee as f64 / orders.len() as f64,
            stats.responses.get("429").copied().unwrap_or(0),
            stats.responses.get("503").copied().unwrap_or(0),
            stats.storage_requests
        );
        println!();
        let mut ok = true;
        for (verdict, what, detail) in &table {
            ok &= *verdict;
            println!(
                "{} {what}\n     {detail}",
                if *verdict { "PASS" } else { "FAIL" }
            );
        }
        Ok(ok)
    }

    /// Stops whatever still runs (workers, Redis, the emulator).
    async fn stop(&mut self) {
        for w in &mut self.workers {
            let _ = w.child.kill().await;
        }
        sigterm(&self.redis.child).await;
        reap(&mut self.redis.child, Duration::from_secs(10)).await;
    }
}

/// (complete, failed) orders of a tally.
fn tally(counts: &BTreeMap<OrderState, u64>) -> (u64, u64) {
    let sum = |f: fn(OrderState) -> bool| -> u64 {
        counts.iter().filter(|(s, _)| f(**s)).map(|(_, n)| n).sum()
    };
    (sum(OrderState::is_complete), sum(OrderState::is_failed))
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

// ---------------------------------------------------------------------------------------------
// The invariants

/// One order as cedar records it.
struct OrderFacts {
    tracking: String,
    /// Also the EE task description.
    name: String,
    /// `{prefix}/{name}`: every object of the export starts so.
    base: String,
    status: OrderStatus,
}

/// A file found on disk.
struct FileFact {
    size: u64,
    md5: String,
    crc32c: u32,
}

type Check = (bool, &'static str, String);

/// Every regular file under `root`, by path relative to it, with size and checksums.
fn files(root: &Path) -> BTreeMap<String, FileFact> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.insert(
                rel.to_string_lossy().into_owned(),
                FileFact {
                    size: bytes.len() as u64,
                    md5: Md5::digest(&bytes)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                    crc32c: crc32c::crc32c(&bytes),
                },
            );
        }
    }
    out
}

/// (0) Each fault the soak promises really happened.
fn faults_happened(stats: &Stats, log: &RunLog, died: &[String]) -> Check {
    let r429 = stats.responses.get("429").copied().unwrap_or(0);
    let r503 = stats.responses.get("503").copied().unwrap_or(0);
    let failed_tasks = stats.operations.get("FAILED").copied().unwrap_or(0);
    let ok = r429 > 0
        && r503 > 0
        && failed_tasks > 0
        && log.retries > 0
        && stats.downloads_truncated == 1
        && log.kills > 0
        && log.redis_restart.is_some();
    let mut detail = format!(
        "EE answered 429 x{r429} and 503 x{r503}; {failed_tasks} EE tasks FAILED, `cedar retry` ran {} times on {} failed orders; {} download cut after {CUT_AFTER_BYTES} bytes; {} worker SIGKILLs; Redis restarted {}",
        log.retries,
        log.requeued,
        stats.downloads_truncated,
        log.kills,
        match log.redis_restart {
            Some(d) => format!("once ({:.1}s down)", d.as_secs_f64()),
            None => "never".to_owned(),
        }
    );
    if died.is_empty() {
        detail.push_str("; no worker exited on its own");
    } else {
        detail.push_str(&format!(
            "; workers that exited on their own (restarted): {died:?}"
        ));
    }
    (ok, "(0) the faults happened", detail)
}

/// (1) Every tile-period with scenes succeeded in EE exactly once, and no description was
/// exported more often than cedar's own export count (1 + retries) explains.
fn exported_once(orders: &[OrderFacts], stats: &Stats) -> Check {
    let mut problems = Vec::new();
    let (mut cleaned, mut empty, mut twice) = (0, 0, 0);
    let known: BTreeSet<&str> = orders.iter().map(|o| o.name.as_str()).collect();
    for o in orders {
        let exports = stats
            .exports_by_description
            .get(&o.name)
            .copied()
            .unwrap_or(0);
        let successes = stats
            .succeeded_by_description
            .get(&o.name)
            .copied()
            .unwrap_or(0);
        match o.status.state {
            OrderState::Cleaned => {
                cleaned += 1;
                if successes != 1 {
                    problems.push(format!("{} succeeded {successes} times in EE", o.name));
                }
                if exports > u64::from(o.status.exports.max(1)) {
                    problems.push(format!(
                        "{} exported {exports} times, cedar submitted {}",
                        o.name, o.status.exports
                    ));
                }
                if exports > 1 {
                    twice += 1;
                }
            }
            OrderState::Empty => {
                empty += 1;
                if exports != 0 {
                    problems.push(format!(
                        "{} is EMPTY but was exported {exports} times",
                        o.name
                    ));
                }
            }
            other => problems.push(format!("{} ended {}", o.name, other.as_str())),
        }
    }
    for d in stats.exports_by_description.keys() {
        if !known.contains(d.as_str()) {
            problems.push(format!("EE export {d} belongs to no order"));
        }
    }
    let detail = format!(
        "{} orders: {cleaned} CLEANED each with exactly 1 EE success ({twice} of them exported twice: FAILED first, then `cedar retry`), {empty} EMPTY never exported{}",
        orders.len(),
        first_problems(&problems)
    );
    (
        problems.is_empty(),
        "(1) every tile-period exported exactly once",
        detail,
    )
}

fn first_problems(problems: &[String]) -> String {
    if problems.is_empty() {
        return String::new();
    }
    format!(
        "; {} problems, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    )
}

/// (2) Every object EE wrote for an order is in `dest/{tracking}/` with the size, MD5 and
/// CRC32C the emulator recorded when it wrote it; every EMPTY order has its metadata JSON;
/// nothing else is there.
fn dest_matches(
    orders: &[OrderFacts],
    manifest: &[WrittenObject],
    dest: &BTreeMap<String, FileFact>,
    dest_root: &Path,
) -> Check {
    let mut problems = Vec::new();
    let mut expected = BTreeSet::new();
    let (mut checked, mut bytes) = (0u64, 0u64);
    let by_name: BTreeMap<&str, &WrittenObject> =
        manifest.iter().map(|o| (o.name.as_str(), o)).collect();
    for o in orders {
        let meta = format!("{}.json", o.base);
        match o.status.state {
            OrderState::Cleaned => {
                // Pieces and metadata JSON, as written by the export and cedar's upload.
                let objects: Vec<&WrittenObject> = by_name
                    .range(o.base.as_str()..)
                    .take_while(|(n, _)| n.starts_with(&o.base))
                    .filter(|(n, _)| **n == meta || parse_piece(&o.base, n).is_some())
                    .map(|(_, w)| *w)
                    .collect();
                if !objects.iter().any(|w| w.source == "export") {
                    problems.push(format!("{}: the emulator wrote no pieces", o.name));
                }
                for w in objects {
                    let file = w.name.rsplit('/').next().unwrap_or(&w.name);
                    let rel = format!("{}/{file}", o.tracking);
                    expected.insert(rel.clone());
                    match dest.get(&rel) {
                        None => problems.push(format!("{rel} missing")),
                        Some(f) if f.size != w.size || f.md5 != w.md5 || f.crc32c != w.crc32c => {
                            problems.push(format!(
                                "{rel}: {} bytes md5 {} crc32c {:08x}, EE wrote {} bytes md5 {} crc32c {:08x}",
                                f.size, f.md5, f.crc32c, w.size, w.md5, w.crc32c
                            ))
                        }
                        Some(f) => {
                            checked += 1;
                            bytes += f.size;
                        }
                    }
                }
            }
            OrderState::Empty => {
                let rel = format!("{}/{}.json", o.tracking, o.name);
                expected.insert(rel.clone());
                let doc: Option<Value> = std::fs::read(dest_root.join(&rel))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                match doc {
                    Some(d) if d["task"]["status"]["state"] == "EMPTY" => checked += 1,
                    other => problems.push(format!("{rel}: not an EMPTY metadata JSON: {other:?}")),
                }
            }
            _ => {}
        }
    }
    for extra in dest.keys().filter(|k| !expected.contains(*k)) {
        problems.push(format!("unexpected file {extra}"));
    }
    let detail = format!(
        "{checked} files ({bytes} bytes of exports) match the emulator's record of size, MD5 and CRC32C; {} expected{}",
        expected.len(),
        first_problems(&problems)
    );
    (
        problems.is_empty(),
        "(2) every file in dest has the right size and checksums",
        detail,
    )
}

/// (3) Only tracking documents are left in the bucket.
fn bucket_empty(bucket: &BTreeMap<String, FileFact>, settings: &Settings) -> Check {
    let prefix = format!("{}/", settings.config.tracking.prefix.trim_end_matches('/'));
    let left: Vec<&String> = bucket.keys().filter(|k| !k.starts_with(&prefix)).collect();
    let detail = format!(
        "{} objects left, {} of them tracking documents{}",
        bucket.len(),
        bucket.len() - left.len(),
        if left.is_empty() {
            String::new()
        } else {
            format!("; export objects left: {:?}", &left[..left.len().min(5)])
        }
    );
    (
        left.is_empty(),
        "(3) the bucket holds no export objects",
        detail,
    )
}

/// (4) Each published tracking document lists every order, each CLEANED or EMPTY, and for each
/// CLEANED order the file count and bytes it records are what is in dest.
fn documents_agree(
    settings: &Settings,
    dir: &Path,
    names: &[String],
    orders: &[OrderFacts],
    dest: &BTreeMap<String, FileFact>,
) -> Check {
    let mut problems = Vec::new();
    let mut seen = 0;
    for name in names {
        let path = dir
            .join("bucket")
            .join(cedar::document::document_object(settings, name));
        let doc: Value = match std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(d) => d,
            None => {
                problems.push(format!("{}: no tracking document", path.display()));
                continue;
            }
        };
        let listed = doc["orders"].as_array().cloned().unwrap_or_default();
        let want = orders.iter().filter(|o| &o.tracking == name).count();
        if listed.len() != want {
            problems.push(format!("{name}: lists {} orders of {want}", listed.len()));
        }
        for o in &listed {
            seen += 1;
            let order = o["name"].as_str().unwrap_or_default();
            let status = &o["status"];
            let in_dest: Vec<&FileFact> = dest
                .range(format!("{name}/{order}")..)
                .take_while(|(k, _)| k.starts_with(&format!("{name}/{order}")))
                .filter(|(k, _)| {
                    let rest = &k[name.len() + 1 + order.len()..];
                    rest == ".json" || rest == ".tif" || rest.starts_with('-')
                })
                .map(|(_, f)| f)
                .collect();
            match status["state"].as_str() {
                Some("CLEANED") => {
                    let files = status["files"].as_u64().unwrap_or(0);
                    let bytes = status["bytes"].as_u64().unwrap_or(0);
                    let on_disk: u64 = in_dest.iter().map(|f| f.size).sum();
                    if files != in_dest.len() as u64 || bytes != on_disk {
                        problems.push(format!(
                            "{order}: document says {files} files / {bytes} bytes, dest has {} / {on_disk}",
                            in_dest.len()
                        ));
                    }
                    for v in status["objects"].as_array().into_iter().flatten() {
                        let file = v["name"]
                            .as_str()
                            .unwrap_or("")
                            .rsplit('/')
                            .next()
                            .unwrap_or("");
                        let size = dest.get(&format!("{name}/{file}")).map(|f| f.size);
                        if size != v["size"].as_u64() {
                            problems.push(format!(
                                "{order}: listed object {file} is not in dest as recorded"
                            ));
                        }
                    }
                }
                Some("EMPTY") => {
                    if in_dest.len() != 1 {
                        problems.push(format!(
                            "{order}: EMPTY but {} files in dest",
                            in_dest.len()
                        ));
                    }
                }
                other => problems.push(format!("{order}: state {other:?} in the document")),
            }
        }
    }
    let detail = format!(
        "{} documents, {seen} orders, every one CLEANED or EMPTY with files and bytes as in dest{}",
        names.len(),
        first_problems(&problems)
    );
    (
        problems.is_empty(),
        "(4) every tracking document is consistent with reality",
        detail,
    )
}

/// (5) Nothing due, scheduled, leased, dead or in the backlog, and no admission slot held.
fn no_job_left(depths: &BTreeMap<&'static str, Depth>, active: u64) -> Check {
    let ok = depths.is_empty() && active == 0;
    let detail = if ok {
        "export, poll, download, clean: 0 due, 0 scheduled, 0 leased, 0 dead, 0 backlog; 0 admission slots held".to_owned()
    } else {
        format!("left: {depths:?}; {active} admission slots held")
    };
    (ok, "(5) no job left behind", detail)
}

/// The sum over Prometheus text pages of a series' samples whose labels include `labels`.
pub fn metric_sum(pages: &[String], name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for page in pages {
        for line in page.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(r) => match r.split_once("} ") {
                    Some((l, v)) => (l, v),
                    None => continue,
                },
                None => match rest.strip_prefix(' ') {
                    Some(v) => ("", v),
                    None => continue,
                },
            };
            let matches = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            if matches && let Ok(v) = value.trim().parse::<f64>() {
                total += v;
            }
        }
    }
    total
}

/// (6) Over the calm — between two quiet moments, no worker killed — the workers' counters,
/// summed, equal the emulator's counts: EE requests per method, bytes downloaded, clean jobs.
fn metrics_agree(calm: Option<&CalmMetrics>) -> Check {
    const WHAT: &str = "(6) the metrics' totals agree with the counts";
    let Some(c) = calm else {
        return (
            false,
            WHAT,
            "no calm phase (the campaign has a single tile), so nothing could be compared honestly"
                .to_owned(),
        );
    };
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric_sum(&c.after, name, labels) - metric_sum(&c.before, name, labels)
    };
    let ee = |method: &str| {
        c.ee_after.requests.get(method).copied().unwrap_or(0)
            - c.ee_before.requests.get(method).copied().unwrap_or(0)
    };
    let rows = [
        (
            "cedar_ee_requests_total{method=\"image:export\"}",
            delta("cedar_ee_requests_total", &[("method", "image:export")]),
            "emulator image.export requests",
            ee("image.export"),
        ),
        (
            "cedar_ee_requests_total{method=\"value:compute\"}",
            delta("cedar_ee_requests_total", &[("method", "value:compute")]),
            "emulator value.compute requests",
            ee("value.compute"),
        ),
        (
            "cedar_download_bytes_total",
            delta("cedar_download_bytes_total", &[]),
            "emulator media bytes served whole",
            c.ee_after.media_bytes_served - c.ee_before.media_bytes_served,
        ),
        (
            "cedar_jobs_finished_total{stage=\"clean\",outcome=\"done\"}",
            delta(
                "cedar_jobs_finished_total",
                &[("stage", "clean"), ("outcome", "done")],
            ),
            "orders CLEANED",
            c.cleaned,
        ),
    ];
    let mut ok = true;
    let mut detail =
        "over the calm, sum of every worker's counter increase vs. the emulator/tracking:"
            .to_owned();
    for (metric, got, what, want) in rows {
        let agree = (got - want as f64).abs() < 0.5;
        ok &= agree;
        detail.push_str(&format!(
            "\n       {metric} {got} {} {what} {want}",
            if agree { "==" } else { "!=" }
        ));
    }
    (ok, WHAT, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_match_labels_across_pages() {
        let page =
            "# HELP x\ncedar_ee_requests_total{method=\"image:export\",code_class=\"2xx\"} 3\n\
                    cedar_ee_requests_total{method=\"image:export\",code_class=\"5xx\"} 2\n\
                    cedar_ee_requests_total{method=\"value:compute\",code_class=\"2xx\"} 7\n\
                    cedar_download_bytes_total 100\n"
                .to_owned();
        let pages = [page.clone(), page];
        assert_eq!(
            metric_sum(
                &pages,
                "cedar_ee_requests_total",
                &[("method", "image:export")]
            ),
            10.0
        );
        assert_eq!(metric_sum(&pages, "cedar_download_bytes_total", &[]), 200.0);
        assert_eq!(metric_sum(&pages, "cedar_nothing", &[]), 0.0);
    }

    #[test]
    fn tallies_split_complete_and_failed() {
        let counts = BTreeMap::from([
            (OrderState::Cleaned, 3),
            (OrderState::Empty, 1),
            (OrderState::Failed, 2),
            (OrderState::Running, 5),
        ]);
        assert_eq!(tally(&counts), (4, 2));
    }
}
