//! Clean: delete from the export bucket exactly the objects download verified — by full name,
//! never by pattern. An object already gone counts as deleted, so clean can run twice.

use super::{Context, JobError, Submitted, order_of};
use crate::order::{Order, parse_piece};
use crate::queue::tracking::OrderState;
use crate::queue::{OrderJob, Outcome};

/// Runs the clean stage of one order.
pub async fn run(ctx: &Context, job: &OrderJob) -> Result<Outcome, JobError> {
    let order = order_of(job);
    let Some(status) = ctx.tracker.status(&job.tracking, &order).await? else {
        return Ok(Outcome::Done);
    };
    if status.state != OrderState::Downloaded {
        return Ok(Outcome::Done);
    }
    for object in &status.objects {
        ctx.bucket.delete(&object.name).await?;
    }
    ctx.tracker
        .update(&job.tracking, &order, false, |s| {
            s.state = OrderState::Cleaned
        })
        .await?;
    // The one line per order an operator watching the log wants: this tile-period is done.
    tracing::info!(
        tracking = %job.tracking,
        collection = %order.collection,
        tile = %format!("{},{}", order.row, order.col),
        period = %order.period,
        objects = status.objects.len(),
        "order complete"
    );
    Ok(Outcome::Done)
}

/// Deletes what export `generation` of `order` wrote to the bucket — its GeoTIFF pieces and its
/// metadata JSON, matched by exact name, never another order's — and returns how many objects
/// (for an order that will not be downloaded: cancelled, or re-exported by `cedar retry`).
pub async fn delete_export(
    ctx: &Context,
    sub: &Submitted,
    order: &Order,
    generation: u32,
) -> Result<usize, JobError> {
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
