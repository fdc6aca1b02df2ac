//! A collection spec says how one EE image collection becomes pre-ARD: which bands (renamed
//! to common names), which image properties to record, the nodata value and pixel type, whether
//! same-day scenes are mosaicked, and which property filters select the scenes.
//!
//! Presets ship for Landsat Collection 2 Level-2 (LT05, LE07, LC08, LC09) and Sentinel-2 SR
//! harmonized; `[collections."ID"]` in the config overrides any field of a preset or defines a
//! new collection.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Errors in a collection spec or one of its filters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CollectionError {
    #[error(
        "filter {text:?}: {reason}; write it as PROPERTY OP VALUE, e.g. \"CLOUD_COVER_LAND < 80\" (OP is one of < <= > >= == !=)"
    )]
    Filter { text: String, reason: String },
    #[error(
        "band {text:?}: write NATIVE or NATIVE=NAME, e.g. \"SR_B2=blue\" (letters, digits, '_' only)"
    )]
    Band { text: String },
    #[error("data_type {0:?} is not one of {list}", list = DataType::NAMES.join(", "))]
    DataType(String),
}

/// The pixel type of the exported image. Every band is cast to it before unmasking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataType {
    Int8,
    Uint8,
    Int16,
    Uint16,
    Int32,
    Uint32,
    Float,
    Double,
}

impl DataType {
    pub const NAMES: &'static [&'static str] = &[
        "int8", "uint8", "int16", "uint16", "int32", "uint32", "float", "double",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Bytes per pixel per band, before compression.
    pub fn bytes(self) -> u32 {
        match self {
            DataType::Int8 | DataType::Uint8 => 1,
            DataType::Int16 | DataType::Uint16 => 2,
            DataType::Int32 | DataType::Uint32 | DataType::Float => 4,
            DataType::Double => 8,
        }
    }

    /// Whether `v` is representable in this type (nodata must be).
    pub fn holds(self, v: f64) -> bool {
        let int_range = |lo: f64, hi: f64| v.fract() == 0.0 && (lo..=hi).contains(&v);
        match self {
            DataType::Int8 => int_range(-128.0, 127.0),
            DataType::Uint8 => int_range(0.0, 255.0),
            DataType::Int16 => int_range(-32768.0, 32767.0),
            DataType::Uint16 => int_range(0.0, 65535.0),
            DataType::Int32 => int_range(-2_147_483_648.0, 2_147_483_647.0),
            DataType::Uint32 => int_range(0.0, 4_294_967_295.0),
            DataType::Float | DataType::Double => v.is_finite(),
        }
    }
}

impl TryFrom<String> for DataType {
    type Error = CollectionError;

    fn try_from(s: String) -> Result<Self, CollectionError> {
        const ALL: [DataType; 8] = [
            DataType::Int8,
            DataType::Uint8,
            DataType::Int16,
            DataType::Uint16,
            DataType::Int32,
            DataType::Uint32,
            DataType::Float,
            DataType::Double,
        ];
        ALL.into_iter()
            .find(|t| t.name() == s.to_ascii_lowercase())
            .ok_or(CollectionError::DataType(s))
    }
}

impl From<DataType> for String {
    fn from(t: DataType) -> String {
        t.name().to_string()
    }
}

/// One selected band: its native name in the collection and its name in the export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Band {
    pub native: String,
    pub name: String,
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl TryFrom<String> for Band {
    type Error = CollectionError;

    fn try_from(text: String) -> Result<Self, CollectionError> {
        let (native, name) = match text.split_once('=') {
            Some((n, r)) => (n.trim(), r.trim()),
            None => (text.trim(), text.trim()),
        };
        if is_identifier(native) && is_identifier(name) {
            Ok(Band {
                native: native.to_string(),
                name: name.to_string(),
            })
        } else {
            Err(CollectionError::Band { text })
        }
    }
}

impl From<Band> for String {
    fn from(b: Band) -> String {
        if b.native == b.name {
            b.native
        } else {
            format!("{}={}", b.native, b.name)
        }
    }
}

/// A comparison operator of a property filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Lt,
    Lte,
    Gt,
    Gte,
    Eq,
    Neq,
}

impl CompareOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Lt => "<",
            CompareOp::Lte => "<=",
            CompareOp::Gt => ">",
            CompareOp::Gte => ">=",
            CompareOp::Eq => "==",
            CompareOp::Neq => "!=",
        }
    }
}

/// The right-hand side of a property filter.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    Number(f64),
    Text(String),
}

impl fmt::Display for FilterValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterValue::Number(n) => write!(f, "{n}"),
            FilterValue::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// A property comparison such as `CLOUD_COVER_LAND < 80`, applied to each scene before export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PropertyFilter {
    pub property: String,
    pub op: CompareOp,
    pub value: FilterValue,
}

impl fmt::Display for PropertyFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.property, self.op.symbol(), self.value)
    }
}

impl From<PropertyFilter> for String {
    fn from(p: PropertyFilter) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for PropertyFilter {
    type Error = CollectionError;

    fn try_from(text: String) -> Result<Self, CollectionError> {
        text.parse()
    }
}

impl std::str::FromStr for PropertyFilter {
    type Err = CollectionError;

    fn from_str(text: &str) -> Result<Self, CollectionError> {
        let err = |reason: &str| CollectionError::Filter {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        // Longest operators first so that "<=" is not read as "<".
        const OPS: [(&str, CompareOp); 6] = [
            ("<=", CompareOp::Lte),
            (">=", CompareOp::Gte),
            ("==", CompareOp::Eq),
            ("!=", CompareOp::Neq),
            ("<", CompareOp::Lt),
            (">", CompareOp::Gt),
        ];
        let (pos, sym, op) = OPS
            .iter()
            .filter_map(|(sym, op)| text.find(sym).map(|p| (p, *sym, *op)))
            .min_by_key(|(p, sym, _)| (*p, std::cmp::Reverse(sym.len())))
            .ok_or_else(|| {
                if text.contains('=') {
                    err("'=' alone is not an operator, use '=='")
                } else {
                    err("no comparison operator")
                }
            })?;
        let property = text[..pos].trim();
        let raw = text[pos + sym.len()..].trim();
        if property.is_empty()
            || !property
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(err("the property name must be letters, digits, '_' or ':'"));
        }
        if raw.is_empty() {
            return Err(err("no value after the operator"));
        }
        let value = if let Some(s) = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .or_else(|| raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        {
            FilterValue::Text(s.to_string())
        } else {
            match raw.parse::<f64>() {
                Ok(n) if n.is_finite() => FilterValue::Number(n),
                _ => return Err(err("the value must be a number or a quoted string")),
            }
        };
        if matches!(value, FilterValue::Text(_)) && !matches!(op, CompareOp::Eq | CompareOp::Neq) {
            return Err(err("strings can only be compared with == or !="));
        }
        Ok(PropertyFilter {
            property: property.to_string(),
            op,
            value,
        })
    }
}

/// Everything cedar needs to know about one collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionSpec {
    /// The EE collection ID, e.g. `LANDSAT/LC08/C02/T1_L2`.
    pub id: String,
    /// Bands in export order, renamed to common names.
    pub bands: Vec<Band>,
    /// Image properties recorded in the per-image metadata JSON.
    pub properties: Vec<String>,
    /// The value masked pixels get in the export.
    pub nodata: f64,
    pub data_type: DataType,
    /// Mosaic the scenes of one UTC day into one image (merges overlapping WRS-2 rows).
    pub mosaic_per_day: bool,
    /// Every filter must hold for a scene to be exported.
    pub filters: Vec<PropertyFilter>,
}

impl CollectionSpec {
    /// The collection ID with '/' replaced by '_', as used in names.
    pub fn name_safe_id(&self) -> String {
        self.id.replace('/', "_")
    }
}

/// IDs of the collections that ship with presets.
pub const PRESET_IDS: &[&str] = &[
    "LANDSAT/LT05/C02/T1_L2",
    "LANDSAT/LE07/C02/T1_L2",
    "LANDSAT/LC08/C02/T1_L2",
    "LANDSAT/LC09/C02/T1_L2",
    "COPERNICUS/S2_SR_HARMONIZED",
];

fn bands(list: &[&str]) -> Vec<Band> {
    list.iter()
        .map(|b| Band::try_from(b.to_string()).expect("preset bands are valid"))
        .collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The shipped spec of a collection, if there is one.
///
/// Landsat Collection 2 surface reflectance is stored as scaled UInt16 whose fill value is 0,
/// so the presets keep `uint16` with nodata 0 (the original's int16/-9999 would overflow C2
/// values above 32767).
pub fn preset(id: &str) -> Option<CollectionSpec> {
    const LANDSAT_COMMON: &[&str] = &[
        "CLOUD_COVER",
        "CLOUD_COVER_LAND",
        "DATE_ACQUIRED",
        "EARTH_SUN_DISTANCE",
        "GEOMETRIC_RMSE_MODEL",
        "GEOMETRIC_RMSE_MODEL_X",
        "GEOMETRIC_RMSE_MODEL_Y",
        "LANDSAT_PRODUCT_ID",
        "PROCESSING_SOFTWARE_VERSION",
        "SPACECRAFT_ID",
        "SUN_AZIMUTH",
        "SUN_ELEVATION",
        "WRS_PATH",
        "WRS_ROW",
        "system:index",
        "system:time_start",
    ];
    let landsat = |band_list: &[&str], quality: &str| CollectionSpec {
        id: id.to_string(),
        bands: bands(band_list),
        properties: {
            let mut p = strings(LANDSAT_COMMON);
            p.push(quality.to_string());
            p.sort();
            p
        },
        nodata: 0.0,
        data_type: DataType::Uint16,
        mosaic_per_day: true,
        filters: vec![
            "CLOUD_COVER_LAND < 80"
                .parse()
                .expect("valid preset filter"),
        ],
    };
    const TM_ETM: &[&str] = &[
        "SR_B1=blue",
        "SR_B2=green",
        "SR_B3=red",
        "SR_B4=nir",
        "SR_B5=swir1",
        "SR_B7=swir2",
        "ST_B6=thermal",
        "QA_PIXEL=qa_pixel",
    ];
    const OLI: &[&str] = &[
        "SR_B2=blue",
        "SR_B3=green",
        "SR_B4=red",
        "SR_B5=nir",
        "SR_B6=swir1",
        "SR_B7=swir2",
        "ST_B10=thermal",
        "QA_PIXEL=qa_pixel",
    ];
    match id {
        "LANDSAT/LT05/C02/T1_L2" | "LANDSAT/LE07/C02/T1_L2" => {
            Some(landsat(TM_ETM, "IMAGE_QUALITY"))
        }
        "LANDSAT/LC08/C02/T1_L2" | "LANDSAT/LC09/C02/T1_L2" => {
            Some(landsat(OLI, "IMAGE_QUALITY_OLI"))
        }
        "COPERNICUS/S2_SR_HARMONIZED" => Some(CollectionSpec {
            id: id.to_string(),
            bands: bands(&[
                "B2=blue",
                "B3=green",
                "B4=red",
                "B5=rededge1",
                "B6=rededge2",
                "B7=rededge3",
                "B8=nir",
                "B8A=nir08",
                "B11=swir1",
                "B12=swir2",
                "SCL=scl",
            ]),
            properties: strings(&[
                "CLOUDY_PIXEL_PERCENTAGE",
                "MGRS_TILE",
                "PROCESSING_BASELINE",
                "PRODUCT_ID",
                "SENSING_ORBIT_NUMBER",
                "SPACECRAFT_NAME",
                "system:index",
                "system:time_start",
            ]),
            nodata: 0.0,
            data_type: DataType::Uint16,
            mosaic_per_day: true,
            filters: vec![
                "CLOUDY_PIXEL_PERCENTAGE < 80"
                    .parse()
                    .expect("valid preset filter"),
            ],
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_every_operator() {
        let cases = [
            (
                "CLOUD_COVER_LAND < 80",
                "CLOUD_COVER_LAND",
                CompareOp::Lt,
                FilterValue::Number(80.0),
            ),
            (
                "CLOUD_COVER<=80.5",
                "CLOUD_COVER",
                CompareOp::Lte,
                FilterValue::Number(80.5),
            ),
            (
                "SUN_ELEVATION > -3",
                "SUN_ELEVATION",
                CompareOp::Gt,
                FilterValue::Number(-3.0),
            ),
            (
                "WRS_ROW >= 30",
                "WRS_ROW",
                CompareOp::Gte,
                FilterValue::Number(30.0),
            ),
            (
                "SPACECRAFT_ID == \"LANDSAT_8\"",
                "SPACECRAFT_ID",
                CompareOp::Eq,
                FilterValue::Text("LANDSAT_8".into()),
            ),
            (
                "MGRS_TILE != '10SEG'",
                "MGRS_TILE",
                CompareOp::Neq,
                FilterValue::Text("10SEG".into()),
            ),
        ];
        for (text, prop, op, value) in cases {
            let f: PropertyFilter = text.parse().unwrap();
            assert_eq!(
                (f.property.as_str(), f.op, f.value.clone()),
                (prop, op, value),
                "{text}"
            );
            // Display round-trips through the parser.
            assert_eq!(f.to_string().parse::<PropertyFilter>().unwrap(), f);
        }
    }

    #[test]
    fn bad_filters_say_why() {
        for (text, why) in [
            ("CLOUD_COVER = 80", "'=' alone"),
            ("CLOUD_COVER 80", "no comparison operator"),
            ("< 80", "property name"),
            ("CLOUD COVER < 80", "property name"),
            ("CLOUD_COVER <", "no value"),
            ("CLOUD_COVER < eighty", "number or a quoted string"),
            ("SPACECRAFT_ID < \"L8\"", "== or !="),
        ] {
            let e = text.parse::<PropertyFilter>().unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains(&format!("{text:?}")),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn bands_parse_and_render() {
        let b = Band::try_from("SR_B2=blue".to_string()).unwrap();
        assert_eq!((b.native.as_str(), b.name.as_str()), ("SR_B2", "blue"));
        assert_eq!(String::from(b), "SR_B2=blue");
        assert_eq!(
            String::from(Band::try_from("B8".to_string()).unwrap()),
            "B8"
        );
        assert!(Band::try_from("SR B2=blue".to_string()).is_err());
        assert!(Band::try_from("=blue".to_string()).is_err());
    }

    #[test]
    fn every_preset_is_consistent() {
        for id in PRESET_IDS {
            let p = preset(id).unwrap();
            assert_eq!(p.id, *id);
            assert!(p.data_type.holds(p.nodata));
            let mut names: Vec<_> = p.bands.iter().map(|b| &b.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), p.bands.len(), "{id}: band names unique");
        }
        assert_eq!(
            preset("LANDSAT/LC08/C02/T1_L2").unwrap().bands[6].native,
            "ST_B10"
        );
        assert_eq!(
            preset("LANDSAT/LT05/C02/T1_L2").unwrap().bands[6].native,
            "ST_B6"
        );
        assert!(preset("LANDSAT/LC08/C01/T1_SR").is_none());
    }

    #[test]
    fn data_types_bound_nodata() {
        assert!(DataType::Int16.holds(-9999.0));
        assert!(!DataType::Uint16.holds(-9999.0));
        assert!(!DataType::Int16.holds(0.5));
        assert!(DataType::Float.holds(0.5));
        assert_eq!(
            DataType::try_from("UINT16".to_string()).unwrap(),
            DataType::Uint16
        );
        assert!(DataType::try_from("int64".to_string()).is_err());
    }
}
