//! The HTTP front end: EE REST v1 routes, Google's error shape, authentication, fault
//! injection and the `/_emulator` control endpoints.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::auth::{self, GOOGLE_TOKEN_URI, GRANT_TYPE, TokenError};
use super::faults::{ApiMethod, Fault, Injected};
use super::{DuplicateRequest, Shared, export, schema, storage};
use super::{evaluate, expression};

/// Google's request payload limit (reference §8).
const MAX_BODY_BYTES: usize = 10_485_760;
/// `operations.list` page size when the client sends none, and the largest served.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 500;

/// An error in Google's shape: `{"error": {"code", "message", "status", "details"?}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: u16,
    status: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, status: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            status,
            message: message.into(),
            details: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "INVALID_ARGUMENT", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "NOT_FOUND", message)
    }

    fn unauthenticated() -> Self {
        Self::new(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login \
             cookie or other valid authentication credential. See \
             https://developers.google.com/identity/sign-in/web/devconsole-project.",
        )
    }

    /// The error an injected fault answers with: Google's default message per status.
    fn injected(injected: &Injected) -> Self {
        let (status, message) = match injected.status {
            400 => ("INVALID_ARGUMENT", "Request contains an invalid argument."),
            401 => return Self::unauthenticated(),
            403 => ("PERMISSION_DENIED", "The caller does not have permission"),
            404 => ("NOT_FOUND", "Requested entity was not found."),
            409 => ("ABORTED", "The operation was aborted."),
            429 => (
                "RESOURCE_EXHAUSTED",
                "Too Many Requests: Request was rejected because the request rate or concurrency limit was exceeded.",
            ),
            500 => ("INTERNAL", "An internal error has occurred."),
            502 | 503 => ("UNAVAILABLE", "The service is currently unavailable."),
            504 => ("DEADLINE_EXCEEDED", "Deadline exceeded."),
            _ => ("UNKNOWN", "Unknown error."),
        };
        let message = injected
            .message
            .clone()
            .unwrap_or_else(|| message.to_owned());
        Self::new(injected.status, status, message)
    }

    fn from_violations(violations: Vec<schema::Violation>) -> Self {
        let message = violations
            .iter()
            .map(|v| v.description.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let field_violations: Vec<Value> = violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        Self {
            details: Some(json!([{
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": field_violations,
            }])),
            ..Self::invalid(message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message, "status": self.status});
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(json!({ "error": error }))).into_response();
        if self.code == 401 {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
            );
        }
        response
    }
}

type SharedState = State<Arc<Shared>>;

/// Serves until `shutdown` fires (or its sender is dropped).
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/v1/projects/{project}/value:compute", post(compute))
        .route("/v1/projects/{project}/image:export", post(image_export))
        .route("/v1/projects/{project}/operations", get(list_operations))
        .route(
            "/v1/projects/{project}/operations/{operation}",
            get(get_operation).post(cancel_operation),
        )
        .route("/v1/projects/{project}/config", get(get_config))
        .route("/token", post(token))
        .route("/storage/v1/b/{bucket}/o", get(storage::list))
        .route(
            "/storage/v1/b/{bucket}/o/{object}",
            get(storage::get).delete(storage::delete),
        )
        .route("/upload/storage/v1/b/{bucket}/o", post(storage::upload))
        .route("/_emulator/stats", get(stats))
        .route("/_emulator/objects", get(objects))
        .route("/_emulator/timeline", get(timeline))
        .route("/_emulator/faults", post(faults))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            count_responses,
        ))
        // Accept a little more than the limit so oversized bodies get Google's message.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES + 1024))
        .with_state(shared);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%error, "emulator server stopped");
    }
}

async fn count_responses(State(shared): SharedState, request: Request, next: Next) -> Response {
    // Only EE's answers are counted: the control endpoints and the storage API are not EE.
    let path = request.uri().path();
    let internal = ["/_emulator", "/storage/", "/upload/"]
        .iter()
        .any(|p| path.starts_with(p));
    let response = next.run(request).await;
    if !internal {
        shared.lock().counters.response(response.status().as_u16());
    }
    response
}

/// Counts the request, authenticates it, applies faults, resolves the project, runs `handler`
/// and renders its result.
fn handle(
    shared: &Shared,
    method: ApiMethod,
    headers: &HeaderMap,
    project: &str,
    handler: impl FnOnce(&str) -> Result<Value, ApiError>,
) -> Response {
    let injected = {
        let mut state = shared.lock();
        state.counters.request(method);
        if shared.options.require_auth {
            let token = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            if !state.tokens.valid(token.trim()) {
                return ApiError::unauthenticated().into_response();
            }
        }
        state.faults.on_request(method, &shared.options)
    };
    if let Some(injected) = &injected
        && !injected.processed
    {
        return ApiError::injected(injected).into_response();
    }
    let result = resolve_project(shared, project).and_then(|p| handler(&p));
    if let Some(injected) = &injected {
        return ApiError::injected(injected).into_response();
    }
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(error) => error.into_response(),
    }
}

fn resolve_project(shared: &Shared, project: &str) -> Result<String, ApiError> {
    match &shared.options.project {
        None => Ok(project.to_owned()),
        // The client default resolves to the caller's own project (reference §7.4).
        Some(own) if project == own || project == "earthengine-legacy" => Ok(own.clone()),
        Some(_) => Err(ApiError::new(
            403,
            "PERMISSION_DENIED",
            format!("Caller does not have required permission to use project {project}."),
        )),
    }
}

fn parse_body(body: &Bytes, message: &str) -> Result<Value, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::invalid(format!(
            "Request payload size exceeds the limit: {MAX_BODY_BYTES} bytes."
        )));
    }
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("Invalid JSON payload received. {e}")))?
    };
    schema::validate(&value, message).map_err(ApiError::from_violations)?;
    Ok(value)
}

/// The request's `workloadTag`, held to the rule Google's Python client enforces before it
/// sends one (`ee/_state.py`, `_WorkloadTag.validate`): 1 to 63 characters, lowercase letters,
/// digits, dashes and underscores, with a lowercase letter or digit first and last. An empty
/// tag is no tag, as the client drops it (`ee/data.py`, `_maybe_populate_workload_tag`). What
/// Google's server answers to a bad one is not documented; a 400 like its other bad arguments.
fn workload_tag(body: &Value) -> Result<Option<String>, ApiError> {
    let Some(tag) = body.get("workloadTag").and_then(Value::as_str) else {
        return Ok(None);
    };
    if tag.is_empty() {
        return Ok(None);
    }
    let bytes = tag.as_bytes();
    let end_ok = |b: u8| b.is_ascii_digit() || b.is_ascii_lowercase();
    let valid = bytes.len() <= 63
        && end_ok(bytes[0])
        && end_ok(bytes[bytes.len() - 1])
        && bytes.iter().all(|&b| end_ok(b) || b == b'-' || b == b'_');
    if valid {
        Ok(Some(tag.to_owned()))
    } else {
        Err(ApiError::invalid(format!(
            "Invalid workload tag \"{tag}\". Tags must be 1-63 characters, beginning and ending \
             with a lowercase alphanumeric character ([a-z0-9]) with dashes (-), underscores (_), \
             and lowercase alphanumerics between."
        )))
    }
}

async fn compute(
    State(shared): SharedState,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&shared, ApiMethod::ValueCompute, &headers, &project, |_| {
        let body = parse_body(&body, "ComputeValueRequest")?;
        let tag = workload_tag(&body)?;
        let expression = body
            .get("expression")
            .ok_or_else(|| ApiError::invalid("ComputeValueRequest.expression is required."))?;
        let expression =
            expression::parse(expression).map_err(|e| ApiError::invalid(e.to_string()))?;
        let result = evaluate::compute(expression, shared.options.seed)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        shared.lock().counters.compute_tagged(tag.as_deref());
        Ok(json!({ "result": result }))
    })
}

async fn image_export(
    State(shared): SharedState,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(
        &shared,
        ApiMethod::ImageExport,
        &headers,
        &project,
        |project| {
            let body = parse_body(&body, "ExportImageRequest")?;
            let tag = workload_tag(&body)?;
            let mut plan = export::plan(&body, &shared.options)
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            let options = &shared.options;
            let now = shared.clock.now();
            let mut state = shared.lock();
            if let Some(request_id) = &plan.request_id
                && let Some(existing) = state.operations.by_request(project, request_id)
            {
                return match options.duplicate_request {
                    DuplicateRequest::ReturnExisting => Ok(existing.to_json(&shared.clock)),
                    DuplicateRequest::AlreadyExists => Err(ApiError::new(
                        409,
                        "ALREADY_EXISTS",
                        format!("A task with request ID '{request_id}' already exists."),
                    )),
                };
            }
            if state.operations.queued(project) >= options.queue_limit {
                return Err(ApiError::new(
                    429,
                    "RESOURCE_EXHAUSTED",
                    format!(
                        "Too many tasks already in the queue ({}). Please wait for some of them to complete.",
                        options.queue_limit
                    ),
                ));
            }
            let attempt = state.counters.next_attempt(&plan.description);
            if plan.failure.is_none() {
                plan.failure = state
                    .faults
                    .task_failure(&plan.description, attempt, options);
            }
            state.counters.export_started(&plan.description);
            state.counters.export_tagged(tag.as_deref());
            let duration =
                super::operations::task_duration(options, state.operations.all().len() as u64);
            let operation = state
                .operations
                .create(project, plan, options.seed, now, duration);
            Ok(operation.to_json(&shared.clock))
        },
    )
}

async fn get_operation(
    State(shared): SharedState,
    Path((project, operation)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    handle(
        &shared,
        ApiMethod::OperationsGet,
        &headers,
        &project,
        |project| {
            let state = shared.lock();
            let op = state
                .operations
                .get(project, &operation)
                .ok_or_else(|| operation_not_found(project, &operation))?;
            Ok(op.to_json(&shared.clock))
        },
    )
}

async fn cancel_operation(
    State(shared): SharedState,
    Path((project, operation)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // `{name}:cancel` is one path segment; any other POST on an operation is not a method.
    let Some(id) = operation.strip_suffix(":cancel") else {
        return not_found().await;
    };
    handle(
        &shared,
        ApiMethod::OperationsCancel,
        &headers,
        &project,
        |project| {
            parse_body(&body, "CancelOperationRequest")?;
            let now = shared.clock.now();
            match shared.lock().operations.cancel(project, id, now) {
                Some(Ok(())) => Ok(json!({})),
                Some(Err(())) => Err(ApiError::new(
                    400,
                    "FAILED_PRECONDITION",
                    format!("Operation projects/{project}/operations/{id} has already completed."),
                )),
                None => Err(operation_not_found(project, id)),
            }
        },
    )
}

fn operation_not_found(project: &str, id: &str) -> ApiError {
    ApiError::not_found(format!(
        "Operation projects/{project}/operations/{id} not found."
    ))
}

async fn list_operations(
    State(shared): SharedState,
    Path(project): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    handle(
        &shared,
        ApiMethod::OperationsList,
        &headers,
        &project,
        |project| {
            // `filter` has no documented grammar for EE; clients filter locally, so it is ignored.
            let size = match query.get("pageSize").map(|s| s.parse::<i64>()) {
                None => DEFAULT_PAGE_SIZE,
                Some(Ok(n)) if n <= 0 => DEFAULT_PAGE_SIZE,
                Some(Ok(n)) => (n as usize).min(MAX_PAGE_SIZE),
                Some(Err(_)) => return Err(ApiError::invalid("Invalid value for pageSize.")),
            };
            let below = match query.get("pageToken").filter(|t| !t.is_empty()) {
                None => None,
                Some(token) => Some(
                    token
                        .strip_prefix("ops-")
                        .and_then(|t| u64::from_str_radix(t, 16).ok())
                        .ok_or_else(|| ApiError::invalid("Invalid page token."))?,
                ),
            };
            let state = shared.lock();
            let (page, next) = state.operations.page(project, size, below);
            let mut body = json!({});
            if !page.is_empty() {
                body["operations"] = page.iter().map(|op| op.to_json(&shared.clock)).collect();
            }
            if let Some(next) = next {
                body["nextPageToken"] = json!(format!("ops-{next:x}"));
            }
            Ok(body)
        },
    )
}

async fn get_config(
    State(shared): SharedState,
    Path(project): Path<String>,
    headers: HeaderMap,
) -> Response {
    handle(
        &shared,
        ApiMethod::ProjectsGetConfig,
        &headers,
        &project,
        |project| {
            let max = shared.options.max_concurrent_exports;
            Ok(json!({
                "name": format!("projects/{project}/config"),
                "registrationState": "REGISTERED_COMMERCIALLY",
                "maxConcurrentExports": max,
                "planMaxConcurrentExports": max,
            }))
        },
    )
}

async fn token(State(shared): SharedState, body: Bytes) -> Response {
    let (injected, keys) = {
        let mut state = shared.lock();
        state.counters.request(ApiMethod::Token);
        let injected = state.faults.on_request(ApiMethod::Token, &shared.options);
        (injected, state.tokens.keys().to_vec())
    };
    if let Some(injected) = injected {
        return ApiError::injected(&injected).into_response();
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let audiences = match &shared.options.token_audience {
        Some(audience) => vec![audience.clone()],
        None => vec![
            format!("{}/token", shared.url),
            format!(
                "http://localhost:{}/token",
                shared.url.rsplit(':').next().unwrap_or("")
            ),
            GOOGLE_TOKEN_URI.to_owned(),
        ],
    };
    let grant_type = form
        .get("grant_type")
        .map(String::as_str)
        .unwrap_or_default();
    let checked = if grant_type != GRANT_TYPE {
        Err(TokenError::UnsupportedGrantType(grant_type.to_owned()))
    } else {
        let assertion = form
            .get("assertion")
            .map(String::as_str)
            .unwrap_or_default();
        auth::check_assertion(assertion, &keys, &audiences, chrono::Utc::now().timestamp())
    };
    match checked {
        Ok(()) => {
            let expires_in = shared.options.token_expires_in_secs;
            let token = shared.lock().tokens.issue(shared.options.seed, expires_in);
            axum::Json(
                json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}),
            )
            .into_response()
        }
        Err(error) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": error.code(), "error_description": error.to_string()})),
        )
            .into_response(),
    }
}

async fn stats(State(shared): SharedState) -> Response {
    let state = shared.lock();
    axum::Json(state.counters.snapshot(&state.operations)).into_response()
}

/// `{"operations": [{name, description, foreign, state, created, started, ended}, …]}` in
/// emulated seconds: every operation's life.
async fn timeline(State(shared): SharedState) -> Response {
    let timeline = shared.lock().operations.timeline();
    axum::Json(json!({ "operations": timeline })).into_response()
}

/// `{"objects": [{name, size, md5, crc32c, source}, …]}`: every object ever written.
async fn objects(State(shared): SharedState) -> Response {
    let manifest = shared.lock().counters.manifest();
    axum::Json(json!({ "objects": manifest })).into_response()
}

/// Accepts one [`Fault`] or a list of them.
async fn faults(State(shared): SharedState, body: Bytes) -> Response {
    let faults: Result<Vec<Fault>, _> = serde_json::from_slice::<Value>(&body).and_then(|v| {
        if v.is_array() {
            serde_json::from_value(v)
        } else {
            serde_json::from_value(v).map(|f| vec![f])
        }
    });
    match faults {
        Ok(faults) => {
            let mut state = shared.lock();
            for fault in faults {
                state.faults.inject(fault);
            }
            axum::Json(json!({})).into_response()
        }
        Err(e) => ApiError::invalid(format!("Invalid fault: {e}")).into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::not_found("Method not found.").into_response()
}
