//! `cedar bench download`: MB/s of `copy_verified` from the emulator's bucket (`file://` and
//! `gs://`) against `cp -r` of the same folder on the same disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use cedar::emulator::{EmulatorOptions, RunningEmulator};

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
    let result = download_runs(dir, &bucket_dir, &emulator, &sums, total).await;
    emulator.shutdown().await;
    let CopyTimes {
        cp_before,
        cp_after,
        cp_sync,
        fsync_each,
        file,
        gs,
    } = result?;

    let mb_per_s = |d: Duration| total as f64 / 1e6 / d.as_secs_f64();
    let baseline = cp_before.min(cp_after);
    println!(
        "cedar bench download: {pieces} pieces of {} MiB ({:.2} GiB) in the emulator's bucket folder {}, copied to a local folder on the same disk",
        a.piece_mib,
        total as f64 / f64::from(1u32 << 30),
        bucket_dir.display()
    );
    println!(
        "page cache: every run reads the same source files, read once in full just before it (warm); each run starts after `sync`; cedar fsyncs every file it writes, cp does not (see the cp + sync row); MB = 10^6 bytes"
    );
    let mut t = Table::new(["copy", "list s", "copy s", "MB/s", "÷ baseline", "checks"]);
    t.row([
        "baseline: cp -r (best of two)".into(),
        "".into(),
        secs(baseline),
        format!("{:.0}", mb_per_s(baseline)),
        "1".into(),
        format!(
            "runs {:.0} and {:.0} MB/s",
            mb_per_s(cp_before),
            mb_per_s(cp_after)
        ),
    ]);
    for (label, took, note) in [
        ("cp -r, then sync", cp_sync, ""),
        (
            "copy + fsync of each file in turn (std::fs::copy, sync_all)",
            fsync_each,
            "the durability cedar gives each file",
        ),
    ] {
        t.row([
            label.into(),
            "".into(),
            secs(took),
            format!("{:.0}", mb_per_s(took)),
            format!("{:.2}", baseline.as_secs_f64() / took.as_secs_f64()),
            note.into(),
        ]);
    }
    for (label, run, checks) in [
        (
            "cedar copy_verified from file://",
            file,
            "size, md5, crc32c (from the generation manifest: a local listing has none)",
        ),
        (
            "cedar copy_verified from gs:// (emulator JSON API)",
            gs,
            "size, md5, crc32c (from objects.list)",
        ),
    ] {
        t.row([
            label.into(),
            secs(run.list),
            secs(run.copy),
            format!("{:.0}", mb_per_s(run.copy)),
            format!("{:.2}", baseline.as_secs_f64() / run.copy.as_secs_f64()),
            checks.into(),
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

/// Listing and copying time of one `copy_verified` run.
#[derive(Debug, Clone, Copy)]
struct CopyRun {
    list: Duration,
    copy: Duration,
}

/// `cp -r` before, cedar from `file://`, cedar from `gs://`, `cp -r` after, `cp -r` + sync,
/// a copy fsyncing each file.
async fn download_runs(
    dir: &Path,
    bucket_dir: &Path,
    emulator: &RunningEmulator,
    sums: &BTreeMap<String, PieceSums>,
    total: u64,
) -> anyhow::Result<CopyTimes> {
    let cp_before = cp_run(bucket_dir, &dir.join("cp-1"), false).await?;
    let file_url = url::Url::from_directory_path(bucket_dir)
        .map_err(|()| anyhow::anyhow!("{} is not absolute", bucket_dir.display()))?;
    let file = copy_run(
        bucket_dir,
        &dir.join("cedar-file"),
        cedar::store::open_bucket(file_url.as_str(), None, Arc::new(cedar::auth::NoAuth))?,
        sums,
        total,
        true,
    )
    .await?;
    let gs = copy_run(
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
    )
    .await?;
    let cp_after = cp_run(bucket_dir, &dir.join("cp-2"), false).await?;
    let cp_sync = cp_run(bucket_dir, &dir.join("cp-3"), true).await?;
    let fsync_each = fsync_copy_run(bucket_dir, &dir.join("fsync-copy")).await?;
    Ok(CopyTimes {
        cp_before,
        cp_after,
        cp_sync,
        fsync_each,
        file,
        gs,
    })
}

/// The times of every copy of `cedar bench download`.
#[derive(Debug, Clone, Copy)]
struct CopyTimes {
    cp_before: Duration,
    cp_after: Duration,
    cp_sync: Duration,
    fsync_each: Duration,
    file: CopyRun,
    gs: CopyRun,
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
    let started = Instant::now();
    let (verified, bytes) = cedar::jobs::download::copy_verified(
        bucket.as_ref(),
        &destination,
        "bench",
        &objects,
        true,
        &cedar::jobs::download::DownloadOptions::default(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("copy_verified: {e}"))?;
    let copy = started.elapsed();
    anyhow::ensure!(
        verified.len() == sums.len() && bytes == total,
        "copied {} objects, {bytes} bytes; expected {}, {total}",
        verified.len(),
        sums.len()
    );
    std::fs::remove_dir_all(dest)?;
    Ok(CopyRun { list, copy })
}
