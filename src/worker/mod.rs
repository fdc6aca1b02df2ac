//! The worker: `cedar worker` runs every stage's handlers against the shared queue, plus the
//! operations sweeper, the tracking-document publisher and the EECU budget's check
//! ([`jobs::eecu`]), until SIGTERM/Ctrl-C.
//!
//! Any number of workers on any number of machines may share one Redis (or, in single-machine
//! mode, any number of worker processes on one machine share one SQLite file). Each stage is an
//! apalis worker over [`crate::queue::backend`]; a job a dead process held comes back after its
//! lease (`[worker] lease_secs`, default 60 s) and runs on another worker. On SIGTERM a worker
//! stops taking jobs, lets the running ones finish for up to `[worker] drain_secs`, and hands
//! back every job it still holds (due at once elsewhere, no attempt spent).

mod server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis::layers::tracing::{DefaultOnFailure, TraceLayer};
use apalis::prelude::*;
use tokio::sync::watch;

use crate::config::Config;
use crate::document::{publish, publish_if_small};
use crate::earthengine::{ConcurrencySource, MAX_ACTIVE_EXPORTS};
use crate::jobs::poll::SweepSettings;
use crate::jobs::{self, Context, JobError, JobSettings, order_of};
use crate::queue::tracking::OrderState;
use crate::queue::{self, BackendConfig, OrderJob, Outcome, Stage};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Jobs run at once per stage.
    pub concurrency: usize,
    /// Time running jobs get to finish after SIGTERM.
    pub drain: Duration,
    /// How long a job leased by a dead worker waits before another takes it.
    pub lease: Duration,
    /// EE tasks PENDING or RUNNING at once across all workers; `None` derives it from EE's
    /// `maxConcurrentExports` × `active_exports_factor`.
    pub max_active_exports: Option<u64>,
    pub active_exports_factor: u64,
    pub jobs: JobSettings,
    pub sweep: SweepSettings,
    /// How often dirty tracking documents are re-written to the store.
    pub publish_interval: Duration,
    /// How often idle stages look for new jobs.
    pub poll_every: Duration,
}

impl WorkerOptions {
    /// How a worker runs as configured (`[worker]`, `[limits]`); `cedar worker` flags are
    /// applied to the configuration before it is validated.
    pub fn from_config(config: &Config) -> WorkerOptions {
        let w = &config.worker;
        WorkerOptions {
            concurrency: w.concurrency,
            drain: Duration::from_secs(w.drain_secs),
            // Heartbeats renew leases every third of it: shorter leases would race them.
            lease: Duration::from_secs(w.lease_secs.max(3)),
            max_active_exports: Some(config.limits.max_active_exports).filter(|n| *n > 0),
            active_exports_factor: config.limits.active_exports_factor,
            jobs: JobSettings::from_config(config),
            sweep: SweepSettings::from_config(w),
            publish_interval: Duration::from_secs(w.publish_interval_secs),
            poll_every: Duration::from_millis(w.idle_poll_ms),
        }
    }
}

impl Default for WorkerOptions {
    /// The documented defaults (`config/default.toml`).
    fn default() -> Self {
        WorkerOptions::from_config(&Config::default())
    }
}

/// The admission cap: configured, else EE's export concurrency × factor; never above EE's queue
/// cap minus a margin.
pub fn admission_cap(configured: Option<u64>, ee_max_concurrent: Option<u64>, factor: u64) -> u64 {
    let derived = ee_max_concurrent
        .unwrap_or(crate::earthengine::DEFAULT_MAX_CONCURRENT_EXPORTS)
        .max(1)
        * factor.max(1);
    configured.unwrap_or(derived).clamp(1, MAX_ACTIVE_EXPORTS)
}

/// Runs a worker until `shutdown` resolves, then drains.
pub async fn run(
    ctx: Context,
    opts: WorkerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let concurrency = match opts.max_active_exports {
        Some(_) => None,
        None => {
            let c = ctx.ee.export_concurrency().await;
            if c.source == ConcurrencySource::Default {
                tracing::warn!(
                    problems = %c.problems.join("; "),
                    max_concurrent_exports = c.max,
                    "EE's project config does not say how many exports run at once; assuming the default"
                );
            } else {
                tracing::info!(
                    max_concurrent_exports = c.max,
                    source = c.source.as_str(),
                    "EE export concurrency read from the project config"
                );
            }
            Some(c)
        }
    };
    let ee_cap = concurrency.as_ref().map(|c| c.max);
    let cap = admission_cap(opts.max_active_exports, ee_cap, opts.active_exports_factor);
    // Say once where everything is, so that a worker pointed at the wrong queue or store is
    // seen at start, not after an hour of silence.
    let cfg = &ctx.settings.config;
    tracing::info!(
        queue = %queue::redact_url(&cfg.queue.url),
        namespace = %cfg.queue.namespace,
        earthengine = %cfg.earthengine.endpoint,
        project = %cfg.earthengine.project,
        store = %queue::redact_url(&ctx.settings.store_url),
        destination = %queue::redact_url(&cfg.download.dest),
        max_active_exports = cap,
        concurrency = opts.concurrency,
        "worker starting"
    );

    // A worker SIGKILLed on this host left its half-written downloads behind; remove them.
    let dest = ctx.dest.clone();
    tokio::spawn(async move {
        let n = dest.remove_stale_temps().await;
        if n > 0 {
            tracing::info!(files = n, "removed temporary files of dead processes");
        }
    });

    // Workers run in one process (benches, tests) lease under names of their own: a name shared
    // by two would hand back each other's leases as strays.
    static INSTANCES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let instance = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (stop_tx, stop_rx) = watch::channel(false);
    let sweeper = tokio::spawn(jobs::poll::sweep_loop(
        ctx.clone(),
        opts.sweep.clone(),
        queue::worker_name(Stage::Poll, 10_000 + instance, 0),
        stop_rx.clone(),
    ));
    let metrics = tokio::spawn(server::serve(
        ctx.clone(),
        cap,
        concurrency.map(|c| (c.max, c.source.as_str())),
        stop_rx.clone(),
    ));
    let ingest = tokio::spawn(crate::schedule::run_loop(ctx.clone(), stop_rx.clone()));
    let eecu = tokio::spawn(jobs::eecu::budget_loop(ctx.clone(), stop_rx.clone()));
    let publisher = tokio::spawn(publish_loop(ctx.clone(), opts.publish_interval, stop_rx));

    let base = BackendConfig {
        // One job per fetch: apalis does not renew the leases of fetched jobs that wait for a
        // free slot (see src/queue/backend.rs), so a bigger batch could lose leases under load.
        batch_size: 1,
        lease: opts.lease,
        heartbeat: opts.lease / 4,
        retry: ctx.jobs.retry,
        admit_max_active: None,
    };
    let mut monitor = Monitor::new();
    // Every name this process leases under, so that what the drain did not finish is handed
    // back at the end instead of waiting out its lease.
    let names: Arc<Mutex<Vec<(Stage, String)>>> = Arc::default();
    // One apalis worker per stage; a macro because each handler is its own fn type.
    macro_rules! register {
        ($stage:expr, $handler:ident) => {{
            let stage = $stage;
            let cfg = BackendConfig {
                admit_max_active: (stage == Stage::Export).then_some(cap),
                ..base
            };
            let backend = queue::backend::<OrderJob>(ctx.queue.clone(), stage, cfg);
            let ctx = ctx.clone();
            let concurrency = opts.concurrency.max(1);
            let every = opts.poll_every;
            let names = names.clone();
            monitor = monitor.register(move |restarts| {
                let name = queue::worker_name(stage, instance, restarts);
                names
                    .lock()
                    .expect("worker names lock")
                    .push((stage, name.clone()));
                WorkerBuilder::new(name)
                    .backend(backend.clone().polled(every))
                    .concurrency(concurrency)
                    // apalis's spans, but its failure line at DEBUG: `job failed; will retry` or
                    // `order failed` below already says it once, with the stage and the job.
                    .layer(
                        TraceLayer::new()
                            .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
                    )
                    .catch_panic()
                    .data(ctx.clone())
                    .build($handler)
            });
        }};
    }
    register!(Stage::Export, handle_export);
    register!(Stage::Poll, handle_poll);
    register!(Stage::Download, handle_download);
    register!(Stage::Clean, handle_clean);
    let result = monitor
        .should_restart(|_, _| true)
        .shutdown_timeout(opts.drain)
        .run_with_signal(async move {
            shutdown.await;
            Ok(())
        })
        .await;
    let held = names.lock().expect("worker names lock").clone();
    hand_back(&ctx, &held).await;
    let _ = stop_tx.send(true);
    let _ = sweeper.await;
    let _ = publisher.await;
    let _ = eecu.await;
    let _ = ingest.await;
    let _ = metrics.await;
    // Whatever changed during the drain is in the documents too.
    publish_dirty(&ctx).await;
    result.map_err(|e| anyhow::anyhow!("worker monitor: {e}"))
}

/// Puts every job this process still holds back to due, without spending an attempt: jobs the
/// drain cut short (every job may run twice) run at once on another worker, not after the lease.
async fn hand_back(ctx: &Context, names: &[(Stage, String)]) {
    let mut n = 0;
    for (stage, name) in names {
        match ctx.queue.leased_by(*stage, name).await {
            Ok(ids) => {
                for id in ids {
                    match ctx.queue.release(*stage, name, &id).await {
                        Ok(true) => n += 1,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(job = %id, error = %e, "could not hand a job back")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(stage = %stage, error = %e, "could not list the jobs to hand back")
            }
        }
    }
    if n > 0 {
        tracing::info!(jobs = n, "handed back the jobs the drain did not finish");
    }
}

async fn handle_export(job: OrderJob, ctx: Data<Context>) -> Result<Outcome, BoxDynError> {
    let r = crate::metrics::timed(Stage::Export, jobs::export::run(&ctx, &job)).await;
    settle(&ctx, Stage::Export, &job, r).await
}

async fn handle_poll(job: OrderJob, ctx: Data<Context>) -> Result<Outcome, BoxDynError> {
    let r = crate::metrics::timed(Stage::Poll, jobs::poll::run(&ctx, &job)).await;
    settle(&ctx, Stage::Poll, &job, r).await
}

async fn handle_download(job: OrderJob, ctx: Data<Context>) -> Result<Outcome, BoxDynError> {
    let r = crate::metrics::timed(Stage::Download, jobs::download::run(&ctx, &job)).await;
    settle(&ctx, Stage::Download, &job, r).await
}

async fn handle_clean(job: OrderJob, ctx: Data<Context>) -> Result<Outcome, BoxDynError> {
    let r = crate::metrics::timed(Stage::Clean, jobs::clean::run(&ctx, &job)).await;
    settle(&ctx, Stage::Clean, &job, r).await
}

/// Turns a handler's result into what the queue needs, recording failures on the order: a fatal
/// error, or a retryable one on the last allowed attempt, fails the order with its message.
async fn settle(
    ctx: &Context,
    stage: Stage,
    job: &OrderJob,
    r: Result<Outcome, JobError>,
) -> Result<Outcome, BoxDynError> {
    let max = ctx.jobs.retry.max_attempts;
    let (message, fatal) = match r {
        Ok(o) => {
            if o == Outcome::Done {
                free_slot_if_settled(ctx, job).await;
            }
            return Ok(crate::metrics::job_done(stage, o));
        }
        Err(JobError::Fatal(m)) => (m, true),
        Err(JobError::Retry(m)) => {
            let failures = ctx.queue.attempts(stage, &job.id()).await.unwrap_or(0) + 1;
            if failures >= max {
                (format!("gave up after {failures} attempts: {m}"), true)
            } else {
                tracing::warn!(stage = %stage, job = %job.id(), attempt = failures, error = %m, "job failed; will retry");
                crate::metrics::job_retried(stage, &m);
                (m, false)
            }
        }
    };
    if fatal {
        crate::metrics::job_failed(stage);
        tracing::error!(stage = %stage, job = %job.id(), error = %message, "order failed");
        let order = order_of(job);
        let msg = message.clone();
        let mut before = None;
        match ctx
            .tracker
            .update(&job.tracking, &order, false, |s| {
                before = Some(s.state);
                s.state = OrderState::Failed;
                s.error = Some(msg);
            })
            .await
        {
            // An order that had failed already (EE failed its task, which poll counted, or it
            // was cancelled) is not counted again.
            Ok(_) if !before.is_some_and(OrderState::is_failed) => {
                let from_ingest = ctx.from_ingest(&job.tracking).await;
                crate::metrics::order_failed(
                    &order.collection,
                    from_ingest,
                    crate::metrics::FailureCause::Job,
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not record the failure"),
        }
        if let Err(e) = ctx.queue.release_slot(&job.id()).await {
            tracing::warn!(error = %e, "could not release the admission slot");
        }
        return Err(Box::new(AbortError::new(std::io::Error::other(message))));
    }
    Err(message.into())
}

/// Frees the order's admission slot once no EE task can be running for it any more. Every
/// path that ends an order frees it too; this catches the duplicates (a re-delivered or
/// re-enqueued job admitted after the order had moved on) that would otherwise leak one.
async fn free_slot_if_settled(ctx: &Context, job: &OrderJob) {
    match ctx.tracker.status(&job.tracking, &order_of(job)).await {
        Ok(Some(s)) if s.state != OrderState::Queued && !s.state.is_active() => {
            if let Err(e) = ctx.queue.release_slot(&job.id()).await {
                tracing::warn!(error = %e, "could not release the admission slot");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the order to free its slot"),
    }
}

async fn publish_loop(ctx: Context, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut last = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => publish_due(&ctx, &mut last, every, &stop).await,
            _ = stop.changed() => return,
        }
    }
}

/// How long to wait between two publications of one document: `every`, and longer for big
/// submissions (one second per 2,000 orders), since each re-renders every order.
fn publish_gap(every: Duration, orders: usize) -> Duration {
    every.max(Duration::from_secs((orders / 2000) as u64))
}

/// Re-writes the documents of submissions whose orders changed, each at most once per
/// [`publish_gap`]; a document not due yet stays marked.
async fn publish_due(
    ctx: &Context,
    last: &mut std::collections::HashMap<String, std::time::Instant>,
    every: Duration,
    stop: &watch::Receiver<bool>,
) {
    let names = match ctx.tracker.take_dirty(100).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "reading dirty tracking names failed");
            return;
        }
    };
    for name in names {
        let orders = ctx.submission(&name).await.map_or(0, |s| s.order_count());
        // Once the worker stops, what is left goes to the drain's last round (or another
        // worker): a stopping worker waits for at most the document being written.
        if *stop.borrow()
            || last
                .get(&name)
                .is_some_and(|t| t.elapsed() < publish_gap(every, orders))
        {
            let _ = ctx.tracker.mark_dirty(&name).await;
            continue;
        }
        publish_one(ctx, &name, false).await;
        last.insert(name, std::time::Instant::now());
    }
}

/// Publishes `name`'s document; with `inline_only`, only one small enough to write inline
/// ([`publish_if_small`] leaves a bigger one marked). A failure leaves it marked too.
async fn publish_one(ctx: &Context, name: &str, inline_only: bool) {
    let (settings, tracker, bucket) = (&ctx.settings, &ctx.tracker, ctx.bucket.as_ref());
    let published = if inline_only {
        publish_if_small(settings, tracker, bucket, name).await
    } else {
        publish(settings, tracker, bucket, name)
            .await
            .map(|()| true)
    };
    match published {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(tracking = %name, "the tracking document is left to the next publisher")
        }
        Err(e) => {
            tracing::warn!(tracking = %name, error = %e, "publishing the tracking document failed");
            let _ = tracker.mark_dirty(name).await;
        }
    }
}

/// Re-writes, now, the documents of every submission whose orders changed and that is small
/// enough to be written inline ([`INLINE_ORDERS`](crate::document::INLINE_ORDERS)): the last
/// round of a drain. A bigger one (hundreds of MB for an archive) stays marked for the
/// publisher of a running worker, or of this one when it starts again, so that a stopping
/// worker is not held past its drain.
pub async fn publish_dirty(ctx: &Context) {
    match ctx.tracker.take_dirty(100).await {
        Ok(names) => {
            for name in names {
                publish_one(ctx, &name, true).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading dirty tracking names failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admission_cap_is_bounded() {
        assert_eq!(admission_cap(None, Some(2), 10), 20);
        assert_eq!(admission_cap(None, None, 10), 20);
        assert_eq!(admission_cap(Some(1000), Some(2), 10), 1000);
        assert_eq!(admission_cap(Some(5000), None, 10), MAX_ACTIVE_EXPORTS);
        assert_eq!(admission_cap(None, Some(500), 10), MAX_ACTIVE_EXPORTS);
        assert_eq!(admission_cap(Some(0), None, 10), 1);
    }
}
