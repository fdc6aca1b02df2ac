//! The Earth Engine REST client: one method per call cedar makes, real HTTP, no retries.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::error::{EeError, snippet};
use super::types::{
    CloudStorageDestination, ComputeValueRequest, ComputeValueResponse, ExportImageRequest,
    Expression, GeoTiffImageExportOptions, GridDimensions, ImageFileExportOptions, ImageFileFormat,
    ListOperationsResponse, Number, Operation, PixelGrid, ProjectConfig,
};
use crate::auth::{self, TokenSource};
use crate::grid::{Crs, Tile};

/// The public Earth Engine endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://earthengine.googleapis.com";

/// The page size the official clients use when listing operations.
pub const LIST_PAGE_SIZE: u32 = 500;

/// A client of one Earth Engine project.
#[derive(Debug, Clone)]
pub struct EarthEngine {
    http: reqwest::Client,
    /// Without a trailing slash, e.g. `https://earthengine.googleapis.com`.
    endpoint: String,
    /// The project ID, e.g. `my-project`.
    project: String,
    tokens: Arc<dyn TokenSource>,
    /// The bound of `value:compute`, which returns whole scene listings and takes longer than
    /// the other calls; the client's own timeout bounds those.
    compute_timeout: Duration,
}

impl EarthEngine {
    /// A client of `project` (`my-project` or `projects/my-project`) at `endpoint`
    /// ([`DEFAULT_ENDPOINT`] for Google). `timeout` bounds every call, connect to last byte;
    /// `value:compute` gets the same bound unless [`EarthEngine::with_compute_timeout`] gives
    /// it its own.
    pub fn new(
        endpoint: &str,
        project: &str,
        tokens: Arc<dyn TokenSource>,
        timeout: Duration,
    ) -> Result<EarthEngine, EeError> {
        let invalid = |reason: String| EeError::InvalidRequest {
            call: "client",
            reason,
        };
        let url = url::Url::parse(endpoint)
            .map_err(|e| invalid(format!("endpoint {endpoint:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(invalid(format!(
                "endpoint {endpoint:?} must be an http(s) URL without query"
            )));
        }
        let project = project.strip_prefix("projects/").unwrap_or(project);
        if !is_segment(project) {
            return Err(invalid(format!(
                "project {project:?} must be a Cloud project ID such as \"my-project\""
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("cedar/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(format!("HTTP client: {e}")))?;
        Ok(EarthEngine {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            project: project.to_string(),
            tokens,
            compute_timeout: timeout,
        })
    }

    /// The same client with `timeout` bounding `value:compute` (connect to last byte) instead
    /// of the timeout of the other calls: a scene listing of a long period is megabytes of
    /// metadata that EE computes before it sends the first byte.
    pub fn with_compute_timeout(mut self, timeout: Duration) -> EarthEngine {
        self.compute_timeout = timeout;
        self
    }

    /// The project ID (without `projects/`).
    pub fn project(&self) -> &str {
        &self.project
    }

    /// `POST /v1/projects/{p}/value:compute`: evaluates `expression` and returns its value;
    /// EE accounts the computation under `workload_tag` when one is given.
    pub async fn compute_value(
        &self,
        expression: &Expression,
        workload_tag: Option<&str>,
    ) -> Result<serde_json::Value, EeError> {
        let body = ComputeValueRequest {
            expression: expression.clone(),
            workload_tag: workload_tag.map(str::to_owned),
        };
        let path = format!("projects/{}/value:compute", self.project);
        let r: ComputeValueResponse = self
            .send("value:compute", Method::POST, &path, &[], Some(&body))
            .await?;
        Ok(r.result.unwrap_or(serde_json::Value::Null))
    }

    /// `POST /v1/projects/{p}/image:export`: starts an export task.
    ///
    /// Sending the same `requestId` again never starts a second task.
    pub async fn export_image(&self, request: &ExportImageRequest) -> Result<Operation, EeError> {
        let path = format!("projects/{}/image:export", self.project);
        let op: Operation = self
            .send("image:export", Method::POST, &path, &[], Some(request))
            .await?;
        if op.name.is_none() {
            return Err(EeError::Malformed {
                call: "image:export",
                status: 200,
                reason: "the operation has no name".into(),
            });
        }
        Ok(op)
    }

    /// `GET /v1/{name}`: an operation by full name or by task ID.
    pub async fn get_operation(&self, name: &str) -> Result<Operation, EeError> {
        let path = self.operation_path("operations.get", name)?;
        self.send::<(), _>("operations.get", Method::GET, &path, &[], None)
            .await
    }

    /// `GET /v1/projects/{p}/operations`: one page of the project's operations.
    pub async fn list_operations(
        &self,
        page_size: Option<u32>,
        page_token: Option<&str>,
    ) -> Result<ListOperationsResponse, EeError> {
        let path = format!("projects/{}/operations", self.project);
        let mut query = Vec::new();
        if let Some(n) = page_size {
            query.push(("pageSize", n.to_string()));
        }
        if let Some(t) = page_token.filter(|t| !t.is_empty()) {
            query.push(("pageToken", t.to_string()));
        }
        self.send::<(), _>("operations.list", Method::GET, &path, &query, None)
            .await
    }

    /// Every operation of the project, following `nextPageToken` ([`LIST_PAGE_SIZE`] per page).
    pub async fn list_all_operations(&self) -> Result<Vec<Operation>, EeError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .list_operations(Some(LIST_PAGE_SIZE), token.as_deref())
                .await?;
            all.extend(page.operations.unwrap_or_default());
            match page.next_page_token.filter(|t| !t.is_empty()) {
                // A server that hands back the token it was given would loop forever.
                Some(next) if token.as_deref() == Some(next.as_str()) => {
                    return Err(EeError::Malformed {
                        call: "operations.list",
                        status: 200,
                        reason: format!("nextPageToken {next:?} repeats the request's token"),
                    });
                }
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// The export task named `description` whose output goes to `destination` (the bucket and
    /// object prefix it was started with), searched in `operations.list`, newest first: how an
    /// export whose `requestId` EE says exists already (409 `ALREADY_EXISTS`) finds the task
    /// that first request started. Operations do not carry their `requestId`.
    ///
    /// A task of that description whose `destinationUris` name another folder (another export
    /// generation or submission of the same item) is passed over; when no task names the
    /// folder (the exact form of `destinationUris` is not documented), the newest task of
    /// that description is the answer. `None` when EE lists no such task.
    pub async fn find_export(
        &self,
        description: &str,
        bucket: &str,
        filename_prefix: &str,
    ) -> Result<Option<Operation>, EeError> {
        let folder = match filename_prefix.rfind('/') {
            Some(i) => format!("{bucket}/{}", &filename_prefix[..=i]),
            None => format!("{bucket}/"),
        };
        let mut newest: Option<Operation> = None;
        let mut token: Option<String> = None;
        loop {
            let page = self
                .list_operations(Some(LIST_PAGE_SIZE), token.as_deref())
                .await?;
            for op in page.operations.unwrap_or_default() {
                let Some(md) = op.metadata.as_ref() else {
                    continue;
                };
                if md.description.as_deref() != Some(description) {
                    continue;
                }
                let uris = md.destination_uris.as_deref().unwrap_or_default();
                if uris.iter().any(|u| u.contains(&folder)) {
                    return Ok(Some(op));
                }
                if newest.is_none() {
                    newest = Some(op);
                }
            }
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
                _ => return Ok(newest),
            }
        }
    }

    /// `POST /v1/{name}:cancel`: asks EE to cancel (best effort; the task goes CANCELLING).
    pub async fn cancel_operation(&self, name: &str) -> Result<(), EeError> {
        let path = format!("{}:cancel", self.operation_path("operations.cancel", name)?);
        let _: serde_json::Value = self
            .send(
                "operations.cancel",
                Method::POST,
                &path,
                &[],
                Some(&serde_json::json!({})),
            )
            .await?;
        Ok(())
    }

    /// `GET /v1/projects/{p}/config`: the project's EE configuration and export limits.
    pub async fn get_project_config(&self) -> Result<ProjectConfig, EeError> {
        let path = format!("projects/{}/config", self.project);
        self.send::<(), _>("projects.getConfig", Method::GET, &path, &[], None)
            .await
    }

    /// `GET /v1alpha/projects/{p}/config`: the same `ProjectConfig` under the v1alpha API, where
    /// Google's CLI reads and sets `maxConcurrentExports`.
    pub async fn get_project_config_v1alpha(&self) -> Result<ProjectConfig, EeError> {
        let path = format!("v1alpha/projects/{}/config", self.project);
        self.send::<(), _>("projects.getConfig", Method::GET, &path, &[], None)
            .await
    }

    /// How many exports of the project EE runs at once, and where that number came from:
    /// `maxConcurrentExports` of the v1alpha `ProjectConfig` (Google's CLI switches to v1alpha
    /// to read it), else of the v1 one, else [`DEFAULT_MAX_CONCURRENT_EXPORTS`]. Never fails:
    /// what went wrong on the way is in `problems`.
    pub async fn export_concurrency(&self) -> ExportConcurrency {
        let mut problems = Vec::new();
        for source in [ConcurrencySource::V1alpha, ConcurrencySource::V1] {
            // One after the other: v1 is asked only when v1alpha did not say.
            let answer = match source {
                ConcurrencySource::V1alpha => self.get_project_config_v1alpha().await,
                _ => self.get_project_config().await,
            };
            match answer {
                Ok(config) => match config.max_concurrent_exports {
                    Some(n) if n > 0 => {
                        return ExportConcurrency {
                            max: n as u64,
                            source,
                            problems,
                        };
                    }
                    _ => problems.push(format!(
                        "{} projects.getConfig has no maxConcurrentExports",
                        source.as_str()
                    )),
                },
                Err(e) => problems.push(format!("{}: {e}", source.as_str())),
            }
        }
        ExportConcurrency {
            max: DEFAULT_MAX_CONCURRENT_EXPORTS,
            source: ConcurrencySource::Default,
            problems,
        }
    }

    /// `projects/{p}/operations/{id}` for a full name or a bare task ID, validated so that it
    /// cannot escape its path (it goes into the URL as is).
    fn operation_path(&self, call: &'static str, name: &str) -> Result<String, EeError> {
        let full = if name.starts_with("projects/") {
            name.to_string()
        } else {
            format!("projects/{}/operations/{name}", self.project)
        };
        let parts: Vec<&str> = full.split('/').collect();
        if parts.len() == 4
            && parts[0] == "projects"
            && parts[2] == "operations"
            && is_segment(parts[1])
            && is_segment(parts[3])
        {
            Ok(full)
        } else {
            Err(EeError::InvalidRequest {
                call,
                reason: format!("{name:?} is not an operation name (projects/P/operations/ID)"),
            })
        }
    }

    /// Sends one request to `/v1/{path}` and reads the JSON answer or classifies the error.
    async fn send<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        call: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<R, EeError> {
        let url = format!("{}/{}", self.endpoint, versioned(path));
        // A 401 is sent again once with a fresh token (see `auth::authorized`).
        let send = |token: Option<String>| {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header("X-Goog-User-Project", &self.project);
            if !query.is_empty() {
                request = request.query(query);
            }
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            if call == "value:compute" {
                request = request.timeout(self.compute_timeout);
            }
            async move {
                let response = request.send().await;
                crate::metrics::ee_request(
                    call,
                    response.as_ref().ok().map(|r| r.status().as_u16()),
                );
                response
            }
        };
        let unauthorized = |r: &reqwest::Result<reqwest::Response>| matches!(r, Ok(r) if r.status() == StatusCode::UNAUTHORIZED);
        let sent = auth::authorized(self.tokens.as_ref(), send, unauthorized)
            .await
            .map_err(|source| EeError::Auth { call, source })?;
        let response = sent.answer.map_err(|e| EeError::from_reqwest(call, e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| EeError::from_reqwest(call, e))?;
        if !status.is_success() {
            let mut error = EeError::from_response(call, status.as_u16(), &bytes);
            if let (EeError::Api { message, .. }, Some(note)) = (&mut error, sent.refused) {
                message.push(' ');
                message.push_str(&note);
            }
            return Err(error);
        }
        parse_success(call, status, &bytes)
    }
}

/// The URL path of an API path: under `/v1/` unless it names its version (`v1alpha/…`).
fn versioned(path: &str) -> std::borrow::Cow<'_, str> {
    if path.starts_with("v1alpha/") {
        path.into()
    } else {
        format!("v1/{path}").into()
    }
}

/// EE's documented average of exports a project runs at once, assumed when the project
/// config does not say.
pub const DEFAULT_MAX_CONCURRENT_EXPORTS: u64 = 2;

/// Where [`EarthEngine::export_concurrency`] found its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrencySource {
    /// `maxConcurrentExports` of `GET /v1alpha/projects/{p}/config`.
    V1alpha,
    /// `maxConcurrentExports` of `GET /v1/projects/{p}/config`.
    V1,
    /// Neither said: [`DEFAULT_MAX_CONCURRENT_EXPORTS`].
    Default,
}

impl ConcurrencySource {
    /// `v1alpha`, `v1` or `default`: the label value of `cedar_ee_max_concurrent_exports`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencySource::V1alpha => "v1alpha",
            ConcurrencySource::V1 => "v1",
            ConcurrencySource::Default => "default",
        }
    }
}

/// How many exports EE runs at once for the project, and where the number came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConcurrency {
    pub max: u64,
    pub source: ConcurrencySource,
    /// Why the sources before `source` did not answer, one line each.
    pub problems: Vec<String>,
}

fn parse_success<R: DeserializeOwned>(
    call: &'static str,
    status: StatusCode,
    bytes: &[u8],
) -> Result<R, EeError> {
    serde_json::from_slice(bytes).map_err(|e| EeError::Malformed {
        call,
        status: status.as_u16(),
        reason: format!("{e}; body starts: {}", snippet(bytes)),
    })
}

/// A project ID or operation ID: letters, digits, `-`, `_`, `.`.
fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s != "."
        && s != ".."
}

/// A deterministic EE `requestId` for the parts that identify one export, so that a retried
/// job never starts a second task: `cedar-` and 40 hex digits of a SHA-256 (46 characters of
/// `[A-Za-z0-9-]`, within EE's 60).
pub fn request_id<S: AsRef<str>>(parts: &[S]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefixed, so that ["ab", "c"] and ["a", "bc"] differ.
        let p = p.as_ref().as_bytes();
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let hex: String = h
        .finalize()
        .iter()
        .take(20)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("cedar-{hex}")
}

/// What an export writes where; the rest of the request comes from the tile.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportParams {
    pub bucket: String,
    /// Object name prefix; EE appends `.tif` or `-YYYYYYYYYY-XXXXXXXXXX.tif`.
    pub filename_prefix: String,
    /// The task description (shown in the EE task list; used to reconcile after a crash).
    pub description: String,
    /// See [`request_id`].
    pub request_id: String,
    /// Split the output into files of at most this many pixels square (a multiple of 256);
    /// `None` lets EE choose.
    pub file_dimensions: Option<u32>,
    /// Write Cloud Optimized GeoTIFFs.
    pub cloud_optimized: bool,
    /// The GeoTIFFs' nodata value (`geoTiffOptions.noData`): the collection's fill value, so
    /// that GDAL reads the unmasked pixels as nodata. `None` sends none.
    pub nodata: Option<f64>,
    /// `None` keeps EE's default of 1e8 pixels.
    pub max_pixels: Option<i64>,
    /// The label EE accounts the task under (`workloadTag`); `None` sends none.
    pub workload_tag: Option<String>,
    /// EE's own task priority (0–9999, EE's default 100; honoured for paid projects); `None`
    /// sends none.
    pub priority: Option<u32>,
}

/// The tile's exact pixel grid: dimensions, affine transform and CRS.
pub fn pixel_grid(tile: &Tile) -> PixelGrid {
    let (crs_code, crs_wkt) = match &tile.crs {
        Crs::Code(c) => (Some(c.clone()), None),
        Crs::Wkt(w) => (None, Some(w.clone())),
    };
    PixelGrid {
        dimensions: GridDimensions {
            width: tile.width,
            height: tile.height,
        },
        affine_transform: tile.transform,
        crs_code,
        crs_wkt,
    }
}

/// The complete `image:export` request of `expression` on `tile`'s pixel grid, as GeoTIFF
/// into Cloud Storage.
pub fn export_request(tile: &Tile, expression: Expression, p: &ExportParams) -> ExportImageRequest {
    ExportImageRequest {
        expression,
        description: Some(p.description.clone()),
        max_pixels: p.max_pixels,
        grid: Some(pixel_grid(tile)),
        request_id: Some(p.request_id.clone()),
        workload_tag: p.workload_tag.clone(),
        priority: p.priority,
        file_export_options: Some(ImageFileExportOptions {
            file_format: ImageFileFormat::GeoTiff,
            cloud_storage_destination: Some(CloudStorageDestination {
                bucket: p.bucket.clone(),
                filename_prefix: p.filename_prefix.clone(),
            }),
            geo_tiff_options: Some(GeoTiffImageExportOptions {
                cloud_optimized: Some(p.cloud_optimized),
                tile_dimensions: p.file_dimensions.map(|d| GridDimensions {
                    width: d,
                    height: d,
                }),
                skip_empty_files: None,
                tile_size: None,
                no_data: p.nodata.map(|float_value| Number { float_value }),
            }),
        }),
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
