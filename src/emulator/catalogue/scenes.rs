//! The scenes of the synthetic catalogue: ids, native bands and properties of one Landsat
//! Collection 2 Level-2 or Sentinel-2 L2A image, as EE's `getInfo` shows them.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use serde_json::{Map, json};

use super::{Band, CollectionSpec, ImageRecord, date_of};
use crate::emulator::{stable_hash, unit};

pub(super) fn mgrs_tile(seed: u64, crs: &str, ix: i64, iy: i64) -> String {
    const BANDS: &[u8] = b"CDEFGHJKLMNPQRSTUVWX";
    const COLUMNS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const ROWS: &[u8] = b"ABCDEFGHJKLMNPQRSTUV";
    let zone = 1 + (stable_hash(seed, &["zone", crs]) as i64 + ix.div_euclid(6)).rem_euclid(60);
    let band = BANDS
        [(stable_hash(seed, &["band", crs]) as i64 + iy.div_euclid(9)).rem_euclid(20) as usize];
    let column = COLUMNS[ix.rem_euclid(24) as usize];
    let row = ROWS[iy.rem_euclid(20) as usize];
    format!("{zone:02}{}{}{}", band as char, column as char, row as char)
}

pub(super) fn landsat_bands(code: &str, zone: i64, hash: u64) -> Vec<Band> {
    let oli = code.starts_with("LC");
    let names: &[&str] = if oli {
        &[
            "SR_B1",
            "SR_B2",
            "SR_B3",
            "SR_B4",
            "SR_B5",
            "SR_B6",
            "SR_B7",
            "SR_QA_AEROSOL",
            "ST_B10",
        ]
    } else {
        &[
            "SR_B1",
            "SR_B2",
            "SR_B3",
            "SR_B4",
            "SR_B5",
            "SR_B7",
            "SR_ATMOS_OPACITY",
            "SR_CLOUD_QA",
            "ST_B6",
        ]
    };
    let thermal = [
        "ST_ATRAN",
        "ST_CDIST",
        "ST_DRAD",
        "ST_EMIS",
        "ST_EMSD",
        "ST_QA",
        "ST_TRAD",
        "ST_URAD",
        "QA_PIXEL",
        "QA_RADSAT",
    ];
    let width = 7500 + hash % 600;
    let height = 7600 + (hash >> 16) % 600;
    let x = 200_000.0 + ((hash >> 32) % 300) as f64 * 1000.0 + 15.0;
    let y = 4_000_000.0 + ((hash >> 40) % 900) as f64 * 1000.0 + 15.0;
    names
        .iter()
        .chain(thermal.iter())
        .map(|name| {
            let (precision, min, max) = match *name {
                "SR_QA_AEROSOL" | "SR_CLOUD_QA" => ("int", 0.0, 255.0),
                "SR_ATMOS_OPACITY" | "ST_ATRAN" | "ST_CDIST" | "ST_DRAD" | "ST_EMIS"
                | "ST_EMSD" | "ST_QA" | "ST_TRAD" | "ST_URAD" => ("int", -32768.0, 32767.0),
                _ => ("int", 0.0, 65535.0),
            };
            Band {
                id: (*name).to_owned(),
                precision,
                min,
                max,
                dimensions: Some([width, height]),
                crs: format!("EPSG:326{zone:02}"),
                crs_transform: [30.0, 0.0, x, 0.0, -30.0, y],
            }
        })
        .collect()
}

pub(super) fn time_start(day: i64, seconds_of_day: i64, millis: i64) -> i64 {
    day * 86_400_000 + seconds_of_day * 1000 + millis
}

pub(super) struct LandsatSensor {
    pub code: &'static str,
    pub spacecraft: &'static str,
    pub sensor: &'static str,
}

pub(super) fn landsat_image(
    collection: &str,
    sensor: LandsatSensor,
    path: i64,
    row: i64,
    day: i64,
) -> ImageRecord {
    let LandsatSensor {
        code,
        spacecraft,
        sensor,
    } = sensor;
    let date = date_of(day);
    let index = format!("{code}_{path:03}{row:03}_{}", date.format("%Y%m%d"));
    let id = format!("{collection}/{index}");
    let h = stable_hash(0, &[&id]);
    // Scenes of one path pass ~24 s apart per row, around 10:30 local solar time.
    let seconds = 36_000 + (path * 397).rem_euclid(14_400) + row * 24;
    let start = time_start(day, seconds, (h % 1000) as i64);
    let cloud = (unit(h).powi(2) * 10_000.0).round() / 100.0;
    let land = (cloud + unit(h >> 7) * 5.0).min(100.0);
    let doy = f64::from(date.ordinal());
    let season = (2.0 * std::f64::consts::PI * (doy - 172.0) / 365.25).cos();
    let processed = date_of(day + 7 + (h % 20) as i64);
    let zone = 1 + (60 - path * 60 / 233).rem_euclid(60);
    let mut p = Map::new();
    p.insert("CLOUD_COVER".into(), json!(cloud));
    p.insert(
        "CLOUD_COVER_LAND".into(),
        json!((land * 100.0).round() / 100.0),
    );
    p.insert("COLLECTION_CATEGORY".into(), json!("T1"));
    p.insert("COLLECTION_NUMBER".into(), json!(2));
    p.insert(
        "DATE_ACQUIRED".into(),
        json!(date.format("%Y-%m-%d").to_string()),
    );
    p.insert("EARTH_SUN_DISTANCE".into(), json!(1.0 + 0.0167 * season));
    p.insert(
        "GEOMETRIC_RMSE_MODEL".into(),
        json!(3.0 + unit(h >> 13) * 6.0),
    );
    p.insert(
        "GEOMETRIC_RMSE_MODEL_X".into(),
        json!(2.0 + unit(h >> 17) * 4.0),
    );
    p.insert(
        "GEOMETRIC_RMSE_MODEL_Y".into(),
        json!(2.0 + unit(h >> 19) * 4.0),
    );
    if code.starts_with("LC") {
        p.insert("IMAGE_QUALITY_OLI".into(), json!(9));
        p.insert("IMAGE_QUALITY_TIRS".into(), json!(9));
    } else {
        p.insert("IMAGE_QUALITY".into(), json!(9));
        p.insert("IMAGE_QUALITY_TM".into(), json!(9));
    }
    p.insert(
        "LANDSAT_PRODUCT_ID".into(),
        json!(format!(
            "{code}_L2SP_{path:03}{row:03}_{}_{}_02_T1",
            date.format("%Y%m%d"),
            processed.format("%Y%m%d")
        )),
    );
    p.insert("PROCESSING_LEVEL".into(), json!("L2SP"));
    p.insert("SENSOR_ID".into(), json!(sensor));
    p.insert("SPACECRAFT_ID".into(), json!(spacecraft));
    p.insert(
        "SUN_AZIMUTH".into(),
        json!(130.0 + 20.0 * season + unit(h >> 23) * 5.0),
    );
    p.insert(
        "SUN_ELEVATION".into(),
        json!(45.0 + 18.0 * season + unit(h >> 29) * 3.0),
    );
    p.insert("WRS_PATH".into(), json!(path));
    p.insert("WRS_ROW".into(), json!(row));
    p.insert(
        "system:asset_size".into(),
        json!(800_000_000 + (h % 300_000_000)),
    );
    p.insert("system:index".into(), json!(index));
    p.insert("system:time_start".into(), json!(start));
    ImageRecord {
        version: Some((start + 8 * 86_400_000) * 1000 + (h % 1000) as i64),
        bands: landsat_bands(code, zone, h),
        properties: p,
        id: Some(id),
    }
}

pub(super) fn sentinel2_image(spec: &CollectionSpec, tile: &str, day: i64) -> ImageRecord {
    let h = stable_hash(0, &["s2", tile, &day.to_string()]);
    let seconds = 36_000 + (stable_hash(0, &[tile]) % 10_800) as i64;
    let start = time_start(day, seconds, (h % 1000) as i64);
    let sensing: DateTime<Utc> = Utc.timestamp_millis_opt(start).single().unwrap_or_default();
    let datatake = sensing.format("%Y%m%dT%H%M%S").to_string();
    let generated = (sensing + Duration::seconds(300 + (h % 600) as i64)).format("%Y%m%dT%H%M%S");
    let index = format!("{datatake}_{generated}_T{tile}");
    let spacecraft = if day % 2 == 0 {
        "Sentinel-2A"
    } else {
        "Sentinel-2B"
    };
    let zone: i64 = tile.get(..2).and_then(|z| z.parse().ok()).unwrap_or(1);
    let cloud = (unit(h).powi(2) * 1_000_000.0).round() / 10_000.0;
    let mut bands = Vec::new();
    let resolution = |name: &str| match name {
        "B2" | "B3" | "B4" | "B8" | "TCI_R" | "TCI_G" | "TCI_B" | "QA10" | "AOT" | "WVP" => 10.0,
        "B1" | "B9" | "QA60" => 60.0,
        _ => 20.0,
    };
    for name in [
        "B1",
        "B2",
        "B3",
        "B4",
        "B5",
        "B6",
        "B7",
        "B8",
        "B8A",
        "B9",
        "B11",
        "B12",
        "AOT",
        "WVP",
        "SCL",
        "TCI_R",
        "TCI_G",
        "TCI_B",
        "MSK_CLDPRB",
        "MSK_SNWPRB",
        "QA10",
        "QA20",
        "QA60",
    ] {
        let scale: f64 = resolution(name);
        let size = (109_800.0 / scale) as u64;
        let max = if name.starts_with("TCI") || name.starts_with("MSK") || name == "SCL" {
            255.0
        } else {
            65535.0
        };
        bands.push(Band {
            id: name.to_owned(),
            precision: "int",
            min: 0.0,
            max,
            dimensions: Some([size, size]),
            crs: format!("EPSG:326{zone:02}"),
            crs_transform: [scale, 0.0, 300_000.0, 0.0, -scale, 4_000_020.0],
        });
    }
    let mut p = Map::new();
    p.insert("CLOUDY_PIXEL_PERCENTAGE".into(), json!(cloud));
    p.insert("CLOUD_COVERAGE_ASSESSMENT".into(), json!(cloud));
    p.insert(
        "DATATAKE_IDENTIFIER".into(),
        json!(format!("GS2A_{datatake}_031000_N05.00")),
    );
    p.insert("GENERAL_QUALITY".into(), json!("PASSED"));
    p.insert("MGRS_TILE".into(), json!(tile));
    p.insert(
        "PRODUCT_ID".into(),
        json!(format!(
            "{}_MSIL2A_{datatake}_N0500_R{:03}_T{tile}_{generated}",
            if spacecraft.ends_with('A') {
                "S2A"
            } else {
                "S2B"
            },
            1 + h % 143
        )),
    );
    p.insert("SENSING_ORBIT_NUMBER".into(), json!(1 + h % 143));
    p.insert("SPACECRAFT_NAME".into(), json!(spacecraft));
    p.insert(
        "MEAN_SOLAR_AZIMUTH_ANGLE".into(),
        json!(140.0 + unit(h >> 9) * 30.0),
    );
    p.insert(
        "MEAN_SOLAR_ZENITH_ANGLE".into(),
        json!(25.0 + unit(h >> 11) * 40.0),
    );
    p.insert(
        "system:asset_size".into(),
        json!(500_000_000 + (h % 700_000_000)),
    );
    p.insert("system:index".into(), json!(index));
    p.insert("system:time_start".into(), json!(start));
    ImageRecord {
        id: Some(format!("{}/{index}", spec.id)),
        version: Some((start + 3 * 86_400_000) * 1000 + (h % 1000) as i64),
        bands,
        properties: p,
    }
}
