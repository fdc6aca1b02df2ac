//! A minimal Cloud Storage **JSON API** over the object store exports are written into, so that
//! cedar's own GCS client (`gs://` URLs) can run against the emulator, and so that a download
//! can be cut mid-stream on demand ([`super::Fault::TruncateNextDownload`]).
//!
//! Served, as Google documents them (<https://cloud.google.com/storage/docs/json_api/v1/objects>):
//!
//! - `GET /storage/v1/b/{bucket}/o?prefix=&maxResults=&pageToken=`: `objects.list`, a plain
//!   string prefix (not a directory), name order, `nextPageToken` while more remain; `size` and
//!   `generation` as strings, `md5Hash` and `crc32c` (big-endian) as base64.
//! - `GET /storage/v1/b/{bucket}/o/{object}`: the object resource, or with `alt=media` its bytes
//!   (`x-goog-hash` and `x-goog-generation` headers as Google sends them), all of them or the
//!   `Range: bytes=N-[M]` asked for (206 with `Content-Range`); `ifGenerationMatch` answers 412
//!   when the object is of another generation.
//! - `DELETE /storage/v1/b/{bucket}/o/{object}`: 204, or 404 when there is no such object.
//! - `POST /upload/storage/v1/b/{bucket}/o?uploadType=media&name=`: a simple upload; answers
//!   with the stored object's resource.
//!
//! Like the rest of the emulator it shares nothing with the client it serves
//! (`crate::store::GcsJsonBucket`): resources are written as JSON values here, checksums
//! computed from the stored bytes at every request, so the two can disagree.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use futures::StreamExt;
use md5::{Digest, Md5};
use object_store::path::Path as StorePath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::{Value, json};

use super::stats::WrittenObject;
use super::{Shared, auth};

/// `maxResults` when the client sends none, and the most Google returns per page.
const MAX_RESULTS: usize = 1000;
/// How long a truncated download stalls after its first bytes before the connection drops.
const CUT_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

type SharedState = State<Arc<Shared>>;
/// An answer that ends a request early (boxed: a response is large).
type Rejected = Box<Response>;

/// Google's storage error shape: `{"error": {"code", "message", "errors": [{…}]}}`.
fn error(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({"error": {
        "code": code.as_u16(),
        "message": message,
        "errors": [{"domain": "global", "reason": reason, "message": message}],
    }});
    (code, axum::Json(body)).into_response()
}

fn no_such_object(bucket: &str, name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "notFound",
        format!("No such object: {bucket}/{name}"),
    )
}

/// With `require_auth`, a 401 unless the request carries a token the token endpoint issued and
/// has not revoked. Google's JSON API answers so (`reason: authError`, the header as location,
/// and a `WWW-Authenticate` challenge).
fn check_token(shared: &Shared, headers: &HeaderMap) -> Result<(), Rejected> {
    if !shared.options.require_auth {
        return Ok(());
    }
    let mut state = shared.lock();
    if state
        .tokens
        .authorize(auth::bearer(headers), shared.revocation())
    {
        return Ok(());
    }
    state.counters.storage_unauthenticated();
    let body = json!({"error": {
        "code": 401,
        "message": "Invalid Credentials",
        "errors": [{
            "message": "Invalid Credentials",
            "domain": "global",
            "reason": "authError",
            "locationType": "header",
            "location": "Authorization",
        }],
    }});
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
    );
    Err(Box::new(response))
}

/// 404 unless the emulator serves `bucket` (any bucket when none is configured).
fn check_bucket(shared: &Shared, bucket: &str) -> Result<(), Rejected> {
    match &shared.options.bucket {
        Some(own) if own != bucket => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "notFound",
            "The specified bucket does not exist.".to_owned(),
        ))),
        _ => Ok(()),
    }
}

fn store_path(name: &str) -> Result<StorePath, Rejected> {
    StorePath::parse(name).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("Invalid object name {name:?}: {e}"),
        ))
    })
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "backendError",
        format!("Backend Error: {e}"),
    )
}

/// The generation of a stored version: its modification time in microseconds, as GCS's are.
fn generation(meta: &ObjectMeta) -> String {
    meta.last_modified.timestamp_micros().to_string()
}

/// Size and both checksums of some bytes.
fn digest(name: &str, bytes: &[u8], source: &str) -> WrittenObject {
    WrittenObject {
        name: name.to_owned(),
        size: bytes.len() as u64,
        md5: Md5::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        crc32c: crc32c::crc32c(bytes),
        source: source.to_owned(),
    }
}

fn resource(bucket: &str, meta: &ObjectMeta, bytes: &[u8]) -> Value {
    let name = meta.location.as_ref();
    let generation = generation(meta);
    let md5: [u8; 16] = Md5::digest(bytes).into();
    let time = meta
        .last_modified
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "kind": "storage#object",
        "id": format!("{bucket}/{name}/{generation}"),
        "selfLink": format!("https://www.googleapis.com/storage/v1/b/{bucket}/o/{}", url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()),
        "name": name,
        "bucket": bucket,
        "generation": generation,
        "metageneration": "1",
        "contentType": "application/octet-stream",
        "storageClass": "STANDARD",
        "size": bytes.len().to_string(),
        "md5Hash": BASE64.encode(md5),
        "crc32c": BASE64.encode(crc32c::crc32c(bytes).to_be_bytes()),
        "etag": BASE64.encode(&md5[..8]),
        "timeCreated": time,
        "updated": time,
    })
}

/// Reads one object: its metadata and bytes, or `None` when it does not exist.
async fn read(
    store: &dyn ObjectStore,
    path: &StorePath,
) -> Result<Option<(ObjectMeta, Bytes)>, Rejected> {
    match store.get(path).await {
        Ok(got) => {
            let meta = got.meta.clone();
            let bytes = got.bytes().await.map_err(|e| Box::new(internal(e)))?;
            Ok(Some((meta, bytes)))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Box::new(internal(e))),
    }
}

/// `objects.list`.
pub(crate) async fn list(
    State(shared): SharedState,
    Path(bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    shared.lock().counters.storage_request("objects.list");
    if let Err(r) = check_token(&shared, &headers).and_then(|()| check_bucket(&shared, &bucket)) {
        return *r;
    }
    if query.get("delimiter").is_some_and(|d| !d.is_empty()) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "delimiter is not supported by this emulator".to_owned(),
        );
    }
    let prefix = query.get("prefix").cloned().unwrap_or_default();
    let max = match query.get("maxResults").map(|s| s.parse::<usize>()) {
        None => MAX_RESULTS,
        Some(Ok(n)) if n > 0 => n.min(MAX_RESULTS),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "Invalid value for maxResults".to_owned(),
            );
        }
    };
    let after = match query.get("pageToken").filter(|t| !t.is_empty()) {
        None => None,
        Some(token) => match URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        {
            Some(name) => Some(name),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "Invalid page token".to_owned(),
                );
            }
        },
    };
    // The store lists by directory; GCS by string prefix: list the prefix's folder, filter here.
    let folder = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
    let folder = (!folder.is_empty()).then(|| StorePath::from(folder));
    let mut metas = Vec::new();
    let mut listing = shared.store.list(folder.as_ref());
    while let Some(item) = listing.next().await {
        match item {
            Ok(meta) if meta.location.as_ref().starts_with(&prefix) => metas.push(meta),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return internal(e),
        }
    }
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    if let Some(after) = &after {
        metas.retain(|m| m.location.as_ref() > after.as_str());
    }
    let more = metas.len() > max;
    metas.truncate(max);
    let mut items = Vec::with_capacity(metas.len());
    for meta in &metas {
        // Checksums come from the bytes as stored now, never from a record of what was written.
        match read(shared.store.as_ref(), &meta.location).await {
            Ok(Some((meta, bytes))) => items.push(resource(&bucket, &meta, &bytes)),
            // Deleted between listing and reading: Google's listing would not show it either.
            Ok(None) => {}
            Err(r) => return *r,
        }
    }
    let mut body = json!({"kind": "storage#objects"});
    if !items.is_empty() {
        body["items"] = Value::Array(items);
    }
    if more && let Some(last) = metas.last() {
        body["nextPageToken"] = json!(URL_SAFE_NO_PAD.encode(last.location.as_ref()));
    }
    axum::Json(body).into_response()
}

/// The first byte a `Range: bytes=N-` or `bytes=N-M` header asks for and the end (exclusive)
/// within `length`, as Google serves them: `None` without the header, `Err` (416) for a range
/// that starts at or past the end or that this emulator does not serve (several ranges,
/// suffix ranges).
fn byte_range(
    headers: &axum::http::HeaderMap,
    length: u64,
) -> Result<Option<(u64, u64)>, Rejected> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let unsatisfiable = || {
        Box::new(error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "requestedRangeNotSatisfiable",
            format!("The requested range cannot be satisfied: {value:?}"),
        ))
    };
    let spec = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("bytes="))
        .filter(|v| !v.contains(','))
        .and_then(|v| v.split_once('-'))
        .ok_or_else(unsatisfiable)?;
    let start: u64 = spec.0.parse().map_err(|_| unsatisfiable())?;
    let end = match spec.1 {
        "" => length,
        last => last
            .parse::<u64>()
            .map_err(|_| unsatisfiable())?
            .saturating_add(1)
            .min(length),
    };
    if start >= length || end <= start {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

/// `objects.get`: the resource, or the bytes with `alt=media` (all of them, or the `Range`
/// asked for, answered 206); `ifGenerationMatch` answers 412 for another generation.
pub(crate) async fn get(
    State(shared): SharedState,
    Path((bucket, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let media = query.get("alt").map(String::as_str) == Some("media");
    shared.lock().counters.storage_request(if media {
        "objects.get.media"
    } else {
        "objects.get"
    });
    if let Err(r) = check_token(&shared, &headers).and_then(|()| check_bucket(&shared, &bucket)) {
        return *r;
    }
    let path = match store_path(&name) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let (meta, bytes) = match read(shared.store.as_ref(), &path).await {
        Ok(Some(found)) => found,
        Ok(None) => return no_such_object(&bucket, &name),
        Err(r) => return *r,
    };
    if let Some(wanted) = query.get("ifGenerationMatch")
        && *wanted != generation(&meta)
    {
        return error(
            StatusCode::PRECONDITION_FAILED,
            "conditionNotMet",
            "At least one of the pre-conditions you specified did not hold.".to_owned(),
        );
    }
    if !media {
        return axum::Json(resource(&bucket, &meta, &bytes)).into_response();
    }
    let md5: [u8; 16] = Md5::digest(&bytes).into();
    // The hashes are of the whole object, for a range too, as Google sends them.
    let hash = format!(
        "crc32c={},md5={}",
        BASE64.encode(crc32c::crc32c(&bytes).to_be_bytes()),
        BASE64.encode(md5)
    );
    let total = bytes.len() as u64;
    let range = match byte_range(&headers, total) {
        Ok(range) => range,
        Err(r) => return *r,
    };
    let (start, end) = range.unwrap_or((0, total));
    let body_bytes = bytes.slice(start as usize..end as usize);
    let length = body_bytes.len();
    let truncate = {
        let mut state = shared.lock();
        let cut = state.faults.take_truncation(&name);
        // Bytes sent: the body, or as much of it as goes out before a cut.
        let sent = cut.map_or(length as u64, |after| after.min(length as u64));
        state.counters.media_served(sent);
        if cut.is_some() {
            state.counters.download_truncated();
        }
        cut
    };
    let body = match truncate {
        None => Body::from(body_bytes),
        Some(after) => {
            // The headers promise the whole body; the connection drops after `after` bytes,
            // as a network cut mid-transfer does.
            let head = body_bytes.slice(..(after as usize).min(length));
            // The pause lets the headers and the first bytes reach the client before the cut;
            // failing at once would abort the response before anything is sent.
            let cut = futures::stream::once(async {
                tokio::time::sleep(CUT_DELAY).await;
                Err(std::io::Error::other("emulator fault: download truncated"))
            });
            Body::from_stream(futures::stream::iter([Ok(head)]).chain(cut))
        }
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
            (header::HeaderName::from_static("x-goog-hash"), hash),
            (
                header::HeaderName::from_static("x-goog-generation"),
                generation(&meta),
            ),
        ],
        body,
    )
        .into_response();
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let content_range = format!("bytes {start}-{}/{total}", end - 1);
        if let Ok(value) = header::HeaderValue::from_str(&content_range) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
    }
    response
}

/// `objects.delete`.
pub(crate) async fn delete(
    State(shared): SharedState,
    Path((bucket, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    shared.lock().counters.storage_request("objects.delete");
    if let Err(r) = check_token(&shared, &headers).and_then(|()| check_bucket(&shared, &bucket)) {
        return *r;
    }
    let path = match store_path(&name) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    match shared.store.head(&path).await {
        Ok(_) => {}
        Err(object_store::Error::NotFound { .. }) => return no_such_object(&bucket, &name),
        Err(e) => return internal(e),
    }
    match shared.store.delete(&path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => internal(e),
    }
}

/// `objects.insert` with `uploadType=media`.
pub(crate) async fn upload(
    State(shared): SharedState,
    Path(bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.lock().counters.storage_request("objects.insert");
    if let Err(r) = check_token(&shared, &headers).and_then(|()| check_bucket(&shared, &bucket)) {
        return *r;
    }
    match query.get("uploadType").map(String::as_str) {
        Some("media") => {}
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("uploadType {other:?} is not supported by this emulator; use media"),
            );
        }
    }
    let Some(name) = query.get("name").filter(|n| !n.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "required",
            "Required parameter: name".to_owned(),
        );
    };
    let path = match store_path(name) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if let Err(e) = shared
        .store
        .put(&path, PutPayload::from(body.clone()))
        .await
    {
        return internal(e);
    }
    let meta = match shared.store.head(&path).await {
        Ok(meta) => meta,
        Err(e) => return internal(e),
    };
    shared
        .lock()
        .counters
        .record_object(digest(name, &body, "upload"));
    axum::Json(resource(&bucket, &meta, &body)).into_response()
}

/// What an export wrote, for the manifest at `GET /_emulator/objects`.
pub(crate) fn exported(name: &str, bytes: &[u8]) -> WrittenObject {
    digest(name, bytes, "export")
}
