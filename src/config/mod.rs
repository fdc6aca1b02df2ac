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

use crate::collection::{self, CollectionSpec};
use crate::grid::TileGrid;
use crate::naming::{self, ItemTemplates, Kind, Template};
use crate::queue::tracking::Submission;
use crate::recipe::Recipe;
use crate::store::{EMULATOR_HOST_ENV, gcs_endpoint};

mod collections;
mod grid;
mod sections;

pub use self::collections::CollectionConfig;
pub use self::grid::GridConfig;
use self::grid::grid_problem;
pub use self::sections::{
    DownloadConfig, EarthEngineConfig, ExportConfig, LimitsConfig, MetricsConfig, QueueConfig,
    StoreConfig, TrackingConfig, WebConfig, WebPlacement, WorkerConfig,
};

/// The documented defaults, embedded so that cedar runs without any file.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of environment overrides: `CEDAR__EXPORT__BUCKET=…` sets `[export] bucket`.
pub const ENV_PREFIX: &str = "CEDAR__";

/// One problem in a configuration, rendered as `key: what is wrong; how to fix it`, followed by
/// `(set by the environment variable CEDAR__…)` when a variable set the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
    /// The environment variable that set the value: the problem is then the variable's, not the
    /// file's.
    pub variable: Option<String>,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
            variable: None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        match &self.variable {
            Some(var) => write!(f, " (set by the environment variable {var})"),
            None => Ok(()),
        }
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
            problems: vec![Problem::new(key, message)],
        }
    }
}

/// The problems found so far, in the order found.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Problem::new(key, message));
    }

    fn extend(&mut self, list: Vec<(String, String)>) {
        for (key, message) in list {
            self.add(&key, message);
        }
    }
}

/// The configuration as written (after defaults and environment overrides).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub earthengine: EarthEngineConfig,
    pub queue: QueueConfig,
    pub export: ExportConfig,
    pub store: StoreConfig,
    pub tracking: TrackingConfig,
    pub download: DownloadConfig,
    pub metrics: MetricsConfig,
    pub web: WebConfig,
    pub limits: LimitsConfig,
    pub worker: WorkerConfig,
    pub grid: GridConfig,
    pub collections: BTreeMap<String, CollectionConfig>,
    /// `[[ingest]]`: continuous ingest entries (see [`crate::ingest`]).
    pub ingest: Vec<crate::ingest::IngestConfig>,
    /// The keys set by `CEDAR__…` variables, and the variable that set each, so that a problem
    /// with such a value names the variable, not the file. Not a setting.
    #[serde(skip)]
    pub from_env: BTreeMap<String, String>,
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

    /// What exports of `collections` are under these settings, to freeze into a submission;
    /// `id` is the submission's folder in the bucket ([`Recipe::new_id`]), `None` only to stand
    /// in for a submission recorded before recipes were frozen.
    pub fn recipe(&self, collections: &[String], id: Option<String>) -> Recipe {
        let export = &self.config.export;
        Recipe {
            id,
            grid: self.grid.clone(),
            collections: collections
                .iter()
                .filter_map(|c| Some((c.clone(), self.collections.get(c)?.clone())))
                .collect(),
            bucket: export.bucket.clone(),
            name_template: self.name_template.as_str().to_string(),
            prefix_template: self.prefix_template.as_str().to_string(),
            file_dimensions: export.file_dimensions,
            cloud_optimized: export.cloud_optimized,
            max_pixels: export.max_pixels,
        }
    }

    /// The recipe `sub` runs with: the one frozen into it, or — for a submission recorded
    /// before recipes were frozen — these settings', as the versions that recorded it did.
    pub fn recipe_of(&self, sub: &Submission) -> Recipe {
        sub.recipe
            .clone()
            .unwrap_or_else(|| self.recipe(&sub.collections, None))
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
        let mut config = Self::from_toml(&name, &text, env)?;
        // The default SQLite queue of a configuration file lives beside the file, so that every
        // command run with it finds the same queue whatever the working directory.
        if let Some(dir) = path.and_then(Path::parent)
            && config.queue.url.is_empty()
            && let Ok(dir) = std::path::absolute(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
        {
            config.queue.url = format!("sqlite://{}", dir.join("cedar.db").display());
        }
        Ok(config)
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
        let from_env = apply_env(&mut table, env);
        let mut unknown = Vec::new();
        let de = toml::Value::Table(table);
        let result: Result<Config, _> = serde_path_to_error::deserialize(
            serde_ignored::Deserializer::new(de, &mut |path: serde_ignored::Path<'_>| {
                unknown.push(path.to_string())
            }),
        );
        // Every unknown key is reported, not only the first: the sections do not deny unknown
        // fields themselves (serde would stop at the first), serde_ignored collects them all.
        let mut problems: Vec<Problem> = unknown
            .into_iter()
            .map(|key| {
                Problem::new(
                    key,
                    "unknown key; remove it or check its spelling against config/default.toml",
                )
            })
            .collect();
        match result {
            Ok(config) if problems.is_empty() => Ok(Config { from_env, ..config }),
            Ok(_) => Err(ConfigError {
                source_name: source_name.into(),
                problems: name_variables(&from_env, problems),
            }),
            Err(e) => {
                let key = e.path().to_string();
                // The bare message: toml's Display adds "in `key`" on lines of its own, and the
                // key is already in front of every problem.
                let inner = e.into_inner().message().to_owned();
                let message = format!("{inner}; see config/default.toml for the expected type");
                problems.push(Problem::new(key, message));
                Err(ConfigError {
                    source_name: source_name.into(),
                    problems: name_variables(&from_env, problems),
                })
            }
        }
    }

    /// The tile grid alone, for commands that need nothing else from the configuration.
    pub fn grid_settings(&self) -> Result<TileGrid, ConfigError> {
        let grid = self.grid.resolve().map_err(|list| ConfigError {
            source_name: String::new(),
            problems: name_variables(
                &self.from_env,
                list.into_iter()
                    .map(|(key, message)| Problem::new(key, message))
                    .collect(),
            ),
        })?;
        let problems: Vec<Problem> = grid
            .validate()
            .into_iter()
            .map(|e| {
                let (key, message) = grid_problem(e);
                Problem::new(key, message)
            })
            .collect();
        if problems.is_empty() {
            Ok(grid)
        } else {
            Err(ConfigError {
                source_name: String::new(),
                problems: name_variables(&self.from_env, problems),
            })
        }
    }

    /// Validates `[queue]` alone, for the commands that read the queue and nothing else.
    pub fn validate_queue(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        self.queue.validate(&mut p);
        if p.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                source_name: String::new(),
                problems: name_variables(&self.from_env, p.0),
            })
        }
    }

    /// Validates everything and resolves presets and templates; reports every problem found.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let mut p = Problems::default();
        self.earthengine.validate(&mut p);
        self.limits.validate(&mut p);
        self.queue.validate(&mut p);
        self.export.validate(&mut p);
        let (name_template, prefix_template, tracking_template) = self.templates(&mut p);
        self.tracking.validate(&mut p);
        self.download.validate(&mut p);
        self.metrics.validate(&mut p);
        self.web.validate(&mut p);
        self.worker.validate(&mut p);
        let store_url = if self.store.url.is_empty() {
            format!("gs://{}", self.export.bucket)
        } else {
            self.store.url.clone()
        };
        self.store.validate(&self.export.bucket, &mut p);

        let grid = match self.grid.resolve() {
            Ok(g) => {
                for e in g.validate() {
                    let (key, message) = grid_problem(e);
                    p.add(&key, message);
                }
                Some(g)
            }
            Err(list) => {
                p.extend(list);
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
                        p.add(&format!("collections.\"{id}\".{field}"), msg);
                    }
                }
            }
        }

        let known: std::collections::BTreeSet<String> = collections.keys().cloned().collect();
        let mut ingests = Vec::new();
        for (i, entry) in self.ingest.iter().enumerate() {
            match entry.resolve(i, grid.as_ref(), &known) {
                Ok(x) => ingests.push(x),
                Err(list) => p.extend(list),
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for x in &ingests {
            if !names.insert(x.name.clone()) {
                p.add(
                    "ingest",
                    format!("two entries are named {:?}; names must be unique", x.name),
                );
            }
        }

        match (grid, name_template, prefix_template, tracking_template) {
            (Some(grid), Some(name_template), Some(prefix_template), Some(tracking_template))
                if p.0.is_empty() =>
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
                problems: name_variables(&self.from_env, p.0),
            }),
        }
    }

    /// Parses the three templates; a literal such as "../" can only show when rendered, so a
    /// sample order is rendered now rather than failing at submit time.
    fn templates(
        &self,
        p: &mut Problems,
    ) -> (Option<Template>, Option<Template>, Option<Template>) {
        let mut template = |key: &str, kind: Kind, text: &str| match Template::parse(kind, text) {
            Ok(t) => Some(t),
            Err(e) => {
                p.add(key, e.to_string());
                None
            }
        };
        let ex = &self.export;
        let name_template = template("export.name_template", Kind::Name, &ex.name_template);
        let prefix_template = template("export.prefix_template", Kind::Prefix, &ex.prefix_template);
        let tracking_template =
            template("tracking.template", Kind::Tracking, &self.tracking.template);
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
                p.add(key, e.to_string());
            }
        }
        if let (Some(name), Some(prefix)) = (&name_template, &prefix_template)
            && let Some(lacking) = indistinct(ItemTemplates { name, prefix }, &sample)
        {
            p.add(
                "export.name_template",
                format!(
                    "names two orders of different {lacking} alike (with export.prefix_template), so one would overwrite the other's files; include {{collection}}, {{tile}} and {{date_start}}"
                ),
            );
        }
        if let Some(t) = &tracking_template {
            let rendered = t.render_tracking(&naming::TrackingValues {
                collections: &["LANDSAT/LC08/C02/T1_L2".to_owned()],
                tiles: &[(0, 0)],
                period_start: sample.period.start,
                period_end: sample.period.end,
                period_freq: None,
                now: sample.now,
            });
            match rendered {
                Ok(name)
                    if name.is_empty()
                        || name == "."
                        || name == ".."
                        || name.contains(['/', '\\']) =>
                {
                    p.add(
                        "tracking.template",
                        format!(
                            "renders {name:?}, which is not a single folder and file name; use letters, digits and keys such as {{period_start}} and {{now}}, without '/'"
                        ),
                    );
                }
                Ok(_) => {}
                Err(e) => p.add("tracking.template", e.to_string()),
            }
        }
        (name_template, prefix_template, tracking_template)
    }
}

/// What the item templates fail to tell apart, if anything: orders that differ only in their
/// collection, tile row, tile column or period, rendered from `sample`, must get different
/// object names.
fn indistinct(t: ItemTemplates<'_>, sample: &naming::ItemValues<'_>) -> Option<&'static str> {
    let base = |v: &naming::ItemValues<'_>| -> Option<String> {
        Some(format!(
            "{}/{}",
            t.prefix.render_item(v).ok()?,
            t.name.render_item(v).ok()?
        ))
    };
    let first = base(sample)?;
    let next = crate::period::Period {
        start: sample.period.end,
        end: sample.period.end + (sample.period.end - sample.period.start),
    };
    let variants = [
        (
            "collections",
            naming::ItemValues {
                collection_id: "LANDSAT/LE07/C02/T1_L2",
                ..*sample
            },
        ),
        (
            "tile rows",
            naming::ItemValues {
                row: sample.row + 1,
                ..*sample
            },
        ),
        (
            "tile columns",
            naming::ItemValues {
                col: sample.col + 1,
                ..*sample
            },
        ),
        (
            "periods",
            naming::ItemValues {
                period: next,
                ..*sample
            },
        ),
    ];
    variants
        .iter()
        .find(|(_, v)| base(v).is_some_and(|b| b == first))
        .map(|(what, _)| *what)
}

/// The problems, each whose key a `CEDAR__…` variable set saying so: the fix is in the
/// environment, not in the file the error is reported against.
fn name_variables(from_env: &BTreeMap<String, String>, problems: Vec<Problem>) -> Vec<Problem> {
    problems
        .into_iter()
        .map(|problem| Problem {
            variable: from_env.get(&problem.key).cloned(),
            ..problem
        })
        .collect()
}

/// Applies `CEDAR__SECTION__KEY=value` overrides. Values are read as TOML when they parse
/// (numbers, booleans, arrays), else taken as plain strings.
///
/// `STORAGE_EMULATOR_HOST` (the variable Google's own client libraries honour) fills
/// `[store] endpoint` when neither the file nor a `CEDAR__STORE__ENDPOINT` override set it, so
/// that nothing deeper in the crate reads the environment.
///
/// Returns the key each variable set (`export.bucket` → `CEDAR__EXPORT__BUCKET`), so that a
/// problem with a value from the environment names the variable, not the file.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    let mut from_env = BTreeMap::new();
    let mut emulator_host = None;
    for (name, raw) in env {
        if name == EMULATOR_HOST_ENV {
            emulator_host = Some(raw);
            continue;
        }
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
        if keys.iter().any(|k| k.is_empty()) {
            continue;
        }
        from_env.insert(keys.join("."), name.clone());
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
    if let Some(host) = emulator_host.filter(|h| !h.is_empty()) {
        let store = table
            .entry("store")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(store) = store.as_table_mut() {
            let configured = store
                .get("endpoint")
                .and_then(|v| v.as_str())
                .is_some_and(|e| !e.is_empty());
            if !configured {
                store.insert(
                    "endpoint".into(),
                    toml::Value::String(gcs_endpoint(None, Some(&host))),
                );
            }
        }
    }
    from_env
}

#[cfg(test)]
mod tests;
