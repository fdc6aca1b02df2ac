//! The download stage's copy (`copy_verified`) against the emulator's Cloud Storage JSON API on
//! loopback: a connection cut mid-body resumes with a ranged GET from the bytes already
//! written and fetches no byte twice; a corrupted object still fails verification, clearly;
//! `[download] verify` decides whether MD5 is checked.
//!
//! The emulator counts every body byte it sends (`media_bytes_served`), including those sent
//! before a cut, so "no byte fetched twice" is an equality with the bytes of the objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use cedar::auth::NoAuth;
use cedar::emulator::{self, EmulatorOptions, Fault, RunningEmulator};
use cedar::jobs::JobError;
use cedar::jobs::download::{DownloadOptions, copy_verified};
use cedar::store::{Destination, ExportBucket, ObjectInfo, Verify, open_bucket};
use object_store::local::LocalFileSystem;
use tempfile::TempDir;

const BUCKET: &str = "cedar-download";
const PREFIX: &str = "CEDAR_PREARD/";

/// An emulator serving a bucket folder seeded with pieces, and a destination folder.
struct Fixture {
    emulator: RunningEmulator,
    bucket: Arc<dyn ExportBucket>,
    dest: Destination,
    dir: TempDir,
    pieces: BTreeMap<String, Vec<u8>>,
}

impl Fixture {
    /// `sizes.len()` pieces of pseudo-random bytes, of those sizes.
    async fn new(sizes: &[usize]) -> Fixture {
        let dir = TempDir::new().unwrap();
        let bucket_dir = dir.path().join("bucket");
        let mut pieces = BTreeMap::new();
        for (i, size) in sizes.iter().enumerate() {
            let name = format!("{PREFIX}T_2021-{:010}-0000000000.tif", i * 1024);
            let data = content(i as u64 + 1, *size);
            let path = bucket_dir.join(&name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &data).unwrap();
            pieces.insert(name, data);
        }
        let store = Arc::new(LocalFileSystem::new_with_prefix(&bucket_dir).unwrap());
        let emulator = emulator::start(
            "127.0.0.1:0".parse().unwrap(),
            store,
            EmulatorOptions {
                bucket: Some(BUCKET.into()),
                ..EmulatorOptions::default()
            },
        )
        .await
        .unwrap();
        let bucket = open_bucket(
            &format!("gs://{BUCKET}"),
            Some(&emulator.url()),
            Arc::new(NoAuth),
        )
        .unwrap();
        let dest = Destination::local(dir.path().join("dest"));
        Fixture {
            emulator,
            bucket,
            dest,
            dir,
            pieces,
        }
    }

    async fn list(&self) -> Vec<ObjectInfo> {
        let listed = self.bucket.list(PREFIX).await.unwrap();
        assert_eq!(listed.len(), self.pieces.len());
        listed
    }

    async fn copy(&self, objects: &[ObjectInfo], verify: Verify) -> Result<u64, JobError> {
        let options = DownloadOptions {
            verify,
            concurrency: 4,
        };
        copy_verified(
            self.bucket.as_ref(),
            &self.dest,
            "T",
            objects,
            false,
            &options,
        )
        .await
        .map(|(_, bytes)| bytes)
    }

    /// Every file in the destination folder of the submission, by name.
    fn written(&self) -> BTreeMap<String, Vec<u8>> {
        let folder = self.dir.path().join("dest/T");
        let Ok(entries) = std::fs::read_dir(&folder) else {
            return BTreeMap::new();
        };
        entries
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    /// The pieces as the destination must hold them, by file name.
    fn expected(&self) -> BTreeMap<String, Vec<u8>> {
        self.pieces
            .iter()
            .map(|(name, data)| (name.rsplit('/').next().unwrap().to_owned(), data.clone()))
            .collect()
    }

    fn total(&self) -> u64 {
        self.pieces.values().map(|d| d.len() as u64).sum()
    }
}

/// Deterministic pseudo-random bytes (xorshift), different for each seed.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn media_gets(emulator: &RunningEmulator) -> u64 {
    emulator
        .stats()
        .storage_requests
        .get("objects.get.media")
        .copied()
        .unwrap_or(0)
}

/// Two cuts mid-body — one of them in the resumed transfer itself — and every piece still
/// arrives whole, each cut costing one ranged GET and not a single byte fetched twice.
#[tokio::test]
async fn a_cut_download_resumes_where_it_stopped_and_fetches_no_byte_twice() {
    let fx = Fixture::new(&[3 << 20, 5 << 20, 1 << 20]).await;
    let objects = fx.list().await;
    let cut = objects[1].name.clone();
    for after_bytes in [1_500_000, 2_000_000] {
        fx.emulator.inject(Fault::TruncateNextDownload {
            object_contains: cut.clone(),
            after_bytes,
        });
    }
    let before = fx.emulator.stats().media_bytes_served;

    let bytes = fx.copy(&objects, Verify::Crc32c).await.unwrap();

    assert_eq!(bytes, fx.total());
    assert!(
        fx.written() == fx.expected(),
        "the files differ from the pieces"
    );
    let stats = fx.emulator.stats();
    assert_eq!(stats.downloads_truncated, 2);
    assert_eq!(
        stats.media_bytes_served - before,
        fx.total(),
        "bytes sent by the emulator = bytes of the pieces: none fetched twice"
    );
    assert_eq!(media_gets(&fx.emulator), objects.len() as u64 + 2);
    // No temporary file is left beside the pieces.
    assert_eq!(fx.written().len(), objects.len());
}

/// A piece whose bytes no longer match the listing fails with a retryable error that names the
/// check, the object and both checksums, and nothing appears in the destination.
#[tokio::test]
async fn a_corrupted_object_fails_verification_clearly() {
    let fx = Fixture::new(&[1 << 20, 2 << 20]).await;
    let objects = fx.list().await;
    // Flip one byte of the second piece after it was listed: same size, other content.
    let mut corrupted = fx.pieces[&objects[1].name].clone();
    corrupted[12345] ^= 0xff;
    std::fs::write(
        fx.dir.path().join("bucket").join(&objects[1].name),
        &corrupted,
    )
    .unwrap();

    let err = fx.copy(&objects, Verify::Crc32c).await.unwrap_err();

    let JobError::Retry(message) = &err else {
        panic!("a mismatch is worth a fresh attempt: {err:?}");
    };
    let file = objects[1].name.rsplit('/').next().unwrap();
    assert!(message.contains("crc32c mismatch"), "{message}");
    assert!(message.contains(file), "{message}");
    assert!(
        message.contains(&format!("{:08x}", crc32c::crc32c(&corrupted))),
        "{message}"
    );
    assert!(
        !fx.written().contains_key(file),
        "the corrupted piece must not appear: {:?}",
        fx.written().keys()
    );
}

/// `verify = "crc32c"` checks the CRC32C alone (MD5 is not even computed); `"both"` checks MD5
/// too. An object without a CRC32C has its MD5 checked either way.
#[tokio::test]
async fn verify_decides_whether_md5_is_checked() {
    let fx = Fixture::new(&[1 << 20]).await;
    let listed = fx.list().await;
    let wrong_md5 = vec![ObjectInfo {
        md5: Some([7; 16]),
        ..listed[0].clone()
    }];

    fx.copy(&wrong_md5, Verify::Crc32c).await.unwrap();
    assert!(fx.written() == fx.expected());

    let file = listed[0].name.rsplit('/').next().unwrap();
    std::fs::remove_file(fx.dir.path().join("dest/T").join(file)).unwrap();
    let err = fx.copy(&wrong_md5, Verify::Both).await.unwrap_err();
    assert!(err.to_string().contains("md5 mismatch"), "{err}");
    assert!(fx.written().is_empty());

    let md5_only = vec![ObjectInfo {
        crc32c: None,
        ..wrong_md5[0].clone()
    }];
    let err = fx.copy(&md5_only, Verify::Crc32c).await.unwrap_err();
    assert!(err.to_string().contains("md5 mismatch"), "{err}");
    assert!(fx.written().is_empty());
}
