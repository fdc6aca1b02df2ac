//! Turning an `image:export` request into an export plan: where the files go, how the grid is
//! split into pieces, and whether EE would fail the task once it runs.

use serde_json::Value;

use super::EmulatorOptions;
use super::evaluate::{self, EvalError, Image};
use super::expression;
use super::geotiff::{GeoTiffPlan, SampleType};
use super::schema::{parse_f64, parse_i64, unwrap_value};
use super::wkt;

/// Why a request is refused outright (400 INVALID_ARGUMENT).
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum ExportError {
    #[error("{0}")]
    Invalid(String),
}

/// One output file: its pixel size and where it starts in the export's grid.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Piece {
    pub name: String,
    pub width: u64,
    pub height: u64,
    pub xoff: u64,
    pub yoff: u64,
}

/// Everything the task needs to run, decided at submission.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExportPlan {
    pub description: String,
    pub priority: i64,
    pub request_id: Option<String>,
    pub bucket: String,
    pub pieces: Vec<Piece>,
    pub bands: usize,
    /// How the files are encoded; `None` when the task fails before writing any.
    pub geotiff: Option<GeoTiffPlan>,
    pub destination_uri: String,
    /// The message the task will fail with, if EE would fail it.
    pub failure: Option<String>,
}

/// EE's documented default `maxPixels`.
const DEFAULT_MAX_PIXELS: i64 = 100_000_000;
/// EE's default GeoTIFF `tileSize` ("shardSize").
const DEFAULT_TILE_SIZE: i64 = 256;

/// Plans an export from a schema-valid `ExportImageRequest` body.
pub(crate) fn plan(body: &Value, options: &EmulatorOptions) -> Result<ExportPlan, ExportError> {
    let invalid = |m: &str| ExportError::Invalid(m.to_owned());
    let expression = body
        .get("expression")
        .filter(|e| !e.is_null())
        .ok_or_else(|| invalid("ExportImageRequest.expression is required."))?;
    let expression =
        expression::parse(expression).map_err(|e| ExportError::Invalid(e.to_string()))?;
    let request_id = match body.get("requestId").and_then(Value::as_str) {
        None | Some("") => None,
        Some(id) if valid_request_id(id) => Some(id.to_owned()),
        Some(id) => {
            return Err(ExportError::Invalid(format!(
                "Invalid requestId '{id}': it may contain the characters a..z, A..Z, 0-9, or '-', and be at most 60 characters long."
            )));
        }
    };
    let priority = match body.get("priority").filter(|p| !p.is_null()) {
        None => 100,
        Some(p) => parse_i64(unwrap_value(p)).unwrap_or(-1),
    };
    if !(0..=9999).contains(&priority) {
        return Err(invalid("Priority must be an integer between 0 and 9999."));
    }
    let max_pixels = match body.get("maxPixels").filter(|p| !p.is_null()) {
        None => DEFAULT_MAX_PIXELS,
        Some(p) => parse_i64(unwrap_value(p)).unwrap_or(DEFAULT_MAX_PIXELS),
    };
    if body.get("assetExportOptions").is_some_and(|a| !a.is_null()) {
        return Err(invalid(
            "The emulator supports only fileExportOptions (exports to Cloud Storage).",
        ));
    }
    let file = body
        .get("fileExportOptions")
        .filter(|f| f.is_object())
        .ok_or_else(|| invalid("ExportImageRequest.fileExportOptions is required."))?;
    match file.get("fileFormat").and_then(Value::as_str) {
        Some("GEO_TIFF") => {}
        None | Some("IMAGE_FILE_FORMAT_UNSPECIFIED") => {
            return Err(invalid("fileExportOptions.fileFormat must be specified."));
        }
        Some(other) => {
            return Err(ExportError::Invalid(format!(
                "The emulator supports only GEO_TIFF file exports, not {other}."
            )));
        }
    }
    let destination = file
        .get("cloudStorageDestination")
        .filter(|d| d.is_object())
        .ok_or_else(|| {
            invalid("The emulator supports only fileExportOptions.cloudStorageDestination.")
        })?;
    let bucket = destination["bucket"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if bucket.is_empty() {
        return Err(invalid("cloudStorageDestination.bucket must be specified."));
    }
    let description = body["description"].as_str().unwrap_or_default().to_owned();
    // The Python client defaults the prefix to the description; do the same for a missing one.
    let prefix = destination["filenamePrefix"]
        .as_str()
        .filter(|p| !p.is_empty())
        .unwrap_or(if description.is_empty() {
            "myExportImageTask"
        } else {
            &description
        })
        .to_owned();
    let geotiff = file.get("geoTiffOptions").filter(|g| g.is_object());
    let tile_size = geotiff
        .and_then(|g| g.get("tileSize"))
        .filter(|t| !t.is_null())
        .map_or(Some(DEFAULT_TILE_SIZE), |t| parse_i64(unwrap_value(t)))
        .filter(|t| *t > 0)
        .ok_or_else(|| invalid("geoTiffOptions.tileSize must be positive."))?;
    let tile_dimensions = match geotiff.and_then(|g| g.get("tileDimensions")) {
        Some(d) if d.is_object() => {
            let (w, h) = (
                d["width"].as_i64().unwrap_or(0),
                d["height"].as_i64().unwrap_or(0),
            );
            if w <= 0 || h <= 0 || w % tile_size != 0 || h % tile_size != 0 {
                return Err(ExportError::Invalid(format!(
                    "geoTiffOptions.tileDimensions ({w}x{h}) must be positive multiples of the tile size ({tile_size})."
                )));
            }
            Some((w as u64, h as u64))
        }
        _ => None,
    };
    let nodata = match geotiff
        .and_then(|g| g.get("noData"))
        .filter(|n| !n.is_null())
    {
        None => None,
        // The REST reference: "Only `noData.float_value` is currently supported".
        Some(n) => Some(
            n.get("floatValue")
                .filter(|f| !f.is_null())
                .and_then(parse_f64)
                .ok_or_else(|| {
                    invalid("geoTiffOptions.noData: only noData.floatValue is supported.")
                })?,
        ),
    };
    let cloud_optimized = geotiff
        .and_then(|g| g.get("cloudOptimized"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let grid = grid_dimensions(body.get("grid"))?;

    let mut failure = None;
    let image = match evaluate::image(expression, options.seed) {
        Ok(image) => Some(image),
        Err(EvalError::Unsupported(message)) => return Err(ExportError::Invalid(message)),
        Err(EvalError::Invalid(message)) => {
            failure = Some(message);
            None
        }
    };
    let bands = image.as_ref().map_or(0, |i| i.record.bands.len());
    let dimensions = image.as_ref().and_then(|image| {
        grid.or(image.dimensions).or_else(|| {
            image
                .bounded
                .then(|| {
                    image
                        .record
                        .bands
                        .iter()
                        .filter_map(|b| b.dimensions)
                        .next()
                })
                .flatten()
                .map(|[w, h]| (w, h))
        })
    });
    if let Some(image) = &image {
        if image.record.bands.is_empty() {
            failure = Some("Image with no bands cannot be exported.".into());
        } else if dimensions.is_none() {
            failure = Some("Unable to export unbounded image.".into());
        }
    }
    let (width, height) = dimensions.unwrap_or((0, 0));
    let pixels = width.saturating_mul(height);
    if failure.is_none() && pixels > max_pixels.max(0) as u64 {
        failure = Some(format!(
            "Export too large: specified {pixels} pixels (max: {max_pixels}). Specify higher maxPixels value if you intend to export a large area."
        ));
    }
    if failure.is_none()
        && let Some(expected) = &options.bucket
        && *expected != bucket
    {
        failure = Some(format!(
            "Unable to write to bucket {bucket}: the bucket does not exist or the caller does not have write access to it."
        ));
    }
    let geotiff = match (&image, failure.is_none()) {
        (Some(image), true) => match geotiff_plan(image, body.get("grid"), tile_size as u32) {
            Ok(layout) => Some(GeoTiffPlan {
                nodata,
                cloud_optimized,
                ..layout
            }),
            Err(message) => {
                failure = Some(message);
                None
            }
        },
        _ => None,
    };
    Ok(ExportPlan {
        description,
        priority,
        request_id,
        destination_uri: destination_uri(&bucket, &prefix),
        pieces: pieces(&prefix, width, height, tile_dimensions),
        bucket,
        bands,
        geotiff,
        failure,
    })
}

/// The GeoTIFF encoding of `image` on the export's grid (or, without one, the first band's
/// own): its CRS as GeoKeys, transform, band names and sample type. Fails the task with the
/// message when the CRS cannot be written as GeoKeys.
fn geotiff_plan(image: &Image, grid: Option<&Value>, block: u32) -> Result<GeoTiffPlan, String> {
    let bands = &image.record.bands;
    let grid = grid.filter(|g| !g.is_null());
    let (crs_code, crs_wkt, transform) = match grid {
        Some(grid) => {
            let a = &grid["affineTransform"];
            let n = |k: &str| a.get(k).and_then(parse_f64).unwrap_or(0.0);
            (
                grid.get("crsCode")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                grid.get("crsWkt")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                [
                    n("scaleX"),
                    n("shearX"),
                    n("translateX"),
                    n("shearY"),
                    n("scaleY"),
                    n("translateY"),
                ],
            )
        }
        None => {
            let first = bands
                .first()
                .ok_or("Image with no bands cannot be exported.")?;
            (Some(first.crs.clone()), None, first.crs_transform)
        }
    };
    let geokeys = match (crs_code, crs_wkt) {
        (Some(code), _) if !code.is_empty() => wkt::code_geokeys(&code),
        (_, Some(text)) => wkt::wkt_geokeys(&text),
        _ => Err("grid must specify crsCode or crsWkt.".to_owned()),
    }?;
    Ok(GeoTiffPlan {
        band_names: bands.iter().map(|b| b.id.clone()).collect(),
        sample: sample_type(image),
        nodata: None,
        block,
        cloud_optimized: false,
        transform,
        geokeys,
    })
}

/// One type for every band, as a GeoTIFF has: the smallest integer type holding every
/// integer band's range, else `Float32`, or `Float64` when a band is double.
fn sample_type(image: &Image) -> SampleType {
    let bands = &image.record.bands;
    if bands.iter().any(|b| b.precision == "double") {
        SampleType::F64
    } else if bands.iter().any(|b| b.precision != "int") {
        SampleType::F32
    } else {
        let min = bands.iter().map(|b| b.min).fold(f64::INFINITY, f64::min);
        let max = bands
            .iter()
            .map(|b| b.max)
            .fold(f64::NEG_INFINITY, f64::max);
        SampleType::for_int_range(min, max)
    }
}

/// `requestId` "may contain the characters a..z, A..Z, 0-9, or '-'" and "be at most 60
/// characters long".
fn valid_request_id(id: &str) -> bool {
    (1..=60).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn grid_dimensions(grid: Option<&Value>) -> Result<Option<(u64, u64)>, ExportError> {
    let Some(grid) = grid.filter(|g| !g.is_null()) else {
        return Ok(None);
    };
    let invalid = |m: &str| Err(ExportError::Invalid(m.to_owned()));
    let (width, height) = (
        grid.pointer("/dimensions/width")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        grid.pointer("/dimensions/height")
            .and_then(Value::as_i64)
            .unwrap_or(0),
    );
    if width <= 0 || height <= 0 {
        return invalid("grid.dimensions must have a positive width and height.");
    }
    if grid.get("affineTransform").is_none_or(Value::is_null) {
        return invalid("grid.affineTransform must be specified.");
    }
    let crs = ["crsCode", "crsWkt"].iter().any(|k| {
        grid.get(*k)
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty())
    });
    if !crs {
        return invalid("grid must specify crsCode or crsWkt.");
    }
    Ok(Some((width as u64, height as u64)))
}

/// EE's file naming: `{prefix}.tif`, or `{prefix}-{yoff:010}-{xoff:010}.tif` per piece when the
/// image is larger than `tileDimensions` (offsets in pixels, row first).
fn pieces(prefix: &str, width: u64, height: u64, tile: Option<(u64, u64)>) -> Vec<Piece> {
    match tile {
        Some((tw, th)) if width > tw || height > th => {
            let mut pieces = Vec::new();
            for yoff in (0..height).step_by(th as usize) {
                for xoff in (0..width).step_by(tw as usize) {
                    pieces.push(Piece {
                        name: format!("{prefix}-{yoff:010}-{xoff:010}.tif"),
                        width: tw.min(width - xoff),
                        height: th.min(height - yoff),
                        xoff,
                        yoff,
                    });
                }
            }
            pieces
        }
        _ => vec![Piece {
            name: format!("{prefix}.tif"),
            width,
            height,
            xoff: 0,
            yoff: 0,
        }],
    }
}

/// The Cloud Console browse URL of the export's folder (EE reports browse URLs, not `gs://`).
fn destination_uri(bucket: &str, prefix: &str) -> String {
    let folder = prefix.rfind('/').map_or("", |i| &prefix[..=i]);
    format!("https://console.developers.google.com/storage/browser/{bucket}/{folder}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(grid: Value, tile: Value) -> Value {
        json!({
            "expression": {"result": "0", "values": {"0": {"functionInvocationValue": {
                "functionName": "Image.load", "arguments": {"id": {"constantValue": "LANDSAT/LC08/C02/T1_L2/LC08_044034_20210610"}}}}}},
            "description": "d", "requestId": "abc-1",
            "fileExportOptions": {"fileFormat": "GEO_TIFF",
                "cloudStorageDestination": {"bucket": "b", "filenamePrefix": "dir/name"},
                "geoTiffOptions": {"tileDimensions": tile}},
            "grid": grid,
        })
    }

    fn grid(w: u64, h: u64) -> Value {
        json!({"dimensions": {"width": w, "height": h}, "crsCode": "EPSG:32610",
            "affineTransform": {"scaleX": 30, "scaleY": -30, "translateX": 0, "translateY": 0}})
    }

    #[test]
    fn a_grid_larger_than_tile_dimensions_is_split_row_first() {
        let plan = plan(
            &body(grid(5000, 3000), json!({"width": 2048, "height": 2048})),
            &EmulatorOptions::default(),
        )
        .unwrap();
        let names: Vec<&str> = plan.pieces.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), 6);
        assert_eq!(names[0], "dir/name-0000000000-0000000000.tif");
        assert_eq!(names[1], "dir/name-0000000000-0000002048.tif");
        assert_eq!(names[3], "dir/name-0000002048-0000000000.tif");
        assert_eq!(
            (plan.pieces[5].width, plan.pieces[5].height),
            (5000 - 4096, 3000 - 2048)
        );
        assert_eq!(plan.failure, None);
        assert_eq!(
            plan.destination_uri,
            "https://console.developers.google.com/storage/browser/b/dir/"
        );
    }

    #[test]
    fn a_small_grid_is_one_file_and_a_huge_one_fails_the_task() {
        let plan1 = plan(
            &body(grid(100, 100), json!({"width": 256, "height": 256})),
            &EmulatorOptions::default(),
        )
        .unwrap();
        assert_eq!(
            plan1.pieces,
            vec![Piece {
                name: "dir/name.tif".into(),
                width: 100,
                height: 100,
                xoff: 0,
                yoff: 0,
            }]
        );
        let huge = plan(
            &body(grid(20_000, 20_000), Value::Null),
            &EmulatorOptions::default(),
        )
        .unwrap();
        assert_eq!(
            huge.failure.as_deref(),
            Some(
                "Export too large: specified 400000000 pixels (max: 100000000). Specify higher maxPixels value if you intend to export a large area."
            )
        );
    }

    #[test]
    fn request_ids_tile_dimensions_and_buckets_are_checked() {
        let mut bad = body(grid(10, 10), Value::Null);
        bad["requestId"] = json!("has space");
        assert!(plan(&bad, &EmulatorOptions::default()).is_err());
        bad["requestId"] = json!("a".repeat(61));
        assert!(plan(&bad, &EmulatorOptions::default()).is_err());
        assert!(
            plan(
                &body(grid(10, 10), json!({"width": 1000, "height": 1024})),
                &EmulatorOptions::default()
            )
            .is_err()
        );
        let options = EmulatorOptions {
            bucket: Some("other".into()),
            ..Default::default()
        };
        let plan = plan(&body(grid(10, 10), Value::Null), &options).unwrap();
        assert!(plan.failure.unwrap().contains("bucket b"));
    }

    #[test]
    fn no_data_is_read_from_float_value_only() {
        let mut request = body(grid(10, 10), Value::Null);
        let options = &mut request["fileExportOptions"]["geoTiffOptions"];
        options["noData"] = json!({"floatValue": -9999.0});
        options["cloudOptimized"] = json!(true);
        let layout = plan(&request, &EmulatorOptions::default())
            .unwrap()
            .geotiff
            .unwrap();
        assert_eq!(layout.nodata, Some(-9999.0));
        assert!(layout.cloud_optimized);
        assert_eq!(layout.block, 256);
        assert_eq!(layout.transform, [30.0, 0.0, 0.0, 0.0, -30.0, 0.0]);
        request["fileExportOptions"]["geoTiffOptions"]["noData"] = json!({"integerValue": "0"});
        assert_eq!(
            plan(&request, &EmulatorOptions::default()),
            Err(ExportError::Invalid(
                "geoTiffOptions.noData: only noData.floatValue is supported.".into()
            ))
        );
        request["fileExportOptions"]["geoTiffOptions"]["noData"] = Value::Null;
        let plan = plan(&request, &EmulatorOptions::default()).unwrap();
        assert_eq!(plan.geotiff.unwrap().nodata, None);
    }

    #[test]
    fn missing_images_fail_the_task_not_the_request() {
        let mut request = body(grid(10, 10), Value::Null);
        request["expression"]["values"]["0"]["functionInvocationValue"]["arguments"]["id"]["constantValue"] =
            json!("LANDSAT/LC08/C02/T1_L2/LC08_044034_19990101");
        let plan = plan(&request, &EmulatorOptions::default()).unwrap();
        assert_eq!(
            plan.failure.as_deref(),
            Some(
                "Image.load: Image asset 'LANDSAT/LC08/C02/T1_L2/LC08_044034_19990101' not found (does not exist or caller does not have access)."
            )
        );
    }
}
