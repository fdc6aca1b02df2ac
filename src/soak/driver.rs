//! The soak's run: the EE emulator and the `cedar worker` children on the soak's own Redis, the
//! storm with its fault schedule, then the calm; at the end it gathers the facts the
//! [`super::invariants`] check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use md5::{Digest, Md5};
use tokio::process::{Child, Command};

use cedar::config::{Config, Settings};
use cedar::emulator::{self, EmulatorOptions, Fault, RunningEmulator};
use cedar::jobs::{Context, JobSettings};
use cedar::queue::tracking::{OrderState, OrderStatus, order_key};
use cedar::queue::{Depth, Stage};
use cedar::submit;

use super::invariants::{
    CalmMetrics, FileFact, OrderFacts, RunLog, bucket_empty, dest_matches, documents_agree,
    exported_once, faults_happened, metrics_agree, no_job_left, tally,
};
use super::process::{Redis, free_port, reap, sigterm};
use super::{
    BUCKET, CUT_AFTER_BYTES, FAIL_RATE, FILE_DIMENSIONS, STORM_SHARE, SoakArgs, THROTTLE_RATE,
    TICK, UNAVAILABLE_RATE,
};

/// One `cedar worker` child process, in one of the worker slots.
struct Worker {
    slot: usize,
    life: usize,
    child: Child,
    metrics: SocketAddr,
}

/// Everything the soak started.
pub(super) struct Soak {
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

impl Soak {
    pub(super) async fn start(args: &SoakArgs, dir: &Path) -> anyhow::Result<Soak> {
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
    pub(super) async fn campaign(
        &mut self,
        args: &SoakArgs,
        started: Instant,
    ) -> anyhow::Result<RunLog> {
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
    pub(super) async fn check(&mut self, log: RunLog, started: Instant) -> anyhow::Result<bool> {
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
                let status = statuses
                    .get(&order_key(&order))
                    .cloned()
                    .unwrap_or_else(|| OrderStatus::new(OrderState::Queued));
                orders.push(OrderFacts {
                    tracking: name.clone(),
                    name: sub.names(&order)?.name,
                    base: sub.export_base(&order, status.exports)?,
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
    pub(super) async fn stop(&mut self) {
        for w in &mut self.workers {
            let _ = w.child.kill().await;
        }
        self.redis.stop().await;
    }
}

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
