//! The client against small axum servers that give one exact answer Google may give and the
//! emulator does not: the lookup of an export by description, the project config's versions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Query;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use cedar::auth::NoAuth;
use cedar::earthengine::{ConcurrencySource, EarthEngine};
use serde_json::{Value, json};

/// Serves `answer(path and query)` on a loopback port; returns a client of project `my-project`
/// there and the paths it was asked, in order.
async fn stub(
    answer: impl Fn(&str, &HashMap<String, String>) -> (StatusCode, Value) + Send + Sync + 'static,
) -> (EarthEngine, Arc<Mutex<Vec<String>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(answer);
    let log = asked.clone();
    let app = axum::Router::new().fallback(
        move |uri: Uri, Query(query): Query<HashMap<String, String>>| {
            let (log, answer) = (log.clone(), answer.clone());
            async move {
                log.lock().unwrap().push(uri.path().to_owned());
                let (status, body) = answer(uri.path(), &query);
                (status, axum::Json(body)).into_response()
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let ee = EarthEngine::new(
        &format!("http://{addr}"),
        "my-project",
        Arc::new(NoAuth),
        Duration::from_secs(5),
    )
    .unwrap();
    (ee, asked)
}

fn op(id: &str, description: &str, folder: Option<&str>, state: &str) -> Value {
    let mut metadata = json!({"state": state, "description": description, "type": "EXPORT_IMAGE"});
    if let Some(folder) = folder {
        metadata["destinationUris"] = json!([format!(
            "https://console.developers.google.com/storage/browser/{folder}"
        )]);
    }
    json!({"name": format!("projects/123456789/operations/{id}"), "metadata": metadata})
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"error": {"code": 404, "message": "Method not found.", "status": "NOT_FOUND"}}),
    )
}

#[tokio::test]
async fn an_existing_export_is_found_by_description_and_folder_across_pages() {
    let (ee, asked) = stub(|path, query| {
        if path != "/v1/projects/my-project/operations" {
            return not_found();
        }
        match query.get("pageToken").map(String::as_str) {
            None => (
                StatusCode::OK,
                json!({"operations": [
                    op("OTHER", "LC08_h1v2_2021", None, "RUNNING"),
                    // The same item of another generation: its own folder.
                    op("GEN1", "LC08_h010v003_2021", Some("b/pre-ard/r1-g1/"), "FAILED"),
                ], "nextPageToken": "p2"}),
            ),
            Some("p2") => (
                StatusCode::OK,
                json!({"operations": [
                    op("GEN2", "LC08_h010v003_2021", Some("b/pre-ard/r1-g2/"), "RUNNING"),
                    op("OLDER", "LC08_h010v003_2021", Some("b/pre-ard/r1-g2/"), "FAILED"),
                ]}),
            ),
            Some(_) => not_found(),
        }
    })
    .await;
    let found = ee
        .find_export(
            "LC08_h010v003_2021",
            "b",
            "pre-ard/r1-g2/LC08_h010v003_2021",
        )
        .await
        .unwrap()
        .expect("the task is listed");
    assert_eq!(found.id(), Some("GEN2"));
    assert_eq!(asked.lock().unwrap().len(), 2, "stops at the page it is on");

    // No task names the folder: the newest of the description.
    let found = ee
        .find_export(
            "LC08_h010v003_2021",
            "b",
            "pre-ard/r9-g1/LC08_h010v003_2021",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id(), Some("GEN1"));
    // None described so.
    assert!(
        ee.find_export("nothing", "b", "pre-ard/x")
            .await
            .unwrap()
            .is_none()
    );
}

fn config(max: Option<u64>) -> (StatusCode, Value) {
    let mut body = json!({"name": "projects/my-project/config"});
    if let Some(max) = max {
        // int32 in the proto: a JSON number; the client also reads a string.
        body["maxConcurrentExports"] = json!(max);
    }
    (StatusCode::OK, body)
}

/// (what, v1alpha answer, v1 answer, max, source, calls made): an answer `None` is a 404,
/// `Some(None)` a config without the field.
type Case = (
    &'static str,
    Option<Option<u64>>,
    Option<Option<u64>>,
    u64,
    ConcurrencySource,
    usize,
);

/// v1alpha first, then v1, then the default; `asked` shows each call made.
#[tokio::test]
async fn export_concurrency_falls_back_from_v1alpha_to_v1_to_the_default() {
    const V1ALPHA: &str = "/v1alpha/projects/my-project/config";
    const V1: &str = "/v1/projects/my-project/config";
    let cases: Vec<Case> = vec![
        (
            "v1alpha says",
            Some(Some(20)),
            Some(Some(4)),
            20,
            ConcurrencySource::V1alpha,
            1,
        ),
        (
            "no v1alpha",
            None,
            Some(Some(4)),
            4,
            ConcurrencySource::V1,
            2,
        ),
        (
            "v1alpha without the field",
            Some(None),
            Some(Some(4)),
            4,
            ConcurrencySource::V1,
            2,
        ),
        (
            "neither has the field",
            Some(None),
            Some(None),
            2,
            ConcurrencySource::Default,
            2,
        ),
        (
            "neither answers",
            None,
            None,
            2,
            ConcurrencySource::Default,
            2,
        ),
    ];
    for (what, alpha, v1, max, source, calls) in cases {
        let (ee, asked) = stub(move |path, _| {
            let answer = match path {
                V1ALPHA => alpha,
                V1 => v1,
                _ => None,
            };
            answer.map_or_else(not_found, config)
        })
        .await;
        let got = ee.export_concurrency().await;
        assert_eq!((got.max, got.source), (max, source), "{what}: {got:?}");
        assert_eq!(asked.lock().unwrap().len(), calls, "{what}");
        assert_eq!(asked.lock().unwrap()[0], V1ALPHA, "{what}: v1alpha first");
        // Every source passed over says why.
        assert_eq!(
            got.problems.len(),
            calls - 1 + usize::from(source == ConcurrencySource::Default),
            "{what}: {got:?}"
        );
    }
}
