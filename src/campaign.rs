//! Campaign operations on a submission already recorded: bring its orders up to date with EE
//! (`update`), stop it (`cancel`), and put its failed orders back in the queue (`retry`). The CLI,
//! the demo and (later) the web console call them; each is safe to run twice.

use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use crate::earthengine::types::OpView;
use crate::jobs::{Context, Submitted, job_for};
use crate::order::{Order, parse_piece};
use crate::queue::Stage;
use crate::queue::tracking::{OrderState, OrderStatus};

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
    let mut done = Cancelled::default();
    let mut cleans = Vec::new();
    // In chunks: an archive's 1.39 million orders are never all in memory, and each chunk's
    // statuses are read and written in one round trip each.
    let mut walk = ctx.tracker.walk(name, sub.orders());
    while let Some(chunk) = walk.next().await? {
        let mut cancelled = Vec::new();
        for (order, s) in chunk {
            // Orders without a record are still QUEUED (submit records none per order).
            let s = s.unwrap_or_else(|| OrderStatus::new(OrderState::Queued));
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
                match ctx.ee.cancel_operation(op).await {
                    Ok(_) => {}
                    // "has already completed": the task ended since the last sweep. Not a
                    // problem, but what it wrote would stay in the bucket with nobody left to
                    // clean it.
                    Err(e) if e.ee_status() == Some("FAILED_PRECONDITION") => {
                        tracing::debug!(operation = op, "the EE task had already ended");
                        done.objects += delete_export(ctx, &sub, &order, s.exports).await?;
                    }
                    Err(e) => {
                        tracing::warn!(operation = op, error = %e, "cancelling the EE task failed")
                    }
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
    // Orders a run still holds get their export job when admission reaches them.
    let held = ctx.queue.run_ranges(name).await?;
    let in_run = |i: u64| held.iter().any(|(from, to)| (*from..*to).contains(&i));
    let place = sub.backlog_place();
    let mut requeued = 0;
    let mut index = 0u64;
    // In chunks, as `cancel`.
    let mut walk = ctx.tracker.walk(name, sub.orders());
    while let Some(chunk) = walk.next().await? {
        let mut exports = Vec::new();
        let mut reset = Vec::new();
        // The jobs of resumed orders, by the stage each resumes at.
        let mut resumed: HashMap<Stage, Vec<_>> = HashMap::new();
        for (order, s) in chunk {
            let i = index;
            index += 1;
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
