//! Unit tests of the pure parts of the client: request IDs, export requests, names.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::*;
use crate::auth::NoAuth;
use crate::earthengine::types::{Expression, ValueNode};
use crate::grid::{CONUS_ALBERS_WKT, TileGrid};

fn reference(name: &str) -> Value {
    let path = format!("{}/reference/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn params() -> ExportParams {
    ExportParams {
        priority: None,
        bucket: "my-bucket".into(),
        filename_prefix: "exports/LC08_h010v003_2021".into(),
        description: "LC08_h010v003_2021".into(),
        request_id: request_id(&["LC08", "h010v003", "2021"]),
        file_dimensions: Some(1024),
        cloud_optimized: true,
        nodata: Some(0.0),
        max_pixels: Some(100_000_000),
        workload_tag: Some("conus-2021".into()),
    }
}

fn expression() -> Expression {
    Expression {
        values: [("0".to_string(), ValueNode::ConstantValue(json!(1)))].into(),
        result: "0".into(),
    }
}

#[test]
fn request_ids_are_deterministic_and_within_ees_charset() {
    let a = request_id(&["LC08", "h010v003", "2021-01-01"]);
    assert_eq!(
        a,
        request_id(&["LC08".to_string(), "h010v003".into(), "2021-01-01".into()])
    );
    assert_ne!(a, request_id(&["LC08", "h010v003", "2022-01-01"]));
    assert_ne!(request_id(&["ab", "c"]), request_id(&["a", "bc"]));
    for id in [
        a,
        request_id::<&str>(&[]),
        request_id(&["ü/ß \n".repeat(100)]),
    ] {
        assert!((1..=60).contains(&id.len()), "{id}");
        assert!(
            id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{id}"
        );
        assert!(id.starts_with("cedar-"));
    }
}

#[test]
fn export_request_carries_the_exact_pixel_grid() {
    let grid = TileGrid::preset("Landsat ARD v1 - CONUS").unwrap();
    let tile = grid.tile(3, 10).unwrap();
    let body = serde_json::to_value(export_request(&tile, expression(), &params())).unwrap();
    assert_eq!(
        body["grid"],
        json!({
            "dimensions": {"width": 5000, "height": 5000},
            "affineTransform": {"scaleX": 30.0, "shearX": 0.0, "translateX": -1_065_585.0,
                                "shearY": 0.0, "scaleY": -30.0, "translateY": 2_864_805.0},
            "crsWkt": CONUS_ALBERS_WKT
        })
    );
    assert_eq!(
        body["fileExportOptions"],
        json!({
            "fileFormat": "GEO_TIFF",
            "cloudStorageDestination": {"bucket": "my-bucket", "filenamePrefix": "exports/LC08_h010v003_2021"},
            "geoTiffOptions": {"cloudOptimized": true, "tileDimensions": {"width": 1024, "height": 1024},
                               "noData": {"floatValue": 0.0}}
        })
    );
    assert_eq!(body["maxPixels"], json!("100000000"));
    assert_eq!(body["requestId"], json!(params().request_id));
    assert_eq!(body["description"], json!("LC08_h010v003_2021"));
    assert_eq!(body["workloadTag"], json!("conus-2021"));

    let mut coded = tile.clone();
    coded.crs = crate::grid::Crs::Code("EPSG:5070".into());
    let mut p = params();
    p.file_dimensions = None;
    p.max_pixels = None;
    p.workload_tag = None;
    p.nodata = None;
    let body = serde_json::to_value(export_request(&coded, expression(), &p)).unwrap();
    assert_eq!(body["grid"]["crsCode"], json!("EPSG:5070"));
    assert!(
        body["grid"].get("crsWkt").is_none()
            && body.get("maxPixels").is_none()
            && body.get("workloadTag").is_none()
    );
    assert!(
        body["fileExportOptions"]["geoTiffOptions"]
            .get("tileDimensions")
            .is_none()
            && body["fileExportOptions"]["geoTiffOptions"]
                .get("noData")
                .is_none()
    );
}

/// Checks `v` against a schema of `earthengine-v1.schema-from-js-client.json`, recursively.
fn check_schema(schema: &Value, name: &str, v: &Value, at: &str) {
    let fields = schema["schemas"][name]
        .as_object()
        .unwrap_or_else(|| panic!("{at}: no schema {name}"));
    for (key, value) in v
        .as_object()
        .unwrap_or_else(|| panic!("{at}: not an object"))
    {
        let at = format!("{at}.{key}");
        let field = fields
            .get(key)
            .unwrap_or_else(|| panic!("{at}: {name} has no field {key}"));
        if let Some(inner) = field.get("object").and_then(Value::as_str) {
            check_schema(schema, inner, value, &at);
        } else if let Some(inner) = field.get("arrayOf").and_then(Value::as_str) {
            for (i, item) in value.as_array().unwrap().iter().enumerate() {
                check_schema(schema, inner, item, &format!("{at}[{i}]"));
            }
        } else if let Some(e) = field.get("enum").and_then(Value::as_str) {
            let allowed = schema["enums"][e].as_array().unwrap();
            assert!(allowed.contains(value), "{at}: {value} is not in {e}");
        } else if field.get("mapOf").and_then(Value::as_str) == Some("ValueNode") {
            for (k, node) in value.as_object().unwrap() {
                check_schema(schema, "ValueNode", node, &format!("{at}.{k}"));
            }
        }
    }
}

#[test]
fn export_request_fields_exist_in_the_v1_schema() {
    let schema = reference("earthengine-v1.schema-from-js-client.json");
    let grid = TileGrid::preset("Landsat ARD v1 - CONUS").unwrap();
    let tile = grid.tile(0, 0).unwrap();
    let spec = crate::collection::preset("LANDSAT/LC08/C02/T1_L2").unwrap();
    let period = crate::period::Period {
        start: chrono::NaiveDate::from_ymd_opt(2021, 1, 1).unwrap(),
        end: chrono::NaiveDate::from_ymd_opt(2022, 1, 1).unwrap(),
    };
    let listing = crate::earthengine::expression::list_images(&spec, &tile, &period);
    let body = serde_json::to_value(export_request(&tile, listing.clone(), &params())).unwrap();
    check_schema(&schema, "ExportImageRequest", &body, "ExportImageRequest");
    let compute = serde_json::to_value(ComputeValueRequest {
        expression: listing,
        workload_tag: None,
    })
    .unwrap();
    check_schema(
        &schema,
        "ComputeValueRequest",
        &compute,
        "ComputeValueRequest",
    );
}

/// Every field path of a JSON object, with the Python client's `{"value": x}` wrappers of
/// `maxPixels` and `priority` read as the plain value.
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(o) = v.as_object() {
        for (k, child) in o {
            let p = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let unwrapped = match (k.as_str(), child.get("value")) {
                ("maxPixels" | "priority", Some(inner)) => inner,
                _ => child,
            };
            out.insert(p.clone());
            if k != "expression" {
                paths(unwrapped, &p, out);
            }
        }
    }
}

#[test]
fn export_request_matches_the_python_clients_field_set() {
    let python = reference("examples/image-export-request.python-client-1.7.50.json");
    let grid = TileGrid::preset("Landsat ARD v1 - CONUS").unwrap();
    let ours = serde_json::to_value(export_request(
        &grid.tile(3, 10).unwrap(),
        expression(),
        &params(),
    ))
    .unwrap();
    let (mut theirs, mut mine) = (BTreeSet::new(), BTreeSet::new());
    paths(&python, "", &mut theirs);
    paths(&ours, "", &mut mine);
    // The Python client folds the grid into the expression; cedar sends it as `grid`, and
    // leaves priority and skipEmptyFiles at EE's defaults. It sends `workloadTag` once
    // `ee.data.setWorkloadTag` was called (`ee/data.py`), which the example was made without;
    // and `noData` as `{"floatValue": x}` for `formatOptions={'noData': x}`
    // (`ee/batch.py::_build_image_file_export_options`), which the example does not set.
    let only_ours: Vec<_> = mine
        .difference(&theirs)
        .filter(|p| {
            !p.starts_with("grid")
                && *p != "workloadTag"
                && !p.starts_with("fileExportOptions.geoTiffOptions.noData")
        })
        .collect();
    assert!(
        only_ours.is_empty(),
        "fields the Python client never sends: {only_ours:?}"
    );
    let only_theirs: Vec<_> = theirs.difference(&mine).collect();
    assert_eq!(
        only_theirs,
        [
            "fileExportOptions.geoTiffOptions.skipEmptyFiles",
            "priority"
        ]
    );
    // Same JSON types where both send a field (maxPixels: string in both).
    assert_eq!(
        python["maxPixels"]["value"].is_string(),
        ours["maxPixels"].is_string()
    );
    assert!(python["requestId"].is_string() && ours["requestId"].is_string());
}

#[test]
fn operation_names_are_validated() {
    let ee = EarthEngine::new(
        "http://127.0.0.1:1/",
        "projects/p-1",
        Arc::new(NoAuth),
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(ee.project(), "p-1");
    assert_eq!(
        ee.operation_path("x", "ABC234").unwrap(),
        "projects/p-1/operations/ABC234"
    );
    assert_eq!(
        ee.operation_path("x", "projects/q/operations/ABC").unwrap(),
        "projects/q/operations/ABC"
    );
    for bad in [
        "",
        "projects/p/operations/",
        "projects/p/operations/A/B",
        "A?x=1",
        "A:cancel",
        "projects/../operations/A",
        "A B",
    ] {
        assert!(ee.operation_path("x", bad).is_err(), "{bad}");
    }
    for (endpoint, project) in [
        ("ftp://x", "p"),
        ("not a url", "p"),
        ("http://x?q=1", "p"),
        ("http://x", "a/b"),
        ("http://x", ""),
    ] {
        assert!(
            EarthEngine::new(endpoint, project, Arc::new(NoAuth), Duration::from_secs(1)).is_err(),
            "{endpoint} {project}"
        );
    }
}
