//! The emulator's exports read back with GDAL: every piece is a GeoTIFF with the export's CRS,
//! the geotransform of its place in the tile grid, the image's bands and type, the nodata value
//! cedar sends (`geoTiffOptions.noData`), and a tiled, cloud-optimized layout; pieces of one
//! tile and neighbouring tiles line up pixel for pixel.
//!
//! `gdalinfo` comes from the Debian package `gdal-bin` and the COG validator from
//! `python3-gdal`, which `.ci/run` installs; set `CEDAR_GDALINFO` / `CEDAR_GDAL_PYTHON` to use
//! others. Without them these tests fail rather than skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cedar::auth::NoAuth;
use cedar::earthengine::{EarthEngine, ExportParams, Expression, export_request, request_id};
use cedar::emulator::{EmulatorOptions, RunningEmulator};
use cedar::grid::{Crs, Limits, Tile, TileGrid};
use serde_json::{Value, json};

use crate::support::{on_path, start_emulator, wait_until};

/// `gdalinfo` from `CEDAR_GDALINFO` or `PATH`; a missing one fails the test with the fix.
fn gdalinfo_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CEDAR_GDALINFO") {
        return PathBuf::from(p);
    }
    on_path("gdalinfo").unwrap_or_else(|| {
        panic!(
            "gdalinfo not found in PATH: run .ci/run (it installs the Debian package gdal-bin), \
             `apt-get install gdal-bin`, or set CEDAR_GDALINFO"
        )
    })
}

/// `gdalinfo -json -stats FILE`, parsed.
fn gdalinfo(file: &Path) -> Value {
    let out = Command::new(gdalinfo_bin())
        .args(["-json", "-stats"])
        .arg(file)
        .output()
        .expect("run gdalinfo");
    assert!(
        out.status.success(),
        "gdalinfo {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("gdalinfo -json prints JSON")
}

/// A Python with GDAL's bindings: `CEDAR_GDAL_PYTHON`, else Debian's `/usr/bin/python3`.
fn gdal_python() -> PathBuf {
    std::env::var_os("CEDAR_GDAL_PYTHON")
        .map_or_else(|| PathBuf::from("/usr/bin/python3"), PathBuf::from)
}

/// Runs GDAL's COG validator on `file`; it must find no error.
fn assert_cloud_optimized(file: &Path) {
    let out = Command::new(gdal_python())
        .args(["-m", "osgeo_utils.samples.validate_cloud_optimized_geotiff"])
        .arg(file)
        .output()
        .expect("run python3 (python3-gdal)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("is a valid cloud optimized GeoTIFF"),
        "{}: {text}\n(needs python3-gdal: run .ci/run or `apt-get install python3-gdal`)",
        file.display()
    );
}

const SCENE: &str = "LANDSAT/LC08/C02/T1_L2/LC08_044034_20210610";
const BANDS: [&str; 3] = ["SR_B2", "SR_B3", "SR_B4"];

/// Three bands of a Landsat scene as UInt16, written into the export's grid.
fn expression() -> Expression {
    let invoke = |name: &str, arguments: Value| json!({"functionInvocationValue": {"functionName": name, "arguments": arguments}});
    let image = invoke(
        "Image.toUint16",
        json!({"value": invoke("Image.select", json!({
            "input": invoke("Image.load", json!({"id": {"constantValue": SCENE}})),
            "bandSelectors": {"constantValue": BANDS}}))}),
    );
    serde_json::from_value(json!({"result": "0", "values": {"0": image}})).unwrap()
}

/// A grid of 600×300-pixel tiles of 30 m in UTM zone 10N.
fn utm_grid() -> TileGrid {
    TileGrid {
        name: "test UTM".into(),
        crs: Crs::Code("EPSG:32610".into()),
        ul: [500_000.0, 4_200_000.0],
        res: [30.0, 30.0],
        size: [600, 300],
        limits: Limits {
            rows: (0, 1),
            cols: (0, 1),
        },
    }
}

struct Exported {
    /// Each piece: its file, pixel offset (x, y) in the tile, and gdalinfo's report.
    pieces: Vec<(PathBuf, (u64, u64), Value)>,
}

/// Exports `tile` through cedar's client into the emulator and reads every piece with GDAL.
async fn export(
    ee: &EarthEngine,
    bucket: &Path,
    tile: &Tile,
    name: &str,
    file_dimensions: u32,
    nodata: Option<f64>,
) -> Exported {
    let params = ExportParams {
        priority: None,
        bucket: "geotiff".into(),
        filename_prefix: format!("out/{name}"),
        description: name.into(),
        request_id: request_id(&["geotiff", name]),
        file_dimensions: Some(file_dimensions),
        cloud_optimized: true,
        nodata,
        max_pixels: None,
        workload_tag: None,
    };
    let op = ee
        .export_image(&export_request(tile, expression(), &params))
        .await
        .unwrap();
    let op_name = op.name.clone().unwrap();
    let done = wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
        let op_name = op_name.clone();
        async move {
            let op = ee
                .get_operation(&op_name)
                .await
                .map_err(|e| e.to_string())?;
            if op.done.unwrap_or(false) {
                Ok(op)
            } else {
                Err(format!("{op_name} not done"))
            }
        }
    })
    .await;
    assert!(done.error.is_none(), "{name}: {:?}", done.error);
    let mut pieces = Vec::new();
    for yoff in (0..u64::from(tile.height)).step_by(file_dimensions as usize) {
        for xoff in (0..u64::from(tile.width)).step_by(file_dimensions as usize) {
            let file = if tile.width <= file_dimensions && tile.height <= file_dimensions {
                bucket.join(format!("out/{name}.tif"))
            } else {
                bucket.join(format!("out/{name}-{yoff:010}-{xoff:010}.tif"))
            };
            let info = gdalinfo(&file);
            pieces.push((file, (xoff, yoff), info));
        }
    }
    Exported { pieces }
}

fn geotransform(info: &Value) -> [f64; 6] {
    serde_json::from_value(info["geoTransform"].clone()).unwrap()
}

fn size(info: &Value) -> [u64; 2] {
    serde_json::from_value(info["size"].clone()).unwrap()
}

/// What every piece must hold: the tile's grid at the piece's offset, three UInt16 bands named
/// after the image's bands, the nodata value, 256-pixel tiles, deflate, overviews when larger
/// than one tile, and a pattern (not a constant) in every band.
fn assert_piece(file: &Path, info: &Value, tile: &Tile, (xoff, yoff): (u64, u64), nodata: f64) {
    let at = file.display();
    let t = tile.transform;
    assert_eq!(
        geotransform(info),
        [
            t.translate_x + xoff as f64 * t.scale_x,
            t.scale_x,
            0.0,
            t.translate_y + yoff as f64 * t.scale_y,
            0.0,
            t.scale_y
        ],
        "{at}: geotransform"
    );
    let bands = info["bands"].as_array().unwrap();
    assert_eq!(bands.len(), BANDS.len(), "{at}: bands");
    for (i, band) in bands.iter().enumerate() {
        assert_eq!(band["type"], "UInt16", "{at}: band {i}");
        assert_eq!(band["noDataValue"], json!(nodata), "{at}: band {i}");
        assert_eq!(band["block"], json!([256, 256]), "{at}: band {i}");
        assert_eq!(band["description"], BANDS[i], "{at}: band {i}");
        let (min, max) = (
            band["minimum"].as_f64().unwrap(),
            band["maximum"].as_f64().unwrap(),
        );
        assert!(
            min > nodata && max > min,
            "{at}: band {i} spans {min}..{max}"
        );
        let [w, h] = size(info);
        assert_eq!(
            band["overviews"].as_array().map_or(0, Vec::len) > 0,
            w > 256 || h > 256,
            "{at}: band {i} overviews"
        );
    }
    assert_eq!(
        info["metadata"][""]["AREA_OR_POINT"], "Area",
        "{at}: pixel is area"
    );
    assert_eq!(
        info["metadata"]["IMAGE_STRUCTURE"]["COMPRESSION"], "DEFLATE",
        "{at}"
    );
    assert_eq!(
        info["metadata"]["IMAGE_STRUCTURE"]["INTERLEAVE"], "BAND",
        "{at}"
    );
    assert_cloud_optimized(file);
}

async fn emulated() -> (RunningEmulator, EarthEngine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let emulator = start_emulator(
        &dir.path().join("bucket"),
        EmulatorOptions {
            task_seconds: 0.5,
            ..EmulatorOptions::default()
        },
    )
    .await;
    let ee = EarthEngine::new(
        &format!("{}/", emulator.url()),
        "projects/geotiff",
        Arc::new(NoAuth),
        Duration::from_secs(10),
    )
    .unwrap();
    (emulator, ee, dir)
}

/// A tile split into pieces, and its neighbour to the right and below: every piece carries the
/// tile's CRS and its own offset, and the pieces' and tiles' edges meet exactly.
#[tokio::test]
async fn pieces_and_neighbouring_tiles_line_up_pixel_for_pixel() {
    gdalinfo_bin();
    let (_emulator, ee, dir) = emulated().await;
    let bucket = dir.path().join("bucket");
    let grid = utm_grid();
    let (a, right, below) = (
        grid.tile(0, 0).unwrap(),
        grid.tile(0, 1).unwrap(),
        grid.tile(1, 0).unwrap(),
    );
    let ea = export(&ee, &bucket, &a, "a", 256, Some(0.0)).await;
    let er = export(&ee, &bucket, &right, "right", 256, Some(0.0)).await;
    let eb = export(&ee, &bucket, &below, "below", 256, Some(0.0)).await;
    // 600×300 in pieces of 256: 3 columns × 2 rows, the last ones 88 wide and 44 high.
    assert_eq!(ea.pieces.len(), 6);
    for (tile, exported) in [(&a, &ea), (&right, &er), (&below, &eb)] {
        for (file, offset, info) in &exported.pieces {
            assert_piece(file, info, tile, *offset, 0.0);
            let wkt = info["coordinateSystem"]["wkt"].as_str().unwrap();
            assert!(
                wkt.contains("UTM zone 10N") && wkt.ends_with("ID[\"EPSG\",32610]]"),
                "{wkt}"
            );
            let [w, h] = size(info);
            assert_eq!(
                [w, h],
                [
                    (u64::from(tile.width) - offset.0).min(256),
                    (u64::from(tile.height) - offset.1).min(256)
                ]
            );
        }
    }
    // Within a tile: each piece starts where its left and upper neighbours end.
    let piece = |e: &Exported, x: u64, y: u64| {
        e.pieces
            .iter()
            .find(|(_, o, _)| *o == (x, y))
            .map(|(_, _, info)| (geotransform(info), size(info)))
            .unwrap()
    };
    let end_x = |(g, s): ([f64; 6], [u64; 2])| g[0] + s[0] as f64 * g[1];
    let end_y = |(g, s): ([f64; 6], [u64; 2])| g[3] + s[1] as f64 * g[5];
    assert_eq!(end_x(piece(&ea, 0, 0)), piece(&ea, 256, 0).0[0]);
    assert_eq!(end_x(piece(&ea, 256, 256)), piece(&ea, 512, 256).0[0]);
    assert_eq!(end_y(piece(&ea, 512, 0)), piece(&ea, 512, 256).0[3]);
    // Across tiles: the right neighbour starts where the last column of pieces ends, the one
    // below where the last row ends, on the same rows and columns.
    assert_eq!(end_x(piece(&ea, 512, 0)), piece(&er, 0, 0).0[0]);
    assert_eq!(piece(&ea, 512, 256).0[3], piece(&er, 0, 256).0[3]);
    assert_eq!(end_y(piece(&ea, 0, 256)), piece(&eb, 0, 0).0[3]);
    assert_eq!(piece(&ea, 256, 0).0[0], piece(&eb, 256, 0).0[0]);
}

/// The default grid's CRS is WKT (CONUS Albers on WGS 84): GDAL reads it back as that
/// projection, and a tile without `noData` has none.
#[tokio::test]
async fn the_conus_albers_wkt_and_a_missing_nodata_are_read_back() {
    gdalinfo_bin();
    let (_emulator, ee, dir) = emulated().await;
    let bucket = dir.path().join("bucket");
    let tile = TileGrid::preset("Landsat ARD v1 - CONUS")
        .unwrap()
        .tile(3, 10)
        .unwrap();
    let exported = export(&ee, &bucket, &tile, "conus", 4096, None).await;
    assert_eq!(exported.pieces.len(), 4, "5000 pixels in pieces of 4096");
    for (file, offset, info) in &exported.pieces {
        let wkt = info["coordinateSystem"]["wkt"].as_str().unwrap();
        for part in [
            "Albers Equal Area",
            "\"Latitude of 1st standard parallel\",29.5",
            "\"Latitude of 2nd standard parallel\",45.5",
            "\"Latitude of false origin\",23",
            "\"Longitude of false origin\",-96",
            "DATUM[\"World Geodetic System 1984\"",
        ] {
            assert!(
                wkt.contains(part),
                "{}: {part} not in {wkt}",
                file.display()
            );
        }
        let t = tile.transform;
        assert_eq!(
            geotransform(info),
            [
                t.translate_x + offset.0 as f64 * 30.0,
                30.0,
                0.0,
                t.translate_y - offset.1 as f64 * 30.0,
                0.0,
                -30.0
            ]
        );
        assert!(info["bands"][0].get("noDataValue").is_none(), "{info}");
    }
}

/// The projection the web console draws its outline with agrees with GDAL's, for the ARD grid's
/// WKT and for EPSG:5070, across CONUS and beyond it.
#[test]
fn the_outline_projection_agrees_with_gdal() {
    use cedar::grid::{CONUS_ALBERS_WKT, Crs};
    let points = [
        (-96.0, 23.0),
        (-124.7, 48.4),
        (-67.0, 44.8),
        (-80.2, 25.8),
        (-117.1, 32.5),
        (-100.6, 38.8),
        (-150.0, 61.2),
        (-155.5, 19.6),
    ];
    let input: String = points.iter().map(|(x, y)| format!("{x} {y}\n")).collect();
    for (crs, gdal_srs, tolerance) in [
        (Crs::Wkt(CONUS_ALBERS_WKT.into()), CONUS_ALBERS_WKT, 0.01),
        // NAD83 against WGS 84: GDAL applies no shift either (a ballpark transformation).
        (Crs::Code("EPSG:5070".into()), "EPSG:5070", 0.01),
        (Crs::Code("EPSG:3857".into()), "EPSG:3857", 0.01),
    ] {
        let projection = crs.projection().expect("a known CRS");
        let mut child = Command::new(gdalinfo_bin().with_file_name("gdaltransform"))
            .args([
                "-s_srs",
                "+proj=longlat +datum=WGS84 +no_defs",
                "-t_srs",
                gdal_srs,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gdaltransform (Debian's gdal-bin) beside gdalinfo");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<(f64, f64)> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Vec<f64> = l.split_whitespace().map(|n| n.parse().unwrap()).collect();
                (v[0], v[1])
            })
            .collect();
        assert_eq!(got.len(), points.len());
        for (&(lon, lat), &(gx, gy)) in points.iter().zip(&got) {
            let (x, y) = projection.project(lon, lat);
            assert!(
                (x - gx).abs() < tolerance && (y - gy).abs() < tolerance,
                "{gdal_srs:.30}: ({lon}, {lat}) → ({x}, {y}), GDAL ({gx}, {gy})"
            );
        }
    }
}
