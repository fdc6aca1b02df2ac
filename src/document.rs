//! Tracking documents: `{tracking.prefix}/{name}.json` in the store, the original CEDAR's view
//! of a submission (top-level keys `program`, `submission`, `tracking`, `orders`, `metadata`,
//! plus cedar's `eecu_seconds`, the EECU its ended tasks used), re-rendered from the tracking
//! state ([`crate::queue::tracking`]) whenever it changed.

use tokio::io::{AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use crate::config::Settings;
use crate::order::{Order, OrderNames};
use crate::queue::tracking::{OrderState, OrderStatus, Tracker, TrackingError, order_key};

/// Submissions up to this many orders have their document written at once by `submit` (and
/// `cancel`, `retry`, `update`) and rendered in memory; larger ones are streamed through a
/// temporary file ([`publish`]) by the worker's publisher, which writes the first one as soon as
/// it sees the submission.
pub const INLINE_ORDERS: usize = 50_000;

/// After a command changed `name`: publishes its document now if it has up to
/// [`INLINE_ORDERS`] orders, else leaves it to the workers' publisher (the change marked it for
/// publishing) rather than make the command wait for hundreds of megabytes. Returns whether it
/// published.
pub async fn publish_if_small(
    settings: &Settings,
    tracker: &Tracker,
    bucket: &dyn crate::store::ExportBucket,
    name: &str,
) -> Result<bool, PublishError> {
    if tracker.submission(name).await?.order_count() > INLINE_ORDERS {
        tracker.mark_dirty(name).await?;
        return Ok(false);
    }
    publish(settings, tracker, bucket, name).await?;
    Ok(true)
}

/// Renders a submission's tracking document — the original CEDAR's keys `program`,
/// `submission`, `tracking`, `orders`, `metadata` — as compact JSON, in memory.
pub async fn render(
    settings: &Settings,
    tracker: &Tracker,
    name: &str,
) -> Result<Vec<u8>, PublishError> {
    let mut out = Vec::new();
    render_into(settings, tracker, name, &mut out).await?;
    Ok(out)
}

/// Writes a submission's tracking document to `out` (see [`render`]); returns its size.
///
/// Orders are read and written out in chunks ([`Tracker::walk`]), in two passes (the
/// `orders`, then the `metadata` names), so an archive-size submission never holds more than one
/// chunk of statuses in memory however large the document is (about 300 bytes per order).
pub async fn render_into<W: AsyncWrite + Unpin>(
    settings: &Settings,
    tracker: &Tracker,
    name: &str,
    out: &mut W,
) -> Result<u64, PublishError> {
    use serde_json::json;
    let sub = tracker.submission(name).await?;
    let recipe = settings.recipe_of(&sub);
    let templates = recipe.templates().ok();
    let grid = &recipe.grid;
    let tiles: Vec<serde_json::Value> = sub
        .tiles
        .iter()
        .filter_map(|(row, col)| grid.tile(*row, *col).ok())
        .map(|t| tile_json(&t, grid.res, grid.size))
        .collect();
    let head = json!({
        "program": program(),
        "submission": {
            "submitted": sub.submitted,
            "collections": sub.collections,
            "tile_grid": {
                "ul": grid.ul, "crs": grid.crs.as_str(), "res": grid.res,
                "size": grid.size, "name": grid.name,
                "limits": [[grid.limits.rows.0, grid.limits.rows.1], [grid.limits.cols.0, grid.limits.cols.1]],
            },
            "tile_indices": sub.tiles.iter().map(|(r, c)| [r, c]).collect::<Vec<_>>(),
            "period_start": sub.period_start,
            "period_end": sub.period_end,
            "period_freq": sub.period_freq,
        },
        "tracking": {
            "submitted": sub.submitted,
            "name": sub.name,
            "workload_tag": sub.workload_tag(),
            "prefix": settings.config.tracking.prefix,
            "collections": sub.collections,
            "tiles": tiles,
            "name_template": recipe.name_template,
            "prefix_template": recipe.prefix_template,
        },
    });
    let mut buf = serde_json::to_vec(&head).expect("document head serializes");
    buf.pop(); // the closing brace; orders and metadata follow
    buf.extend_from_slice(b",\"orders\":[");
    let mut written = 0u64;
    // An order without a record has been QUEUED since the submission was made.
    let queued = OrderStatus {
        updated: sub.submitted,
        ..OrderStatus::new(OrderState::Queued)
    };
    let names_of = |order: &Order| {
        templates
            .as_ref()
            .and_then(|t| order.names(t.items(), sub.submitted).ok())
            .unwrap_or_else(|| OrderNames {
                name: order_key(order),
                prefix: String::new(),
            })
    };
    let mut eecu_seconds = 0.0;
    for metadata in [false, true] {
        let mut first = true;
        let mut walk = tracker.walk(name, sub.orders());
        while let Some(chunk) = walk.next().await? {
            for (order, status) in chunk {
                let status = status.unwrap_or_else(|| queued.clone());
                if status.state == OrderState::Empty && !sub.save_empty_metadata {
                    continue;
                }
                let names = names_of(&order);
                if !first {
                    buf.push(b',');
                }
                first = false;
                if metadata {
                    let base = recipe.export_base(&names, status.exports);
                    serde_json::to_writer(&mut buf, &format!("{base}.json"))
                        .expect("name serializes");
                } else {
                    serde_json::to_writer(
                        &mut buf,
                        &json!({"name": names.name, "prefix": names.prefix, "status": status}),
                    )
                    .expect("order serializes");
                    eecu_seconds += status.eecu_seconds.unwrap_or(0.0);
                }
            }
            written += flush(out, &mut buf).await?;
        }
        buf.extend_from_slice(if metadata { b"]" } else { b"],\"metadata\":[" });
    }
    // An extra key beside the original's: the EECU-seconds its ended tasks used.
    buf.extend_from_slice(b",\"eecu_seconds\":");
    serde_json::to_writer(&mut buf, &eecu_seconds).expect("a number serializes");
    buf.extend_from_slice(b"}");
    written += flush(out, &mut buf).await?;
    out.flush().await?;
    Ok(written)
}

/// Writes `buf` to `out` and empties it; returns how many bytes.
async fn flush<W: AsyncWrite + Unpin>(out: &mut W, buf: &mut Vec<u8>) -> std::io::Result<u64> {
    out.write_all(buf).await?;
    let n = buf.len() as u64;
    buf.clear();
    Ok(n)
}

/// The object name of a tracking document.
pub fn document_object(settings: &Settings, name: &str) -> String {
    format!(
        "{}/{name}.json",
        settings.config.tracking.prefix.trim_end_matches('/')
    )
}

/// Re-renders a submission's tracking document from the tracking state and writes it to the
/// store: in memory up to [`INLINE_ORDERS`] orders, else through a temporary file streamed to the
/// store, so that the document's size never shows in the process's memory.
pub async fn publish(
    settings: &Settings,
    tracker: &Tracker,
    bucket: &dyn crate::store::ExportBucket,
    name: &str,
) -> Result<(), PublishError> {
    let object = document_object(settings, name);
    let orders = tracker.submission(name).await?.order_count();
    if orders <= INLINE_ORDERS {
        let body = render(settings, tracker, name).await?;
        bucket.put(&object, body.into()).await?;
        return Ok(());
    }
    let file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(std::io::Error::other)??;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let size = render_into(settings, tracker, name, &mut out).await?;
    let mut file = out.into_inner();
    file.rewind().await?;
    bucket
        .put_file(&object, file.into_std().await, size)
        .await?;
    Ok(())
}

/// Errors of writing a tracking document.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Tracking(#[from] TrackingError),
    #[error("writing the tracking document to a temporary file: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing the tracking document: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// `program` as the original wrote it: name, version, and the EE API used.
pub fn program() -> serde_json::Value {
    serde_json::json!({
        "name": "cedar",
        "version": env!("CARGO_PKG_VERSION"),
        "ee": "rest-v1",
    })
}

/// A tile as the original's `Tile.to_dict()`: index, crs, bounds, res, size.
pub fn tile_json(tile: &crate::grid::Tile, res: [f64; 2], size: [u32; 2]) -> serde_json::Value {
    serde_json::json!({
        "index": [tile.row, tile.col],
        "crs": tile.crs.as_str(),
        "bounds": tile.bounds.to_array(),
        "res": res,
        "size": size,
    })
}
