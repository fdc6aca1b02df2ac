//! Observability end to end: a real `cedar worker` process scraped over HTTP and its output
//! checked by `promtool`; the alert rules checked and unit-tested by `promtool`; the alerts, the
//! dashboard and `docs/metrics.md` held to the catalogue in `src/metrics.rs`; and the deployment
//! files under `deploy/` checked for what can be checked without Docker or Kubernetes.
//!
//! `promtool` comes from the Debian package `prometheus`, which `.ci/run` installs; set
//! `CEDAR_PROMTOOL` to use another. Without it these tests fail rather than skip.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cedar::config::Config;
use cedar::emulator::EmulatorOptions;
use cedar::metrics::{CATALOGUE, CONFIGURED, Kind};
use serde_json::Value;
use serde_norway::Value as Yaml;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::{
    Emulated, FAST_WORKER, Namespace, Process, TestConfig, cedar_command, configured, on_path,
    one_tile, redis_url, run, small_exports, wait_until,
};

/// The bucket name the configuration exports to and the emulator insists on.
pub(crate) const BUCKET: &str = "cedar-metrics-bucket";
/// How long the tiny campaign and every wait in these tests may take.
pub(crate) const DEADLINE: Duration = Duration::from_secs(120);

pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `promtool` from `CEDAR_PROMTOOL` or `PATH`; a missing one fails the test with the fix.
pub(crate) fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("CEDAR_PROMTOOL") {
        return PathBuf::from(p);
    }
    on_path("promtool").unwrap_or_else(|| {
        panic!(
            "promtool not found in PATH: run .ci/run (it installs the Debian package \
                 prometheus), `apt-get install prometheus`, or set CEDAR_PROMTOOL"
        )
    })
}

/// Runs promtool with `args` (and `stdin`), failing the test with its output unless it succeeds.
pub(crate) fn run_promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(promtool())
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

// ---------------------------------------------------------------------------------------------
// The catalogue, its documentation, and what refers to it
// ---------------------------------------------------------------------------------------------

/// `docs/metrics.md` is generated from the catalogue; `CEDAR_UPDATE_DOCS=1` rewrites it.
#[test]
fn docs_metrics_md_is_current() {
    let path = repo().join("docs/metrics.md");
    let want = cedar::metrics::catalogue_markdown();
    if std::env::var_os("CEDAR_UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/metrics.md is stale: regenerate it with \
         `CEDAR_UPDATE_DOCS=1 cargo test --test it metrics::docs_metrics_md_is_current`"
    );
    for d in CATALOGUE {
        assert!(have.contains(&format!("| `{}` |", d.name)), "{}", d.name);
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains("docs/metrics.md"),
        "README.md links the catalogue"
    );
}

/// Every `cedar_…` metric an expression names, with histogram suffixes removed.
fn metrics_named(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("cedar_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        if boundary {
            let name = &expr[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    let b = name.strip_suffix(s)?;
                    CATALOGUE
                        .iter()
                        .any(|d| d.name == b && d.kind == Kind::Histogram)
                        .then_some(b)
                })
                .unwrap_or(name);
            out.insert(base.to_owned());
        }
        i = end;
    }
    out
}

/// The names in `used` that the catalogue does not define.
fn unknown(used: &BTreeSet<String>) -> Vec<String> {
    used.iter()
        .filter(|n| !CATALOGUE.iter().any(|d| d.name == n.as_str()))
        .cloned()
        .collect()
}

#[test]
fn metric_names_are_found_in_expressions() {
    let used = metrics_named(
        "histogram_quantile(0.9, rate(cedar_job_duration_seconds_bucket[5m])) / \
         cedar_nope_total + xcedar_not_a_metric",
    );
    let want: BTreeSet<String> = ["cedar_job_duration_seconds", "cedar_nope_total"]
        .map(String::from)
        .into();
    assert_eq!(used, want);
    assert_eq!(unknown(&used), vec!["cedar_nope_total".to_owned()]);
}

pub(crate) fn alert_rules() -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let doc: Yaml = serde_norway::from_str(&text).unwrap();
    doc["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
        .collect()
}

/// The label matchers of each catalogue metric an expression selects, as (metric, label,
/// values): `m{a="x", b=~"y|z"}` gives (m, a, [x]) and (m, b, [y, z]); negative matchers are
/// left out (they select nothing by themselves).
fn label_matchers(expr: &str) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for metric in metrics_named(expr) {
        let mut rest = expr;
        while let Some(at) = rest.find(&format!("{metric}{{")) {
            let body = &rest[at + metric.len() + 1..];
            let end = body.find('}').expect("a closed selector");
            for matcher in body[..end].split(',').map(str::trim) {
                let (label, op, value) = ["=~", "!~", "!=", "="]
                    .iter()
                    .find_map(|op| {
                        let (l, v) = matcher.split_once(op)?;
                        Some((l.trim(), *op, v.trim().trim_matches('"')))
                    })
                    .unwrap_or_else(|| panic!("matcher {matcher:?} in {expr}"));
                if op == "=" || op == "=~" {
                    let values = value.split('|').map(str::to_owned).collect();
                    out.push((metric.clone(), label.to_owned(), values));
                }
            }
            rest = &body[end..];
        }
    }
    out
}

#[test]
fn label_matchers_are_found_in_expressions() {
    let found = label_matchers(
        r#"sum(increase(cedar_order_failures_total{origin="ingest", cause=~"ee_task|lost", stage!="x"}[1h]))"#,
    );
    let m = "cedar_order_failures_total".to_owned();
    assert_eq!(
        found,
        vec![
            (m.clone(), "origin".into(), vec!["ingest".into()]),
            (m, "cause".into(), vec!["ee_task".into(), "lost".into()]),
        ]
    );
}

#[test]
fn alerts_name_only_catalogue_metrics_and_carry_runbooks() {
    let rules = alert_rules();
    assert!(rules.len() >= 10, "{} rules", rules.len());
    for rule in &rules {
        let name = rule["alert"].as_str().expect("alerting rules only");
        let expr = rule["expr"].as_str().unwrap();
        let used = metrics_named(expr);
        assert_eq!(unknown(&used), Vec::<String>::new(), "{name}: {expr}");
        assert!(!used.is_empty() || expr.contains("up{"), "{name}: {expr}");
        // A label or a fixed value the metric does not have would select nothing, silently.
        for (metric, label, values) in label_matchers(expr) {
            let d = CATALOGUE.iter().find(|d| d.name == metric).unwrap();
            if ["instance", "job"].contains(&label.as_str()) {
                continue;
            }
            let def = d
                .labels
                .iter()
                .find(|l| l.name == label)
                .unwrap_or_else(|| panic!("{name}: {metric} has no label {label}"));
            if CONFIGURED.iter().all(|(l, _)| *l != label) {
                for v in &values {
                    assert!(
                        def.values.contains(&v.as_str()),
                        "{name}: {metric}{{{label}}} never takes {v:?}"
                    );
                }
            }
        }
        for key in ["summary", "description", "runbook"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(text.len() > 20, "{name} needs a {key} annotation");
        }
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("critical" | "warning")
            ),
            "{name}"
        );
    }
    // What pages an ingest's owner: every fact an ingest alert stands on is alerted on.
    let alerted: BTreeSet<String> = rules
        .iter()
        .flat_map(|r| metrics_named(r["expr"].as_str().unwrap()))
        .collect();
    for m in [
        "cedar_ingest_next_due_timestamp_seconds",
        "cedar_ingest_next_period_seconds",
        "cedar_ingest_last_submitted_period_end_timestamp_seconds",
        "cedar_ingest_last_complete_period_end_timestamp_seconds",
        "cedar_ingest_last_submission_timestamp_seconds",
        "cedar_order_failures_total",
    ] {
        assert!(alerted.contains(m), "no alert looks at {m}");
    }
}

#[test]
fn dashboard_panels_name_only_catalogue_metrics() {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/cedar.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let mut all = BTreeSet::new();
    // Rows only group the panels below them.
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap();
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let used = metrics_named(expr);
            assert_eq!(unknown(&used), Vec::<String>::new(), "{title}: {expr}");
            assert!(!used.is_empty() || expr.contains("up{"), "{title}: {expr}");
            all.extend(used);
        }
    }
    // What the dashboard is for: throughput, orders, EE tasks vs cap, failures, queue age, bytes.
    for m in [
        "cedar_jobs_finished_total",
        "cedar_orders",
        "cedar_ee_tasks_active",
        "cedar_ee_admission_cap",
        "cedar_job_retries_total",
        "cedar_queue_oldest_waiting_age_seconds",
        "cedar_download_bytes_total",
    ] {
        assert!(all.contains(m), "no panel shows {m}");
    }
    // And a row for continuous ingest: how far behind each entry is, its latest period, failures.
    let row = panels
        .iter()
        .position(|p| p["type"] == "row" && p["title"].as_str().unwrap().contains("ingest"))
        .expect("a row for continuous ingest");
    let below: BTreeSet<String> = panels[row + 1..]
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .flat_map(|t| metrics_named(t["expr"].as_str().unwrap()))
        .collect();
    for m in [
        "cedar_ingest_last_submitted_period_end_timestamp_seconds",
        "cedar_ingest_last_complete_period_end_timestamp_seconds",
        "cedar_ingest_next_due_timestamp_seconds",
        "cedar_ingest_latest_period_orders",
        "cedar_order_failures_total",
    ] {
        assert!(below.contains(m), "the ingest row does not show {m}");
    }
}

/// The unit tests of the alert rules: `alerts_test.yml`, and `alerts_ingest_test.yml` for the
/// cedar-ingest group (its scenarios last days, so it evaluates every 5 minutes, not every minute).
const ALERT_TESTS: &[&str] = &[
    "deploy/prometheus/alerts_test.yml",
    "deploy/prometheus/alerts_ingest_test.yml",
];

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    run_promtool(&["check", "rules", "deploy/prometheus/alerts.yml"], None);
    run_promtool(
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        None,
    );
    let out = run_promtool(&[&["test", "rules"][..], ALERT_TESTS].concat(), None);
    assert_eq!(out.matches("SUCCESS").count(), ALERT_TESTS.len(), "{out}");

    // Every alert has a test where it fires and one where it stays quiet.
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for file in ALERT_TESTS {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let tests: Yaml = serde_norway::from_str(&text).unwrap();
        for t in tests["tests"].as_sequence().unwrap() {
            for a in t["alert_rule_test"].as_sequence().unwrap() {
                let name = a["alertname"].as_str().unwrap().to_owned();
                if a["exp_alerts"].as_sequence().is_some_and(|e| e.is_empty()) {
                    quiet.insert(name);
                } else {
                    fires.insert(name);
                }
            }
        }
    }
    for rule in alert_rules() {
        let name = rule["alert"].as_str().unwrap();
        assert!(fires.contains(name), "no test where {name} fires");
        assert!(quiet.contains(name), "no test where {name} stays quiet");
    }
}

// ---------------------------------------------------------------------------------------------
// Deployment files
// ---------------------------------------------------------------------------------------------

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

/// The number after `--drain-secs` in a command line.
fn drain_secs<'a>(args: impl IntoIterator<Item = &'a str>) -> u64 {
    let args: Vec<&str> = args.into_iter().collect();
    let i = args
        .iter()
        .position(|a| *a == "--drain-secs")
        .unwrap_or_else(|| panic!("no --drain-secs in {args:?}"));
    args[i + 1].parse().unwrap()
}

fn strings(v: &Yaml) -> Vec<&str> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn kubernetes_manifests_fit_together() {
    let mut by_kind: HashMap<String, Yaml> = HashMap::new();
    let kustomization = &yaml_docs("deploy/k8s/kustomization.yaml")[0];
    for file in strings(&kustomization["resources"]) {
        for doc in yaml_docs(&format!("deploy/k8s/{file}")) {
            let kind = doc["kind"].as_str().unwrap().to_owned();
            by_kind.insert(kind, doc);
        }
    }
    for kind in [
        "Deployment",
        "ConfigMap",
        "Secret",
        "Service",
        "ServiceMonitor",
    ] {
        assert!(by_kind.contains_key(kind), "no {kind} in deploy/k8s");
    }
    let pod = &by_kind["Deployment"]["spec"]["template"]["spec"];
    let worker = &pod["containers"][0];
    let drain = drain_secs(strings(&worker["args"]));
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace >= drain + 10 && grace <= drain + 60,
        "terminationGracePeriodSeconds {grace} must cover --drain-secs {drain} plus a margin"
    );
    assert_eq!(worker["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(worker["readinessProbe"]["httpGet"]["path"], "/readyz");
    let init = strings(&pod["initContainers"][0]["args"]);
    assert!(init.ends_with(&["config", "check"]), "{init:?}");

    // The configuration parses, with the metrics endpoint reachable from outside the pod.
    let toml = by_kind["ConfigMap"]["data"]["cedar.toml"].as_str().unwrap();
    let config = Config::from_toml("configmap", toml, Vec::new()).unwrap();
    assert_eq!(config.metrics.listen, "0.0.0.0:9464");
    let credentials = config.earthengine.credentials.unwrap();
    let secret_mount = worker["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "service-account")
        .unwrap();
    assert!(credentials.starts_with(secret_mount["mountPath"].as_str().unwrap()));
    assert!(
        by_kind["Secret"]["stringData"]["service-account.json"].is_string(),
        "the Secret holds the key"
    );

    // Prometheus finds the port by name, and the job label is what the alerts expect.
    let port = worker["ports"][0]["name"].as_str().unwrap();
    let service = &by_kind["Service"];
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port);
    assert_eq!(service["spec"]["publishNotReadyAddresses"], true);
    let monitor = &by_kind["ServiceMonitor"]["spec"];
    assert_eq!(
        monitor["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["endpoints"][0]["path"], "/metrics");
    let job_label = monitor["jobLabel"].as_str().unwrap();
    assert_eq!(service["metadata"]["labels"][job_label], "cedar");
    for (k, v) in monitor["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&service["metadata"]["labels"][k.as_str().unwrap()], v);
    }
}

#[test]
fn compose_file_runs_the_whole_stack() {
    let mut compose = yaml_docs("deploy/compose.yaml").remove(0);
    // The workers share one definition through a YAML merge key (`<<: *worker`).
    compose.apply_merge().unwrap();
    let compose = &compose;
    let services = compose["services"].as_mapping().unwrap();
    let redis = strings(&compose["services"]["redis"]["command"]);
    assert!(
        redis.windows(2).any(|w| w == ["--appendonly", "yes"]),
        "{redis:?}"
    );
    let workers: Vec<&Yaml> = services
        .iter()
        .filter(|(k, _)| k.as_str().unwrap().starts_with("worker"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(workers.len(), 2);
    for w in workers {
        let drain = drain_secs(strings(&w["command"]));
        let grace: u64 = w["stop_grace_period"]
            .as_str()
            .unwrap()
            .trim_end_matches('s')
            .parse()
            .unwrap();
        assert!(
            grace > drain,
            "stop_grace_period {grace}s vs --drain-secs {drain}"
        );
        assert_eq!(w["environment"]["CEDAR__METRICS__LISTEN"], "0.0.0.0:9464");
    }
    let mounts = |svc: &str| strings(&compose["services"][svc]["volumes"]).join("\n");
    assert!(mounts("prometheus").contains("./prometheus/alerts.yml:"));
    assert!(mounts("grafana").contains("./grafana/cedar.json:"));
    assert!(services.contains_key("alertmanager"));
    // Every file the stack mounts from the repository exists (the key is the user's to add).
    for svc in ["worker-1", "prometheus", "alertmanager", "grafana"] {
        for m in mounts(svc).lines() {
            if let Some(rel) = m.strip_prefix("./") {
                let rel = rel.split(':').next().unwrap();
                assert!(
                    repo().join("deploy").join(rel).exists(),
                    "{svc} mounts {rel}"
                );
            }
        }
    }
    let toml = std::fs::read_to_string(repo().join("deploy/compose/cedar.toml")).unwrap();
    Config::from_toml("compose", &toml, Vec::new()).unwrap();

    // Prometheus scrapes both workers under the job name the alerts use.
    let prom = &yaml_docs("deploy/prometheus/prometheus.yml")[0];
    let job = &prom["scrape_configs"][0];
    assert_eq!(job["job_name"], "cedar");
    assert_eq!(
        strings(&job["static_configs"][0]["targets"]),
        ["worker-1:9464", "worker-2:9464"]
    );
    assert_eq!(strings(&prom["rule_files"]), ["alerts.yml"]);
    let am = &yaml_docs("deploy/alertmanager/alertmanager.yml")[0];
    assert!(am["route"]["receiver"].is_string());
    for p in [
        "deploy/grafana/provisioning/datasources/prometheus.yml",
        "deploy/grafana/provisioning/dashboards/cedar.yml",
    ] {
        assert_eq!(yaml_docs(p)[0]["apiVersion"], 1, "{p}");
    }
}

#[test]
fn dockerfile_and_systemd_unit_agree_with_the_crate() {
    let docker = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap();
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let msrv = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        docker.contains(&format!("FROM rust:{msrv}-")),
        "the build image must be Rust {msrv}"
    );
    assert!(docker.matches("FROM ").count() >= 2, "multi-stage");
    assert!(docker.contains("USER cedar"));

    let unit = std::fs::read_to_string(repo().join("deploy/systemd/cedar-worker.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
    };
    assert!(value("ExecStartPre").ends_with("cedar config check"));
    let drain = drain_secs(value("ExecStart").split_whitespace());
    let stop: u64 = value("TimeoutStopSec").parse().unwrap();
    assert!(
        stop > drain,
        "TimeoutStopSec {stop} vs --drain-secs {drain}"
    );

    // systemd's own check, with the binary path pointed at the one cargo built.
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: `systemd-analyze verify` not run");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cedar-worker.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/cedar", env!("CARGO_BIN_EXE_cedar")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// A live worker
// ---------------------------------------------------------------------------------------------

#[test]
fn the_metrics_endpoint_defaults_to_loopback() {
    let default = Config::default().metrics.listen;
    let addr: std::net::SocketAddr = default.parse().unwrap();
    assert!(addr.ip().is_loopback(), "{default}");
    let embedded = Config::from_toml("default", cedar::config::DEFAULT_TOML, Vec::new()).unwrap();
    assert_eq!(embedded.metrics.listen, default);
    let bad = Config::from_toml("t", "[metrics]\nlisten = \"9464\"\n", Vec::new())
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(
        bad.problems.iter().any(|p| p.key == "metrics.listen"),
        "{bad}"
    );
}

/// A TCP relay in front of Redis that the test can cut, to make Redis unreachable for a worker
/// without touching the shared server.
struct Relay {
    addr: std::net::SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let inner = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                inner.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Relay { addr, tasks }
    }

    /// Closes every connection and stops listening: the port now refuses connections.
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Worker processes on one configuration, and the lines they log.
pub(crate) struct LiveWorker {
    workers: Vec<Process>,
    /// Its keys are deleted once the workers (dropped first) are gone.
    _namespace: Namespace,
    pub(crate) env: Emulated,
    pub(crate) config: PathBuf,
}

impl LiveWorker {
    /// Starts an emulator and writes a configuration whose queue goes through `queue_url`.
    async fn configure(queue_url: &str) -> LiveWorker {
        LiveWorker::configure_with(
            queue_url,
            EmulatorOptions {
                max_concurrent_exports: 4,
                ..small_exports(BUCKET)
            },
        )
        .await
    }

    /// [`LiveWorker::configure`] with an emulator started with `options` (exporting to
    /// [`BUCKET`]).
    pub(crate) async fn configure_with(queue_url: &str, options: EmulatorOptions) -> LiveWorker {
        let env = Emulated::start(options).await;
        let namespace = Namespace::new("metrics");
        let config = TestConfig {
            project: "cedar-metrics".to_owned(),
            ..env.config(BUCKET, queue_url, &namespace.name)
        }
        .write(env.path("cedar.toml"));
        LiveWorker {
            workers: Vec::new(),
            _namespace: namespace,
            env,
            config,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        configured(cedar_command(), self.env.dir.path(), &self.config, args)
    }

    /// Runs a `cedar` command against the test Redis directly (not through the relay).
    pub(crate) async fn cedar(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let mut cmd = self.command(args);
        cmd.env("CEDAR__QUEUE__URL", redis_url());
        run(cmd).await.parts()
    }

    /// Starts one more `cedar worker` (with JSON logs and the `extra` flags) and returns the
    /// address its metrics endpoint bound.
    pub(crate) async fn spawn(&mut self, extra: &[&str]) -> String {
        let cmd = self.command(&[&["--log-format", "json"], FAST_WORKER, extra].concat());
        let log = self
            .env
            .path(&format!("worker-{}.log", self.workers.len() + 1));
        self.workers.push(Process::spawn(cmd, log));
        let worker = self.workers.last().expect("just spawned");
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(100),
            move || async move {
                let log = worker.log();
                let found = log.lines().find_map(|line| {
                    let v: Value = serde_json::from_str(line).ok()?;
                    let msg = v["fields"]["message"].as_str()?;
                    msg.starts_with("serving metrics")
                        .then(|| v["fields"]["addr"].as_str().map(str::to_owned))?
                });
                found
                    .ok_or_else(|| format!("the worker never said where it serves metrics:\n{log}"))
            },
        )
        .await
    }
}

/// The value of the series `series` (name and labels exactly as rendered) in a scrape.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub(crate) async fn get(url: &str) -> (u16, String, String) {
    let r = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, r.text().await.unwrap())
}

/// Scrapes until `cond` holds on the text; returns the last scrape.
pub(crate) async fn scrape_until(base: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let cond = &cond;
    wait_until(DEADLINE, Duration::from_millis(500), move || async move {
        let (_, _, text) = get(&format!("{base}/metrics")).await;
        if cond(&text) {
            Ok(text)
        } else {
            Err(format!("{what}:\n{text}"))
        }
    })
    .await
}

/// A worker runs a one-order campaign; its `/metrics` passes `promtool check metrics`, holds
/// every catalogue metric and the campaign's numbers; `/healthz` and `/readyz` answer, and
/// `/readyz` turns 503 (with `cedar_dependency_up{dependency="queue"} 0`) once Redis is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_worker_serves_metrics_health_and_readiness() {
    let target = url::Url::parse(&redis_url()).unwrap();
    let relay = Relay::start(format!(
        "{}:{}",
        target.host_str().unwrap(),
        target.port().unwrap_or(6379)
    ))
    .await;
    let mut relayed = target.clone();
    relayed.set_host(Some("127.0.0.1")).unwrap();
    relayed.set_port(Some(relay.addr.port())).unwrap();
    let mut w = LiveWorker::configure(relayed.as_str()).await;
    let addr = w.spawn(&[]).await;
    let base = format!("http://{addr}");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    let (code, stdout, stderr) = w
        .cedar(
            &[
                &["submit", "--json"][..],
                &one_tile("2021-07-31"),
                &["--freq", "1MS"],
            ]
            .concat(),
        )
        .await;
    assert_eq!(code, Some(0), "submit: {stdout}{stderr}");
    let name = serde_json::from_str::<Value>(&stdout).unwrap()["tracking_name"]
        .as_str()
        .unwrap()
        .to_owned();

    // Counters move as jobs finish; gauges follow within the collector's interval.
    let text = scrape_until(&base, "the order to be cleaned and counted", |t| {
        sample(
            t,
            r#"cedar_jobs_finished_total{stage="clean",outcome="done"}"#,
        ) >= Some(1.0)
            && sample(t, r#"cedar_orders{state="CLEANED"}"#) == Some(1.0)
            && sample(t, r#"cedar_queue_jobs{stage="export",state="backlog"}"#) == Some(0.0)
    })
    .await;
    let (code, stdout, _) = w.cedar(&["status", &name, "--json"]).await;
    assert_eq!(code, Some(0), "status: {stdout}");

    let (status, content_type, text2) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    run_promtool(&["check", "metrics"], Some(&text2));
    // This worker has no [[ingest]] entry: metrics labelled only by ingest entries have no
    // series (tests/it/ingest.rs reads them from a worker that has one).
    for d in CATALOGUE
        .iter()
        .filter(|d| d.labels.iter().all(|l| !l.values.is_empty()))
    {
        assert!(
            text.contains(&format!("# TYPE {} {}\n", d.name, d.kind.as_str())),
            "{} missing from /metrics",
            d.name
        );
    }
    for stage in ["export", "poll", "download", "clean"] {
        let done = format!(r#"cedar_jobs_finished_total{{stage="{stage}",outcome="done"}}"#);
        assert!(sample(&text, &done) >= Some(1.0), "{done}");
        let last = format!(r#"cedar_last_success_timestamp_seconds{{stage="{stage}"}}"#);
        assert!(sample(&text, &last) > Some(1.7e9), "{last}");
        let runs = format!(r#"cedar_job_duration_seconds_count{{stage="{stage}"}}"#);
        assert!(sample(&text, &runs) >= Some(1.0), "{runs}");
    }
    assert!(sample(&text, "cedar_download_bytes_total") > Some(0.0));
    for method in ["value:compute", "image:export", "operations.list"] {
        let series = format!(r#"cedar_ee_requests_total{{method="{method}",code_class="2xx"}}"#);
        assert!(sample(&text, &series) >= Some(1.0), "{series}");
    }
    assert!(
        sample(
            &text,
            r#"cedar_ee_task_duration_seconds_count{ee_state="SUCCEEDED"}"#
        ) >= Some(1.0)
    );
    assert_eq!(sample(&text, "cedar_ee_tasks_active"), Some(0.0));
    assert!(sample(&text, "cedar_ee_admission_cap") >= Some(1.0));
    assert_eq!(sample(&text, "cedar_ee_queue_cap"), Some(3000.0));
    // The emulator's 4 concurrent exports, read from the v1alpha project config.
    assert_eq!(
        sample(
            &text,
            r#"cedar_ee_max_concurrent_exports{source="v1alpha"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"cedar_ee_max_concurrent_exports{source="default"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"cedar_dependency_up{dependency="queue"}"#),
        Some(1.0)
    );
    assert!(!text.contains(&name), "a tracking name leaked into a label");

    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let (status, _, body) = get(&format!("{base}/readyz")).await;
    assert_eq!((status, body.as_str()), (200, "queue: ok\nstore: ok\n"));

    // Redis goes away: the process is still alive, but not ready.
    relay.cut();
    let base = &base;
    let body = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(500),
        move || async move {
            let (status, _, body) = get(&format!("{base}/readyz")).await;
            if status == 503 {
                Ok(body)
            } else {
                Err(format!("/readyz stayed {status}: {body}"))
            }
        },
    )
    .await;
    assert!(body.contains("queue: unreachable"), "{body}");
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let text = get(&format!("{base}/metrics")).await.2;
    assert_eq!(
        sample(&text, r#"cedar_dependency_up{dependency="queue"}"#),
        Some(0.0)
    );
}
