//! Campaign operations on a submission already recorded: bring its orders up to date with EE
//! (`update`), stop it (`cancel`), and put its failed orders back in the queue (`retry`). The CLI,
//! the demo and (later) the web console call them; each is safe to run twice.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::earthengine::types::OpView;
use crate::jobs::{Context, job_for};
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
                        updated: chrono::Utc::now(),
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

/// Drops every queued job of a submission and cancels its EE tasks.
pub async fn cancel(ctx: &Context, name: &str) -> anyhow::Result<usize> {
    let sub = ctx.submission(name).await?;
    for stage in [Stage::Export, Stage::Poll, Stage::Download, Stage::Clean] {
        ctx.queue.remove_tracking(stage, name).await?;
    }
    let statuses = ctx.tracker.all(name).await?;
    let mut n = 0;
    for order in sub.orders() {
        // Orders without a record are still QUEUED (submit records none per order).
        let queued = OrderStatus::new(OrderState::Queued);
        let s = statuses.get(&order_key(&order)).unwrap_or(&queued);
        if !(s.state == OrderState::Queued || s.state.is_active()) {
            continue;
        }
        if let Some(op) = s.operation.as_deref().filter(|_| s.state.is_active())
            && let Err(e) = ctx.ee.cancel_operation(op).await
        {
            tracing::warn!(operation = op, error = %e, "cancelling the EE task failed");
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
        n += 1;
    }
    Ok(n)
}

/// Puts failed, lost and cancelled orders back in the export backlog with a new export
/// generation (so EE gets a new requestId); also re-enqueues QUEUED orders whose job is gone.
pub async fn retry(ctx: &Context, name: &str) -> anyhow::Result<usize> {
    let sub = ctx.submission(name).await?;
    let statuses = ctx.tracker.all(name).await?;
    let mut jobs = Vec::new();
    for order in sub.orders() {
        // Orders without a record are still QUEUED (submit records none per order).
        let queued = OrderStatus::new(OrderState::Queued);
        let s = statuses.get(&order_key(&order)).unwrap_or(&queued);
        let job = job_for(name, &order, None);
        if s.state.is_failed() {
            for stage in [Stage::Export, Stage::Poll, Stage::Download, Stage::Clean] {
                ctx.queue.complete(stage, &job.id()).await?;
            }
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
        }
    }
    let n = jobs.len();
    ctx.queue
        .enqueue_bulk(Stage::Export, &jobs, Duration::ZERO)
        .await?;
    Ok(n)
}
