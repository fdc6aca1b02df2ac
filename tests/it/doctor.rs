//! `cedar doctor` against real servers on loopback: it passes against the EE emulator with a
//! folder bucket and an SQLite queue, and with gcp-storage-emulator and Redis; each thing that
//! is wrong (the project, an unreachable Earth Engine, a bucket refusing writes, Redis down)
//! gives its one `FAIL` line with the fix, every other check still runs, and the exit is 1.

use std::net::SocketAddr;
use std::path::Path;

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cedar::emulator::EmulatorOptions;

use crate::support::{
    Emulated, GcsEmulator, Namespace, Run, TestConfig, cedar_command, files, free_port, redis_url,
    run,
};

/// Every check, in the order doctor prints them.
const CHECKS: [&str; 8] = [
    "config",
    "credentials",
    "token",
    "earthengine",
    "bucket",
    "bucket write",
    "destination",
    "queue",
];

/// `cedar --config CONFIG doctor` with `env` added to a clean environment.
async fn doctor(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Run {
    let mut cmd = cedar_command();
    cmd.current_dir(dir)
        .arg("--config")
        .arg(config)
        .arg("doctor")
        .envs(env.iter().copied());
    run(cmd).await
}

/// The check each line of stdout is about, and whether it passed; the run must have printed
/// exactly one line per check, in order.
fn verdicts(run: &Run) -> Vec<(&'static str, bool)> {
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), CHECKS.len(), "one line per check: {run:?}");
    CHECKS
        .iter()
        .zip(&lines)
        .map(|(check, line)| {
            if line.starts_with(&format!("ok   {check}: ")) {
                (*check, true)
            } else if line.starts_with(&format!("FAIL {check}: ")) {
                (*check, false)
            } else {
                panic!("line for {check:?} is {line:?}: {run:?}")
            }
        })
        .collect()
}

fn assert_passes(run: &Run) {
    assert!(
        verdicts(run).iter().all(|(_, ok)| *ok),
        "every check passes: {run:?}"
    );
    assert_eq!(run.code, Some(0), "{run:?}");
}

/// Exactly `check` failed, its line saying `cause` and `fix`; the exit status is 1.
fn assert_fails_only(run: &Run, check: &str, cause: &str, fix: &str) {
    let failed: Vec<&str> = verdicts(run)
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(c, _)| c)
        .collect();
    assert_eq!(failed, [check], "{run:?}");
    assert_eq!(run.code, Some(1), "{run:?}");
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL "))
        .expect("the failed line");
    let (said, fixed) = (line.find(cause), line.find(fix));
    assert!(
        said.is_some_and(|c| fixed.is_some_and(|f| c < f)),
        "cause {cause:?}, then fix {fix:?}, in {line:?}"
    );
    assert!(
        line[..fixed.unwrap()].ends_with("; "),
        "`cause; fix`: {line:?}"
    );
}

/// What a doctor run leaves in the bucket and destination folders: nothing of its own.
fn assert_no_probe_left(env: &Emulated) {
    for (what, root) in [("bucket", &env.bucket), ("destination", &env.dest)] {
        let left: Vec<String> = files(root)
            .into_keys()
            .filter(|f| f.contains(".cedar-doctor"))
            .collect();
        assert!(left.is_empty(), "{what}: {left:?}");
    }
}

#[tokio::test]
async fn doctor_passes_against_the_emulator_with_a_folder_bucket_and_sqlite() {
    let env = Emulated::start(EmulatorOptions {
        project: Some("cedar-e2e".to_owned()),
        ..EmulatorOptions::default()
    })
    .await;
    let db = env.path("cedar.db");
    let config = TestConfig {
        project: "cedar-e2e".to_owned(),
        ..env.config(
            "cedar-doctor",
            &format!("sqlite://{}", db.display()),
            "doctor",
        )
    }
    .write(env.path("cedar.toml"));

    let first = doctor(env.dir.path(), &config, &[]).await;
    assert_passes(&first);
    assert!(
        first.stdout.contains("maxConcurrentExports 2")
            && first.stdout.contains("does not exist yet"),
        "{first:?}"
    );
    assert!(!db.exists(), "doctor does not create the queue");
    assert_no_probe_left(&env);

    cedar::queue::Connection::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let again = doctor(env.dir.path(), &config, &[]).await;
    assert_passes(&again);
    assert!(
        again
            .stdout
            .contains(&format!("SQLite file {} answers", db.display())),
        "{again:?}"
    );
    assert_no_probe_left(&env);
}

#[tokio::test]
async fn doctor_passes_against_the_emulator_with_gcp_storage_emulator_and_redis() {
    let env = Emulated::start(EmulatorOptions::default()).await;
    let gcs = GcsEmulator::start("cedar-doctor-gcs").await;
    let namespace = Namespace::new("doctor");
    let config = TestConfig {
        store_url: format!("gs://{}", gcs.bucket),
        ..env.config(&gcs.bucket, &redis_url(), &namespace.name)
    }
    .write(env.path("cedar.toml"));
    // The way Google's libraries are pointed at an emulator: cedar fills [store] endpoint from it.
    let host = gcs.endpoint.trim_start_matches("http://").to_owned();
    let run = doctor(
        env.dir.path(),
        &config,
        &[("STORAGE_EMULATOR_HOST", host.as_str())],
    )
    .await;
    assert_passes(&run);
    assert!(
        run.stdout.contains(&format!(
            "ok   bucket write: gs://{} takes writes",
            gcs.bucket
        )) && run.stdout.contains("ok   queue: Redis at redis://"),
        "{run:?}"
    );
    let listed: serde_json::Value =
        reqwest::get(format!("{}/storage/v1/b/{}/o", gcs.endpoint, gcs.bucket))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert!(
        listed
            .get("items")
            .is_none_or(|items| items.as_array().is_some_and(Vec::is_empty)),
        "the probe is deleted: {listed}"
    );
    assert!(namespace.keys().await.is_empty(), "a PING writes nothing");
}

/// Cloud Storage that lists the bucket but refuses every upload, as Google does for an account
/// without `storage.objects.create`.
async fn read_only_storage() -> SocketAddr {
    async fn answer(uri: Uri) -> Response {
        let json = |status: StatusCode, body: serde_json::Value| {
            (
                status,
                [("content-type", "application/json")],
                body.to_string(),
            )
                .into_response()
        };
        if uri.path().starts_with("/upload/") {
            let message = "cedar@cedar-test.iam.gserviceaccount.com does not have storage.objects.create access to the Google Cloud Storage object.";
            json(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": {"code": 403, "message": message,
                    "errors": [{"domain": "global", "reason": "forbidden", "message": message}]}}),
            )
        } else if uri.path().ends_with("/o") {
            json(
                StatusCode::OK,
                serde_json::json!({"kind": "storage#objects"}),
            )
        } else {
            json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": {"code": 404, "message": "Not Found"}}),
            )
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(answer);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn each_failure_is_one_line_with_its_fix_and_exit_1() {
    // A project the account may not use, with a real service-account key: the emulator requires
    // tokens from its token endpoint and serves only its own project, as Google answers 403.
    let env = Emulated::start(EmulatorOptions {
        project: Some("cedar-right".to_owned()),
        require_auth: true,
        ..EmulatorOptions::default()
    })
    .await;
    let key = env.service_account_key();
    let sqlite = format!("sqlite://{}", env.path("cedar.db").display());
    let base = || TestConfig {
        project: "cedar-right".to_owned(),
        credentials: key.clone(),
        ..env.config("cedar-doctor", &sqlite, "doctor")
    };
    let wrong = TestConfig {
        project: "cedar-wrong".to_owned(),
        ..base()
    }
    .write(env.path("wrong-project.toml"));
    let run = doctor(env.dir.path(), &wrong, &[]).await;
    assert_fails_only(
        &run,
        "earthengine",
        "HTTP 403 PERMISSION_DENIED: Caller does not have required permission to use project cedar-wrong",
        "check that [earthengine] project = \"cedar-wrong\" is the Cloud project registered for Earth Engine, with the Earth Engine API enabled, and that the service account cedar@cedar-test.iam.gserviceaccount.com has roles/earthengine.writer",
    );
    assert!(
        run.stdout.contains(&format!(
            "ok   credentials: service-account key {key} for cedar@cedar-test.iam.gserviceaccount.com"
        )) && run.stdout.contains("ok   token: obtained for the scopes asked, https://www.googleapis.com/auth/earthengine"),
        "{run:?}"
    );
    // The same key and the right project pass.
    let right = base().write(env.path("right-project.toml"));
    assert_passes(&doctor(env.dir.path(), &right, &[]).await);

    // Nothing listens where Earth Engine should be.
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let config = TestConfig {
        endpoint: unreachable.clone(),
        ..base()
    }
    .write(env.path("unreachable.toml"));
    let run = doctor(env.dir.path(), &config, &[]).await;
    assert_fails_only(
        &run,
        "earthengine",
        &format!(
            "connection failed: error sending request for url ({unreachable}/v1/projects/cedar-right/config)"
        ),
        &format!(
            "nothing answers at [earthengine] endpoint = \"{unreachable}\": check the address, proxy and firewall"
        ),
    );

    // A bucket that lists but refuses writes (gs:// through a stand-in for Cloud Storage), with
    // an emulator that asks for no token.
    let storage = read_only_storage().await;
    let open = Emulated::start(EmulatorOptions::default()).await;
    let config = TestConfig {
        credentials: "none".to_owned(),
        store_url: "gs://cedar-doctor".to_owned(),
        ..open.config("cedar-doctor", &sqlite, "doctor")
    }
    .write(env.path("read-only.toml"));
    let run = doctor(
        env.dir.path(),
        &config,
        &[("STORAGE_EMULATOR_HOST", &storage.to_string())],
    )
    .await;
    assert_fails_only(
        &run,
        "bucket write",
        "HTTP 403: cedar@cedar-test.iam.gserviceaccount.com does not have storage.objects.create access",
        &format!("http://{storage} refuses a client without a token"),
    );
    assert!(
        run.stdout
            .contains("an account with roles/storage.objectAdmin on gs://cedar-doctor"),
        "{run:?}"
    );

    // Redis down.
    let down = format!("redis://127.0.0.1:{}", free_port());
    let config = TestConfig {
        queue_url: down.clone(),
        ..base()
    }
    .write(env.path("redis-down.toml"));
    let run = doctor(env.dir.path(), &config, &[]).await;
    assert_fails_only(
        &run,
        "queue",
        &format!("{down}: "),
        "start Redis there, or fix [queue] url",
    );
    assert_no_probe_left(&env);
    assert_no_probe_left(&open);
}
