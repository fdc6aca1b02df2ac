//! `cedar bench e2e`: tile-periods per second through export → poll → download → clean with
//! `cedar worker` processes, against the original CEDAR's sequential loop
//! (`scripts/baseline_cedar_original.py` on the real Python EE client) on the same emulator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use cedar::config::Settings;
use cedar::emulator::{self, EmulatorOptions, RunningEmulator};
use cedar::jobs::JobSettings;
use cedar::queue::tracking::OrderState;
use cedar::submit::{self, Plan};
use cedar::worker;

use super::{
    PREFIX_TEMPLATE, PROJECT, RedisArgs, Scratch, Table, WorkerProcess, campaign, describe,
    describe_counts, ended, secs, verdict, with_emulator,
};

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

/// Runs the bench against an emulator whose tasks end at once: cedar first, then the baseline.
pub(super) async fn run(a: E2eArgs) -> anyhow::Result<()> {
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
