//! What many test modules need and each would otherwise write again: the test Redis and a
//! namespace of one test's own, the in-process EE emulator with its bucket and destination
//! folders, a gcp-storage-emulator process, a configuration file, the `cedar` binary run with a
//! clean environment, worker processes that cannot outlive their test, polling with a deadline,
//! free ports and keys.
//!
//! Every helper keeps its test isolated: its own Redis namespace (deleted with SCAN + DEL, never
//! FLUSHALL), its own temporary directory, its own port.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedar::emulator::{self, EmulatorOptions, RunningEmulator, Stats};
use object_store::local::LocalFileSystem;
use serde_json::Value;

// --- Redis ------------------------------------------------------------------------------------

/// The Redis the tests use: `CEDAR_TEST_REDIS`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("CEDAR_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A connection to the test Redis, for reading the queue's keys behind its back.
pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at CEDAR_TEST_REDIS or redis://127.0.0.1:6379")
}

/// A Redis namespace of one test alone, `cedar-test:{test}:{pid}:{random}`; dropping it deletes
/// every key under it (SCAN + DEL, never FLUSHALL), also when the test fails.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn new(test: &str) -> Namespace {
        Namespace {
            name: format!(
                "cedar-test:{test}:{}:{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
        }
    }

    /// Every key of the namespace now.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = redis_connection().await;
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.name))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.extend(page);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }
}

impl Drop for Namespace {
    /// Blocking on purpose: a drop cannot await, and the server is on loopback.
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) else {
            return;
        };
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.name))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<u64> = redis::cmd("DEL").arg(&keys).query(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

// --- the emulator and its folders --------------------------------------------------------------

/// Emulator options for a small campaign: exports to `bucket`, one-second tasks.
pub fn small_exports(bucket: &str) -> EmulatorOptions {
    EmulatorOptions {
        bucket: Some(bucket.to_owned()),
        task_seconds: 1.0,
        ..EmulatorOptions::default()
    }
}

/// Starts the in-process EE emulator on a loopback port 0, writing exports into `bucket`.
pub async fn start_emulator(bucket: &Path, options: EmulatorOptions) -> RunningEmulator {
    std::fs::create_dir_all(bucket).unwrap();
    let store = Arc::new(LocalFileSystem::new_with_prefix(bucket).unwrap());
    emulator::start("127.0.0.1:0".parse().unwrap(), store, options)
        .await
        .unwrap()
}

/// One test's emulator and temporary directory, with `bucket/` (the export bucket the emulator
/// writes to) and `dest/` (the download destination) in it.
pub struct Emulated {
    pub emulator: RunningEmulator,
    pub bucket: PathBuf,
    pub dest: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Emulated {
    pub async fn start(options: EmulatorOptions) -> Emulated {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, dest) = (dir.path().join("bucket"), dir.path().join("dest"));
        std::fs::create_dir_all(&dest).unwrap();
        let emulator = start_emulator(&bucket, options).await;
        Emulated {
            emulator,
            bucket,
            dest,
            dir,
        }
    }

    /// A path in the test's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new service-account key file whose public key this emulator trusts and whose token
    /// URI is this emulator's `/token`; returns its path.
    pub fn service_account_key(&self) -> String {
        let (private, public) = rsa_key(self.dir.path(), "sa");
        self.emulator.register_public_key_pem(&public);
        service_account_key(
            self.dir.path(),
            &private,
            &format!("{}/token", self.emulator.url()),
        )
    }

    /// The configuration pointing cedar at this emulator, bucket and destination.
    pub fn config(&self, bucket: &str, queue_url: &str, namespace: &str) -> TestConfig {
        TestConfig {
            endpoint: self.emulator.url(),
            queue_url: queue_url.to_owned(),
            namespace: namespace.to_owned(),
            bucket: bucket.to_owned(),
            store_url: format!("file://{}", self.bucket.display()),
            dest: self.dest.display().to_string(),
            ..TestConfig::default()
        }
    }
}

/// Every description was exported exactly once and its files written once.
pub fn assert_exported_once(stats: &Stats) {
    let twice: Vec<_> = stats
        .exports_by_description
        .iter()
        .filter(|(_, n)| **n != 1)
        .collect();
    assert!(twice.is_empty(), "exported more than once: {twice:?}");
    assert_eq!(
        stats.succeeded_by_description, stats.exports_by_description,
        "every export wrote its files once"
    );
}

/// Every regular file under `root` (relative path → size); nothing for a missing `root`.
pub fn files(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, path.metadata().map_or(0, |m| m.len()));
            }
        }
    }
    out
}

// --- a configuration file ----------------------------------------------------------------------

/// A test's `cedar.toml`, rendered section by section in the documented layout (a blank line
/// between sections; tests edit the text by replacing whole lines).
pub struct TestConfig {
    pub project: String,
    pub endpoint: String,
    pub credentials: String,
    pub timeout_secs: u64,
    pub queue_url: String,
    pub namespace: String,
    /// More `[queue]` lines, each ending in a newline.
    pub queue_extra: String,
    pub bucket: String,
    pub file_dimensions: Option<u32>,
    pub store_url: String,
    pub dest: String,
    /// `[metrics] listen`; no `[metrics]` section when `None`.
    pub metrics_listen: Option<String>,
}

impl Default for TestConfig {
    /// A project of its own, no credentials, 10 s timeouts, 2048-pixel files and `/metrics` on a
    /// free loopback port; the endpoint, queue, bucket, store and destination are the test's.
    fn default() -> Self {
        TestConfig {
            project: "cedar-e2e".to_owned(),
            endpoint: String::new(),
            credentials: "none".to_owned(),
            timeout_secs: 10,
            queue_url: String::new(),
            namespace: String::new(),
            queue_extra: String::new(),
            bucket: String::new(),
            file_dimensions: Some(2048),
            store_url: String::new(),
            dest: String::new(),
            metrics_listen: Some("127.0.0.1:0".to_owned()),
        }
    }
}

impl TestConfig {
    pub fn toml(&self) -> String {
        let mut out = format!(
            r#"[earthengine]
project = "{project}"
endpoint = "{endpoint}"
credentials = "{credentials}"
timeout_secs = {timeout_secs}

[queue]
url = "{queue_url}"
namespace = "{namespace}"
{queue_extra}
[export]
bucket = "{bucket}"
"#,
            project = self.project,
            endpoint = self.endpoint,
            credentials = self.credentials,
            timeout_secs = self.timeout_secs,
            queue_url = self.queue_url,
            namespace = self.namespace,
            queue_extra = self.queue_extra,
            bucket = self.bucket,
        );
        if let Some(n) = self.file_dimensions {
            out.push_str(&format!("file_dimensions = {n}\n"));
        }
        out.push_str(&format!(
            "\n[store]\nurl = \"{}\"\n\n[download]\ndest = \"{}\"\n",
            self.store_url, self.dest
        ));
        if let Some(listen) = &self.metrics_listen {
            out.push_str(&format!("\n[metrics]\nlisten = \"{listen}\"\n"));
        }
        out
    }

    /// Writes the file at `path` and returns `path`.
    pub fn write(&self, path: PathBuf) -> PathBuf {
        std::fs::write(&path, self.toml()).unwrap();
        path
    }
}

/// The Landsat 8 collection the campaign tests export.
pub const LC08: &str = "LANDSAT/LC08/C02/T1_L2";

/// `submit` arguments for tile 10,14 of [`LC08`] from 2021-07-01 to `end`: a tile-period the
/// emulator's catalogue has scenes for, so its export is attempted.
pub fn one_tile(end: &str) -> Vec<&str> {
    vec![
        "--collection",
        LC08,
        "--tile",
        "10,14",
        "--start",
        "2021-07-01",
        "--end",
        end,
    ]
}

/// `submit` arguments for the 2×2 tiles at rows 10-11, cols 14-15 of `collection`, from
/// 2021-07-01 to `end` every `freq`.
pub fn four_tiles<'a>(collection: &'a str, end: &'a str, freq: &'a str) -> Vec<&'a str> {
    vec![
        "--collection",
        collection,
        "--rows",
        "10-11",
        "--cols",
        "14-15",
        "--start",
        "2021-07-01",
        "--end",
        end,
        "--freq",
        freq,
    ]
}

// --- gcp-storage-emulator ---------------------------------------------------------------------

/// The gcp-storage-emulator binary: `CEDAR_GCS_EMULATOR`, else the project's `.venv`, else `PATH`.
fn gcs_emulator_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CEDAR_GCS_EMULATOR") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/gcp-storage-emulator");
    if venv.is_file() {
        return venv;
    }
    on_path("gcp-storage-emulator").unwrap_or_else(|| {
        panic!(
            "gcp-storage-emulator not found (CEDAR_GCS_EMULATOR unset, no {} and none on \
                 PATH): run scripts/test, which installs it into .venv",
            venv.display()
        )
    })
}

/// One gcp-storage-emulator process with one bucket, killed on drop.
pub struct GcsEmulator {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub bucket: String,
    _log_dir: tempfile::TempDir,
}

impl GcsEmulator {
    /// Starts one with the bucket `bucket`, in memory, on a free loopback port.
    pub async fn start(bucket: &str) -> GcsEmulator {
        let binary = gcs_emulator_binary();
        let port = free_port();
        let log_dir = tempfile::TempDir::new().unwrap();
        let log_path = log_dir.path().join("emulator.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(&binary)
            .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--default-bucket", bucket, "--in-memory", "-q"])
            .current_dir(log_dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = http.get(format!("{endpoint}/")).send().await
                && response.status().is_success()
            {
                break;
            }
            let exited = child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "gcp-storage-emulator on port {port} did not come up ({exited:?}); log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        GcsEmulator {
            child,
            endpoint,
            bucket: bucket.to_owned(),
            _log_dir: log_dir,
        }
    }
}

impl Drop for GcsEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- the cedar binary --------------------------------------------------------------------------

/// `cedar worker` as the daemon tests run it: fast polling, short leases, a short drain.
pub const FAST_WORKER: &[&str] = &[
    "worker",
    "--poll-interval-secs",
    "1",
    "--lease-secs",
    "5",
    "--drain-secs",
    "5",
];

/// Takes the caller's cedar settings out of `cmd`'s environment: `CEDAR_CONFIG`, every
/// `CEDAR__…` override and `STORAGE_EMULATOR_HOST`, so a developer's shell cannot change a test.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("CEDAR_CONFIG")
        .env_remove("STORAGE_EMULATOR_HOST");
    for (k, _) in std::env::vars() {
        if k.starts_with("CEDAR__") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The `cedar` binary cargo built, with a clean environment.
pub fn cedar_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cedar"));
    clean_env(&mut cmd);
    cmd
}

/// `cmd` (the `cedar` binary, or a shell that execs it) run in `dir` as
/// `--config CONFIG ARGS`, logging at info: how the campaign tests run cedar.
pub fn configured(mut cmd: Command, dir: &Path, config: &Path, args: &[&str]) -> Command {
    cmd.current_dir(dir)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("CEDAR_LOG", "info");
    cmd
}

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout as JSON; fails the test with everything printed if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// (exit code, stdout, stderr).
    pub fn parts(self) -> (Option<i32>, String, String) {
        (self.code, self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion (stdin closed, at most 60 s) without blocking the runtime the
/// emulator and other servers of the test run on.
pub async fn run(cmd: Command) -> Run {
    let what = format!("{cmd:?}");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::from(cmd)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{what} still running after 60 s"))
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// --- processes that cannot outlive their test ---------------------------------------------------

/// A child process (a worker, a server) writing stdout and stderr to a log file. Dropping it
/// SIGKILLs and reaps the process; if the test is panicking, the tail of the log is printed.
pub struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Process {
            child: Some(child),
            log,
        }
    }

    /// The process id, while the process has not been killed.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no drain, no hand-back. The process is reaped before this returns.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().unwrap();
        }
    }

    /// Whether the process has ended by itself (or was killed).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_some())
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` log events (INFO, WARN, ERROR lines; every line if there are none), headed
    /// by the log's name, for a failing test's report.
    pub fn tail(&self, n: usize) -> String {
        let log = self.log();
        // Only the log events: other output (debug prints) would push them out of the tail.
        let mut lines: Vec<&str> = log
            .lines()
            .filter(|l| ["INFO", "WARN", "ERROR"].iter().any(|w| l.contains(w)))
            .collect();
        if lines.is_empty() {
            lines = log.lines().collect();
        }
        let name = self.log.file_name().unwrap_or_default().to_string_lossy();
        format!(
            "--- {name} ---\n{}\n",
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.tail(30));
        }
    }
}

// --- waiting -----------------------------------------------------------------------------------

/// Calls `probe` every `every` until it returns `Ok`, and returns that value. `Err` says what
/// is still missing; once `within` has passed, the test fails with the last one.
pub async fn wait_until<T, F, Fut>(within: Duration, every: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(why) => assert!(
                Instant::now() < deadline,
                "still waiting after {within:?}: {why}"
            ),
        }
        tokio::time::sleep(every).await;
    }
}

// --- ports and keys ----------------------------------------------------------------------------

/// A free loopback port (bound, then released): for a server to start on, or for "nothing
/// listens here".
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The program `name` in the first directory of `PATH` that has it.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `openssl ARGS` in `dir`; it must succeed.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is needed to make test keys (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh 2048-bit RSA key pair made with openssl, as PEM: (PKCS#8 private key, SPKI public
/// key), also written to `{dir}/{name}.pem` and `{dir}/{name}.pub.pem`.
pub fn rsa_key(dir: &Path, name: &str) -> (String, String) {
    let (private, public) = (format!("{name}.pem"), format!("{name}.pub.pem"));
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &private,
        ],
    );
    openssl(dir, &["pkey", "-in", &private, "-pubout", "-out", &public]);
    (
        std::fs::read_to_string(dir.join(private)).unwrap(),
        std::fs::read_to_string(dir.join(public)).unwrap(),
    )
}

/// Writes `service-account.json` into `dir`: a service-account key of
/// `cedar@cedar-test.iam.gserviceaccount.com` holding `private_pem`, whose tokens come from
/// `token_uri` (an emulator's `/token`); returns its path.
pub fn service_account_key(dir: &std::path::Path, private_pem: &str, token_uri: &str) -> String {
    let path = dir.join("service-account.json");
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "cedar-test",
        "private_key_id": "0123456789abcdef",
        "private_key": private_pem,
        "client_email": "cedar@cedar-test.iam.gserviceaccount.com",
        "client_id": "123456789",
        "token_uri": token_uri,
    });
    std::fs::write(&path, key.to_string()).unwrap();
    path.to_str().unwrap().to_string()
}

// --- a context for library-level tests ---------------------------------------------------------

/// What a library-level test works with: a [`cedar::jobs::Context`] on an emulator and a queue
/// of its own. Dropping it deletes the Redis keys (the SQLite file goes with the folder).
pub struct ContextBench {
    pub ctx: cedar::jobs::Context,
    _keys: Namespace,
    /// The emulator and folders the context works on.
    pub env: Emulated,
}

/// A context on a fresh emulator: its bucket folder as the store, its destination folder, and
/// `queue_url` (Redis, in a namespace named after `test`) or, when empty, an SQLite file in the
/// test's folder. `edit` adjusts the configuration before it is validated.
pub async fn context_bench(
    test: &str,
    queue_url: String,
    edit: impl FnOnce(&mut cedar::config::Config),
) -> ContextBench {
    let env = Emulated::start(EmulatorOptions::default()).await;
    let keys = Namespace::new(test);
    let mut c = cedar::config::Config::default();
    c.earthengine.project = format!("{test}-test");
    c.earthengine.endpoint = env.emulator.url();
    c.earthengine.credentials = Some("none".into());
    c.export.bucket = format!("b-{test}");
    c.store.url = url::Url::from_directory_path(&env.bucket)
        .unwrap()
        .to_string();
    c.download.dest = env.dest.display().to_string();
    c.queue.url = if queue_url.is_empty() {
        format!("sqlite://{}", env.path("q.db").display())
    } else {
        queue_url
    };
    c.queue.namespace = keys.name.clone();
    edit(&mut c);
    let settings = std::sync::Arc::new(c.validate().unwrap());
    let ctx = cedar::jobs::Context::connect(settings, cedar::jobs::JobSettings::default())
        .await
        .unwrap();
    ContextBench {
        ctx,
        _keys: keys,
        env,
    }
}
