//! Stages hand each other their work at once: the real `cedar` binary runs a one-tile campaign
//! whose poll jobs snooze an hour (`--poll-interval-secs 3600`) and whose workers heartbeat
//! every 150 s (`--lease-secs 600`). It can only finish within a minute if the sweeper wakes the
//! poll job when it sees the EE task end, and if each stage's worker fetches the job the
//! previous stage enqueued without waiting for a heartbeat. Once on SQLite, once on Redis.

use std::time::Duration;

use cedar::emulator::EmulatorOptions;
use serde_json::{Value, json};

use crate::support::{
    Emulated, Namespace, Process, cedar_command, configured, one_tile, redis_url, run,
    small_exports, wait_until,
};

const BUCKET: &str = "cedar-handoff-bucket";

/// Submits one tile-period ([`one_tile`]) on `queue_url` / `namespace`, runs one worker, and waits
/// (at most 60 s) for the order to be CLEANED.
async fn one_tile_completes_without_waiting_out_the_poll_interval(
    env: &Emulated,
    queue_url: &str,
    namespace: &str,
) {
    let config = env
        .config(BUCKET, queue_url, namespace)
        .write(env.path("cedar.toml"));
    let cedar = |args: &[&str]| configured(cedar_command(), env.dir.path(), &config, args);
    let submitted = run(cedar(
        &[&["submit", "--json"][..], &one_tile("2021-07-31")].concat(),
    ))
    .await;
    assert_eq!(submitted.code, Some(0), "{submitted:?}");
    let name = submitted.json()["tracking_name"]
        .as_str()
        .unwrap()
        .to_owned();
    let worker = Process::spawn(
        cedar(&[
            "worker",
            "--poll-interval-secs",
            "3600",
            "--lease-secs",
            "600",
            "--drain-secs",
            "5",
        ]),
        env.path("worker.log"),
    );
    let (name, cedar, worker) = (&name, &cedar, &worker);
    let status = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async move {
            let status: Value = run(cedar(&["status", name, "--json"])).await.json();
            if status["done"] == json!(true) {
                Ok(status)
            } else {
                Err(format!("{status}\n{}", worker.tail(30)))
            }
        },
    )
    .await;
    assert_eq!(status["counts"], json!({"CLEANED": 1}), "{status}");
}

fn emulator() -> EmulatorOptions {
    EmulatorOptions {
        task_seconds: 1.0,
        ..small_exports(BUCKET)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_is_downloaded_and_cleaned_at_once_on_sqlite() {
    let env = Emulated::start(emulator()).await;
    let db = format!("sqlite://{}", env.path("cedar.db").display());
    one_tile_completes_without_waiting_out_the_poll_interval(&env, &db, "handoff").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_is_downloaded_and_cleaned_at_once_on_redis() {
    let env = Emulated::start(emulator()).await;
    let keys = Namespace::new("handoff");
    one_tile_completes_without_waiting_out_the_poll_interval(&env, &redis_url(), &keys.name).await;
}
