use super::image::pattern_matches;
use super::*;
use serde_json::json;

fn invoke(name: &str, arguments: Value) -> Value {
    json!({"functionInvocationValue": {"functionName": name, "arguments": arguments}})
}

fn listing(filters: Vec<Value>) -> Value {
    let mut collection = invoke(
        "ImageCollection.load",
        json!({"id": {"constantValue": "LANDSAT/LC08/C02/T1_L2"}}),
    );
    for filter in filters {
        collection = invoke(
            "Collection.filter",
            json!({"collection": collection, "filter": filter}),
        );
    }
    json!({"result": "0", "values": {"0": collection}})
}

fn tile() -> Value {
    let projection = invoke(
        "Projection",
        json!({"crs": {"constantValue": "EPSG:32610"}}),
    );
    let rectangle = invoke(
        "GeometryConstructors.Rectangle",
        json!({
        "coordinates": {"constantValue": [400000.0, 4100000.0, 550000.0, 4250000.0]},
        "crs": projection, "geodesic": {"constantValue": false}, "evenOdd": {"constantValue": true}}),
    );
    invoke(
        "Filter.intersects",
        json!({"leftField": {"constantValue": ".all"}, "rightValue": invoke("Feature", json!({"geometry": rectangle}))}),
    )
}

fn dates(start: Value, end: Value) -> Value {
    invoke(
        "Filter.dateRangeContains",
        json!({
        "leftValue": invoke("DateRange", json!({"start": {"constantValue": start}, "end": {"constantValue": end}})),
        "rightField": {"constantValue": "system:time_start"}}),
    )
}

fn run(e: &Value) -> Result<Value> {
    compute(expression::parse(e).expect("valid"), 0)
}

#[test]
fn a_filtered_collection_lists_like_get_info() {
    let result = run(&listing(vec![
        dates(json!("2021-06-01"), json!("2021-09-01")),
        tile(),
    ]))
    .unwrap();
    assert_eq!(result["type"], "ImageCollection");
    assert_eq!(result["id"], "LANDSAT/LC08/C02/T1_L2");
    let features = result["features"].as_array().unwrap();
    assert!(!features.is_empty());
    assert_eq!(features[0]["type"], "Image");
    assert!(
        features[0]["bands"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["id"] == "QA_PIXEL")
    );
    // Millisecond numbers give the same range as ISO strings.
    let ms = run(&listing(vec![
        dates(json!(1_622_505_600_000_i64), json!(1_630_454_400_000_i64)),
        tile(),
    ]))
    .unwrap();
    assert_eq!(ms, result);
}

#[test]
fn property_filters_and_size() {
    let clear = invoke(
        "Filter.lt",
        json!({"leftField": {"constantValue": "CLOUD_COVER"}, "rightValue": {"constantValue": 20}}),
    );
    let all = run(&listing(vec![
        tile(),
        dates(json!("2021-01-01"), json!("2022-01-01")),
    ]))
    .unwrap();
    let filtered = run(&listing(vec![
        tile(),
        dates(json!("2021-01-01"), json!("2022-01-01")),
        clear,
    ]))
    .unwrap();
    let n = |v: &Value| v["features"].as_array().unwrap().len();
    assert!(n(&filtered) < n(&all));
    assert!(
        filtered["features"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["properties"]["CLOUD_COVER"].as_f64().unwrap() < 20.0)
    );
    let size = json!({"result": "s", "values": {"c": listing(vec![tile(), dates(json!("2021-01-01"), json!("2022-01-01"))])["values"]["0"].clone(),
        "s": invoke("Collection.size", json!({"collection": {"valueReference": "c"}}))}});
    assert_eq!(run(&size).unwrap(), json!(n(&all)));
}

#[test]
fn unbounded_listing_and_unknown_collections_fail_like_ee() {
    let error = run(&listing(vec![dates(
        json!("2021-01-01"),
        json!("2022-01-01"),
    )]))
    .unwrap_err();
    assert_eq!(
        error,
        EvalError::Invalid(
            "Collection query aborted after accumulating over 5000 elements.".into()
        )
    );
    let missing = json!({"result": "0", "values": {"0": invoke("ImageCollection.load", json!({"id": {"constantValue": "X"}}))}});
    assert_eq!(
        run(&missing).unwrap_err().to_string(),
        "ImageCollection.load: ImageCollection asset 'X' not found (does not exist or caller does not have access)."
    );
    let unsupported = json!({"result": "0", "values": {"0": invoke("Image.pixelArea", json!({}))}});
    assert!(
        matches!(run(&unsupported).unwrap_err(), EvalError::Unsupported(m) if m.contains("Image.pixelArea"))
    );
}

#[test]
fn the_pre_ard_image_has_dates_times_bands() {
    let listed = run(&listing(vec![
        tile(),
        dates(json!("2021-06-01"), json!("2021-07-01")),
    ]))
    .unwrap();
    let ids: Vec<&str> = listed["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    let mosaics: Vec<Value> = ids.iter().map(|id| {
        let load = invoke("Image.load", json!({"id": {"constantValue": id}}));
        let selected = invoke("Image.select", json!({"input": load,
            "bandSelectors": {"constantValue": ["SR_B2", "SR_B3", "QA_PIXEL"]}, "newNames": {"constantValue": ["blue", "green", "qa"]}}));
        invoke("ImageCollection.mosaic", json!({"collection": invoke("ImageCollection.fromImages", json!({"images": {"arrayValue": {"values": [selected]}}}))}))
    }).collect();
    let stacked = invoke(
        "ImageCollection.toBands",
        json!({"collection": invoke("ImageCollection.fromImages", json!({"images": {"arrayValue": {"values": mosaics}}}))}),
    );
    let e = json!({"result": "0", "values": {"0": invoke("Image.unmask", json!({"input": invoke("Image.toInt16", json!({"value": stacked})), "value": {"constantValue": -9999}}))}});
    let image = image(expression::parse(&e).unwrap(), 0).unwrap();
    assert_eq!(image.record.bands.len(), 3 * ids.len());
    assert_eq!(image.record.bands[0].id, "0_blue");
    assert_eq!(image.record.bands[0].min, -32768.0);
}

#[test]
fn select_reports_missing_bands_and_the_example_export_evaluates() {
    let e = json!({"result": "0", "values": {"0": invoke("Image.select", json!({
        "input": invoke("Image.constant", json!({"value": {"constantValue": 1}})),
        "bandSelectors": {"constantValue": ["x"]}}))}});
    assert_eq!(
        image(expression::parse(&e).unwrap(), 0)
            .unwrap_err()
            .to_string(),
        "Image.select: Pattern 'x' did not match any bands."
    );
    let body: Value = serde_json::from_str(include_str!(
        "../../../reference/examples/image-export-request.python-client-1.7.50.json"
    ))
    .unwrap();
    let exported = image(expression::parse(&body["expression"]).unwrap(), 0).unwrap();
    assert_eq!(
        exported
            .record
            .bands
            .iter()
            .map(|b| b.id.as_str())
            .collect::<Vec<_>>(),
        ["SR_B4_median", "SR_B5_median"]
    );
    assert!(pattern_matches("SR_.*", "SR_B1") && !pattern_matches("SR_.*", "QA_PIXEL"));
}
