//! Writing a finished export into the object store that stands for the bucket: one GeoTIFF per
//! piece ([`super::geotiff`]), each georeferenced at its own offset in the export's grid.
//!
//! The same export always writes the same bytes, so a download can be verified against them.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::export::{ExportPlan, Piece};
use super::geotiff::{self, GeoTiffError, GeoTiffPlan, Raster};
use super::stats::WrittenObject;

/// Why writing failed; the task then ends FAILED with this message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutputError {
    #[error("Invalid output file name '{name}': {source}")]
    Name {
        name: String,
        #[source]
        source: object_store::path::Error,
    },
    #[error("Unable to write to bucket {bucket}: {source}")]
    Write {
        bucket: String,
        #[source]
        source: object_store::Error,
    },
    #[error("Unable to encode '{name}': {source}")]
    Encode {
        name: String,
        #[source]
        source: GeoTiffError,
    },
    #[error("Internal error: the export has no GeoTIFF layout.")]
    NoLayout,
}

/// Writes every piece of `plan`; returns what was written, with checksums, for the manifest.
pub(crate) async fn write(
    store: &Arc<dyn ObjectStore>,
    plan: &ExportPlan,
) -> Result<Vec<WrittenObject>, OutputError> {
    let mut written = Vec::with_capacity(plan.pieces.len());
    for piece in &plan.pieces {
        let path = Path::parse(&piece.name).map_err(|source| OutputError::Name {
            name: piece.name.clone(),
            source,
        })?;
        let bytes = contents(plan, piece)?;
        written.push(super::storage::exported(&piece.name, &bytes));
        store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|source| OutputError::Write {
                bucket: plan.bucket.clone(),
                source,
            })?;
    }
    Ok(written)
}

/// The GeoTIFF of one piece: the export's layout, translated to the piece's top-left pixel.
fn contents(plan: &ExportPlan, piece: &Piece) -> Result<Vec<u8>, OutputError> {
    let layout = plan.geotiff.as_ref().ok_or(OutputError::NoLayout)?;
    let [sx, shx, tx, shy, sy, ty] = layout.transform;
    let (x, y) = (piece.xoff as f64, piece.yoff as f64);
    let raster = Raster {
        width: piece.width as u32,
        height: piece.height as u32,
        layout: GeoTiffPlan {
            transform: [
                sx,
                shx,
                tx + sx * x + shx * y,
                shy,
                sy,
                ty + shy * x + sy * y,
            ],
            ..layout.clone()
        },
    };
    geotiff::encode(&raster).map_err(|source| OutputError::Encode {
        name: piece.name.clone(),
        source,
    })
}
