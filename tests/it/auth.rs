//! Tokens refused before they expire: the emulator revokes each token it issued after a few
//! requests and answers 401 as Google does (EE: `UNAUTHENTICATED`; the storage JSON API:
//! `authError`); cedar drops the token, takes a fresh one from the key's token endpoint and sends
//! the call once more. Only a second 401 in a row is an error, and it names the credentials and
//! the fix.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cedar::auth::{NoAuth, TokenSource, default_scopes, token_source};
use cedar::earthengine::EarthEngine;
use cedar::emulator::{ApiMethod, EmulatorOptions, Fault};
use cedar::store::{ExportBucket, GcsJsonBucket, StoreError};
use serde_json::Value;

use crate::support::{
    Emulated, FAST_WORKER, Process, assert_exported_once, cedar_command, configured, files,
    one_tile, run, small_exports, wait_until,
};

const BUCKET: &str = "cedar-auth";

/// An emulator that requires tokens and revokes each after `uses` requests or `ms` milliseconds
/// (0: never), and the path of a service-account key whose `token_uri` is the emulator's token
/// endpoint.
async fn revoking(uses: u64, ms: u64) -> (Emulated, String) {
    let env = Emulated::start(EmulatorOptions {
        require_auth: true,
        token_revoke_after_uses: uses,
        token_revoke_after_ms: ms,
        max_concurrent_exports: 8,
        ..small_exports(BUCKET)
    })
    .await;
    let key = env.service_account_key();
    (env, key)
}

fn ee(env: &Emulated, tokens: Arc<dyn TokenSource>) -> EarthEngine {
    EarthEngine::new(
        &env.emulator.url(),
        "cedar-auth",
        tokens,
        Duration::from_secs(10),
    )
    .unwrap()
}

fn unauthorized_refreshes() -> u64 {
    cedar::auth::token_refreshes()
        .iter()
        .find(|(reason, _)| *reason == "unauthorized")
        .map_or(0, |(_, n)| *n)
}

#[tokio::test]
async fn earth_engine_calls_survive_revoked_tokens_and_a_second_401_names_the_fix() {
    let (env, key) = revoking(2, 0).await;
    let client = ee(&env, token_source(Some(&key), &default_scopes()).unwrap());
    let before = unauthorized_refreshes();
    // Two uses per token: calls 3 and 5 meet a revoked token and go again with a fresh one.
    for _ in 0..5 {
        client.get_project_config().await.unwrap();
    }
    let stats = env.emulator.stats();
    assert_eq!(stats.requests.get("token"), Some(&3), "{stats:?}");
    assert_eq!(stats.requests.get("projects.getConfig"), Some(&7));
    assert_eq!(stats.responses.get("401"), Some(&2));
    assert!(unauthorized_refreshes() >= before + 2);

    // A fresh token refused too: the 401 is the caller's, with the credentials and the fix; it
    // is not retried by the queue, as a refused key does not heal by itself.
    env.emulator.inject(Fault::NextRequests {
        method: Some(ApiMethod::ProjectsGetConfig),
        count: 2,
        status: 401,
        message: None,
        processed: false,
    });
    let e = client.get_project_config().await.unwrap_err();
    assert_eq!(
        (e.http_status(), e.ee_status(), e.is_retryable()),
        (Some(401), Some("UNAUTHENTICATED"), false),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with("Earth Engine projects.getConfig: HTTP 401 UNAUTHENTICATED: Request had invalid authentication credentials.")
            && text.contains(&format!(
                "A fresh token from service-account key {key} for cedar@cedar-test.iam.gserviceaccount.com was refused too; check that the key is still active"
            ))
            && text.contains("gcloud iam service-accounts keys list"),
        "{text}"
    );
    assert!(
        !text.contains("ya29") && !text.contains("PRIVATE KEY"),
        "{text}"
    );
    let stats = env.emulator.stats();
    assert_eq!(stats.requests.get("projects.getConfig"), Some(&9));
    assert_eq!(
        stats.requests.get("token"),
        Some(&4),
        "one fresh token, once"
    );
    // The refused token is not used again: the next call takes another.
    client.get_project_config().await.unwrap();
    assert_eq!(env.emulator.stats().requests.get("token"), Some(&5));

    // Without credentials nothing can be refreshed: one request, and the same kind of message.
    let anonymous = ee(&env, Arc::new(NoAuth));
    let e = anonymous.get_project_config().await.unwrap_err();
    assert_eq!(e.http_status(), Some(401));
    assert!(
        e.to_string().contains(
            "Refused: no token was sent ([earthengine] credentials = \"none\"); set [earthengine] credentials to a service-account key path"
        ),
        "{e}"
    );
    assert_eq!(
        env.emulator.stats().requests.get("projects.getConfig"),
        Some(&11)
    );
}

#[tokio::test]
async fn cloud_storage_calls_refresh_a_revoked_token_once() {
    let (env, key) = revoking(1, 0).await;
    let tokens = token_source(Some(&key), &default_scopes()).unwrap();
    let endpoint = env.emulator.url();
    let bucket = GcsJsonBucket::new(&endpoint, BUCKET, "", tokens).unwrap();
    // One use per token: every call after the first meets a revoked token.
    bucket
        .put("t/a.json", Bytes::from_static(b"{\"a\": 1}"))
        .await
        .unwrap();
    assert_eq!(bucket.list("t/").await.unwrap().len(), 1);
    assert_eq!(
        bucket.get("t/a.json").await.unwrap().as_ref(),
        b"{\"a\": 1}"
    );
    bucket.delete("t/a.json").await.unwrap();
    assert!(bucket.list("t/").await.unwrap().is_empty());
    let stats = env.emulator.stats();
    assert_eq!(stats.storage_unauthenticated, 4, "{stats:?}");
    assert_eq!(stats.requests.get("token"), Some(&5));
    assert_eq!(stats.storage_requests.values().sum::<u64>(), 9);

    // Without a token the storage API refuses as Google does, and the error says what to set.
    let anonymous = GcsJsonBucket::new(&endpoint, BUCKET, "", Arc::new(NoAuth)).unwrap();
    let e = anonymous.list("t/").await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Status { status: 401, message, .. }
            if message.starts_with("Invalid Credentials Refused: no token was sent")),
        "{e:?}"
    );
    assert!(!e.is_retryable());
}

/// The emulator's 401s as Google sends them: the challenge header and each API's error body.
#[tokio::test]
async fn the_emulator_answers_revoked_tokens_like_google() {
    let (env, _) = revoking(1, 0).await;
    let http = reqwest::Client::new();
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", "not-a-jwt"),
    ];
    let refused = http
        .post(format!("{}/token", env.emulator.url()))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400, "a bad assertion gets no token");
    for url in [
        format!("{}/v1/projects/cedar-auth/config", env.emulator.url()),
        format!("{}/storage/v1/b/{BUCKET}/o", env.emulator.url()),
    ] {
        let r = http
            .get(&url)
            .bearer_auth("ya29.never-issued")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{url}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"https://accounts.google.com/\""
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], 401, "{body}");
        if url.contains("/storage/") {
            assert_eq!(body["error"]["message"], "Invalid Credentials");
            assert_eq!(body["error"]["errors"][0]["reason"], "authError");
        } else {
            assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
        }
    }
}

/// Runs a cedar command that prints JSON (exit 0, 1 or 3) and parses its output.
async fn json(cmd: Command) -> Value {
    let (code, out, err) = run(cmd).await.parts();
    assert!(matches!(code, Some(0 | 1 | 3)), "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"))
}

/// The whole campaign through the real binary, with tokens that stop working mid-campaign: EE
/// (export, the sweeper's operations.list) and Cloud Storage (download, clean) meet 401s, and
/// every order still ends CLEANED or EMPTY, each exported once, nothing left in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_completes_while_its_tokens_are_revoked() {
    // Each token works for 0.4 s, though it claims an hour: a worker holding 8 jobs at once
    // meets 401s from EE and Cloud Storage, concurrently, all campaign long, however fast the
    // campaign runs (a fresh token outlives the one call sent again with it).
    let (env, key) = revoking(0, 400).await;
    let db = env.path("cedar.db");
    // Port 0: the worker binds a free port and logs it (a port picked here could be taken by
    // another test's process before the worker binds it).
    let mut config = env.config(BUCKET, &format!("sqlite://{}", db.display()), "auth");
    config.credentials = key;
    config.store_url = format!("gs://{BUCKET}");
    config.metrics_listen = Some("127.0.0.1:0".to_owned());
    let toml = config.toml().replace(
        "[store]\n",
        &format!("[store]\nendpoint = \"{}\"\n", env.emulator.url()),
    );
    let config: PathBuf = env.path("cedar.toml");
    std::fs::write(&config, toml).unwrap();
    let cedar =
        |args: &[&str]| -> Command { configured(cedar_command(), env.dir.path(), &config, args) };

    let mut submit = vec!["submit", "--json"];
    submit.extend(one_tile("2021-12-31"));
    submit.extend(["--freq", "1MS"]);
    let name = json(cedar(&submit)).await["tracking_name"]
        .as_str()
        .unwrap()
        .to_owned();
    let worker = Process::spawn(cedar(FAST_WORKER), env.path("worker.log"));

    let status = wait_until(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let status = json(cedar(&["status", &name, "--json"])).await;
            if status["done"] == Value::Bool(true) {
                Ok(status)
            } else {
                Err(format!("not done: {status}\n{}", worker.tail(30)))
            }
        },
    )
    .await;

    let doc = json(cedar(&["show", &name])).await;
    let orders = doc["orders"].as_array().unwrap();
    assert_eq!(status["total"], orders.len(), "{status}");
    assert!(orders.len() > 1, "{doc}");
    let dest = files(&env.dest);
    let mut cleaned = 0;
    for order in orders {
        match order["status"]["state"].as_str().unwrap() {
            "EMPTY" => {}
            "CLEANED" => {
                cleaned += 1;
                for o in order["status"]["objects"].as_array().unwrap() {
                    let file = o["name"].as_str().unwrap().rsplit('/').next().unwrap();
                    assert_eq!(
                        dest.get(&format!("{name}/{file}")),
                        Some(&o["size"].as_u64().unwrap()),
                        "{file}"
                    );
                }
            }
            other => panic!("{order} ended {other}\n{}", worker.tail(40)),
        }
    }
    assert!(cleaned > 0, "{doc}");
    let left: Vec<_> = files(&env.bucket)
        .into_keys()
        .filter(|f| !f.starts_with("CEDAR_TRACKING/"))
        .collect();
    assert!(left.is_empty(), "left in the bucket: {left:?}");

    let stats = env.emulator.stats();
    assert_exported_once(&stats);
    assert!(
        stats.responses.get("401").copied().unwrap_or(0) > 0,
        "EE refused some token: {stats:?}"
    );
    // Whether Cloud Storage also met a revoked token here depends on timing (CI saw runs where
    // none did); its refresh on 401 is proven call by call in
    // `cloud_storage_calls_refresh_a_revoked_token_once`.
    let tokens = stats.requests["token"];
    assert!(tokens > 2, "{stats:?}");

    // The worker counted the refreshes the 401s caused.
    let log = worker.log();
    let bound = log
        .lines()
        .find(|l| l.contains("serving metrics at"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("the worker logs where it serves metrics:\n{log}"));
    let text = reqwest::get(format!("http://{bound}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refreshed: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("cedar_auth_token_refreshes_total{reason=\"unauthorized\"} "))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    assert!(refreshed >= 1.0, "{text}");
    assert!(
        !worker.log().contains("ya29."),
        "no token in the worker's log"
    );
}
