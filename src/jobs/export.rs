//! Export: list an order's scenes, write its metadata JSON, and start one EE export task.
//!
//! The job only runs once admission control gave the order a slot (see
//! [`crate::queue::Queue::admit`]), so at most `max_active_exports` tasks are in EE at
//! once. The export's `requestId` is derived from everything that defines the export, so a
//! re-delivered or retried job never starts a second task: EE returns the first one.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use super::{Context, JobError, Submitted, job_for, order_of};
use crate::document::{program, tile_json};
use crate::earthengine::client::{ExportParams, export_request, request_id};
use crate::earthengine::expression::{
    BandLayout, ImageInfo, list_images, parse_image_list, preard_image,
};
use crate::order::{Order, OrderNames};
use crate::queue::tracking::OrderState;
use crate::queue::{OrderJob, Outcome, Stage};
use crate::store::{ExportBucket, StoreError};

/// Runs the export stage of one order.
pub async fn run(ctx: &Context, job: &OrderJob) -> Result<Outcome, JobError> {
    let sub = ctx.submission(&job.tracking).await?;
    let order = order_of(job);
    let status = ctx.tracker.status(&job.tracking, &order).await?;
    let status =
        status.unwrap_or_else(|| crate::queue::tracking::OrderStatus::new(OrderState::Queued));
    if status.state != OrderState::Queued {
        // A re-delivered job: the export already happened (or the order was cancelled).
        if let Some(op) = status
            .operation
            .clone()
            .filter(|_| status.state.is_active())
        {
            enqueue_poll(ctx, &job.tracking, &order, op, Duration::ZERO).await?;
        } else if !status.state.is_active() {
            // No EE task runs for it any more, yet admitting this duplicate (e.g. re-queued
            // by `cedar retry` while the first job ran) took a slot: give it back, whatever
            // stage the order is at, or the slot leaks (SUCCEEDED and DOWNLOADED included).
            ctx.queue.release_slot(&job.id()).await?;
        }
        return Ok(Outcome::Done);
    }
    let spec = sub.spec(&order)?;
    let tile = sub.tile(&order)?;
    let names = sub.names(&order)?;
    let generation = status.exports.max(1);
    let base = sub.export_base(&order, generation)?;
    let bucket = ctx.bucket_of(&sub)?;

    // Every EE call made for the submission carries its tag, so that EE's usage reports add
    // up each campaign's cost.
    let workload_tag = sub.workload_tag();
    // The scenes are listed once per export generation: a re-run (a retryable EE error, a full
    // queue, a lost lease) exports the scenes the metadata JSON already describes, even if EE
    // has ingested more since, so that the GeoTIFF and its metadata always agree.
    let images = match frozen_scenes(bucket, &base).await? {
        Some(images) => images,
        None => {
            ctx.ee_permit().await?;
            let listed = ctx
                .ee
                .compute_value(
                    &list_images(spec, &tile, &order.period),
                    Some(&workload_tag),
                )
                .await?;
            parse_image_list(spec, &listed)?
        }
    };

    if images.is_empty() {
        if sub.error_if_empty {
            return Err(JobError::Fatal(format!(
                "no {} scenes for tile {} in {} (--error-if-empty)",
                order.collection,
                tile.label(),
                order.period
            )));
        }
        if sub.save_empty_metadata {
            // No EE task writes anything for an empty order, so its metadata goes straight to
            // the destination instead of through the bucket (which must end up empty).
            let doc = metadata(&sub, &order, &names, &[], None, "EMPTY");
            let body = serde_json::to_vec_pretty(&doc).expect("metadata serializes");
            let size = body.len() as u64;
            let stream = futures::stream::iter([Ok::<_, crate::store::StoreError>(
                bytes::Bytes::from(body),
            )]);
            ctx.dest
                .write_verified(
                    &format!("{}/{}.json", job.tracking, names.name),
                    stream,
                    crate::store::Expected {
                        size,
                        md5: None,
                        crc32c: None,
                    },
                )
                .await?;
        }
        ctx.tracker
            .update(&job.tracking, &order, false, |s| {
                s.state = OrderState::Empty;
                s.images = Some(0);
            })
            .await?;
        ctx.queue.release_slot(&job.id()).await?;
        return Ok(Outcome::Done);
    }

    let (expression, layout) = preard_image(spec, &images);
    let doc = metadata(&sub, &order, &names, &images, Some(&layout), "QUEUED");
    put_json(bucket, &format!("{base}.json"), &doc).await?;

    let recipe = &sub.recipe;
    let params = ExportParams {
        bucket: recipe.bucket.clone(),
        filename_prefix: base.clone(),
        description: names.name.clone(),
        // Everything that defines the export is part of its identity: the recipe (random per
        // submission, so the same items submitted again, or by another deployment, get a task
        // of their own instead of EE's answer for the first, whose files are long gone), the
        // order and the export generation (a retry is a new task).
        request_id: request_id(&[
            ctx.settings.config.queue.namespace.as_str(),
            job.tracking.as_str(),
            &recipe.digest(),
            order.collection.as_str(),
            &format!("{}/{}", order.row, order.col),
            &order.period.to_string(),
            &base,
            &format!("generation {generation}"),
        ]),
        file_dimensions: Some(recipe.file_dimensions),
        cloud_optimized: recipe.cloud_optimized,
        nodata: Some(spec.nodata),
        max_pixels: Some(recipe.max_pixels as i64),
        workload_tag: Some(workload_tag),
        priority: ctx
            .settings
            .config
            .earthengine
            .send_priority
            .then(|| sub.priority()),
    };
    ctx.ee_permit().await?;
    let op = match ctx
        .ee
        .export_image(&export_request(&tile, expression, &params))
        .await
    {
        Ok(op) => op,
        // EE's queue is full (its limit, or other pipelines' tasks): back-pressure, not
        // failure. The slot goes back to admission, which learns EE's room, and the order waits
        // at the front of the backlog; its scenes stay frozen in the metadata JSON written above.
        Err(e) if e.is_queue_full() => {
            super::admission::on_queue_full(ctx, &e).await?;
            return Ok(Outcome::Backlog);
        }
        // An earlier run of this job started the task and its answer was lost (a timeout, a
        // crash): EE may answer the repeated requestId with the first operation or with this
        // error. The task runs, so find it and go on.
        Err(e) if e.is_already_exists() => {
            ctx.ee_permit().await?;
            match ctx
                .ee
                .find_export(&params.description, &params.bucket, &params.filename_prefix)
                .await?
            {
                Some(op) => {
                    tracing::info!(
                        tracking = %job.tracking,
                        operation = op.name.as_deref().unwrap_or_default(),
                        "image:export answered ALREADY_EXISTS; continuing with the task the first request started"
                    );
                    op
                }
                // EE's list may not show a task created a moment ago yet: try again later.
                None => {
                    return Err(JobError::Retry(format!(
                        "{e}; and operations.list shows no task described {:?} yet",
                        params.description
                    )));
                }
            }
        }
        Err(e) => return Err(e.into()),
    };
    super::admission::on_accepted(ctx).await?;
    let operation = op
        .name
        .clone()
        .ok_or_else(|| JobError::Retry("image:export returned no operation name".into()))?;
    super::poll::mark_waiting(ctx, &operation, job).await?;
    let state = match op.state() {
        crate::earthengine::types::OperationState::Running => OrderState::Running,
        _ => OrderState::Pending,
    };
    ctx.tracker
        .update(&job.tracking, &order, false, |s| {
            s.state = state;
            s.operation = Some(operation.clone());
            s.images = Some(images.len() as u32);
            s.exports = s.exports.max(1);
            s.error = None;
            s.exported = Some(crate::queue::tracking::stamp());
            s.created = op
                .metadata
                .as_ref()
                .and_then(|m| m.create_time())
                .or(Some(Utc::now()));
        })
        .await?;
    enqueue_poll(
        ctx,
        &job.tracking,
        &order,
        operation.clone(),
        ctx.jobs.poll_interval,
    )
    .await?;
    // The sweeper wakes the poll job when it sees the task end; a sweep that saw it end before
    // the job above existed woke nothing.
    super::poll::wake_if_ended(ctx, &operation, job).await?;
    Ok(Outcome::Done)
}

async fn enqueue_poll(
    ctx: &Context,
    tracking: &str,
    order: &Order,
    operation: String,
    delay: Duration,
) -> Result<(), JobError> {
    let job = job_for(tracking, order, Some(operation));
    ctx.queue.enqueue_bulk(Stage::Poll, &[job], delay).await?;
    Ok(())
}

/// The scenes a previous run of this export generation listed and recorded in the metadata JSON
/// (`scenes`), if it got that far.
async fn frozen_scenes(
    bucket: &dyn ExportBucket,
    base: &str,
) -> Result<Option<Vec<ImageInfo>>, JobError> {
    let body = match bucket.get(&format!("{base}.json")).await {
        Ok(body) => {
            crate::metrics::scene_list_read(body.len() as u64);
            body
        }
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // A metadata JSON without a readable scene list (written by an older version) freezes
    // nothing: the scenes are listed again, as that version did.
    Ok(serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|doc| serde_json::from_value(doc.get("scenes")?.clone()).ok()))
}

async fn put_json(
    bucket: &dyn ExportBucket,
    object: &str,
    doc: &serde_json::Value,
) -> Result<(), JobError> {
    let body = serde_json::to_vec_pretty(doc).expect("metadata serializes");
    bucket.put(object, body.into()).await?;
    Ok(())
}

/// The per-image metadata JSON written beside the export (the original's keys, §3.2): the
/// only record of which scenes, dates and bands the GeoTIFF holds.
fn metadata(
    sub: &Submitted,
    order: &Order,
    names: &OrderNames,
    images: &[ImageInfo],
    layout: Option<&BandLayout>,
    state: &str,
) -> serde_json::Value {
    let recipe = &sub.recipe;
    let spec = recipe.collections.get(&order.collection);
    let tile = recipe.grid.tile(order.row, order.col).ok();
    // Scenes per slice, each scene's recorded properties, in band order.
    let per_slice: Vec<Vec<&serde_json::Map<String, serde_json::Value>>> = layout
        .map(|l| {
            l.slices
                .iter()
                .map(|slice| {
                    slice
                        .image_ids
                        .iter()
                        .filter_map(|id| images.iter().find(|i| &i.id == id))
                        .map(|i| &i.properties)
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "program": program(),
        "order": {
            "collection": order.collection,
            "date_start": order.period.start,
            "date_end": order.period.end,
            "filters": spec.map(|s| s.filters.iter().map(|f| f.to_string()).collect::<Vec<_>>()),
            "submitted": sub.submitted,
        },
        "tile": tile.as_ref().map(|t| tile_json(t, recipe.grid.res, recipe.grid.size)),
        "store": {
            "service": "GCS",
            "bucket": recipe.bucket,
            "export_image_kwds": {
                "crs": tile.as_ref().map(|t| t.crs.as_str().to_string()),
                "crs_transform": tile.as_ref().map(|t| t.transform.to_array()),
                "dimensions": tile.as_ref().map(|t| t.dimensions()),
                "fileDimensions": recipe.file_dimensions,
                "cloudOptimized": recipe.cloud_optimized,
                "maxPixels": recipe.max_pixels,
            },
        },
        "task": {
            "name": names.name,
            "prefix": names.prefix,
            "status": {"state": state},
        },
        "image": {
            "bands": spec.map(|s| s.bands.iter().map(|b| b.name.clone()).collect::<Vec<_>>()),
            "nodata": spec.map(|s| s.nodata),
            "data_type": spec.map(|s| s.data_type.name()),
            "dates": layout.map(|l| l.slices.iter().map(|s| s.date).collect::<Vec<_>>()).unwrap_or_default(),
            "band_order": layout
                .map(|l| l.band_order().iter().map(|(i, b)| format!("{i}_{b}")).collect::<Vec<_>>())
                .unwrap_or_default(),
            "images": per_slice,
        },
        // Every scene listed for the export, as listed: what a re-run of the export uses.
        "scenes": images,
    })
}
