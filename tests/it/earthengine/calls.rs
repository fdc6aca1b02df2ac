//! Every EE call of the client against the EE emulator (`cedar::emulator`) on loopback.

use std::sync::Arc;
use std::time::Duration;

use cedar::auth::NoAuth;
use cedar::collection::{self, CollectionSpec};
use cedar::earthengine::ConcurrencySource;
use cedar::earthengine::types::OperationState;
use cedar::earthengine::{
    EarthEngine, EeError, ExportImageRequest, ExportParams, ImageInfo, Operation, export_request,
    list_images, parse_image_list, preard_image, request_id,
};
use cedar::emulator::{ApiMethod, EmulatorOptions, Fault, RunningEmulator};
use cedar::grid::{Crs, Limits, Tile, TileGrid};
use cedar::period::Period;
use chrono::NaiveDate;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

use crate::support::start_emulator;

/// One emulator with its own bucket directory and a client of it.
pub(super) struct Setup {
    pub emulator: RunningEmulator,
    pub ee: EarthEngine,
    pub store: Arc<LocalFileSystem>,
    _dir: tempfile::TempDir,
}

pub(super) async fn setup(options: EmulatorOptions) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let emulator = start_emulator(dir.path(), options).await;
    let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let ee = EarthEngine::new(
        &emulator.url(),
        "cedar-test",
        Arc::new(NoAuth),
        Duration::from_secs(10),
    )
    .unwrap();
    Setup {
        emulator,
        ee,
        store,
        _dir: dir,
    }
}

fn fast() -> EmulatorOptions {
    EmulatorOptions {
        task_seconds: 0.2,
        ..EmulatorOptions::default()
    }
}

/// Tasks that outlast the test: they stay PENDING or RUNNING.
fn slow() -> EmulatorOptions {
    EmulatorOptions {
        task_seconds: 600.0,
        ..EmulatorOptions::default()
    }
}

/// A small grid (512 × 512 px of 30 m) in an EPSG code, so exports are quick.
fn grid() -> TileGrid {
    TileGrid {
        name: "test".into(),
        crs: Crs::Code("EPSG:5070".into()),
        ul: [-1_065_585.0, 2_864_805.0],
        res: [30.0, 30.0],
        size: [512, 512],
        limits: Limits {
            rows: (0, 20),
            cols: (0, 20),
        },
    }
}

fn spring_2021() -> Period {
    Period {
        start: NaiveDate::from_ymd_opt(2021, 4, 1).unwrap(),
        end: NaiveDate::from_ymd_opt(2021, 6, 1).unwrap(),
    }
}

/// The first tile of the grid whose listing has scenes (the emulator has some ocean).
pub(super) async fn tile_with_images(
    ee: &EarthEngine,
    spec: &CollectionSpec,
) -> (Tile, Vec<ImageInfo>) {
    for (row, col) in grid().limits.indices() {
        let tile = grid().tile(row, col).unwrap();
        let result = ee
            .compute_value(&list_images(spec, &tile, &spring_2021()), None)
            .await
            .unwrap();
        let images = parse_image_list(spec, &result).unwrap();
        if !images.is_empty() {
            return (tile, images);
        }
    }
    panic!("no tile of the test grid has images");
}

fn params(name: &str) -> ExportParams {
    ExportParams {
        priority: None,
        bucket: "cedar-exports".into(),
        filename_prefix: format!("pre-ard/{name}"),
        description: name.into(),
        request_id: request_id(&["calls", name]),
        file_dimensions: Some(256),
        cloud_optimized: true,
        // Landsat Collection 2's fill value, as the presets' nodata.
        nodata: Some(0.0),
        max_pixels: Some(1_000_000_000),
        workload_tag: None,
    }
}

pub(super) async fn export(ee: &EarthEngine, name: &str) -> (ExportImageRequest, Operation) {
    let spec = collection::preset("LANDSAT/LC08/C02/T1_L2").unwrap();
    let (tile, images) = tile_with_images(ee, &spec).await;
    let (expression, _) = preard_image(&spec, &images);
    let request = export_request(&tile, expression, &params(name));
    let op = ee.export_image(&request).await.unwrap();
    (request, op)
}

async fn wait_done(ee: &EarthEngine, name: &str) -> Operation {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let op = ee.get_operation(name).await.unwrap();
        if op.is_done() {
            return op;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} not done in 30 s: {op:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn listing_exporting_and_polling_through_to_succeeded() {
    let s = setup(fast()).await;
    let spec = collection::preset("LANDSAT/LC08/C02/T1_L2").unwrap();
    let (tile, images) = tile_with_images(&s.ee, &spec).await;
    for pair in images.windows(2) {
        assert!(
            pair[0].time_start_ms <= pair[1].time_start_ms,
            "sorted by time"
        );
    }
    for image in &images {
        assert!(
            image.id.starts_with("LANDSAT/LC08/C02/T1_L2/"),
            "{}",
            image.id
        );
        assert!(
            image.properties.keys().all(|k| spec.properties.contains(k)),
            "{:?}",
            image.properties
        );
        assert!(image.properties.contains_key("CLOUD_COVER"));
        let date = image.date();
        assert!(
            date >= spring_2021().start && date < spring_2021().end,
            "{date}"
        );
    }

    let (expression, layout) = preard_image(&spec, &images);
    assert!(layout.band_count() > 0);
    let request = export_request(&tile, expression, &params("succeeds"));
    let op = s.ee.export_image(&request).await.unwrap();
    let name = op.name.clone().unwrap();
    assert!(
        name.starts_with("projects/cedar-test/operations/"),
        "{name}"
    );
    assert!(!op.is_done());
    assert_eq!(
        op.metadata.as_ref().unwrap().description.as_deref(),
        Some("succeeds")
    );

    let done = wait_done(&s.ee, op.id().unwrap()).await;
    assert_eq!(done.state(), OperationState::Succeeded, "{done:?}");
    assert!(done.error.is_none());
    let meta = done.metadata.unwrap();
    assert!(meta.start_time().unwrap() <= meta.end_time().unwrap());
    assert!(meta.create_time().is_some() && meta.update_time().is_some());
    assert_eq!(meta.kind.as_deref(), Some("EXPORT_IMAGE"));

    // 512 × 512 split into 256-pixel files: four pieces, named as EE names them.
    let mut objects: Vec<String> = s
        .store
        .list(Some(&"pre-ard".into()))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    objects.sort();
    let piece = |y: u32, x: u32| format!("pre-ard/succeeds-{y:010}-{x:010}.tif");
    assert_eq!(
        objects,
        [piece(0, 0), piece(0, 256), piece(256, 0), piece(256, 256)]
    );
    assert_eq!(
        s.emulator.stats().succeeded_by_description.get("succeeds"),
        Some(&1)
    );
}

#[tokio::test]
async fn the_same_request_id_starts_one_operation() {
    let s = setup(fast()).await;
    let (request, first) = export(&s.ee, "twice").await;
    let second = s.ee.export_image(&request).await.unwrap();
    assert_eq!(first.name, second.name);
    let stats = s.emulator.stats();
    assert_eq!(stats.exports_by_description.get("twice"), Some(&1));
    assert_eq!(stats.requests.get("image.export"), Some(&2));

    // A lost answer (the request took effect) and a retry: still one operation.
    let mut again = request.clone();
    again.request_id = Some(request_id(&["calls", "twice-2"]));
    s.emulator.inject(Fault::NextRequests {
        method: Some(ApiMethod::ImageExport),
        count: 1,
        status: 503,
        message: None,
        processed: true,
    });
    let e = s.ee.export_image(&again).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let retried = s.ee.export_image(&again).await.unwrap();
    assert_ne!(retried.name, first.name);
    assert_eq!(
        s.emulator.stats().exports_by_description.get("twice"),
        Some(&2)
    );
    assert_eq!(s.ee.list_all_operations().await.unwrap().len(), 2);
}

#[tokio::test]
async fn listing_follows_page_tokens() {
    let s = setup(slow()).await;
    let spec = collection::preset("LANDSAT/LC08/C02/T1_L2").unwrap();
    let (tile, images) = tile_with_images(&s.ee, &spec).await;
    let (expression, _) = preard_image(&spec, &images);
    let mut names = Vec::new();
    for i in 0..5 {
        let op =
            s.ee.export_image(&export_request(
                &tile,
                expression.clone(),
                &params(&format!("page-{i}")),
            ))
            .await
            .unwrap();
        names.push(op.name.unwrap());
    }
    let mut paged = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page =
            s.ee.list_operations(Some(2), token.as_deref())
                .await
                .unwrap();
        pages += 1;
        let ops = page.operations.unwrap_or_default();
        assert!(ops.len() <= 2);
        paged.extend(ops.into_iter().map(|o| o.name.unwrap()));
        match page.next_page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    let all: Vec<String> =
        s.ee.list_all_operations()
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.name.unwrap())
            .collect();
    for list in [&mut paged, &mut names] {
        list.sort();
    }
    let mut all_sorted = all.clone();
    all_sorted.sort();
    assert_eq!(paged, names);
    assert_eq!(all_sorted, names);
}

#[tokio::test]
async fn cancel_ends_cancelled_with_code_1() {
    let s = setup(slow()).await;
    let (_, op) = export(&s.ee, "cancel-me").await;
    let name = op.name.unwrap();
    s.ee.cancel_operation(&name).await.unwrap();
    let state = s.ee.get_operation(&name).await.unwrap().state();
    assert!(
        matches!(
            state,
            OperationState::Cancelling | OperationState::Cancelled
        ),
        "{state:?}"
    );
    let done = wait_done(&s.ee, &name).await;
    assert_eq!(done.state(), OperationState::Cancelled);
    assert_eq!(done.error.unwrap().code, Some(1));
}

#[tokio::test]
async fn project_config_reports_export_limits() {
    let s = setup(EmulatorOptions {
        max_concurrent_exports: 7,
        ..fast()
    })
    .await;
    let config = s.ee.get_project_config().await.unwrap();
    assert_eq!(config.name.as_deref(), Some("projects/cedar-test/config"));
    assert_eq!(config.max_concurrent_exports, Some(7));
    assert_eq!(config.plan_max_concurrent_exports, Some(7));
    // v1alpha, where Google's CLI reads it, answers the same.
    let alpha = s.ee.get_project_config_v1alpha().await.unwrap();
    assert_eq!(alpha.max_concurrent_exports, Some(7));
    let got = s.ee.export_concurrency().await;
    assert_eq!((got.max, got.source), (7, ConcurrencySource::V1alpha));

    // An emulator without v1alpha: the v1 config answers.
    let s = setup(EmulatorOptions {
        max_concurrent_exports: 5,
        serve_v1alpha: false,
        ..fast()
    })
    .await;
    let e = s.ee.get_project_config_v1alpha().await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let got = s.ee.export_concurrency().await;
    assert_eq!((got.max, got.source), (5, ConcurrencySource::V1));
    assert_eq!(got.problems.len(), 1, "{got:?}");
}

#[tokio::test]
async fn google_error_bodies_are_classified() {
    let s = setup(fast()).await;
    for (status, ee_status, retryable) in [
        (429, "RESOURCE_EXHAUSTED", true),
        (503, "UNAVAILABLE", true),
        (500, "INTERNAL", true),
    ] {
        s.emulator.inject(Fault::NextRequests {
            method: None,
            count: 1,
            status,
            message: None,
            processed: false,
        });
        let e = s.ee.get_project_config().await.unwrap_err();
        assert_eq!(
            (e.http_status(), e.ee_status(), e.is_retryable()),
            (Some(status), Some(ee_status), retryable),
            "{e}"
        );
    }

    // 400: an algorithm EE does not have.
    let mut bad = list_images(
        &collection::preset("LANDSAT/LC08/C02/T1_L2").unwrap(),
        &grid().tile(0, 0).unwrap(),
        &spring_2021(),
    );
    let root = bad.values.get_mut("0").unwrap();
    if let cedar::earthengine::types::ValueNode::FunctionInvocationValue(f) = root {
        f.function_name = Some("Collection.filterr".into());
    }
    let e = s.ee.compute_value(&bad, None).await.unwrap_err();
    assert_eq!(
        (e.http_status(), e.ee_status()),
        (Some(400), Some("INVALID_ARGUMENT")),
        "{e}"
    );
    assert!(!e.is_retryable() && !e.is_queue_full());

    // 404: an operation that does not exist.
    let e = s.ee.get_operation("NOSUCHOPERATION234").await.unwrap_err();
    assert!(e.is_not_found() && !e.is_retryable(), "{e}");
    assert_eq!(e.ee_status(), Some("NOT_FOUND"));
    let e =
        s.ee.cancel_operation("NOSUCHOPERATION234")
            .await
            .unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test]
async fn a_full_queue_is_back_pressure() {
    let s = setup(EmulatorOptions {
        queue_limit: 1,
        ..slow()
    })
    .await;
    export(&s.ee, "fills-the-queue").await;
    let spec = collection::preset("LANDSAT/LC08/C02/T1_L2").unwrap();
    let (tile, images) = tile_with_images(&s.ee, &spec).await;
    let request = export_request(
        &tile,
        preard_image(&spec, &images).0,
        &params("one-too-many"),
    );
    let e = s.ee.export_image(&request).await.unwrap_err();
    assert!(e.is_queue_full() && e.is_retryable(), "{e}");
    assert!(matches!(e, EeError::Api { .. }));
}

#[tokio::test]
async fn value_compute_has_a_longer_timeout_than_the_other_calls() {
    let s = setup(fast()).await;
    // 1 s for every call, 10 s for value:compute; the emulator holds answers for 2.5 s.
    let ee = EarthEngine::new(
        &s.emulator.url(),
        "cedar-test",
        Arc::new(NoAuth),
        Duration::from_secs(1),
    )
    .unwrap()
    .with_compute_timeout(Duration::from_secs(10));
    let spec = collection::preset("LANDSAT/LC08/C02/T1_L2").unwrap();
    let tile = grid().tile(10, 10).unwrap();
    let slow = |method| Fault::DelayNextRequests {
        method: Some(method),
        count: 1,
        millis: 2500,
    };
    s.emulator.inject(slow(ApiMethod::ValueCompute));
    ee.compute_value(&list_images(&spec, &tile, &spring_2021()), None)
        .await
        .expect("value:compute waits for its own, longer timeout");
    s.emulator.inject(slow(ApiMethod::OperationsList));
    let e = ee.list_operations(None, None).await.unwrap_err();
    assert!(matches!(e, EeError::Timeout { .. }), "{e}");
    assert!(e.is_retryable());
    // Without its own timeout, value:compute has the client's.
    let short = EarthEngine::new(
        &s.emulator.url(),
        "cedar-test",
        Arc::new(NoAuth),
        Duration::from_secs(1),
    )
    .unwrap();
    s.emulator.inject(slow(ApiMethod::ValueCompute));
    let e = short
        .compute_value(&list_images(&spec, &tile, &spring_2021()), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            EeError::Timeout {
                call: "value:compute",
                ..
            }
        ),
        "{e}"
    );
}
