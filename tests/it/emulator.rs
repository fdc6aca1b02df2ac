//! The EE emulator over raw HTTP: every endpoint, Google's error bodies, idempotency, paging,
//! cancellation, output naming, queue limits, faults, auth and stats. Bodies are written as
//! JSON by hand, never with cedar's EE client types, so the emulator is tested as Google's
//! stand-in rather than as the client's mirror.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cedar::emulator::{self, ApiMethod, DuplicateRequest, EmulatorOptions, Fault, RunningEmulator};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use serde_json::{Value, json};

const LANDSAT_SCENE: &str = "LANDSAT/LC08/C02/T1_L2/LC08_044034_20210610";

struct TestEmulator {
    emulator: RunningEmulator,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
}

impl TestEmulator {
    /// An emulator writing into its own temporary directory.
    async fn spawn(options: EmulatorOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(&root).unwrap());
        let emulator = emulator::start("127.0.0.1:0".parse().unwrap(), store, options)
            .await
            .unwrap();
        Self {
            emulator,
            http: reqwest::Client::new(),
            _dir: dir,
            root,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.url())
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn export(&self, body: &Value) -> Value {
        let (status, operation) = self.post("/v1/projects/p/image:export", body).await;
        assert_eq!(status, 200, "{operation}");
        operation
    }

    /// Polls `operations.get` until the operation is done.
    async fn wait_done(&self, name: &str) -> Value {
        for _ in 0..500 {
            let (status, operation) = self.get(&format!("/v1/{name}")).await;
            assert_eq!(status, 200, "{operation}");
            if operation["done"] == json!(true) {
                return operation;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("operation {name} did not finish");
    }
}

fn fast() -> EmulatorOptions {
    EmulatorOptions {
        task_seconds: 60.0,
        time_scale: 1000.0,
        ..EmulatorOptions::default()
    }
}

fn slow() -> EmulatorOptions {
    EmulatorOptions {
        task_seconds: 3600.0,
        ..EmulatorOptions::default()
    }
}

fn invoke(name: &str, arguments: Value) -> Value {
    json!({"functionInvocationValue": {"functionName": name, "arguments": arguments}})
}

fn export_body(description: &str, request_id: &str, width: u64, height: u64) -> Value {
    let image = invoke(
        "Image.toInt16",
        json!({"value": invoke("Image.select", json!({
            "input": invoke("Image.load", json!({"id": {"constantValue": LANDSAT_SCENE}})),
            "bandSelectors": {"constantValue": ["SR_B4", "SR_B5", "QA_PIXEL"]}}))}),
    );
    json!({
        "expression": {"result": "0", "values": {"0": image}},
        "description": description,
        "requestId": request_id,
        "maxPixels": {"value": "1000000000"},
        "priority": 100,
        "fileExportOptions": {
            "fileFormat": "GEO_TIFF",
            "cloudStorageDestination": {"bucket": "exports", "filenamePrefix": format!("campaign/{description}")},
            "geoTiffOptions": {"tileDimensions": {"width": 256, "height": 256}, "cloudOptimized": true},
        },
        "grid": {
            "dimensions": {"width": width, "height": height},
            "affineTransform": {"scaleX": 30.0, "shearX": 0.0, "translateX": 500000.0, "shearY": 0.0, "scaleY": -30.0, "translateY": 4200000.0},
            "crsCode": "EPSG:32610",
        },
    })
}

fn listing_expression(collection: &str) -> Value {
    let rectangle = invoke(
        "GeometryConstructors.Rectangle",
        json!({
        "coordinates": {"constantValue": [400000.0, 4100000.0, 550000.0, 4250000.0]},
        "crs": invoke("Projection", json!({"crs": {"constantValue": "EPSG:32610"}})),
        "geodesic": {"constantValue": false}, "evenOdd": {"constantValue": true}}),
    );
    let loaded = invoke(
        "ImageCollection.load",
        json!({"id": {"constantValue": collection}}),
    );
    let dated = invoke(
        "Collection.filter",
        json!({"collection": loaded, "filter": invoke("Filter.dateRangeContains", json!({
        "leftValue": invoke("DateRange", json!({"start": {"constantValue": "2021-06-01"}, "end": {"constantValue": "2021-09-01"}})),
        "rightField": {"constantValue": "system:time_start"}}))}),
    );
    let bounded = invoke(
        "Collection.filter",
        json!({"collection": dated, "filter": invoke("Filter.intersects", json!({
        "leftField": {"constantValue": ".all"}, "rightValue": invoke("Feature", json!({"geometry": rectangle}))}))}),
    );
    json!({"expression": {"result": "0", "values": {"0": bounded}}})
}

#[tokio::test]
async fn value_compute_lists_a_filtered_collection_like_get_info() {
    let t = TestEmulator::spawn(fast()).await;
    let (status, body) = t
        .post(
            "/v1/projects/p/value:compute?prettyPrint=false&alt=json",
            &listing_expression("LANDSAT/LC08/C02/T1_L2"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let result = &body["result"];
    assert_eq!(result["type"], "ImageCollection");
    let features = result["features"].as_array().unwrap();
    assert!(!features.is_empty());
    for feature in features {
        assert_eq!(feature["type"], "Image");
        assert!(
            feature["id"]
                .as_str()
                .unwrap()
                .starts_with("LANDSAT/LC08/C02/T1_L2/LC08_")
        );
        assert!(feature["properties"]["CLOUD_COVER"].is_number());
        assert!(feature["properties"]["system:time_start"].is_i64());
        // Every listed id can be exported.
        let mut body = export_body("listed", "", 10, 10);
        body["expression"]["values"]["0"]["functionInvocationValue"]["arguments"]["value"]["functionInvocationValue"]
            ["arguments"]["input"]["functionInvocationValue"]["arguments"]["id"]["constantValue"] =
            feature["id"].clone();
        let operation = t.export(&body).await;
        assert_eq!(
            t.wait_done(operation["name"].as_str().unwrap()).await["metadata"]["state"],
            "SUCCEEDED"
        );
    }

    let (status, body) = t
        .post(
            "/v1/projects/p/value:compute",
            &listing_expression("LANDSAT/LC08/C01/T1_SR"),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
        "message": "ImageCollection.load: ImageCollection asset 'LANDSAT/LC08/C01/T1_SR' not found (does not exist or caller does not have access)."}})
    );

    let unsupported = json!({"expression": {"result": "0", "values": {"0": invoke("Image.pixelArea", json!({}))}}});
    let (status, body) = t.post("/v1/projects/p/value:compute", &unsupported).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Image.pixelArea")
    );

    let unknown_function = json!({"expression": {"result": "0", "values": {"0": invoke("Collection.toBands", json!({}))}}});
    let (status, _) = t
        .post("/v1/projects/p/value:compute", &unknown_function)
        .await;
    assert_eq!(status, 400);
}

/// `workloadTag` on `image:export` and `value:compute`: a tag outside the rule Google's client
/// holds tags to is refused with 400, a good one (or none) is counted under its tag.
#[tokio::test]
async fn workload_tags_are_checked_and_counted_per_tag() {
    let t = TestEmulator::spawn(fast()).await;
    let tagged = |description: &str, request_id: &str, tag: Option<&str>| {
        let mut body = export_body(description, request_id, 10, 10);
        if let Some(tag) = tag {
            body["workloadTag"] = json!(tag);
        }
        body
    };
    t.export(&tagged("a", "tag-1", Some("campaign-a"))).await;
    t.export(&tagged("b", "tag-2", Some("campaign_b-2"))).await;
    t.export(&tagged("c", "tag-3", None)).await;
    // An empty tag is no tag, as Google's client sends it.
    t.export(&tagged("d", "tag-4", Some(""))).await;
    // The same requestId again starts nothing and counts nothing.
    t.export(&tagged("a", "tag-1", Some("campaign-a"))).await;
    let too_long = "a".repeat(64);
    for bad in ["Campaign-A", "-a", "a-", "a.b", "a b", too_long.as_str()] {
        let (status, error) = t
            .post(
                "/v1/projects/p/image:export",
                &tagged("x", "tag-x", Some(bad)),
            )
            .await;
        assert_eq!(
            (status, error["error"]["status"].as_str()),
            (400, Some("INVALID_ARGUMENT")),
            "{bad}: {error}"
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!(
                    "Invalid workload tag \"{bad}\". Tags must be 1-63 characters"
                )),
            "{error}"
        );
        let mut compute = listing_expression("LANDSAT/LC08/C02/T1_L2");
        compute["workloadTag"] = json!(bad);
        let (status, _) = t.post("/v1/projects/p/value:compute", &compute).await;
        assert_eq!(status, 400, "{bad}");
    }
    let mut compute = listing_expression("LANDSAT/LC08/C02/T1_L2");
    compute["workloadTag"] = json!("campaign-a");
    let (status, body) = t.post("/v1/projects/p/value:compute", &compute).await;
    assert_eq!(status, 200, "{body}");
    let stats = t.emulator.stats();
    assert_eq!(
        stats.exports_by_workload_tag,
        [
            ("".to_owned(), 2),
            ("campaign-a".to_owned(), 1),
            ("campaign_b-2".to_owned(), 1)
        ]
        .into()
    );
    assert_eq!(
        stats.computes_by_workload_tag,
        [("campaign-a".to_owned(), 1)].into()
    );
}

#[tokio::test]
async fn unknown_fields_and_bad_values_are_rejected_like_google() {
    let t = TestEmulator::spawn(fast()).await;
    let mut body = export_body("bad", "bad-1", 10, 10);
    body["fileExportOptions"]["gcsDestination"] = json!({"bucket": "exports"});
    let (status, error) = t.post("/v1/projects/p/image:export", &body).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(
        error["error"]["message"],
        "Invalid JSON payload received. Unknown name \"gcsDestination\" at 'file_export_options': Cannot find field."
    );
    assert_eq!(
        error["error"]["details"][0]["fieldViolations"][0]["field"],
        "file_export_options"
    );

    let mut body = export_body("bad", "bad-2", 10, 10);
    body["fileExportOptions"]["fileFormat"] = json!("GEOTIFF");
    let (status, _) = t.post("/v1/projects/p/image:export", &body).await;
    assert_eq!(status, 400);

    let mut body = export_body("bad", "not valid!", 10, 10);
    let (status, _) = t.post("/v1/projects/p/image:export", &body).await;
    assert_eq!(status, 400);

    body["requestId"] = json!("ok-1");
    body["expression"]["values"]["0"] = invoke(
        "Image.load",
        json!({"id": {"constantValue": LANDSAT_SCENE}, "bogus": {"constantValue": 1}}),
    );
    let (status, error) = t.post("/v1/projects/p/image:export", &body).await;
    assert_eq!(status, 400);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bogus")
    );

    let response = t
        .http
        .post(t.url("/v1/projects/p/image:export"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(t.emulator.stats().exports_by_description.get("bad"), None);
}

#[tokio::test]
async fn an_export_runs_to_success_and_writes_pieces_named_like_ee() {
    let t = TestEmulator::spawn(fast()).await;
    let operation = t
        .export(&export_body("tile_h1v1_2021", "tile-h1v1-2021", 600, 300))
        .await;
    let name = operation["name"].as_str().unwrap();
    let id = name.strip_prefix("projects/p/operations/").unwrap();
    assert_eq!(id.len(), 24);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
    );
    let metadata = &operation["metadata"];
    assert_eq!(
        metadata["@type"],
        "type.googleapis.com/google.earthengine.v1.OperationMetadata"
    );
    assert_eq!(metadata["state"], "PENDING");
    assert_eq!(metadata["type"], "EXPORT_IMAGE");
    assert_eq!(metadata["description"], "tile_h1v1_2021");
    assert!(operation.get("done").is_none());

    let done = t.wait_done(name).await;
    let metadata = &done["metadata"];
    assert_eq!(metadata["state"], "SUCCEEDED");
    assert_eq!(
        done["response"]["@type"],
        "type.googleapis.com/google.protobuf.Empty"
    );
    assert!(done.get("error").is_none());
    for field in ["createTime", "updateTime", "startTime", "endTime"] {
        let time = metadata[field].as_str().unwrap();
        assert!(
            time.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "{field}: {time}"
        );
    }
    assert_eq!(metadata["progress"], 1.0);
    assert_eq!(metadata["attempt"], 1);
    assert_eq!(metadata["stages"].as_array().unwrap().len(), 2);
    assert!(
        metadata["destinationUris"][0]
            .as_str()
            .unwrap()
            .contains("exports/campaign/")
    );

    let mut files: Vec<String> = std::fs::read_dir(t.root.join("campaign"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "tile_h1v1_2021-0000000000-0000000000.tif",
            "tile_h1v1_2021-0000000000-0000000256.tif",
            "tile_h1v1_2021-0000000000-0000000512.tif",
            "tile_h1v1_2021-0000000256-0000000000.tif",
            "tile_h1v1_2021-0000000256-0000000256.tif",
            "tile_h1v1_2021-0000000256-0000000512.tif",
        ]
    );
    let first = std::fs::read(
        t.root
            .join("campaign/tile_h1v1_2021-0000000000-0000000000.tif"),
    )
    .unwrap();
    // A GeoTIFF of the piece's size and the image's bands (tests/it/geotiff.rs reads them
    // with GDAL).
    let mut tiff = tiff::decoder::Decoder::new(std::io::Cursor::new(first)).unwrap();
    assert_eq!(tiff.dimensions().unwrap(), (256, 256));
    assert_eq!(
        tiff.get_tag_u32(tiff::tags::Tag::SamplesPerPixel).unwrap(),
        3
    );

    // A grid within tileDimensions is one file named after the prefix.
    let single = t.export(&export_body("small", "small-1", 200, 100)).await;
    t.wait_done(single["name"].as_str().unwrap()).await;
    assert!(t.root.join("campaign/small.tif").is_file());

    let stats = t.emulator.stats();
    assert_eq!(stats.exports_by_description["tile_h1v1_2021"], 1);
    assert_eq!(stats.succeeded_by_description["tile_h1v1_2021"], 1);
    assert_eq!(stats.objects_written, 7);
    assert_eq!(stats.operations["SUCCEEDED"], 2);
}

#[tokio::test]
async fn a_repeated_request_id_starts_no_second_operation() {
    let t = TestEmulator::spawn(fast()).await;
    let body = export_body("dup", "dup-request-1", 10, 10);
    let first = t.export(&body).await;
    let second = t.export(&body).await;
    assert_eq!(first["name"], second["name"]);
    let mut renamed = body.clone();
    renamed["requestId"] = json!("dup-request-2");
    let third = t.export(&renamed).await;
    assert_ne!(first["name"], third["name"]);
    assert_eq!(t.emulator.stats().exports_by_description["dup"], 2);

    let strict = TestEmulator::spawn(EmulatorOptions {
        duplicate_request: DuplicateRequest::AlreadyExists,
        ..fast()
    })
    .await;
    strict.export(&body).await;
    let (status, error) = strict.post("/v1/projects/p/image:export", &body).await;
    assert_eq!(status, 409);
    assert_eq!(error["error"]["status"], "ALREADY_EXISTS");
}

#[tokio::test]
async fn operations_list_pages_newest_first() {
    let t = TestEmulator::spawn(slow()).await;
    let mut names = Vec::new();
    for i in 0..5 {
        let op = t
            .export(&export_body(
                &format!("page-{i}"),
                &format!("page-{i}"),
                10,
                10,
            ))
            .await;
        names.push(op["name"].as_str().unwrap().to_owned());
    }
    t.export(&{
        let b = export_body("other-project", "other", 10, 10);
        let (status, _) = t.post("/v1/projects/q/image:export", &b).await;
        assert_eq!(status, 200);
        export_body("page-5", "page-5", 10, 10)
    })
    .await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let (status, page) = t
            .get(&format!(
                "/v1/projects/p/operations?pageSize=2&pageToken={token}&filter=ignored&alt=json"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["operations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["name"].as_str().unwrap().to_owned()),
        );
        match page["nextPageToken"].as_str() {
            Some(next) => token = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    assert_eq!(&seen[1..], names.iter().rev().cloned().collect::<Vec<_>>());
    let (status, _) = t.get("/v1/projects/p/operations?pageToken=garbage").await;
    assert_eq!(status, 400);
    let (status, empty) = t.get("/v1/projects/nobody/operations").await;
    assert_eq!((status, empty), (200, json!({})));
}

#[tokio::test]
async fn cancel_moves_pending_and_running_operations_to_cancelled() {
    let t = TestEmulator::spawn(EmulatorOptions {
        max_concurrent_exports: 1,
        ..slow()
    })
    .await;
    let running = t.export(&export_body("c1", "c1", 10, 10)).await;
    let pending = t.export(&export_body("c2", "c2", 10, 10)).await;
    let running = running["name"].as_str().unwrap();
    let pending = pending["name"].as_str().unwrap();
    // Only one export may run at once; the other waits.
    for _ in 0..200 {
        if t.get(&format!("/v1/{running}")).await.1["metadata"]["state"] == "RUNNING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        t.get(&format!("/v1/{pending}")).await.1["metadata"]["state"],
        "PENDING"
    );
    assert_eq!(
        t.get("/v1/projects/p/config").await.1["maxConcurrentExports"],
        1
    );

    for name in [pending, running] {
        let (status, body) = t.post(&format!("/v1/{name}:cancel"), &json!({})).await;
        assert_eq!((status, body), (200, json!({})));
        let done = t.wait_done(name).await;
        assert_eq!(done["metadata"]["state"], "CANCELLED");
        assert_eq!(done["error"]["code"], 1);
    }
    let (status, error) = t.post(&format!("/v1/{running}:cancel"), &json!({})).await;
    assert_eq!(
        (status, error["error"]["status"].as_str()),
        (400, Some("FAILED_PRECONDITION"))
    );
    let (status, error) = t
        .post(
            "/v1/projects/p/operations/AAAAAAAAAAAAAAAAAAAAAAAA:cancel",
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, error["error"]["status"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let (status, _) = t
        .get("/v1/projects/other/operations/AAAAAAAAAAAAAAAAAAAAAAAA")
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_full_queue_answers_resource_exhausted() {
    let t = TestEmulator::spawn(EmulatorOptions {
        queue_limit: 2,
        ..slow()
    })
    .await;
    t.export(&export_body("q1", "q1", 10, 10)).await;
    t.export(&export_body("q2", "q2", 10, 10)).await;
    let (status, error) = t
        .post(
            "/v1/projects/p/image:export",
            &export_body("q3", "q3", 10, 10),
        )
        .await;
    assert_eq!(status, 429);
    assert_eq!(
        error,
        json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
        "message": "Too many tasks already in the queue (2). Please wait for some of them to complete."}})
    );
    // A retry of an accepted request still gets its operation.
    assert_eq!(
        t.post(
            "/v1/projects/p/image:export",
            &export_body("q1", "q1", 10, 10)
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn tasks_fail_with_ee_messages() {
    let t = TestEmulator::spawn(fast()).await;
    let mut body = export_body("huge", "huge", 20_000, 20_000);
    body["maxPixels"] = json!("100000000");
    let op = t.export(&body).await;
    let done = t.wait_done(op["name"].as_str().unwrap()).await;
    assert_eq!(done["metadata"]["state"], "FAILED");
    assert_eq!(
        done["error"]["message"],
        "Export too large: specified 400000000 pixels (max: 100000000). Specify higher maxPixels value if you intend to export a large area."
    );

    let mut missing = export_body("missing", "missing", 10, 10);
    missing["expression"]["values"]["0"] = invoke(
        "Image.load",
        json!({"id": {"constantValue": "LANDSAT/LC08/C02/T1_L2/LC08_001001_20000101"}}),
    );
    let op = t.export(&missing).await;
    let done = t.wait_done(op["name"].as_str().unwrap()).await;
    assert_eq!(
        done["error"]["message"],
        "Image.load: Image asset 'LANDSAT/LC08/C02/T1_L2/LC08_001001_20000101' not found (does not exist or caller does not have access)."
    );

    let (status, _) = t
        .post(
            "/_emulator/faults",
            &json!({"kind": "next_tasks_fail", "count": 1}),
        )
        .await;
    assert_eq!(status, 200);
    let op = t.export(&export_body("flaky", "flaky-1", 10, 10)).await;
    let done = t.wait_done(op["name"].as_str().unwrap()).await;
    assert_eq!(
        (
            done["metadata"]["state"].as_str(),
            done["error"]["message"].as_str()
        ),
        (Some("FAILED"), Some("Computation timed out."))
    );
    let op = t.export(&export_body("flaky", "flaky-2", 10, 10)).await;
    assert_eq!(
        t.wait_done(op["name"].as_str().unwrap()).await["metadata"]["state"],
        "SUCCEEDED"
    );

    // With fail_rate 1 the first export of a description fails and its resubmission succeeds.
    let always = TestEmulator::spawn(EmulatorOptions {
        fail_rate: 1.0,
        bucket: Some("exports".into()),
        ..fast()
    })
    .await;
    let first = always
        .export(&export_body("retry", "retry-1", 10, 10))
        .await;
    assert_eq!(
        always.wait_done(first["name"].as_str().unwrap()).await["metadata"]["state"],
        "FAILED"
    );
    let second = always
        .export(&export_body("retry", "retry-2", 10, 10))
        .await;
    assert_eq!(
        always.wait_done(second["name"].as_str().unwrap()).await["metadata"]["state"],
        "SUCCEEDED"
    );
    let mut elsewhere = export_body("elsewhere", "elsewhere", 10, 10);
    elsewhere["fileExportOptions"]["cloudStorageDestination"]["bucket"] = json!("not-mine");
    let op = always.export(&elsewhere).await;
    let done = always.wait_done(op["name"].as_str().unwrap()).await;
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not-mine")
    );
}

#[tokio::test]
async fn injected_faults_answer_in_googles_error_shape() {
    let t = TestEmulator::spawn(fast()).await;
    t.emulator.inject(Fault::NextRequests {
        method: Some(ApiMethod::OperationsList),
        count: 1,
        status: 503,
        message: None,
        processed: false,
    });
    let (status, body) = t.get("/v1/projects/p/operations").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["status"], "UNAVAILABLE");
    assert_eq!(t.get("/v1/projects/p/operations").await.0, 200);

    let (status, _) = t
        .post(
            "/_emulator/faults",
            &json!([{"kind": "rates", "throttle_rate": 1.0}]),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = t.get("/v1/projects/p/config").await;
    assert_eq!(status, 429);
    assert_eq!(
        body,
        json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
        "message": "Too Many Requests: Request was rejected because the request rate or concurrency limit was exceeded."}})
    );
    t.post("/_emulator/faults", &json!({"kind": "clear"})).await;

    // A processed fault: the export starts, but the client sees a 500 and must retry with the
    // same requestId to learn the operation.
    t.emulator.inject(Fault::NextRequests {
        method: Some(ApiMethod::ImageExport),
        count: 1,
        status: 500,
        message: None,
        processed: true,
    });
    let body = export_body("lost", "lost-1", 10, 10);
    assert_eq!(t.post("/v1/projects/p/image:export", &body).await.0, 500);
    t.export(&body).await;
    assert_eq!(t.emulator.stats().exports_by_description["lost"], 1);

    let (status, _) = t
        .post("/_emulator/faults", &json!({"kind": "explode"}))
        .await;
    assert_eq!(status, 400);

    let stats: Value = t
        .http
        .get(t.url("/_emulator/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"]["operations.list"], 2);
    assert_eq!(stats["requests"]["projects.getConfig"], 1);
    assert_eq!(stats["requests"]["image.export"], 2);
    assert_eq!(stats["responses"]["503"], 1);
    assert_eq!(stats["responses"]["429"], 1);
    assert_eq!(stats["responses"]["500"], 1);

    let throttled = TestEmulator::spawn(EmulatorOptions {
        unavailable_rate: 1.0,
        ..fast()
    })
    .await;
    assert_eq!(throttled.get("/v1/projects/p/operations").await.0, 503);
    let (status, body) = throttled.get("/v1/projects/p/nothing-here").await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (404, Some("NOT_FOUND"))
    );
}

fn sign_jwt(key: &aws_lc_rs::signature::RsaKeyPair, claims: &Value) -> String {
    use aws_lc_rs::signature::RSA_PKCS1_SHA256;
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}).to_string());
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test]
async fn auth_requires_tokens_from_the_jwt_bearer_flow() {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
    let t = TestEmulator::spawn(EmulatorOptions {
        require_auth: true,
        token_expires_in_secs: 1234,
        ..fast()
    })
    .await;
    let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = key.public_key().as_der().unwrap();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    );
    t.emulator.register_public_key_pem(&pem);

    let (status, body) = t.get("/v1/projects/p/config").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");

    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": "sa@p.iam.gserviceaccount.com", "scope": "https://www.googleapis.com/auth/earthengine",
        "aud": t.url("/token"), "iat": now, "exp": now + 3600});
    let request = |assertion: String| {
        t.http
            .post(t.url("/token"))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
    };
    let response = request(sign_jwt(&key, &claims)).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let token: Value = response.json().await.unwrap();
    assert_eq!(
        (token["expires_in"].as_u64(), token["token_type"].as_str()),
        (Some(1234), Some("Bearer"))
    );
    let access = token["access_token"].as_str().unwrap();
    let response = t
        .http
        .get(t.url("/v1/projects/p/config"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = t
        .http
        .get(t.url("/v1/projects/p/config"))
        .bearer_auth("ya29.forged")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    let other = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let refused: Value = request(sign_jwt(&other, &claims))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        refused,
        json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
    );
    let mut stale = claims.clone();
    stale["iat"] = json!(now - 7200);
    stale["exp"] = json!(now - 3600);
    let response = request(sign_jwt(&key, &stale)).await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let wrong_grant = t
        .http
        .post(t.url("/token"))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        wrong_grant.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    assert_eq!(t.emulator.stats().requests["token"], 4);
}

#[tokio::test]
async fn a_configured_project_rejects_others_and_shutdown_stops_serving() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let options = EmulatorOptions {
        project: Some("mine".into()),
        ..fast()
    };
    let emulator = emulator::start("127.0.0.1:0".parse().unwrap(), store, options)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = emulator.url();
    let config: Value = http
        .get(format!("{url}/v1/projects/mine/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["name"], "projects/mine/config");
    assert_eq!(config["planMaxConcurrentExports"], 2);
    let other = http
        .get(format!("{url}/v1/projects/theirs/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 403);
    emulator.shutdown().await;
    assert!(
        reqwest::Client::new()
            .get(format!("{url}/v1/projects/mine/config"))
            .send()
            .await
            .is_err()
    );
}

/// The storage JSON API's object resource fields, checked against checksums computed here.
fn assert_resource(resource: &Value, name: &str, content: &[u8]) {
    use base64::engine::general_purpose::STANDARD;
    use md5::Digest;
    assert_eq!(resource["name"], name, "{resource}");
    assert_eq!(resource["bucket"], "exports", "{resource}");
    // uint64 and int64 fields are JSON strings in the JSON API.
    assert_eq!(resource["size"], content.len().to_string(), "{resource}");
    assert!(
        resource["generation"]
            .as_str()
            .is_some_and(|g| g.parse::<i64>().is_ok()),
        "{resource}"
    );
    let md5 = md5::Md5::digest(content);
    assert_eq!(resource["md5Hash"], STANDARD.encode(md5), "{resource}");
    // CRC32C in big-endian byte order, as Google documents.
    let crc = crc32c::crc32c(content).to_be_bytes();
    assert_eq!(resource["crc32c"], STANDARD.encode(crc), "{resource}");
}

/// Upload, list by string prefix with paging, resource and media reads, delete, and Google's
/// answers to what is missing or unsupported.
#[tokio::test]
async fn the_storage_api_uploads_lists_reads_and_deletes_objects() {
    let t = TestEmulator::spawn(EmulatorOptions {
        bucket: Some("exports".to_owned()),
        ..fast()
    })
    .await;
    let upload = |name: &str, body: &'static [u8]| {
        let request = t
            .http
            .post(t.url("/upload/storage/v1/b/exports/o"))
            .query(&[("uploadType", "media"), ("name", name)])
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, resource) = upload("camp/a-1.tif", b"first object").await;
    assert_eq!(status, 200, "{resource}");
    assert_resource(&resource, "camp/a-1.tif", b"first object");
    for (name, body) in [
        ("camp/a-2.tif", &b"second"[..]),
        ("camp/ab.json", &b"{}"[..]),
        ("camp/b.tif", &b"other"[..]),
        ("campaign2/a.tif", &b"elsewhere"[..]),
    ] {
        let (status, resource) = upload(name, body).await;
        assert_eq!(status, 200, "{name}: {resource}");
    }

    // A plain string prefix, not a folder: "camp/a" matches a-1, a-2 and ab, one per page.
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = vec![
            ("prefix", "camp/a".to_owned()),
            ("maxResults", "1".to_owned()),
        ];
        if let Some(t) = &token {
            query.push(("pageToken", t.clone()));
        }
        let response = t
            .http
            .get(t.url("/storage/v1/b/exports/o"))
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            names.push(item["name"].as_str().unwrap().to_owned());
            if item["name"] == "camp/a-1.tif" {
                assert_resource(item, "camp/a-1.tif", b"first object");
            }
        }
        match page["nextPageToken"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(names, ["camp/a-1.tif", "camp/a-2.tif", "camp/ab.json"]);
    assert_eq!(pages, 3);
    // Nothing matches: no `items` at all, as Google answers.
    let (status, empty) = t.get("/storage/v1/b/exports/o?prefix=nothing/").await;
    assert_eq!(status, 200);
    assert!(empty.get("items").is_none(), "{empty}");
    assert!(empty.get("nextPageToken").is_none(), "{empty}");

    // The name is one percent-encoded path segment.
    let (status, resource) = t.get("/storage/v1/b/exports/o/camp%2Fa-1.tif").await;
    assert_eq!(status, 200, "{resource}");
    assert_resource(&resource, "camp/a-1.tif", b"first object");
    let media = t
        .http
        .get(t.url("/storage/v1/b/exports/o/camp%2Fa-1.tif?alt=media"))
        .send()
        .await
        .unwrap();
    assert_eq!(media.status(), 200);
    let hash = media.headers()["x-goog-hash"].to_str().unwrap().to_owned();
    assert!(
        hash.contains(&format!("md5={}", resource["md5Hash"].as_str().unwrap())),
        "{hash}"
    );
    assert_eq!(&media.bytes().await.unwrap()[..], b"first object");

    let delete = || async {
        t.http
            .delete(t.url("/storage/v1/b/exports/o/camp%2Fa-1.tif"))
            .send()
            .await
            .unwrap()
    };
    assert_eq!(delete().await.status(), 204);
    let again = delete().await;
    assert_eq!(again.status(), 404);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], 404, "{body}");
    let (status, _) = t
        .get("/storage/v1/b/exports/o/camp%2Fa-1.tif?alt=media")
        .await;
    assert_eq!(status, 404);
    let (status, _) = t.get("/storage/v1/b/other-bucket/o").await;
    assert_eq!(status, 404, "another bucket does not exist");
    let multipart = t
        .http
        .post(t.url("/upload/storage/v1/b/exports/o?uploadType=multipart&name=x"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(multipart.status(), 400);

    let stats = t.emulator.stats();
    assert_eq!(stats.storage_requests["objects.insert"], 6);
    assert_eq!(stats.storage_requests["objects.delete"], 2);
    assert_eq!(stats.media_bytes_served, b"first object".len() as u64);
    assert!(
        stats.responses.is_empty(),
        "storage answers are not EE answers: {stats:?}"
    );
}

/// `/_emulator/objects` lists what an export wrote with the checksums the storage API reports;
/// a truncation fault cuts exactly one download of a matching object mid-stream.
#[tokio::test]
async fn exports_are_in_the_manifest_and_a_download_can_be_cut_mid_stream() {
    let t = TestEmulator::spawn(fast()).await;
    let operation = t
        .export(&export_body("tile_h1v1_2021", "cut-1", 600, 300))
        .await;
    t.wait_done(operation["name"].as_str().unwrap()).await;
    let (status, manifest) = t.get("/_emulator/objects").await;
    assert_eq!(status, 200);
    let objects = manifest["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 6, "{manifest}");
    let (status, listing) = t
        .get("/storage/v1/b/exports/o?prefix=campaign/tile_h1v1")
        .await;
    assert_eq!(status, 200);
    let items = listing["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    for (object, item) in objects.iter().zip(items) {
        let name = object["name"].as_str().unwrap();
        assert_eq!(object["source"], "export");
        let bytes = std::fs::read(t.root.join(name)).unwrap();
        assert_resource(item, name, &bytes);
        assert_eq!(object["size"], bytes.len() as u64);
        assert_eq!(object["crc32c"], crc32c::crc32c(&bytes));
    }
    assert_eq!(t.emulator.objects().len(), 6);

    let (status, _) = t
        .post(
            "/_emulator/faults",
            &json!({"kind": "truncate_next_download", "object_contains": "0000000000-0000000256", "after_bytes": 100}),
        )
        .await;
    assert_eq!(status, 200);
    let path =
        "/storage/v1/b/exports/o/campaign%2Ftile_h1v1_2021-0000000000-0000000256.tif?alt=media";
    let full = std::fs::read(
        t.root
            .join("campaign/tile_h1v1_2021-0000000000-0000000256.tif"),
    )
    .unwrap();
    // Another object is not cut.
    let other = t
        .http
        .get(t.url(
            "/storage/v1/b/exports/o/campaign%2Ftile_h1v1_2021-0000000000-0000000000.tif?alt=media",
        ))
        .send()
        .await
        .unwrap();
    let first = std::fs::read(
        t.root
            .join("campaign/tile_h1v1_2021-0000000000-0000000000.tif"),
    )
    .unwrap();
    assert_eq!(other.bytes().await.unwrap(), first);
    let cut = t.http.get(t.url(path)).send().await.unwrap();
    assert_eq!(cut.status(), 200);
    assert_eq!(
        cut.content_length(),
        Some(full.len() as u64),
        "the whole length is announced"
    );
    let mut received = 0;
    let mut stream = cut.bytes_stream();
    let mut failed = false;
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        match chunk {
            Ok(c) => received += c.len(),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(
        failed,
        "the client sees the transfer fail (got {received} bytes)"
    );
    assert_eq!(received, 100);
    // The rest, from where the cut stopped, of the same generation: 206 and Content-Range.
    let generation = generation_of(&t, path).await;
    let rest = t
        .http
        .get(t.url(&format!("{path}&ifGenerationMatch={generation}")))
        .header("range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 206);
    assert_eq!(
        rest.headers()["content-range"],
        format!("bytes 100-{}/{}", full.len() - 1, full.len()).as_str()
    );
    assert_eq!(&rest.bytes().await.unwrap()[..], &full[100..]);
    // Another generation is refused (412), and so is a range past the end (416); neither
    // sends a byte.
    let stale = t
        .http
        .get(t.url(&format!("{path}&ifGenerationMatch=1")))
        .header("range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let past = t
        .http
        .get(t.url(path))
        .header("range", format!("bytes={}-", full.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 416);
    // One-shot: the next download is whole.
    let whole = t.http.get(t.url(path)).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(&whole.bytes().await.unwrap()[..], &full[..]);
    let stats = t.emulator.stats();
    assert_eq!(stats.downloads_truncated, 1);
    // Bytes sent: the other object, the 100 before the cut, the rest, the whole again.
    assert_eq!(
        stats.media_bytes_served,
        first.len() as u64 + 100 + (full.len() as u64 - 100) + full.len() as u64
    );
}

/// The generation the emulator serves an object (`path` is its `alt=media` URL path) with.
async fn generation_of(t: &TestEmulator, path: &str) -> String {
    let (status, resource) = t.get(path.trim_end_matches("?alt=media")).await;
    assert_eq!(status, 200);
    resource["generation"].as_str().unwrap().to_owned()
}
