//! Admission follows what EE accepts.
//!
//! The configured cap (`[limits] max_active_exports`, or EE's concurrency × factor) says how
//! many EE tasks cedar may have in flight; EE's own project queue may hold fewer, because its
//! limit is lower or because other pipelines share the project. Past that, exports are refused
//! with "Too many tasks already in the queue (N)". This module keeps a shared *room* (a
//! [`Figure`] every worker's admission reads, [`crate::queue::Queue::admit`]):
//!
//! - on a full queue, the room becomes EE's limit `N` less the other pipelines' tasks the last
//!   sweep saw (or, when EE named no limit, one less than the slots held), and the refused job
//!   goes back to the front of the backlog without its slot;
//! - when the sweeper sees the other pipelines' load change, the room follows it;
//! - while exports are accepted, the room grows by one every `room` accepted exports (one
//!   probe per round), never past the configured cap, so a queue that grew is found again.
//!
//! The room is a cap on admission slots, which also count exports in flight and tasks that
//! ended but were not polled yet, so EE's queue is filled to about its limit, never beyond by
//! more than the probe; a freed slot is taken again at once, and tasks keep waiting in EE's
//! queue for its run slots while orders remain.

use super::{Context, JobError};
use crate::earthengine::EeError;
use crate::queue::Figure;

/// EE refused an export with a full queue: lower the room to what EE can take.
pub async fn on_queue_full(ctx: &Context, error: &EeError) -> Result<(), JobError> {
    crate::metrics::queue_full();
    let q = &ctx.queue;
    let others = q.figure(Figure::OtherTasks).await?.unwrap_or(0).max(0);
    let room = match error.queue_limit() {
        Some(limit) => {
            q.set_figure(Figure::EeQueueLimit, Some(limit as i64))
                .await?;
            (limit as i64 - others).max(1)
        }
        None => {
            let held = q.active_count().await? as i64;
            let room = q.figure(Figure::Room).await?.unwrap_or(held);
            (room.min(held) - 1).max(1)
        }
    };
    set_room(ctx, room).await?;
    tracing::info!(
        room,
        others,
        limit = error.queue_limit(),
        "EE's task queue is full; admission follows it"
    );
    Ok(())
}

/// EE accepted an export: every `room` accepted exports, try one more (up to EE's documented
/// queue cap; each worker's admission also stays under its configured cap).
pub async fn on_accepted(ctx: &Context) -> Result<(), JobError> {
    let cap = crate::earthengine::EE_QUEUE_CAP;
    let q = &ctx.queue;
    let Some(room) = q.figure(Figure::Room).await? else {
        return Ok(());
    };
    if room >= cap as i64 {
        return Ok(());
    }
    let accepted = q.add_figure(Figure::Accepted, 1).await?;
    if accepted >= room.max(1) {
        q.set_figure(Figure::Accepted, Some(0)).await?;
        let grown = q.add_figure(Figure::Room, 1).await?;
        crate::metrics::admission_room(grown as u64);
    }
    Ok(())
}

/// The sweeper counted `others` tasks of other pipelines queued in the project: when that
/// changed and EE's limit is known, the room follows.
pub async fn on_sweep(ctx: &Context, others: u64) -> Result<(), JobError> {
    let q = &ctx.queue;
    crate::metrics::other_tasks(others);
    let before = q.figure(Figure::OtherTasks).await?;
    if before == Some(others as i64) {
        return Ok(());
    }
    q.set_figure(Figure::OtherTasks, Some(others as i64))
        .await?;
    if let Some(limit) = q.figure(Figure::EeQueueLimit).await? {
        set_room(ctx, (limit - others as i64).max(1)).await?;
    }
    Ok(())
}

async fn set_room(ctx: &Context, room: i64) -> Result<(), JobError> {
    ctx.queue.set_figure(Figure::Room, Some(room)).await?;
    ctx.queue.set_figure(Figure::Accepted, Some(0)).await?;
    crate::metrics::admission_room(room as u64);
    Ok(())
}
