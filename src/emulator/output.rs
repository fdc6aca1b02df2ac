//! Writing a finished export into the object store that stands for the bucket.
//!
//! The files are not real GeoTIFFs: they start with the little-endian TIFF magic and continue
//! with bytes drawn from a generator seeded by the object name, so that the same export always
//! writes the same bytes and a download can be verified against them. Their size scales with
//! width × height × bands × `bytes_per_pixel`.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::export::ExportPlan;
use super::stats::WrittenObject;
use super::{splitmix, stable_hash};

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
}

/// Writes every piece of `plan`; returns what was written, with checksums, for the manifest.
pub(crate) async fn write(
    store: &Arc<dyn ObjectStore>,
    plan: &ExportPlan,
    bytes_per_pixel: f64,
) -> Result<Vec<WrittenObject>, OutputError> {
    let mut written = Vec::with_capacity(plan.pieces.len());
    for piece in &plan.pieces {
        let path = Path::parse(&piece.name).map_err(|source| OutputError::Name {
            name: piece.name.clone(),
            source,
        })?;
        let pixels = piece.width as f64 * piece.height as f64 * plan.bands as f64;
        let size = ((pixels * bytes_per_pixel).ceil() as usize).max(MAGIC.len() + 8);
        let bytes = contents(&piece.name, size);
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

const MAGIC: &[u8] = b"II*\0";

/// Deterministic file contents for an object name.
pub(crate) fn contents(name: &str, size: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(size + 8);
    bytes.extend_from_slice(MAGIC);
    let mut state = stable_hash(0, &[name]);
    while bytes.len() < size {
        state = splitmix(state);
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_are_deterministic_sized_and_name_dependent() {
        let a = contents("x/a.tif", 1000);
        assert_eq!(a.len(), 1000);
        assert_eq!(&a[..4], MAGIC);
        assert_eq!(a, contents("x/a.tif", 1000));
        assert_ne!(a, contents("x/b.tif", 1000));
    }
}
