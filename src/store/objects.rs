//! The export bucket over any `object_store` store: a local directory, `memory://`, `s3://`.
//!
//! Used for demos, tests and the emulator, where the bucket is not Cloud Storage.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResult, GetResultPayload, ObjectMeta, ObjectStore, ObjectStoreExt,
    ObjectStoreScheme,
};
use url::Url;

use super::{ExportBucket, ObjectInfo, StoreError, file_pieces};

const SUPPORTED: &str = "use gs://bucket[/prefix], s3://bucket[/prefix], file:///absolute/dir, \
                         memory:/// or a plain directory path";

/// Opens the `object_store` store named by `url` and the path of the URL inside it.
///
/// - a plain path (no `scheme://`) is a local directory, made absolute against the current
///   directory; `file:///dir` likewise;
/// - `memory:///` is a fresh, empty in-memory store;
/// - `s3://` and `gs://` take their credentials from the environment (`AWS_*`, `GOOGLE_*`) as
///   `object_store`'s `from_env` builders document. `gs://` here is the XML API, fine for a
///   destination on real Cloud Storage, not for the export bucket (see [`super::GcsJsonBucket`]).
pub fn open_object_store(url: &str) -> Result<(Arc<dyn ObjectStore>, Path), StoreError> {
    let parsed = parse_store_url(url)?;
    let url_error = |reason: String| StoreError::Url {
        url: url.to_owned(),
        reason,
    };
    // The path comes back percent-decoded ("some%20dir" → "some dir").
    let (scheme, root) = ObjectStoreScheme::parse(&parsed)
        .map_err(|e| url_error(format!("unsupported store URL ({e}); {SUPPORTED}")))?;
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => Arc::new(object_store::local::LocalFileSystem::new()),
        ObjectStoreScheme::Memory => Arc::new(InMemory::new()),
        ObjectStoreScheme::AmazonS3 => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(parsed.as_str())
                .build()
                .map_err(|e| url_error(format!("cannot open S3 store: {e}")))?,
        ),
        ObjectStoreScheme::GoogleCloudStorage => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(parsed.as_str())
                .build()
                .map_err(|e| url_error(format!("cannot open GCS store: {e}")))?,
        ),
        other => {
            return Err(url_error(format!(
                "{other:?} stores are not built into cedar; {SUPPORTED}"
            )));
        }
    };
    Ok((store, root))
}

/// A URL for `url`, turning a plain path into a `file://` URL.
pub(super) fn parse_store_url(url: &str) -> Result<Url, StoreError> {
    let url_error = |reason: String| StoreError::Url {
        url: url.to_owned(),
        reason,
    };
    if url.is_empty() {
        return Err(url_error(format!("empty store URL; {SUPPORTED}")));
    }
    if !url.contains("://") && !url.starts_with("memory:") && !url.starts_with("file:") {
        let absolute = std::path::absolute(url)
            .map_err(|e| url_error(format!("cannot make the path absolute: {e}")))?;
        return Url::from_directory_path(&absolute)
            .map_err(|()| url_error("not a usable directory path".to_owned()));
    }
    Url::parse(url).map_err(|e| url_error(format!("not a URL ({e}); {SUPPORTED}")))
}

/// Bytes of a local file read per blocking-pool round trip. Default: 1 MiB.
const FILE_READ_BYTES: u64 = 1 << 20;

/// The bytes `range` of a local `file`, read on the blocking pool [`FILE_READ_BYTES`] at a time.
fn read_file(
    file: std::fs::File,
    range: std::ops::Range<u64>,
    display: String,
) -> BoxStream<'static, Result<Bytes, StoreError>> {
    use std::io::{Read as _, Seek as _};
    let state = (Some(file), range.start, range.end, display);
    futures::stream::try_unfold(state, |(file, at, end, display)| async move {
        let Some(mut file) = file.filter(|_| at < end) else {
            return Ok(None);
        };
        let path = display.clone();
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            file.seek(std::io::SeekFrom::Start(at))?;
            let mut chunk = Vec::with_capacity((end - at).min(FILE_READ_BYTES) as usize);
            (&mut file)
                .take(end - at)
                .take(FILE_READ_BYTES)
                .read_to_end(&mut chunk)?;
            Ok::<_, std::io::Error>((file, chunk))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|read| read)
        .map_err(|e| StoreError::io(&path, e))?;
        if chunk.is_empty() {
            // The file is shorter than its listing said: let the size check tell.
            return Ok(None);
        }
        let next = at + chunk.len() as u64;
        Ok(Some((Bytes::from(chunk), (Some(file), next, end, display))))
    })
    .boxed()
}

/// The export bucket over an `object_store` store.
#[derive(Debug, Clone)]
pub struct ObjectStoreBucket {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every name: the path of the URL inside the store.
    root: Path,
}

impl ObjectStoreBucket {
    /// A bucket whose names are relative to `root` inside `store`.
    pub fn new(store: Arc<dyn ObjectStore>, root: Path) -> Self {
        ObjectStoreBucket { store, root }
    }

    /// The root as a string prefix: empty, or ending in '/'.
    fn root_prefix(&self) -> String {
        let root = self.root.as_ref();
        if root.is_empty() {
            String::new()
        } else {
            format!("{root}/")
        }
    }

    fn path(&self, name: &str) -> Result<Path, StoreError> {
        let unsafe_name = || StoreError::UnsafeName {
            name: name.to_owned(),
        };
        // Path::parse refuses empty, '.' and '..' segments; it also strips a leading '/', which
        // would silently turn an absolute name into a relative one, so refuse that here.
        if name.is_empty() || name.starts_with('/') || name.ends_with('/') {
            return Err(unsafe_name());
        }
        let full = format!("{}{name}", self.root_prefix());
        Path::parse(full).map_err(|_| unsafe_name())
    }

    /// The object `name` opened for reading, and its path for the errors of reading the body.
    async fn open(&self, name: &str) -> Result<(Path, GetResult), StoreError> {
        let path = self.path(name)?;
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|e| StoreError::object_store("get", path.to_string(), e))?;
        Ok((path, result))
    }

    fn info(&self, meta: ObjectMeta) -> ObjectInfo {
        let location = meta.location.as_ref();
        let name = location
            .strip_prefix(&self.root_prefix())
            .unwrap_or(location)
            .to_owned();
        ObjectInfo {
            name,
            size: meta.size,
            // object_store reports no content checksum, and an ETag is not one (for the local
            // file system it is inode, mtime and size). Reading every object back to hash it
            // would double the I/O of a listing, so cedar says "unknown" rather than guess.
            md5: None,
            crc32c: None,
            generation: meta.version.or(meta.e_tag),
        }
    }
}

#[async_trait]
impl ExportBucket for ObjectStoreBucket {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full_prefix = format!("{}{prefix}", self.root_prefix());
        // object_store lists by directory, GCS by string prefix: list the directory that holds
        // the prefix and keep the names that start with it.
        let directory = match full_prefix.rfind('/') {
            Some(end) => {
                Some(
                    Path::parse(&full_prefix[..end]).map_err(|_| StoreError::UnsafeName {
                        name: prefix.to_owned(),
                    })?,
                )
            }
            None => None,
        };
        let metas: Vec<ObjectMeta> = self
            .store
            .list(directory.as_ref())
            .try_collect()
            .await
            .or_else(|e| match e {
                // A directory that does not exist yet holds no objects.
                object_store::Error::NotFound { .. } => Ok(Vec::new()),
                other => Err(StoreError::object_store("list", full_prefix.clone(), other)),
            })?;
        let mut objects: Vec<ObjectInfo> = metas
            .into_iter()
            .filter(|meta| meta.location.as_ref().starts_with(&full_prefix))
            .map(|meta| self.info(meta))
            .collect();
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(objects)
    }

    async fn stream(
        &self,
        name: &str,
        from: u64,
        generation: Option<&str>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let path = self.path(name)?;
        let options = GetOptions {
            range: (from > 0).then_some(GetRange::Offset(from)),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(&path, options)
            .await
            .map_err(|e| StoreError::object_store("get", path.to_string(), e))?;
        let now = result.meta.version.as_ref().or(result.meta.e_tag.as_ref());
        if let Some(listed) = generation
            && now.map(String::as_str) != Some(listed)
        {
            return Err(StoreError::Mismatch {
                path: path.to_string(),
                what: "generation",
                expected: listed.to_owned(),
                actual: now.cloned().unwrap_or_else(|| "none".to_owned()),
            });
        }
        let display = path.to_string();
        Ok(match result.payload {
            // object_store reads a local file 8 KiB per blocking-pool round trip; cedar reads
            // it in larger pieces, which is most of the speed of a download from a directory.
            GetResultPayload::File(file, _) => read_file(file, result.range, display),
            GetResultPayload::Stream(stream) => stream
                .map_err(move |e| StoreError::object_store("get", display.clone(), e))
                .boxed(),
        })
    }

    async fn put(&self, name: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.path(name)?;
        self.store
            .put(&path, body.into())
            .await
            .map_err(|e| StoreError::object_store("put", path.to_string(), e))?;
        Ok(())
    }

    /// A multipart upload fed from `file` in pieces of 8 MiB, a few in flight at once.
    async fn put_file(&self, name: &str, file: std::fs::File, size: u64) -> Result<(), StoreError> {
        const PIECE: u64 = 8 << 20;
        let path = self.path(name)?;
        let failed = |e| StoreError::object_store("put", path.to_string(), e);
        let upload = self.store.put_multipart(&path).await.map_err(failed)?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PIECE as usize);
        let mut pieces = std::pin::pin!(file_pieces(Arc::new(file), size, PIECE));
        while let Some(piece) = pieces.try_next().await.map_err(|source| StoreError::Io {
            path: path.to_string(),
            source,
        })? {
            writer.wait_for_capacity(2).await.map_err(failed)?;
            writer.write(&piece);
        }
        writer.finish().await.map_err(failed)?;
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        let (path, result) = self.open(name).await?;
        result
            .bytes()
            .await
            .map_err(|e| StoreError::object_store("get", path.to_string(), e))
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name)?;
        match self.store.delete(&path).await {
            // Already gone counts as deleted, so clean can run twice.
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::object_store("delete", path.to_string(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(root: &str) -> ObjectStoreBucket {
        ObjectStoreBucket::new(Arc::new(InMemory::new()), Path::from(root))
    }

    #[tokio::test]
    async fn lists_by_string_prefix_not_by_directory() {
        let bucket = bucket("camp");
        for name in [
            "t1_a.tif",
            "t1_b.json",
            "t10_a.tif",
            "dir/t1_c.tif",
            "u.tif",
        ] {
            bucket.put(name, Bytes::from_static(b"x")).await.unwrap();
        }
        let names = |objects: Vec<ObjectInfo>| -> Vec<String> {
            objects.into_iter().map(|o| o.name).collect()
        };
        assert_eq!(
            names(bucket.list("t1_").await.unwrap()),
            ["t1_a.tif", "t1_b.json"]
        );
        assert_eq!(names(bucket.list("dir/").await.unwrap()), ["dir/t1_c.tif"]);
        assert_eq!(bucket.list("").await.unwrap().len(), 5);
        assert!(bucket.list("missing/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn reports_no_checksum_it_does_not_have() {
        let bucket = bucket("");
        bucket
            .put("a.tif", Bytes::from_static(b"abc"))
            .await
            .unwrap();
        let listed = bucket.list("a").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].size, listed[0].md5, listed[0].crc32c),
            (3, None, None)
        );
    }

    #[tokio::test]
    async fn refuses_names_that_are_not_plain_relative_paths() {
        let bucket = bucket("camp");
        for name in ["", "/abs", "a/../b", "a//b", "dir/"] {
            let err = bucket.put(name, Bytes::new()).await.unwrap_err();
            assert!(
                matches!(err, StoreError::UnsafeName { .. }),
                "{name:?}: {err:?}"
            );
        }
    }

    #[test]
    fn plain_paths_become_file_urls() {
        let url = parse_store_url("/tmp/some dir").unwrap();
        assert_eq!(url.as_str(), "file:///tmp/some%20dir/");
        let relative = parse_store_url("exports").unwrap();
        assert_eq!(relative.scheme(), "file");
        assert!(relative.path().ends_with("/exports/"));
        assert_eq!(parse_store_url("memory:///").unwrap().scheme(), "memory");
        assert!(parse_store_url("").is_err());
    }
}
