//! A synthetic but deterministic image catalogue: which scenes of which collection cover a
//! footprint on which dates, with plausible properties and native bands.
//!
//! Queries arrive with a rectangle in an arbitrary CRS (a tile's WKT or an EPSG code) that the
//! emulator cannot reproject. Scene coverage is therefore derived from a lattice laid in the
//! query's own coordinates: 185 km cells for Landsat (one WRS-2 path per lattice column, rows
//! overlapping by a fifth so that some dates have two scenes to mosaic) and ~110 km MGRS-like
//! tiles for Sentinel-2. Blocks of 3×3 cells are "ocean" with a 10% chance and hold no scenes,
//! so some tile-periods are empty. Everything is hashed from the seed, the family and the CRS.

use chrono::{Duration, NaiveDate, Utc};
use serde_json::{Map, Value, json};

mod scenes;

use super::stable_hash;
use scenes::{LandsatSensor, landsat_image, mgrs_tile, sentinel2_image};

/// Why a catalogue lookup failed; the messages are EE's.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum CatalogueError {
    #[error(
        "ImageCollection.load: ImageCollection asset '{0}' not found (does not exist or caller does not have access)."
    )]
    UnknownCollection(String),
    #[error(
        "Image.load: Image asset '{0}' not found (does not exist or caller does not have access)."
    )]
    UnknownImage(String),
    #[error("Collection query aborted after accumulating over {0} elements.")]
    TooMany(usize),
}

/// EE stops listing a collection at this many elements.
pub(crate) const MAX_ELEMENTS: usize = 5000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Family {
    Landsat {
        code: &'static str,
        spacecraft: &'static str,
        sensor: &'static str,
        /// Days added to the path's 16-day cycle: Landsat 7 and 9 fly 8 days after 5 and 8.
        cycle_offset: i64,
    },
    Sentinel2,
}

/// One supported collection.
#[derive(Debug, PartialEq)]
pub(crate) struct CollectionSpec {
    pub id: &'static str,
    family: Family,
    first: (i32, u32, u32),
    last: Option<(i32, u32, u32)>,
}

static COLLECTIONS: &[CollectionSpec] = &[
    CollectionSpec {
        id: "LANDSAT/LT05/C02/T1_L2",
        family: Family::Landsat {
            code: "LT05",
            spacecraft: "LANDSAT_5",
            sensor: "TM",
            cycle_offset: 0,
        },
        first: (1984, 3, 16),
        last: Some((2012, 5, 5)),
    },
    CollectionSpec {
        id: "LANDSAT/LE07/C02/T1_L2",
        family: Family::Landsat {
            code: "LE07",
            spacecraft: "LANDSAT_7",
            sensor: "ETM",
            cycle_offset: 8,
        },
        first: (1999, 5, 28),
        last: Some((2022, 4, 6)),
    },
    CollectionSpec {
        id: "LANDSAT/LC08/C02/T1_L2",
        family: Family::Landsat {
            code: "LC08",
            spacecraft: "LANDSAT_8",
            sensor: "OLI_TIRS",
            cycle_offset: 0,
        },
        first: (2013, 3, 18),
        last: None,
    },
    CollectionSpec {
        id: "LANDSAT/LC09/C02/T1_L2",
        family: Family::Landsat {
            code: "LC09",
            spacecraft: "LANDSAT_9",
            sensor: "OLI_TIRS",
            cycle_offset: 8,
        },
        first: (2021, 10, 31),
        last: None,
    },
    CollectionSpec {
        id: "COPERNICUS/S2_SR_HARMONIZED",
        family: Family::Sentinel2,
        first: (2017, 3, 28),
        last: None,
    },
];

/// Looks up a collection by id.
pub(crate) fn collection(id: &str) -> Result<&'static CollectionSpec, CatalogueError> {
    COLLECTIONS
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| CatalogueError::UnknownCollection(id.to_owned()))
}

/// A query rectangle in the query's own CRS (`None`: EE's default, WGS 84 degrees).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Footprint {
    pub crs: Option<String>,
    pub bbox: [f64; 4],
}

impl Footprint {
    /// Whether coordinates are degrees rather than metres.
    pub fn geographic(&self) -> bool {
        match self.crs.as_deref() {
            None => true,
            Some(crs) => {
                let crs = crs.trim_start().to_ascii_uppercase();
                crs == "EPSG:4326" || crs.starts_with("GEOGCS") || crs.starts_with("GEOGCRS")
            }
        }
    }
}

/// A band as `getInfo` describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Band {
    pub id: String,
    pub precision: &'static str,
    pub min: f64,
    pub max: f64,
    pub dimensions: Option<[u64; 2]>,
    pub crs: String,
    pub crs_transform: [f64; 6],
}

impl Band {
    pub fn to_json(&self) -> Value {
        let mut data_type = json!({"type": "PixelType", "precision": self.precision});
        if self.precision == "int" {
            data_type["min"] = json!(self.min as i64);
            data_type["max"] = json!(self.max as i64);
        }
        let mut band = json!({
            "id": self.id,
            "data_type": data_type,
            "crs": self.crs,
            "crs_transform": self.crs_transform,
        });
        if let Some(dimensions) = self.dimensions {
            band["dimensions"] = json!(dimensions);
        }
        band
    }
}

/// An image record: what `getInfo` returns for an `Image`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ImageRecord {
    pub id: Option<String>,
    pub version: Option<i64>,
    pub bands: Vec<Band>,
    pub properties: Map<String, Value>,
}

impl ImageRecord {
    pub fn to_json(&self) -> Value {
        let mut image = json!({"type": "Image"});
        if let Some(id) = &self.id {
            image["id"] = json!(id);
        }
        if let Some(version) = self.version {
            image["version"] = json!(version);
        }
        image["bands"] = Value::Array(self.bands.iter().map(Band::to_json).collect());
        if !self.properties.is_empty() {
            image["properties"] = Value::Object(self.properties.clone());
        }
        image
    }
}

struct Lattice {
    cell: f64,
    /// How far a scene reaches into its neighbour cells, in the same units.
    overlap: f64,
}

impl CollectionSpec {
    fn lattice(&self, geographic: bool) -> Lattice {
        let (cell_m, overlap_m) = match self.family {
            Family::Landsat { .. } => (185_000.0, 37_000.0),
            Family::Sentinel2 => (100_000.0, 9_800.0),
        };
        let scale = if geographic { 1.0 / 111_320.0 } else { 1.0 };
        Lattice {
            cell: cell_m * scale,
            overlap: overlap_m * scale,
        }
    }

    fn family_name(&self) -> &'static str {
        match self.family {
            Family::Landsat { .. } => "landsat",
            Family::Sentinel2 => "sentinel2",
        }
    }

    fn day_range(&self) -> (i64, Option<i64>) {
        let day = |(y, m, d): (i32, u32, u32)| {
            days(NaiveDate::from_ymd_opt(y, m, d).expect("valid date"))
        };
        (day(self.first), self.last.map(day))
    }

    /// Every image of this collection that intersects all `footprints` and starts in
    /// `[start_ms, end_ms)`, sorted by time then id.
    pub fn query(
        &self,
        footprints: &[Footprint],
        start_ms: i64,
        end_ms: i64,
        seed: u64,
    ) -> Result<Vec<ImageRecord>, CatalogueError> {
        // Without a footprint the whole globe matches: EE refuses to list that.
        let Some(first) = footprints.first() else {
            return Err(CatalogueError::TooMany(MAX_ELEMENTS));
        };
        let lattice = self.lattice(first.geographic());
        let crs = first.crs.clone().unwrap_or_default();
        let [x0, y0, x1, y1] = first.bbox;
        let (first_day, last_day) = self.day_range();
        let today = days(Utc::now().date_naive());
        let start_day = start_ms.div_euclid(86_400_000).max(first_day);
        let end_day = (end_ms - 1)
            .div_euclid(86_400_000)
            .min(last_day.unwrap_or(today));
        let mut images = Vec::new();
        // Scenes reach `overlap` below their cell (and, for Sentinel-2, right of it); the exact
        // overlap test below drops the candidates that only come close.
        let (c, o) = (lattice.cell, lattice.overlap);
        let columns = ((x0 - o) / c).floor() as i64..=(x1 / c).floor() as i64;
        let rows = (y0 / c).floor() as i64..=((y1 + o) / c).floor() as i64;
        let cells =
            (columns.end() - columns.start() + 1).saturating_mul(rows.end() - rows.start() + 1);
        if cells > MAX_ELEMENTS as i64 {
            return Err(CatalogueError::TooMany(MAX_ELEMENTS));
        }
        for ix in columns {
            for iy in rows.clone() {
                let scene = self.scene_bbox(&lattice, ix, iy);
                let inside = footprints
                    .iter()
                    .all(|f| f.crs.clone().unwrap_or_default() != crs || overlaps(scene, f.bbox));
                if !inside || self.ocean(seed, &crs, ix, iy) {
                    continue;
                }
                let cycle = self.cycle(seed, &crs, ix);
                let mut day = start_day;
                while day <= end_day {
                    let next = day + (cycle.1 - (day - cycle.0).rem_euclid(cycle.1)) % cycle.1;
                    if next > end_day {
                        break;
                    }
                    let image = self.image(seed, &crs, ix, iy, next);
                    let time = image.properties["system:time_start"].as_i64().unwrap_or(0);
                    if (start_ms..end_ms).contains(&time) {
                        images.push(image);
                        if images.len() > MAX_ELEMENTS {
                            return Err(CatalogueError::TooMany(MAX_ELEMENTS));
                        }
                    }
                    day = next + 1;
                }
            }
        }
        images.sort_by(|a, b| {
            let key = |i: &ImageRecord| (i.properties["system:time_start"].as_i64(), i.id.clone());
            key(a).cmp(&key(b))
        });
        Ok(images)
    }

    fn scene_bbox(&self, lattice: &Lattice, ix: i64, iy: i64) -> [f64; 4] {
        let (c, o) = (lattice.cell, lattice.overlap);
        let (x, y) = (ix as f64 * c, iy as f64 * c);
        match self.family {
            // WRS-2 rows of one path overlap north-south only.
            Family::Landsat { .. } => [x, y - o, x + c, y + c],
            // MGRS tiles overlap their neighbours in both directions.
            Family::Sentinel2 => [x, y - o, x + c + o, y + c],
        }
    }

    fn ocean(&self, seed: u64, crs: &str, ix: i64, iy: i64) -> bool {
        let block = format!("{},{}", ix.div_euclid(3), iy.div_euclid(3));
        stable_hash(seed, &["ocean", self.family_name(), crs, &block]).is_multiple_of(10)
    }

    /// The acquisition cycle of a lattice column: (a day on the cycle, cycle length in days).
    fn cycle(&self, seed: u64, crs: &str, ix: i64) -> (i64, i64) {
        match self.family {
            Family::Landsat { cycle_offset, .. } => {
                let path = wrs_path(seed, crs, ix);
                (path_cycle_day(path) + cycle_offset, 16)
            }
            Family::Sentinel2 => {
                let offset = stable_hash(seed, &["s2-cycle", crs, &ix.to_string()]) % 5;
                (offset as i64, 5)
            }
        }
    }

    fn image(&self, seed: u64, crs: &str, ix: i64, iy: i64, day: i64) -> ImageRecord {
        match self.family {
            Family::Landsat {
                code,
                spacecraft,
                sensor,
                ..
            } => {
                let path = wrs_path(seed, crs, ix);
                let row_base = (stable_hash(seed, &["row", crs]) % 248) as i64;
                let row = 1 + (row_base - iy).rem_euclid(248);
                let sensor = LandsatSensor {
                    code,
                    spacecraft,
                    sensor,
                };
                landsat_image(self.id, sensor, path, row, day)
            }
            Family::Sentinel2 => {
                let tile = mgrs_tile(seed, crs, ix, iy);
                sentinel2_image(self, &tile, day)
            }
        }
    }

    /// Loads one image by asset id, as `Image.load` does. Ids are checked for form, date range
    /// and (for Landsat) the path's 16-day cycle, so every id a query returned loads.
    pub fn load(&self, id: &str) -> Result<ImageRecord, CatalogueError> {
        let unknown = || CatalogueError::UnknownImage(id.to_owned());
        let index = id
            .strip_prefix(self.id)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(unknown)?;
        let (first_day, last_day) = self.day_range();
        let in_range = |day: i64| day >= first_day && last_day.is_none_or(|last| day <= last);
        match self.family {
            Family::Landsat {
                code,
                spacecraft,
                sensor,
                cycle_offset,
            } => {
                let parts: Vec<&str> = index.split('_').collect();
                let [prefix, path_row, date] = parts.as_slice() else {
                    return Err(unknown());
                };
                let path: i64 = path_row
                    .get(..3)
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(unknown)?;
                let row: i64 = path_row
                    .get(3..)
                    .and_then(|r| r.parse().ok())
                    .ok_or_else(unknown)?;
                let day = NaiveDate::parse_from_str(date, "%Y%m%d")
                    .map(days)
                    .map_err(|_| unknown())?;
                let on_cycle = (day - path_cycle_day(path) - cycle_offset).rem_euclid(16) == 0;
                if *prefix != code
                    || path_row.len() != 6
                    || !(1..=233).contains(&path)
                    || !(1..=248).contains(&row)
                    || !in_range(day)
                    || !on_cycle
                {
                    return Err(unknown());
                }
                let sensor = LandsatSensor {
                    code,
                    spacecraft,
                    sensor,
                };
                Ok(landsat_image(self.id, sensor, path, row, day))
            }
            Family::Sentinel2 => {
                let parts: Vec<&str> = index.split('_').collect();
                let [start, _, tile] = parts.as_slice() else {
                    return Err(unknown());
                };
                let day = start
                    .get(..8)
                    .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
                    .map(days)
                    .ok_or_else(unknown)?;
                let tile = tile
                    .strip_prefix('T')
                    .filter(|t| t.len() == 5)
                    .ok_or_else(unknown)?;
                if !in_range(day) {
                    return Err(unknown());
                }
                let image = sentinel2_image(self, tile, day);
                if image.id.as_deref() == Some(id) {
                    Ok(image)
                } else {
                    Err(unknown())
                }
            }
        }
    }
}

/// The collection-level `getInfo` header (without `features`).
pub(crate) fn collection_header(spec: &CollectionSpec) -> Value {
    json!({"type": "ImageCollection", "bands": [], "id": spec.id, "version": 1_700_000_000_000_000_i64})
}

fn overlaps(a: [f64; 4], b: [f64; 4]) -> bool {
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
}

fn days(date: NaiveDate) -> i64 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days()
}

fn date_of(day: i64) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch") + Duration::days(day)
}

/// WRS-2 paths are numbered westward, so adjacent lattice columns get adjacent paths.
fn wrs_path(seed: u64, crs: &str, ix: i64) -> i64 {
    let base = (stable_hash(seed, &["path", crs]) % 233) as i64;
    1 + (base - ix).rem_euclid(233)
}

/// Adjacent paths are imaged 7 days apart, as WRS-2's 16-day cycle does.
fn path_cycle_day(path: i64) -> i64 {
    (path * 7).rem_euclid(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i32, m: u32, d: u32) -> i64 {
        days(NaiveDate::from_ymd_opt(y, m, d).unwrap()) * 86_400_000
    }

    fn utm_tile(x: f64, y: f64) -> Footprint {
        Footprint {
            crs: Some("EPSG:32610".into()),
            bbox: [x, y, x + 150_000.0, y + 150_000.0],
        }
    }

    #[test]
    fn queries_are_deterministic_and_within_the_range() {
        let lc08 = collection("LANDSAT/LC08/C02/T1_L2").unwrap();
        let tile = utm_tile(400_000.0, 4_100_000.0);
        let a = lc08
            .query(
                std::slice::from_ref(&tile),
                ms(2021, 6, 1),
                ms(2021, 9, 1),
                7,
            )
            .unwrap();
        let b = lc08
            .query(&[tile], ms(2021, 6, 1), ms(2021, 9, 1), 7)
            .unwrap();
        assert_eq!(a, b);
        for image in &a {
            let t = image.properties["system:time_start"].as_i64().unwrap();
            assert!((ms(2021, 6, 1)..ms(2021, 9, 1)).contains(&t));
            assert!(
                image
                    .id
                    .as_deref()
                    .unwrap()
                    .starts_with("LANDSAT/LC08/C02/T1_L2/LC08_")
            );
        }
    }

    #[test]
    fn some_dates_have_two_scenes_and_some_tiles_are_ocean() {
        let lc08 = collection("LANDSAT/LC08/C02/T1_L2").unwrap();
        let (mut two, mut empty) = (0, 0);
        for i in 0..60 {
            let tile = utm_tile(f64::from(i % 10) * 150_000.0, f64::from(i / 10) * 150_000.0);
            let images = lc08
                .query(&[tile], ms(2021, 1, 1), ms(2021, 3, 1), 0)
                .unwrap();
            empty += usize::from(images.is_empty());
            let mut dates: Vec<&str> = images
                .iter()
                .map(|i| i.properties["DATE_ACQUIRED"].as_str().unwrap())
                .collect();
            let n = dates.len();
            dates.dedup();
            two += usize::from(dates.len() < n);
        }
        assert!(two > 0, "no date with two scenes");
        assert!(empty > 0 && empty < 30, "{empty} empty tiles of 60");
    }

    #[test]
    fn every_queried_id_loads_and_others_do_not() {
        for id in [
            "LANDSAT/LT05/C02/T1_L2",
            "COPERNICUS/S2_SR_HARMONIZED",
            "LANDSAT/LC09/C02/T1_L2",
        ] {
            let spec = collection(id).unwrap();
            let images = spec
                .query(&[utm_tile(0.0, 0.0)], ms(2022, 1, 1), ms(2022, 2, 1), 3)
                .unwrap_or_default();
            for image in images {
                assert_eq!(spec.load(image.id.as_deref().unwrap()).as_ref(), Ok(&image));
            }
        }
        let lc08 = collection("LANDSAT/LC08/C02/T1_L2").unwrap();
        assert!(
            lc08.load("LANDSAT/LC08/C02/T1_L2/LC08_044034_19990101")
                .is_err()
        );
        assert!(lc08.load("LANDSAT/LC08/C02/T1_L2/nonsense").is_err());
        assert!(matches!(
            collection("LANDSAT/LC08/C01/T1_SR"),
            Err(CatalogueError::UnknownCollection(_))
        ));
    }

    #[test]
    fn landsat_bands_follow_the_sensor() {
        let lt05 = collection("LANDSAT/LT05/C02/T1_L2").unwrap();
        let images = lt05
            .query(&[utm_tile(0.0, 0.0)], ms(2000, 1, 1), ms(2000, 6, 1), 1)
            .unwrap();
        let bands: Vec<&str> = images[0].bands.iter().map(|b| b.id.as_str()).collect();
        assert!(bands.contains(&"ST_B6") && !bands.contains(&"ST_B10"));
        assert!(images[0].properties.contains_key("IMAGE_QUALITY_TM"));
    }

    #[test]
    fn an_unbounded_query_is_refused() {
        let s2 = collection("COPERNICUS/S2_SR_HARMONIZED").unwrap();
        assert_eq!(
            s2.query(&[], 0, i64::MAX, 0),
            Err(CatalogueError::TooMany(MAX_ELEMENTS))
        );
    }
}
