//! Typed settings, loaded once — embedded defaults, then a TOML file, then `CEDAR__SECTION__KEY`
//! environment overrides — and validated into [`Settings`] before anything runs.
//!
//! `config/default.toml` documents every key with its default; [`Config::default`] must agree
//! with it (a test checks). Unknown keys are errors, and validation reports every problem it
//! finds, one line each, naming the key and the fix.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::collection::{self, Band, CollectionSpec, DataType, PropertyFilter};
use crate::earthengine::{EE_QUEUE_CAP, EE_QUEUE_MARGIN, MAX_ACTIVE_EXPORTS};
use crate::grid::{Crs, Limits, TileGrid};
use crate::naming::{self, ItemTemplates, Kind, Template};
use crate::queue::redact_url;

/// The documented defaults, embedded so that cedar runs without any file.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of environment overrides: `CEDAR__EXPORT__BUCKET=…` sets `[export] bucket`.
pub const ENV_PREFIX: &str = "CEDAR__";

/// One problem in a configuration, rendered as `key: what is wrong; how to fix it`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Everything wrong with a configuration (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// Where the configuration came from, for messages.
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    fn one(source_name: &str, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            source_name: source_name.to_string(),
            problems: vec![Problem {
                key: key.into(),
                message: message.into(),
            }],
        }
    }
}

/// `[earthengine]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EarthEngineConfig {
    pub project: String,
    pub endpoint: String,
    /// A service-account key path, `"none"`, or absent for Application Default Credentials.
    pub credentials: Option<String>,
    pub timeout_secs: u64,
}

impl Default for EarthEngineConfig {
    fn default() -> Self {
        EarthEngineConfig {
            project: String::new(),
            endpoint: "https://earthengine.googleapis.com".into(),
            credentials: None,
            timeout_secs: 60,
        }
    }
}

/// `[queue]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
#[serde(default, deny_unknown_fields)]
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
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Empty: `gs://{export.bucket}`.
    pub url: String,
    /// Empty: Google's endpoint, or `STORAGE_EMULATOR_HOST`.
    pub endpoint: String,
}

/// `[tracking]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
#[serde(default, deny_unknown_fields)]
pub struct DownloadConfig {
    pub dest: String,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            dest: "./cedar-downloads".into(),
        }
    }
}

/// `[metrics]`: the worker's Prometheus endpoint (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

/// `[limits]`: how hard cedar may push Earth Engine, across all workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// EE tasks PENDING or RUNNING at once from this project; 0 (the default) derives it from
    /// EE's `maxConcurrentExports` × `active_exports_factor`. Never above [`MAX_ACTIVE_EXPORTS`].
    pub max_active_exports: u64,
    /// Default 10: enough queued tasks that EE never idles between cedar's polls.
    pub active_exports_factor: u64,
    /// EE requests per second across all workers (default 50; EE allows 100 per project).
    pub ee_requests_per_second: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_active_exports: 0,
            active_exports_factor: 10,
            ee_requests_per_second: 50,
        }
    }
}

/// `[grid]`: a preset, or an explicit grid.
///
/// Without a `[grid]` table the default preset applies ([`GridConfig::default`]). A `[grid]`
/// table that is present starts from nothing, not from the default preset: otherwise a file
/// giving `crs`, `ul`, `res`, `size` and `limits` would always collide with the preset it never
/// asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub crs: Option<String>,
    #[serde(default)]
    pub ul: Option<[f64; 2]>,
    #[serde(default)]
    pub res: Option<[f64; 2]>,
    #[serde(default)]
    pub size: Option<[u32; 2]>,
    #[serde(default)]
    pub limits: Option<[[u32; 2]; 2]>,
}

impl Default for GridConfig {
    fn default() -> Self {
        GridConfig {
            preset: Some("Landsat ARD v1 - CONUS".into()),
            name: None,
            crs: None,
            ul: None,
            res: None,
            size: None,
            limits: None,
        }
    }
}

/// `[collections."ID"]`: overrides of a preset, or a new collection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectionConfig {
    pub bands: Option<Vec<String>>,
    pub properties: Option<Vec<String>>,
    pub nodata: Option<f64>,
    pub data_type: Option<String>,
    pub mosaic_per_day: Option<bool>,
    pub filters: Option<Vec<String>>,
}

/// The configuration as written (after defaults and environment overrides).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub earthengine: EarthEngineConfig,
    pub queue: QueueConfig,
    pub export: ExportConfig,
    pub store: StoreConfig,
    pub tracking: TrackingConfig,
    pub download: DownloadConfig,
    pub metrics: MetricsConfig,
    pub limits: LimitsConfig,
    pub grid: GridConfig,
    pub collections: BTreeMap<String, CollectionConfig>,
    /// `[[ingest]]`: continuous ingest entries (see [`crate::ingest`]).
    pub ingest: Vec<crate::ingest::IngestConfig>,
}

/// The validated configuration everything else runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub grid: TileGrid,
    pub collections: BTreeMap<String, CollectionSpec>,
    pub name_template: Template,
    pub prefix_template: Template,
    pub tracking_template: Template,
    /// The validated `[[ingest]]` entries.
    pub ingests: Vec<crate::ingest::Ingest>,
    /// `[store] url`, with the `gs://{bucket}` default applied.
    pub store_url: String,
}

impl Settings {
    /// The templates that name each order's objects.
    pub fn item_templates(&self) -> ItemTemplates<'_> {
        ItemTemplates {
            name: &self.name_template,
            prefix: &self.prefix_template,
        }
    }
}

impl Config {
    /// Loads the configuration: `path` if given (else the embedded defaults), then environment
    /// overrides from `env` (pass `std::env::vars()`).
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (name, text) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError::one(
                        &p.display().to_string(),
                        "config",
                        format!(
                            "cannot read {}: {e}; pass an existing file with --config or CEDAR_CONFIG",
                            p.display()
                        ),
                    )
                })?;
                (p.display().to_string(), text)
            }
            None => ("(embedded defaults)".to_string(), DEFAULT_TOML.to_string()),
        };
        Self::from_toml(&name, &text, env)
    }

    /// Parses TOML text and applies environment overrides.
    pub fn from_toml(
        source_name: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start].lines().count().max(1))
                .map_or(String::new(), |l| format!(" (line {l})"));
            ConfigError::one(
                source_name,
                "toml",
                format!("malformed TOML{line}: {}", e.message()),
            )
        })?;
        apply_env(&mut table, env);
        let mut unknown = Vec::new();
        let de = toml::Value::Table(table);
        let result: Result<Config, _> = serde_path_to_error::deserialize(
            serde_ignored::Deserializer::new(de, &mut |path: serde_ignored::Path<'_>| {
                unknown.push(path.to_string())
            }),
        );
        let mut problems: Vec<Problem> = unknown
            .into_iter()
            .map(|key| Problem {
                message: format!(
                    "unknown key; remove it or check its spelling against {}",
                    "config/default.toml"
                ),
                key,
            })
            .collect();
        match result {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError {
                source_name: source_name.into(),
                problems,
            }),
            Err(e) => {
                let key = e.path().to_string();
                // The bare message: toml's Display adds "in `key`" on lines of its own, and the
                // key is already in front of every problem.
                let inner = e.into_inner().message().to_owned();
                // serde reports unknown fields itself when deny_unknown_fields trips first.
                let message = if inner.starts_with("unknown field") {
                    format!("{inner}; remove it or check its spelling against config/default.toml")
                } else {
                    format!("{inner}; see config/default.toml for the expected type")
                };
                problems.push(Problem { key, message });
                Err(ConfigError {
                    source_name: source_name.into(),
                    problems,
                })
            }
        }
    }

    /// The tile grid alone, for commands that need nothing else from the configuration.
    pub fn grid_settings(&self) -> Result<TileGrid, ConfigError> {
        let grid = self.grid.resolve().map_err(|list| ConfigError {
            source_name: String::new(),
            problems: list
                .into_iter()
                .map(|(key, message)| Problem { key, message })
                .collect(),
        })?;
        let problems: Vec<Problem> = grid
            .validate()
            .into_iter()
            .map(|e| {
                let (key, message) = grid_problem(e);
                Problem { key, message }
            })
            .collect();
        if problems.is_empty() {
            Ok(grid)
        } else {
            Err(ConfigError {
                source_name: String::new(),
                problems,
            })
        }
    }

    /// Validates everything and resolves presets and templates; reports every problem found.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_string(),
                message,
            })
        };

        let ee = &self.earthengine;
        if url::Url::parse(&ee.endpoint).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
            problem(
                "earthengine.endpoint",
                format!(
                    "{:?} is not an http(s) URL; e.g. https://earthengine.googleapis.com",
                    ee.endpoint
                ),
            );
        }
        if !ee.project.is_empty()
            && !ee
                .project
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            problem(
                "earthengine.project",
                format!(
                    "{:?} is not a Cloud project id (letters, digits, '-')",
                    ee.project
                ),
            );
        }
        if let Some(path) = ee.credentials.as_deref()
            && path != "none"
            // Read, not just opened: opening a directory succeeds, reading it does not.
            && let Err(e) = std::fs::read(path)
        {
            problem(
                "earthengine.credentials",
                format!(
                    "cannot read the service-account key {path}: {e}; give a readable JSON key path, \"none\" for emulators, or remove the key to use Application Default Credentials"
                ),
            );
        }
        if self.limits.ee_requests_per_second == 0 {
            problem(
                "limits.ee_requests_per_second",
                "must be at least 1 (EE allows 100 per project)".into(),
            );
        }
        if self.limits.active_exports_factor == 0 {
            problem("limits.active_exports_factor", "must be at least 1".into());
        }
        if self.limits.max_active_exports > MAX_ACTIVE_EXPORTS {
            problem(
                "limits.max_active_exports",
                format!(
                    "{} is above EE's {EE_QUEUE_CAP}-task queue minus a margin of {EE_QUEUE_MARGIN}; use at most {MAX_ACTIVE_EXPORTS} (0 = derive from EE)",
                    self.limits.max_active_exports
                ),
            );
        }
        if ee.timeout_secs == 0 {
            problem("earthengine.timeout_secs", "must be at least 1".into());
        }

        if self.queue.namespace.is_empty()
            || !self
                .queue
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            problem(
                "queue.namespace",
                format!(
                    "{:?} must be non-empty letters, digits, '-', '_', '.' or ':'",
                    self.queue.namespace
                ),
            );
        }
        if crate::queue::QueueUrl::parse(&self.queue.url).is_none() {
            problem(
                "queue.url",
                format!(
                    "{} is not a redis://, rediss:// or sqlite:// URL; e.g. redis://127.0.0.1:6379, \
                     sqlite:///var/lib/cedar/cedar.db, or leave it empty for sqlite://cedar.db in \
                     the working directory",
                    redact_url(&self.queue.url)
                ),
            );
        }

        if let Some(path) = self.queue.tls_ca_file.as_deref() {
            if !self.queue.url.starts_with("rediss://") {
                problem(
                    "queue.tls_ca_file",
                    format!(
                        "is only used with a rediss:// (TLS) queue.url, not {}; remove it or switch to rediss://",
                        redact_url(&self.queue.url)
                    ),
                );
            } else if let Err(e) = std::fs::read(path) {
                problem(
                    "queue.tls_ca_file",
                    format!("cannot read the CA certificate {path}: {e}; give a readable PEM file"),
                );
            }
        }

        let ex = &self.export;
        if ex.bucket.is_empty() {
            problem(
                "export.bucket",
                "is required: the Cloud Storage bucket EE exports into, e.g. bucket = \"my-exports\"".into(),
            );
        } else if !valid_bucket_name(&ex.bucket) {
            problem(
                "export.bucket",
                format!(
                    "{:?} is not a valid bucket name (3-63 of a-z 0-9 - _ ., starting and ending with a letter or digit)",
                    ex.bucket
                ),
            );
        }
        if ex.file_dimensions == 0 || !ex.file_dimensions.is_multiple_of(256) {
            problem(
                "export.file_dimensions",
                format!(
                    "{} must be a positive multiple of 256 (EE's tile size)",
                    ex.file_dimensions
                ),
            );
        }
        if ex.max_pixels == 0 {
            problem("export.max_pixels", "must be positive".into());
        }
        let mut template = |key: &str, kind: Kind, text: &str| match Template::parse(kind, text) {
            Ok(t) => Some(t),
            Err(e) => {
                problem(key, e.to_string());
                None
            }
        };
        let name_template = template("export.name_template", Kind::Name, &ex.name_template);
        let prefix_template = template("export.prefix_template", Kind::Prefix, &ex.prefix_template);
        let tracking_template =
            template("tracking.template", Kind::Tracking, &self.tracking.template);
        // A literal such as "../" can only show when rendered: try a sample order now rather
        // than failing at submit time.
        let sample = naming::ItemValues {
            collection_id: "LANDSAT/LC08/C02/T1_L2",
            row: 0,
            col: 0,
            period: crate::period::Period {
                start: chrono::NaiveDate::from_ymd_opt(2020, 1, 1).expect("valid date"),
                end: chrono::NaiveDate::from_ymd_opt(2021, 1, 1).expect("valid date"),
            },
            now: chrono::Utc::now(),
        };
        for (key, t) in [
            ("export.name_template", &name_template),
            ("export.prefix_template", &prefix_template),
        ] {
            if let Some(Err(e)) = t.as_ref().map(|t| t.render_item(&sample)) {
                problem(key, e.to_string());
            }
        }
        if self.tracking.prefix.is_empty()
            || self.tracking.prefix.starts_with('/')
            || self.tracking.prefix.split('/').any(|s| s == "..")
        {
            problem(
                "tracking.prefix",
                format!(
                    "{:?} must be a relative folder name such as CEDAR_TRACKING",
                    self.tracking.prefix
                ),
            );
        }
        if self.download.dest.trim().is_empty() {
            problem(
                "download.dest",
                "is empty; give a local path or an object_store URL".into(),
            );
        }

        if self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            problem(
                "metrics.listen",
                format!(
                    "{:?} is not a socket address; e.g. \"127.0.0.1:9464\" (loopback) or \"0.0.0.0:9464\"",
                    self.metrics.listen
                ),
            );
        }

        let store_url = if self.store.url.is_empty() {
            format!("gs://{}", ex.bucket)
        } else {
            self.store.url.clone()
        };
        if !self.store.url.is_empty() && url::Url::parse(&self.store.url).is_err() {
            problem(
                "store.url",
                format!(
                    "{:?} is not a URL; use gs://bucket, file:///path, memory:// or s3://bucket",
                    self.store.url
                ),
            );
        }

        let grid = match self.grid.resolve() {
            Ok(g) => {
                for e in g.validate() {
                    let (key, message) = grid_problem(e);
                    problem(&key, message);
                }
                Some(g)
            }
            Err(list) => {
                for (key, msg) in list {
                    problem(&key, msg);
                }
                None
            }
        };

        let mut collections = BTreeMap::new();
        for id in collection::PRESET_IDS {
            if let Some(spec) = collection::preset(id) {
                collections.insert(id.to_string(), spec);
            }
        }
        for (id, c) in &self.collections {
            match c.apply(id, collections.remove(id)) {
                Ok(spec) => {
                    collections.insert(id.clone(), spec);
                }
                Err(list) => {
                    for (field, msg) in list {
                        problem(&format!("collections.\"{id}\".{field}"), msg);
                    }
                }
            }
        }

        let known: std::collections::BTreeSet<String> = collections.keys().cloned().collect();
        let mut ingests = Vec::new();
        for (i, entry) in self.ingest.iter().enumerate() {
            match entry.resolve(i, grid.as_ref(), &known) {
                Ok(x) => ingests.push(x),
                Err(list) => {
                    for (key, msg) in list {
                        problem(&key, msg);
                    }
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for x in &ingests {
            if !names.insert(x.name.clone()) {
                problem(
                    "ingest",
                    format!("two entries are named {:?}; names must be unique", x.name),
                );
            }
        }

        match (grid, name_template, prefix_template, tracking_template) {
            (Some(grid), Some(name_template), Some(prefix_template), Some(tracking_template))
                if problems.is_empty() =>
            {
                Ok(Settings {
                    config: self.clone(),
                    grid,
                    collections,
                    name_template,
                    prefix_template,
                    tracking_template,
                    ingests,
                    store_url,
                })
            }
            _ => Err(ConfigError {
                source_name: String::new(),
                problems,
            }),
        }
    }
}

impl GridConfig {
    fn resolve(&self) -> Result<TileGrid, Vec<(String, String)>> {
        let explicit = [
            self.name.is_some(),
            self.crs.is_some(),
            self.ul.is_some(),
            self.res.is_some(),
            self.size.is_some(),
            self.limits.is_some(),
        ];
        if let Some(preset) = &self.preset {
            if explicit.iter().any(|x| *x) {
                return Err(vec![(
                    "grid".into(),
                    "set either preset or name/crs/ul/res/size/limits, not both".into(),
                )]);
            }
            return TileGrid::preset(preset)
                .map_err(|e| vec![("grid.preset".into(), e.to_string())]);
        }
        let mut missing = Vec::new();
        let need = |v: bool, key: &str, missing: &mut Vec<(String, String)>| {
            if !v {
                missing.push((
                    format!("grid.{key}"),
                    "is required when no grid preset is set (see config/default.toml)".into(),
                ));
            }
        };
        need(self.crs.is_some(), "crs", &mut missing);
        need(self.ul.is_some(), "ul", &mut missing);
        need(self.res.is_some(), "res", &mut missing);
        need(self.size.is_some(), "size", &mut missing);
        need(self.limits.is_some(), "limits", &mut missing);
        if !missing.is_empty() {
            return Err(missing);
        }
        let crs = Crs::try_from(self.crs.clone().unwrap_or_default())
            .map_err(|e| vec![grid_problem(e)])?;
        let [[r0, r1], [c0, c1]] = self.limits.unwrap_or_default();
        Ok(TileGrid {
            name: self.name.clone().unwrap_or_else(|| "custom".into()),
            crs,
            ul: self.ul.unwrap_or_default(),
            res: self.res.unwrap_or_default(),
            size: self.size.unwrap_or_default(),
            limits: Limits {
                rows: (r0, r1),
                cols: (c0, c1),
            },
        })
    }
}

impl CollectionConfig {
    /// Applies these overrides to `base` (a preset), or builds a new spec when there is none.
    fn apply(
        &self,
        id: &str,
        base: Option<CollectionSpec>,
    ) -> Result<CollectionSpec, Vec<(String, String)>> {
        let mut errs = Vec::new();
        if id.is_empty() || id.starts_with('/') || id.contains("//") {
            errs.push((
                "id".to_string(),
                format!("{id:?} is not an EE collection ID such as LANDSAT/LC08/C02/T1_L2"),
            ));
        }
        let is_new = base.is_none();
        if is_new {
            for (field, set) in [
                ("bands", self.bands.is_some()),
                ("nodata", self.nodata.is_some()),
                ("data_type", self.data_type.is_some()),
            ] {
                if !set {
                    errs.push((
                        field.to_string(),
                        format!(
                            "is required: {id} has no preset (presets: {})",
                            collection::PRESET_IDS.join(", ")
                        ),
                    ));
                }
            }
        }
        let mut spec = base.unwrap_or(CollectionSpec {
            id: id.to_string(),
            bands: Vec::new(),
            properties: vec!["system:index".into(), "system:time_start".into()],
            nodata: 0.0,
            data_type: DataType::Float,
            mosaic_per_day: true,
            filters: Vec::new(),
        });
        if let Some(bands) = &self.bands {
            if bands.is_empty() {
                errs.push(("bands".into(), "must list at least one band".into()));
            }
            let parsed: Vec<Band> = bands
                .iter()
                .filter_map(|b| match Band::try_from(b.clone()) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        errs.push(("bands".into(), e.to_string()));
                        None
                    }
                })
                .collect();
            let mut names: Vec<&str> = parsed.iter().map(|b| b.name.as_str()).collect();
            names.sort_unstable();
            if names.windows(2).any(|w| w[0] == w[1]) {
                errs.push(("bands".into(), "band names must be unique".into()));
            }
            spec.bands = parsed;
        }
        if let Some(p) = &self.properties {
            spec.properties = p.clone();
        }
        if let Some(t) = &self.data_type {
            match DataType::try_from(t.clone()) {
                Ok(t) => spec.data_type = t,
                Err(e) => errs.push(("data_type".into(), e.to_string())),
            }
        }
        if let Some(n) = self.nodata {
            spec.nodata = n;
        }
        if !spec.data_type.holds(spec.nodata) {
            errs.push((
                "nodata".into(),
                format!(
                    "{} does not fit data_type {}",
                    spec.nodata,
                    spec.data_type.name()
                ),
            ));
        }
        if let Some(m) = self.mosaic_per_day {
            spec.mosaic_per_day = m;
        }
        if let Some(filters) = &self.filters {
            spec.filters = filters
                .iter()
                .filter_map(|f| match f.parse::<PropertyFilter>() {
                    Ok(f) => Some(f),
                    Err(e) => {
                        errs.push(("filters".into(), e.to_string()));
                        None
                    }
                })
                .collect();
        }
        if errs.is_empty() { Ok(spec) } else { Err(errs) }
    }
}

/// Applies `CEDAR__SECTION__KEY=value` overrides. Values are read as TOML when they parse
/// (numbers, booleans, arrays), else taken as plain strings.
fn apply_env(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) {
    for (name, raw) in env {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
        if keys.iter().any(|k| k.is_empty()) {
            continue;
        }
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        let mut cur = &mut *table;
        for k in &keys[..keys.len() - 1] {
            let entry = cur
                .entry(k.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            cur = entry.as_table_mut().expect("just made a table");
        }
        cur.insert(keys[keys.len() - 1].clone(), value);
    }
}

/// The key and message of a grid error: `grid.res` and what is wrong with it, so that the key is
/// not printed twice ("grid: grid.res: …").
fn grid_problem(e: crate::grid::GridError) -> (String, String) {
    match e {
        crate::grid::GridError::Invalid { field, reason } => (format!("grid.{field}"), reason),
        other => ("grid".into(), other.to_string()),
    }
}

fn valid_bucket_name(b: &str) -> bool {
    (3..=222).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn valid_toml() -> String {
        "[earthengine]\nproject = \"p\"\n[export]\nbucket = \"my-bucket\"\n".to_string()
    }

    #[test]
    fn embedded_defaults_match_config_default() {
        let c = Config::from_toml("default", DEFAULT_TOML, no_env()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn a_minimal_file_validates_with_presets() {
        let c = Config::from_toml("t", &valid_toml(), no_env()).unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.store_url, "gs://my-bucket");
        assert_eq!(s.grid.name, "Landsat ARD v1 - CONUS");
        assert_eq!(s.collections.len(), collection::PRESET_IDS.len());
    }

    #[test]
    fn environment_overrides_win() {
        let env = vec![
            ("CEDAR__EXPORT__BUCKET".to_string(), "from-env".to_string()),
            (
                "CEDAR__EXPORT__FILE_DIMENSIONS".to_string(),
                "2048".to_string(),
            ),
            (
                "CEDAR__EARTHENGINE__CREDENTIALS".to_string(),
                "none".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let c = Config::from_toml("t", &valid_toml(), env).unwrap();
        assert_eq!(c.export.bucket, "from-env");
        assert_eq!(c.export.file_dimensions, 2048);
        assert_eq!(c.earthengine.credentials.as_deref(), Some("none"));
    }

    #[test]
    fn unknown_keys_are_errors_everywhere() {
        let text = format!("{}bukket = \"x\"\n[nope]\na = 1\n", valid_toml());
        let e = Config::from_toml("t", &text, no_env()).unwrap_err();
        let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"export.bukket"), "{e}");
        let env = vec![("CEDAR__EXPORT__BUKET".to_string(), "x".to_string())];
        let e = Config::from_toml("t", &valid_toml(), env).unwrap_err();
        assert_eq!(e.problems[0].key, "export.buket", "{e}");
        assert!(e.problems[0].message.contains("unknown"), "{e}");
    }

    #[test]
    fn wrong_types_and_malformed_toml_name_the_key() {
        let e =
            Config::from_toml("t", "[export]\nfile_dimensions = \"big\"\n", no_env()).unwrap_err();
        assert_eq!(e.problems[0].key, "export.file_dimensions", "{e}");
        let e = Config::from_toml("t", "[export\nbucket = 1", no_env()).unwrap_err();
        assert_eq!(e.problems[0].key, "toml");
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn validation_reports_every_problem_once() {
        let text = r#"
[earthengine]
endpoint = "ftp://x"
credentials = "/nonexistent/key.json"
[queue]
url = "http://user:hunter2@host"
[export]
file_dimensions = 1000
name_template = "{collection}_{period_start}"
[tracking]
template = "TRACKING_{date_start}"
[grid]
preset = "nope"
[metrics]
listen = "localhost"
[collections."MY/COLL"]
filters = ["CLOUD = 3"]
"#;
        let e = Config::from_toml("t", text, no_env())
            .unwrap()
            .validate()
            .unwrap_err();
        let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "earthengine.endpoint",
            "earthengine.credentials",
            "queue.url",
            "export.bucket",
            "export.file_dimensions",
            "export.name_template",
            "tracking.template",
            "grid.preset",
            "metrics.listen",
            "collections.\"MY/COLL\".bands",
            "collections.\"MY/COLL\".filters",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
        // The Redis password never appears in messages.
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn explicit_grid_and_collection_overrides() {
        let text = format!(
            "{}{}",
            valid_toml(),
            r#"
[grid]
preset = "Landsat ARD v1 - CONUS"
[collections."LANDSAT/LC08/C02/T1_L2"]
filters = ["CLOUD_COVER < 50"]
nodata = -9999
data_type = "int16"
"#
        );
        let s = Config::from_toml("t", &text, no_env())
            .unwrap()
            .validate()
            .unwrap();
        let l8 = &s.collections["LANDSAT/LC08/C02/T1_L2"];
        assert_eq!(l8.filters[0].to_string(), "CLOUD_COVER < 50");
        assert_eq!((l8.nodata, l8.data_type), (-9999.0, DataType::Int16));
        assert_eq!(l8.bands.len(), 8);

        let text = format!(
            "{}{}",
            valid_toml(),
            "[grid]\npreset = \"x\"\ncrs = \"EPSG:5070\"\n"
        );
        let e = Config::from_toml("t", &text, no_env())
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.problems[0].key, "grid");

        let mut c = Config::from_toml("t", &valid_toml(), no_env()).unwrap();
        c.grid = GridConfig {
            preset: None,
            name: Some("utm".into()),
            crs: Some("EPSG:32610".into()),
            ul: Some([500_000.0, 4_200_000.0]),
            res: Some([10.0, 20.0]),
            size: Some([100, 50]),
            limits: Some([[0, 3], [0, 4]]),
        };
        let s = c.validate().unwrap();
        assert_eq!(s.grid.tile(1, 1).unwrap().bounds.top, 4_199_000.0);
    }

    #[test]
    fn an_explicit_grid_in_a_file_replaces_the_default_preset() {
        let text = format!(
            "{}[grid]\nname = \"utm\"\ncrs = \"EPSG:32610\"\nul = [500000.0, 4200000.0]\nres = [10.0, 20.0]\nsize = [100, 50]\nlimits = [[0, 3], [0, 4]]\n",
            valid_toml()
        );
        let s = Config::from_toml("t", &text, no_env())
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.grid.name, "utm");
        // No [grid] table at all keeps the default preset.
        let s = Config::from_toml("t", &valid_toml(), no_env())
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.grid.name, "Landsat ARD v1 - CONUS");
    }

    #[test]
    fn queue_urls_redis_sqlite_or_empty() {
        for ok in [
            "",
            "redis://127.0.0.1:6379",
            "rediss://:pw@h:6380/1",
            "sqlite:///var/lib/cedar/cedar.db",
            "sqlite://cedar.db",
        ] {
            let mut c = Config::from_toml("t", &valid_toml(), no_env()).unwrap();
            c.queue.url = ok.into();
            assert!(c.validate().is_ok(), "{ok:?}");
        }
        for bad in ["sqlite://", "/tmp/cedar.db", "postgres://u:hunter2@h/db"] {
            let mut c = Config::from_toml("t", &valid_toml(), no_env()).unwrap();
            c.queue.url = bad.into();
            let e = c.validate().unwrap_err();
            assert_eq!(e.problems[0].key, "queue.url", "{bad:?}: {e}");
            assert!(e.to_string().contains("sqlite://"), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }
}
