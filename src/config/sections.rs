//! The plain sections of the configuration (`[earthengine]`, `[queue]`, `[export]`, `[store]`,
//! `[tracking]`, `[download]`, `[metrics]`, `[web]`, `[limits]`, `[worker]`), each with its defaults and
//! the checks that need only the section itself.

use serde::{Deserialize, Serialize};

use super::Problems;
use crate::auth;
use crate::earthengine::{EE_QUEUE_CAP, EE_QUEUE_MARGIN, MAX_ACTIVE_EXPORTS};
use crate::naming;
use crate::queue::{QueueUrl, redact_url, sqlite::not_a_file};
use crate::store::Verify;

/// `[earthengine]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EarthEngineConfig {
    pub project: String,
    pub endpoint: String,
    /// A service-account key path, `"none"`, or absent for Application Default Credentials.
    pub credentials: Option<String>,
    /// The OAuth scopes of the token Earth Engine and Cloud Storage calls carry. Default
    /// [`auth::DEFAULT_SCOPES`]: `earthengine` and `devstorage.read_write`.
    pub scopes: Vec<String>,
    /// Bounds every EE call but `value:compute`, connect to last byte. Default 60.
    pub timeout_secs: u64,
    /// Send each submission's priority as EE's own task `priority` (EE honours it for paid
    /// projects), so that EE also runs an ingest before a backfill. Default false.
    pub send_priority: bool,
    /// Bounds `value:compute`, whose answer (every scene of a tile-period with its metadata)
    /// takes EE longer than the other calls. Default 300.
    pub compute_timeout_secs: u64,
}

impl Default for EarthEngineConfig {
    fn default() -> Self {
        EarthEngineConfig {
            project: String::new(),
            endpoint: "https://earthengine.googleapis.com".into(),
            credentials: None,
            scopes: auth::default_scopes(),
            timeout_secs: 60,
            send_priority: false,
            compute_timeout_secs: 300,
        }
    }
}

/// `[queue]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// Where the queue and tracking state live: `redis://…`/`rediss://…` (workers on many
    /// machines), or `sqlite://PATH` (one machine, no server). Default `""`, which means
    /// `sqlite://cedar.db` in the working directory.
    pub url: String,
    /// Prefix of every key cedar writes, so several deployments can share one Redis (or file).
    pub namespace: String,
    /// A PEM file of the CA that signed the Redis server's certificate, for a `rediss://` URL
    /// whose server uses a private CA. Default unset: the system's trust store decides.
    pub tls_ca_file: Option<String>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            url: String::new(),
            namespace: "cedar".into(),
            tls_ca_file: None,
        }
    }
}

/// `[export]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportConfig {
    pub bucket: String,
    pub prefix_template: String,
    pub name_template: String,
    pub file_dimensions: u32,
    pub cloud_optimized: bool,
    pub max_pixels: u64,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            bucket: String::new(),
            prefix_template: naming::DEFAULT_PREFIX_TEMPLATE.into(),
            name_template: naming::DEFAULT_NAME_TEMPLATE.into(),
            file_dimensions: 1024,
            cloud_optimized: true,
            max_pixels: 100_000_000,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Empty: `gs://{export.bucket}`.
    pub url: String,
    /// Empty: Google's endpoint, or `STORAGE_EMULATOR_HOST`.
    pub endpoint: String,
}

/// `[tracking]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrackingConfig {
    pub template: String,
    pub prefix: String,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig {
            template: naming::DEFAULT_TRACKING_TEMPLATE.into(),
            prefix: naming::DEFAULT_TRACKING_PREFIX.into(),
        }
    }
}

/// `[download]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DownloadConfig {
    pub dest: String,
    /// Which checksums a download verifies: `"crc32c"` (default; MD5 only for an object
    /// without a CRC32C) or `"both"` (MD5 too, several times slower).
    pub verify: String,
    /// Objects of one order downloaded at once; default 4, at most [`MAX_DOWNLOAD_CONCURRENCY`].
    pub concurrency: u32,
}

/// The most objects of one order downloaded at once.
pub const MAX_DOWNLOAD_CONCURRENCY: u32 = 64;

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            dest: "./cedar-downloads".into(),
            verify: "crc32c".into(),
            concurrency: 4,
        }
    }
}

/// `[metrics]`: the worker's Prometheus endpoint (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// The socket address every `cedar worker` serves on; default `127.0.0.1:9464`, loopback,
    /// so that nothing is exposed unless configured.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[web]`: the web console (`cedar worker` and `cedar web` serve it). Defaults: every field
/// empty or false.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WebConfig {
    /// The socket address the console is served on. Default `""`: a worker serves it on its
    /// metrics listener (`[metrics] listen`) when that is loopback or a token is set, and
    /// `cedar web` on [`WebConfig::STANDALONE`]. An address equal to `[metrics] listen` shares
    /// that listener too.
    pub listen: String,
    /// Whether the console's retry and cancel buttons act (POST, with the token). Default false.
    pub allow_actions: bool,
    /// The bearer token a POST must carry (`Authorization: Bearer …`); required by
    /// `allow_actions` and by a `listen` that is not loopback. Default unset.
    pub token: Option<String>,
}

/// `[limits]`: how hard cedar may push Earth Engine, across all workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// EE tasks PENDING or RUNNING at once from this project; 0 (the default) derives it from
    /// EE's `maxConcurrentExports` × `active_exports_factor`. Never above [`MAX_ACTIVE_EXPORTS`].
    pub max_active_exports: u64,
    /// Default 10: enough queued tasks that EE never idles between cedar's polls.
    pub active_exports_factor: u64,
    /// EE requests per second across all workers (default 50; EE allows 100 per project).
    pub ee_requests_per_second: u32,
    /// EECU-hours the project's ended tasks may use per rolling window (`eecu_window_secs`, a
    /// day); admission pauses while the window's use is at or over it. Unset (the default): no
    /// budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eecu_hours_per_day: Option<f64>,
    /// The EECU budget's rolling window, in seconds (default 86400, a day; shorter in tests).
    pub eecu_window_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_active_exports: 0,
            active_exports_factor: 10,
            ee_requests_per_second: 50,
            eecu_hours_per_day: None,
            eecu_window_secs: 86_400,
        }
    }
}

/// `[worker]`: how each `cedar worker` process runs; `cedar worker` flags override each key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerConfig {
    /// Jobs run at once per stage. Default 8.
    pub concurrency: usize,
    /// Seconds a job held by a dead worker waits before another takes it; values below 3 count
    /// as 3, so that heartbeats (a third of it) stay apart. Default 60.
    pub lease_secs: u64,
    /// Seconds running jobs get to finish after SIGTERM. Default 60.
    pub drain_secs: u64,
    /// Seconds between looks at a running EE task (0 counts as 1). Default 10.
    pub poll_interval_secs: u64,
    /// Ceiling of the first retry delay of a failed job, in ms; it doubles per failure. Default 2000.
    pub retry_base_ms: u64,
    /// Seconds an export waits when EE's task queue is full or no admission slot is free. Default 60.
    pub backpressure_secs: u64,
    /// Seconds between rewrites of the tracking documents that changed. Default 5.
    pub publish_interval_secs: u64,
    /// Milliseconds an idle stage waits before looking for new jobs again. Default 500.
    pub idle_poll_ms: u64,
    /// Bounds of the sweeper's adaptive interval between `operations.list` sweeps. Defaults 2, 120.
    pub sweep_min_interval_secs: u64,
    pub sweep_max_interval_secs: u64,
    /// Completed EE tasks a sweep aims to find per page it reads. Default 8.
    pub sweep_completions_per_page: f64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 8,
            lease_secs: 60,
            drain_secs: 60,
            poll_interval_secs: 10,
            retry_base_ms: 2000,
            backpressure_secs: 60,
            publish_interval_secs: 5,
            idle_poll_ms: 500,
            sweep_min_interval_secs: 2,
            sweep_max_interval_secs: 120,
            sweep_completions_per_page: 8.0,
        }
    }
}

impl EarthEngineConfig {
    pub(super) fn validate(&self, p: &mut Problems) {
        if url::Url::parse(&self.endpoint).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
        {
            p.add(
                "earthengine.endpoint",
                format!(
                    "{:?} is not an http(s) URL; e.g. https://earthengine.googleapis.com",
                    self.endpoint
                ),
            );
        }
        if !self.project.is_empty()
            && !self
                .project
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            p.add(
                "earthengine.project",
                format!(
                    "{:?} is not a Cloud project id (letters, digits, '-')",
                    self.project
                ),
            );
        }
        if let Some(path) = self.credentials.as_deref()
            && path != "none"
            // Read, not just opened: opening a directory succeeds, reading it does not.
            && let Err(e) = std::fs::read(path)
        {
            p.add(
                "earthengine.credentials",
                format!(
                    "cannot read the service-account key {path}: {e}; give a readable JSON key path, \"none\" for emulators, or remove the key to use Application Default Credentials"
                ),
            );
        }
        if let Some(problem) = scopes_problem(&self.scopes) {
            p.add("earthengine.scopes", problem);
        }
        if self.timeout_secs == 0 {
            p.add("earthengine.timeout_secs", "must be at least 1");
        }
        if self.compute_timeout_secs == 0 {
            p.add(
                "earthengine.compute_timeout_secs",
                "must be at least 1 (seconds a value:compute may take; default 300)",
            );
        }
    }
}

/// What is wrong with `[earthengine] scopes`, if anything: it must list Google OAuth scope URLs,
/// one of which lets Earth Engine run exports and read their operations (reference §1.2:
/// `earthengine` or `cloud-platform`).
fn scopes_problem(scopes: &[String]) -> Option<String> {
    let fix = format!(
        "list OAuth scope URLs, e.g. scopes = [\"{}\", \"{}\"] (the default)",
        auth::EARTHENGINE_SCOPE,
        auth::STORAGE_SCOPE
    );
    if scopes.is_empty() {
        return Some(format!("is empty; {fix}"));
    }
    let bad = scopes.iter().find(|s| {
        s.strip_prefix(auth::SCOPE_PREFIX).is_none_or(|name| {
            name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
    });
    if let Some(bad) = bad {
        return Some(format!(
            "{bad:?} is not a Google OAuth scope ({}NAME); {fix}",
            auth::SCOPE_PREFIX
        ));
    }
    let covers_ee = [auth::EARTHENGINE_SCOPE, auth::CLOUD_PLATFORM_SCOPE];
    if !scopes.iter().any(|s| covers_ee.contains(&s.as_str())) {
        return Some(format!(
            "none of {scopes:?} lets Earth Engine run exports; add \"{}\" (or \"{}\")",
            auth::EARTHENGINE_SCOPE,
            auth::CLOUD_PLATFORM_SCOPE
        ));
    }
    None
}

impl QueueConfig {
    pub(super) fn validate(&self, p: &mut Problems) {
        if self.namespace.is_empty()
            || !self
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            p.add(
                "queue.namespace",
                format!(
                    "{:?} must be non-empty letters, digits, '-', '_', '.' or ':'",
                    self.namespace
                ),
            );
        }
        match QueueUrl::parse(&self.url) {
            None if self.url.starts_with("sqlite:") => p.add(
                "queue.url",
                format!(
                    "{:?} names no database file; write sqlite:///absolute/path/cedar.db, sqlite://relative/cedar.db, or leave it empty for cedar.db beside the configuration file",
                    self.url
                ),
            ),
            None => p.add(
                "queue.url",
                format!(
                    "{} is not a redis://, rediss:// or sqlite:// URL; e.g. redis://127.0.0.1:6379, \
                     sqlite:///var/lib/cedar/cedar.db, or leave it empty for sqlite://cedar.db in \
                     the working directory",
                    redact_url(&self.url)
                ),
            ),
            // Checked before anything opens it: SQLite would take /dev/null for a database.
            Some(QueueUrl::Sqlite(path)) => {
                if let Some(reason) = not_a_file(&path) {
                    p.add("queue.url", format!("{} {reason}", path.display()));
                }
            }
            Some(QueueUrl::Redis(_)) => {}
        }
        if let Some(path) = self.tls_ca_file.as_deref() {
            if !self.url.starts_with("rediss://") {
                p.add(
                    "queue.tls_ca_file",
                    format!(
                        "is only used with a rediss:// (TLS) queue.url, not {}; remove it or switch to rediss://",
                        redact_url(&self.url)
                    ),
                );
            } else if let Err(e) = std::fs::read(path) {
                p.add(
                    "queue.tls_ca_file",
                    format!("cannot read the CA certificate {path}: {e}; give a readable PEM file"),
                );
            }
        }
    }
}

impl ExportConfig {
    /// Checks the bucket and the numbers; the templates are checked with the other templates.
    pub(super) fn validate(&self, p: &mut Problems) {
        if self.bucket.is_empty() {
            p.add(
                "export.bucket",
                "is required: the Cloud Storage bucket EE exports into, e.g. bucket = \"my-exports\"",
            );
        } else if !valid_bucket_name(&self.bucket) {
            p.add(
                "export.bucket",
                format!(
                    "{:?} is not a valid bucket name (3-63 of a-z 0-9 - _ ., starting and ending with a letter or digit)",
                    self.bucket
                ),
            );
        }
        if self.file_dimensions == 0 || !self.file_dimensions.is_multiple_of(256) {
            p.add(
                "export.file_dimensions",
                format!(
                    "{} must be a positive multiple of 256 (EE's tile size)",
                    self.file_dimensions
                ),
            );
        }
        if self.max_pixels == 0 {
            p.add("export.max_pixels", "must be positive");
        }
    }
}

impl StoreConfig {
    /// Checks the URL, and that a `gs://` URL is the bucket EE exports into (`bucket`, the
    /// `[export] bucket`): cedar reads, downloads and cleans where the URL points, EE writes into
    /// `export.bucket` at the path `export.prefix_template` gives, so any other bucket or a
    /// folder in the URL is a campaign whose every download finds nothing.
    ///
    /// Other forms are not refused: a `file://` directory, `memory://` or `s3://` URL may stand
    /// for the bucket (an emulator's folder, a mirror), and nothing here can tell which bucket
    /// it stands for; `[store] endpoint` (or `STORAGE_EMULATOR_HOST`) changes the server a
    /// `gs://` URL is read from, not which bucket it names, so it changes nothing here.
    pub(super) fn validate(&self, bucket: &str, p: &mut Problems) {
        if self.url.is_empty() {
            return;
        }
        if url::Url::parse(&self.url).is_err() {
            p.add(
                "store.url",
                format!(
                    "{:?} is not a URL; use gs://bucket, file:///path, memory:// or s3://bucket",
                    self.url
                ),
            );
            return;
        }
        let Some(rest) = self.url.strip_prefix("gs://") else {
            return;
        };
        let (named, folder) = rest.split_once('/').unwrap_or((rest, ""));
        // Without an export bucket there is nothing to compare with; that problem is reported
        // under export.bucket.
        if bucket.is_empty() || named.is_empty() {
            return;
        }
        if named != bucket {
            p.add(
                "store.url",
                format!(
                    "{:?} names bucket {named:?}, but EE exports into export.bucket {bucket:?}, so cedar would look for every export where EE never writes it; \
                     set url = \"gs://{bucket}\" (or leave it empty for gs://{{export.bucket}}), or export.bucket = {named:?} if that is the bucket EE should write into",
                    self.url
                ),
            );
        } else if !folder.trim_matches('/').is_empty() {
            p.add(
                "store.url",
                format!(
                    "{:?} points at the folder {folder:?} of the bucket, but EE writes exports at the path export.prefix_template gives from the top of the bucket, so cedar would look for them under the wrong folder; \
                     set url = \"gs://{bucket}\" (or leave it empty) and put the folder in export.prefix_template and tracking.prefix",
                    self.url
                ),
            );
        }
    }
}

impl TrackingConfig {
    pub(super) fn validate(&self, p: &mut Problems) {
        if self.prefix.is_empty()
            || self.prefix.starts_with('/')
            || self.prefix.split('/').any(|s| s == "..")
        {
            p.add(
                "tracking.prefix",
                format!(
                    "{:?} must be a relative folder name such as CEDAR_TRACKING",
                    self.prefix
                ),
            );
        }
    }
}

impl DownloadConfig {
    pub(super) fn validate(&self, p: &mut Problems) {
        if self.dest.trim().is_empty() {
            p.add(
                "download.dest",
                "is empty; give a local path or an object_store URL",
            );
        }
        if Verify::parse(&self.verify).is_none() {
            p.add(
                "download.verify",
                format!(
                    "{:?} is not one of {}; \"crc32c\" checks every object's CRC32C (MD5 when it has none), \"both\" adds MD5",
                    self.verify,
                    Verify::NAMES.map(|n| format!("{n:?}")).join(", ")
                ),
            );
        }
        if !(1..=MAX_DOWNLOAD_CONCURRENCY).contains(&self.concurrency) {
            p.add(
                "download.concurrency",
                format!(
                    "{} is out of range; give 1 to {MAX_DOWNLOAD_CONCURRENCY} objects of an order downloaded at once (default 4)",
                    self.concurrency
                ),
            );
        }
    }
}

impl MetricsConfig {
    pub(super) fn validate(&self, p: &mut Problems) {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            p.add(
                "metrics.listen",
                format!(
                    "{:?} is not a socket address; e.g. \"127.0.0.1:9464\" (loopback) or \"0.0.0.0:9464\"",
                    self.listen
                ),
            );
        }
    }
}

/// Where a worker serves the web console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebPlacement<'a> {
    /// On the metrics listener, beside `/metrics`.
    Metrics,
    /// On a listener of its own, at this address.
    Own(&'a str),
    /// Not at all, for this reason.
    Off(&'static str),
}

impl WebConfig {
    /// Where `cedar web` listens when `listen` is empty: loopback, the metrics port.
    pub const STANDALONE: &'static str = "127.0.0.1:9464";

    /// Where a worker whose metrics listen on `metrics_listen` serves the console. An empty
    /// `listen` shares the metrics listener unless that is reachable from other hosts without a
    /// token: containers listen on 0.0.0.0 for Prometheus, and the console must not follow them
    /// there unguarded.
    pub fn placement<'a>(&'a self, metrics_listen: &str) -> WebPlacement<'a> {
        if !self.listen.is_empty() && self.listen != metrics_listen {
            return WebPlacement::Own(&self.listen);
        }
        let exposed = metrics_listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| !a.ip().is_loopback());
        if self.listen.is_empty() && exposed && self.token().is_none() {
            WebPlacement::Off(
                "[metrics] listen is reachable from other hosts and [web] token is unset; set [web] listen to a loopback address, or [web] token",
            )
        } else {
            WebPlacement::Metrics
        }
    }

    /// The address `cedar web` listens on.
    pub fn standalone_listen(&self) -> &str {
        if self.listen.is_empty() {
            Self::STANDALONE
        } else {
            &self.listen
        }
    }

    /// The token, when one is set and not blank.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.trim().is_empty())
    }

    /// Checks the address, and that the console is neither reachable from other hosts nor able
    /// to act without a token: the console shows every campaign, and its buttons cancel them.
    pub(super) fn validate(&self, p: &mut Problems) {
        // Empty: the metrics listener, guarded by `placement`.
        match self.standalone_listen().parse::<std::net::SocketAddr>() {
            Err(_) => p.add(
                "web.listen",
                format!(
                    "{:?} is not a socket address; e.g. \"127.0.0.1:9464\" (loopback, the default)",
                    self.listen
                ),
            ),
            Ok(addr) if !addr.ip().is_loopback() && self.token().is_none() => p.add(
                "web.listen",
                format!(
                    "{:?} is reachable from other hosts, but web.token is unset: anyone could read every campaign; set web.token (a long random string) or listen on 127.0.0.1",
                    self.listen
                ),
            ),
            Ok(_) => {}
        }
        if self.allow_actions && self.token().is_none() {
            p.add(
                "web.allow_actions",
                "needs web.token: retry and cancel are only accepted with `Authorization: Bearer <token>`; set web.token or allow_actions = false",
            );
        }
    }
}

impl LimitsConfig {
    pub(super) fn validate(&self, p: &mut Problems) {
        if self.ee_requests_per_second == 0 {
            p.add(
                "limits.ee_requests_per_second",
                "must be at least 1 (EE allows 100 per project)",
            );
        }
        if self.active_exports_factor == 0 {
            p.add("limits.active_exports_factor", "must be at least 1");
        }
        if let Some(hours) = self.eecu_hours_per_day
            && !(hours.is_finite() && hours > 0.0)
        {
            p.add(
                "limits.eecu_hours_per_day",
                format!("{hours} is no budget: give a positive number of EECU-hours, or remove the key for none"),
            );
        }
        if self.eecu_window_secs == 0 {
            p.add(
                "limits.eecu_window_secs",
                "must be at least 1 (86400, a day, is the default)",
            );
        }
        if self.max_active_exports > MAX_ACTIVE_EXPORTS {
            p.add(
                "limits.max_active_exports",
                format!(
                    "{} is above EE's {EE_QUEUE_CAP}-task queue minus a margin of {EE_QUEUE_MARGIN}; use at most {MAX_ACTIVE_EXPORTS} (0 = derive from EE)",
                    self.max_active_exports
                ),
            );
        }
    }
}

impl WorkerConfig {
    pub(super) fn validate(&self, p: &mut Problems) {
        for (key, value) in [
            ("worker.concurrency", self.concurrency as u64),
            ("worker.publish_interval_secs", self.publish_interval_secs),
            ("worker.idle_poll_ms", self.idle_poll_ms),
            (
                "worker.sweep_min_interval_secs",
                self.sweep_min_interval_secs,
            ),
        ] {
            if value == 0 {
                p.add(key, "must be at least 1");
            }
        }
        if self.sweep_max_interval_secs < self.sweep_min_interval_secs {
            p.add(
                "worker.sweep_max_interval_secs",
                format!(
                    "{} is below worker.sweep_min_interval_secs ({}); give a bound at least as large",
                    self.sweep_max_interval_secs, self.sweep_min_interval_secs
                ),
            );
        }
        if !(self.sweep_completions_per_page.is_finite() && self.sweep_completions_per_page > 0.0) {
            p.add(
                "worker.sweep_completions_per_page",
                format!(
                    "{} must be a positive number, e.g. 8",
                    self.sweep_completions_per_page
                ),
            );
        }
    }
}

fn valid_bucket_name(b: &str) -> bool {
    (3..=222).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}
