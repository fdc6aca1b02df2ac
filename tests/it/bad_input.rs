//! Bad input, one table row per case: every row sets up one wrong thing (a command line, a
//! configuration file, an Earth Engine answer, a failing store, a Redis that is down), runs one
//! action, and expects ONE clear message naming the problem with a non-zero exit (or a fatal /
//! retryable job error, or a FAILED order carrying the message). After every row, the state that
//! existed before — a queued submission in the SQLite queue, its tracking document in the bucket
//! and a file already downloaded to the destination — must be exactly as it was.
//!
//! Everything runs on loopback or in a temporary directory: the `cedar` binary against an SQLite
//! queue, the in-process EE emulator, small axum servers standing in for Earth Engine and Cloud
//! Storage.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cedar::auth::NoAuth;
use cedar::earthengine::types::{Expression, ValueNode};
use cedar::earthengine::{EarthEngine, EeError, ExportParams, export_request};
use cedar::emulator::{ApiMethod, Fault};
use cedar::grid::TileGrid;
use cedar::jobs::JobError;
use cedar::jobs::download::{DownloadOptions, copy_verified, export_objects};
use cedar::queue::tracking::{OrderState, Tracker};
use cedar::queue::{Depth, Queue, Stage};
use cedar::store::{
    Destination, ExportBucket, GcsJsonBucket, ObjectInfo, ObjectStoreBucket, StoreError,
};
use futures::stream::{self, BoxStream};
use object_store::memory::InMemory;
use serde_json::Value;

use crate::support::{
    LC08, Process, TestConfig, cedar_command, files, free_port, one_tile, run, small_exports,
    start_emulator, wait_until,
};

const NAMESPACE: &str = "bad-input";
const BUCKET: &str = "cedar-bad-input";
/// Bytes of the file downloaded before any bad input is tried.
const KEPT: &[u8] = b"a GeoTIFF downloaded before the bad inputs";

/// What a row expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The binary exits with this status.
    Exit(i32),
    /// A library call fails and the error says not to retry.
    Fatal,
    /// A library call fails and the error says another attempt may succeed.
    Retryable,
    /// A worker fails the order; the message is on the order.
    OrderFailed,
}

/// What a row got: how it ended and the whole message.
#[derive(Debug)]
struct Outcome {
    got: Want,
    /// stderr of the binary, or the error's Display, or the order's error.
    message: String,
    /// stdout of the binary (empty for library calls).
    stdout: String,
    /// Whether the message is ONE message: one `error:` line for the binary (clap's usage hint
    /// may follow), one line for a library error.
    single: bool,
}

type Action = Box<dyn for<'a> Fn(&'a Fixture) -> Pin<Box<dyn Future<Output = Outcome> + 'a>>>;

/// One row: a name, the setup and action (one closure: it writes what the case needs, then
/// runs it), the message substring and the ending expected.
struct Case {
    name: &'static str,
    action: Action,
    expect: String,
    want: Want,
}

fn case<F>(name: &'static str, expect: impl Into<String>, want: Want, action: F) -> Case
where
    F: for<'a> Fn(&'a Fixture) -> Pin<Box<dyn Future<Output = Outcome> + 'a>> + 'static,
{
    Case {
        name,
        action: Box::new(action),
        expect: expect.into(),
        want,
    }
}

/// A row that runs the binary with the arguments its setup returns.
fn cli(
    name: &'static str,
    expect: impl Into<String>,
    code: i32,
    setup: impl Fn(&Fixture) -> Vec<String> + 'static,
) -> Case {
    let setup = Arc::new(setup);
    case(name, expect, Want::Exit(code), move |f| {
        let setup = setup.clone();
        Box::pin(async move {
            let args = setup(f);
            f.run(&args).await
        })
    })
}

/// A row whose action is a library call returning a classified error.
fn lib<F>(name: &'static str, expect: impl Into<String>, want: Want, action: F) -> Case
where
    F: for<'a> Fn(&'a Fixture) -> Pin<Box<dyn Future<Output = Result<(), Classified>> + 'a>>
        + 'static,
{
    let action = Arc::new(action);
    case(name, expect, want, move |f| {
        let action = action.clone();
        Box::pin(async move {
            match action(f).await {
                Ok(()) => Outcome {
                    got: Want::Exit(0),
                    message: "succeeded".into(),
                    stdout: String::new(),
                    single: true,
                },
                Err(c) => Outcome {
                    got: if c.retryable {
                        Want::Retryable
                    } else {
                        Want::Fatal
                    },
                    single: !c.message.contains('\n'),
                    message: c.message,
                    stdout: String::new(),
                },
            }
        })
    })
}

/// An error with its classification, whichever module it came from.
struct Classified {
    retryable: bool,
    message: String,
}

impl From<EeError> for Classified {
    fn from(e: EeError) -> Self {
        Classified {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

impl From<JobError> for Classified {
    fn from(e: JobError) -> Self {
        Classified {
            retryable: matches!(e, JobError::Retry(_)),
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for Classified {
    fn from(e: StoreError) -> Self {
        Classified {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

/// The test's directory, configuration, pre-existing submission and downloaded file.
struct Fixture {
    dir: tempfile::TempDir,
    db: PathBuf,
    bucket: PathBuf,
    dest: PathBuf,
    /// The submission queued before any bad input.
    queued: String,
    /// The file downloaded before any bad input.
    kept: PathBuf,
    root: bool,
    ee: SocketAddr,
    gcs: SocketAddr,
    /// An HTTP server, for a queue URL that points at one.
    http: SocketAddr,
    /// A TCP service that accepts connections and never says a word.
    silent: SocketAddr,
    /// A Redis without TLS, for a rediss:// URL that points at one.
    plain_redis: SocketAddr,
}

/// Everything a bad input must leave alone.
#[derive(Debug, PartialEq)]
struct Preserved {
    depths: Vec<Depth>,
    active: u64,
    submissions: Vec<String>,
    counts: BTreeMap<OrderState, u64>,
    kept: Vec<u8>,
    bucket: BTreeMap<String, u64>,
    dest: BTreeMap<String, u64>,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, dest) = (dir.path().join("bucket"), dir.path().join("dest"));
        std::fs::create_dir_all(&bucket).unwrap();
        std::fs::create_dir_all(&dest).unwrap();
        let db = dir.path().join("cedar.db");
        let kept = dest.join("EARLIER").join("kept.tif");
        std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
        std::fs::write(&kept, KEPT).unwrap();
        // Root ignores permission bits: a read-only directory stops nothing.
        let probe = dir.path().join("probe");
        std::fs::create_dir(&probe).unwrap();
        std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o555)).unwrap();
        let root = std::fs::write(probe.join("x"), b"x").is_ok();
        let mut f = Fixture {
            dir,
            db,
            bucket,
            dest,
            queued: String::new(),
            kept,
            root,
            ee: fake_earth_engine().await,
            gcs: fake_storage().await,
            http: serve(axum::Router::new()).await,
            silent: silent_service().await,
            plain_redis: plain_redis().await,
        };
        std::fs::write(f.config_path(), f.good_config()).unwrap();
        let out = f
            .run(&strings(&[
                "submit",
                "--json",
                "--collection",
                LC08,
                "--rows",
                "3-3",
                "--cols",
                "10-11",
                "--start",
                "2024-01-01",
                "--end",
                "2024-03-01",
                "--freq",
                "1MS",
            ]))
            .await;
        assert_eq!(out.got, Want::Exit(0), "{}", out.message);
        f.queued = f
            .tracker()
            .await
            .list()
            .await
            .unwrap()
            .pop()
            .expect("the submission");
        f
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("cedar.toml")
    }

    /// A valid configuration: SQLite queue, local bucket and destination; Earth Engine is an
    /// unreachable port, since nothing here should get that far.
    fn good_config(&self) -> String {
        TestConfig {
            project: "cedar-bad-input".to_owned(),
            endpoint: "http://127.0.0.1:9".to_owned(),
            timeout_secs: 5,
            queue_url: format!("sqlite://{}", self.db.display()),
            namespace: NAMESPACE.to_owned(),
            bucket: BUCKET.to_owned(),
            file_dimensions: None,
            store_url: format!("file://{}", self.bucket.display()),
            dest: self.dest.display().to_string(),
            ..TestConfig::default()
        }
        .toml()
    }

    /// Writes `text` as a configuration file of its own and returns its path.
    fn config(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// The good configuration with `from` replaced by `to` (which must occur).
    fn config_with(&self, name: &str, from: &str, to: &str) -> String {
        let good = self.good_config();
        assert!(good.contains(from), "{from:?} not in the configuration");
        self.config(name, &good.replacen(from, to, 1))
    }

    /// The good configuration with `extra` appended.
    fn config_plus(&self, name: &str, extra: &str) -> String {
        self.config(name, &format!("{}\n{extra}", self.good_config()))
    }

    fn command(&self, args: &[String]) -> Command {
        let mut cmd = cedar_command();
        cmd.current_dir(self.dir.path()).env("CEDAR_LOG", "warn");
        // A row may pass its own --config; the global flag may come anywhere.
        if !args.iter().any(|a| a == "--config") {
            cmd.arg("--config").arg(self.config_path());
        }
        cmd.args(args);
        cmd
    }

    /// Runs the binary to completion without blocking the runtime's other tasks.
    async fn run(&self, args: &[String]) -> Outcome {
        self.run_with_env(args, &[]).await
    }

    /// [`Fixture::run`] with environment variables set for the process.
    async fn run_with_env(&self, args: &[String], env: &[(&str, &str)]) -> Outcome {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        let (code, stdout, stderr) = run(cmd).await.parts();
        let errors = stderr.lines().filter(|l| l.starts_with("error:")).count();
        Outcome {
            got: Want::Exit(code.unwrap_or(-1)),
            single: errors == 1 && !stderr.contains("panicked"),
            message: format!("{stderr}{stdout}"),
            stdout,
        }
    }

    async fn tracker(&self) -> Tracker {
        Tracker::open(&format!("sqlite://{}", self.db.display()), NAMESPACE)
            .await
            .unwrap()
    }

    async fn preserved(&self) -> Preserved {
        let queue = Queue::open(&format!("sqlite://{}", self.db.display()), NAMESPACE)
            .await
            .unwrap();
        let mut depths = Vec::new();
        for stage in Stage::ALL {
            depths.push(queue.depth(stage).await.unwrap());
        }
        let tracker = self.tracker().await;
        Preserved {
            depths,
            active: queue.active_count().await.unwrap(),
            submissions: tracker.list().await.unwrap(),
            counts: tracker.counts(&self.queued).await.unwrap(),
            kept: std::fs::read(&self.kept).unwrap(),
            bucket: files(&self.bucket),
            dest: files(&self.dest),
        }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `submit` of one valid order with the extra arguments `more`.
fn submit(more: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "submit",
        "--collection",
        LC08,
        "--start",
        "2024-01-01",
        "--end",
        "2024-02-01",
    ]);
    args.extend(strings(more));
    args
}

/// `--config PATH` + a valid `submit`.
fn submit_with(config: String) -> Vec<String> {
    let mut args = vec!["--config".to_string(), config];
    args.extend(submit(&["--tile", "3,10"]));
    args
}

async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn google_error(code: u16, status: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        serde_json::json!({"error": {"code": code, "message": message, "status": status}})
            .to_string(),
    )
        .into_response()
}

/// A stand-in for Earth Engine whose answer depends on the project in the path:
/// `/v1/projects/{behaviour}/…`.
async fn fake_earth_engine() -> SocketAddr {
    async fn answer(uri: Uri) -> Response {
        let behaviour = uri.path().split('/').nth(3).unwrap_or("").to_owned();
        let json = |body: &'static str| {
            (StatusCode::OK, [("content-type", "application/json")], body).into_response()
        };
        match behaviour.as_str() {
            "malformed" => json(r#"{"maxConcurrentExports": 2,"#),
            // An operation without its name: the export can never be followed.
            "nameless" => json(r#"{"done": false, "metadata": {"state": "PENDING"}}"#),
            "html" => (
                StatusCode::SERVICE_UNAVAILABLE,
                [("content-type", "text/html")],
                "<html><head><title>Error 503 (Service Unavailable)</title></head>\
                 <body><p>The service is temporarily unavailable.</p></body></html>",
            )
                .into_response(),
            "html200" => (
                StatusCode::OK,
                [("content-type", "text/html")],
                "<html><body>Sign in to continue</body></html>",
            )
                .into_response(),
            "invalid" => google_error(
                400,
                "INVALID_ARGUMENT",
                "Image.select: Pattern 'SR_B99' did not match any bands.",
            ),
            "unauthenticated" => google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
            ),
            "denied" => google_error(
                403,
                "PERMISSION_DENIED",
                "Permission 'earthengine.exports.create' denied on project.",
            ),
            _ => google_error(404, "NOT_FOUND", "no such fake"),
        }
    }
    serve(axum::Router::new().fallback(answer)).await
}

/// A stand-in for the Cloud Storage JSON API whose answer depends on the bucket:
/// `/storage/v1/b/{behaviour}/o`.
async fn fake_storage() -> SocketAddr {
    async fn answer(uri: Uri) -> Response {
        match uri.path().split('/').nth(4).unwrap_or("") {
            "denied" => google_error(
                403,
                "PERMISSION_DENIED",
                "cedar@example.iam.gserviceaccount.com does not have storage.objects.list access to the Google Cloud Storage bucket.",
            ),
            "overloaded" => google_error(503, "UNAVAILABLE", "Backend Error"),
            // What a web server that is not Cloud Storage answers: a page over many lines.
            "html" => (
                StatusCode::NOT_FOUND,
                [("content-type", "text/html")],
                "<!DOCTYPE html>\n<html>\n  <head><title>404 Not Found</title></head>\n  <body>\n    <h1>Not Found</h1>\n  </body>\n</html>\n",
            )
                .into_response(),
            _ => google_error(404, "NOT_FOUND", "The specified bucket does not exist."),
        }
    }
    serve(axum::Router::new().fallback(answer)).await
}

/// A TCP service that accepts every connection, reads nothing and answers nothing.
async fn silent_service() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A stand-in for a Redis without TLS, as far as a first connection sees one: it reads lines
/// (a TLS handshake has none, so it waits, as Redis does) and answers each `+PONG`.
async fn plain_redis() -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(read).split(b'\n');
                while let Ok(Some(_)) = lines.next_segment().await {
                    if write.write_all(b"+PONG\r\n").await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The good configuration with `[queue] url` set to `url`; returns its path.
fn with_queue_url(f: &Fixture, name: &str, url: &str) -> String {
    f.config_with(name, &format!("sqlite://{}", f.db.display()), url)
}

/// `--config` with `[queue] url` set to `url`, then `args`.
fn queue_command(f: &Fixture, name: &str, url: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--config".to_string(), with_queue_url(f, name, url)];
    all.extend(strings(args));
    all
}

/// What every command says when `[queue] url` points at an HTTP server.
fn http_not_redis(addr: SocketAddr) -> String {
    format!(
        "error: queue.url redis://{addr}: the server there does not speak the Redis protocol (it answered like an HTTP server); point queue.url at a Redis server"
    )
}

/// What every command says when `[queue] url` points at a service that says nothing.
fn silent_not_redis(addr: SocketAddr) -> String {
    format!(
        "error: queue.url redis://{addr}: the server there accepted the connection but answered nothing within 5 s: it does not speak the Redis protocol, or it is stuck; point queue.url at a Redis server"
    )
}

fn ee(f: &Fixture, project: &str) -> EarthEngine {
    EarthEngine::new(
        &format!("http://{}", f.ee),
        project,
        Arc::new(NoAuth),
        Duration::from_secs(5),
    )
    .unwrap()
}

/// The EE call a row makes.
#[derive(Debug, Clone, Copy)]
enum EeCall {
    Config,
    Export,
    List,
}

/// Makes `call` against the fake Earth Engine, whose answer the `project` chooses.
async fn call_ee(f: &Fixture, project: &str, call: EeCall) -> Result<(), Classified> {
    let ee = ee(f, project);
    match call {
        EeCall::Config => ee.get_project_config().await.map(drop),
        EeCall::Export => ee.export_image(&export_body()).await.map(drop),
        EeCall::List => ee.list_operations(None, None).await.map(drop),
    }
    .map_err(Into::into)
}

/// Lists `x/y` in the fake Cloud Storage, whose answer the `bucket` chooses.
async fn list_bucket(f: &Fixture, bucket: &str) -> Result<(), Classified> {
    let bucket =
        GcsJsonBucket::new(&format!("http://{}", f.gcs), bucket, "", Arc::new(NoAuth)).unwrap();
    export_objects(&bucket, "x/y", &[])
        .await
        .map(drop)
        .map_err(Into::into)
}

fn export_body() -> cedar::earthengine::ExportImageRequest {
    let grid = TileGrid::preset("Landsat ARD v1 - CONUS").unwrap();
    let expression = Expression {
        values: [(
            "0".to_string(),
            ValueNode::ConstantValue(serde_json::json!(1)),
        )]
        .into(),
        result: "0".into(),
    };
    export_request(
        &grid.tile(3, 10).unwrap(),
        expression,
        &ExportParams {
            priority: None,
            bucket: BUCKET.into(),
            filename_prefix: "x/y".into(),
            description: "y".into(),
            request_id: cedar::earthengine::request_id(&["bad-input"]),
            file_dimensions: Some(1024),
            cloud_optimized: true,
            nodata: None,
            max_pixels: None,
            workload_tag: None,
        },
    )
}

/// A bucket holding `objects` in memory (the product's object_store bucket).
async fn memory_bucket(objects: &[(&str, Vec<u8>)]) -> (ObjectStoreBucket, Vec<ObjectInfo>) {
    let bucket = ObjectStoreBucket::new(Arc::new(InMemory::new()), Default::default());
    for (name, body) in objects {
        bucket.put(name, Bytes::from(body.clone())).await.unwrap();
    }
    let listed = bucket.list("").await.unwrap();
    (bucket, listed)
}

/// An `object_store` destination whose every operation fails as `kind` says.
#[derive(Debug)]
pub(crate) struct FailingStore {
    kind: &'static str,
}

impl FailingStore {
    fn error(&self, path: &str) -> object_store::Error {
        match self.kind {
            "denied" => object_store::Error::PermissionDenied {
                path: path.to_owned(),
                source: "403 Forbidden: the service account may not write here".into(),
            },
            _ => object_store::Error::Generic {
                store: "FailingStore",
                source: Box::new(std::io::Error::from_raw_os_error(28)),
            },
        }
    }
}

impl std::fmt::Display for FailingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FailingStore({})", self.kind)
    }
}

#[async_trait]
impl object_store::ObjectStore for FailingStore {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        _payload: object_store::PutPayload,
        _opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        Err(self.error(location.as_ref()))
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        _opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        Err(self.error(location.as_ref()))
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        _options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        Err(object_store::Error::NotFound {
            path: location.to_string(),
            source: "nothing here".into(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<object_store::path::Path>>,
    ) -> BoxStream<'static, object_store::Result<object_store::path::Path>> {
        locations
    }

    fn list(
        &self,
        _prefix: Option<&object_store::path::Path>,
    ) -> BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        Box::pin(stream::empty())
    }

    async fn list_with_delimiter(
        &self,
        _prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        Err(self.error("(listing)"))
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        _to: &object_store::path::Path,
        _options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        Err(self.error(from.as_ref()))
    }
}

/// A tmpfs of 64 KiB, unmounted when dropped; `None` where mounting is not allowed.
struct TinyDisk(PathBuf);

impl TinyDisk {
    fn mount(at: PathBuf) -> Option<TinyDisk> {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(TinyDisk(at))
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Downloads `objects` from `bucket` into `dest` under the tracking name `T`.
async fn download(
    bucket: &dyn ExportBucket,
    dest: &Destination,
    objects: &[ObjectInfo],
) -> Result<(), Classified> {
    copy_verified(
        bucket,
        dest,
        "T",
        objects,
        false,
        &DownloadOptions::default(),
    )
    .await?;
    Ok(())
}

/// The EE 400 row: a worker (the binary, on the same SQLite file, another namespace, its own
/// bucket and destination) meets a 400 on every `image:export`; the order must end FAILED with
/// EE's message, visible in `cedar show`.
async fn worker_meets_ee_400(f: &Fixture) -> Outcome {
    const EE_MESSAGE: &str = "Image.select: Pattern 'SR_B99' did not match any bands.";
    let root = f.dir.path().join("ee400");
    let (bucket, dest) = (root.join("bucket"), root.join("dest"));
    std::fs::create_dir_all(&dest).unwrap();
    let emulator = start_emulator(&bucket, small_exports(BUCKET)).await;
    emulator.inject(Fault::NextRequests {
        method: Some(ApiMethod::ImageExport),
        count: 1000,
        status: 400,
        message: Some(EE_MESSAGE.into()),
        processed: false,
    });
    let config = f.config(
        "ee400",
        &f.good_config()
            .replace("http://127.0.0.1:9", &emulator.url())
            .replace(
                &format!("namespace = \"{NAMESPACE}\""),
                "namespace = \"bad-input-ee400\"",
            )
            .replace(
                &f.bucket.display().to_string(),
                &bucket.display().to_string(),
            )
            .replace(&f.dest.display().to_string(), &dest.display().to_string()),
    );
    let with_config = |args: &[&str]| {
        let mut all = vec!["--config".to_string(), config.clone()];
        all.extend(strings(args));
        all
    };
    let out = f
        .run(&with_config(
            &[&["submit", "--json"][..], &one_tile("2021-09-01")].concat(),
        ))
        .await;
    assert_eq!(out.got, Want::Exit(0), "{}", out.message);
    let name: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let name = name["tracking_name"].as_str().unwrap().to_owned();

    let mut worker = Process::spawn(
        f.command(&with_config(&[
            "worker",
            "--poll-interval-secs",
            "1",
            "--drain-secs",
            "1",
        ])),
        root.join("worker.log"),
    );
    let (show, log) = (&with_config(&["show", &name]), &worker);
    let doc = wait_until(
        Duration::from_secs(90),
        Duration::from_millis(300),
        move || async move {
            let out = f.run(show).await;
            let doc: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
            let state = doc["orders"][0]["status"]["state"].as_str();
            if matches!(state, Some("FAILED" | "CLEANED" | "EMPTY")) {
                Ok(doc)
            } else {
                Err(format!("the order did not end: {doc}\n{}", log.log()))
            }
        },
    )
    .await;
    worker.kill();
    assert!(
        emulator
            .stats()
            .requests
            .get("image.export")
            .copied()
            .unwrap_or(0)
            >= 1,
        "the export was attempted"
    );
    let status = &doc["orders"][0]["status"];
    let message = status["error"].as_str().unwrap_or("").to_owned();
    Outcome {
        got: if status["state"] == "FAILED" {
            Want::OrderFailed
        } else {
            Want::Exit(0)
        },
        single: !message.is_empty() && !message.contains('\n'),
        message,
        stdout: String::new(),
    }
}

/// The table. `f` is known, so rows can name its paths.
fn table(f: &Fixture) -> Vec<Case> {
    let tiles_file = |f: &Fixture, name: &str, body: &str| {
        let p = f.dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let refused_redis = format!("redis://:hunter2@127.0.0.1:{}", free_port());
    let (refused_redis2, refused_redis3) = (refused_redis.clone(), refused_redis.clone());
    let refused_shown = cedar::queue::redact_url(&refused_redis);
    let (refused_shown2, refused_shown3) = (refused_shown.clone(), refused_shown.clone());
    vec![
        // --- the command line -------------------------------------------------------------
        cli(
            "unknown collection",
            "unknown collection \"LANDSAT/NOPE\"",
            2,
            |_| {
                let mut a = submit(&["--tile", "3,10"]);
                a[2] = "LANDSAT/NOPE".into();
                a
            },
        ),
        cli(
            "tile outside the grid",
            "(row 99, col 10) is outside the grid",
            2,
            |_| submit(&["--tile", "99,10"]),
        ),
        cli(
            "end before start",
            "end 2023-01-01 is not after start 2024-01-01",
            2,
            |_| {
                let mut a = submit(&["--tile", "3,10"]);
                a[6] = "2023-01-01".into();
                a
            },
        ),
        cli(
            "bad frequency",
            "frequency \"1XX\" is not understood",
            2,
            |_| submit(&["--tile", "3,10", "--freq", "1XX"]),
        ),
        cli("duplicate tile", "tile 3,10 is given twice", 2, |_| {
            submit(&["--tile", "3,10", "--tile", "3,10"])
        }),
        cli("duplicate collection", "is given twice", 2, |_| {
            let mut a = submit(&["--tile", "3,10"]);
            a[2] = format!("{LC08},{LC08}");
            a
        }),
        cli(
            "malformed --tile",
            "tile \"3x10\" must be ROW,COL",
            2,
            |_| submit(&["--tile", "3x10"]),
        ),
        cli(
            "--rows range backwards",
            "range \"5-3\" goes backwards",
            2,
            |_| submit(&["--rows", "5-3", "--cols", "10-11"]),
        ),
        cli("empty tiles file", "lists no tile", 2, move |f| {
            let p = tiles_file(f, "empty-tiles.txt", "# nothing\n\n");
            submit(&["--tiles-file", &p])
        }),
        cli("missing tiles file", "cannot read tiles file", 2, |f| {
            let p = f.dir.path().join("no-such-tiles.txt");
            submit(&["--tiles-file", &p.display().to_string()])
        }),
        cli(
            "bad line in tiles file",
            "bad-tiles.txt:2: tile \"3;11\"",
            2,
            move |f| {
                let p = tiles_file(f, "bad-tiles.txt", "3,10\n3;11\n");
                submit(&["--tiles-file", &p])
            },
        ),
        cli(
            "duplicate tile in a tiles file",
            "dup-tiles.txt:3: tile 3,10 is listed twice (first on line 1)",
            2,
            move |f| {
                let p = tiles_file(f, "dup-tiles.txt", "3,10\n3,11\n3,10\n");
                submit(&["--tiles-file", &p])
            },
        ),
        cli(
            "unknown subcommand flag",
            "unexpected argument '--bogus'",
            2,
            |_| submit(&["--tile", "3,10", "--bogus"]),
        ),
        cli(
            "--workload-tag outside EE's rule",
            "for '--workload-tag <WORKLOAD_TAG>': \"Bad.Tag\" is not an Earth Engine workload tag: 1-63 lowercase letters",
            2,
            |_| submit(&["--tile", "3,10", "--workload-tag", "Bad.Tag"]),
        ),
        cli(
            "status of an unknown name",
            "tracking \"NOPE\" does not exist",
            2,
            |_| strings(&["status", "NOPE"]),
        ),
        cli(
            "show of an unknown name",
            "tracking \"NOPE\" does not exist",
            2,
            |_| strings(&["show", "NOPE"]),
        ),
        cli(
            "retry of an unknown name",
            "tracking \"NOPE\" does not exist",
            2,
            |_| strings(&["retry", "NOPE"]),
        ),
        cli(
            "cancel of an unknown name",
            "tracking \"NOPE\" does not exist",
            2,
            |_| strings(&["cancel", "NOPE"]),
        ),
        cli(
            "cancel of a collection the submission lacks",
            "exports no such collection; its collections: LANDSAT/LC08/C02/T1_L2",
            2,
            |f| strings(&["cancel", &f.queued, "--collection", "NOPE"]),
        ),
        cli(
            "retry of a tile the submission lacks",
            "--tile 1,1: ",
            2,
            |f| strings(&["retry", &f.queued, "--tile", "1,1"]),
        ),
        cli(
            "retry --from after --to",
            "--from 2021-09-01 is after --to 2021-08-01; give the earlier day first",
            2,
            |f| {
                strings(&[
                    "retry",
                    &f.queued,
                    "--from",
                    "2021-09-01",
                    "--to",
                    "2021-08-01",
                ])
            },
        ),
        cli(
            "retry --state that is no state",
            "\"broken\" is not an order state; one of QUEUED",
            2,
            |f| strings(&["retry", &f.queued, "--state", "broken"]),
        ),
        cli(
            "cancel --state that cancel never acts on",
            "--state FAILED: cancel acts only on orders in QUEUED, PENDING, RUNNING, CANCELLING, SUCCEEDED",
            2,
            |f| strings(&["cancel", &f.queued, "--state", "failed"]),
        ),
        // --- configuration files -----------------------------------------------------------
        cli(
            "config: unknown key",
            "metrics.lisen: unknown key; remove it or check its spelling",
            2,
            |f| {
                submit_with(f.config_with(
                    "unknown-key",
                    "listen = \"127.0.0.1:0\"",
                    "lisen = \"127.0.0.1:0\"",
                ))
            },
        ),
        cli(
            "config: wrong type",
            "queue.namespace: invalid type: integer `7`, expected a string",
            2,
            |f| {
                submit_with(f.config_with(
                    "wrong-type",
                    &format!("namespace = \"{NAMESPACE}\""),
                    "namespace = 7",
                ))
            },
        ),
        cli(
            "config: a zero value:compute timeout",
            "earthengine.compute_timeout_secs: must be at least 1",
            2,
            |f| {
                submit_with(f.config_with(
                    "zero-compute-timeout",
                    "timeout_secs = 5",
                    "timeout_secs = 5\ncompute_timeout_secs = 0",
                ))
            },
        ),
        cli(
            "config: missing bucket",
            "export.bucket: is required",
            2,
            |f| submit_with(f.config_with("no-bucket", &format!("bucket = \"{BUCKET}\""), "")),
        ),
        cli(
            "config: unreadable service-account key",
            "earthengine.credentials: cannot read the service-account key",
            2,
            |f| {
                // Root reads a file whatever its mode; a directory cannot be read by anyone.
                let key = f.dir.path().join("key.json");
                if f.root {
                    std::fs::create_dir_all(&key).unwrap();
                } else {
                    std::fs::write(&key, "{}").unwrap();
                    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).unwrap();
                }
                submit_with(f.config_with(
                    "unreadable-key",
                    "credentials = \"none\"",
                    &format!("credentials = \"{}\"", key.display()),
                ))
            },
        ),
        cli(
            "config: a scope that is not a scope URL",
            "earthengine.scopes: \"earthengine\" is not a Google OAuth scope (https://www.googleapis.com/auth/NAME); list OAuth scope URLs",
            2,
            |f| {
                submit_with(f.config_with(
                    "bad-scope",
                    "credentials = \"none\"",
                    "credentials = \"none\"\nscopes = [\"earthengine\"]",
                ))
            },
        ),
        cli(
            "config: malformed TOML",
            "toml: malformed TOML (line 11)",
            2,
            |f| submit_with(f.config_with("malformed", "[export]", "[export")),
        ),
        cli("config: missing file", "cannot read", 2, |f| {
            submit_with(f.dir.path().join("absent.toml").display().to_string())
        }),
        cli(
            "config: template names an unknown key",
            "tracking.template: template \"T_{bogus}\" names unknown key {bogus}",
            2,
            |f| submit_with(f.config_plus("template", "[tracking]\ntemplate = \"T_{bogus}\"\n")),
        ),
        cli(
            "config: a name template that cannot tell tiles apart",
            "export.name_template: names two orders of different collections alike",
            2,
            |f| {
                submit_with(f.config_with(
                    "fixed-name",
                    &format!("bucket = \"{BUCKET}\""),
                    &format!("bucket = \"{BUCKET}\"\nname_template = \"fixed_{{date_start}}\""),
                ))
            },
        ),
        cli(
            "config: a tracking template that is no file name",
            "tracking.template: template \"..\" renders to \"..\", which contains '..'",
            2,
            |f| submit_with(f.config_plus("dot-dot", "[tracking]\ntemplate = \"..\"\n")),
        ),
        cli(
            "config: an EECU budget of zero",
            "error: limits.eecu_hours_per_day: 0 is no budget: give a positive number of EECU-hours, or remove the key for none",
            2,
            |f| submit_with(f.config_plus("eecu-budget", "[limits]\neecu_hours_per_day = 0\n")),
        ),
        cli(
            "config: an EECU window of zero seconds",
            "error: limits.eecu_window_secs: must be at least 1 (86400, a day, is the default)",
            2,
            |f| submit_with(f.config_plus("eecu-window", "[limits]\neecu_window_secs = 0\n")),
        ),
        cli(
            "worker flag: zero EE requests per second",
            "limits.ee_requests_per_second: must be at least 1",
            2,
            |_| strings(&["worker", "--ee-requests-per-second", "0"]),
        ),
        cli(
            "submit: more orders than a submission may hold",
            "is more than one submission may hold (5000000)",
            2,
            |_| {
                strings(&[
                    "submit",
                    "--collection",
                    LC08,
                    "--rows",
                    "0-21",
                    "--cols",
                    "0-32",
                    "--start",
                    "1900-01-01",
                    "--end",
                    "2024-12-31",
                    "--freq",
                    "1D",
                ])
            },
        ),
        cli(
            "config: grid res 0",
            "error: grid.res: must be two positive pixel sizes",
            2,
            |f| {
                submit_with(f.config_plus(
                "grid-res",
                "[grid]\ncrs = \"EPSG:5070\"\nul = [0.0, 0.0]\nres = [0.0, 30.0]\nsize = [100, 100]\nlimits = [[0, 3], [0, 3]]\n",
            ))
            },
        ),
        cli(
            "config: grid limits reversed",
            "error: grid.limits: each range must be [min, max]",
            2,
            |f| {
                submit_with(f.config_plus(
                "grid-limits",
                "[grid]\ncrs = \"EPSG:5070\"\nul = [0.0, 0.0]\nres = [30.0, 30.0]\nsize = [100, 100]\nlimits = [[5, 3], [0, 3]]\n",
            ))
            },
        ),
        cli(
            "config: bad collection filter",
            "collections.\"LANDSAT/LC08/C02/T1_L2\".filters: filter \"CLOUD_COVER ~ 3\"",
            2,
            |f| {
                submit_with(f.config_plus(
                    "filter",
                    "[collections.\"LANDSAT/LC08/C02/T1_L2\"]\nfilters = [\"CLOUD_COVER ~ 3\"]\n",
                ))
            },
        ),
        cli(
            "config: queue URL scheme",
            "queue.url: postgres://u:***@db.example/cedar is not a redis://, rediss:// or sqlite:// URL",
            2,
            |f| {
                let url = format!("sqlite://{}", f.db.display());
                submit_with(f.config_with(
                    "queue-scheme",
                    &url,
                    "postgres://u:hunter2@db.example/cedar",
                ))
            },
        ),
        cli(
            "config: download verify",
            "download.verify: \"sha256\" is not one of \"crc32c\", \"both\"",
            2,
            |f| {
                submit_with(f.config_with(
                    "download-verify",
                    "[download]\n",
                    "[download]\nverify = \"sha256\"\n",
                ))
            },
        ),
        cli(
            "config: download concurrency",
            "download.concurrency: 0 is out of range; give 1 to 64",
            2,
            |f| {
                submit_with(f.config_with(
                    "download-concurrency",
                    "[download]\n",
                    "[download]\nconcurrency = 0\n",
                ))
            },
        ),
        cli(
            "config: metrics listen address",
            "metrics.listen: \"0.0.0.0\" is not a socket address",
            2,
            |f| {
                submit_with(f.config_with(
                    "metrics-listen",
                    "listen = \"127.0.0.1:0\"",
                    "listen = \"0.0.0.0\"",
                ))
            },
        ),
        cli(
            "config: web console open to other hosts without a token",
            "web.listen: \"0.0.0.0:8080\" is reachable from other hosts, but web.token is unset",
            2,
            |f| {
                let path = f.config_plus("web-open", "[web]\nlisten = \"0.0.0.0:8080\"\n");
                strings(&["--config", &path, "config", "check"])
            },
        ),
        cli(
            "config: web actions without a token",
            "web.allow_actions: needs web.token",
            2,
            |f| {
                let path = f.config_plus("web-actions", "[web]\nallow_actions = true\n");
                strings(&["--config", &path, "config", "check"])
            },
        ),
        cli(
            "config: duplicate ingest names",
            "ingest: two entries are named \"monthly\"",
            2,
            |f| {
                let entry = "[[ingest]]\nname = \"monthly\"\nschedule = \"0 0 6 * * *\"\ncollections = [\"LANDSAT/LC08/C02/T1_L2\"]\ntiles = [\"3,10\"]\nfreq = \"1MS\"\n";
                submit_with(f.config_plus("ingest-dup", &format!("{entry}{entry}")))
            },
        ),
        cli(
            "config: bad cron",
            "ingest[0].schedule: \"every day\" is not a cron expression",
            2,
            |f| {
                submit_with(f.config_plus(
                    "ingest-cron",
                    "[[ingest]]\nname = \"monthly\"\nschedule = \"every day\"\ncollections = [\"LANDSAT/LC08/C02/T1_L2\"]\ntiles = [\"3,10\"]\nfreq = \"1MS\"\n",
                ))
            },
        ),
        cli(
            "config: ingest workload_tag outside EE's rule",
            "ingest[0].workload_tag: \"L8-Monthly\" is not an Earth Engine workload tag",
            2,
            |f| {
                submit_with(f.config_plus(
                    "ingest-tag",
                    "[[ingest]]\nname = \"monthly\"\nschedule = \"0 0 6 * * *\"\ncollections = [\"LANDSAT/LC08/C02/T1_L2\"]\ntiles = [\"3,10\"]\nfreq = \"1MS\"\nworkload_tag = \"L8-Monthly\"\n",
                ))
            },
        ),
        cli(
            "config: TLS CA file with a plain redis:// URL",
            "queue.tls_ca_file: is only used with a rediss:// (TLS) queue.url",
            2,
            |f| {
                let url = format!("sqlite://{}", f.db.display());
                submit_with(f.config_with(
                    "tls-ca-plain",
                    &format!("url = \"{url}\""),
                    "url = \"redis://127.0.0.1:6379\"\ntls_ca_file = \"/etc/hostname\"",
                ))
            },
        ),
        cli(
            "config: store URL names another bucket",
            "store.url: \"gs://other-bucket\" names bucket \"other-bucket\", but EE exports into export.bucket \"cedar-bad-input\"",
            2,
            |f| {
                let url = format!("url = \"file://{}\"", f.bucket.display());
                let path = f.config_with("other-bucket", &url, "url = \"gs://other-bucket\"");
                strings(&["--config", &path, "config", "check"])
            },
        ),
        // --- Earth Engine answers ----------------------------------------------------------
        lib(
            "EE: malformed JSON",
            "Earth Engine projects.getConfig: unexpected response (HTTP 200)",
            Want::Fatal,
            |f| Box::pin(call_ee(f, "malformed", EeCall::Config)),
        ),
        lib(
            "EE: export answer without an operation name",
            "Earth Engine image:export: unexpected response (HTTP 200): the operation has no name",
            Want::Fatal,
            |f| Box::pin(call_ee(f, "nameless", EeCall::Export)),
        ),
        lib(
            "EE: HTML error page",
            "Earth Engine operations.list: HTTP 503: non-JSON error body: <html><head><title>Error 503",
            Want::Retryable,
            |f| Box::pin(call_ee(f, "html", EeCall::List)),
        ),
        lib(
            "EE: HTML page with 200",
            "Earth Engine operations.list: unexpected response (HTTP 200)",
            Want::Fatal,
            |f| Box::pin(call_ee(f, "html200", EeCall::List)),
        ),
        lib(
            "EE: 400 with Google's error body",
            "Earth Engine image:export: HTTP 400 INVALID_ARGUMENT: Image.select: Pattern 'SR_B99' did not match any bands.",
            Want::Fatal,
            |f| Box::pin(call_ee(f, "invalid", EeCall::Export)),
        ),
        lib(
            "EE: 401",
            "Earth Engine projects.getConfig: HTTP 401 UNAUTHENTICATED: Request had invalid authentication credentials.",
            Want::Fatal,
            |f| Box::pin(call_ee(f, "unauthenticated", EeCall::Config)),
        ),
        lib(
            "EE: 403",
            "Earth Engine image:export: HTTP 403 PERMISSION_DENIED: Permission 'earthengine.exports.create' denied",
            Want::Fatal,
            |f| Box::pin(call_ee(f, "denied", EeCall::Export)),
        ),
        case(
            "EE: 400 on export through a worker fails the order",
            "Earth Engine image:export: HTTP 400 INVALID_ARGUMENT: Image.select: Pattern 'SR_B99' did not match any bands.",
            Want::OrderFailed,
            |f| Box::pin(worker_meets_ee_400(f)),
        ),
        // --- the store -----------------------------------------------------------------------
        lib(
            "store: destination not writable",
            if f.root {
                // Root writes into a read-only directory; a path under a regular file stops
                // everyone, and here the file is the one downloaded earlier.
                "kept.tif/sub/T/a.tif: Not a directory"
            } else {
                "permission denied"
            },
            Want::Fatal,
            |f| {
                Box::pin(async move {
                    let (bucket, objects) = memory_bucket(&[("x/a.tif", vec![7; 1000])]).await;
                    let root = if f.root {
                        f.kept.join("sub")
                    } else {
                        let ro = f.dir.path().join("read-only-dest");
                        std::fs::create_dir_all(&ro).unwrap();
                        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555))
                            .unwrap();
                        ro
                    };
                    download(&bucket, &Destination::local(root), &objects).await
                })
            },
        ),
        lib(
            "store: disk full",
            "no space left on the device holding it",
            Want::Fatal,
            |f| {
                Box::pin(async move {
                    let (bucket, objects) =
                        memory_bucket(&[("x/big.tif", vec![1; 256 * 1024])]).await;
                    let at = f.dir.path().join("tiny-disk");
                    match TinyDisk::mount(at.clone()) {
                        Some(disk) => {
                            let r = download(&bucket, &Destination::local(&at), &objects).await;
                            // Nothing half-written is left on the full disk.
                            let left = files(&at);
                            drop(disk);
                            assert!(left.is_empty(), "left on the full disk: {left:?}");
                            r
                        }
                        None => {
                            eprintln!(
                                "mount -t tmpfs is not allowed here; an object store reporting ENOSPC stands in"
                            );
                            let dest = Destination::object_store(
                                Arc::new(FailingStore { kind: "full" }),
                                Default::default(),
                            );
                            download(&bucket, &dest, &objects).await
                        }
                    }
                })
            },
        ),
        lib(
            "store: object store refuses the write",
            "permission denied: 403 Forbidden",
            Want::Fatal,
            |_| {
                Box::pin(async move {
                    let (bucket, objects) = memory_bucket(&[("x/a.tif", vec![7; 1000])]).await;
                    let dest = Destination::object_store(
                        Arc::new(FailingStore { kind: "denied" }),
                        Default::default(),
                    );
                    download(&bucket, &dest, &objects).await
                })
            },
        ),
        lib(
            "store: bucket listing denied",
            "list gs://denied/x/y: HTTP 403: cedar@example.iam.gserviceaccount.com does not have storage.objects.list access",
            Want::Fatal,
            |f| Box::pin(list_bucket(f, "denied")),
        ),
        lib(
            "store: bucket listing unavailable",
            "list gs://overloaded/x/y: HTTP 503: Backend Error",
            Want::Retryable,
            |f| Box::pin(list_bucket(f, "overloaded")),
        ),
        lib(
            "store: an HTML page from a server that is not Cloud Storage",
            "list gs://html/x/y: HTTP 404: <!DOCTYPE html> <html> <head><title>404 Not Found</title></head>",
            Want::Fatal,
            |f| Box::pin(list_bucket(f, "html")),
        ),
        // --- the queue URL: Redis down, or not Redis ---------------------------------------------
        cli(
            "Redis down: worker",
            format!(
                "error: queue.url {refused_shown}: nothing listens there (connection refused); start Redis, or point queue.url at a Redis server"
            ),
            1,
            move |f| queue_command(f, "redis-down-worker", &refused_redis, &["worker"]),
        ),
        cli(
            "Redis down: submit",
            format!(
                "error: queue.url {refused_shown2}: nothing listens there (connection refused)"
            ),
            1,
            move |f| submit_with(with_queue_url(f, "redis-down-submit", &refused_redis2)),
        ),
        cli(
            "Redis down: list",
            format!(
                "error: queue.url {refused_shown3}: nothing listens there (connection refused)"
            ),
            1,
            move |f| queue_command(f, "redis-down-list", &refused_redis3, &["list"]),
        ),
        cli(
            "Redis URL at an HTTP server: submit",
            http_not_redis(f.http),
            1,
            |f| {
                submit_with(with_queue_url(
                    f,
                    "redis-http-submit",
                    &format!("redis://{}", f.http),
                ))
            },
        ),
        cli(
            "Redis URL at an HTTP server: worker",
            http_not_redis(f.http),
            1,
            |f| {
                queue_command(
                    f,
                    "redis-http-worker",
                    &format!("redis://{}", f.http),
                    &["worker"],
                )
            },
        ),
        cli(
            "Redis URL at an HTTP server: status",
            http_not_redis(f.http),
            1,
            |f| {
                queue_command(
                    f,
                    "redis-http-status",
                    &format!("redis://{}", f.http),
                    &["status", "NOPE"],
                )
            },
        ),
        cli(
            "Redis URL at an HTTP server: list",
            http_not_redis(f.http),
            1,
            |f| {
                queue_command(
                    f,
                    "redis-http-list",
                    &format!("redis://{}", f.http),
                    &["list"],
                )
            },
        ),
        cli(
            "Redis URL at a service that says nothing: submit",
            silent_not_redis(f.silent),
            1,
            |f| {
                submit_with(with_queue_url(
                    f,
                    "redis-silent-submit",
                    &format!("redis://{}", f.silent),
                ))
            },
        ),
        cli(
            "Redis URL at a service that says nothing: list",
            silent_not_redis(f.silent),
            1,
            |f| {
                queue_command(
                    f,
                    "redis-silent-list",
                    &format!("redis://{}", f.silent),
                    &["list"],
                )
            },
        ),
        cli(
            "rediss:// URL at a Redis without TLS",
            format!(
                "error: queue.url rediss://{}: the server there speaks Redis without TLS; write redis:// instead of rediss://",
                f.plain_redis
            ),
            1,
            |f| {
                queue_command(
                    f,
                    "rediss-plain",
                    &format!("rediss://{}", f.plain_redis),
                    &["list"],
                )
            },
        ),
        // --- the queue URL: an SQLite path that cannot hold the database -------------------------
        case(
            "config: queue.url is /dev/null",
            "error: queue.url: /dev/null is a character device, not a database file; point queue.url at a file",
            Want::Exit(2),
            |f| {
                Box::pin(async move {
                    // SQLite would write its journal beside the device.
                    let journal = std::path::Path::new("/dev/null-journal");
                    let existed = journal.exists();
                    let out = f
                        .run(&submit_with(with_queue_url(
                            f,
                            "dev-null",
                            "sqlite:///dev/null",
                        )))
                        .await;
                    assert!(
                        existed || !journal.exists(),
                        "/dev/null-journal was created"
                    );
                    out
                })
            },
        ),
        cli(
            "config: queue.url is a directory",
            "queue-dir is a directory, not a database file",
            2,
            |f| {
                let dir = f.dir.path().join("queue-dir");
                std::fs::create_dir_all(&dir).unwrap();
                queue_command(
                    f,
                    "queue-dir",
                    &format!("sqlite://{}", dir.display()),
                    &["list"],
                )
            },
        ),
        cli(
            "config: queue.url is a FIFO",
            "queue.fifo is a FIFO (named pipe), not a database file",
            2,
            |f| {
                let fifo = f.dir.path().join("queue.fifo");
                if !fifo.exists() {
                    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
                    assert!(made.success(), "mkfifo {}", fifo.display());
                }
                queue_command(
                    f,
                    "queue-fifo",
                    &format!("sqlite://{}", fifo.display()),
                    &["worker"],
                )
            },
        ),
        case(
            "queue.url in a directory that does not exist",
            "no-such-dir does not exist; create it, or point queue.url at a file in an existing directory",
            Want::Exit(1),
            |f| {
                Box::pin(async move {
                    let dir = f.dir.path().join("no-such-dir");
                    let url = format!("sqlite://{}", dir.join("cedar.db").display());
                    let out = f
                        .run(&submit_with(with_queue_url(f, "queue-no-dir", &url)))
                        .await;
                    assert!(!dir.exists(), "{} was created", dir.display());
                    out
                })
            },
        ),
        case(
            "queue.url in a directory that cannot be written",
            if f.root {
                // Root writes into a read-only directory; a path under a regular file stops
                // everyone, and here the file is the one downloaded earlier.
                "kept.tif is not a directory; point queue.url at a file in a directory"
            } else {
                "Permission denied"
            },
            Want::Exit(1),
            |f| {
                Box::pin(async move {
                    let db = if f.root {
                        f.kept.join("cedar.db")
                    } else {
                        let ro = f.dir.path().join("read-only-queue");
                        std::fs::create_dir_all(&ro).unwrap();
                        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555))
                            .unwrap();
                        ro.join("cedar.db")
                    };
                    let url = format!("sqlite://{}", db.display());
                    let out = f
                        .run(&submit_with(with_queue_url(f, "queue-ro", &url)))
                        .await;
                    assert!(!db.exists(), "{} was created", db.display());
                    out
                })
            },
        ),
        cli(
            "config: sqlite:// names no file",
            "error: queue.url: \"sqlite://\" names no database file",
            2,
            |f| submit_with(with_queue_url(f, "sqlite-bare", "sqlite://")),
        ),
        // --- environment overrides ----------------------------------------------------------------
        case(
            "environment: a bad value for list names its variable, not the file",
            "error: queue.namespace: \"bad ns\" must be non-empty letters, digits, '-', '_', '.' or ':' (set by the environment variable CEDAR__QUEUE__NAMESPACE)",
            Want::Exit(2),
            |f| {
                Box::pin(async move {
                    f.run_with_env(
                        &strings(&["list"]),
                        &[("CEDAR__QUEUE__NAMESPACE", "bad ns")],
                    )
                    .await
                })
            },
        ),
        case(
            "environment: a bad value for submit names its variable, not the file",
            "error: worker.lease_secs: invalid value: integer `-5`, expected u64; see config/default.toml for the expected type (set by the environment variable CEDAR__WORKER__LEASE_SECS)",
            Want::Exit(2),
            |f| {
                Box::pin(async move {
                    f.run_with_env(
                        &submit(&["--tile", "3,10"]),
                        &[("CEDAR__WORKER__LEASE_SECS", "-5")],
                    )
                    .await
                })
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gives_one_clear_message_and_loses_nothing() {
    let f = Fixture::start().await;
    let before = f.preserved().await;
    assert_eq!(before.submissions, vec![f.queued.clone()]);
    let queued = before.counts.get(&OrderState::Queued).copied().unwrap_or(0);
    assert!(queued > 0, "{before:?}");
    assert_eq!(before.depths[0].backlog, queued, "{before:?}");
    let table = table(&f);
    assert!(table.len() >= 30, "{} rows", table.len());
    let mut failures = Vec::new();
    for row in &table {
        let out = (row.action)(&f).await;
        let mut wrong = Vec::new();
        if out.got != row.want {
            wrong.push(format!("ended {:?}, expected {:?}", out.got, row.want));
        }
        if !out.message.contains(&row.expect) {
            wrong.push(format!("message lacks {:?}", row.expect));
        }
        if !out.single {
            wrong.push("not exactly one message".to_string());
        }
        if out.message.contains("hunter2") {
            wrong.push("the password is printed".to_string());
        }
        let after = f.preserved().await;
        if after != before {
            wrong.push(format!(
                "state changed:\nbefore {before:?}\nafter  {after:?}"
            ));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: {}\n  got: {}",
                row.name,
                wrong.join("; "),
                out.message.trim_end().replace('\n', "\n       ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}
