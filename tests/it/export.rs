//! The export stage on its own, in process: what a re-run of one export job does.

use chrono::{NaiveDate, Utc};
use serde_json::Value;

use cedar::emulator::{ApiMethod, Fault};
use cedar::jobs::{JobError, export, job_for};
use cedar::submit::{self, Request};

use crate::support::{LC08, context_bench};

/// An export whose `image:export` failed after its scenes were listed is re-run with the scenes
/// recorded then — here one fewer than EE lists now, as if EE ingested a scene in between — and
/// never lists again: the GeoTIFF and its metadata JSON describe the same scenes.
#[tokio::test]
async fn a_rerun_export_exports_the_scenes_it_listed_first() {
    let bench = context_bench("export-frozen-scenes", String::new(), |_| {}).await;
    let ctx = &bench.ctx;
    let req = Request {
        collections: vec![LC08.into()],
        tiles: vec![(10, 14)],
        start: NaiveDate::from_ymd_opt(2021, 7, 1).unwrap(),
        end: NaiveDate::from_ymd_opt(2021, 10, 1).unwrap(),
        freq: None,
        save_empty_metadata: true,
        error_if_empty: false,
        priority: None,
        name: None,
        workload_tag: None,
    };
    let plan = submit::plan(&ctx.settings, &req, Utc::now()).unwrap();
    submit::enqueue(ctx, &plan).await.unwrap();
    let name = plan.submission.name.clone();
    let order = plan.submission.orders().next().unwrap();
    let job = job_for(&name, &order, None);

    bench.env.emulator.inject(Fault::NextRequests {
        method: Some(ApiMethod::ImageExport),
        count: 1,
        status: 503,
        message: None,
        processed: false,
    });
    let first = export::run(ctx, &job).await;
    assert!(matches!(first, Err(JobError::Retry(_))), "{first:?}");

    let base = ctx
        .submission(&name)
        .await
        .unwrap()
        .export_base(&order, 1)
        .unwrap();
    let object = format!("{base}.json");
    let read = || async {
        serde_json::from_slice::<Value>(&ctx.bucket.get(&object).await.unwrap()).unwrap()
    };
    let mut doc = read().await;
    let listed = doc["scenes"].as_array().unwrap().clone();
    assert!(
        listed.len() > 1,
        "the tile-period has several scenes: {doc}"
    );
    // The first listing saw one scene fewer than EE has now.
    let kept = Value::Array(listed[..listed.len() - 1].to_vec());
    doc["scenes"] = kept.clone();
    ctx.bucket
        .put(&object, serde_json::to_vec(&doc).unwrap().into())
        .await
        .unwrap();

    export::run(ctx, &job).await.unwrap();
    let stats = bench.env.emulator.stats();
    assert_eq!(
        stats.requests.get("value.compute"),
        Some(&1),
        "listed once: {stats:?}"
    );
    let doc = read().await;
    assert_eq!(doc["scenes"], kept);
    let exported: usize = doc["image"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|slice| slice.as_array().unwrap().len())
        .sum();
    assert_eq!(exported, listed.len() - 1, "{doc}");
}
