//! Download: copy every object of a finished export to `{dest}/{tracking_name}/`, verified.
//!
//! The export's pieces are listed by their exact base name, the set is checked against the
//! pieces EE must have written for the tile (from its dimensions and `file_dimensions`), and
//! each object — pieces and metadata JSON — is streamed through a temporary file that is renamed
//! into place only once its size and the store's checksums match. Checksums are computed while
//! writing (CRC32C; MD5 too with `[download] verify = "both"`), never by reading a file back;
//! `[download] concurrency` objects of an order are copied at once, and a transfer cut
//! mid-body resumes with a ranged GET from the bytes already written. Files already there with
//! the right size are skipped, so a re-run downloads only what is missing. Only then is clean
//! enqueued, with exactly the verified objects recorded on the order.

use std::collections::BTreeMap;

use futures::StreamExt;
use std::time::Duration;

use super::{Context, JobError, Submitted, job_for, order_of};
use crate::order::Order;
use crate::order::{parse_piece, piece_object, tile_pieces};
use crate::queue::tracking::{OrderState, OrderStatus, VerifiedObject};
use crate::queue::{OrderJob, Outcome, Stage};
use crate::store::{Destination, Expected, ExportBucket, ObjectInfo, StoreError, Verify};

/// How the download stage copies (`[download]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadOptions {
    /// Which checksums are verified. Default: CRC32C, MD5 only for an object without one.
    pub verify: Verify,
    /// Objects of one order copied at once. Default: 4.
    pub concurrency: usize,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            verify: Verify::Crc32c,
            concurrency: 4,
        }
    }
}

/// Resumed transfers of one object that may fail in a row without a new byte arriving; then
/// the job fails and the queue's retry policy, with its backoff, takes over. Default: 2.
const RESUMES_WITHOUT_PROGRESS: u32 = 2;
/// The pause before the n-th resume in a row without progress is n times this. Default: 1 s.
const RESUME_PAUSE: Duration = Duration::from_secs(1);

/// Runs the download stage of one order.
pub async fn run(ctx: &Context, job: &OrderJob) -> Result<Outcome, JobError> {
    let order = order_of(job);
    let Some(status) = ctx.tracker.status(&job.tracking, &order).await? else {
        return Ok(Outcome::Done);
    };
    if status.state.rank() > OrderState::Downloaded.rank() {
        return Ok(Outcome::Done);
    }
    let sub = ctx.submission(&job.tracking).await?;
    let (verified, bytes) = fetch_order(ctx, &sub, &order, &status, &ctx.dest, false).await?;
    ctx.tracker
        .update(&job.tracking, &order, false, |s| {
            s.state = OrderState::Downloaded;
            s.files = verified.len() as u32;
            s.objects = verified;
            s.bytes = bytes;
        })
        .await?;
    ctx.queue
        .enqueue_bulk(
            Stage::Clean,
            &[job_for(&job.tracking, &order, job.operation.clone())],
            Duration::ZERO,
        )
        .await?;
    Ok(Outcome::Done)
}

/// Lists the export of `order` (its latest generation, from `status`) in the bucket, checks its
/// piece set is complete, and copies it verified to `{tracking}/` in `dest` (the job's
/// destination, or `cedar download --dest`).
pub async fn fetch_order(
    ctx: &Context,
    sub: &Submitted,
    order: &Order,
    status: &OrderStatus,
    dest: &Destination,
    overwrite: bool,
) -> Result<(Vec<VerifiedObject>, u64), JobError> {
    let bucket = ctx.bucket_of(sub)?;
    let tile = sub.tile(order)?;
    let objects = export_objects(
        bucket,
        &sub.export_base(order, status.exports)?,
        &tile_pieces(&tile, sub.recipe.file_dimensions),
    )
    .await?;
    copy_verified(
        bucket,
        dest,
        &sub.name,
        &objects,
        overwrite,
        &ctx.jobs.download,
    )
    .await
}

/// The objects of one export: every expected piece (an error names the missing ones) and the
/// metadata JSON when there is one. Objects of other orders that merely share the prefix are
/// ignored.
pub async fn export_objects(
    bucket: &dyn ExportBucket,
    base: &str,
    expected: &[crate::order::Piece],
) -> Result<Vec<ObjectInfo>, JobError> {
    let listed = bucket.list(base).await?;
    let metadata = format!("{base}.json");
    let mut pieces = BTreeMap::new();
    let mut out = Vec::new();
    for o in listed {
        if o.name == metadata {
            out.push(o);
        } else if let Some(p) = parse_piece(base, &o.name) {
            pieces.insert(p, o);
        }
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|p| !pieces.contains_key(p))
        .map(|p| piece_object(base, *p))
        .collect();
    if !missing.is_empty() {
        // Listing can lag behind a finished task; a later attempt may see them.
        return Err(JobError::Retry(format!(
            "incomplete export: {} of {} pieces missing, e.g. {}",
            missing.len(),
            expected.len(),
            missing[0]
        )));
    }
    let unexpected: Vec<&String> = pieces
        .iter()
        .filter(|(p, _)| !expected.contains(p))
        .map(|(_, o)| &o.name)
        .collect();
    if let Some(first) = unexpected.first() {
        return Err(JobError::Fatal(format!(
            "export has {} pieces the tile grid does not explain, e.g. {first}; check export.file_dimensions",
            unexpected.len()
        )));
    }
    out.extend(pieces.into_values());
    Ok(out)
}

/// Streams each object to `{tracking}/{file name}` in `dest`, verified as `options` says;
/// returns what was verified and the bytes it holds. Files already there with the right size
/// are kept unless `overwrite`.
pub async fn copy_verified(
    bucket: &dyn ExportBucket,
    dest: &Destination,
    tracking: &str,
    objects: &[ObjectInfo],
    overwrite: bool,
    options: &DownloadOptions,
) -> Result<(Vec<VerifiedObject>, u64), JobError> {
    // Only the last segment names the file, but an object whose name walks up or stays put
    // ('..' or '.'), is absolute or has an empty segment ('/x', 'a//b') is refused rather than
    // flattened: EE never names an export that way, so it is not one of ours, and copying it
    // under another name would hide that. All names are checked before any byte is copied.
    if let Some(o) = objects
        .iter()
        .find(|o| o.name.split('/').any(|s| matches!(s, "" | "." | "..")))
    {
        return Err(refused(&o.name, &o.name));
    }
    // Pieces are copied a few at a time: one transfer alone leaves the network, the disk or
    // the other core idle while it waits on one of them.
    let copies: Vec<_> = objects
        .iter()
        .map(|o| copy_one(bucket, dest, tracking, o, overwrite, options.verify))
        .collect();
    let copied: Vec<Result<VerifiedObject, JobError>> = futures::stream::iter(copies)
        .buffered(options.concurrency.max(1))
        .collect()
        .await;
    let verified = copied.into_iter().collect::<Result<Vec<_>, _>>()?;
    let bytes = verified.iter().map(|v| v.size).sum();
    Ok((verified, bytes))
}

async fn copy_one(
    bucket: &dyn ExportBucket,
    dest: &Destination,
    tracking: &str,
    o: &ObjectInfo,
    overwrite: bool,
    verify: Verify,
) -> Result<VerifiedObject, JobError> {
    let file = o.name.rsplit('/').next().unwrap_or(&o.name);
    let rel = format!("{tracking}/{file}");
    let already = match dest.existing(&rel).await {
        Ok(size) => size,
        Err(StoreError::UnsafeName { name }) => return Err(refused(&o.name, &name)),
        Err(e) => return Err(e.into()),
    };
    // Files appear under their final name only once verified, so a matching size means a
    // previous run already copied this object.
    if overwrite || already != Some(o.size) {
        transfer(bucket, dest, &rel, o, verify)
            .await
            .inspect_err(crate::metrics::download_error)
            .map_err(|e| match e {
                StoreError::UnsafeName { name } => refused(&o.name, &name),
                other => other.into(),
            })?;
        crate::metrics::downloaded(o.size);
    }
    Ok(VerifiedObject {
        name: o.name.clone(),
        size: o.size,
        crc32c: o.crc32c,
    })
}

/// Copies one object to `rel` in `dest`, verified. A transfer cut mid-body is resumed with a
/// ranged GET from the bytes already written, of the listed generation, so no byte is fetched
/// twice; one that keeps failing without progress is left to the job's retry.
async fn transfer(
    bucket: &dyn ExportBucket,
    dest: &Destination,
    rel: &str,
    o: &ObjectInfo,
    verify: Verify,
) -> Result<(), StoreError> {
    let mut partial = dest.begin(rel, Expected::of(o, verify)).await?;
    let mut stalled = 0;
    loop {
        let from = partial.written();
        // Every byte may have arrived before the connection broke: nothing is left to ask for
        // (and a range starting at the end would be refused).
        if from > 0 && from == o.size {
            break;
        }
        let generation = if from > 0 {
            crate::metrics::download_resumed();
            o.generation.as_deref()
        } else {
            None
        };
        let result = match bucket.stream(&o.name, from, generation).await {
            Ok(stream) => partial.append(stream).await,
            Err(e) => Err(e),
        };
        let error = match result {
            Ok(()) => break,
            Err(e) => e,
        };
        // Resumed only once some bytes are kept (a failure before the body is the job's to
        // retry, with backoff), and only for a transient failure of the transfer itself: a
        // checksum or size mismatch, or a failed write, needs a fresh start.
        let progress = partial.written() > from;
        let resumable = partial.can_resume()
            && partial.written() > 0
            && error.is_retryable()
            && !matches!(error, StoreError::Mismatch { .. })
            && (progress || stalled < RESUMES_WITHOUT_PROGRESS);
        if !resumable {
            partial.abort().await;
            return Err(error);
        }
        stalled = if progress { 0 } else { stalled + 1 };
        tracing::warn!(
            object = %o.name,
            written = partial.written(),
            size = o.size,
            error = %error,
            "download cut; resuming from the bytes already written"
        );
        if stalled > 0 {
            tokio::time::sleep(RESUME_PAUSE * stalled).await;
        }
    }
    partial.finish().await?;
    Ok(())
}

/// The fatal error of an object whose name (or the path it would get) escapes the destination.
fn refused(object: &str, path: &str) -> JobError {
    JobError::Fatal(format!(
        "refused object {object:?}: its name {path:?} would escape the destination"
    ))
}
