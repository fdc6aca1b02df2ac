//! Campaign operations on a submission already recorded: bring its orders up to date with EE
//! (`update`), stop it (`cancel`), and put its failed orders back in the queue (`retry`). The CLI,
//! the demo and the web console call them; each is safe to run twice. `cancel` and `retry` act on
//! the whole submission or on a [`Subset`] of it.

mod subset;

use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use crate::earthengine::types::OpView;
use crate::jobs::clean::delete_export;
use crate::jobs::{Context, job_for};
use crate::order::Order;
use crate::queue::Stage;
use crate::queue::tracking::{OrderState, OrderStatus};

pub use subset::{Names, Selection, Subset, SubsetError, parse_state};

/// One sweep of EE's operations applied to the submission's orders; returns how many changed.
pub async fn update(ctx: &Context, name: &str) -> anyhow::Result<usize> {
    let sub = ctx.submission(name).await?;
    let ops: BTreeMap<String, OpView> = ctx
        .ee
        .list_all_operations()
        .await?
        .iter()
        .filter_map(|op| Some((op.name.clone()?, OpView::from_operation(op))))
        .collect();
    let mut changed = 0;
    // In chunks, as `cancel`.
    let mut walk = ctx.tracker.walk(name, sub.orders());
    while let Some(chunk) = walk.next().await? {
        let mut moved = Vec::new();
        for (order, s) in chunk {
            let Some(s) = s else { continue };
            let Some(view) = s.operation.as_ref().and_then(|op| ops.get(op)) else {
                continue;
            };
            let Some(state) = OrderState::parse(&view.state) else {
                continue;
            };
            if state != s.state {
                let status = OrderStatus {
                    state,
                    error: view.error.clone().or(s.error.clone()),
                    ee_attempt: view.attempt.or(s.ee_attempt),
                    updated: crate::queue::tracking::stamp(),
                    ..s
                };
                moved.push((order, status));
            }
        }
        let written = ctx.tracker.set_many(name, &moved, false).await?;
        changed += written.iter().filter(|w| **w).count();
    }
    Ok(changed)
}

/// What `cancel` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cancelled {
    /// Orders now CANCELLED.
    pub orders: usize,
    /// Exported objects of cancelled orders deleted from the bucket.
    pub objects: usize,
}

/// Stops a submission, or the part of it `subset` chooses: drops its queued exports, polls and
/// downloads, cancels its EE tasks, and marks every chosen order that had not reached the
/// destination CANCELLED. Orders whose task already succeeded, or was stopped, lose what their
/// export wrote to the bucket (nobody would download or clean it any more); orders already
/// downloaded keep their clean job, so the bucket ends empty either way. Every state is left: `retry`
/// re-exports what was cancelled. A bad filter ([`SubsetError`]) changes nothing.
pub async fn cancel(ctx: &Context, name: &str, subset: &Subset) -> anyhow::Result<Cancelled> {
    let sub = ctx.submission(name).await?;
    let sel = subset.select(&sub)?;
    refuse_states(subset, "cancel", |s| {
        s == OrderState::Queued || s.is_active() || s == OrderState::Succeeded
    })?;
    // Poll jobs stay: the poll job of a task cancelled below waits until EE says the task
    // ended, then deletes what it wrote meanwhile (a task may finish as the cancel comes).
    if sel.is_everything() {
        // The whole campaign: every job of it goes at once, its run included.
        for stage in [Stage::Export, Stage::Download] {
            ctx.queue.remove_tracking(stage, name).await?;
        }
    } else if sel.is_whole() && sel.wants(OrderState::Queued) {
        // Every QUEUED order is chosen: the run (whose orders are all QUEUED) goes too, rather
        // than handing out a cancelled order's job at every turn for as long as it holds any.
        ctx.queue.remove_run(name).await?;
    }
    let mut done = Cancelled::default();
    let mut cleans = Vec::new();
    // In chunks: an archive's 1.39 million orders are never all in memory, and each chunk's
    // statuses are read and written in one round trip each.
    let mut walk = ctx.tracker.walk(name, sel.orders(&sub).map(|(_, o)| o));
    while let Some(chunk) = walk.next().await? {
        // Orders without a record are still QUEUED (submit records none per order).
        let chunk: Vec<(Order, OrderStatus)> = chunk
            .into_iter()
            .map(|(o, s)| (o, s.unwrap_or_else(|| OrderStatus::new(OrderState::Queued))))
            .filter(|(_, s)| sel.wants(s.state))
            .collect();
        if !sel.is_everything() {
            // Part of it: the chosen orders' own jobs, before their states change. A run that
            // still holds one of them hands its job out later, and the export job, finding the
            // order CANCELLED, gives the admission slot straight back.
            let ids: Vec<String> = chunk
                .iter()
                .filter(|(_, s)| s.state != OrderState::Downloaded)
                .map(|(o, _)| job_for(name, o, None).id())
                .collect();
            for stage in [Stage::Export, Stage::Download] {
                ctx.queue.remove_jobs(stage, &ids).await?;
            }
        }
        let mut cancelled = Vec::new();
        for (order, s) in chunk {
            match s.state {
                OrderState::Downloaded => {
                    cleans.push(job_for(name, &order, s.operation.clone()));
                    continue;
                }
                OrderState::Succeeded => {
                    done.objects += delete_export(ctx, &sub, &order, s.exports).await?;
                }
                state if state == OrderState::Queued || state.is_active() => {}
                _ => continue,
            }
            if let Some(op) = s.operation.as_deref().filter(|_| s.state.is_active()) {
                // Once the task is stopped, what its export wrote (the metadata JSON written
                // before the task started, pieces of a task that ended since the last sweep)
                // would stay in the bucket with nobody left to clean it.
                let stopped = match ctx.ee.cancel_operation(op).await {
                    Ok(_) => true,
                    // "has already completed": the task ended since the last sweep.
                    Err(e) if e.ee_status() == Some("FAILED_PRECONDITION") => {
                        tracing::debug!(operation = op, "the EE task had already ended");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(operation = op, error = %e, "cancelling the EE task failed");
                        false
                    }
                };
                if stopped {
                    done.objects += delete_export(ctx, &sub, &order, s.exports).await?;
                }
                ctx.queue
                    .release_slot(&job_for(name, &order, None).id())
                    .await?;
            }
            let status = OrderStatus {
                state: OrderState::Cancelled,
                error: Some("cancelled by cedar cancel".into()),
                updated: crate::queue::tracking::stamp(),
                ..s
            };
            cancelled.push((order, status));
        }
        let written = ctx.tracker.set_many(name, &cancelled, false).await?;
        done.orders += written.iter().filter(|w| **w).count();
    }
    ctx.queue
        .enqueue_bulk(Stage::Clean, &cleans, Duration::ZERO)
        .await?;
    Ok(done)
}

/// A `--state` that `action` never acts on is refused: it would choose nothing, silently.
fn refuse_states(
    subset: &Subset,
    action: &str,
    acts_on: impl Fn(OrderState) -> bool,
) -> Result<(), SubsetError> {
    match subset.states.iter().find(|s| !acts_on(**s)) {
        None => Ok(()),
        Some(s) => Err(SubsetError::new(format!(
            "{}: {action} acts only on orders in {}",
            subset.named("state", s.as_str()),
            OrderState::ALL
                .into_iter()
                .filter(|s| acts_on(*s))
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Puts failed, lost and cancelled orders back in the export backlog with a new export
/// generation (so EE gets a new requestId and writes into a new folder; what the old generation
/// left in the bucket is deleted), and re-enqueues QUEUED orders whose job is gone — of the
/// whole submission, or of the part `subset` chooses.
///
/// With `resume`, every other unfinished order also gets the job of its stage again — poll for
/// a running task, download for SUCCEEDED, clean for DOWNLOADED — for a campaign that stopped
/// moving because a job was lost. Enqueueing a job that exists changes nothing, but one that
/// a worker finished a moment ago runs again (harmlessly, as every job may), so this is asked
/// for, not done on every retry while workers run. Returns how many orders were re-queued or
/// resumed. A bad filter ([`SubsetError`]) changes nothing.
pub async fn retry(
    ctx: &Context,
    name: &str,
    resume: bool,
    subset: &Subset,
) -> anyhow::Result<usize> {
    let sub = ctx.submission(name).await?;
    let sel = subset.select(&sub)?;
    refuse_states(
        subset,
        if resume { "retry --resume" } else { "retry" },
        |s| s.is_failed() || s == OrderState::Queued || (resume && resume_stage(s).is_some()),
    )?;
    // Orders a run still holds get their export job when admission reaches them.
    let held = ctx.queue.run_ranges(name).await?;
    let in_run = |i: u64| held.iter().any(|(from, to)| (*from..*to).contains(&i));
    let place = sub.backlog_place();
    let mut requeued = 0;
    let mut indices = sel.indices();
    // In chunks, as `cancel`.
    let mut walk = ctx.tracker.walk(name, sel.orders(&sub).map(|(_, o)| o));
    while let Some(chunk) = walk.next().await? {
        let mut exports = Vec::new();
        let mut reset = Vec::new();
        // The jobs of resumed orders, by the stage each resumes at.
        let mut resumed: HashMap<Stage, Vec<_>> = HashMap::new();
        for (order, s) in chunk {
            let i = indices.next().expect("one index per order walked") as u64;
            if !sel.wants(s.as_ref().map_or(OrderState::Queued, |s| s.state)) {
                continue;
            }
            let job = job_for(name, &order, None);
            let Some(s) = s else {
                // No record: QUEUED, with its job in a run, or queued alone (a job that
                // exists is not added twice).
                if !in_run(i) {
                    exports.push(job);
                }
                continue;
            };
            if s.state.is_failed() {
                for stage in [Stage::Export, Stage::Poll, Stage::Download, Stage::Clean] {
                    ctx.queue.complete(stage, &job.id()).await?;
                }
                // The new generation exports into a folder of its own; what the failed one left
                // (its metadata JSON, pieces of a task that failed half-way) would stay forever.
                delete_export(ctx, &sub, &order, s.exports).await?;
                let status = OrderStatus {
                    state: OrderState::Queued,
                    exports: s.exports.max(1) + 1,
                    operation: None,
                    error: None,
                    updated: crate::queue::tracking::stamp(),
                    ..s
                };
                reset.push((order, status));
                exports.push(job);
            } else if s.state == OrderState::Queued {
                exports.push(job);
            } else if let Some(stage) = resume_stage(s.state).filter(|_| resume) {
                resumed
                    .entry(stage)
                    .or_default()
                    .push(job_for(name, &order, s.operation.clone()));
            }
        }
        ctx.tracker.set_many(name, &reset, true).await?;
        // The re-queued orders start over at export.
        resumed.insert(Stage::Export, exports);
        for (stage, jobs) in &resumed {
            ctx.queue
                .enqueue_placed(*stage, jobs, Duration::ZERO, place)
                .await?;
            requeued += jobs.len();
        }
    }
    Ok(requeued)
}

/// The stage that moves an unfinished, exported order on.
fn resume_stage(state: OrderState) -> Option<Stage> {
    match state {
        s if s.is_active() => Some(Stage::Poll),
        OrderState::Succeeded => Some(Stage::Download),
        OrderState::Downloaded => Some(Stage::Clean),
        _ => None,
    }
}
