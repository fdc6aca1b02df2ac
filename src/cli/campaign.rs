//! The campaign commands: submit, list, show, status, update, download, clean, cancel, retry,
//! and the worker daemon — parity with the original `Tracker`, plus what it lacked.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use clap::{Args, Subcommand};

use cedar::campaign;
use cedar::config::{Config, Settings};
use cedar::document::{
    INLINE_ORDERS, document_object, publish, publish_if_small, render, render_into,
};
use cedar::jobs::JobSettings;
use cedar::jobs::download::fetch_order;
use cedar::period::Frequency;
use cedar::queue::tracking::{OrderState, OrderStatus, Tracker, TrackingError};
use cedar::queue::{Connection, QueueUrl};
use cedar::store::Destination;
use cedar::submit::{self, Request};
use cedar::web::{Console, ConsoleOptions};
use cedar::worker::{self, WorkerOptions};

/// Commands that act on submissions and the queue.
#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Validate a request, record it, and queue one export per collection × tile × period.
    Submit(SubmitArgs),
    /// List submissions (optionally those whose name contains PATTERN).
    List { pattern: Option<String> },
    /// Print a submission's tracking document.
    Show { name: String },
    /// Orders per state. Exit 0: every order complete; 3: still running; 4: finished, some
    /// orders FAILED or LOST (`cedar retry` re-queues them); 5: finished, some CANCELLED and none
    /// failed; 2: no such submission; 1: cedar could not answer (queue unreachable, …).
    Status {
        name: String,
        /// Print `{"name", "total", "counts", "done"}`.
        #[arg(long)]
        json: bool,
        /// Keep watching until done: a progress bar on a terminal, else one line per change.
        #[arg(long)]
        watch: bool,
    },
    /// Refresh order states from EE now (one operations.list sweep) and rewrite the document.
    Update { name: String },
    /// Copy a submission's finished exports from the bucket to DEST/NAME, verified (a worker
    /// does this by itself; this is for when none runs).
    Download {
        name: String,
        /// Where to download (default: `[download] dest`).
        #[arg(long)]
        dest: Option<PathBuf>,
        /// Replace files already in DEST.
        #[arg(long)]
        overwrite: bool,
    },
    /// Delete a submission's downloaded exports from the bucket, and its tracking record.
    Clean {
        name: String,
        /// Keep the tracking document and state.
        #[arg(long)]
        keep_tracking: bool,
    },
    /// Cancel a submission, or the orders of it the filters choose: drop their queued jobs and
    /// cancel their EE tasks.
    Cancel {
        name: String,
        #[command(flatten)]
        subset: SubsetArgs,
    },
    /// Re-queue a submission's failed, lost and cancelled orders (or those the filters choose).
    Retry {
        name: String,
        /// Also give every unfinished order the job of its stage again (poll, download or
        /// clean): for a submission that stopped moving although workers run.
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        subset: SubsetArgs,
    },
    /// Run the daemon: every stage, until SIGTERM (then drain).
    Worker(WorkerArgs),
    /// Serve the web console alone (every campaign, each on its tile map, and the JSON API
    /// under /api/v1/) on `[web] listen` until SIGTERM or Ctrl-C; it runs no job.
    Web(WebArgs),
    /// Continuous ingest entries (`[[ingest]]`).
    #[command(subcommand)]
    Ingest(IngestCommand),
}

impl CampaignCommand {
    /// The submission a command acts on, for those that take a NAME.
    fn submission_name(&self) -> Option<&str> {
        match self {
            CampaignCommand::Show { name }
            | CampaignCommand::Status { name, .. }
            | CampaignCommand::Update { name }
            | CampaignCommand::Download { name, .. }
            | CampaignCommand::Clean { name, .. }
            | CampaignCommand::Cancel { name, .. }
            | CampaignCommand::Retry { name, .. } => Some(name),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum IngestCommand {
    /// Each entry's last submitted period and its orders, last complete period, how far behind
    /// its schedule it is, its failed orders, and its next period and when it is due.
    List,
    /// Submit every due period now (what a worker does at each scheduled time).
    Run,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// EE collection IDs (repeat or separate with commas).
    #[arg(long = "collection", required = true, value_delimiter = ',')]
    pub collections: Vec<String>,
    /// Tiles as ROW,COL (repeatable).
    #[arg(long = "tile", value_parser = cedar::grid::parse_tile, conflicts_with_all = ["rows", "tiles_file"])]
    pub tiles: Vec<(u32, u32)>,
    /// Row range A-B (inclusive), with --cols: every tile of the rectangle.
    #[arg(long, value_parser = cedar::grid::parse_range, requires = "cols", conflicts_with = "tiles_file")]
    pub rows: Option<(u32, u32)>,
    /// Column range C-D (inclusive), with --rows.
    #[arg(long, value_parser = cedar::grid::parse_range, requires = "rows")]
    pub cols: Option<(u32, u32)>,
    /// A file with one ROW,COL per line.
    #[arg(long)]
    pub tiles_file: Option<PathBuf>,
    /// First day, YYYY-MM-DD (periods are anchored to the frequency).
    #[arg(long)]
    pub start: NaiveDate,
    /// Last day, YYYY-MM-DD: the period that contains it is included.
    #[arg(long)]
    pub end: NaiveDate,
    /// NYS, NQS, NMS, NW or ND; omit for one period from start to end.
    #[arg(long)]
    pub freq: Option<Frequency>,
    /// Record empty tile-periods with a metadata JSON (the default).
    #[arg(long, overrides_with = "no_save_empty_metadata")]
    pub save_empty_metadata: bool,
    #[arg(long)]
    pub no_save_empty_metadata: bool,
    /// Fail orders that have no scenes instead of recording them EMPTY.
    #[arg(long)]
    pub error_if_empty: bool,
    /// The Earth Engine workload tag of the submission's EE calls (EE reports usage by it):
    /// 1-63 lowercase letters, digits, '-' or '_', a letter or digit at each end. Default: the
    /// tracking name made to fit (lowercased, other characters turned into '-').
    #[arg(long, value_parser = parse_workload_tag)]
    pub workload_tag: Option<String>,
    /// Its place among campaigns sharing Earth Engine: 0-9999, higher first; campaigns of one
    /// priority take turns. Default 100 (`[[ingest]]` entries: 200, so a daily ingest passes a
    /// backfill).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=9999))]
    pub priority: Option<u32>,
    /// Wait until every order is complete or failed.
    #[arg(long)]
    pub wait: bool,
    /// Print `{"tracking_name", "jobs"}`.
    #[arg(long)]
    pub json: bool,
}

/// The filters of `cancel` and `retry`: each one given narrows the orders acted on (an order
/// must pass all of them); a filter given twice passes either value.
#[derive(Debug, Args, Default)]
pub struct SubsetArgs {
    /// Only this collection ID (repeat or separate with commas).
    #[arg(long = "collection", value_delimiter = ',')]
    pub collections: Vec<String>,
    /// Only this tile, ROW,COL (repeatable).
    #[arg(long = "tile", value_parser = cedar::grid::parse_tile)]
    pub tiles: Vec<(u32, u32)>,
    /// Only tiles whose row lies in A-B (inclusive).
    #[arg(long, value_parser = cedar::grid::parse_range)]
    pub rows: Option<(u32, u32)>,
    /// Only tiles whose column lies in C-D (inclusive).
    #[arg(long, value_parser = cedar::grid::parse_range)]
    pub cols: Option<(u32, u32)>,
    /// Only periods that end after this day, YYYY-MM-DD (with --to: that overlap FROM..=TO).
    #[arg(long)]
    pub from: Option<NaiveDate>,
    /// Only periods that start on or before this day, YYYY-MM-DD.
    #[arg(long)]
    pub to: Option<NaiveDate>,
    /// Only orders in this state, as `cedar status` prints it (repeat or separate with commas).
    #[arg(long = "state", value_delimiter = ',', value_parser = campaign::parse_state)]
    pub states: Vec<OrderState>,
}

impl SubsetArgs {
    pub fn subset(&self) -> campaign::Subset {
        campaign::Subset {
            collections: self.collections.clone(),
            tiles: self.tiles.clone(),
            rows: self.rows,
            cols: self.cols,
            from: self.from,
            to: self.to,
            states: self.states.clone(),
            names: campaign::Names::Flags,
        }
    }
}

/// `cedar web` flags.
#[derive(Debug, Args)]
pub struct WebArgs {
    /// The address to serve on; overrides `[web] listen` (default: 127.0.0.1:9464).
    #[arg(long)]
    pub listen: Option<String>,
}

impl WebArgs {
    /// Writes the flags given into the configuration, before it is validated (so that an
    /// address reachable from other hosts still needs `[web] token`).
    pub fn apply(&self, config: &mut Config) {
        if let Some(l) = &self.listen {
            config.web.listen = l.clone();
        }
    }
}

/// `cedar worker` flags: each overrides the configuration key of the same name.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Jobs run at once per stage; overrides `[worker] concurrency` (default 8).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seconds running jobs get to finish after SIGTERM; overrides `[worker] drain_secs` (default 60).
    #[arg(long)]
    pub drain_secs: Option<u64>,
    /// EE tasks PENDING/RUNNING at once across all workers; overrides
    /// `[limits] max_active_exports` (default: EE's maxConcurrentExports × 10, at most 2900).
    #[arg(long)]
    pub max_active_exports: Option<u64>,
    /// EE requests per second across all workers; overrides `[limits] ee_requests_per_second`.
    #[arg(long)]
    pub ee_requests_per_second: Option<u32>,
    /// Seconds between looks at a running EE task; overrides `[worker] poll_interval_secs` (default 10).
    #[arg(long)]
    pub poll_interval_secs: Option<u64>,
    /// Seconds a job held by a dead worker waits before another worker takes it; overrides
    /// `[worker] lease_secs` (default 60).
    #[arg(long)]
    pub lease_secs: Option<u64>,
    /// Ceiling of the first retry delay of a failed job, in ms, doubling per failure; overrides
    /// `[worker] retry_base_ms` (default 2000).
    #[arg(long)]
    pub retry_base_ms: Option<u64>,
}

impl WorkerArgs {
    /// Writes the flags given into the configuration, before it is validated.
    pub fn apply(&self, config: &mut Config) {
        fn set<T: Copy>(slot: &mut T, flag: Option<T>) {
            if let Some(v) = flag {
                *slot = v;
            }
        }
        let (w, limits) = (&mut config.worker, &mut config.limits);
        set(&mut w.concurrency, self.concurrency);
        set(&mut w.drain_secs, self.drain_secs);
        set(&mut w.poll_interval_secs, self.poll_interval_secs);
        set(&mut w.lease_secs, self.lease_secs);
        set(&mut w.retry_base_ms, self.retry_base_ms);
        set(&mut limits.max_active_exports, self.max_active_exports);
        set(
            &mut limits.ee_requests_per_second,
            self.ee_requests_per_second,
        );
    }
}

/// Resolves when the process gets SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested; draining");
}

/// `1 order`, `2 orders`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A filter of `cancel`/`retry` that chooses nothing is bad input (exit 2); anything else is
/// cedar's failure.
fn subset_error(e: anyhow::Error) -> anyhow::Result<ExitCode> {
    match e.downcast::<campaign::SubsetError>() {
        Ok(e) => Ok(usage(e)),
        Err(e) => Err(e),
    }
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// Reading a queue that does not exist must not create an empty one and report nothing.
fn missing_queue(config: &Config) -> Option<ExitCode> {
    let Some(QueueUrl::Sqlite(path)) = QueueUrl::parse(&config.queue.url) else {
        return None;
    };
    (!path.exists()).then(|| {
        usage(format!(
            "no queue at {}: nothing was submitted with this queue.url; check --config (or CEDAR_CONFIG) and [queue] url",
            path.display()
        ))
    })
}

/// Runs `list` and `status`, which read the queue and nothing else: they need only `[queue]`
/// to be right, not a bucket or an EE project, so a campaign can be watched from anywhere.
pub async fn run_read_only(config: &Config, cmd: &CampaignCommand) -> anyhow::Result<ExitCode> {
    if let Some(code) = missing_queue(config) {
        return Ok(code);
    }
    let q = &config.queue;
    let tls_ca_file = q.tls_ca_file.as_deref().map(std::path::Path::new);
    let conn = Connection::open_now(&q.url, tls_ca_file)
        .await
        .map_err(|e| anyhow::anyhow!("queue.url {}: {e}", cedar::queue::redact_url(&q.url)))?;
    let tracker = Tracker::new(&conn, &q.namespace);
    match cmd {
        CampaignCommand::List { pattern } => {
            for name in tracker.list().await? {
                if pattern.as_deref().is_some_and(|p| !name.contains(p)) {
                    continue;
                }
                let counts = tracker.counts(&name).await?;
                let summary: Vec<String> = counts
                    .iter()
                    .map(|(s, n)| format!("{}={n}", s.as_str()))
                    .collect();
                println!("{name}\t{}", summary.join(" "));
            }
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::Status {
            name,
            json,
            watch: w,
        } => match tracker.submission(name).await {
            // A name that does not exist is bad input (exit 2), not a failure of cedar (exit 1).
            Err(e @ TrackingError::Unknown(_)) => Ok(usage(e)),
            Err(e) => Err(e.into()),
            Ok(_) => {
                let queue = cedar::queue::Queue::new(&conn, &q.namespace);
                watch(&tracker, &queue, name, *json, *w).await
            }
        },
        _ => unreachable!("only list and status read the queue alone"),
    }
}

impl CampaignCommand {
    /// `list` and `status` read the queue and nothing else.
    pub fn reads_only_the_queue(&self) -> bool {
        matches!(
            self,
            CampaignCommand::List { .. } | CampaignCommand::Status { .. }
        )
    }
}

/// Runs a campaign command.
pub async fn run(settings: Settings, cmd: &CampaignCommand) -> anyhow::Result<ExitCode> {
    let settings = Arc::new(settings);
    let jobs = JobSettings::from_config(&settings.config);
    // Validate what needs no server before connecting to one.
    let plan = match cmd {
        CampaignCommand::Submit(a) => match build_request(a) {
            Ok(req) => match submit::plan(&settings, &req, chrono::Utc::now()) {
                Ok(p) => Some(p),
                Err(e) => return Ok(usage(e)),
            },
            Err(e) => return Ok(usage(e)),
        },
        _ => None,
    };
    if matches!(cmd, CampaignCommand::Show { .. })
        && let Some(code) = missing_queue(&settings.config)
    {
        return Ok(code);
    }
    let ctx = cedar::jobs::Context::connect(settings.clone(), jobs).await?;
    // A name that does not exist is bad input (exit 2), not a failure of cedar (exit 1).
    if let Some(name) = cmd.submission_name()
        && let Err(e @ TrackingError::Unknown(_)) = ctx.tracker.submission(name).await
    {
        return Ok(usage(e));
    }
    match cmd {
        CampaignCommand::Submit(a) => {
            let plan = plan.expect("planned above");
            if let Some(d) = plan.dropped {
                tracing::warn!(
                    "the partial first period {d} is dropped: periods are anchored to the frequency; start on a period boundary to include it"
                );
            }
            let n = match submit::enqueue(&ctx, &plan).await {
                Ok(n) => n,
                // Refused before anything was written (the same objects as a running submission).
                Err(submit::SubmitError::Invalid(m)) => return Ok(usage(m)),
                Err(e) => return Err(e.into()),
            };
            let name = &plan.submission.name;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"tracking_name": name, "jobs": plan.submission.order_count()})
                );
            } else {
                println!("{name}");
                eprintln!("queued {}", plural(n as usize, "export job"));
            }
            if a.wait {
                return watch(&ctx.tracker, &ctx.queue, name, false, true).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::List { .. } | CampaignCommand::Status { .. } => {
            unreachable!(
                "list and status need only the queue: the CLI runs them through run_read_only"
            )
        }
        CampaignCommand::Show { name } => {
            // Pretty for people; a large document is streamed compact, never held in memory.
            if ctx.tracker.submission(name).await?.order_count() <= INLINE_ORDERS {
                let doc = render(&settings, &ctx.tracker, name).await?;
                let v: serde_json::Value = serde_json::from_slice(&doc)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::io::stdout());
                render_into(&settings, &ctx.tracker, name, &mut out).await?;
                tokio::io::AsyncWriteExt::write_all(&mut out, b"\n").await?;
                tokio::io::AsyncWriteExt::flush(&mut out).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::Update { name } => {
            let n = campaign::update(&ctx, name).await?;
            publish_if_small(&settings, &ctx.tracker, ctx.bucket.as_ref(), name).await?;
            eprintln!("{n} orders refreshed from EE");
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::Download {
            name,
            dest,
            overwrite,
        } => {
            let root = dest
                .clone()
                .unwrap_or_else(|| PathBuf::from(&settings.config.download.dest));
            let folder = root.join(name);
            let dest = Destination::local(&root);
            let sub = ctx.submission(name).await?;
            let (mut files, mut bytes, mut cleaned) = (0, 0, 0);
            let mut walk = ctx.tracker.walk(name, sub.orders());
            while let Some(chunk) = walk.next().await? {
                for (order, status) in chunk {
                    let Some(status) = status else { continue };
                    if status.state == OrderState::Cleaned {
                        cleaned += 1;
                    }
                    if !matches!(status.state, OrderState::Succeeded | OrderState::Downloaded) {
                        continue;
                    }
                    let (v, b) =
                        fetch_order(&ctx, &sub, &order, &status, &dest, *overwrite).await?;
                    files += v.len();
                    bytes += b;
                }
            }
            eprintln!(
                "{} ({bytes} bytes) verified in {}",
                plural(files, "file"),
                folder.display()
            );
            if cleaned > 0 {
                // Their objects are gone from the bucket: a worker downloaded them already.
                eprintln!(
                    "{} already downloaded (by a worker, to {}/{name}) and cleaned from the bucket",
                    plural(cleaned, "order"),
                    settings.config.download.dest
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::Clean {
            name,
            keep_tracking,
        } => {
            // Cleaning under a running campaign would forget orders whose objects are still
            // being written, downloaded or deleted, and leak their admission slots.
            let running: u64 = ctx
                .tracker
                .counts(name)
                .await?
                .iter()
                // DOWNLOADED orders are what clean is for: their files are safe in the destination.
                .filter(|(s, _)| {
                    !s.is_complete() && !s.is_failed() && **s != OrderState::Downloaded
                })
                .map(|(_, n)| n)
                .sum();
            if running > 0 {
                return Ok(usage(format!(
                    "{name} is still running ({} not finished); wait until `cedar status {name}` ends, or `cedar cancel {name}` first",
                    plural(running as usize, "order")
                )));
            }
            let sub = ctx.submission(name).await?;
            let (mut deleted, mut already) = (0, 0);
            let mut walk = ctx.tracker.walk(name, sub.orders());
            while let Some(chunk) = walk.next().await? {
                let mut cleaned = Vec::new();
                for (order, s) in chunk {
                    let Some(s) = s else { continue };
                    if s.state == OrderState::Cleaned {
                        already += 1;
                    }
                    if s.state != OrderState::Downloaded {
                        continue;
                    }
                    for o in &s.objects {
                        ctx.bucket.delete(&o.name).await?;
                        deleted += 1;
                    }
                    let s = OrderStatus {
                        state: OrderState::Cleaned,
                        objects: Vec::new(),
                        updated: cedar::queue::tracking::stamp(),
                        ..s
                    };
                    cleaned.push((order, s));
                }
                ctx.tracker.set_many(name, &cleaned, false).await?;
            }
            if *keep_tracking {
                publish(&settings, &ctx.tracker, ctx.bucket.as_ref(), name).await?;
            } else {
                ctx.bucket.delete(&document_object(&settings, name)).await?;
                ctx.tracker.forget(name).await?;
            }
            eprintln!("{} deleted", plural(deleted, "object"));
            if already > 0 {
                eprintln!("{} already cleaned by a worker", plural(already, "order"));
            }
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::Cancel { name, subset } => {
            let done = match campaign::cancel(&ctx, name, &subset.subset()).await {
                Ok(done) => done,
                Err(e) => return subset_error(e),
            };
            publish_if_small(&settings, &ctx.tracker, ctx.bucket.as_ref(), name).await?;
            eprintln!("{} cancelled", plural(done.orders, "order"));
            if done.objects > 0 {
                eprintln!(
                    "{} of the cancelled orders deleted from the bucket",
                    plural(done.objects, "exported object")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::Retry {
            name,
            resume,
            subset,
        } => {
            let n = match campaign::retry(&ctx, name, *resume, &subset.subset()).await {
                Ok(n) => n,
                Err(e) => return subset_error(e),
            };
            publish_if_small(&settings, &ctx.tracker, ctx.bucket.as_ref(), name).await?;
            eprintln!("{} re-queued", plural(n, "order"));
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::Ingest(IngestCommand::Run) => {
            for name in cedar::schedule::tick(&ctx, chrono::Utc::now()).await? {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::Ingest(IngestCommand::List) => {
            let now = chrono::Utc::now();
            let tallies = ctx.tracker.tallies().await?;
            let statuses =
                cedar::schedule::status(&ctx.tracker, &settings.ingests, &tallies, now).await?;
            println!(
                "name\tschedule\tlast submitted\tits orders\tlast complete\tbehind\tfailed\tnext period\tdue on\tnext run (UTC)"
            );
            for (i, s) in settings.ingests.iter().zip(&statuses) {
                let run = i
                    .schedule
                    .after(&now)
                    .next()
                    .map_or("-".to_string(), |t| t.to_rfc3339());
                println!("{}\t{}\t{}\t{run}", i.name, i.schedule, ingest_line(s, now));
            }
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::Worker(_) => {
            let opts = WorkerOptions::from_config(&settings.config);
            worker::run(ctx, opts, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::Web(_) => {
            let cfg = &settings.config;
            // A worker knows its admission cap; here only a configured one is known.
            let cap = Some(cfg.limits.max_active_exports).filter(|n| *n > 0);
            let console = Console::new(ctx, ConsoleOptions::from_config(cfg, cap));
            let listen = cfg.web.standalone_listen();
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("web.listen {listen}: {e}"))?;
            let addr = listener.local_addr()?;
            tracing::info!(addr = %addr, "serving the web console at http://{addr}/");
            println!("http://{addr}/");
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            });
            cedar::web::serve(listener, console, stop_rx).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--workload-tag`, held to EE's rule before anything is submitted.
fn parse_workload_tag(tag: &str) -> Result<String, String> {
    cedar::naming::check_workload_tag(tag)?;
    Ok(tag.to_owned())
}

fn build_request(a: &SubmitArgs) -> Result<Request, String> {
    let tiles = if let Some(path) = &a.tiles_file {
        submit::read_tiles_file(path)?
    } else if let (Some(rows), Some(cols)) = (a.rows, a.cols) {
        (rows.0..=rows.1)
            .flat_map(|r| (cols.0..=cols.1).map(move |c| (r, c)))
            .collect()
    } else {
        a.tiles.clone()
    };
    Ok(Request {
        name: None,
        workload_tag: a.workload_tag.clone(),
        priority: a.priority,
        collections: a.collections.clone(),
        tiles,
        start: a.start,
        end: a.end,
        freq: a.freq,
        save_empty_metadata: !a.no_save_empty_metadata,
        error_if_empty: a.error_if_empty,
    })
}

/// The columns of `cedar ingest list` after the name and schedule: the facts the worker exports
/// as `cedar_ingest_*` metrics, for people.
fn ingest_line(s: &cedar::schedule::IngestStatus, now: chrono::DateTime<chrono::Utc>) -> String {
    let dash = || "-".to_string();
    let last = s.last_submitted.as_ref();
    let orders = last.map_or_else(dash, |l| {
        l.orders
            .iter()
            .map(|(s, n)| format!("{}={n}", s.as_str()))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let behind = match s.missing.first() {
        None => dash(),
        Some(first) => {
            let since = s.next.map_or(first.end, |(_, due)| due);
            format!(
                "{} (due since {since}, {} days)",
                plural(s.missing.len(), "period"),
                (now.date_naive() - since).num_days()
            )
        }
    };
    let failed = if s.failed_orders == 0 {
        dash()
    } else {
        format!(
            "{} in {}",
            plural(s.failed_orders as usize, "order"),
            plural(s.failed_periods, "period")
        )
    };
    let (next, due) = s
        .next
        .map_or((dash(), dash()), |(p, d)| (p.to_string(), d.to_string()));
    format!(
        "{}\t{orders}\t{}\t{behind}\t{failed}\t{next}\t{due}",
        last.map_or_else(dash, |l| l.period.to_string()),
        s.last_complete.map_or_else(dash, |p| p.to_string()),
    )
}

/// The status line data of a submission.
async fn snapshot(
    tracker: &Tracker,
    name: &str,
) -> anyhow::Result<(usize, BTreeMap<OrderState, u64>)> {
    let sub = tracker.submission(name).await?;
    Ok((sub.order_count(), tracker.counts(name).await?))
}

fn exit_for(total: usize, counts: &BTreeMap<OrderState, u64>) -> (bool, ExitCode) {
    let complete: u64 = counts
        .iter()
        .filter(|(s, _)| s.is_complete())
        .map(|(_, n)| n)
        .sum();
    let failed: u64 = counts
        .iter()
        .filter(|(s, _)| s.is_failed())
        .map(|(_, n)| n)
        .sum();
    let cancelled = counts.get(&OrderState::Cancelled).copied().unwrap_or(0);
    let finished = (complete + failed) as usize >= total;
    let code = if !finished {
        ExitCode::from(3)
    } else if failed > cancelled {
        ExitCode::from(4)
    } else if cancelled > 0 {
        ExitCode::from(5)
    } else {
        ExitCode::SUCCESS
    };
    (finished, code)
}

async fn watch(
    tracker: &Tracker,
    queue: &cedar::queue::Queue,
    name: &str,
    json: bool,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let bar = (follow && !json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
            )
            .expect("valid template"),
        );
        b
    });
    // Without a terminal (a pipe, a log file), a watch prints one line each time the counts
    // change, so whoever reads the output sees progress before the end.
    let lines = follow && !json && bar.is_none();
    let mut last_line = String::new();
    loop {
        let (total, counts) = snapshot(tracker, name).await?;
        let (finished, code) = exit_for(total, &counts);
        let summary: Vec<String> = counts
            .iter()
            .map(|(s, n)| format!("{}={n}", s.as_str()))
            .collect();
        let line = format!("{name}: {}: {}", plural(total, "order"), summary.join(" "));
        if lines && !finished && line != last_line {
            println!("{line}");
            last_line = line.clone();
        }
        if let Some(b) = &bar {
            let done: u64 = counts
                .iter()
                .filter(|(s, _)| s.is_complete() || s.is_failed())
                .map(|(_, n)| n)
                .sum();
            b.set_length(total as u64);
            b.set_position(done);
            b.set_message(summary.join(" "));
        }
        if !follow || finished {
            if let Some(b) = &bar {
                b.finish();
            }
            // Read once, at the end: the EECU sum reads every order.
            let eecu = tracker.eecu_seconds(name).await?;
            let paused = queue.paused_until().await?;
            if json {
                let counts: BTreeMap<&str, u64> =
                    counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
                println!(
                    "{}",
                    serde_json::json!({"name": name, "total": total, "counts": counts, "done": finished,
                        "eecu_seconds": eecu, "admission_paused_until": paused})
                );
            } else {
                let eecu = format!("EECU used: {eecu:.1} s ({:.3} EECU-hours)", eecu / 3600.0);
                if bar.is_none() {
                    println!("{line}; {eecu}");
                } else {
                    println!("{name}: {eecu}");
                }
                if let Some(until) = paused {
                    println!(
                        "{name}: admission is paused by the EECU budget ([limits] eecu_hours_per_day) until {}",
                        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    );
                }
            }
            return Ok(code);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
