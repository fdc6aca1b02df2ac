//! Security checks: unsafe object names never leave the destination, `/metrics` stays on
//! loopback unless configured, Redis AUTH and TLS (with a verified, private CA) work and fail
//! clearly without printing the password, and everything cedar writes to disk has sane modes.
//!
//! Each test starts what it needs on its own ports and in its own directory: `redis-server`
//! processes (killed on drop), certificates made with the `openssl` CLI, the in-process EE
//! emulator and the `cedar` binary on an SQLite queue. (Secrets in logs: see `logs.rs`.)

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cedar::config::{Config, DEFAULT_TOML};
use cedar::emulator;
use cedar::jobs::JobError;
use cedar::jobs::download::{DownloadOptions, copy_verified};
use cedar::queue::{Connection, Queue};
use cedar::store::{Destination, Expected, ExportBucket, ObjectInfo, StoreError, check_rel_path};
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::Value;

use crate::support::{
    Emulated, Process, TestConfig, clean_env, configured, files, free_port, one_tile, openssl, run,
    small_exports, wait_until,
};

const BUCKET: &str = "cedar-security";
const DEADLINE: Duration = Duration::from_secs(90);

// --- unsafe object names --------------------------------------------------------------------

/// A bucket that serves `BODY` under any name at all, even ones no real bucket would list, so
/// that only cedar's own checks stand between such a name and the file system.
#[derive(Debug)]
struct AnyNameBucket;

const BODY: &[u8] = b"not really a GeoTIFF";

#[async_trait]
impl ExportBucket for AnyNameBucket {
    async fn list(&self, _prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        Ok(Vec::new())
    }

    async fn stream(
        &self,
        _name: &str,
        _from: u64,
        _generation: Option<&str>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        Ok(stream::once(async { Ok(Bytes::from_static(BODY)) }).boxed())
    }

    async fn put(&self, _name: &str, _body: Bytes) -> Result<(), StoreError> {
        Ok(())
    }

    async fn get(&self, _name: &str) -> Result<Bytes, StoreError> {
        Ok(Bytes::from_static(BODY))
    }

    async fn delete(&self, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

fn object(name: &str) -> ObjectInfo {
    ObjectInfo {
        name: name.to_owned(),
        size: BODY.len() as u64,
        md5: None,
        crc32c: None,
        generation: None,
    }
}

/// Object names with `..`, absolute paths, NUL bytes and backslashes are refused at download
/// with a fatal error naming the object, and nothing is written anywhere: not in the
/// destination, not beside it, not at the absolute path.
#[tokio::test]
async fn unsafe_object_names_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let dest_root = dir.path().join("dest");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&dest_root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let dest = Destination::local(&dest_root);
    let absolute = format!("{}/evil.tif", outside.display());
    let names = [
        "../evil.tif".to_string(),
        "exports/../../evil.tif".to_string(),
        "exports/../../../outside/evil.tif".to_string(),
        "./evil.tif".to_string(),
        absolute.clone(),
        "/etc/evil.tif".to_string(),
        "exports//evil.tif".to_string(),
        "exports/evil\0.tif".to_string(),
        "evil\0".to_string(),
        "..\\..\\evil.tif".to_string(),
        "exports\\..\\evil.tif".to_string(),
        "exports/..".to_string(),
    ];
    for name in &names {
        let result = copy_verified(
            &AnyNameBucket,
            &dest,
            "T",
            &[object(name)],
            false,
            &DownloadOptions::default(),
        )
        .await;
        match result {
            Err(JobError::Fatal(message)) => {
                assert!(message.contains("refused"), "{name:?}: {message}");
            }
            other => panic!("{name:?} was not refused: {other:?}"),
        }
        let written = files(dir.path());
        assert!(written.is_empty(), "{name:?} wrote {written:?}");
        assert!(!Path::new(&absolute).exists());
        assert!(!Path::new("/etc/evil.tif").exists());
    }

    // The same paths relative to the destination are refused by the destination itself.
    for rel in [
        "",
        "../evil.tif",
        "T/../../evil.tif",
        "/etc/evil.tif",
        &absolute,
        "T//evil.tif",
        "T/./evil.tif",
        "T/",
        "T/evil\0.tif",
        "T\\..\\..\\evil.tif",
    ] {
        assert!(
            matches!(check_rel_path(rel), Err(StoreError::UnsafeName { .. })),
            "{rel:?} accepted"
        );
        let body = stream::once(async { Ok(Bytes::from_static(BODY)) });
        let expected = Expected {
            size: BODY.len() as u64,
            md5: None,
            crc32c: None,
        };
        let err = dest.write_verified(rel, body, expected).await.unwrap_err();
        assert!(
            matches!(err, StoreError::UnsafeName { .. }),
            "{rel:?}: {err}"
        );
        assert!(!err.is_retryable());
        assert!(matches!(
            dest.existing(rel).await,
            Err(StoreError::UnsafeName { .. })
        ));
    }
    let written = files(dir.path());
    assert!(written.is_empty(), "{written:?}");

    // A safe name next to them is written: the refusals are not a broken destination.
    copy_verified(
        &AnyNameBucket,
        &dest,
        "T",
        &[object("exports/good.tif")],
        false,
        &DownloadOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        files(dir.path()),
        BTreeMap::from([("dest/T/good.tif".to_string(), BODY.len() as u64)])
    );
}

// --- /metrics on loopback --------------------------------------------------------------------

/// The documented default and `Config::default()` both listen on loopback.
#[test]
fn metrics_listen_defaults_to_loopback() {
    let from_file = Config::from_toml("default.toml", DEFAULT_TOML, Vec::new()).unwrap();
    for listen in [&from_file.metrics.listen, &Config::default().metrics.listen] {
        let addr: SocketAddr = listen.parse().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
    }
}

/// A local address that is not loopback, if the machine has one (found without sending
/// anything: connecting a UDP socket only picks the route).
fn non_loopback_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// A worker whose configuration says nothing about `[metrics]` serves on loopback only: its log
/// names a loopback address, `/healthz` answers there, and the machine's other address refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_metrics_config_serves_on_loopback() {
    let c = Campaign::start(None).await;
    // No [metrics] section: the default applies.
    let text = c
        .config_text()
        .replace("[metrics]\nlisten = \"127.0.0.1:0\"\n", "");
    assert!(!text.contains("[metrics]"));
    std::fs::write(&c.config, text).unwrap();
    let mut worker = c.spawn_worker(None);
    let log = &worker;
    let line = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        move || async move {
            let log = log.log();
            log.lines()
                .find(|l| l.contains("serving metrics") || l.contains("cannot serve metrics"))
                .map(str::to_owned)
                .ok_or_else(|| format!("no metrics line in:\n{log}"))
        },
    )
    .await;
    // Either way the address is the default one on loopback; another process may hold the
    // port, in which case this worker runs without the endpoint.
    assert!(line.contains("127.0.0.1:9464"), "{line}");
    if line.contains("serving metrics") {
        let health = http_get("127.0.0.1:9464".parse().unwrap(), "/healthz");
        assert!(health.is_some_and(|b| b.contains("ok")), "{line}");
        if let Some(ip) = non_loopback_ip() {
            let other = SocketAddr::new(ip, 9464);
            assert!(
                TcpStream::connect_timeout(&other, Duration::from_secs(2)).is_err(),
                "/metrics is reachable on {other}"
            );
        }
    }
    worker.kill();
}

/// A plain HTTP/1.0 GET; the body, if the server answered 200.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.lines().next()?;
    status.contains(" 200 ").then_some(out)
}

// --- Redis AUTH and TLS --------------------------------------------------------------------

/// A `redis-server` of this test alone, killed when dropped.
struct RedisServer {
    _process: Process,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` with `args` on a free port (`--port` or `--tls-port` per `tls`).
    async fn start(args: &[&str], tls: bool) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(dir.path())
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(args);
        if tls {
            cmd.args(["--port", "0", "--tls-port", &port.to_string()]);
        } else {
            cmd.args(["--port", &port.to_string()]);
        }
        let process = Process::spawn(cmd, dir.path().join("redis.log"));
        wait_until(
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async {
                TcpStream::connect(("127.0.0.1", port))
                    .map(drop)
                    .map_err(|_| format!("redis-server did not listen on {port}"))
            },
        )
        .await;
        RedisServer {
            _process: process,
            port,
            _dir: dir,
        }
    }
}

/// A self-signed CA (`{name}-ca.pem`) and, signed by it, a server certificate for 127.0.0.1
/// (`{name}-server.pem`, `{name}-server.key`).
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let key = format!("{name}-server.key");
    let csr = format!("{name}-server.csr");
    let cert = format!("{name}-server.pem");
    let ext = format!("{name}-ext.cnf");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            "/CN=cedar test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
    (dir.join(ca), dir.join(cert), dir.join(key))
}

/// `requirepass`: the right password in the URL lets submit and worker in; a wrong or missing
/// one fails with one message naming `queue.url`, the password shown as `***`, never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_auth_works_with_the_password_and_fails_clearly_without_it() {
    const PASSWORD: &str = "s3cret-auth-pw";
    const WRONG: &str = "wr0ng-auth-pw";
    let redis = RedisServer::start(&["--requirepass", PASSWORD], false).await;
    let port = redis.port;
    let c = Campaign::start(Some(format!("redis://:{PASSWORD}@127.0.0.1:{port}"))).await;

    let (code, out, err) = c.cedar(&submit_args()).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let name = out.trim().to_owned();
    assert!(name.starts_with("TRACKING_"), "{out}");
    assert!(!format!("{out}{err}").contains(PASSWORD), "{out}{err}");
    let (code, out, err) = c.cedar(&["list"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&name), "{out}");

    // The worker connects with the password and starts.
    let mut worker = c.spawn_worker(None);
    c.wait_log("worker starting", &mut worker).await;
    worker.kill();
    assert!(!std::fs::read_to_string(c.log()).unwrap().contains(PASSWORD));

    for (what, url) in [
        (
            "wrong password",
            format!("redis://:{WRONG}@127.0.0.1:{port}"),
        ),
        ("no password", format!("redis://127.0.0.1:{port}")),
    ] {
        c.set_queue_url(&url);
        for args in [&submit_args()[..], &["worker"][..]] {
            let (code, out, err) = c.cedar(args).await;
            let all = format!("{out}{err}");
            assert_eq!(code, Some(1), "{what} {args:?}: {all}");
            assert_eq!(
                err.lines().filter(|l| l.starts_with("error:")).count(),
                1,
                "{what} {args:?}: {all}"
            );
            assert!(all.contains("error: queue.url redis://"), "{what}: {all}");
            assert!(
                [
                    "wrongpass",
                    "noauth",
                    "authentication failed",
                    "authentication required"
                ]
                .iter()
                .any(|m| all.to_ascii_lowercase().contains(m)),
                "{what}: the message should say authentication failed: {all}"
            );
            assert!(!all.contains(WRONG) && !all.contains(PASSWORD), "{all}");
            if what == "wrong password" {
                assert!(all.contains(&format!(":***@127.0.0.1:{port}")), "{all}");
            }
        }
    }
}

/// TLS with a private CA: `rediss://` plus `[queue] tls_ca_file` connects and verifies; without
/// the CA file (the system's trust store) or with another CA, the connection is refused because
/// the certificate cannot be verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_verifies_the_server_with_the_configured_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(certs.path(), "good");
    let (other_ca, _, _) = certificates(certs.path(), "other");
    let redis = RedisServer::start(
        &[
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ],
        true,
    )
    .await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);

    // The library: a verified connection answers; an unverifiable one is refused at once.
    let conn = Connection::open_with_ca(&url, Some(&ca)).await.unwrap();
    Queue::new(&conn, "tls").ping().await.unwrap();
    for wrong in [None, Some(other_ca.as_path())] {
        let err = tokio::time::timeout(
            Duration::from_secs(30),
            Connection::open_with_ca(&url, wrong),
        )
        .await
        .expect("a refused certificate fails within the connection timeout")
        .unwrap_err();
        let text = format!("{err}");
        assert!(
            text.to_ascii_lowercase().contains("certificate")
                || text.contains("UnknownIssuer")
                || text.contains("invalid peer"),
            "{wrong:?}: {text}"
        );
    }

    // The binary: submit and worker with the CA in the configuration.
    let c = Campaign::start(Some(url.clone())).await;
    c.set_queue_extra(&format!("tls_ca_file = \"{}\"\n", ca.display()));
    let (code, out, err) = c.cedar(&submit_args()).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let name = out.trim().to_owned();
    let (code, out, err) = c.cedar(&["status", &name]).await;
    assert_eq!(code, Some(3), "{out}{err}");
    let mut worker = c.spawn_worker(None);
    c.wait_log("worker starting", &mut worker).await;
    worker.kill();

    // Without the CA, the binary fails with one message naming queue.url.
    c.set_queue_extra("");
    let (code, out, err) = c.cedar(&["list"]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains(&format!("error: queue.url {url}")), "{err}");
    assert!(err.to_ascii_lowercase().contains("certificate"), "{err}");
}

// --- file modes --------------------------------------------------------------------------------

/// Runs a tiny campaign with `cedar submit` and `cedar worker` under `umask` and returns it with
/// its tracking name, once every order is finished and the worker is gone.
async fn campaign_under_umask(umask: &'static str) -> (Campaign, String) {
    let c = Campaign::start(None).await;
    let (code, out, err) = c.output(c.command(&submit_args(), Some(umask))).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let name = out.trim().to_owned();
    let mut worker = c.spawn_worker(Some(umask));
    let (c_ref, name_ref, log) = (&c, &name, &worker);
    wait_until(DEADLINE, Duration::from_millis(300), move || async move {
        let (_, out, _) = c_ref.cedar(&["status", name_ref, "--json"]).await;
        let status: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if status["done"] == Value::Bool(true) {
            Ok(())
        } else {
            Err(format!("{status}\n{}", log.log()))
        }
    })
    .await;
    worker.kill();
    let (_, doc, _) = c.cedar(&["show", &name]).await;
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let states: Vec<&str> = doc["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"]["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"CLEANED"), "{states:?}");
    let dest = files(&c.dest.join(&name));
    assert!(dest.keys().any(|f| f.ends_with(".tif")), "{dest:?}");
    assert!(dest.keys().any(|f| f.ends_with(".json")), "{dest:?}");
    let tracking = files(&c.bucket.join("CEDAR_TRACKING"));
    assert!(
        tracking.contains_key(&format!("{name}.json")),
        "{tracking:?}"
    );
    (c, name)
}

/// What cedar writes itself — downloaded GeoTIFFs, metadata JSON, their folders, the SQLite
/// queue — is 0644 / 0755 or stricter even under `umask 000`: cedar sets the modes, it does not
/// lean on the umask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_and_queue_files_have_sane_modes_whatever_the_umask() {
    let (c, _) = campaign_under_umask("000").await;
    let mut bad = Vec::new();
    for root in [&c.dest, &c.state] {
        check_modes(root, &mut bad);
    }
    assert!(bad.is_empty(), "modes too open:\n{}", bad.join("\n"));
}

/// Under the usual umask (022, systemd's default) the export bucket's directory — tracking
/// documents written through `object_store`'s local file system — is sane too. (That store
/// takes its modes from the umask: under `umask 000` its files are 0666. It serves demos and
/// the emulator only; a real export bucket is Cloud Storage.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_written_has_sane_modes_under_the_usual_umask() {
    let (c, _) = campaign_under_umask("022").await;
    let mut bad = Vec::new();
    for root in [&c.dest, &c.bucket, &c.state] {
        check_modes(root, &mut bad);
    }
    assert!(bad.is_empty(), "modes too open:\n{}", bad.join("\n"));
}

/// Appends every path under `root` (itself excluded) whose mode is too open.
fn check_modes(root: &Path, bad: &mut Vec<String>) {
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let (allowed, kind) = if meta.is_dir() {
                stack.push(path.clone());
                (0o755, "dir")
            } else {
                (0o644, "file")
            };
            if mode & !allowed != 0 {
                bad.push(format!("{kind} {} is {mode:04o}", path.display()));
            }
        }
    }
}

// --- a small campaign on loopback ------------------------------------------------------------

fn submit_args() -> Vec<&'static str> {
    [&["submit"][..], &one_tile("2021-09-01")].concat()
}

/// One test's emulator, folders and configuration; the queue is SQLite unless a Redis URL is
/// given.
struct Campaign {
    emulator: emulator::RunningEmulator,
    dir: tempfile::TempDir,
    config: PathBuf,
    bucket: PathBuf,
    dest: PathBuf,
    /// The folder of the SQLite queue file.
    state: PathBuf,
    queue_url: std::sync::Mutex<String>,
    queue_extra: std::sync::Mutex<String>,
}

impl Campaign {
    async fn start(redis: Option<String>) -> Campaign {
        let Emulated {
            emulator,
            bucket,
            dest,
            dir,
        } = Emulated::start(small_exports(BUCKET)).await;
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let queue_url =
            redis.unwrap_or_else(|| format!("sqlite://{}", state.join("cedar.db").display()));
        let c = Campaign {
            emulator,
            config: dir.path().join("cedar.toml"),
            dir,
            bucket,
            dest,
            state,
            queue_url: std::sync::Mutex::new(queue_url),
            queue_extra: std::sync::Mutex::new(String::new()),
        };
        std::fs::write(&c.config, c.config_text()).unwrap();
        c
    }

    fn config_text(&self) -> String {
        TestConfig {
            project: "cedar-security".to_owned(),
            endpoint: self.emulator.url(),
            queue_url: self.queue_url.lock().unwrap().clone(),
            namespace: format!("security-{}", std::process::id()),
            queue_extra: self.queue_extra.lock().unwrap().clone(),
            bucket: BUCKET.to_owned(),
            store_url: format!("file://{}", self.bucket.display()),
            dest: self.dest.display().to_string(),
            ..TestConfig::default()
        }
        .toml()
    }

    fn set_queue_url(&self, url: &str) {
        *self.queue_url.lock().unwrap() = url.to_owned();
        std::fs::write(&self.config, self.config_text()).unwrap();
    }

    fn set_queue_extra(&self, extra: &str) {
        *self.queue_extra.lock().unwrap() = extra.to_owned();
        std::fs::write(&self.config, self.config_text()).unwrap();
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("worker.log")
    }

    /// `cedar --config … ARGS`, or under `sh -c 'umask UMASK && exec cedar …'`.
    fn command(&self, args: &[&str], umask: Option<&str>) -> Command {
        let mut cmd = if let Some(umask) = umask {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
                .arg(env!("CARGO_BIN_EXE_cedar"));
            sh
        } else {
            Command::new(env!("CARGO_BIN_EXE_cedar"))
        };
        clean_env(&mut cmd);
        configured(cmd, self.dir.path(), &self.config, args)
    }

    async fn output(&self, cmd: Command) -> (Option<i32>, String, String) {
        run(cmd).await.parts()
    }

    async fn cedar(&self, args: &[&str]) -> (Option<i32>, String, String) {
        self.output(self.command(args, None)).await
    }

    fn spawn_worker(&self, umask: Option<&str>) -> Process {
        let cmd = self.command(
            &[
                "worker",
                "--poll-interval-secs",
                "1",
                "--drain-secs",
                "1",
                "--lease-secs",
                "5",
            ],
            umask,
        );
        Process::spawn(cmd, self.log())
    }

    /// Waits until the worker's log has `needle`; fails if the worker exits first.
    async fn wait_log(&self, needle: &str, worker: &mut Process) {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = worker.log();
            if text.lines().any(|l| l.contains(needle)) {
                return;
            }
            assert!(!worker.exited(), "the worker exited:\n{text}");
            assert!(
                std::time::Instant::now() < until,
                "no {needle:?} in:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
