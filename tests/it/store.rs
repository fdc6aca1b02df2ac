//! The export bucket and the destination against real storage: a gcp-storage-emulator process on
//! loopback (one per test, own port, own bucket) and local directories (`file://` URLs and plain
//! paths, one temporary directory per test). Every bucket behaviour runs against each backend.
//!
//! The tests seed and inspect objects with their own raw requests and file reads, never through
//! cedar's client, so that a client that misreads the JSON API disagrees with them.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use cedar::auth::{AuthError, NoAuth, TokenSource};
use cedar::store::{
    Destination, Expected, ExportBucket, GcsJsonBucket, ObjectInfo, StoreError, open_bucket,
};
use futures::{Stream, StreamExt, TryStreamExt, stream};
use md5::{Digest, Md5};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use tempfile::TempDir;

use crate::support::{GcsEmulator, free_port};

/// Objects live under this prefix of every bucket URL, so the root handling is always exercised.
const ROOT: &str = "campaign";

// ---------------------------------------------------------------------------------------------
// Test data

/// Deterministic pseudo-random bytes (xorshift64), different for each seed.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn md5_of(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

fn expected_for(data: &[u8]) -> Expected {
    Expected {
        size: data.len() as u64,
        md5: Some(md5_of(data)),
        crc32c: Some(crc32c::crc32c(data)),
    }
}

/// `data` as a stream of `chunk`-byte pieces, the way a download arrives.
fn chunked(
    data: &[u8],
    chunk: usize,
) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + use<> {
    let pieces: Vec<_> = data
        .chunks(chunk)
        .map(|piece| Ok(Bytes::copy_from_slice(piece)))
        .collect();
    stream::iter(pieces)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, written here rather than
/// borrowed from the client so that the two can disagree.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// gcp-storage-emulator

// ---------------------------------------------------------------------------------------------
// Raw access to the backing storage, independent of cedar's clients

enum Raw {
    Gcs(GcsApi),
    Dir(PathBuf),
}

/// The emulator's JSON API for its bucket.
struct GcsApi {
    http: reqwest::Client,
    endpoint: String,
    bucket: String,
}

impl Raw {
    /// Raw access to the emulator's bucket.
    fn gcs(emulator: &GcsEmulator) -> Raw {
        Raw::Gcs(GcsApi {
            http: reqwest::Client::new(),
            endpoint: emulator.endpoint.clone(),
            bucket: emulator.bucket.clone(),
        })
    }

    /// Stores `data` as `name` (a full object name, including any root).
    async fn seed(&self, name: &str, data: &[u8]) {
        match self {
            Raw::Gcs(api) => {
                let response = api
                    .http
                    .post(format!(
                        "{}/upload/storage/v1/b/{}/o",
                        api.endpoint, api.bucket
                    ))
                    .query(&[("uploadType", "media"), ("name", name)])
                    .body(data.to_vec())
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success(), "seed {name}: {response:?}");
            }
            Raw::Dir(root) => {
                let path = root.join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, data).unwrap();
            }
        }
    }

    /// The content of `name` (a full object name), or `None` if it does not exist.
    async fn read(&self, name: &str) -> Option<Vec<u8>> {
        match self {
            Raw::Gcs(api) => {
                let url = format!(
                    "{}/storage/v1/b/{}/o/{}",
                    api.endpoint,
                    api.bucket,
                    encode(name)
                );
                let response = api
                    .http
                    .get(url)
                    .query(&[("alt", "media")])
                    .send()
                    .await
                    .unwrap();
                match response.status() {
                    StatusCode::NOT_FOUND => None,
                    status if status.is_success() => Some(response.bytes().await.unwrap().into()),
                    status => panic!("raw read {name}: {status}"),
                }
            }
            Raw::Dir(root) => std::fs::read(root.join(name)).ok(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bucket fixtures

#[derive(Debug, Clone, Copy)]
enum Backend {
    Emulator,
    FileUrl,
    PlainPath,
}

/// One isolated bucket: its client, raw access, and whatever must live as long as the test.
struct BucketFixture {
    bucket: Arc<dyn ExportBucket>,
    raw: Raw,
    /// Whether the backend reports checksums (GCS does; `object_store` stores do not).
    reports_checksums: bool,
    _emulator: Option<GcsEmulator>,
    _dir: Option<TempDir>,
}

impl BucketFixture {
    async fn new(backend: Backend, test: &str) -> BucketFixture {
        match backend {
            Backend::Emulator => {
                // Bucket names may hold '-' but not '_'; a '-' also checks the URL encoding.
                let emulator =
                    GcsEmulator::start(&format!("cedar-{}", test.replace('_', "-"))).await;
                let bucket = open_bucket(
                    &format!("gs://{}/{ROOT}", emulator.bucket),
                    Some(&emulator.endpoint),
                    Arc::new(NoAuth),
                )
                .unwrap();
                BucketFixture {
                    bucket,
                    raw: Raw::gcs(&emulator),
                    reports_checksums: true,
                    _emulator: Some(emulator),
                    _dir: None,
                }
            }
            Backend::FileUrl | Backend::PlainPath => {
                let dir = TempDir::new().unwrap();
                let root = dir.path().join(ROOT);
                let url = match backend {
                    Backend::FileUrl => format!("file://{}", root.display()),
                    _ => root.display().to_string(),
                };
                BucketFixture {
                    bucket: open_bucket(&url, None, Arc::new(NoAuth)).unwrap(),
                    raw: Raw::Dir(dir.path().to_path_buf()),
                    reports_checksums: false,
                    _emulator: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    async fn seed(&self, name: &str, data: &[u8]) {
        self.raw.seed(&format!("{ROOT}/{name}"), data).await;
    }

    async fn read_raw(&self, name: &str) -> Option<Vec<u8>> {
        self.raw.read(&format!("{ROOT}/{name}")).await
    }
}

async fn collect(stream: impl Stream<Item = Result<Bytes, StoreError>>) -> Vec<u8> {
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    chunks.concat()
}

// ---------------------------------------------------------------------------------------------
// Bucket behaviours, each run against every backend

async fn lists_every_object_under_a_prefix_with_checksums(backend: Backend) {
    let fx = BucketFixture::new(backend, "list").await;
    let mut seeded = HashMap::new();
    for i in 0..25u64 {
        let name = format!("t01/img_{i:02}.tif");
        let data = content(i, 1000 + 37 * i as usize);
        fx.seed(&name, &data).await;
        seeded.insert(name, data);
    }
    // A string prefix, not a directory: "t01/" must not match "t010/".
    fx.seed("t010/img_00.tif", b"other tile").await;
    // Outside the bucket URL's prefix: never listed.
    fx.raw.seed("elsewhere/t01/img_99.tif", b"outside").await;

    let listed = fx.bucket.list("t01/").await.unwrap();
    let names: Vec<&str> = listed.iter().map(|o| o.name.as_str()).collect();
    let mut want: Vec<&str> = seeded.keys().map(String::as_str).collect();
    want.sort();
    assert_eq!(names, want);
    for object in &listed {
        let data = &seeded[&object.name];
        assert_eq!(object.size, data.len() as u64, "{}", object.name);
        if fx.reports_checksums {
            assert_eq!(object.md5, Some(md5_of(data)), "{}", object.name);
            assert_eq!(object.crc32c, Some(crc32c::crc32c(data)), "{}", object.name);
            assert!(object.generation.is_some(), "{}", object.name);
        } else {
            assert_eq!((object.md5, object.crc32c), (None, None), "{}", object.name);
        }
    }
    assert_eq!(fx.bucket.list("t0").await.unwrap().len(), 26);
    assert!(fx.bucket.list("t02/").await.unwrap().is_empty());
}

async fn streams_objects_byte_identical(backend: Backend) {
    let fx = BucketFixture::new(backend, "stream").await;
    let data = content(7, 3 * 1024 * 1024 + 1);
    fx.seed("t01/big.tif", &data).await;
    let received = collect(fx.bucket.stream("t01/big.tif", 0, None).await.unwrap()).await;
    assert_eq!(received.len(), data.len());
    assert!(
        received == data,
        "streamed bytes differ from the seeded object"
    );
}

async fn put_and_get_round_trip(backend: Backend) {
    let fx = BucketFixture::new(backend, "put-get").await;
    let document = br#"{"tracking": "campaign-2020", "orders": []}"#;
    fx.bucket
        .put("tracking/campaign-2020.json", Bytes::from_static(document))
        .await
        .unwrap();
    assert_eq!(
        fx.read_raw("tracking/campaign-2020.json").await.as_deref(),
        Some(&document[..])
    );
    fx.seed("t01/meta.json", b"{\"a\": 1}").await;
    assert_eq!(
        &fx.bucket.get("t01/meta.json").await.unwrap()[..],
        b"{\"a\": 1}"
    );
    // put replaces.
    fx.bucket
        .put("t01/meta.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(
        fx.read_raw("t01/meta.json").await.as_deref(),
        Some(&b"{}"[..])
    );
}

async fn missing_objects_are_not_found(backend: Backend) {
    let fx = BucketFixture::new(backend, "missing").await;
    let error = fx.bucket.get("t01/nope.json").await.unwrap_err();
    assert!(error.is_not_found(), "{error:?}");
    assert!(!error.is_retryable());
    let error = fx
        .bucket
        .stream("t01/nope.tif", 0, None)
        .await
        .err()
        .unwrap();
    assert!(error.is_not_found(), "{error:?}");
}

async fn delete_is_idempotent(backend: Backend) {
    let fx = BucketFixture::new(backend, "delete").await;
    fx.seed("t01/a.tif", b"a").await;
    fx.seed("t01/b.tif", b"b").await;
    fx.bucket.delete("t01/a.tif").await.unwrap();
    assert_eq!(fx.read_raw("t01/a.tif").await, None);
    assert_eq!(fx.read_raw("t01/b.tif").await.as_deref(), Some(&b"b"[..]));
    // Deleting again, or deleting what never existed, is done already.
    fx.bucket.delete("t01/a.tif").await.unwrap();
    fx.bucket.delete("t01/never.tif").await.unwrap();
    let left: Vec<String> = fx
        .bucket
        .list("t01/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(left, ["t01/b.tif"]);
}

async fn names_with_special_characters_round_trip(backend: Backend) {
    let fx = BucketFixture::new(backend, "special").await;
    let name = "t01/a b+c=d&e%f,g@h.tif";
    fx.seed(name, b"special").await;
    let listed = fx.bucket.list("t01/").await.unwrap();
    assert_eq!(
        listed.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        [name]
    );
    assert_eq!(&fx.bucket.get(name).await.unwrap()[..], b"special");
    assert_eq!(
        collect(fx.bucket.stream(name, 0, None).await.unwrap()).await,
        b"special"
    );
    fx.bucket.delete(name).await.unwrap();
    assert_eq!(fx.read_raw(name).await, None);
}

/// The download path end to end: list, stream each object, write it verified.
async fn downloads_into_a_destination_verified(backend: Backend) {
    let fx = BucketFixture::new(backend, "download").await;
    let mut seeded = HashMap::new();
    for i in 0..3u64 {
        let name = format!("t01/piece-{i}.tif");
        let data = content(100 + i, 200_000 + i as usize);
        fx.seed(&name, &data).await;
        seeded.insert(name, data);
    }
    let out = TempDir::new().unwrap();
    let dest = Destination::open(&out.path().display().to_string()).unwrap();
    for object in fx.bucket.list("t01/").await.unwrap() {
        assert_eq!(dest.existing(&object.name).await.unwrap(), None);
        let stream = fx.bucket.stream(&object.name, 0, None).await.unwrap();
        let written = dest
            .write_verified(&object.name, stream, Expected::from(&object))
            .await
            .unwrap();
        let data = &seeded[&object.name];
        // MD5 is computed only when there is one to check (GCS lists it; object_store does not).
        assert_eq!(written.md5, object.md5.map(|_| md5_of(data)));
        assert_eq!(written.crc32c, crc32c::crc32c(data));
        assert!(std::fs::read(out.path().join(&object.name)).unwrap() == *data);
        assert_eq!(
            dest.existing(&object.name).await.unwrap(),
            Some(object.size)
        );
    }
}

/// Wrong checksums from the bucket (here: a listing for other content) must stop the write.
async fn a_download_that_disagrees_with_the_listing_is_refused(backend: Backend) {
    let fx = BucketFixture::new(backend, "disagree").await;
    let data = content(5, 50_000);
    fx.seed("t01/a.tif", &data).await;
    let listed = fx.bucket.list("t01/a.tif").await.unwrap();
    let object = ObjectInfo {
        md5: Some(md5_of(b"something else")),
        ..listed[0].clone()
    };
    let out = TempDir::new().unwrap();
    let dest = Destination::local(out.path());
    let stream = fx.bucket.stream("t01/a.tif", 0, None).await.unwrap();
    let error = dest
        .write_verified("t01/a.tif", stream, Expected::from(&object))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Mismatch { what: "md5", .. }),
        "{error:?}"
    );
    assert_eq!(files_under(out.path()), Vec::<String>::new());
}

/// One test module per backend, each with one test per behaviour: `mod m { async fn b() }` runs
/// `b(Kind::Variant)`. The behaviours come as one `[…]` token tree so that each module can
/// repeat all of them.
macro_rules! on_each_backend {
    ($behaviours:tt on $($module:ident => $kind:ident::$variant:ident),+ $(,)?) => {
        $(on_each_backend!(@module $module, $kind::$variant, $behaviours);)+
    };
    (@module $module:ident, $kind:ident::$variant:ident, [$($behaviour:ident),* $(,)?]) => {
        mod $module {
            $(#[tokio::test] async fn $behaviour() { super::$behaviour(super::$kind::$variant).await })*
        }
    };
}

on_each_backend!(
    [
        lists_every_object_under_a_prefix_with_checksums,
        streams_objects_byte_identical,
        put_and_get_round_trip,
        missing_objects_are_not_found,
        delete_is_idempotent,
        names_with_special_characters_round_trip,
        downloads_into_a_destination_verified,
        a_download_that_disagrees_with_the_listing_is_refused,
    ] on
    bucket_emulator => Backend::Emulator,
    bucket_file_url => Backend::FileUrl,
    bucket_plain_path => Backend::PlainPath,
);

// ---------------------------------------------------------------------------------------------
// GCS only: paging, auth and error classification, through a small proxy in front of the emulator

/// What the proxy saw and how it should answer.
#[derive(Default)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    /// Query strings of the list requests, in order.
    list_queries: Mutex<Vec<HashMap<String, String>>>,
    /// Authorization headers of every request, in order.
    authorizations: Mutex<Vec<Option<String>>>,
    /// When set, every request gets this status and body instead.
    fault: Mutex<Option<(StatusCode, String)>>,
}

/// Serves `objects.list` in pages (the emulator returns everything at once) from the
/// emulator's full listing, and answers with a configured fault when asked to.
async fn proxy_list(
    State(state): State<Arc<ProxyState>>,
    UrlPath(bucket): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let authorization = headers
        .get("authorization")
        .map(|value| value.to_str().unwrap().to_owned());
    state.authorizations.lock().unwrap().push(authorization);
    state.list_queries.lock().unwrap().push(query.clone());
    if let Some((status, body)) = state.fault.lock().unwrap().clone() {
        return (status, body).into_response();
    }
    let prefix = query.get("prefix").cloned().unwrap_or_default();
    let upstream: serde_json::Value = state
        .http
        .get(format!("{}/storage/v1/b/{bucket}/o", state.upstream))
        .query(&[("prefix", prefix)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = upstream["items"].as_array().cloned().unwrap_or_default();
    // Google's default page is 1000; a small default here makes paging happen even for a
    // client that sends no maxResults.
    let page: usize = query.get("maxResults").map_or(4, |n| n.parse().unwrap());
    let start: usize = query.get("pageToken").map_or(0, |token| {
        token
            .strip_prefix("after-")
            .expect("a token this proxy issued")
            .parse()
            .unwrap()
    });
    let end = (start + page).min(items.len());
    let mut body = serde_json::json!({"kind": "storage#objects", "items": items[start..end]});
    if end < items.len() {
        body["nextPageToken"] = format!("after-{end}").into();
    }
    axum::Json(body).into_response()
}

async fn start_proxy(upstream: &str) -> (String, Arc<ProxyState>) {
    let state = Arc::new(ProxyState {
        upstream: upstream.to_owned(),
        ..ProxyState::default()
    });
    let app = axum::Router::new()
        .route("/storage/v1/b/{bucket}/o", axum::routing::get(proxy_list))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (endpoint, state)
}

#[derive(Debug)]
struct SecretToken;

#[async_trait]
impl TokenSource for SecretToken {
    async fn bearer(&self) -> Result<Option<String>, AuthError> {
        Ok(Some("ya29.secret-token".to_owned()))
    }

    fn describe(&self) -> String {
        "a secret test token".to_owned()
    }

    fn fix(&self) -> String {
        "none".to_owned()
    }
}

#[tokio::test]
async fn gcs_listing_follows_every_page() {
    let emulator = GcsEmulator::start("cedar-paging").await;
    let raw = Raw::gcs(&emulator);
    for i in 0..11 {
        raw.seed(&format!("t01/img_{i:02}.tif"), &content(i, 10))
            .await;
    }
    let (endpoint, proxy) = start_proxy(&emulator.endpoint).await;

    let bucket = GcsJsonBucket::new(&endpoint, &emulator.bucket, "", Arc::new(NoAuth))
        .unwrap()
        .with_page_size(3);
    let listed = bucket.list("t01/").await.unwrap();
    let names: Vec<String> = listed.into_iter().map(|o| o.name).collect();
    let want: Vec<String> = (0..11).map(|i| format!("t01/img_{i:02}.tif")).collect();
    assert_eq!(names, want);
    let queries = proxy.list_queries.lock().unwrap().clone();
    let tokens: Vec<Option<&str>> = queries
        .iter()
        .map(|q| q.get("pageToken").map(String::as_str))
        .collect();
    assert_eq!(
        tokens,
        [None, Some("after-3"), Some("after-6"), Some("after-9")]
    );
    for query in &queries {
        assert_eq!(query.get("maxResults").map(String::as_str), Some("3"));
        assert_eq!(query.get("prefix").map(String::as_str), Some("t01/"));
    }

    // Without maxResults the server's page size applies, and every page is still followed.
    let default_pages = GcsJsonBucket::new(&endpoint, &emulator.bucket, "t01", Arc::new(NoAuth))
        .unwrap()
        .list("img_0")
        .await
        .unwrap();
    assert_eq!(default_pages.len(), 10);
    assert_eq!(default_pages[0].name, "img_00.tif");
}

#[tokio::test]
async fn gcs_sends_the_token_and_never_reports_it() {
    let emulator = GcsEmulator::start("cedar-auth").await;
    let (endpoint, proxy) = start_proxy(&emulator.endpoint).await;
    let bucket =
        GcsJsonBucket::new(&endpoint, &emulator.bucket, "", Arc::new(SecretToken)).unwrap();
    bucket.list("t01/").await.unwrap();
    assert_eq!(
        proxy.authorizations.lock().unwrap().as_slice(),
        [Some("Bearer ya29.secret-token".to_owned())]
    );

    *proxy.fault.lock().unwrap() = Some((
        StatusCode::FORBIDDEN,
        r#"{"error": {"code": 403, "message": "robot@p.iam.gserviceaccount.com does not have storage.objects.list access"}}"#.to_owned(),
    ));
    let error = bucket.list("t01/").await.unwrap_err();
    let message = format!("{error} {error:?}");
    assert!(!message.contains("secret-token"), "{message}");
    assert!(
        message.contains("does not have storage.objects.list access"),
        "{message}"
    );
    assert!(
        matches!(error, StoreError::Status { status: 403, .. }),
        "{error:?}"
    );
    assert!(!error.is_retryable());

    // NoAuth sends no Authorization header at all.
    *proxy.fault.lock().unwrap() = None;
    GcsJsonBucket::new(&endpoint, &emulator.bucket, "", Arc::new(NoAuth))
        .unwrap()
        .list("t01/")
        .await
        .unwrap();
    assert_eq!(proxy.authorizations.lock().unwrap().last(), Some(&None));
}

#[tokio::test]
async fn gcs_errors_are_classified_where_they_arise() {
    let emulator = GcsEmulator::start("cedar-errors").await;
    let (endpoint, proxy) = start_proxy(&emulator.endpoint).await;
    let bucket = GcsJsonBucket::new(&endpoint, &emulator.bucket, "", Arc::new(NoAuth)).unwrap();
    let cases = [
        (
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error": {"code": 429, "message": "rate limited"}}"#,
            true,
        ),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error": {"code": 503, "message": "Backend Error"}}"#,
            true,
        ),
        (StatusCode::BAD_GATEWAY, "<html>bad gateway</html>", true),
        (
            StatusCode::UNAUTHORIZED,
            r#"{"error": {"code": 401, "message": "Invalid Credentials"}}"#,
            false,
        ),
    ];
    for (status, body, retryable) in cases {
        *proxy.fault.lock().unwrap() = Some((status, body.to_owned()));
        let error = bucket.list("t01/").await.unwrap_err();
        assert!(
            matches!(&error, StoreError::Status { status: s, .. } if *s == status.as_u16()),
            "{error:?}"
        );
        assert_eq!(error.is_retryable(), retryable, "{error:?}");
    }
    // A 2xx that is not an objects.list page is a protocol error, not a silent empty listing.
    *proxy.fault.lock().unwrap() = Some((StatusCode::OK, "[]".to_owned()));
    let error = bucket.list("t01/").await.unwrap_err();
    assert!(matches!(error, StoreError::Protocol { .. }), "{error:?}");

    // The emulator itself: a bucket that does not exist is fatal.
    let missing =
        GcsJsonBucket::new(&emulator.endpoint, "no-such-bucket", "", Arc::new(NoAuth)).unwrap();
    let error = missing.list("").await.unwrap_err();
    assert!(
        matches!(error, StoreError::Status { status: 404, .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("gs://no-such-bucket/"),
        "{error}"
    );
    assert!(!error.is_retryable());

    // Nobody listening: retryable transport error.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let unreachable = GcsJsonBucket::new(&closed, "b", "", Arc::new(NoAuth)).unwrap();
    let error = unreachable.list("").await.unwrap_err();
    assert!(matches!(error, StoreError::Transport { .. }), "{error:?}");
    assert!(error.is_retryable());
}

// ---------------------------------------------------------------------------------------------
// Destination behaviours, each run against every destination kind

#[derive(Debug, Clone, Copy)]
enum DestKind {
    /// `file:///dir`: cedar's own temp file + fsync + rename.
    FileUrl,
    /// A plain directory path, same code path as `file://`.
    PlainPath,
    /// `object_store`'s LocalFileSystem: its staging file + rename.
    ObjectStoreLocal,
    /// `memory:///` through `object_store`.
    Memory,
}

struct DestFixture {
    dest: Destination,
    /// The directory holding the destination root (local kinds), to look for stray files,
    /// including any written outside the root.
    dir: Option<TempDir>,
    root: Option<PathBuf>,
    store: Option<Arc<dyn ObjectStore>>,
}

impl DestFixture {
    fn new(kind: DestKind) -> DestFixture {
        let dir = TempDir::new().unwrap();
        let root = dir.path().join("downloads");
        let (dest, store): (Destination, Option<Arc<dyn ObjectStore>>) = match kind {
            DestKind::FileUrl => (
                Destination::open(&format!("file://{}", root.display())).unwrap(),
                None,
            ),
            DestKind::PlainPath => (
                Destination::open(&root.display().to_string()).unwrap(),
                None,
            ),
            DestKind::ObjectStoreLocal => {
                std::fs::create_dir_all(&root).unwrap();
                let store: Arc<dyn ObjectStore> =
                    Arc::new(LocalFileSystem::new_with_prefix(&root).unwrap());
                (
                    Destination::object_store(store.clone(), Default::default()),
                    Some(store),
                )
            }
            DestKind::Memory => {
                let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
                (
                    Destination::object_store(store.clone(), "downloads".into()),
                    Some(store),
                )
            }
        };
        let local = !matches!(kind, DestKind::Memory);
        DestFixture {
            dest,
            root: local.then(|| root.clone()),
            dir: local.then_some(dir),
            store,
        }
    }

    /// Every object or file anywhere in the fixture, relative to its top, sorted.
    async fn all_files(&self) -> Vec<String> {
        match (&self.dir, &self.store) {
            (Some(dir), _) => files_under(dir.path()),
            (None, Some(store)) => {
                let mut names: Vec<String> = store
                    .list(None)
                    .map_ok(|meta| meta.location.to_string())
                    .try_collect()
                    .await
                    .unwrap();
                names.sort();
                names
            }
            (None, None) => unreachable!("every fixture has a directory or a store"),
        }
    }

    async fn read(&self, rel_path: &str) -> Option<Vec<u8>> {
        match (&self.root, &self.store) {
            (Some(root), _) => std::fs::read(root.join(rel_path)).ok(),
            (None, Some(store)) => {
                use object_store::ObjectStoreExt;
                let path = object_store::path::Path::from(format!("downloads/{rel_path}"));
                match store.get(&path).await {
                    Ok(result) => Some(result.bytes().await.unwrap().to_vec()),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => panic!("{e}"),
                }
            }
            (None, None) => unreachable!("every fixture has a directory or a store"),
        }
    }

    /// `rel_path` as [`Self::all_files`] shows it: every kind roots the destination at
    /// `downloads`.
    fn shown_as(&self, rel_path: &str) -> String {
        format!("downloads/{rel_path}")
    }
}

/// Every regular file under `dir`, relative to it, sorted.
fn files_under(dir: &FsPath) -> Vec<String> {
    fn walk(base: &FsPath, dir: &FsPath, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

async fn a_verified_write_lands_whole_and_is_skippable(kind: DestKind) {
    let fx = DestFixture::new(kind);
    let data = content(42, 2_500_000);
    let rel = "t01/2020/t01_2020_0000.tif";
    assert_eq!(fx.dest.existing(rel).await.unwrap(), None);
    let written = fx
        .dest
        .write_verified(rel, chunked(&data, 64 * 1024), expected_for(&data))
        .await
        .unwrap();
    assert_eq!(written.size, data.len() as u64);
    assert_eq!(written.md5, Some(md5_of(&data)));
    assert_eq!(written.crc32c, crc32c::crc32c(&data));
    assert!(fx.read(rel).await.unwrap() == data);
    assert_eq!(fx.all_files().await, [fx.shown_as(rel)]);
    assert_eq!(
        fx.dest.existing(rel).await.unwrap(),
        Some(data.len() as u64)
    );

    if matches!(kind, DestKind::FileUrl | DestKind::PlainPath) {
        let root = fx.root.as_ref().unwrap();
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(root.join(rel)), 0o644);
        assert_eq!(mode(root.join("t01")), 0o755);
        assert_eq!(mode(root.join("t01/2020")), 0o755);
    }

    // Writing the same file again (a re-run without the skip) replaces it whole.
    let newer = content(43, 1000);
    fx.dest
        .write_verified(rel, chunked(&newer, 100), expected_for(&newer))
        .await
        .unwrap();
    assert_eq!(fx.read(rel).await.unwrap(), newer);
    assert_eq!(fx.all_files().await, [fx.shown_as(rel)]);
}

async fn a_bad_stream_leaves_nothing_behind(kind: DestKind) {
    let fx = DestFixture::new(kind);
    let data = content(9, 300_000);
    let rel = "t01/a.tif";
    let mut corrupted = data.clone();
    corrupted[150_000] ^= 0x01;
    let broken: Vec<Result<Bytes, StoreError>> = vec![
        Ok(Bytes::copy_from_slice(&data[..100_000])),
        Err(StoreError::Io {
            path: "network".to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        }),
    ];
    let cases: Vec<(&str, std::pin::Pin<Box<dyn Stream<Item = _> + Send>>)> = vec![
        ("corrupted byte", Box::pin(chunked(&corrupted, 8192))),
        ("short", Box::pin(chunked(&data[..data.len() - 1], 8192))),
        ("long", Box::pin(chunked(&[&data[..], b"x"].concat(), 8192))),
        ("empty", Box::pin(chunked(&[], 8192))),
        ("cut off", Box::pin(stream::iter(broken))),
    ];
    for (case, stream) in cases {
        let error = fx
            .dest
            .write_verified(rel, stream, expected_for(&data))
            .await
            .unwrap_err();
        match case {
            "cut off" => assert!(
                matches!(&error, StoreError::Io { path, .. } if path == "network"),
                "{case}: {error:?}"
            ),
            _ => assert!(
                matches!(error, StoreError::Mismatch { .. }),
                "{case}: {error:?}"
            ),
        }
        assert_eq!(fx.all_files().await, Vec::<String>::new(), "{case}");
        assert_eq!(fx.dest.existing(rel).await.unwrap(), None, "{case}");
    }

    // A failed rewrite keeps the previous, verified file.
    fx.dest
        .write_verified(rel, chunked(&data, 8192), expected_for(&data))
        .await
        .unwrap();
    fx.dest
        .write_verified(rel, chunked(&corrupted, 8192), expected_for(&data))
        .await
        .unwrap_err();
    assert!(fx.read(rel).await.unwrap() == data);
    assert_eq!(fx.all_files().await, [fx.shown_as(rel)]);
}

async fn unsafe_paths_are_refused_and_nothing_is_written(kind: DestKind) {
    let fx = DestFixture::new(kind);
    let refused = [
        "../escape.tif",
        "t01/../../escape.tif",
        "t01/..",
        "..",
        "/tmp/escape.tif",
        "t01\\..\\escape.tif",
        "t01/a\0.tif",
        "t01//a.tif",
        "t01/./a.tif",
        "t01/",
        "",
    ];
    for rel in refused {
        let data = b"must not be written";
        let error = fx
            .dest
            .write_verified(rel, chunked(data, 4), expected_for(data))
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::UnsafeName { ref name } if name == rel),
            "{rel:?}: {error:?}"
        );
        assert!(!error.is_retryable());
        let error = fx.dest.existing(rel).await.unwrap_err();
        assert!(
            matches!(error, StoreError::UnsafeName { .. }),
            "{rel:?}: {error:?}"
        );
    }
    assert_eq!(fx.all_files().await, Vec::<String>::new());
    assert!(!FsPath::new("/tmp/escape.tif").exists());
}

/// A write abandoned mid-stream (shutdown, a timeout around the job) leaves no file behind.
async fn an_abandoned_write_leaves_nothing_behind(kind: DestKind) {
    let fx = DestFixture::new(kind);
    let data = content(11, 100_000);
    let first = Bytes::copy_from_slice(&data[..50_000]);
    // One chunk, then a connection that never delivers the rest.
    let stalled = stream::once(async move { Ok(first) }).chain(stream::pending());
    let write = fx
        .dest
        .write_verified("t01/a.tif", stalled, expected_for(&data));
    let outcome = tokio::time::timeout(Duration::from_millis(300), write).await;
    assert!(outcome.is_err(), "the write cannot finish: {outcome:?}");
    // object_store's LocalFileSystem removes its staging file on a blocking thread.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fx.all_files().await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fx.all_files().await, Vec::<String>::new());
    assert_eq!(fx.dest.existing("t01/a.tif").await.unwrap(), None);
}

on_each_backend!(
    [
        a_verified_write_lands_whole_and_is_skippable,
        a_bad_stream_leaves_nothing_behind,
        unsafe_paths_are_refused_and_nothing_is_written,
        an_abandoned_write_leaves_nothing_behind,
    ] on
    dest_file_url => DestKind::FileUrl,
    dest_plain_path => DestKind::PlainPath,
    dest_object_store_local => DestKind::ObjectStoreLocal,
    dest_memory => DestKind::Memory,
);
