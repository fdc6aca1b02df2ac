//! `cedar demo`: a whole campaign on embedded defaults — an in-process EE emulator, the
//! embedded SQLite queue, a local folder as the export bucket and another as the destination —
//! so a newcomer sees the real daemon work without a Google account or any server.
//!
//! It submits 2 collections × 6 tiles × 4 quarters (Landsat 9 has no data before 2021-10-31,
//! so some orders are EMPTY), injects one 503 answer to an export (retried by the queue) and one
//! failed EE task (brought home with `retry`), shows progress bars while an in-process worker
//! runs every stage, and prints a summary table and where the files are. The web console
//! ([`cedar::web`]) shows the campaign on its tile map meanwhile; with `--serve` it stays open
//! after the summary until Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use cedar::config::Config;
use cedar::emulator::{self, ApiMethod, EmulatorOptions, Fault};
use cedar::jobs::JobSettings;
use cedar::jobs::poll::SweepSettings;
use cedar::period::Frequency;
use cedar::queue::tracking::{OrderState, order_key};
use cedar::submit::{self, Request};
use cedar::web::{Console, ConsoleOptions};
use cedar::worker::{self, WorkerOptions};

/// Options of `cedar demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Folder for the emulated bucket, the queue database and the downloads (recreated).
    #[arg(long, default_value = "cedar-demo")]
    pub dir: PathBuf,
    /// Emulated seconds each export runs.
    #[arg(long, default_value_t = 2.0)]
    pub task_seconds: f64,
    /// Where the web console is served while the demo runs.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: String,
    /// Keep the web console open after the campaign, until Ctrl-C.
    #[arg(long)]
    pub serve: bool,
}

/// Runs the demo and prints a summary.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = std::path::absolute(&args.dir)?;
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let bucket_dir = root.join("bucket");
    let dest_dir = root.join("downloads");
    for d in [&bucket_dir, &dest_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(
        &bucket_dir,
    )?);
    let emulator = emulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        store,
        EmulatorOptions {
            project: Some("cedar-demo".into()),
            bucket: Some("cedar-demo".into()),
            task_seconds: args.task_seconds,
            max_concurrent_exports: 8,
            ..EmulatorOptions::default()
        },
    )
    .await?;
    // One transient error the queue retries, and one failed EE task that `retry` brings home.
    emulator.inject(Fault::NextRequests {
        method: Some(ApiMethod::ImageExport),
        count: 1,
        status: 503,
        message: None,
        processed: false,
    });
    emulator.inject(Fault::NextTasksFail {
        count: 1,
        message: None,
    });

    let mut config = Config::default();
    config.earthengine.project = "cedar-demo".into();
    config.earthengine.endpoint = emulator.url();
    config.earthengine.credentials = Some("none".into());
    config.export.bucket = "cedar-demo".into();
    config.store.url = url::Url::from_directory_path(&bucket_dir)
        .map_err(|()| anyhow::anyhow!("{} is not absolute", bucket_dir.display()))?
        .to_string();
    config.download.dest = dest_dir.display().to_string();
    config.queue.url = format!("sqlite://{}", root.join("queue.db").display());
    config.queue.namespace = "demo".into();
    // The worker's endpoint (metrics, and its own console beside them) on a free port: the
    // console the demo prints is served below on --listen, so that it outlives the worker when
    // asked to (--serve).
    config.metrics.listen = "127.0.0.1:0".into();
    let settings = Arc::new(config.validate()?);
    let jobs = JobSettings {
        poll_interval: Duration::from_secs(1),
        retry: cedar::queue::RetryPolicy {
            base: Duration::from_millis(200),
            ..Default::default()
        },
        ..JobSettings::default()
    };
    let ctx = cedar::jobs::Context::connect(settings.clone(), jobs.clone()).await?;

    let request = Request {
        name: None,
        workload_tag: None,
        collections: vec![
            "LANDSAT/LC08/C02/T1_L2".into(),
            "LANDSAT/LC09/C02/T1_L2".into(),
        ],
        tiles: (10..12)
            .flat_map(|r| (14..17).map(move |c| (r, c)))
            .collect(),
        start: "2021-07-01".parse()?,
        end: "2022-06-30".parse()?,
        freq: Some("3MS".parse::<Frequency>()?),
        save_empty_metadata: true,
        error_if_empty: false,
        priority: None,
    };
    let plan = submit::plan(&settings, &request, chrono::Utc::now())?;
    let name = plan.submission.name.clone();
    let total = plan.submission.order_count() as u64;
    submit::enqueue(&ctx, &plan).await?;
    println!(
        "EE emulator at {}; queue {}",
        emulator.url(),
        settings.config.queue.url
    );
    let (console_stop, console_stopped) = tokio::sync::watch::channel(false);
    let console = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(listener) => {
            let addr = listener.local_addr()?;
            println!(
                "web console: http://{addr}{}",
                cedar::web::campaign_href(&name)
            );
            let console = Console::new(
                ctx.clone(),
                ConsoleOptions {
                    admission_cap: Some(cedar::worker::admission_cap(Some(total), None, 1)),
                    ..ConsoleOptions::default()
                },
            );
            Some(tokio::spawn(cedar::web::serve(
                listener,
                console,
                console_stopped,
            )))
        }
        Err(e) => {
            println!(
                "no web console: cannot listen on {}: {e}; pass a free address with --listen",
                args.listen
            );
            None
        }
    };
    println!(
        "submitted {name}: {} collections x {} tiles x {} periods = {total} orders",
        request.collections.len(),
        request.tiles.len(),
        plan.submission.periods.len()
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opts = WorkerOptions {
        concurrency: 8,
        drain: Duration::from_secs(10),
        lease: Duration::from_secs(30),
        max_active_exports: Some(total),
        jobs,
        sweep: SweepSettings {
            min_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(2),
            ..SweepSettings::default()
        },
        publish_interval: Duration::from_secs(1),
        poll_every: Duration::from_millis(200),
        ..WorkerOptions::default()
    };
    let mut stop = stop_rx.clone();
    let daemon = tokio::spawn(worker::run(ctx.clone(), opts, async move {
        let _ = stop.changed().await;
    }));

    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>10} {bar:40} {pos:>3}/{len} {msg}")
        .expect("valid template");
    let bar = |prefix: &'static str| {
        let b = bars.add(ProgressBar::new(total));
        b.set_style(style.clone());
        b.set_prefix(prefix);
        b
    };
    let (exported, downloaded, finished) = (bar("exported"), bar("downloaded"), bar("finished"));
    let mut retried = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    let counts = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let counts = ctx.tracker.counts(&name).await?;
        let n = |states: &[OrderState]| -> u64 {
            states
                .iter()
                .map(|s| counts.get(s).copied().unwrap_or(0))
                .sum()
        };
        use OrderState::*;
        exported.set_position(n(&[
            Pending, Running, Succeeded, Downloaded, Cleaned, Empty, Failed,
        ]));
        downloaded.set_position(n(&[Downloaded, Cleaned, Empty]));
        finished.set_position(n(&[Cleaned, Empty, Failed, Cancelled, Lost]));
        let failed = n(&[Failed, Cancelled, Lost]);
        finished.set_message(if failed > 0 {
            format!("{failed} failed")
        } else {
            String::new()
        });
        if n(&[Cleaned, Empty]) == total {
            break counts;
        }
        // The injected EE failure: re-queue it as `cedar retry` does.
        if failed > 0 && !retried {
            retried = true;
            let n =
                cedar::campaign::retry(&ctx, &name, false, &cedar::campaign::Subset::everything())
                    .await?;
            bars.println(format!(
                "{n} order(s) failed in EE (the injected task failure); re-queued as `cedar retry` does"
            ))?;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the demo did not finish in 2 minutes"
        );
    };
    for b in [&exported, &downloaded, &finished] {
        b.finish();
    }
    let _ = stop_tx.send(true);
    daemon.await??;

    let sub = ctx.tracker.submission(&name).await?;
    let statuses = ctx.tracker.all(&name).await?;
    let stats = emulator.stats();
    emulator.shutdown().await;
    println!();
    println!(
        "{:<26} {:>6} {:>8} {:>6} {:>12}",
        "collection", "empty", "cleaned", "files", "bytes"
    );
    let mut per: BTreeMap<String, (u32, u32, usize, u64)> = BTreeMap::new();
    for order in sub.orders() {
        let Some(s) = statuses.get(&order_key(&order)) else {
            continue;
        };
        let e = per.entry(order.collection.clone()).or_default();
        match s.state {
            OrderState::Empty => e.0 += 1,
            OrderState::Cleaned => {
                e.1 += 1;
                e.2 += s.files as usize;
                e.3 += s.bytes;
            }
            _ => {}
        }
    }
    for (c, (empty, cleaned, files, bytes)) in &per {
        println!("{c:<26} {empty:>6} {cleaned:>8} {files:>6} {bytes:>12}");
    }
    println!(
        "\norders by state: {}",
        counts
            .iter()
            .map(|(s, n)| format!("{}={n}", s.as_str()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("EE requests: {}", serde_json::to_string(&stats.requests)?);
    println!(
        "files (verified size, md5, crc32c): {}",
        dest_dir.join(&name).display()
    );
    println!(
        "tracking document: {}",
        bucket_dir
            .join(cedar::document::document_object(&settings, &name))
            .display()
    );
    println!("took {:.1}s", started.elapsed().as_secs_f64());
    // The queue file stays: `list` and `status` need nothing else.
    println!(
        "inspect it again: CEDAR__QUEUE__URL={} CEDAR__QUEUE__NAMESPACE={} cedar status {name}",
        settings.config.queue.url, settings.config.queue.namespace
    );
    if let Some(console) = console {
        if args.serve {
            println!("the web console stays open; Ctrl-C to stop");
            let _ = tokio::signal::ctrl_c().await;
        }
        let _ = console_stop.send(true);
        console.await??;
    }
    Ok(())
}
