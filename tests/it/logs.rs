//! Secrets never reach logs, errors or `config` output: the binary runs with debug logging in
//! JSON, a Redis URL with a password and a real service-account key (made with openssl), and
//! everything it prints is searched for the password, the key and any token.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cedar::emulator::{self, EmulatorOptions};
use object_store::ObjectStore;
use object_store::memory::InMemory;

use crate::support::{Namespace, TestConfig, cedar_command, free_port, redis_url, rsa_key};

/// Runs `cedar` with debug JSON logs; returns stdout + stderr and the exit code.
fn run(
    dir: &Path,
    config: &Path,
    args: &[&str],
    kill_after: Option<Duration>,
) -> (String, Option<i32>) {
    let mut cmd = cedar_command();
    cmd.current_dir(dir)
        .arg("--config")
        .arg(config)
        .arg("--log-format")
        .arg("json")
        .args(args)
        .env("CEDAR_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("run cedar");
    let pid = child.id();
    let stopper = kill_after.map(|after| {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        })
    });
    let out = child.wait_with_output().unwrap();
    if let Some(s) = stopper {
        s.join().unwrap();
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.code())
}

/// Fails naming the secret if `output` holds the password, any line of the key's body, a token
/// or the signed assertion that buys one.
fn assert_no_secrets(what: &str, output: &str, password: &str, key_pem: &str) {
    assert!(
        !output.contains(password),
        "{what} printed the Redis password:\n{output}"
    );
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(
            !output.contains(line),
            "{what} printed part of the private key ({line}):\n{output}"
        );
    }
    assert!(
        !output.contains("PRIVATE KEY"),
        "{what} printed the private key:\n{output}"
    );
    for token in ["ya29.", "Bearer ", "bearer ", "assertion=", "eyJhbGci"] {
        assert!(
            !output.contains(token),
            "{what} printed a credential ({token}):\n{output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_errors_or_config_output() {
    let dir = tempfile::tempdir().unwrap();
    let (key_pem, _) = rsa_key(dir.path(), "key");
    // The emulator is the token endpoint, so a worker that runs really holds a token.
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let emulator = emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        store,
        EmulatorOptions {
            require_auth: true,
            ..EmulatorOptions::default()
        },
    )
    .await
    .unwrap();
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "cedar-logs",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": key_pem,
        "client_email": "cedar@cedar-logs.iam.gserviceaccount.com",
        "client_id": "123456789012345678901",
        "token_uri": format!("{}/token", emulator.url()),
    });
    let key_path = dir.path().join("service-account.json");
    std::fs::write(&key_path, serde_json::to_vec_pretty(&key).unwrap()).unwrap();

    let password = format!("pw-{:016x}-never-print", rand::random::<u64>());
    let namespace = Namespace::new("logs");
    let write_config = |name: &str, queue_url: &str| {
        TestConfig {
            project: "cedar-logs".to_owned(),
            endpoint: emulator.url(),
            credentials: key_path.display().to_string(),
            timeout_secs: 5,
            queue_url: queue_url.to_owned(),
            namespace: namespace.name.clone(),
            bucket: "cedar-logs-bucket".to_owned(),
            file_dimensions: None,
            store_url: "memory:///".to_owned(),
            dest: dir.path().join("dest").display().to_string(),
            ..TestConfig::default()
        }
        .write(dir.path().join(name))
    };
    let unreachable = write_config(
        "unreachable.toml",
        &format!("redis://:{password}@127.0.0.1:{}/0", free_port()),
    );

    let (out, code) = run(dir.path(), &unreachable, &["config", "check"], None);
    assert_eq!(code, Some(0), "{out}");
    assert_no_secrets("config check", &out, &password, &key_pem);

    let (out, code) = run(dir.path(), &unreachable, &["config", "show"], None);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(":***@127.0.0.1"),
        "config show redacts the password:\n{out}"
    );
    assert_no_secrets("config show", &out, &password, &key_pem);

    let (out, code) = run(
        dir.path(),
        &unreachable,
        &["worker"],
        Some(Duration::from_secs(30)),
    );
    assert_eq!(
        code,
        Some(1),
        "a worker without Redis must fail, not hang:\n{out}"
    );
    assert!(
        out.contains("redis://:***@127.0.0.1"),
        "the error names the redacted URL:\n{out}"
    );
    assert_no_secrets("worker (Redis unreachable)", &out, &password, &key_pem);

    // A worker that runs: it signs an assertion, gets a token and calls EE with it.
    let reachable = write_config("reachable.toml", &redis_url());
    let (out, _) = run(
        dir.path(),
        &reachable,
        &["worker", "--drain-secs", "1"],
        Some(Duration::from_secs(4)),
    );
    let stats = emulator.stats();
    // With require_auth, a 200 from EE means a token was fetched and sent.
    assert!(
        stats.requests.values().sum::<u64>() >= 2 && stats.responses.get("200") >= Some(&2),
        "the worker never reached EE with a token: {stats:?}\n{out}"
    );
    assert!(out.contains("worker starting"), "{out}");
    assert_no_secrets("worker (running)", &out, &password, &key_pem);
}
