//! Naming templates: the names of exported images, their folder (prefix) and tracking documents.
//!
//! Templates use Python `str.format` syntax, as in the original CEDAR: `{key}`, `{key:03d}`,
//! `{{`/`}}` for literal braces. Each template kind has a fixed set of keys; a template that
//! names any other key is rejected when it is parsed (at `config check`), never at submit time.
//!
//! Item (name and prefix) keys: `collection` (ID with '/' → '_'), `collection_id` (raw ID),
//! `row`/`tile.vertical`, `col`/`tile.horizontal`, `tile` (`hHHHvVVV`), `date_start`,
//! `date_end` (ISO dates; end exclusive), `now`.
//! Tracking keys: `collections` (joined with '_'), `tile_indices` (e.g. `h063v052_h064v052`),
//! `tile_count`, `period_start`, `period_end`, `period_freq`, `now`.
//!
//! `now` is UTC in ISO 8601 basic format (`20240131T120000Z`): unlike the original's local
//! `isoformat()` it has no ':' (which some filesystems and EE descriptions reject).
//!
//! Each submission also carries an EE **workload tag**, the label EE reports its computations
//! and exports under: [`workload_tag_for`] derives one from the tracking name,
//! [`check_workload_tag`] holds an explicit one to EE's rule.

use chrono::{DateTime, Utc};

use crate::period::{Frequency, Period};

/// The original CEDAR's default image name.
pub const DEFAULT_NAME_TEMPLATE: &str =
    "{collection}_h{tile.horizontal:03d}v{tile.vertical:03d}_{date_start}_{date_end}";
/// The original CEDAR's default folder of exported images.
pub const DEFAULT_PREFIX_TEMPLATE: &str = "CEDAR_PREARD";
/// The original config template's tracking name (its library default named keys that did not
/// exist and crashed).
pub const DEFAULT_TRACKING_TEMPLATE: &str = "TRACKING_PERIOD{period_start}-{period_end}_TASK{now}";
/// Where tracking documents live in the store.
pub const DEFAULT_TRACKING_PREFIX: &str = "CEDAR_TRACKING";

/// Errors of templates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamingError {
    #[error("template {template:?} names unknown key {{{key}}}; known keys: {known}")]
    UnknownKey {
        template: String,
        key: String,
        known: String,
    },
    #[error("template {template:?}: {reason}")]
    Syntax { template: String, reason: String },
    #[error(
        "template {template:?}: format spec {spec:?} of {{{key}}} is not supported; use e.g. {{{key}:03d}} for zero-padded numbers"
    )]
    BadSpec {
        template: String,
        key: String,
        spec: String,
    },
    #[error("template {template:?} renders to {rendered:?}, which {reason}")]
    BadName {
        template: String,
        rendered: String,
        reason: &'static str,
    },
}

/// Which values a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The image name (`name_template`): one object name, no '/'.
    Name,
    /// The folder of an item (`prefix_template`): may contain '/'.
    Prefix,
    /// The tracking document name (`tracking.template`): no '/'.
    Tracking,
}

const ITEM_INT_KEYS: &[&str] = &["row", "col", "tile.vertical", "tile.horizontal"];
const ITEM_STR_KEYS: &[&str] = &[
    "collection",
    "collection_id",
    "tile",
    "date_start",
    "date_end",
    "now",
];
const TRACKING_INT_KEYS: &[&str] = &["tile_count"];
const TRACKING_STR_KEYS: &[&str] = &[
    "collections",
    "tile_indices",
    "period_start",
    "period_end",
    "period_freq",
    "now",
];

impl Kind {
    fn keys(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Kind::Name | Kind::Prefix => (ITEM_INT_KEYS, ITEM_STR_KEYS),
            Kind::Tracking => (TRACKING_INT_KEYS, TRACKING_STR_KEYS),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Field {
        key: String,
        width: usize,
        zero: bool,
    },
}

/// A parsed, validated template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    text: String,
    kind: Kind,
    parts: Vec<Part>,
}

/// A value a template can refer to.
#[derive(Debug, Clone)]
pub enum Value {
    Int(i64),
    Str(String),
}

/// The values of one item: a collection, a tile and a period.
#[derive(Debug, Clone)]
pub struct ItemValues<'a> {
    pub collection_id: &'a str,
    pub row: u32,
    pub col: u32,
    pub period: Period,
    pub now: DateTime<Utc>,
}

/// The values of one submission.
#[derive(Debug, Clone)]
pub struct TrackingValues<'a> {
    pub collections: &'a [String],
    /// (row, col) of each tile, in submission order.
    pub tiles: &'a [(u32, u32)],
    pub period_start: chrono::NaiveDate,
    pub period_end: chrono::NaiveDate,
    pub period_freq: Option<Frequency>,
    pub now: DateTime<Utc>,
}

/// `now` as used in names: UTC, ISO 8601 basic format.
pub fn now_stamp(now: DateTime<Utc>) -> String {
    now.format("%Y%m%dT%H%M%SZ").to_string()
}

fn tile_label(row: u32, col: u32) -> String {
    format!("h{col:03}v{row:03}")
}

impl ItemValues<'_> {
    fn get(&self, key: &str) -> Value {
        match key {
            "row" | "tile.vertical" => Value::Int(self.row.into()),
            "col" | "tile.horizontal" => Value::Int(self.col.into()),
            "collection" => Value::Str(self.collection_id.replace('/', "_")),
            "collection_id" => Value::Str(self.collection_id.to_string()),
            "tile" => Value::Str(tile_label(self.row, self.col)),
            "date_start" => Value::Str(self.period.start.to_string()),
            "date_end" => Value::Str(self.period.end.to_string()),
            "now" => Value::Str(now_stamp(self.now)),
            other => unreachable!("key {other} was rejected when the template was parsed"),
        }
    }
}

impl TrackingValues<'_> {
    fn get(&self, key: &str) -> Value {
        match key {
            "collections" => Value::Str(
                self.collections
                    .iter()
                    .map(|c| c.replace('/', "_"))
                    .collect::<Vec<_>>()
                    .join("_"),
            ),
            "tile_indices" => Value::Str(
                self.tiles
                    .iter()
                    .map(|(r, c)| tile_label(*r, *c))
                    .collect::<Vec<_>>()
                    .join("_"),
            ),
            "tile_count" => Value::Int(self.tiles.len() as i64),
            "period_start" => Value::Str(self.period_start.to_string()),
            "period_end" => Value::Str(self.period_end.to_string()),
            "period_freq" => Value::Str(
                self.period_freq
                    .map_or_else(|| "none".to_string(), |f| f.to_string()),
            ),
            "now" => Value::Str(now_stamp(self.now)),
            other => unreachable!("key {other} was rejected when the template was parsed"),
        }
    }
}

impl Template {
    /// Parses `text` as a template of `kind`, rejecting unknown keys and unsupported specs.
    pub fn parse(kind: Kind, text: &str) -> Result<Template, NamingError> {
        let syntax = |reason: &str| NamingError::Syntax {
            template: text.to_string(),
            reason: reason.to_string(),
        };
        if text.trim().is_empty() {
            return Err(syntax("is empty"));
        }
        let (int_keys, str_keys) = kind.keys();
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(syntax("single '}' (write '}}' for a literal brace)")),
                '{' => {
                    let mut field = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(syntax(
                                    "unclosed '{' (write '{{' for a literal brace)",
                                ));
                            }
                            Some(ch) => field.push(ch),
                        }
                    }
                    let (key, spec) = field.split_once(':').unwrap_or((&field, ""));
                    let key = key.trim();
                    let is_int = int_keys.contains(&key);
                    if !is_int && !str_keys.contains(&key) {
                        let mut known: Vec<&str> =
                            int_keys.iter().chain(str_keys).copied().collect();
                        known.sort();
                        return Err(NamingError::UnknownKey {
                            template: text.to_string(),
                            key: key.to_string(),
                            known: known.join(", "),
                        });
                    }
                    let (width, zero) =
                        parse_spec(spec, is_int).ok_or_else(|| NamingError::BadSpec {
                            template: text.to_string(),
                            key: key.to_string(),
                            spec: spec.to_string(),
                        })?;
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Field {
                        key: key.to_string(),
                        width,
                        zero,
                    });
                }
                other => lit.push(other),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template {
            text: text.to_string(),
            kind,
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn render_with(&self, get: impl Fn(&str) -> Value) -> Result<String, NamingError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Field { key, width, zero } => match get(key) {
                    Value::Int(v) if *zero => out.push_str(&format!("{v:0width$}", width = *width)),
                    Value::Int(v) => out.push_str(&format!("{v:>width$}", width = *width)),
                    Value::Str(s) => out.push_str(&s),
                },
            }
        }
        self.check(out)
    }

    /// Refuses renderings that would not be a safe object name.
    fn check(&self, rendered: String) -> Result<String, NamingError> {
        let bad = |reason| NamingError::BadName {
            template: self.text.clone(),
            rendered: rendered.clone(),
            reason,
        };
        if rendered.trim().is_empty() {
            return Err(bad("is empty"));
        }
        if rendered.chars().any(|c| c.is_control()) {
            return Err(bad("contains control characters"));
        }
        match self.kind {
            Kind::Name | Kind::Tracking if rendered.contains('/') => {
                Err(bad("contains '/' (only the prefix may name folders)"))
            }
            Kind::Prefix
                if rendered.starts_with('/')
                    || rendered.split('/').any(|s| s == ".." || s == ".") =>
            {
                Err(bad("is not a relative folder path"))
            }
            _ if rendered.split('/').any(|s| s == "..") => Err(bad("contains '..'")),
            _ => Ok(rendered),
        }
    }

    /// Renders a name or prefix template for one item.
    pub fn render_item(&self, v: &ItemValues<'_>) -> Result<String, NamingError> {
        debug_assert!(matches!(self.kind, Kind::Name | Kind::Prefix));
        self.render_with(|k| v.get(k))
    }

    /// Renders a tracking template for one submission.
    pub fn render_tracking(&self, v: &TrackingValues<'_>) -> Result<String, NamingError> {
        debug_assert_eq!(self.kind, Kind::Tracking);
        self.render_with(|k| v.get(k))
    }

    /// The literal text before the first field: what every rendered name starts with.
    pub fn literal_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Lit(s)) => s,
            _ => "",
        }
    }
}

/// Parses a Python format spec: `""`, `"d"`, `"3"`, `"03"`, `"03d"` (numbers only).
fn parse_spec(spec: &str, is_int: bool) -> Option<(usize, bool)> {
    if spec.is_empty() {
        return Some((0, false));
    }
    if !is_int {
        return None;
    }
    let digits = spec.strip_suffix('d').unwrap_or(spec);
    if digits.is_empty() {
        return Some((0, false));
    }
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let zero = digits.starts_with('0') && digits.len() > 1;
    Some((digits.parse().ok()?, zero))
}

/// The two templates that name an order: its object name and its folder prefix.
#[derive(Debug, Clone, Copy)]
pub struct ItemTemplates<'a> {
    pub name: &'a Template,
    pub prefix: &'a Template,
}

/// The longest workload tag EE accepts.
pub const WORKLOAD_TAG_MAX: usize = 63;

/// Whether `tag` is an Earth Engine workload tag: 1–63 characters of lowercase letters, digits,
/// '-' and '_', starting and ending with a letter or digit. This is the check Google's Python
/// client makes in `ee.data.setWorkloadTag` (`ee/_state.py`:
/// `([a-z0-9]|[a-z0-9][-_a-z0-9]{0,61}[a-z0-9])`); its docstring also allows capitals and '.',
/// the code does not, and the code is what users of that client have been held to.
pub fn check_workload_tag(tag: &str) -> Result<(), String> {
    let inner = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if (1..=WORKLOAD_TAG_MAX).contains(&tag.len())
        && tag.chars().all(inner)
        && edge(tag.chars().next())
        && edge(tag.chars().next_back())
    {
        Ok(())
    } else {
        Err(format!(
            "{tag:?} is not an Earth Engine workload tag: 1-{WORKLOAD_TAG_MAX} lowercase letters, digits, '-' or '_', starting and ending with a letter or digit, e.g. \"landsat-2024\""
        ))
    }
}

/// The workload tag of a submission named `tracking`: the name in lowercase, every run of other
/// characters made one '-', trimmed to a letter or digit at each end. A name that leaves more
/// than [`WORKLOAD_TAG_MAX`] characters keeps its start and ends with 8 hex digits of a hash
/// of the whole name, so two long names that share a start still get different tags.
pub fn workload_tag_for(tracking: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut tag = String::with_capacity(tracking.len());
    for c in tracking.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
            tag.push(c);
        } else if !tag.ends_with('-') {
            tag.push('-');
        }
    }
    let edge = |c: char| !c.is_ascii_alphanumeric();
    let tag = tag.trim_matches(edge);
    if !tag.is_empty() && tag.len() <= WORKLOAD_TAG_MAX {
        return tag.to_owned();
    }
    let hash: String = Sha256::digest(tracking.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    // Only ASCII is left, so byte positions are characters.
    let head = tag[..tag.len().min(WORKLOAD_TAG_MAX - hash.len() - 1)].trim_end_matches(edge);
    if head.is_empty() {
        format!("cedar-{hash}")
    } else {
        format!("{head}-{hash}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn item() -> ItemValues<'static> {
        ItemValues {
            collection_id: "LANDSAT/LE07/C02/T1_L2",
            row: 52,
            col: 69,
            period: Period {
                start: "1997-01-01".parse().unwrap(),
                end: "2002-01-01".parse().unwrap(),
            },
            now: Utc.with_ymd_and_hms(2019, 7, 18, 16, 45, 25).unwrap(),
        }
    }

    #[test]
    fn default_name_matches_the_original_example() {
        let t = Template::parse(Kind::Name, DEFAULT_NAME_TEMPLATE).unwrap();
        assert_eq!(
            t.render_item(&item()).unwrap(),
            "LANDSAT_LE07_C02_T1_L2_h069v052_1997-01-01_2002-01-01"
        );
    }

    #[test]
    fn short_keys_and_padding() {
        let t =
            Template::parse(Kind::Name, "{tile}_h{col:03}v{row:03}_{row}_{col:4d}_{{x}}").unwrap();
        assert_eq!(
            t.render_item(&item()).unwrap(),
            "h069v052_h069v052_52_  69_{x}"
        );
        let p = Template::parse(Kind::Prefix, "CEDAR/{collection_id}/{now}").unwrap();
        assert_eq!(
            p.render_item(&item()).unwrap(),
            "CEDAR/LANDSAT/LE07/C02/T1_L2/20190718T164525Z"
        );
    }

    #[test]
    fn tracking_template_renders_every_key() {
        let t = Template::parse(
            Kind::Tracking,
            "TRACKING_{collections}_{tile_indices}_{tile_count}_{period_start}_{period_end}_{period_freq}_{now}",
        )
        .unwrap();
        let collections = vec!["LANDSAT/LC08/C02/T1_L2".to_string()];
        let tiles = vec![(52, 63), (52, 64)];
        let v = TrackingValues {
            collections: &collections,
            tiles: &tiles,
            period_start: "2020-01-01".parse().unwrap(),
            period_end: "2021-01-01".parse().unwrap(),
            period_freq: Some("1YS".parse().unwrap()),
            now: Utc.with_ymd_and_hms(2024, 1, 31, 12, 0, 0).unwrap(),
        };
        assert_eq!(
            t.render_tracking(&v).unwrap(),
            "TRACKING_LANDSAT_LC08_C02_T1_L2_h063v052_h064v052_2_2020-01-01_2021-01-01_1YS_20240131T120000Z"
        );
        let d = Template::parse(Kind::Tracking, DEFAULT_TRACKING_TEMPLATE).unwrap();
        assert_eq!(d.literal_prefix(), "TRACKING_PERIOD");
        assert_eq!(
            d.render_tracking(&v).unwrap(),
            "TRACKING_PERIOD2020-01-01-2021-01-01_TASK20240131T120000Z"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_at_parse_time() {
        // The original library default: these keys do not exist for tracking names.
        let e = Template::parse(
            Kind::Tracking,
            "TRACKING_PERIOD{date_start}-{date_end}_TASK{today}",
        )
        .unwrap_err();
        assert!(
            matches!(&e, NamingError::UnknownKey { key, .. } if key == "date_start"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("known keys: collections, now, period_end"),
            "{e}"
        );
        let e = Template::parse(Kind::Name, "{collection}_{period_start}").unwrap_err();
        assert!(matches!(e, NamingError::UnknownKey { .. }));
    }

    #[test]
    fn syntax_and_spec_errors() {
        for bad in [
            "{collection",
            "x}",
            "",
            "{collection:>10}",
            "{row:x}",
            "{row:03f}",
        ] {
            assert!(Template::parse(Kind::Name, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rendered_names_are_checked() {
        let t = Template::parse(Kind::Name, "{collection_id}").unwrap();
        assert!(matches!(
            t.render_item(&item()),
            Err(NamingError::BadName { .. })
        ));
        let p = Template::parse(Kind::Prefix, "../{collection}").unwrap();
        assert!(p.render_item(&item()).is_err());
        let p = Template::parse(Kind::Prefix, "/abs").unwrap();
        assert!(p.render_item(&item()).is_err());
    }

    #[test]
    fn workload_tags_follow_ees_rule() {
        for good in ["a", "0", "landsat-2024", "a_b-c9", &"x".repeat(63)] {
            assert_eq!(check_workload_tag(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "_a",
            "a_",
            "Landsat",
            "a.b",
            "a b",
            "é",
            &"x".repeat(64),
        ] {
            let e = check_workload_tag(bad).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?} is not an Earth Engine workload tag")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_tracking_name_becomes_a_valid_workload_tag() {
        for (name, tag) in [
            (
                "TRACKING_PERIOD2021-07-01-2021-09-01_TASK20240131T120000Z",
                "tracking_period2021-07-01-2021-09-01_task20240131t120000z",
            ),
            (
                "INGEST-l8_monthly-2024-01-01",
                "ingest-l8_monthly-2024-01-01",
            ),
            ("__Campaign: CONUS (2024)!__", "campaign-conus-2024"),
            ("a..b", "a-b"),
        ] {
            assert_eq!(workload_tag_for(name), tag, "{name}");
        }
        let long = |end: &str| format!("T_{}_{end}", "LANDSAT_LC08_C02_T1_L2".repeat(4));
        let (a, b) = (workload_tag_for(&long("A")), workload_tag_for(&long("B")));
        assert!(
            a.len() <= WORKLOAD_TAG_MAX && a.starts_with("t_landsat_lc08_c02_t1_l2landsat"),
            "{a}"
        );
        assert_ne!(a, b, "long names that share a start keep apart");
        assert!(workload_tag_for("___").starts_with("cedar-"));
        for name in [long("A"), "___".into(), "ÄÖÜ-x".into(), "T".repeat(200)] {
            let tag = workload_tag_for(&name);
            assert_eq!(check_workload_tag(&tag), Ok(()), "{name} -> {tag}");
            assert_eq!(workload_tag_for(&name), tag, "deterministic");
        }
    }
}
