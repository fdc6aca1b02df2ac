//! Unit tests of the expression builders (a separate file to keep `expression.rs` readable).

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde_json::{Value, json};

use super::*;
use crate::collection::{self, Band};
use crate::grid::{Affine, Bounds, CONUS_ALBERS_WKT};

fn spec() -> CollectionSpec {
    CollectionSpec {
        id: "LANDSAT/LC08/C02/T1_L2".into(),
        bands: vec![
            Band {
                native: "SR_B2".into(),
                name: "blue".into(),
            },
            Band {
                native: "QA_PIXEL".into(),
                name: "qa".into(),
            },
        ],
        properties: vec!["CLOUD_COVER".into(), "system:time_start".into()],
        nodata: -9999.0,
        data_type: DataType::Int16,
        mosaic_per_day: true,
        filters: vec![
            "CLOUD_COVER < 80".parse().unwrap(),
            "WRS_ROW >= 30".parse().unwrap(),
            "SPACECRAFT_ID != \"LANDSAT_9\"".parse().unwrap(),
        ],
    }
}

fn tile(crs: Crs) -> Tile {
    Tile {
        row: 3,
        col: 10,
        crs,
        bounds: Bounds {
            left: -1_065_585.0,
            bottom: 2_714_805.0,
            right: -915_585.0,
            top: 2_864_805.0,
        },
        transform: Affine {
            scale_x: 30.0,
            shear_x: 0.0,
            translate_x: -1_065_585.0,
            shear_y: 0.0,
            scale_y: -30.0,
            translate_y: 2_864_805.0,
        },
        width: 5000,
        height: 5000,
    }
}

fn period() -> Period {
    Period {
        start: NaiveDate::from_ymd_opt(2021, 1, 1).unwrap(),
        end: NaiveDate::from_ymd_opt(2022, 1, 1).unwrap(),
    }
}

fn image(id: &str, time: &str) -> ImageInfo {
    let t = chrono::DateTime::parse_from_rfc3339(time)
        .unwrap()
        .timestamp_millis();
    ImageInfo {
        id: id.into(),
        time_start_ms: t,
        properties: Map::new(),
    }
}

/// The algorithm signatures of the reference file: name → (argument → optional).
fn algorithms() -> BTreeMap<String, BTreeMap<String, bool>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/reference/ee-algorithms.earthengine-api-1.7.50.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["algorithms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let name = a["name"]
                .as_str()
                .unwrap()
                .trim_start_matches("algorithms/")
                .to_string();
            let args = a["arguments"]
                .as_array()
                .map(|v| v.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|x| {
                    (
                        x["argumentName"].as_str().unwrap().to_string(),
                        x["optional"].as_bool().unwrap_or(false),
                    )
                })
                .collect();
            (name, args)
        })
        .collect()
}

/// Checks every invocation of `e` against the reference signatures; returns the names used.
fn check_signatures(e: &Expression) -> BTreeSet<String> {
    fn walk(
        n: &ValueNode,
        algos: &BTreeMap<String, BTreeMap<String, bool>>,
        used: &mut BTreeSet<String>,
    ) {
        match n {
            ValueNode::FunctionInvocationValue(f) => {
                let name = f
                    .function_name
                    .as_deref()
                    .expect("cedar only calls algorithms by name");
                let sig = algos
                    .get(name)
                    .unwrap_or_else(|| panic!("{name} is not an EE algorithm"));
                for arg in f.arguments.keys() {
                    assert!(sig.contains_key(arg), "{name} has no argument {arg}");
                }
                for (arg, optional) in sig {
                    assert!(
                        *optional || f.arguments.contains_key(arg),
                        "{name} misses required {arg}"
                    );
                }
                used.insert(name.to_string());
                f.arguments.values().for_each(|a| walk(a, algos, used));
            }
            ValueNode::ArrayValue(a) => a.values.iter().for_each(|v| walk(v, algos, used)),
            ValueNode::DictionaryValue(d) => d.values.values().for_each(|v| walk(v, algos, used)),
            _ => {}
        }
    }
    let algos = algorithms();
    let mut used = BTreeSet::new();
    assert!(e.values.contains_key(&e.result));
    e.values.values().for_each(|n| walk(n, &algos, &mut used));
    used
}

#[test]
fn every_invocation_matches_an_algorithm_signature() {
    let mut used = BTreeSet::new();
    let mut every_op = spec();
    every_op.filters = ["A < 1", "A <= 1", "A > 1", "A >= 1", "A == 'x'", "A != 'x'"]
        .iter()
        .map(|f| f.parse().unwrap())
        .collect();
    for crs in [
        Crs::Code("EPSG:5070".into()),
        Crs::Wkt(CONUS_ALBERS_WKT.into()),
    ] {
        used.extend(check_signatures(&list_images(
            &every_op,
            &tile(crs),
            &period(),
        )));
    }
    let images = [
        image("A/1", "2021-06-01T18:00:00Z"),
        image("A/2", "2021-06-01T18:00:30Z"),
    ];
    for data_type in DataType::NAMES {
        for mosaic in [true, false] {
            let mut s = spec();
            s.data_type = DataType::try_from(data_type.to_string()).unwrap();
            s.mosaic_per_day = mosaic;
            used.extend(check_signatures(&preard_image(&s, &images).0));
        }
    }
    for name in [
        "Filter.not",
        "Filter.lessThan",
        "Filter.greaterThan",
        "Filter.equals",
        "Image.toDouble",
        "Image.toInt8",
    ] {
        assert!(used.contains(name), "{name} not exercised");
    }
    // The presets, with their own filters.
    for id in collection::PRESET_IDS {
        check_signatures(&list_images(
            &collection::preset(id).unwrap(),
            &tile(Crs::Code("EPSG:5070".into())),
            &period(),
        ));
    }
}

#[test]
fn list_images_has_the_python_clients_shape() {
    let e = list_images(&spec(), &tile(Crs::Code("EPSG:5070".into())), &period());
    assert_eq!(e.result, "0");
    assert_eq!(
        e.values.len(),
        1,
        "nothing is used twice, so nothing is shared"
    );
    let v = serde_json::to_value(&e).unwrap();
    let root = &v["values"]["0"]["functionInvocationValue"];
    // Outermost: the last property filter, != as not(equals).
    assert_eq!(root["functionName"], "Collection.filter");
    let neq = &root["arguments"]["filter"]["functionInvocationValue"];
    assert_eq!(neq["functionName"], "Filter.not");
    assert_eq!(
        neq["arguments"]["filter"]["functionInvocationValue"],
        json!({"functionName": "Filter.equals", "arguments": {
            "leftField": {"constantValue": "SPACECRAFT_ID"}, "rightValue": {"constantValue": "LANDSAT_9"}}})
    );
    // Walk down the chain of filters to the load.
    let mut names = Vec::new();
    let mut node = root;
    while node["functionName"] == "Collection.filter" {
        names.push(
            node["arguments"]["filter"]["functionInvocationValue"]["functionName"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        if names.len() == 4 {
            let fp = &node["arguments"]["filter"]["functionInvocationValue"];
            assert_eq!(
                fp["arguments"]["leftField"],
                json!({"constantValue": ".all"})
            );
            let rect = &fp["arguments"]["rightValue"]["functionInvocationValue"]["arguments"]["geometry"]
                ["functionInvocationValue"];
            assert_eq!(rect["functionName"], "GeometryConstructors.Rectangle");
            assert_eq!(
                rect["arguments"]["coordinates"]["constantValue"],
                json!([
                    -1_065_585.0 + 1e-3,
                    2_714_805.0 + 1e-3,
                    -915_585.0 - 1e-3,
                    2_864_805.0 - 1e-3
                ])
            );
            assert_eq!(
                rect["arguments"]["crs"]["functionInvocationValue"]["arguments"]["crs"],
                json!({"constantValue": "EPSG:5070"})
            );
            assert_eq!(
                rect["arguments"]["geodesic"],
                json!({"constantValue": false})
            );
            assert_eq!(rect["arguments"]["evenOdd"], json!({"constantValue": true}));
        }
        if names.len() == 5 {
            let dr = &node["arguments"]["filter"]["functionInvocationValue"]["arguments"];
            assert_eq!(
                dr["rightField"],
                json!({"constantValue": "system:time_start"})
            );
            assert_eq!(
                dr["leftValue"]["functionInvocationValue"]["arguments"],
                json!({"start": {"constantValue": "2021-01-01"}, "end": {"constantValue": "2022-01-01"}})
            );
        }
        node = &node["arguments"]["collection"]["functionInvocationValue"];
    }
    assert_eq!(
        names,
        [
            "Filter.not",
            "Filter.not",
            "Filter.lessThan",
            "Filter.intersects",
            "Filter.dateRangeContains"
        ]
    );
    assert_eq!(
        node,
        &json!({"functionName": "ImageCollection.load", "arguments": {"id": {"constantValue": "LANDSAT/LC08/C02/T1_L2"}}})
    );
}

#[test]
fn wkt_tiles_use_the_wkt_as_projection() {
    let e = serde_json::to_string(&list_images(
        &spec(),
        &tile(Crs::Wkt(CONUS_ALBERS_WKT.into())),
        &period(),
    ))
    .unwrap();
    assert!(e.contains(&serde_json::to_string(CONUS_ALBERS_WKT).unwrap()));
}

#[test]
fn preard_bands_are_date_major_and_mosaic_same_day_scenes() {
    // Given out of order: two scenes on June 1 (UTC), one on June 17, one late on June 17 UTC.
    let images = [
        image("L/c", "2021-06-17T18:00:00Z"),
        image("L/b", "2021-06-01T18:00:30Z"),
        image("L/a", "2021-06-01T18:00:00Z"),
        image("L/d", "2021-06-17T23:59:59.999Z"),
    ];
    let (e, layout) = preard_image(&spec(), &images);
    let d = |m, day| NaiveDate::from_ymd_opt(2021, m, day).unwrap();
    assert_eq!(
        layout.slices,
        vec![
            Slice {
                date: d(6, 1),
                image_ids: vec!["L/a".into(), "L/b".into()]
            },
            Slice {
                date: d(6, 17),
                image_ids: vec!["L/c".into(), "L/d".into()]
            },
        ]
    );
    assert_eq!(layout.band_count(), 4);
    assert_eq!(
        layout.band_order(),
        vec![(0, "blue"), (0, "qa"), (1, "blue"), (1, "qa")]
    );

    let v = serde_json::to_value(&e).unwrap();
    let unmask = &v["values"]["0"]["functionInvocationValue"];
    assert_eq!(unmask["functionName"], "Image.unmask");
    assert_eq!(
        unmask["arguments"]["value"]["functionInvocationValue"]["arguments"]["value"],
        json!({"constantValue": -9999})
    );
    let cast = &unmask["arguments"]["input"]["functionInvocationValue"];
    assert_eq!(cast["functionName"], "Image.toInt16");
    let to_bands = &cast["arguments"]["value"]["functionInvocationValue"];
    assert_eq!(to_bands["functionName"], "ImageCollection.toBands");
    let per_date = to_bands["arguments"]["collection"]["functionInvocationValue"]["arguments"]["images"]["arrayValue"]["values"]
        .as_array()
        .unwrap();
    assert_eq!(per_date.len(), 2);
    let select = &per_date[0]["functionInvocationValue"];
    assert_eq!(select["functionName"], "Image.select");
    assert_eq!(
        select["arguments"]["bandSelectors"],
        json!({"constantValue": ["SR_B2", "QA_PIXEL"]})
    );
    assert_eq!(
        select["arguments"]["newNames"],
        json!({"constantValue": ["blue", "qa"]})
    );
    let mosaic = &select["arguments"]["input"]["functionInvocationValue"];
    assert_eq!(mosaic["functionName"], "ImageCollection.mosaic");
    let loads = &mosaic["arguments"]["collection"]["functionInvocationValue"]["arguments"]["images"]
        ["arrayValue"]["values"];
    assert_eq!(
        loads,
        &json!([
            {"functionInvocationValue": {"functionName": "Image.load", "arguments": {"id": {"constantValue": "L/a"}}}},
            {"functionInvocationValue": {"functionName": "Image.load", "arguments": {"id": {"constantValue": "L/b"}}}}
        ])
    );
    // The filters are not part of the export: it contains exactly the listed scenes.
    let text = serde_json::to_string(&e).unwrap();
    assert!(!text.contains("Collection.filter") && !text.contains("ImageCollection.load"));
}

#[test]
fn without_mosaic_every_scene_is_its_own_slice() {
    let mut s = spec();
    s.mosaic_per_day = false;
    let images = [
        image("L/b", "2021-06-01T18:00:30Z"),
        image("L/a", "2021-06-01T18:00:00Z"),
    ];
    let (e, layout) = preard_image(&s, &images);
    assert_eq!(layout.slices.len(), 2);
    assert_eq!(layout.slices[0].image_ids, ["L/a"]);
    assert_eq!(layout.slices[0].date, layout.slices[1].date);
    let text = serde_json::to_string(&e).unwrap();
    assert!(!text.contains("ImageCollection.mosaic"));
}

#[test]
fn repeated_subtrees_are_shared_by_reference() {
    let geom = call(
        "GeometryConstructors.Point",
        [("coordinates", constant(json!([1, 2])))],
    );
    let root = call(
        "Image.clip",
        [
            (
                "input",
                call(
                    "Image.clip",
                    [
                        ("input", call("Image.constant", [("value", constant(1))])),
                        ("geometry", geom.clone()),
                    ],
                ),
            ),
            ("geometry", geom),
        ],
    );
    let e = finish(root);
    assert_eq!(e.values.len(), 2);
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(
        v["values"]["1"]["functionInvocationValue"]["functionName"],
        "GeometryConstructors.Point"
    );
    assert_eq!(
        v["values"]["0"]["functionInvocationValue"]["arguments"]["geometry"],
        json!({"valueReference": "1"})
    );
    assert_eq!(
        v["values"]["0"]["functionInvocationValue"]["arguments"]["input"]["functionInvocationValue"]
            ["arguments"]["geometry"],
        json!({"valueReference": "1"})
    );
}

#[test]
fn image_lists_parse_sort_and_keep_only_spec_properties() {
    let result = json!({"type": "ImageCollection", "bands": [], "features": [
        {"type": "Image", "id": "L/2", "version": 1, "bands": [],
         "properties": {"system:time_start": 1_622_570_430_000_i64, "CLOUD_COVER": 12.5, "OTHER": 1}},
        {"type": "Image", "id": "L/1",
         "properties": {"system:time_start": 1_622_570_400_000_i64, "system:index": "1"}}
    ]});
    let images = parse_image_list(&spec(), &result).unwrap();
    assert_eq!(
        images.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["L/1", "L/2"]
    );
    assert_eq!(
        images[1].properties,
        json!({"CLOUD_COVER": 12.5, "system:time_start": 1_622_570_430_000_i64})
            .as_object()
            .unwrap()
            .clone()
    );
    assert_eq!(
        images[0].date(),
        NaiveDate::from_ymd_opt(2021, 6, 1).unwrap()
    );

    assert!(
        parse_image_list(&spec(), &json!({"type": "ImageCollection"}))
            .unwrap()
            .is_empty()
    );
    for bad in [
        json!({"type": "Image"}),
        json!("<html>"),
        json!({"type": "ImageCollection", "features": {}}),
        json!({"type": "ImageCollection", "features": [{"properties": {"system:time_start": 1}}]}),
        json!({"type": "ImageCollection", "features": [{"id": "x", "properties": {}}]}),
    ] {
        let err = parse_image_list(&spec(), &bad).unwrap_err();
        assert!(!err.is_retryable(), "{err}");
    }
}

#[test]
fn numbers_are_integral_when_exact() {
    assert_eq!(number(80.0), json!(80));
    assert_eq!(number(-9999.0), json!(-9999));
    assert_eq!(number(0.5), json!(0.5));
    assert_eq!(number(1e300), json!(1e300));
}
