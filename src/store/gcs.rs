//! A thin client for the Cloud Storage JSON API, limited to what the export bucket needs.
//!
//! Why not `object_store`'s GCS client: it speaks the XML API, which reports neither `md5Hash`
//! nor `crc32c`, and which gcp-storage-emulator does not implement (see
//! `reference/rust-dependencies.md` §5).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use url::Url;

use super::{ExportBucket, ObjectInfo, StoreError, file_pieces};
use crate::auth::{self, TokenSource};

/// Google's production endpoint, used unless configured otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// The environment variable Google's client libraries read to reach an emulator
/// (`host:port` or a full URL).
pub const EMULATOR_HOST_ENV: &str = "STORAGE_EMULATOR_HOST";

/// How long to wait for a TCP (and TLS) connection. Default: 10 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a single read may stall. There is deliberately no whole-request timeout: a
/// multi-gigabyte GeoTIFF may take a long time, but it must keep moving. Default: 60 s.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Error bodies longer than this are cut before they go into an error message.
const MAX_ERROR_MESSAGE_CHARS: usize = 500;

/// The endpoint to use: the configured one, else the emulator host from
/// [`EMULATOR_HOST_ENV`] (with `http://` added when it has no scheme), else [`DEFAULT_ENDPOINT`].
pub fn gcs_endpoint(configured: Option<&str>, emulator_host: Option<&str>) -> String {
    match (configured, emulator_host) {
        (Some(endpoint), _) if !endpoint.is_empty() => endpoint.to_owned(),
        (_, Some(host)) if !host.is_empty() => {
            if host.contains("://") {
                host.to_owned()
            } else {
                format!("http://{host}")
            }
        }
        _ => DEFAULT_ENDPOINT.to_owned(),
    }
}

/// The export bucket through the Cloud Storage JSON API.
#[derive(Debug, Clone)]
pub struct GcsJsonBucket {
    http: reqwest::Client,
    endpoint: Url,
    bucket: String,
    /// Prepended to every name: empty, or the URL's prefix ending in '/'.
    root: String,
    tokens: Arc<dyn TokenSource>,
    page_size: Option<u32>,
}

impl GcsJsonBucket {
    /// A client for `bucket` on `endpoint`, with names relative to `prefix` (may be empty).
    pub fn new(
        endpoint: &str,
        bucket: &str,
        prefix: &str,
        tokens: Arc<dyn TokenSource>,
    ) -> Result<Self, StoreError> {
        let url_error = |reason: String| StoreError::Url {
            url: format!("gs://{bucket}/{prefix}"),
            reason,
        };
        if bucket.is_empty() {
            return Err(url_error(
                "no bucket name; write the export bucket as gs://bucket[/prefix]".to_owned(),
            ));
        }
        let endpoint = Url::parse(endpoint).map_err(|e| {
            url_error(format!(
                "storage endpoint {endpoint:?} is not a URL ({e}); write it as \
                 https://host[:port] or set [store] endpoint"
            ))
        })?;
        if endpoint.cannot_be_a_base() || !matches!(endpoint.scheme(), "http" | "https") {
            return Err(url_error(format!(
                "storage endpoint {endpoint} must be an http:// or https:// URL"
            )));
        }
        let prefix = prefix.trim_matches('/');
        let root = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| url_error(format!("cannot build an HTTP client: {e}")))?;
        Ok(GcsJsonBucket {
            http,
            endpoint,
            bucket: bucket.to_owned(),
            root,
            tokens,
            page_size: None,
        })
    }

    /// Asks for at most `n` objects per list page (`maxResults`). Default: the server's (1000).
    pub fn with_page_size(mut self, n: u32) -> Self {
        self.page_size = Some(n);
        self
    }

    /// `{endpoint}/{segments...}`, each segment percent-encoded on its own, so that an object
    /// name's '/' becomes `%2F` as the JSON API requires.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .expect("the endpoint was checked to be a base URL")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn objects_url(&self) -> Url {
        self.url(&["storage", "v1", "b", &self.bucket, "o"])
    }

    fn object_url(&self, full_name: &str) -> Url {
        self.url(&["storage", "v1", "b", &self.bucket, "o", full_name])
    }

    fn full_name(&self, name: &str) -> Result<String, StoreError> {
        if name.is_empty() {
            return Err(StoreError::UnsafeName {
                name: name.to_owned(),
            });
        }
        Ok(format!("{}{name}", self.root))
    }

    /// `gs://bucket/name`, the way errors name an object.
    fn gs(&self, full_name: &str) -> String {
        format!("gs://{}/{full_name}", self.bucket)
    }

    /// Adds the bearer token (if any) and sends; any non-2xx answer becomes an error here. A 401
    /// is sent again once with a fresh token (see [`auth::authorized`]).
    async fn send(
        &self,
        op: &'static str,
        target: &str,
        request: RequestBuilder,
    ) -> Result<Response, StoreError> {
        self.send_with(op, target, || {
            request
                .try_clone()
                .expect("requests to the JSON API have no body or a buffered one, so they copy")
        })
        .await
    }

    /// [`Self::send`] for a request made afresh for each attempt by `make` (a streamed body
    /// cannot be copied, but it can be opened again).
    async fn send_with(
        &self,
        op: &'static str,
        target: &str,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response, StoreError> {
        let transport = |source: reqwest::Error| StoreError::Transport {
            op,
            target: target.to_owned(),
            source: source.without_url(),
        };
        let send = |token: Option<String>| {
            let attempt = make();
            let attempt = match token {
                Some(token) => attempt.bearer_auth(token),
                None => attempt,
            };
            attempt.send()
        };
        let unauthorized = |r: &reqwest::Result<Response>| matches!(r, Ok(r) if r.status() == StatusCode::UNAUTHORIZED);
        let sent = auth::authorized(self.tokens.as_ref(), send, unauthorized).await?;
        let response = sent.answer.map_err(transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let mut message = error_message(status, response).await;
        if let Some(note) = sent.refused {
            message.push(' ');
            message.push_str(&note);
        }
        Err(StoreError::Status {
            op,
            target: target.to_owned(),
            status: status.as_u16(),
            message,
        })
    }

    /// `objects.get?alt=media`, from byte `from` on (a `Range` request, answered 206), of the
    /// version `generation` when given (`ifGenerationMatch`: 412 when the object changed).
    async fn send_media_get(
        &self,
        name: &str,
        from: u64,
        generation: Option<&str>,
    ) -> Result<(String, Response), StoreError> {
        let full = self.full_name(name)?;
        let target = self.gs(&full);
        let mut request = self
            .http
            .request(Method::GET, self.object_url(&full))
            .query(&[("alt", "media")]);
        if let Some(generation) = generation {
            request = request.query(&[("ifGenerationMatch", generation)]);
        }
        if from > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let response = match self.send("download", &target, request).await {
            Err(StoreError::Status { status: 404, .. }) => {
                return Err(StoreError::NotFound { name: target });
            }
            Err(StoreError::Status { status: 412, .. }) => {
                return Err(StoreError::Mismatch {
                    path: target,
                    what: "generation",
                    expected: generation.unwrap_or_default().to_owned(),
                    actual: "another: the object was rewritten since it was listed".to_owned(),
                });
            }
            other => other?,
        };
        if from > 0 {
            // A server that ignores Range answers 200 with the whole object: appending that
            // to the bytes already received would corrupt the file (the checksums would
            // catch it, after a wasted transfer).
            let start = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split_once('-'))
                .and_then(|(start, _)| start.parse::<u64>().ok());
            if response.status() != StatusCode::PARTIAL_CONTENT || start != Some(from) {
                return Err(StoreError::Protocol {
                    op: "download",
                    target,
                    reason: format!(
                        "asked for the bytes from {from} on, got HTTP {} with Content-Range {:?}",
                        response.status().as_u16(),
                        response.headers().get(reqwest::header::CONTENT_RANGE)
                    ),
                });
            }
        }
        Ok((target, response))
    }
}

/// The service's own explanation from an error body: `error.message` for the JSON API, else the
/// start of the body on one line, else the status's reason phrase.
async fn error_message(status: StatusCode, response: Response) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: ErrorDetail,
    }
    #[derive(Deserialize)]
    struct ErrorDetail {
        message: String,
    }
    let body = response.bytes().await.unwrap_or_default();
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(&body) {
        return parsed.error.message;
    }
    // One line: an HTML page from a proxy (or from a server that is not Cloud Storage at all)
    // would otherwise spread the error over dozens of lines.
    let text = String::from_utf8_lossy(&body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        text.chars().take(MAX_ERROR_MESSAGE_CHARS).collect()
    }
}

/// One page of `objects.list`; fields cedar does not use are ignored, as Google adds fields.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectsPage {
    /// Google omits `items` when nothing matches.
    #[serde(default)]
    items: Vec<ObjectResource>,
    next_page_token: Option<String>,
}

/// The part of an object resource cedar reads. `size` and `generation` are uint64 and int64,
/// which the JSON API sends as strings.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectResource {
    name: String,
    size: String,
    md5_hash: Option<String>,
    crc32c: Option<String>,
    generation: Option<String>,
}

impl ObjectResource {
    fn into_info(self, root: &str) -> Result<ObjectInfo, String> {
        let size = self
            .size
            .parse()
            .map_err(|_| format!("object {}: size {:?} is not a number", self.name, self.size))?;
        let md5 = self
            .md5_hash
            .as_deref()
            .map(decode_md5)
            .transpose()
            .map_err(|e| format!("object {}: md5Hash: {e}", self.name))?;
        let crc32c = self
            .crc32c
            .as_deref()
            .map(decode_crc32c)
            .transpose()
            .map_err(|e| format!("object {}: crc32c: {e}", self.name))?;
        let name = match self.name.strip_prefix(root) {
            Some(relative) => relative.to_owned(),
            None => {
                return Err(format!(
                    "object {} is outside the requested prefix {root:?}",
                    self.name
                ));
            }
        };
        Ok(ObjectInfo {
            name,
            size,
            md5,
            crc32c,
            generation: self.generation,
        })
    }
}

/// `md5Hash` is the base64 of the 16 raw digest bytes.
fn decode_md5(encoded: &str) -> Result<[u8; 16], String> {
    let raw = BASE64
        .decode(encoded)
        .map_err(|e| format!("{encoded:?} is not base64: {e}"))?;
    raw.try_into()
        .map_err(|raw: Vec<u8>| format!("{encoded:?} decodes to {} bytes, not 16", raw.len()))
}

/// `crc32c` is the base64 of the 4 checksum bytes in big-endian order.
fn decode_crc32c(encoded: &str) -> Result<u32, String> {
    let raw = BASE64
        .decode(encoded)
        .map_err(|e| format!("{encoded:?} is not base64: {e}"))?;
    let bytes: [u8; 4] = raw
        .try_into()
        .map_err(|raw: Vec<u8>| format!("{encoded:?} decodes to {} bytes, not 4", raw.len()))?;
    Ok(u32::from_be_bytes(bytes))
}

#[async_trait]
impl ExportBucket for GcsJsonBucket {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full_prefix = format!("{}{prefix}", self.root);
        let target = self.gs(&full_prefix);
        let mut objects = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let mut query = vec![
                ("prefix", full_prefix.clone()),
                // Only the fields cedar reads: a page of 1000 full resources is large.
                (
                    "fields",
                    "items(name,size,md5Hash,crc32c,generation),nextPageToken".to_owned(),
                ),
            ];
            if let Some(n) = self.page_size {
                query.push(("maxResults", n.to_string()));
            }
            if let Some(token) = &page_token {
                query.push(("pageToken", token.clone()));
            }
            let request = self.http.get(self.objects_url()).query(&query);
            let response = self.send("list", &target, request).await?;
            let body = response
                .bytes()
                .await
                .map_err(|source| StoreError::Transport {
                    op: "list",
                    target: target.clone(),
                    source: source.without_url(),
                })?;
            let protocol = |reason: String| StoreError::Protocol {
                op: "list",
                target: target.clone(),
                reason,
            };
            let page: ObjectsPage = serde_json::from_slice(&body)
                .map_err(|e| protocol(format!("not an objects.list page: {e}")))?;
            for item in page.items {
                objects.push(item.into_info(&self.root).map_err(protocol)?);
            }
            match page.next_page_token {
                Some(token) if !token.is_empty() => {
                    if page_token.as_deref() == Some(token.as_str()) {
                        // A server that hands back the same token would make this loop forever.
                        return Err(protocol(format!("nextPageToken {token:?} repeated")));
                    }
                    page_token = Some(token);
                }
                _ => break,
            }
        }
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(objects)
    }

    async fn stream(
        &self,
        name: &str,
        from: u64,
        generation: Option<&str>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let (target, response) = self.send_media_get(name, from, generation).await?;
        Ok(response
            .bytes_stream()
            .map_err(move |source| StoreError::Transport {
                op: "download",
                target: target.clone(),
                source: source.without_url(),
            })
            .boxed())
    }

    async fn put(&self, name: &str, body: Bytes) -> Result<(), StoreError> {
        let full = self.full_name(name)?;
        let target = self.gs(&full);
        let md5: [u8; 16] = Md5::digest(&body).into();
        let request = self
            .http
            .post(self.url(&["upload", "storage", "v1", "b", &self.bucket, "o"]))
            .query(&[("uploadType", "media"), ("name", &full)])
            // Not application/json even for JSON: gcp-storage-emulator parses a media upload with
            // that type as object metadata and drops the connection, and nothing in cedar reads
            // the stored content type.
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let response = self.send("upload", &target, request).await?;
        // The service answers with the stored object's resource: comparing its MD5 with ours
        // catches a body damaged on the way up, for the price of hashing a small document.
        let stored = uploaded(response, &target).await?;
        if let Some(stored_md5) = stored.md5_hash.as_deref() {
            let stored_md5 = decode_md5(stored_md5).map_err(|reason| StoreError::Protocol {
                op: "upload",
                target: target.clone(),
                reason,
            })?;
            if stored_md5 != md5 {
                return Err(StoreError::Mismatch {
                    path: target,
                    what: "md5",
                    expected: hex(&md5),
                    actual: hex(&stored_md5),
                });
            }
        }
        Ok(())
    }

    /// A media upload whose body is read from `file` as it goes (by offset, so that an attempt
    /// resent after a 401 reads it again from the start); the stored size is checked.
    async fn put_file(&self, name: &str, file: std::fs::File, size: u64) -> Result<(), StoreError> {
        let full = self.full_name(name)?;
        let target = self.gs(&full);
        let file = Arc::new(file);
        let url = self.url(&["upload", "storage", "v1", "b", &self.bucket, "o"]);
        let make = || {
            self.http
                .post(url.clone())
                .query(&[("uploadType", "media"), ("name", &full)])
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, size)
                .body(reqwest::Body::wrap_stream(file_pieces(
                    file.clone(),
                    size,
                    1 << 20,
                )))
        };
        let response = self.send_with("upload", &target, make).await?;
        let stored = uploaded(response, &target).await?;
        if stored.size != size.to_string() {
            return Err(StoreError::Mismatch {
                path: target,
                what: "size",
                expected: size.to_string(),
                actual: stored.size,
            });
        }
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        let (target, response) = self.send_media_get(name, 0, None).await?;
        response
            .bytes()
            .await
            .map_err(|source| StoreError::Transport {
                op: "download",
                target,
                source: source.without_url(),
            })
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let full = self.full_name(name)?;
        let target = self.gs(&full);
        let request = self.http.delete(self.object_url(&full));
        match self.send("delete", &target, request).await {
            // Already gone: a second clean of the same object is a success, not a failure.
            Err(StoreError::Status { status: 404, .. }) => Ok(()),
            other => other.map(drop),
        }
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The object resource an upload answers with.
async fn uploaded(response: Response, target: &str) -> Result<ObjectResource, StoreError> {
    let body = response
        .bytes()
        .await
        .map_err(|source| StoreError::Transport {
            op: "upload",
            target: target.to_owned(),
            source: source.without_url(),
        })?;
    serde_json::from_slice(&body).map_err(|e| StoreError::Protocol {
        op: "upload",
        target: target.to_owned(),
        reason: format!("not an object resource: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::NoAuth;

    #[test]
    fn checksums_decode_as_documented() {
        // md5Hash is the base64 of the raw digest, crc32c of the big-endian checksum.
        let content = b"Hello, World!";
        let md5: [u8; 16] = Md5::digest(content).into();
        let crc = crc32c::crc32c(content);
        assert_eq!(decode_md5(&BASE64.encode(md5)).unwrap(), md5);
        assert_eq!(
            decode_crc32c(&BASE64.encode(crc.to_be_bytes())).unwrap(),
            crc
        );
        // A known published pair: crc32c("") = 0 is "AAAAAA==", and of "abc" is 0x364B3FB7.
        assert_eq!(decode_crc32c("AAAAAA==").unwrap(), 0);
        assert_eq!(decode_crc32c("Nks/tw==").unwrap(), 0x364B_3FB7);
        assert_eq!(crc32c::crc32c(b"abc"), 0x364B_3FB7);
        // md5("") = d41d8cd98f00b204e9800998ecf8427e, base64 "1B2M2Y8AsgTpgAmY7PhCfg==".
        assert_eq!(
            hex(&decode_md5("1B2M2Y8AsgTpgAmY7PhCfg==").unwrap()),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
    }

    #[test]
    fn malformed_checksums_are_rejected() {
        assert!(decode_md5("not base64!").is_err());
        assert!(decode_md5("AAAAAA==").is_err()); // 4 bytes
        assert!(decode_crc32c("1B2M2Y8AsgTpgAmY7PhCfg==").is_err()); // 16 bytes
    }

    #[test]
    fn object_resources_become_object_info_relative_to_the_root() {
        let resource: ObjectResource = serde_json::from_str(
            r#"{"name":"camp/a.tif","size":"12","md5Hash":"1B2M2Y8AsgTpgAmY7PhCfg==",
                "crc32c":"AAAAAA==","generation":"1700000000","bucket":"b"}"#,
        )
        .unwrap();
        let info = resource.into_info("camp/").unwrap();
        assert_eq!(info.name, "a.tif");
        assert_eq!(info.size, 12);
        assert_eq!(info.crc32c, Some(0));
        assert_eq!(info.generation.as_deref(), Some("1700000000"));

        let bad_size: ObjectResource =
            serde_json::from_str(r#"{"name":"x","size":"twelve"}"#).unwrap();
        assert!(bad_size.into_info("").is_err());
        let outside: ObjectResource = serde_json::from_str(r#"{"name":"x","size":"1"}"#).unwrap();
        assert!(outside.into_info("camp/").is_err());
    }

    #[test]
    fn endpoint_precedence_is_config_then_emulator_then_google() {
        assert_eq!(
            gcs_endpoint(Some("http://a:1"), Some("b:2")),
            "http://a:1".to_owned()
        );
        assert_eq!(gcs_endpoint(None, Some("b:2")), "http://b:2");
        assert_eq!(gcs_endpoint(None, Some("https://b:2")), "https://b:2");
        assert_eq!(gcs_endpoint(None, Some("")), DEFAULT_ENDPOINT);
        assert_eq!(gcs_endpoint(None, None), DEFAULT_ENDPOINT);
    }

    #[test]
    fn object_names_are_one_percent_encoded_path_segment() {
        let bucket = GcsJsonBucket::new(
            "http://127.0.0.1:9/base/",
            "my-bucket",
            "/camp/",
            Arc::new(NoAuth),
        )
        .unwrap();
        let full = bucket.full_name("dir/a b+c.tif").unwrap();
        assert_eq!(full, "camp/dir/a b+c.tif");
        assert_eq!(
            bucket.object_url(&full).as_str(),
            "http://127.0.0.1:9/base/storage/v1/b/my-bucket/o/camp%2Fdir%2Fa%20b+c.tif"
        );
        assert!(bucket.full_name("").is_err());
    }

    #[test]
    fn bad_endpoints_and_buckets_are_refused() {
        for (endpoint, bucket) in [("not a url", "b"), ("ftp://h/", "b"), ("http://h", "")] {
            let result = GcsJsonBucket::new(endpoint, bucket, "", Arc::new(NoAuth));
            assert!(
                matches!(result, Err(StoreError::Url { .. })),
                "{endpoint} {bucket}"
            );
        }
    }
}
