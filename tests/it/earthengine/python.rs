//! cedar's expressions against the real Python client's (`earthengine-api` 1.7.50), offline.
//!
//! `tests/python/serialize_preard.py` builds the same computations with `ee` and prints the
//! serialized expressions; both DAGs are expanded into trees and compared.

use std::io::Write;
use std::process::{Command, Stdio};

use cedar::collection::{self, CollectionSpec, DataType, FilterValue};
use cedar::earthengine::{ImageInfo, list_images, preard_image};
use cedar::grid::{CONUS_ALBERS_WKT, Crs, Limits, Tile, TileGrid};
use cedar::period::Period;
use chrono::NaiveDate;
use serde_json::{Map, Value, json};

/// The Python with `earthengine-api` installed: `$CEDAR_PYTHON`, else the project's venv.
fn python() -> String {
    let p = std::env::var("CEDAR_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    assert!(
        std::path::Path::new(&p).exists(),
        "no Python at {p}: run scripts/test (it creates .venv with earthengine-api==1.7.50) or set CEDAR_PYTHON"
    );
    p
}

/// Runs the Python serializer on `input`; returns its `list_images` and `preard_image`.
fn serialize_with_python(input: &Value) -> (Value, Value) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/serialize_preard.py"
    );
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "serialize_preard.py failed (is earthengine-api installed? run scripts/test):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["list_images"].take(), v["preard_image"].take())
}

/// A constant in canonical form: every number as a double.
fn canonical_constant(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::from(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(canonical_constant).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), canonical_constant(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Expands a node of an expression into a tree: references resolved, constants canonical, and
/// arrays or dictionaries of constants folded into one constant (the Python client's
/// optimizer does that fold; cedar writes such lists as constants directly).
fn expand(values: &Map<String, Value>, node: &Value) -> Value {
    let (kind, body) = node
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("a value node has one field");
    match kind.as_str() {
        "valueReference" => expand(values, &values[body.as_str().unwrap()]),
        "constantValue" => json!({"constant": canonical_constant(body)}),
        "integerValue" => json!({"constant": body.as_str().unwrap().parse::<f64>().unwrap()}),
        "arrayValue" => {
            let items: Vec<Value> = body["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| expand(values, n))
                .collect();
            if items.iter().all(|i| i.get("constant").is_some()) {
                json!({"constant": items.iter().map(|i| i["constant"].clone()).collect::<Vec<_>>()})
            } else {
                json!({"array": items})
            }
        }
        "dictionaryValue" => {
            let items: Map<String, Value> = body["values"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, n)| (k.clone(), expand(values, n)))
                .collect();
            if items.values().all(|i| i.get("constant").is_some()) {
                json!({"constant": items.iter().map(|(k, i)| (k.clone(), i["constant"].clone())).collect::<Map<_, _>>()})
            } else {
                json!({"dictionary": items})
            }
        }
        "functionInvocationValue" => {
            let args: Map<String, Value> = body["arguments"]
                .as_object()
                .map(|a| {
                    a.iter()
                        .map(|(k, n)| (k.clone(), expand(values, n)))
                        .collect()
                })
                .unwrap_or_default();
            json!({"call": body["functionName"], "args": args})
        }
        "functionDefinitionValue" => {
            json!({"define": body["argumentNames"], "body": expand(values, &values[body["body"].as_str().unwrap()])})
        }
        "argumentReference" => json!({"argument": body}),
        other => panic!("unknown value node {other}"),
    }
}

fn tree(expression: &Value) -> Value {
    let values = expression["values"].as_object().unwrap();
    expand(values, &values[expression["result"].as_str().unwrap()])
}

fn assert_same_tree(what: &str, ours: &Value, python: &Value) {
    let (a, b) = (tree(ours), tree(python));
    assert!(
        a == b,
        "{what}: cedar and the Python client differ\n--- cedar\n{}\n--- python\n{}",
        serde_json::to_string_pretty(&a).unwrap(),
        serde_json::to_string_pretty(&b).unwrap()
    );
}

fn image(id: &str, time: &str) -> ImageInfo {
    ImageInfo {
        id: id.into(),
        time_start_ms: chrono::DateTime::parse_from_rfc3339(time)
            .unwrap()
            .timestamp_millis(),
        properties: Map::new(),
    }
}

/// The Python script's input for the same computation.
fn python_input(
    spec: &CollectionSpec,
    tile: &Tile,
    period: &Period,
    images: &[ImageInfo],
) -> Value {
    json!({
        "collection": spec.id,
        "bands": spec.bands.iter().map(|b| [&b.native, &b.name]).collect::<Vec<_>>(),
        "data_type": spec.data_type.name(),
        "nodata": spec.nodata,
        "mosaic_per_day": spec.mosaic_per_day,
        "images": images.iter().map(|i| json!([i.id, i.time_start_ms])).collect::<Vec<_>>(),
        "crs": tile.crs.as_str(),
        "bounds": tile.bounds.to_array(),
        "period": [period.start.to_string(), period.end.to_string()],
        "filters": spec.filters.iter().map(|f| {
            let value = match &f.value { FilterValue::Number(n) => json!(n), FilterValue::Text(s) => json!(s) };
            json!([f.property, f.op.symbol(), value])
        }).collect::<Vec<_>>(),
    })
}

fn compare(spec: &CollectionSpec, tile: &Tile, period: &Period, images: &[ImageInfo]) {
    let (py_list, py_preard) = serialize_with_python(&python_input(spec, tile, period, images));
    let ours_list = serde_json::to_value(list_images(spec, tile, period)).unwrap();
    assert_same_tree("list_images", &ours_list, &py_list);
    let ours_preard = serde_json::to_value(preard_image(spec, images).0).unwrap();
    assert_same_tree("preard_image", &ours_preard, &py_preard);
}

#[test]
fn expressions_match_the_python_client() {
    let conus = TileGrid::preset("Landsat ARD v1 - CONUS").unwrap();
    let utm = TileGrid {
        name: "utm".into(),
        crs: Crs::Code("EPSG:32610".into()),
        ul: [499_980.0, 4_200_000.0],
        res: [10.0, 10.0],
        size: [1098, 1098],
        limits: Limits {
            rows: (0, 9),
            cols: (0, 9),
        },
    };
    let period = Period {
        start: NaiveDate::from_ymd_opt(2021, 1, 1).unwrap(),
        end: NaiveDate::from_ymd_opt(2022, 1, 1).unwrap(),
    };
    // Out of order; two scenes on one UTC day, one just before midnight UTC.
    let images = [
        image(
            "LANDSAT/LC08/C02/T1_L2/LC08_044034_20210617",
            "2021-06-17T18:40:00Z",
        ),
        image(
            "LANDSAT/LC08/C02/T1_L2/LC08_044033_20210601",
            "2021-06-01T18:39:30.5Z",
        ),
        image(
            "LANDSAT/LC08/C02/T1_L2/LC08_044034_20210601",
            "2021-06-01T18:40:00Z",
        ),
        image(
            "LANDSAT/LC08/C02/T1_L2/LC08_044035_20210617",
            "2021-06-17T23:59:59.999Z",
        ),
    ];

    let mut landsat = collection::preset("LANDSAT/LC08/C02/T1_L2").unwrap();
    compare(&landsat, &conus.tile(3, 10).unwrap(), &period, &images);

    landsat.filters = [
        "CLOUD_COVER < 80",
        "CLOUD_COVER_LAND <= 70.5",
        "SUN_ELEVATION > -3",
        "WRS_ROW >= 30",
        "SPACECRAFT_ID == \"LANDSAT_8\"",
        "LANDSAT_PRODUCT_ID != 'X'",
    ]
    .iter()
    .map(|f| f.parse().unwrap())
    .collect();
    landsat.data_type = DataType::Int16;
    landsat.nodata = -9999.0;
    compare(&landsat, &utm.tile(2, 7).unwrap(), &period, &images);

    landsat.mosaic_per_day = false;
    landsat.data_type = DataType::Float;
    landsat.nodata = -0.5;
    compare(&landsat, &conus.tile(0, 0).unwrap(), &period, &images);

    let mut s2 = collection::preset("COPERNICUS/S2_SR_HARMONIZED").unwrap();
    s2.filters.clear();
    compare(&s2, &utm.tile(0, 0).unwrap(), &period, &images[..1]);
    assert!(
        CONUS_ALBERS_WKT.starts_with("PROJCS"),
        "the CONUS tiles exercise crsWkt"
    );
}
