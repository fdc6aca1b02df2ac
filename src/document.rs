//! Tracking documents: `{tracking.prefix}/{name}.json` in the store, the original CEDAR's view
//! of a submission (top-level keys `program`, `submission`, `tracking`, `orders`, `metadata`,
//! plus cedar's `eecu_seconds`, the EECU its ended tasks used), re-rendered from the tracking
//! state ([`crate::queue::tracking`]) whenever it changed.

use crate::config::Settings;
use crate::order::{Order, OrderNames};
use crate::queue::tracking::{OrderState, OrderStatus, Tracker, TrackingError, order_key};

/// Orders read per round trip while rendering a document.
const DOCUMENT_CHUNK: usize = 1000;

/// Renders a submission's tracking document — the original CEDAR's keys `program`,
/// `submission`, `tracking`, `orders`, `metadata` — as compact JSON.
///
/// Order statuses are read and written out in chunks, so a 100,000-order submission never
/// holds more than one chunk of statuses (plus the output) in memory.
pub async fn render(
    settings: &Settings,
    tracker: &Tracker,
    name: &str,
) -> Result<Vec<u8>, TrackingError> {
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
    let mut out = serde_json::to_vec(&head).expect("document head serializes");
    out.pop(); // the closing brace; orders and metadata follow
    out.extend_from_slice(b",\"orders\":[");
    let mut metadata = Vec::new();
    let queued = OrderStatus::new(OrderState::Queued);
    let orders: Vec<Order> = sub.orders().collect();
    let mut first = true;
    let mut eecu_seconds = 0.0;
    for chunk in orders.chunks(DOCUMENT_CHUNK) {
        let statuses = tracker.statuses(name, chunk).await?;
        for (order, status) in chunk.iter().zip(statuses) {
            let status = status.unwrap_or_else(|| queued.clone());
            if status.state == OrderState::Empty && !sub.save_empty_metadata {
                continue;
            }
            let names = templates
                .as_ref()
                .and_then(|t| order.names(t.items(), sub.submitted).ok())
                .unwrap_or_else(|| OrderNames {
                    name: order_key(order),
                    prefix: String::new(),
                });
            if !first {
                out.push(b',');
                metadata.push(b',');
            }
            first = false;
            serde_json::to_writer(
                &mut out,
                &json!({"name": names.name, "prefix": names.prefix, "status": status}),
            )
            .expect("order serializes");
            eecu_seconds += status.eecu_seconds.unwrap_or(0.0);
            let base = recipe.export_base(&names, status.exports);
            serde_json::to_writer(&mut metadata, &format!("{base}.json")).expect("name serializes");
        }
    }
    out.extend_from_slice(b"],\"metadata\":[");
    out.extend_from_slice(&metadata);
    // An extra key beside the original's: the EECU-seconds its ended tasks used.
    out.extend_from_slice(b"],\"eecu_seconds\":");
    serde_json::to_writer(&mut out, &eecu_seconds).expect("a number serializes");
    out.extend_from_slice(b"}");
    Ok(out)
}

/// The object name of a tracking document.
pub fn document_object(settings: &Settings, name: &str) -> String {
    format!(
        "{}/{name}.json",
        settings.config.tracking.prefix.trim_end_matches('/')
    )
}

/// Re-renders a submission's tracking document from the tracking state and writes it to the
/// store.
pub async fn publish(
    settings: &Settings,
    tracker: &Tracker,
    bucket: &dyn crate::store::ExportBucket,
    name: &str,
) -> Result<(), PublishError> {
    let body = render(settings, tracker, name).await?;
    bucket
        .put(&document_object(settings, name), body.into())
        .await?;
    Ok(())
}

/// Errors of writing a tracking document.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Tracking(#[from] TrackingError),
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
