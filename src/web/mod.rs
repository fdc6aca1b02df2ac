//! The web console: every campaign's progress, and each campaign on its tile map, served as
//! HTML pages and a JSON API under `/api/v1/` by `cedar worker` and `cedar web`.
//!
//! - `/`: every submission (priority, progress by state, EE tasks, EECU, throughput, ETA), the
//!   `[[ingest]]` entries and the stages' jobs (dead ones among them).
//! - `/campaigns/{name}`: the submitted tiles drawn in the grid's own coordinates and coloured by
//!   state for one collection and period, the tiles × periods matrix, failures by EE message.
//! - `/api/v1/…` ([`api`]): the same data as JSON; `POST …/retry` and `…/cancel` act only when
//!   `[web] allow_actions` is set, with `Authorization: Bearer <[web] token>`. A bearer header,
//!   unlike a cookie, is never sent by a browser on its own, so another site cannot make a
//!   visitor's browser act.
//!
//! Pages are rendered by maud, which escapes every value; `static/console.js` (no build step,
//! no CDN: the console works offline) polls the JSON API every few seconds and writes what it
//! receives with `textContent` and attributes only.

mod api;
mod digest;
mod map;
mod outline;
mod pages;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::config::Config;
use crate::jobs::Context;
use crate::queue::QueueError;
use crate::queue::tracking::TrackingError;

pub use self::api::{Campaign, Detail, OrdersPage, Overview, SCAN_LIMIT, View};
pub use self::pages::campaign_href;

/// The console's script and style sheet, compiled into the binary.
const SCRIPT: &str = include_str!("static/console.js");
const STYLE: &str = include_str!("static/console.css");

/// What the console may show and do.
#[derive(Debug, Clone, Default)]
pub struct ConsoleOptions {
    /// The admission cap the workers apply, shown beside the EE tasks; `None` when unknown.
    pub admission_cap: Option<u64>,
    /// `[web] allow_actions`.
    pub allow_actions: bool,
    /// `[web] token`.
    pub token: Option<String>,
}

impl ConsoleOptions {
    /// The options `[web]` gives, with the admission cap the caller knows.
    pub fn from_config(config: &Config, admission_cap: Option<u64>) -> ConsoleOptions {
        ConsoleOptions {
            admission_cap,
            allow_actions: config.web.allow_actions,
            token: config.web.token().map(str::to_owned),
        }
    }

    /// Retry and cancel act only when allowed and a token guards them.
    pub fn actions_enabled(&self) -> bool {
        self.allow_actions && self.token.is_some()
    }
}

/// Errors of the console, each answered with its HTTP status and `{"error": message}`.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "actions are disabled: set [web] allow_actions = true and [web] token to retry or cancel from the console"
    )]
    ActionsDisabled,
    #[error("a valid `Authorization: Bearer <[web] token>` header is required")]
    Unauthorized,
    #[error("the queue: {0}")]
    Queue(#[from] QueueError),
    #[error("{0}")]
    Internal(String),
}

impl From<TrackingError> for WebError {
    fn from(e: TrackingError) -> Self {
        match e {
            TrackingError::Unknown(_) => WebError::NotFound(e.to_string()),
            e => WebError::Internal(e.to_string()),
        }
    }
}

impl From<anyhow::Error> for WebError {
    fn from(e: anyhow::Error) -> Self {
        WebError::Internal(format!("{e:#}"))
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = match &self {
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::ActionsDisabled => StatusCode::FORBIDDEN,
            WebError::Unauthorized => StatusCode::UNAUTHORIZED,
            WebError::Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "the console could not answer");
        }
        let mut r = (
            status,
            axum::Json(serde_json::json!({"error": self.to_string()})),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// The console's state: the context it reads through, and what it keeps between requests.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Context,
    opts: ConsoleOptions,
    digests: digest::Digests,
    /// The outline under each map drawn so far.
    outlines: outline::Outlines,
    /// Recent (time, finished orders) samples per campaign, for its throughput.
    rates: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
}

impl Console {
    pub fn new(ctx: Context, opts: ConsoleOptions) -> Console {
        Console {
            inner: Arc::new(Inner {
                ctx,
                opts,
                digests: digest::Digests::default(),
                outlines: outline::Outlines::default(),
                rates: Mutex::default(),
            }),
        }
    }

    /// Whether `headers` may run an action: actions allowed, and the configured token given as
    /// a bearer token. The comparison is of hashes, so its time tells nothing about the token.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), WebError> {
        let opts = &self.inner.opts;
        let (true, Some(token)) = (opts.allow_actions, opts.token.as_deref()) else {
            return Err(WebError::ActionsDisabled);
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(WebError::Unauthorized)?;
        if Sha256::digest(given.trim().as_bytes()) == Sha256::digest(token.as_bytes()) {
            Ok(())
        } else {
            Err(WebError::Unauthorized)
        }
    }
}

/// The console's routes (pages, script, style sheet and API).
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(pages::campaigns))
        .route("/campaigns/{name}", get(pages::campaign))
        .route("/static/console.js", get(script))
        .route("/static/console.css", get(style))
        .route("/api/v1/campaigns", get(api::get_campaigns))
        .route("/api/v1/campaigns/{name}", get(api::get_campaign))
        .route("/api/v1/campaigns/{name}/view", get(api::get_view))
        .route("/api/v1/campaigns/{name}/orders", get(api::get_orders))
        .route("/api/v1/campaigns/{name}/retry", post(api::post_retry))
        .route("/api/v1/campaigns/{name}/cancel", post(api::post_cancel))
        .layer(axum::middleware::map_response(secure))
        .with_state(console)
}

/// Headers that keep the console's pages from running anything but its own script, from being
/// framed by another site, and from being read as another type than they are.
async fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// Serves the console on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    console: Console,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(console))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}
