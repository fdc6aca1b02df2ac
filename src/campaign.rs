//! Campaign operations on a submission already recorded: bring its orders up to date with EE
//! (`update`), stop it (`cancel`), and put its failed orders back in the queue (`retry`). The CLI,
//! the demo and (later) the web console call them; each is safe to run twice.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::earthengine::types::OpView;
use crate::jobs::{Context, Submitted, job_for};
use crate::order::{Order, parse_piece};
use crate::queue::Stage;
use crate::queue::tracking::{OrderState, OrderStatus, order_key};

/// One sweep of EE's operations applied to the submission's orders; returns how many changed.
pub async fn update(ctx: &Context, name: &str) -> anyhow::Result<usize> {
    let sub = ctx.submission(name).await?;
    let statuses = ctx.tracker.all(name).await?;
    let ops: BTreeMap<String, OpView> = ctx
        .ee
        .list_all_operations()
        .await?
        .iter()
        .filter_map(|op| Some((op.name.clone()?, OpView::from_operation(op))))
        .collect();
    let mut changed = 0;
    for order in sub.orders() {
        let Some(s) = statuses.get(&order_key(&order)) else {
            continue;
        };
        let Some(view) = s.operation.as_ref().and_then(|op| ops.get(op)) else {
            continue;
        };
        let Some(state) = OrderState::parse(&view.state) else {
            continue;
        };
        if state != s.state
            && ctx
                .tracker
                .set(
                    name,
                    &order,
                    &OrderStatus {
                        state,
                        error: view.error.clone().or(s.error.clone()),
                        ee_attempt: view.attempt.or(s.ee_attempt),
                        updated: crate::queue::tracking::stamp(),
                        ..s.clone()
                    },
                    false,
                )
                .await?
        {
            changed += 1;
        }
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

/// Stops a submission: drops its queued exports, polls and downloads, cancels its EE tasks, and
/// marks every order that had not reached the destination CANCELLED. Orders whose task already
/// succeeded lose their exported objects from the bucket (nobody would download or clean them
/// any more); orders already downloaded keep their clean job, so the bucket ends empty either
/// way. Every state is left: `retry` re-exports what was cancelled.
pub async fn cancel(ctx: &Context, name: &str) -> anyhow::Result<Cancelled> {
    let sub = ctx.submission(name).await?;
    for stage in [Stage::Export, Stage::Poll, Stage::Download] {
        ctx.queue.remove_tracking(stage, name).await?;
    }
    let statuses = ctx.tracker.all(name).await?;
    let mut done = Cancelled::default();
    let mut cleans = Vec::new();
    // Orders without a record are still QUEUED (submit records none per order).
    let queued = OrderStatus::new(OrderState::Queued);
    for order in sub.orders() {
        let s = statuses.get(&order_key(&order)).unwrap_or(&queued);
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
        if let Some(op) = s.operation.as_deref().filter(|_| s.state.is_active())
            && let Err(e) = ctx.ee.cancel_operation(op).await
        {
            if e.ee_status() == Some("FAILED_PRECONDITION") {
                // "has already completed": the task ended since the last sweep. Not a problem,
                // but what it wrote would stay in the bucket with nobody left to clean it.
                tracing::debug!(operation = op, "the EE task had already ended");
                done.objects += delete_export(ctx, &sub, &order, s.exports).await?;
            } else {
                tracing::warn!(operation = op, error = %e, "cancelling the EE task failed");
            }
        }
        ctx.tracker
            .update(name, &order, false, |s| {
                s.state = OrderState::Cancelled;
                s.error = Some("cancelled by cedar cancel".into());
            })
            .await?;
        ctx.queue
            .release_slot(&job_for(name, &order, None).id())
            .await?;
        done.orders += 1;
    }
    ctx.queue
        .enqueue_bulk(Stage::Clean, &cleans, Duration::ZERO)
        .await?;
    Ok(done)
}

/// Deletes what export `generation` of `order` wrote to the bucket — its GeoTIFF pieces and its
/// metadata JSON, matched by exact name, never another order's — and returns how many objects.
async fn delete_export(
    ctx: &Context,
    sub: &Submitted,
    order: &Order,
    generation: u32,
) -> anyhow::Result<usize> {
    let bucket = ctx.bucket_of(sub)?;
    let base = sub.export_base(order, generation)?;
    let metadata = format!("{base}.json");
    let mut n = 0;
    for object in bucket.list(&base).await? {
        if object.name == metadata || parse_piece(&base, &object.name).is_some() {
            bucket.delete(&object.name).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Puts failed, lost and cancelled orders back in the export backlog with a new export
/// generation (so EE gets a new requestId and writes into a new folder; what the old generation
/// left in the bucket is deleted), and re-enqueues QUEUED orders whose job is gone.
///
/// With `resume`, every other unfinished order also gets the job of its stage again — poll for
/// a running task, download for SUCCEEDED, clean for DOWNLOADED — for a campaign that stopped
/// moving because a job was lost. Enqueueing a job that exists changes nothing, but one that
/// a worker finished a moment ago runs again (harmlessly, as every job may), so this is asked
/// for, not done on every retry while workers run. Returns how many orders were re-queued or
/// resumed.
pub async fn retry(ctx: &Context, name: &str, resume: bool) -> anyhow::Result<usize> {
    let sub = ctx.submission(name).await?;
    let statuses = ctx.tracker.all(name).await?;
    let mut jobs = Vec::new();
    // The jobs of resumed orders, by the stage each resumes at.
    let mut resumed: HashMap<Stage, Vec<_>> = HashMap::new();
    // Orders without a record are still QUEUED (submit records none per order).
    let queued = OrderStatus::new(OrderState::Queued);
    for order in sub.orders() {
        let s = statuses.get(&order_key(&order)).unwrap_or(&queued);
        let job = job_for(name, &order, None);
        if s.state.is_failed() {
            for stage in [Stage::Export, Stage::Poll, Stage::Download, Stage::Clean] {
                ctx.queue.complete(stage, &job.id()).await?;
            }
            // The new generation exports into a folder of its own; what the failed one left
            // (its metadata JSON, pieces of a task that failed half-way) would stay forever.
            delete_export(ctx, &sub, &order, s.exports).await?;
            ctx.tracker
                .update(name, &order, true, |s| {
                    s.state = OrderState::Queued;
                    s.exports = s.exports.max(1) + 1;
                    s.operation = None;
                    s.error = None;
                })
                .await?;
            jobs.push(job);
        } else if s.state == OrderState::Queued {
            jobs.push(job);
        } else if let Some(stage) = resume_stage(s.state).filter(|_| resume) {
            resumed
                .entry(stage)
                .or_default()
                .push(job_for(name, &order, s.operation.clone()));
        }
    }
    // The re-queued orders start over at export.
    resumed.insert(Stage::Export, jobs);
    for (stage, jobs) in &resumed {
        ctx.queue
            .enqueue_placed(*stage, jobs, Duration::ZERO, sub.backlog_place())
            .await?;
    }
    Ok(resumed.values().map(Vec::len).sum())
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
