//! Exports are what they export: two deployments writing into one bucket never share an object,
//! and a submission keeps the export settings it was made with whatever config a worker has.
//!
//! Each test runs the real `cedar` binary against a real Redis (one namespace per deployment)
//! and the in-process EE emulator, whose bucket is one local directory for every deployment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Emulated, FAST_WORKER, LC08, Namespace, Process, Run, TestConfig, cedar_command, configured,
    files, one_tile, redis_url, run, wait_until,
};
use cedar::emulator::EmulatorOptions;

const BUCKET: &str = "cedar-shared-bucket";
/// A 5000-pixel tile in 2048-pixel pieces: 3 × 3 files.
const PIECES_2048: usize = 9;
/// The same tile in 1024-pixel pieces: 5 × 5 files.
const PIECES_1024: usize = 25;

/// One deployment: its namespace, configuration file and destination, its worker if started.
struct Deployment {
    worker: Option<Process>,
    namespace: Namespace,
    config: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
}

impl Deployment {
    /// A deployment named `team` on `env`'s emulator and bucket, with `extra` TOML appended.
    fn new(env: &Emulated, test: &str, team: &str, extra: &str) -> Deployment {
        let dir = env.path(team);
        let dest = dir.join("dest");
        std::fs::create_dir_all(&dest).unwrap();
        let namespace = Namespace::new(&format!("shared:{test}:{team}"));
        let mut toml = TestConfig {
            metrics_listen: None,
            dest: dest.display().to_string(),
            ..env.config(BUCKET, &redis_url(), &namespace.name)
        }
        .toml();
        toml.push_str(extra);
        let config = dir.join("cedar.toml");
        std::fs::write(&config, toml).unwrap();
        Deployment {
            worker: None,
            namespace,
            config,
            dest,
            dir,
        }
    }

    fn command(&self, config: &Path, args: &[&str]) -> Command {
        configured(cedar_command(), &self.dir, config, args)
    }

    async fn cedar(&self, args: &[&str]) -> Run {
        run(self.command(&self.config, args)).await
    }

    /// `cedar submit ARGS --json`; the tracking name.
    async fn submit(&self, args: &[&str]) -> String {
        let mut all = vec!["submit", "--json"];
        all.extend_from_slice(args);
        let run = self.cedar(&all).await;
        assert_eq!(run.code, Some(0), "submit failed: {run:?}");
        run.json()["tracking_name"].as_str().unwrap().to_owned()
    }

    /// Starts a worker reading `config` (this deployment's unless another is given).
    fn start_worker(&mut self, config: Option<&Path>) {
        let config = config.unwrap_or(&self.config).to_owned();
        let log = self.dir.join("worker.log");
        self.worker = Some(Process::spawn(self.command(&config, FAST_WORKER), log));
    }

    /// Waits until `name` is done; its `status --json`.
    async fn wait_done(&self, name: &str) -> Value {
        wait_until(
            Duration::from_secs(120),
            Duration::from_millis(500),
            || async {
                let run = self.cedar(&["status", name, "--json"]).await;
                let json = run.json();
                if json["done"] == Value::Bool(true) {
                    Ok(json)
                } else {
                    Err(format!(
                        "{name} not done: {json}\n{}",
                        self.worker.as_ref().map(|w| w.tail(20)).unwrap_or_default()
                    ))
                }
            },
        )
        .await
    }

    /// The files downloaded for `name`, by file name.
    fn downloaded(&self, name: &str) -> BTreeMap<String, u64> {
        files(&self.dest.join(name))
    }

    /// The per-image metadata JSON downloaded for `name`.
    fn metadata(&self, name: &str) -> Value {
        let file = self
            .downloaded(name)
            .into_keys()
            .find(|f| f.ends_with(".json"))
            .expect("a metadata JSON was downloaded");
        serde_json::from_slice(&std::fs::read(self.dest.join(name).join(file)).unwrap()).unwrap()
    }
}

fn state_counts(status: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(status["counts"].clone()).unwrap_or_default()
}

async fn emulated() -> Emulated {
    Emulated::start(EmulatorOptions {
        bucket: Some(BUCKET.to_owned()),
        task_seconds: 1.0,
        max_concurrent_exports: 8,
        ..EmulatorOptions::default()
    })
    .await
}

fn tifs(files: &BTreeMap<String, u64>) -> Vec<u64> {
    files
        .iter()
        .filter(|(f, _)| f.ends_with(".tif"))
        .map(|(_, n)| *n)
        .collect()
}

/// Two teams, two namespaces, one bucket, the same object templates and the same items: team A
/// exports the preset's bands, team B one band under another name. Each ends with its own
/// files — team B's pieces a fraction of team A's size, its metadata listing its one band — and
/// the bucket ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_on_one_bucket_each_end_with_their_own_files() {
    let env = emulated().await;
    let test = "two_deployments";
    let mut a = Deployment::new(&env, test, "team-a", "");
    let mut b = Deployment::new(
        &env,
        test,
        "team-b",
        &format!(
            "\n[tracking]\nprefix = \"TEAM_B_TRACKING\"\n\n[collections.\"{LC08}\"]\nbands = [\"SR_B2=blue\"]\n"
        ),
    );
    let args = one_tile("2021-10-01");
    let (name_a, name_b) = (a.submit(&args).await, b.submit(&args).await);
    a.start_worker(None);
    b.start_worker(None);
    for (d, name) in [(&a, &name_a), (&b, &name_b)] {
        let status = d.wait_done(name).await;
        assert_eq!(
            state_counts(&status),
            BTreeMap::from([("CLEANED".to_owned(), 1)]),
            "{status}"
        );
    }

    let (files_a, files_b) = (a.downloaded(&name_a), b.downloaded(&name_b));
    let (tifs_a, tifs_b) = (tifs(&files_a), tifs(&files_b));
    assert_eq!(tifs_a.len(), PIECES_2048, "{files_a:?}");
    assert_eq!(tifs_b.len(), PIECES_2048, "{files_b:?}");
    let bands_a = a.metadata(&name_a)["image"]["bands"].clone();
    let bands_b = b.metadata(&name_b)["image"]["bands"].clone();
    assert_eq!(bands_b, serde_json::json!(["blue"]));
    let n_a = bands_a.as_array().unwrap().len() as u64;
    assert!(n_a > 1, "{bands_a}");
    // Every GeoTIFF holds its own team's bands (one per band per scene date, as its metadata's
    // band_order lists them): team B's pieces are its own one-band export, not team A's files
    // under team B's metadata.
    for (team, name) in [(&a, &name_a), (&b, &name_b)] {
        let order = team.metadata(name)["image"]["band_order"].clone();
        let want = order.as_array().unwrap().len() as u64;
        assert!(want > 0, "{order}");
        for file in team
            .downloaded(name)
            .into_keys()
            .filter(|f| f.ends_with(".tif"))
        {
            let bytes = std::fs::read(team.dest.join(name).join(&file)).unwrap();
            let mut tiff = tiff::decoder::Decoder::new(std::io::Cursor::new(bytes)).unwrap();
            let samples = tiff.get_tag_u32(tiff::tags::Tag::SamplesPerPixel).unwrap();
            assert_eq!(u64::from(samples), want, "{name}/{file}");
        }
    }
    let left: Vec<String> = files(&env.bucket)
        .into_keys()
        .filter(|f| !f.contains("TRACKING/"))
        .collect();
    assert!(
        left.is_empty(),
        "export objects left in the bucket: {left:?}"
    );
    drop((a.worker.take(), b.worker.take()));
}

/// A deployment whose tracking name is already taken in the shared bucket by another
/// deployment's document is refused before anything is queued, and the other's document is
/// left as it was.
#[tokio::test]
async fn a_tracking_document_of_another_deployment_is_never_overwritten() {
    let env = emulated().await;
    let test = "foreign_document";
    let fixed = "\n[tracking]\ntemplate = \"weekly\"\n";
    let a = Deployment::new(&env, test, "team-a", fixed);
    let b = Deployment::new(&env, test, "team-b", fixed);
    let args = one_tile("2021-10-01");
    assert_eq!(a.submit(&args).await, "weekly");
    let document = env.bucket.join("CEDAR_TRACKING/weekly.json");
    let before = std::fs::read(&document).unwrap();

    let mut all = vec!["submit"];
    all.extend_from_slice(&args);
    let run = b.cedar(&all).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("CEDAR_TRACKING/weekly.json already exists")
            && run.stderr.contains("tracking.prefix"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(&document).unwrap(), before);
    let list = b.cedar(&["list"]).await;
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(!list.stdout.contains("weekly"), "{list:?}");
    let queued: Vec<String> = b
        .namespace
        .keys()
        .await
        .into_iter()
        .filter(|k| k.contains(":export:") || k.contains("weekly"))
        .collect();
    assert!(queued.is_empty(), "team B queued {queued:?}");
}

/// A submission made under one configuration and run by a worker started with another (other
/// file dimensions, other bands) is exported, downloaded and described with the settings it was
/// submitted with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_another_config_runs_the_submission_as_submitted() {
    let env = emulated().await;
    let mut team = Deployment::new(&env, "frozen", "team", "");
    let name = team.submit(&one_tile("2021-10-01")).await;

    // The worker's own config: 1024-pixel files and one band.
    let other = team.dir.join("other.toml");
    let text = std::fs::read_to_string(&team.config)
        .unwrap()
        .replace("file_dimensions = 2048", "file_dimensions = 1024");
    std::fs::write(
        &other,
        format!("{text}\n[collections.\"{LC08}\"]\nbands = [\"SR_B2=blue\"]\n"),
    )
    .unwrap();
    team.start_worker(Some(&other));
    let status = team.wait_done(&name).await;
    assert_eq!(
        state_counts(&status),
        BTreeMap::from([("CLEANED".to_owned(), 1)]),
        "{status}"
    );
    let got = team.downloaded(&name);
    assert_eq!(tifs(&got).len(), PIECES_2048, "not {PIECES_1024}: {got:?}");
    let metadata = team.metadata(&name);
    assert_eq!(
        metadata["store"]["export_image_kwds"]["fileDimensions"],
        2048
    );
    assert!(
        metadata["image"]["bands"].as_array().unwrap().len() > 1,
        "{metadata}"
    );
}
