//! `cedar bench download`: MB/s of `copy_verified` — from a directory (`file://`) and over the
//! Cloud Storage JSON API (the real gcp-storage-emulator, and cedar's own emulator) — as a ratio
//! against a copy + fsync of each of the same files on the same disk in the same run, with the
//! CPU seconds cedar spent per GB.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use cedar::emulator::{EmulatorOptions, RunningEmulator};
use cedar::jobs::download::DownloadOptions;
use cedar::store::Verify;

use super::{PROJECT, Table, scratch_dir, secs, start_emulator};

/// Options of `cedar bench download`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// GiB of pieces in the bucket.
    #[arg(long, default_value_t = 2.0)]
    pub gib: f64,
    /// MiB per piece: a 1024×1024 piece of 8 int16 bands is 16 MiB.
    #[arg(long, default_value_t = 16)]
    pub piece_mib: u64,
    /// The gcp-storage-emulator to serve the pieces over the GCS JSON API; its row is left out
    /// when it cannot be found.
    #[arg(
        long,
        env = "CEDAR_GCS_EMULATOR",
        default_value = ".venv/bin/gcp-storage-emulator"
    )]
    pub gcs_emulator: PathBuf,
}

/// The folder the download bench's pieces are exported under.
const DOWNLOAD_PREFIX: &str = "CEDAR_PREARD/";

/// Runs the bench in a scratch folder of its own, deleted afterwards whatever happened.
pub(super) async fn run(a: DownloadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.gib > 0.0 && a.gib.is_finite() && a.piece_mib > 0,
        "--gib and --piece-mib must be positive"
    );
    let (_, dir) = scratch_dir()?;
    let result = download_in(&dir, &a).await;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("warning: could not remove {}: {e}", dir.display());
    }
    result
}

/// Size and checksums of one piece, as written.
#[derive(Debug, Clone, Copy)]
struct PieceSums {
    md5: [u8; 16],
    crc32c: u32,
}

async fn download_in(dir: &Path, a: &DownloadArgs) -> anyhow::Result<()> {
    let bucket_dir = dir.join("bucket");
    let piece_bytes = a.piece_mib * 1024 * 1024;
    let pieces = ((a.gib * f64::from(1u32 << 30)) / piece_bytes as f64)
        .ceil()
        .max(1.0) as usize;
    let generate_dir = bucket_dir.clone();
    let sums = tokio::task::spawn_blocking(move || {
        write_pieces(&generate_dir, pieces, piece_bytes as usize)
    })
    .await??;
    let total: u64 = piece_bytes * pieces as u64;
    let emulator = start_emulator(&bucket_dir, EmulatorOptions::default()).await?;
    let result = download_runs(dir, &bucket_dir, &emulator, &sums, total, &a.gcs_emulator).await;
    emulator.shutdown().await;
    let CopyTimes {
        cp_before,
        cp_after,
        cp_sync,
        fsync_each,
        cedar,
    } = result?;

    let mb_per_s = |d: Duration| total as f64 / 1e6 / d.as_secs_f64();
    let gb = total as f64 / 1e9;
    println!(
        "cedar bench download: {pieces} pieces of {} MiB ({:.2} GiB) in the bucket folder {}, copied to a local folder on the same disk",
        a.piece_mib,
        total as f64 / f64::from(1u32 << 30),
        bucket_dir.display()
    );
    println!(
        "baseline: copy + fsync of each file in turn (std::fs::copy, sync_all), the durability cedar gives each file, measured in this run; page cache warm for every run (each source read once in full just before it, after `sync`); CPU = user + system seconds of the cedar process while it copied (a gs:// source's own CPU in its column); MB = 10^6 bytes"
    );
    let mut t = Table::new([
        "copy",
        "list s",
        "copy s",
        "MB/s",
        "÷ copy + fsync",
        "cedar CPU s/GB",
        "checks",
    ]);
    let baseline = fsync_each;
    t.row([
        "baseline: copy + fsync of each file".into(),
        "".into(),
        secs(baseline),
        format!("{:.0}", mb_per_s(baseline)),
        "1".into(),
        "".into(),
        "none".into(),
    ]);
    for (label, took) in [
        ("cp -r (run before cedar's)", cp_before),
        ("cp -r (run after cedar's)", cp_after),
        ("cp -r, then sync", cp_sync),
    ] {
        t.row([
            label.into(),
            "".into(),
            secs(took),
            format!("{:.0}", mb_per_s(took)),
            format!("{:.2}", baseline.as_secs_f64() / took.as_secs_f64()),
            "".into(),
            "none; cp fsyncs nothing".into(),
        ]);
    }
    for run in &cedar {
        t.row([
            run.label.clone(),
            secs(run.list),
            secs(run.copy),
            format!("{:.0}", mb_per_s(run.copy)),
            format!("{:.2}", baseline.as_secs_f64() / run.copy.as_secs_f64()),
            format!("{:.2}", run.cpu / gb),
            run.checks.clone(),
        ]);
    }
    t.print();
    Ok(())
}

/// Writes `pieces` random pieces named as EE names the pieces of 5000×5000 exports split at
/// 1024 pixels, and returns their checksums by object name.
fn write_pieces(
    bucket_dir: &Path,
    pieces: usize,
    piece_bytes: usize,
) -> anyhow::Result<BTreeMap<String, PieceSums>> {
    use md5::Digest as _;
    use rand::RngCore as _;
    let per_export = cedar::order::expected_pieces(5000, 5000, 1024);
    let mut sums = BTreeMap::new();
    let mut rng = rand::rng();
    let mut body = vec![0u8; piece_bytes];
    for i in 0..pieces {
        let base = format!("{DOWNLOAD_PREFIX}bench_{:03}", i / per_export.len());
        let name = cedar::order::piece_object(&base, per_export[i % per_export.len()]);
        rng.fill_bytes(&mut body);
        let path = bucket_dir.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &body).with_context(|| format!("writing {}", path.display()))?;
        sums.insert(
            name,
            PieceSums {
                md5: md5::Md5::digest(&body).into(),
                crc32c: crc32c::crc32c(&body),
            },
        );
    }
    Ok(sums)
}

/// One `copy_verified` run: what it copied from, how long listing and copying took, and the
/// CPU seconds the process spent copying.
#[derive(Debug, Clone)]
struct CopyRun {
    label: String,
    checks: String,
    list: Duration,
    copy: Duration,
    cpu: f64,
}

/// `cp -r` before, cedar from `file://` (CRC32C, then MD5 too), cedar over the JSON API of
/// gcp-storage-emulator and of cedar's emulator, `cp -r` after, `cp -r` + sync, a copy
/// fsyncing each file.
async fn download_runs(
    dir: &Path,
    bucket_dir: &Path,
    emulator: &RunningEmulator,
    sums: &BTreeMap<String, PieceSums>,
    total: u64,
    gcs_emulator: &Path,
) -> anyhow::Result<CopyTimes> {
    let cp_before = cp_run(bucket_dir, &dir.join("cp-1"), false).await?;
    let fsync_each = fsync_copy_run(bucket_dir, &dir.join("fsync-copy")).await?;
    let file_url = url::Url::from_directory_path(bucket_dir)
        .map_err(|()| anyhow::anyhow!("{} is not absolute", bucket_dir.display()))?;
    let file_bucket =
        cedar::store::open_bucket(file_url.as_str(), None, Arc::new(cedar::auth::NoAuth))?;
    let mut cedar = Vec::new();
    for (verify, checks) in [
        (
            Verify::Crc32c,
            "size, crc32c (default; a local listing has none: from the generation manifest)",
        ),
        (Verify::Both, "size, crc32c, md5 (verify = \"both\")"),
    ] {
        let mut run = copy_run(
            bucket_dir,
            &dir.join("cedar-file"),
            file_bucket.clone(),
            sums,
            total,
            true,
            verify,
        )
        .await?;
        run.label = format!("cedar from file://, verify = {:?}", verify.name());
        run.checks = checks.into();
        cedar.push(run);
    }
    match GcsSource::start(gcs_emulator, bucket_dir, sums).await {
        Ok(source) => {
            let result = copy_run(
                bucket_dir,
                &dir.join("cedar-gcs"),
                source.bucket.clone(),
                sums,
                total,
                false,
                Verify::Crc32c,
            )
            .await;
            let emulator_cpu = cpu_seconds(source.child.id()).unwrap_or(0.0) - source.cpu_loaded;
            drop(source);
            let mut run = result?;
            run.label = "cedar over the GCS JSON API: gcp-storage-emulator".into();
            run.checks = format!(
                "size, crc32c (from objects.list); the emulator used {:.2} CPU s/GB serving",
                emulator_cpu / (total as f64 / 1e9)
            );
            cedar.push(run);
        }
        Err(e) => eprintln!(
            "warning: no gcp-storage-emulator row ({e:#}); install it in .venv or pass --gcs-emulator"
        ),
    }
    let mut run = copy_run(
        bucket_dir,
        &dir.join("cedar-gs"),
        cedar::store::open_bucket(
            &format!("gs://{PROJECT}"),
            Some(&emulator.url()),
            Arc::new(cedar::auth::NoAuth),
        )?,
        sums,
        total,
        false,
        Verify::Crc32c,
    )
    .await?;
    run.label = "cedar over the GCS JSON API: cedar's emulator, in process".into();
    run.checks =
        "size, crc32c; CPU includes the emulator's (it hashes every object it serves)".into();
    cedar.push(run);
    let cp_after = cp_run(bucket_dir, &dir.join("cp-2"), false).await?;
    let cp_sync = cp_run(bucket_dir, &dir.join("cp-3"), true).await?;
    Ok(CopyTimes {
        cp_before,
        cp_after,
        cp_sync,
        fsync_each,
        cedar,
    })
}

/// The times of every copy of `cedar bench download`.
#[derive(Debug, Clone)]
struct CopyTimes {
    cp_before: Duration,
    cp_after: Duration,
    cp_sync: Duration,
    fsync_each: Duration,
    cedar: Vec<CopyRun>,
}

/// A gcp-storage-emulator process holding the pieces (in memory), uploaded through its JSON
/// API; stopped when dropped.
struct GcsSource {
    child: std::process::Child,
    bucket: Arc<dyn cedar::store::ExportBucket>,
    /// The emulator's CPU seconds once loaded, so that serving can be told apart.
    cpu_loaded: f64,
}

impl GcsSource {
    async fn start(
        binary: &Path,
        bucket_dir: &Path,
        sums: &BTreeMap<String, PieceSums>,
    ) -> anyhow::Result<GcsSource> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(binary)
            .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--default-bucket", PROJECT, "--in-memory", "-q"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut source = GcsSource {
            child,
            bucket: cedar::store::open_bucket(
                &format!("gs://{PROJECT}"),
                Some(&format!("http://127.0.0.1:{port}")),
                Arc::new(cedar::auth::NoAuth),
            )?,
            cpu_loaded: 0.0,
        };
        let started = Instant::now();
        while source.bucket.list("").await.is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "gcp-storage-emulator did not answer on port {port}"
            );
            if let Some(status) = source.child.try_wait()? {
                anyhow::bail!("gcp-storage-emulator exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for name in sums.keys() {
            let body = tokio::fs::read(bucket_dir.join(name)).await?;
            source.bucket.put(name, body.into()).await?;
        }
        source.cpu_loaded = cpu_seconds(source.child.id()).unwrap_or(0.0);
        Ok(source)
    }
}

impl Drop for GcsSource {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of process `pid` so far, all threads, from `/proc/PID/stat`
/// (in USER_HZ ticks, 100 a second on Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are plain numbers.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Times a copy of every file, one after the other, each fsynced before the next: the
/// durability cedar gives each download, without its checks. Deletes `dest` afterwards.
async fn fsync_copy_run(bucket_dir: &Path, dest: &Path) -> anyhow::Result<Duration> {
    sync().await?;
    warm(bucket_dir).await?;
    let (from, to) = (bucket_dir.to_path_buf(), dest.to_path_buf());
    let took = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut stack = vec![from.clone()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let path = entry?.path();
                let target = to.join(path.strip_prefix(&from)?);
                if path.is_dir() {
                    std::fs::create_dir_all(&target)?;
                    stack.push(path);
                } else {
                    std::fs::copy(&path, &target)?;
                    std::fs::File::open(&target)?.sync_all()?;
                }
            }
        }
        Ok(started.elapsed())
    })
    .await??;
    std::fs::remove_dir_all(dest)?;
    Ok(took)
}

/// Reads every file under `dir` once, so that the copy that follows reads from the page cache.
async fn warm(dir: &Path) -> anyhow::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    std::io::copy(&mut std::fs::File::open(&path)?, &mut std::io::sink())?;
                }
            }
        }
        Ok(())
    })
    .await?
}

async fn sync() -> anyhow::Result<()> {
    let status = tokio::process::Command::new("sync").status().await?;
    anyhow::ensure!(status.success(), "sync failed: {status}");
    Ok(())
}

/// Times `cp -r bucket dest` (and a `sync` after it when `then_sync`), then deletes `dest`.
async fn cp_run(bucket_dir: &Path, dest: &Path, then_sync: bool) -> anyhow::Result<Duration> {
    sync().await?;
    warm(bucket_dir).await?;
    let started = Instant::now();
    let status = tokio::process::Command::new("cp")
        .arg("-r")
        .arg(bucket_dir)
        .arg(dest)
        .status()
        .await
        .context("running cp")?;
    anyhow::ensure!(status.success(), "cp -r failed: {status}");
    if then_sync {
        sync().await?;
    }
    let took = started.elapsed();
    std::fs::remove_dir_all(dest)?;
    Ok(took)
}

/// Lists the pieces in `bucket` and times `copy_verified` of all of them into `dest`, checked
/// against the manifest; `add_sums` supplies the checksums a local listing lacks.
async fn copy_run(
    bucket_dir: &Path,
    dest: &Path,
    bucket: Arc<dyn cedar::store::ExportBucket>,
    sums: &BTreeMap<String, PieceSums>,
    total: u64,
    add_sums: bool,
    verify: Verify,
) -> anyhow::Result<CopyRun> {
    sync().await?;
    warm(bucket_dir).await?;
    let started = Instant::now();
    let mut objects = bucket.list(DOWNLOAD_PREFIX).await?;
    let list = started.elapsed();
    anyhow::ensure!(
        objects.len() == sums.len(),
        "listed {} of {} pieces",
        objects.len(),
        sums.len()
    );
    for o in &mut objects {
        let s = sums
            .get(&o.name)
            .with_context(|| format!("listed an unknown object {}", o.name))?;
        if add_sums {
            o.md5 = Some(s.md5);
            o.crc32c = Some(s.crc32c);
        }
        anyhow::ensure!(
            o.md5 == Some(s.md5) && o.crc32c == Some(s.crc32c),
            "{}: the listing's checksums are not the ones written",
            o.name
        );
    }
    let destination = cedar::store::Destination::local(dest);
    let options = DownloadOptions {
        verify,
        ..DownloadOptions::default()
    };
    let cpu_before = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    let (verified, bytes) = cedar::jobs::download::copy_verified(
        bucket.as_ref(),
        &destination,
        "bench",
        &objects,
        true,
        &options,
    )
    .await
    .map_err(|e| anyhow::anyhow!("copy_verified: {e}"))?;
    let copy = started.elapsed();
    let cpu = cpu_seconds(std::process::id()).unwrap_or(0.0) - cpu_before;
    anyhow::ensure!(
        verified.len() == sums.len() && bytes == total,
        "copied {} objects, {bytes} bytes; expected {}, {total}",
        verified.len(),
        sums.len()
    );
    std::fs::remove_dir_all(dest)?;
    Ok(CopyRun {
        label: String::new(),
        checks: String::new(),
        list,
        copy,
        cpu,
    })
}
