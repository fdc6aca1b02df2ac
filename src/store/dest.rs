//! The destination: where downloaded objects are written, verified, under relative paths.
//!
//! Every write streams into a temporary name and becomes visible under its final name only once
//! the size and every checksum the bucket reported match, so a crash, a short read or a
//! corrupted transfer never leaves a plausible-looking file behind, and a re-run can trust any
//! file it finds ([`Destination::existing`]).

use std::io::{IoSlice, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use super::gcs::hex;
use super::objects::{open_object_store, parse_store_url};
use super::{ObjectInfo, StoreError};

/// Mode of every file cedar writes locally: readable by all, writable by the owner.
const FILE_MODE: u32 = 0o644;
/// Mode of every directory cedar creates locally.
const DIR_MODE: u32 = 0o755;
/// Bytes received before they are handed, as one batch, to the blocking pool to be checksummed
/// and written; network chunks are small (8–64 KiB) and each would otherwise be a round trip.
/// One batch is written while the next is received. Default: 2 MiB.
const WRITE_BATCH_BYTES: usize = 2 << 20;
/// Parts an object-store multipart upload may have in flight at once.
const MULTIPART_CONCURRENCY: usize = 4;

/// The chunks of one object being written, pinned once by [`Destination::write_verified`] so
/// that each backend's writer is one function rather than one per stream type.
type Chunks<'a> = Pin<&'a mut (dyn Stream<Item = Result<Bytes, StoreError>> + Send)>;

/// Which checksums a download verifies when the bucket reports both (`[download] verify`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Verify {
    /// CRC32C (hardware-accelerated: several GB/s per core), and MD5 only for an object that
    /// has no CRC32C. The default.
    #[default]
    Crc32c,
    /// Every checksum the bucket reports: MD5 too, at a few hundred MB/s per core.
    Both,
}

impl Verify {
    /// The configuration's names of the choices, in order.
    pub const NAMES: [&'static str; 2] = ["crc32c", "both"];

    /// The choice's name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Verify::Crc32c => "crc32c",
            Verify::Both => "both",
        }
    }

    /// The choice named `name` in the configuration.
    pub fn parse(name: &str) -> Option<Verify> {
        [Verify::Crc32c, Verify::Both]
            .into_iter()
            .find(|v| v.name() == name)
    }
}

/// What the bucket says the object is; every `Some` checksum must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub size: u64,
    pub md5: Option<[u8; 16]>,
    pub crc32c: Option<u32>,
}

impl Expected {
    /// What to check of `object` under `verify`: its size, its CRC32C, and its MD5 when it has
    /// no CRC32C or `verify` is [`Verify::Both`]. MD5 is computed only when it is checked.
    pub fn of(object: &ObjectInfo, verify: Verify) -> Expected {
        let md5 = match (verify, object.crc32c) {
            (Verify::Crc32c, Some(_)) => None,
            _ => object.md5,
        };
        Expected {
            size: object.size,
            md5,
            crc32c: object.crc32c,
        }
    }
}

impl From<&ObjectInfo> for Expected {
    /// Every checksum the store reports ([`Verify::Both`]).
    fn from(object: &ObjectInfo) -> Self {
        Expected::of(object, Verify::Both)
    }
}

/// What was written, with the checksums computed while writing: CRC32C always, MD5 when it
/// was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    pub md5: Option<[u8; 16]>,
    pub crc32c: u32,
}

/// Where downloads go.
#[derive(Debug, Clone)]
pub struct Destination {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    /// A local directory: cedar manages the temporary file, fsync and rename itself, so that
    /// modes and durability are exactly as documented.
    Local { root: PathBuf },
    /// Any other store, under `root`.
    Store {
        store: Arc<dyn ObjectStore>,
        root: Path,
    },
}

/// Refuses a relative path that could escape the destination or that names no file: empty,
/// absolute (leading '/'), with a '..', '.' or empty segment (`a//b`, trailing '/'), a backslash
/// (a separator on Windows, and never produced by cedar's naming) or a NUL byte.
pub fn check_rel_path(rel_path: &str) -> Result<&str, StoreError> {
    let safe = !rel_path.is_empty()
        && !rel_path.starts_with('/')
        && !rel_path.contains(['\\', '\0'])
        && rel_path
            .split('/')
            .all(|segment| !matches!(segment, "" | "." | ".."));
    if safe {
        Ok(rel_path)
    } else {
        Err(StoreError::UnsafeName {
            name: rel_path.to_owned(),
        })
    }
}

impl Destination {
    /// Opens the destination named by `url`: a plain directory path or `file:///dir` (written
    /// directly), or `s3://`, `gs://`, `memory:///` (through `object_store`).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let parsed = parse_store_url(url)?;
        if parsed.scheme() == "file" {
            let root = parsed.to_file_path().map_err(|()| StoreError::Url {
                url: url.to_owned(),
                reason: "not a local path; write it as file:///absolute/dir".to_owned(),
            })?;
            return Ok(Destination::local(root));
        }
        let (store, root) = open_object_store(url)?;
        Ok(Destination::object_store(store, root))
    }

    /// A local directory, created on first write if needed.
    pub fn local(root: impl Into<PathBuf>) -> Self {
        Destination {
            backend: Backend::Local { root: root.into() },
        }
    }

    /// Any `object_store` store, under `root`.
    pub fn object_store(store: Arc<dyn ObjectStore>, root: Path) -> Self {
        Destination {
            backend: Backend::Store { store, root },
        }
    }

    /// The size of the file already at `rel_path`, or `None` when there is none. Since files
    /// only appear there once verified, a caller may skip an object whose size matches.
    pub async fn existing(&self, rel_path: &str) -> Result<Option<u64>, StoreError> {
        let rel_path = check_rel_path(rel_path)?;
        match &self.backend {
            Backend::Local { root } => {
                let path = root.join(rel_path);
                match tokio::fs::metadata(&path).await {
                    Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
                    Ok(_) => Err(StoreError::Io {
                        path: path.display().to_string(),
                        source: std::io::Error::other("exists but is not a regular file"),
                    }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(StoreError::io(path.display().to_string(), e)),
                }
            }
            Backend::Store { store, root } => {
                let path = store_path(root, rel_path)?;
                match store.head(&path).await {
                    Ok(meta) => Ok(Some(meta.size)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(StoreError::object_store("head", path.to_string(), e)),
                }
            }
        }
    }

    /// Removes the temporary files that processes of this host which no longer run left in a
    /// local destination: a SIGKILLed worker cannot remove its own half-written file. Temporary
    /// files of other hosts (a shared network folder) and of live processes stay, and so does
    /// everything on a system without `/proc`. Returns how many were removed.
    pub async fn remove_stale_temps(&self) -> u64 {
        match &self.backend {
            Backend::Local { root } => {
                let root = root.clone();
                tokio::task::spawn_blocking(move || remove_stale_temps_in(&root))
                    .await
                    .unwrap_or(0)
            }
            // Object stores make a multipart object visible only on completion; nothing to do.
            Backend::Store { .. } => 0,
        }
    }

    /// Streams `stream` to `rel_path`, replacing any file there, and makes it visible only if
    /// its size and every checksum in `expected` match. On any failure nothing appears at
    /// `rel_path` (an older file there stays as it was) and no temporary file is left behind.
    pub async fn write_verified<S>(
        &self,
        rel_path: &str,
        stream: S,
        expected: Expected,
    ) -> Result<Written, StoreError>
    where
        S: Stream<Item = Result<Bytes, StoreError>> + Send,
    {
        let mut partial = self.begin(rel_path, expected).await?;
        match partial.append(stream).await {
            Ok(()) => partial.finish().await,
            Err(error) => {
                partial.abort().await;
                Err(error)
            }
        }
    }

    /// Starts a verified write to `rel_path`: chunks are then appended, from one stream or
    /// several (a transfer resumed where it was cut), and [`PartialWrite::finish`] makes the
    /// file visible once its size and every checksum in `expected` match.
    pub async fn begin(
        &self,
        rel_path: &str,
        expected: Expected,
    ) -> Result<PartialWrite, StoreError> {
        let rel_path = check_rel_path(rel_path)?;
        let (display, sink) = match &self.backend {
            Backend::Local { root } => {
                let (display, sink) = LocalSink::open(root, rel_path, &expected).await?;
                (display, Sink::Local(sink))
            }
            Backend::Store { store, root } => {
                let path = store_path(root, rel_path)?;
                let display = path.to_string();
                let upload = store
                    .put_multipart(&path)
                    .await
                    .map_err(|e| StoreError::object_store("write", &display, e))?;
                let sink = StoreSink {
                    writer: WriteMultipart::new(upload),
                    digests: Digests::new(&expected),
                };
                (display, Sink::Store(Box::new(sink)))
            }
        };
        Ok(PartialWrite {
            display,
            expected,
            accepted: 0,
            broken: false,
            sink,
        })
    }

    /// Removes the file at `rel_path`; a file that is not there counts as removed.
    pub async fn remove(&self, rel_path: &str) -> Result<(), StoreError> {
        let rel_path = check_rel_path(rel_path)?;
        match &self.backend {
            Backend::Local { root } => {
                let path = root.join(rel_path);
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(StoreError::io(path.display().to_string(), e)),
                }
            }
            Backend::Store { store, root } => {
                let path = store_path(root, rel_path)?;
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(StoreError::object_store("delete", path.to_string(), e)),
                }
            }
        }
    }
}

fn store_path(root: &Path, rel_path: &str) -> Result<Path, StoreError> {
    let joined = if root.as_ref().is_empty() {
        rel_path.to_owned()
    } else {
        format!("{root}/{rel_path}")
    };
    Path::parse(joined).map_err(|_| StoreError::UnsafeName {
        name: rel_path.to_owned(),
    })
}

/// Size and running checksums of the bytes written so far: CRC32C always (hardware-accelerated,
/// it costs little), MD5 only when it is to be checked (a few hundred MB/s per core).
struct Digests {
    size: u64,
    crc32c: u32,
    md5: Option<Md5>,
}

impl Digests {
    fn new(expected: &Expected) -> Self {
        Digests {
            size: 0,
            crc32c: 0,
            md5: expected.md5.map(|_| Md5::new()),
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        self.size += chunk.len() as u64;
        self.crc32c = crc32c::crc32c_append(self.crc32c, chunk);
        if let Some(md5) = &mut self.md5 {
            md5.update(chunk);
        }
    }

    /// What was written, if it is what `expected` says.
    fn verify(self, path: &str, expected: &Expected) -> Result<Written, StoreError> {
        let written = Written {
            size: self.size,
            md5: self.md5.map(|md5| md5.finalize().into()),
            crc32c: self.crc32c,
        };
        if written.size != expected.size {
            return Err(mismatch(
                path,
                "size",
                expected.size.to_string(),
                written.size.to_string(),
            ));
        }
        if let (Some(want), Some(got)) = (expected.md5, written.md5)
            && want != got
        {
            return Err(mismatch(path, "md5", hex(&want), hex(&got)));
        }
        if let Some(want) = expected.crc32c
            && want != written.crc32c
        {
            return Err(mismatch(
                path,
                "crc32c",
                format!("{want:08x}"),
                format!("{:08x}", written.crc32c),
            ));
        }
        Ok(written)
    }
}

fn mismatch(path: &str, what: &'static str, expected: String, actual: String) -> StoreError {
    StoreError::Mismatch {
        path: path.to_owned(),
        what,
        expected,
        actual,
    }
}

/// A verified write under way ([`Destination::begin`]).
///
/// Each appended chunk is checksummed as it is written — no byte is ever read back — and the
/// file appears under its final name only at [`PartialWrite::finish`], once verified. When a
/// stream fails mid-way (a cut connection), everything that arrived before the failure is
/// written and counted in [`PartialWrite::written`], so the caller can fetch the rest from that
/// offset and append it: the running checksums simply continue. Dropping a partial write, or
/// [`PartialWrite::abort`], leaves nothing behind.
pub struct PartialWrite {
    /// The final path, for errors.
    display: String,
    expected: Expected,
    /// Bytes taken from streams so far; once `append` returns, all of them are written.
    accepted: u64,
    /// Set when writing failed or the content cannot be right any more: only abort remains.
    broken: bool,
    sink: Sink,
}

enum Sink {
    Local(LocalSink),
    Store(Box<StoreSink>),
}

impl PartialWrite {
    /// Bytes written so far: where a resumed transfer must start.
    pub fn written(&self) -> u64 {
        self.accepted
    }

    /// Whether more may be appended after a failed [`PartialWrite::append`]: true when the
    /// failure was the stream's own (a cut connection), false when writing failed or more
    /// bytes arrived than expected.
    pub fn can_resume(&self) -> bool {
        !self.broken
    }

    /// Appends every chunk of `stream`. On the stream's error, what arrived before it is
    /// written and the error is returned; more may then be appended ([`Self::can_resume`]).
    /// More bytes than expected fail at once, so that an endless stream cannot fill the disk.
    pub async fn append<S>(&mut self, stream: S) -> Result<(), StoreError>
    where
        S: Stream<Item = Result<Bytes, StoreError>> + Send,
    {
        if self.broken {
            return Err(self.unusable());
        }
        let stream: Chunks<'_> = std::pin::pin!(stream);
        let mut limit = Limit {
            path: &self.display,
            size: self.expected.size,
            accepted: &mut self.accepted,
        };
        let outcome = match &mut self.sink {
            Sink::Local(local) => local.append(&self.display, &mut limit, stream).await,
            Sink::Store(store) => store.append(&self.display, &mut limit, stream).await,
        };
        match outcome {
            Ok(stream_result) => stream_result,
            Err(error) => {
                self.broken = true;
                Err(error)
            }
        }
    }

    /// Verifies what was written and makes it visible under its final name (fsynced, with its
    /// directory, on a local destination). On a mismatch nothing appears there.
    pub async fn finish(self) -> Result<Written, StoreError> {
        if self.broken {
            return Err(self.unusable());
        }
        match self.sink {
            Sink::Local(local) => local.finish(self.display, self.expected).await,
            Sink::Store(store) => store.finish(&self.display, &self.expected).await,
        }
    }

    /// Gives up: removes the temporary file, or aborts the multipart upload.
    pub async fn abort(self) {
        match self.sink {
            // The temporary file's guard removes it when dropped.
            Sink::Local(local) => drop(local),
            // Best effort, like removing a local temporary file: the error that led here
            // matters more.
            Sink::Store(store) => {
                let _ = store.writer.abort().await;
            }
        }
    }

    fn unusable(&self) -> StoreError {
        StoreError::Io {
            path: self.display.clone(),
            source: std::io::Error::other("an earlier write to this file failed"),
        }
    }
}

/// Counts the bytes a partial write takes and refuses more than expected.
struct Limit<'a> {
    path: &'a str,
    size: u64,
    accepted: &'a mut u64,
}

impl Limit<'_> {
    fn take(&mut self, chunk: &Bytes) -> Result<(), StoreError> {
        let total = *self.accepted + chunk.len() as u64;
        if total > self.size {
            return Err(mismatch(
                self.path,
                "size",
                self.size.to_string(),
                format!("more than {}", self.size),
            ));
        }
        *self.accepted = total;
        Ok(())
    }
}

/// `{name}.tmp.{host}{pid}.{n}`, next to the final file so the rename stays on one file system.
/// Host and pid keep two machines sharing a network directory apart; `n` keeps two writes of
/// the same file inside one process apart (a redelivered job racing the original).
fn temp_name(file_name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{file_name}.tmp.{}{}.{n}", host(), std::process::id())
}

fn host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned())
    })
}

/// The pid in a [`temp_name`] written on `host`, or `None` for any other name.
fn temp_pid(file_name: &str, host: &str) -> Option<u32> {
    let (_, tail) = file_name.rsplit_once(".tmp.")?;
    let (pid, n) = tail.strip_prefix(host)?.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// Removes, under `root`, the temporary files of processes of this host that no longer run.
fn remove_stale_temps_in(root: &std::path::Path) -> u64 {
    // Without /proc, liveness is unknown: remove nothing rather than a live writer's file.
    if !std::path::Path::new("/proc/self").exists() {
        return 0;
    }
    let (host, own) = (host(), std::process::id());
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let name = entry.file_name();
            let Some(pid) = temp_pid(&name.to_string_lossy(), host) else {
                continue;
            };
            if pid != own
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

/// A local temporary file being written, and the checksums of what it holds.
struct LocalFile {
    file: std::fs::File,
    digests: Digests,
    temp: TempFile,
}

impl LocalFile {
    /// Checksums and writes a batch, on the blocking pool; hands itself back either way.
    fn write(mut self, batch: Vec<Bytes>) -> (Self, std::io::Result<()>) {
        for chunk in &batch {
            self.digests.update(chunk);
        }
        let result = write_all_vectored(&mut self.file, &batch);
        (self, result)
    }
}

/// Writes every chunk with as few `writev` calls as it takes.
fn write_all_vectored(file: &mut std::fs::File, chunks: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks
        .iter()
        .filter(|c| !c.is_empty())
        .map(|c| IoSlice::new(c))
        .collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A write to a local directory: cedar manages the temporary file, fsync and rename itself, so
/// that modes and durability are exactly as documented.
struct LocalSink {
    /// `None` only while a batch is being written on the blocking pool (or after that write
    /// was abandoned, when the task that holds it removes the file as it ends).
    file: Option<LocalFile>,
    final_path: PathBuf,
    dir: PathBuf,
}

type BatchTask = tokio::task::JoinHandle<(LocalFile, std::io::Result<()>)>;

impl LocalSink {
    async fn open(
        root: &std::path::Path,
        rel_path: &str,
        expected: &Expected,
    ) -> Result<(String, LocalSink), StoreError> {
        let final_path = root.join(rel_path);
        let display = final_path.display().to_string();
        let (dir_rel, file_name) = rel_path.rsplit_once('/').unwrap_or(("", rel_path));
        create_dirs(root, dir_rel).await?;
        let dir = final_path
            .parent()
            .expect("a checked relative path joined to a root has a parent")
            .to_path_buf();
        let temp_path = dir.join(temp_name(file_name));
        // Removes the temporary file on error, and also when the write is dropped mid-way
        // (shutdown, a timeout around the job), which no `match` on a result would see.
        let temp = TempFile(Some(temp_path.clone()));
        let file = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&temp_path)?;
            // The umask may have narrowed the mode given to open.
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
            Ok(file)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|opened| opened)
        .map_err(|e| StoreError::io(&display, e))?;
        let sink = LocalSink {
            file: Some(LocalFile {
                file,
                digests: Digests::new(expected),
                temp,
            }),
            final_path,
            dir,
        };
        Ok((display, sink))
    }

    /// Receives chunks into a batch while the previous batch is checksummed and written on
    /// the blocking pool: the network and the disk work at the same time, and the runtime's
    /// threads never hash or block. The outer error is a failed write (or too many bytes), the
    /// inner one the stream's.
    async fn append(
        &mut self,
        display: &str,
        limit: &mut Limit<'_>,
        mut stream: Chunks<'_>,
    ) -> Result<Result<(), StoreError>, StoreError> {
        let mut in_flight: Option<BatchTask> = None;
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let ended = loop {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = limit.take(&chunk) {
                        // Not written: what was already taken is dropped with the file.
                        self.settle(display, &mut in_flight).await?;
                        return Err(e);
                    }
                    batch_bytes += chunk.len();
                    batch.push(chunk);
                    if batch_bytes >= WRITE_BATCH_BYTES {
                        self.settle(display, &mut in_flight).await?;
                        in_flight = Some(self.spawn(std::mem::take(&mut batch)));
                        batch_bytes = 0;
                    }
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        // Everything that arrived before the end, or before a cut, is written before
        // returning: the file then holds exactly `written()` bytes, where a resumed transfer
        // starts.
        self.settle(display, &mut in_flight).await?;
        if !batch.is_empty() {
            let mut last = Some(self.spawn(batch));
            self.settle(display, &mut last).await?;
        }
        Ok(ended)
    }

    fn spawn(&mut self, batch: Vec<Bytes>) -> BatchTask {
        let file = self.file.take().expect("settled before the next batch");
        tokio::task::spawn_blocking(move || file.write(batch))
    }

    /// Waits for the batch being written, if any, and takes the file back.
    async fn settle(
        &mut self,
        display: &str,
        in_flight: &mut Option<BatchTask>,
    ) -> Result<(), StoreError> {
        let Some(task) = in_flight.take() else {
            return Ok(());
        };
        let (file, result) = task
            .await
            .map_err(|e| StoreError::io(display, std::io::Error::other(e)))?;
        self.file = Some(file);
        result.map_err(|e| StoreError::io(display, e))
    }

    async fn finish(mut self, display: String, expected: Expected) -> Result<Written, StoreError> {
        let Some(LocalFile {
            file,
            digests,
            mut temp,
        }) = self.file.take()
        else {
            return Err(StoreError::io(
                &display,
                std::io::Error::other("an earlier write to this file was abandoned"),
            ));
        };
        let final_path = self.final_path;
        let path = display.clone();
        let written = tokio::task::spawn_blocking(move || -> Result<Written, StoreError> {
            // On a mismatch the guard removes the temporary file as this returns.
            let written = digests.verify(&path, &expected)?;
            // Data must be on disk before the rename makes it visible, or a crash could leave
            // a final name pointing at an empty or partial file.
            file.sync_all().map_err(|e| StoreError::io(&path, e))?;
            // Taken from the guard: renamed away, nothing is left to remove, and on a failed
            // rename the file is removed here.
            let temp_path = temp.0.take().expect("the guard holds the path until now");
            if let Err(e) = std::fs::rename(&temp_path, &final_path) {
                let _ = std::fs::remove_file(&temp_path);
                return Err(StoreError::io(&path, e));
            }
            Ok(written)
        })
        .await
        .map_err(|e| StoreError::io(&display, std::io::Error::other(e)))??;
        // The rename itself is durable only once the directory entry is synced.
        sync_dir(self.dir)
            .await
            .map_err(|e| StoreError::io(&display, e))?;
        Ok(written)
    }
}

/// A temporary file to remove when dropped, unless its path was taken back.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: the file may not exist (open failed), and the error that got us
            // here matters more. A single unlink is cheap enough to do synchronously.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Creates `root` and each directory of `dir_rel` below it that does not exist, with
/// [`DIR_MODE`] whatever the umask.
async fn create_dirs(root: &std::path::Path, dir_rel: &str) -> Result<(), StoreError> {
    let mut dir = root.to_path_buf();
    let segments = std::iter::once("").chain(dir_rel.split('/').filter(|s| !s.is_empty()));
    for segment in segments {
        if !segment.is_empty() {
            dir.push(segment);
        }
        let result = if segment.is_empty() {
            // The root itself may be several levels deep; the operator chose it.
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(&dir)
                .await
        } else {
            match tokio::fs::DirBuilder::new()
                .mode(DIR_MODE)
                .create(&dir)
                .await
            {
                Ok(()) => {
                    tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(DIR_MODE))
                        .await
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e),
            }
        };
        result.map_err(|e| StoreError::io(dir.display().to_string(), e))?;
    }
    Ok(())
}

async fn sync_dir(dir: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

/// A write through an `object_store` multipart upload, completed only after verification.
///
/// This is atomic on every store cedar supports: S3 and GCS make a multipart object visible
/// only when the upload is completed, and discard the parts on abort; `LocalFileSystem` writes
/// parts into a staging file (`{name}#{n}`) that it renames into place on completion and
/// deletes on abort (or when the upload is dropped mid-write); `InMemory` buffers the parts
/// until completion. A write dropped mid-way on S3 or GCS leaves an incomplete multipart upload,
/// invisible but billed until the bucket's lifecycle rule aborts it.
struct StoreSink {
    writer: WriteMultipart,
    digests: Digests,
}

impl StoreSink {
    /// The outer error is a failed write (or too many bytes), the inner one the stream's.
    async fn append(
        &mut self,
        display: &str,
        limit: &mut Limit<'_>,
        mut stream: Chunks<'_>,
    ) -> Result<Result<(), StoreError>, StoreError> {
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => return Ok(Err(e)),
            };
            limit.take(&chunk)?;
            self.digests.update(&chunk);
            self.writer
                .wait_for_capacity(MULTIPART_CONCURRENCY)
                .await
                .map_err(|e| StoreError::object_store("write", display, e))?;
            self.writer.put(chunk);
        }
        Ok(Ok(()))
    }

    async fn finish(self, display: &str, expected: &Expected) -> Result<Written, StoreError> {
        match self.digests.verify(display, expected) {
            Ok(written) => {
                self.writer
                    .finish()
                    .await
                    .map_err(|e| StoreError::object_store("write", display, e))?;
                Ok(written)
            }
            Err(error) => {
                // Best effort, like removing a local temp file: the mismatch matters more.
                let _ = self.writer.abort().await;
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use object_store::memory::InMemory;

    #[test]
    fn temp_names_give_back_their_pid_on_this_host_only() {
        assert_eq!(temp_pid("a.tif.tmp.vm3687.238", "vm"), Some(3687));
        assert_eq!(temp_pid("a.tif.tmp.vm3687.238", "other"), None);
        assert_eq!(temp_pid("a.tif", "vm"), None);
        assert_eq!(temp_pid("a.tif.tmp.vmx.1", "vm"), None);
        assert_eq!(
            temp_pid(&temp_name("a.tif"), host()),
            Some(std::process::id())
        );
    }

    #[tokio::test]
    async fn stale_temp_files_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("T");
        std::fs::create_dir_all(&sub).unwrap();
        // A pid that ran and is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let host = host();
        let names = [
            format!("a.tif.tmp.{host}{dead}.0"),
            format!("b.tif.tmp.{host}1.0"),
            format!("c.tif.tmp.{host}{}.0", std::process::id()),
            format!("d.tif.tmp.elsewhere{dead}.0"),
            "e.tif".to_owned(),
        ];
        for n in &names {
            std::fs::write(sub.join(n), b"x").unwrap();
        }
        let removed = Destination::local(dir.path()).remove_stale_temps().await;
        assert_eq!(removed, 1);
        let mut left: Vec<String> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, names[1..].to_vec());
    }

    #[test]
    fn unsafe_relative_paths_are_refused() {
        let refused = [
            "",
            "/etc/passwd",
            "//x",
            "..",
            "../x",
            "a/../../x",
            "a/..",
            ".",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "..\\x",
            "a\0b",
        ];
        for path in refused {
            let err = check_rel_path(path).unwrap_err();
            assert!(matches!(err, StoreError::UnsafeName { .. }), "{path:?}");
        }
        let accepted = [
            "a.tif",
            "a/b/c.tif",
            "..a",
            "a..",
            "a/.hidden",
            "a b/c+d.tif",
        ];
        for path in accepted {
            assert_eq!(check_rel_path(path).unwrap(), path);
        }
    }

    #[test]
    fn temp_names_are_unique_and_beside_the_final_name() {
        let a = temp_name("x.tif");
        let b = temp_name("x.tif");
        assert_ne!(a, b);
        assert!(a.starts_with("x.tif.tmp."), "{a}");
        assert!(a.contains(&std::process::id().to_string()), "{a}");
    }

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, StoreError>> + Send {
        stream::iter(
            parts
                .iter()
                .map(|part| Ok(Bytes::from_static(part)))
                .collect::<Vec<_>>(),
        )
    }

    fn expected(content: &[u8]) -> Expected {
        Expected {
            size: content.len() as u64,
            md5: Some(Md5::digest(content).into()),
            crc32c: Some(crc32c::crc32c(content)),
        }
    }

    #[tokio::test]
    async fn a_verified_write_reports_what_it_computed() {
        let dest = Destination::object_store(Arc::new(InMemory::new()), Path::from("root"));
        let written = dest
            .write_verified(
                "a/b.tif",
                chunks(&[b"hello ", b"world"]),
                expected(b"hello world"),
            )
            .await
            .unwrap();
        let want = expected(b"hello world");
        assert_eq!(
            (written.size, written.md5, Some(written.crc32c)),
            (want.size, want.md5, want.crc32c)
        );
        assert_eq!(dest.existing("a/b.tif").await.unwrap(), Some(11));
    }

    #[tokio::test]
    async fn remove_deletes_a_file_and_a_missing_one_is_removed_already() {
        let dir = tempfile::tempdir().unwrap();
        for dest in [
            Destination::local(dir.path()),
            Destination::object_store(Arc::new(InMemory::new()), Path::from("root")),
        ] {
            dest.write_verified("a/b.tif", chunks(&[b"probe"]), expected(b"probe"))
                .await
                .unwrap();
            dest.remove("a/b.tif").await.unwrap();
            assert_eq!(dest.existing("a/b.tif").await.unwrap(), None);
            dest.remove("a/b.tif").await.unwrap();
            assert!(dest.remove("../b.tif").await.is_err());
        }
    }

    #[tokio::test]
    async fn each_kind_of_mismatch_is_caught() {
        let dest = Destination::object_store(Arc::new(InMemory::new()), Path::default());
        let good = expected(b"hello world");
        let cases = [
            ("size", Expected { size: 12, ..good }),
            ("size", Expected { size: 3, ..good }),
            (
                "md5",
                Expected {
                    md5: Some([0; 16]),
                    ..good
                },
            ),
            (
                "crc32c",
                Expected {
                    crc32c: Some(1),
                    ..good
                },
            ),
        ];
        for (what, expected) in cases {
            let err = dest
                .write_verified("x.tif", chunks(&[b"hello ", b"world"]), expected)
                .await
                .unwrap_err();
            assert!(
                matches!(err, StoreError::Mismatch { what: w, .. } if w == what),
                "{what}: {err:?}"
            );
            assert!(err.is_retryable());
            assert_eq!(dest.existing("x.tif").await.unwrap(), None);
        }
        // With no checksums expected, only the size is checked.
        let size_only = Expected {
            md5: None,
            crc32c: None,
            ..good
        };
        dest.write_verified("x.tif", chunks(&[b"hello world"]), size_only)
            .await
            .unwrap();
    }
}
