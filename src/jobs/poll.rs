//! Poll: follow an order's EE operation until it ends.
//!
//! Polling is batched. EE allows 100 requests/s per project and a campaign keeps up to 3000
//! tasks in flight, so a poll job never asks EE about its own task: one **sweeper** (a leader
//! elected among all workers) pages `operations.list` and writes every operation's state into
//! the shared [`Snapshot`](crate::queue::Snapshot), and poll jobs read the snapshot. The sweeper adapts
//! its interval to how fast tasks finish, so that each `operations.list` page pays for several
//! completed tasks. A task still PENDING or RUNNING snoozes its poll job (no retry spent) for
//! `[worker] poll_interval_secs`, but the sweeper cuts that short: each awaited operation is
//! recorded with its poll job's id ([`mark_waiting`]), and when a sweep sees the operation end
//! it wakes that job ([`Queue::wake`](crate::queue::Queue::wake)), which then runs at once.
//!
//! Operations are matched by their ID, the last segment of the name, because EE may name one
//! operation `projects/my-project/operations/ID` in one answer and `projects/123456/operations/ID`
//! (the project number) in another. A task the sweep does not list (EE drops finished tasks from
//! the list after a while) loses its view, its poll job is woken and asks `operations.get`; the
//! order is LOST only when EE answers that the operation does not exist (404).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;

use super::{Context, JobError, job_for, order_of};
use crate::config::WorkerConfig;
use crate::earthengine::types::OpView;
use crate::metrics::{self, FailureCause};
use crate::queue::tracking::OrderState;
use crate::queue::{OrderJob, Outcome, QueueError, Stage};

/// Runs the poll stage of one order.
pub async fn run(ctx: &Context, job: &OrderJob) -> Result<Outcome, JobError> {
    let operation = job
        .operation
        .clone()
        .ok_or_else(|| JobError::Fatal("poll job without an operation name".into()))?;
    let order = order_of(job);
    let status = ctx.tracker.status(&job.tracking, &order).await?;
    let Some(status) = status else {
        return Ok(Outcome::Done);
    };
    // A stale job: the order was re-exported under another operation, or moved on.
    if status.operation.as_deref() != Some(operation.as_str()) {
        return Ok(Outcome::Done);
    }
    if status.state == OrderState::Succeeded {
        // A re-run after a crash between recording SUCCEEDED and enqueueing the download:
        // enqueue it again (a no-op if it is queued already).
        enqueue_download(ctx, job, &order, &operation).await?;
        return Ok(Outcome::Done);
    }
    // Cancelled while its task ran (`cedar cancel`): the job stays until EE says the task
    // ended, then deletes what it wrote meanwhile.
    let cancelled = status.state == OrderState::Cancelled;
    if !cancelled && status.state.rank() > OrderState::Succeeded.rank() {
        return Ok(Outcome::Done);
    }
    mark_waiting(ctx, &operation, job).await?;
    let snap = ctx.snapshot.view(&operation).await.map_err(snapshot_err)?;
    let view = match snap.and_then(|s| serde_json::from_str::<OpView>(&s).ok()) {
        Some(v) => v,
        None => {
            // Not in the snapshot. Until a sweep that started after the export has finished,
            // that only means the sweeper has not seen it yet.
            let swept = ctx.snapshot.swept_ms().await.map_err(snapshot_err)?;
            let created = status.exported.unwrap_or(status.updated).timestamp_millis();
            if swept.is_none_or(|s| s <= created) {
                return Ok(snooze(ctx));
            }
            // EE does not list it (not yet, or no longer: EE drops finished tasks from the
            // list after a while). Only EE's answer for this very operation decides: it is
            // LOST when EE says it does not exist, and is looked up again on every run until
            // then.
            ctx.ee_permit().await?;
            match ctx.ee.get_operation(&operation).await {
                Ok(op) => OpView::from_operation(&op),
                Err(e) if e.is_not_found() && cancelled => {
                    return after_cancel(ctx, job, &operation, status.exports).await;
                }
                Err(e) if e.is_not_found() => {
                    return lost(
                        ctx,
                        job,
                        &operation,
                        "not listed by operations.list, and operations.get answered 404 NOT_FOUND",
                    )
                    .await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if cancelled {
        return if has_ended(&view) {
            after_cancel(ctx, job, &operation, status.exports).await
        } else {
            Ok(snooze(ctx))
        };
    }
    apply(ctx, job, &operation, &view).await
}

/// The task of an order cancelled while it ran has ended (or EE no longer knows it): deletes
/// what export `generation` wrote — nothing will download it — and stops waiting for it.
async fn after_cancel(
    ctx: &Context,
    job: &OrderJob,
    operation: &str,
    generation: u32,
) -> Result<Outcome, JobError> {
    let sub = ctx.submission(&job.tracking).await?;
    let deleted = super::clean::delete_export(ctx, &sub, &order_of(job), generation).await?;
    if deleted > 0 {
        tracing::info!(
            tracking = %job.tracking,
            operation,
            objects = deleted,
            "deleted what a cancelled EE task wrote before it ended"
        );
    }
    ctx.queue.release_slot(&job.id()).await?;
    stop_waiting(ctx, operation).await?;
    Ok(Outcome::Done)
}

/// Tells the sweeper to look for `operation` (called when the export starts it), and to wake the
/// order's poll job when it sees the operation end.
pub async fn mark_waiting(ctx: &Context, operation: &str, job: &OrderJob) -> Result<(), JobError> {
    // Every stage of an order has the same job id, so the export can name its poll job before
    // enqueueing it.
    ctx.snapshot
        .wait_for(operation, &job.id())
        .await
        .map_err(snapshot_err)
}

/// Wakes the order's poll job if the sweeper has already seen `operation` end.
pub async fn wake_if_ended(ctx: &Context, operation: &str, job: &OrderJob) -> Result<(), JobError> {
    let view = ctx.snapshot.view(operation).await.map_err(snapshot_err)?;
    if view
        .and_then(|v| serde_json::from_str::<OpView>(&v).ok())
        .is_some_and(|v| has_ended(&v))
    {
        ctx.queue.wake(Stage::Poll, &[job.id()]).await?;
    }
    Ok(())
}

/// Whether EE is done with an operation, whichever way it ended.
fn has_ended(view: &OpView) -> bool {
    !matches!(view.state.as_str(), "PENDING" | "RUNNING" | "CANCELLING")
}

/// The snapshot is shared state like the queue, but failing to reach it is never a reason to
/// fail an order: the job runs again later.
fn snapshot_err(e: QueueError) -> JobError {
    JobError::Retry(e.to_string())
}

fn snooze(ctx: &Context) -> Outcome {
    Outcome::Snooze {
        secs: ctx.jobs.poll_interval.as_secs().max(1),
    }
}

async fn stop_waiting(ctx: &Context, operation: &str) -> Result<(), JobError> {
    ctx.snapshot
        .stop_waiting(operation)
        .await
        .map_err(snapshot_err)
}

async fn lost(
    ctx: &Context,
    job: &OrderJob,
    operation: &str,
    why: &str,
) -> Result<Outcome, JobError> {
    let order = order_of(job);
    let message = format!("EE no longer knows operation {operation}: {why}");
    ctx.tracker
        .update(&job.tracking, &order, false, |s| {
            s.state = OrderState::Lost;
            s.error = Some(message.clone());
        })
        .await?;
    // `run` returned early for an order already ended, so this counts each order once (two
    // deliveries of one job racing each other could count it twice: alerts look for any
    // increase, which that does not change).
    let from_ingest = ctx.from_ingest(&job.tracking).await;
    metrics::order_failed(&order.collection, from_ingest, FailureCause::Lost);
    ctx.queue.release_slot(&job.id()).await?;
    stop_waiting(ctx, operation).await?;
    Ok(Outcome::Done)
}

/// Acts on an operation's state.
async fn apply(
    ctx: &Context,
    job: &OrderJob,
    operation: &str,
    view: &OpView,
) -> Result<Outcome, JobError> {
    let order = order_of(job);
    let new_state = match view.state.as_str() {
        "PENDING" => OrderState::Pending,
        "RUNNING" => OrderState::Running,
        "CANCELLING" => OrderState::Cancelling,
        "SUCCEEDED" => OrderState::Succeeded,
        "FAILED" => OrderState::Failed,
        "CANCELLED" => OrderState::Cancelled,
        other => {
            // A state this version does not know (EE added one, or answered oddly): keep
            // waiting, but say so; the task is counted in cedar_ee_tasks{ee_state="UNKNOWN"}.
            tracing::warn!(
                operation,
                state = other,
                tracking = %job.tracking,
                "EE reports an operation state cedar does not know; waiting for a known one"
            );
            return Ok(snooze(ctx));
        }
    };
    let record = |s: &mut crate::queue::tracking::OrderStatus| {
        s.state = new_state;
        s.ee_attempt = view.attempt.or(s.ee_attempt);
        s.started = view.start.or(s.started);
        s.ended = view.end.or(s.ended);
        if let Some(e) = &view.error {
            s.error = Some(e.clone());
        }
        if !new_state.is_active() {
            s.eecu_seconds = view.eecu_seconds.or(s.eecu_seconds);
        }
    };
    if new_state.is_active() {
        let current = ctx.tracker.status(&job.tracking, &order).await?;
        if current.map(|c| c.state) != Some(new_state) {
            ctx.tracker
                .update(&job.tracking, &order, false, record)
                .await?;
        }
        return Ok(snooze(ctx));
    }
    // Before the slot is freed, so that a spent EECU budget pauses admission before it could
    // start another task; counted once per operation, however often this job runs.
    if let Some(eecu) = view.eecu_seconds {
        super::eecu::record(ctx, job, operation, eecu).await?;
    }
    ctx.tracker
        .update(&job.tracking, &order, false, record)
        .await?;
    ctx.queue.release_slot(&job.id()).await?;
    stop_waiting(ctx, operation).await?;
    metrics::ee_task_ended(&view.state, view.start, view.end);
    if new_state == OrderState::Failed {
        // Counted once per order, as in `lost`; the job then fails, and `settle` does not count
        // it again (the order is FAILED already).
        let from_ingest = ctx.from_ingest(&job.tracking).await;
        metrics::order_failed(&order.collection, from_ingest, FailureCause::EeTask);
    }
    match new_state {
        OrderState::Succeeded => {
            enqueue_download(ctx, job, &order, operation).await?;
            Ok(Outcome::Done)
        }
        OrderState::Failed => Err(JobError::Fatal(format!(
            "EE task {operation} failed (attempt {}): {}",
            view.attempt.unwrap_or(1),
            view.error.as_deref().unwrap_or("no message")
        ))),
        _ => Ok(Outcome::Done),
    }
}

async fn enqueue_download(
    ctx: &Context,
    job: &OrderJob,
    order: &crate::order::Order,
    operation: &str,
) -> Result<(), JobError> {
    ctx.queue
        .enqueue_bulk(
            Stage::Download,
            &[job_for(&job.tracking, order, Some(operation.to_string()))],
            Duration::ZERO,
        )
        .await?;
    Ok(())
}

/// How often the sweeper lists operations: fast while tasks finish quickly, slower when they
/// do not, so each page read is paid for by several completed tasks.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    pub min_interval: Duration,
    pub max_interval: Duration,
    /// Completed tasks a sweep aims to find per page it reads.
    pub completions_per_page: f64,
}

impl SweepSettings {
    /// The sweeper's pacing as configured in `[worker]`.
    pub fn from_config(w: &WorkerConfig) -> SweepSettings {
        SweepSettings {
            min_interval: Duration::from_secs(w.sweep_min_interval_secs),
            max_interval: Duration::from_secs(w.sweep_max_interval_secs),
            completions_per_page: w.sweep_completions_per_page,
        }
    }
}

impl Default for SweepSettings {
    /// The documented defaults (`config/default.toml`).
    fn default() -> Self {
        SweepSettings::from_config(&WorkerConfig::default())
    }
}

/// The adaptive interval: an estimate of the completion rate turned into a wait.
#[derive(Debug, Clone)]
pub struct Pacer {
    settings: SweepSettings,
    interval: Duration,
    /// Completions per second, smoothed.
    rate: Option<f64>,
}

impl Pacer {
    pub fn new(settings: SweepSettings) -> Self {
        let interval = settings.min_interval;
        Pacer {
            settings,
            interval,
            rate: None,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Sweeps again after the shortest interval: EE has nothing of ours queued, so its slots
    /// idle from the moment the running tasks end until a sweep sees it.
    pub fn hurry(&mut self) {
        self.interval = self.settings.min_interval;
    }

    /// Records a sweep that read `pages` pages and saw `completed` tasks finish over `elapsed`.
    pub fn record(&mut self, pages: u32, completed: u32, elapsed: Duration) {
        let s = &self.settings;
        if completed == 0 {
            // Nothing finished: back off geometrically.
            self.interval = self
                .interval
                .mul_f64(1.5)
                .clamp(s.min_interval, s.max_interval);
            return;
        }
        let observed = f64::from(completed) / elapsed.as_secs_f64().max(0.001);
        let rate = match self.rate {
            Some(r) => 0.5 * r + 0.5 * observed,
            None => observed,
        };
        self.rate = Some(rate);
        let want = f64::from(pages.max(1)) * s.completions_per_page / rate;
        self.interval = Duration::from_secs_f64(want).clamp(s.min_interval, s.max_interval);
    }
}

/// Runs the sweeper until `shutdown` resolves. Every worker runs one; only the leader sweeps.
pub async fn sweep_loop(
    ctx: Context,
    settings: SweepSettings,
    worker: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut pacer = Pacer::new(settings.clone());
    let mut known: HashMap<String, String> = HashMap::new();
    let mut last = Instant::now();
    loop {
        let wait = pacer.interval();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        match sweep_once(&ctx, &worker, &mut known, wait * 3).await {
            Ok(Some((pages, completed, idle_soon))) => {
                pacer.record(pages, completed, last.elapsed());
                if idle_soon {
                    pacer.hurry();
                }
                last = Instant::now();
            }
            Ok(None) => last = Instant::now(),
            Err(e) => tracing::warn!(error = %e, "operations sweep failed; retrying"),
        }
    }
}

/// One sweep, if this worker is the leader and someone waits for an operation: pages
/// `operations.list` (newest first) until every awaited operation was seen or the pages end.
/// Returns (pages read, tasks seen finishing since the last sweep, whether none of the awaited
/// tasks waits in EE's queue).
pub async fn sweep_once(
    ctx: &Context,
    worker: &str,
    known: &mut HashMap<String, String>,
    lease: Duration,
) -> Result<Option<(u32, u32, bool)>, JobError> {
    if !ctx
        .snapshot
        .lead(worker, lease)
        .await
        .map_err(snapshot_err)?
    {
        return Ok(None);
    }
    // The sweep counts as starting before the waiting set is read, so that an operation added
    // later is never taken for one EE stopped listing.
    let started = Utc::now().timestamp_millis();
    let waiting = ctx.snapshot.waiting().await.map_err(snapshot_err)?;
    if waiting.is_empty() {
        return Ok(None);
    }
    // Awaited names by operation ID: EE may name an operation with the project number in one
    // answer and the project ID in another; the ID is the same.
    let by_id: HashMap<&str, &String> = waiting.iter().map(|n| (operation_id(n), n)).collect();
    let mut seen = HashSet::new();
    let mut views = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0u32;
    // Tasks of other pipelines (anything this queue does not wait for) still queued in EE:
    // they take its run slots and queue places, so admission makes room for them.
    let mut others = 0u64;
    loop {
        ctx.ee_permit().await?;
        let page = ctx
            .ee
            .list_operations(
                Some(crate::earthengine::client::LIST_PAGE_SIZE),
                token.as_deref(),
            )
            .await?;
        pages += 1;
        for op in page.operations.unwrap_or_default() {
            let view = OpView::from_operation(&op);
            let Some(name) = op.id().and_then(|id| by_id.get(id)) else {
                if matches!(view.state.as_str(), "PENDING" | "RUNNING" | "CANCELLING") {
                    others += 1;
                }
                continue;
            };
            if seen.insert((*name).clone()) {
                views.push(((*name).clone(), view));
            }
        }
        token = page.next_page_token.filter(|t| !t.is_empty());
        if token.is_none() || seen.len() == waiting.len() {
            break;
        }
    }
    if token.is_none() {
        // Only a sweep that read every page saw them all.
        super::admission::on_sweep(ctx, others).await?;
    }
    // None of our tasks waits in EE's queue: EE's run slots go idle as soon as the running
    // ones end, until cedar notices and admits more, so the next sweep must not wait long.
    let idle_soon = !views.is_empty() && views.iter().all(|(_, v)| v.state != "PENDING");
    let mut ended = Vec::new();
    let mut encoded = Vec::with_capacity(views.len());
    for (name, view) in views {
        let before = known.insert(name.clone(), view.state.clone());
        if has_ended(&view) && before.as_deref() != Some(view.state.as_str()) {
            ended.push(name.clone());
        }
        encoded.push((name, serde_json::to_string(&view).expect("view serializes")));
    }
    // The pages ended without these (a sweep stops early only once it has seen every awaited
    // operation): their views, if any, are out of date, and go, so that their poll jobs ask
    // EE for each of them by name.
    let unlisted: Vec<String> = waiting
        .iter()
        .filter(|name| !seen.contains(*name))
        .cloned()
        .collect();
    // Operations nobody waits for any more leave the snapshot.
    let dropped = ctx
        .snapshot
        .record_sweep(&encoded, &waiting, &unlisted, started)
        .await
        .map_err(snapshot_err)?;
    for name in &dropped {
        known.remove(name);
    }
    // Those listed before and no longer are news too: their poll jobs look them up now.
    let vanished: Vec<String> = unlisted
        .into_iter()
        .filter(|name| known.remove(name).is_some())
        .collect();
    if !vanished.is_empty() {
        tracing::info!(
            operations = vanished.len(),
            "awaited operations no longer listed by operations.list; their poll jobs ask operations.get"
        );
        ended.extend(vanished);
    }
    // The views are recorded: the poll jobs of the tasks that ended run now instead of at the
    // end of their snooze. Only news wakes a job (an operation seen ending for the first time),
    // so a poll job backing off after a failure is not woken again by every sweep.
    if !ended.is_empty()
        && let Err(e) = wake_waiters(ctx, &ended).await
    {
        // Forgotten, these ends are news again to the next sweep, which wakes their jobs.
        for name in &ended {
            known.remove(name);
        }
        return Err(e);
    }
    Ok(Some((pages, ended.len() as u32, idle_soon)))
}

/// The operation ID: the last segment of `projects/{project}/operations/{ID}` (a bare ID is
/// its own), as Google's client reads it (`convert_operation_name_to_task_id`).
pub fn operation_id(name: &str) -> &str {
    match name.rfind("operations/") {
        Some(i) => &name[i + "operations/".len()..],
        None => name,
    }
}

/// Wakes the poll jobs waiting for the operations `ended`.
async fn wake_waiters(ctx: &Context, ended: &[String]) -> Result<(), JobError> {
    let jobs = ctx.snapshot.waiters(ended).await.map_err(snapshot_err)?;
    ctx.queue.wake(Stage::Poll, &jobs).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_match_by_id_whatever_names_the_project() {
        assert_eq!(
            operation_id("projects/my-project/operations/ABC234"),
            "ABC234"
        );
        assert_eq!(operation_id("projects/123456/operations/ABC234"), "ABC234");
        assert_eq!(operation_id("ABC234"), "ABC234");
    }

    #[test]
    fn pacer_backs_off_without_completions_and_speeds_up_with_them() {
        let mut p = Pacer::new(SweepSettings::default());
        assert_eq!(p.interval(), Duration::from_secs(2));
        p.record(2, 0, Duration::from_secs(2));
        assert_eq!(p.interval(), Duration::from_secs(3));
        for _ in 0..20 {
            p.record(2, 0, Duration::from_secs(2));
        }
        assert_eq!(p.interval(), Duration::from_secs(120));
        // 16 completions per second with 2 pages: 16 wanted per sweep → 1 s → clamped to 2 s.
        p.record(2, 160, Duration::from_secs(10));
        assert_eq!(p.interval(), Duration::from_secs(2));
        // 0.1 completions/s: 16 wanted → 160 s → clamped to 120 s.
        let mut p = Pacer::new(SweepSettings::default());
        p.record(2, 1, Duration::from_secs(10));
        assert_eq!(p.interval(), Duration::from_secs(120));
    }
}
