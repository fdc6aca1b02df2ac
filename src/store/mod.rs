//! The store is where exported bytes live: the export bucket Earth Engine writes into, and the
//! destination cedar downloads to.
//!
//! - [`ExportBucket`] is the small seam over the bucket: list by prefix, stream, put, get, delete.
//!   [`GcsJsonBucket`] speaks the Cloud Storage **JSON API** (it alone reports `md5Hash` and
//!   `crc32c`, and it is the API that `gcp-storage-emulator` implements fully);
//!   [`ObjectStoreBucket`] wraps any `object_store` store (local directory, `memory://`, `s3://`)
//!   for demos and tests. [`open_bucket`] picks one from a URL.
//! - [`Destination`] writes a downloaded object under a relative path, checksumming it as it
//!   is written (never reading it back) and verifying it before it becomes visible under its
//!   final name; a [`PartialWrite`] takes the rest of a cut transfer; unsafe paths are refused.
//!
//! The store never retries by itself: every [`StoreError`] says whether it is worth retrying
//! ([`StoreError::is_retryable`]), and the job that called it owns the retry policy.

mod dest;
mod error;
mod gcs;
mod objects;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, TryStreamExt};

use crate::auth::TokenSource;

pub use dest::{Destination, Expected, PartialWrite, Verify, Written, check_rel_path};
pub use error::StoreError;
pub use gcs::{DEFAULT_ENDPOINT, EMULATOR_HOST_ENV, GcsJsonBucket, gcs_endpoint};
pub use objects::{ObjectStoreBucket, open_object_store};

/// One object in the export bucket, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object name relative to the bucket URL's prefix (the full object name for `gs://bucket`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// MD5 of the content, when the store reports one (GCS does, except for composite objects).
    pub md5: Option<[u8; 16]>,
    /// CRC32C (Castagnoli) of the content, when the store reports one (GCS always does).
    pub crc32c: Option<u32>,
    /// An identifier of this version of the content: the GCS generation, or the store's version
    /// or ETag; it changes when the object is rewritten.
    pub generation: Option<String>,
}

/// The bucket Earth Engine exports into.
///
/// Names are relative to the prefix of the URL the bucket was opened with (see [`open_bucket`]),
/// so the same code works for `gs://bucket` and `gs://bucket/campaigns/2024`.
#[async_trait]
pub trait ExportBucket: Send + Sync + std::fmt::Debug {
    /// Every object whose name starts with `prefix` (a plain string prefix, as in GCS, not a
    /// directory), following all pages, in name order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// The content of an object from byte `from` on (0: all of it), as a stream of chunks,
    /// for large files: a transfer cut mid-way resumes with `from` = the bytes already received.
    /// With `generation` (the listed [`ObjectInfo::generation`]), the bytes must come from that
    /// version of the object: a rewritten object fails with a retryable
    /// [`StoreError::Mismatch`] rather than splicing two versions into one file.
    async fn stream(
        &self,
        name: &str,
        from: u64,
        generation: Option<&str>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError>;
    /// Creates or replaces a (small) object, e.g. metadata or tracking JSON.
    async fn put(&self, name: &str, body: Bytes) -> Result<(), StoreError>;
    /// Creates or replaces an object with the `size` bytes of `file`, streamed from it (an
    /// archive's tracking document: hundreds of megabytes that must not sit in memory). The
    /// default reads the file whole and calls [`ExportBucket::put`].
    async fn put_file(&self, name: &str, file: std::fs::File, size: u64) -> Result<(), StoreError> {
        let body = file_pieces(Arc::new(file), size, 8 << 20)
            .try_fold(
                Vec::with_capacity(size as usize),
                |mut body, piece| async move {
                    body.extend_from_slice(&piece);
                    Ok(body)
                },
            )
            .await
            .map_err(|source| StoreError::Io {
                path: name.to_owned(),
                source,
            })?;
        self.put(name, body.into()).await
    }
    /// The whole content of a small object. A missing object is [`StoreError::NotFound`].
    async fn get(&self, name: &str) -> Result<Bytes, StoreError>;
    /// Deletes an object. An object that is already gone counts as deleted, so clean can re-run.
    async fn delete(&self, name: &str) -> Result<(), StoreError>;
}

/// The first `size` bytes of `file` in pieces of `piece` bytes, each read on the blocking pool at
/// its own offset (so a stream made again reads the file again from the start).
pub(crate) fn file_pieces(
    file: Arc<std::fs::File>,
    size: u64,
    piece: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold(0u64, move |at| {
        let file = file.clone();
        async move {
            if at >= size {
                return Ok(None);
            }
            let len = piece.min(size - at) as usize;
            let buf = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0; len];
                file.read_exact_at(&mut buf, at).map(|()| buf)
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((Bytes::from(buf), at + len as u64)))
        }
    })
}

/// Opens the export bucket named by `url`.
///
/// - `gs://bucket[/prefix]` → [`GcsJsonBucket`] on `endpoint` (`[store] endpoint`, which the
///   configuration fills from `STORAGE_EMULATOR_HOST`), else on [`DEFAULT_ENDPOINT`]; tokens come from `tokens` with [`crate::auth::STORAGE_SCOPE`].
/// - `file:///dir`, `memory:///`, `s3://bucket[/prefix]` → [`ObjectStoreBucket`].
/// - a plain path (no scheme) → [`ObjectStoreBucket`] over that local directory.
pub fn open_bucket(
    url: &str,
    endpoint: Option<&str>,
    tokens: Arc<dyn TokenSource>,
) -> Result<Arc<dyn ExportBucket>, StoreError> {
    if let Some(rest) = url.strip_prefix("gs://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // `STORAGE_EMULATOR_HOST` is read by the configuration, which puts it in `endpoint`.
        let endpoint = gcs_endpoint(endpoint, None);
        let bucket =
            GcsJsonBucket::new(&endpoint, bucket, prefix, tokens).map_err(|e| match e {
                StoreError::Url { reason, .. } => StoreError::Url {
                    url: url.to_owned(),
                    reason,
                },
                other => other,
            })?;
        return Ok(Arc::new(bucket));
    }
    let (store, root) = open_object_store(url)?;
    Ok(Arc::new(ObjectStoreBucket::new(store, root)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::NoAuth;

    fn open(url: &str) -> Result<Arc<dyn ExportBucket>, StoreError> {
        open_bucket(url, Some("http://127.0.0.1:9"), Arc::new(NoAuth))
    }

    #[test]
    fn dispatches_on_the_url_scheme() {
        let gcs = format!("{:?}", open("gs://exports/campaign").unwrap());
        assert!(gcs.starts_with("GcsJsonBucket"), "{gcs}");
        assert!(gcs.contains("\"campaign/\""), "{gcs}");
        for url in [
            "file:///tmp/cedar-exports",
            "memory:///",
            "/tmp/cedar-exports",
            "exports",
        ] {
            let debug = format!("{:?}", open(url).unwrap());
            assert!(debug.starts_with("ObjectStoreBucket"), "{url}: {debug}");
        }
    }

    #[test]
    fn unsupported_schemes_name_the_url_and_the_fix() {
        for url in [
            "ftp://host/dir",
            "az://container/x",
            "gs://",
            "gs:///prefix",
        ] {
            let err = open(url).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, StoreError::Url { .. }), "{url}: {err:?}");
            assert!(message.contains(url), "{message}");
            assert!(!err.is_retryable());
        }
        let message = open("ftp://host/dir").unwrap_err().to_string();
        assert!(message.contains("gs://bucket"), "{message}");
    }
}
