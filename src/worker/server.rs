//! The worker's HTTP endpoint: `/metrics` (the catalogue in [`crate::metrics`]), `/healthz` and
//! `/readyz`, the web console ([`crate::web`]) on the same listener when `[web] listen` is
//! `[metrics] listen` (else on its own), and the collector that reads the queue's numbers (and
//! what each `[[ingest]]` entry has done) into their gauges.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::Utc;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::config::WebPlacement;
use crate::earthengine::EE_QUEUE_CAP;
use crate::earthengine::types::OpView;
use crate::jobs::Context;
use crate::metrics;
use crate::queue::Stage;
use crate::queue::tracking::OrderState;
use crate::schedule;
use crate::web::{Console, ConsoleOptions};

/// How often the collector reads the queue, tracking and snapshot numbers.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(10);
/// How long `/readyz` waits for each dependency.
const READY_TIMEOUT: Duration = Duration::from_secs(3);
/// The prefix the store probe lists: no object is ever named so, so the answer is empty and cheap.
const STORE_PROBE: &str = ".cedar-readyz-probe";

/// Serves `/metrics`, `/healthz` and `/readyz` on `[metrics] listen` and runs the collector,
/// until `stop` turns true. A worker that cannot bind (the port is taken, e.g. by a second
/// worker on the host) logs an error naming the fix and keeps processing jobs without the
/// endpoint: losing metrics must not stop a campaign that has run for weeks.
///
/// `ee_concurrency` is EE's export concurrency and its source, when the worker read it.
pub async fn serve(
    ctx: Context,
    admission_cap: u64,
    ee_concurrency: Option<(u64, &'static str)>,
    mut stop: watch::Receiver<bool>,
) {
    let handle = metrics::install();
    metrics::admission_cap(admission_cap, EE_QUEUE_CAP);
    if let Some((max, source)) = ee_concurrency {
        metrics::ee_max_concurrent_exports(max, source);
    }
    let settings = &ctx.settings;
    metrics::configure(
        settings.ingests.iter().map(|i| i.name.as_str()),
        settings.collections.keys().map(String::as_str),
    );
    let collector = tokio::spawn(collect_loop(ctx.clone(), handle, stop.clone()));
    let console = Console::new(
        ctx.clone(),
        ConsoleOptions::from_config(&ctx.settings.config, Some(admission_cap)),
    );
    let listen = ctx.settings.config.metrics.listen.clone();
    let placement = ctx.settings.config.web.placement(&listen);
    let shared = placement == WebPlacement::Metrics;
    let web = match placement {
        WebPlacement::Own(addr) => Some(tokio::spawn(serve_console(
            addr.to_owned(),
            console.clone(),
            stop.clone(),
        ))),
        WebPlacement::Off(why) => {
            tracing::info!("the web console is not served: {why}");
            None
        }
        WebPlacement::Metrics => None,
    };
    let addr: Option<SocketAddr> = listen.parse().ok();
    let listener = match addr {
        Some(a) => tokio::net::TcpListener::bind(a)
            .await
            .map_err(|e| e.to_string()),
        None => Err("not a socket address".to_owned()),
    };
    match listener {
        Ok(listener) => {
            let local = listener.local_addr().map(|a| a.to_string());
            let addr = local.unwrap_or_else(|_| listen.clone());
            tracing::info!(addr = %addr, "serving metrics at /metrics, /healthz, /readyz");
            let mut app = router(ctx, handle);
            if shared {
                tracing::info!(addr = %addr, "serving the web console at http://{addr}/");
                app = app.merge(crate::web::router(console));
            }
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        }
        Err(e) => tracing::error!(
            listen = %listen,
            error = %e,
            "cannot serve metrics; set [metrics] listen to a free address (each worker on a host needs its own port)"
        ),
    }
    let _ = collector.await;
    if let Some(web) = web {
        let _ = web.await;
    }
}

/// Serves the console on its own listener, `[web] listen`; like the metrics, a console that
/// cannot bind is logged and the worker goes on without it.
async fn serve_console(listen: String, console: Console, stop: watch::Receiver<bool>) {
    let listener = match listen.parse::<SocketAddr>() {
        Ok(a) => tokio::net::TcpListener::bind(a)
            .await
            .map_err(|e| e.to_string()),
        Err(_) => Err("not a socket address".to_owned()),
    };
    match listener {
        Ok(listener) => {
            let addr = listener
                .local_addr()
                .map_or_else(|_| listen.clone(), |a| a.to_string());
            tracing::info!(addr = %addr, "serving the web console at http://{addr}/");
            if let Err(e) = crate::web::serve(listener, console, stop).await {
                tracing::error!(error = %e, "the web console stopped");
            }
        }
        Err(e) => tracing::error!(
            listen = %listen,
            error = %e,
            "cannot serve the web console; set [web] listen to a free address"
        ),
    }
}

fn router(ctx: Context, handle: &'static PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || async move {
                // Counted in `auth`, which sits below the metrics module: read at each scrape.
                metrics::auth_token_refreshes(&crate::auth::token_refreshes());
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ctx)
}

/// 200 when the queue (Redis) and the store answer, else 503 naming what does not (details go to the log).
async fn readyz(State(ctx): State<Context>) -> impl IntoResponse {
    let (queue, store) = tokio::join!(queue_ok(&ctx), store_ok(&ctx));
    let mut body = String::new();
    for (name, ok) in [("queue", queue), ("store", store)] {
        let _ = writeln!(body, "{name}: {}", if ok { "ok" } else { "unreachable" });
    }
    let status = if queue && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

async fn queue_ok(ctx: &Context) -> bool {
    answers("queue", "the queue (Redis)", ctx.queue.ping()).await
}

async fn store_ok(ctx: &Context) -> bool {
    answers("store", "the export store", ctx.bucket.list(STORE_PROBE)).await
}

/// Whether the dependency `name` (described as `what` in the log) answers `probe` within
/// [`READY_TIMEOUT`]; records the answer in its up gauge and logs why it did not.
async fn answers<T, E: std::fmt::Display>(
    name: &'static str,
    what: &str,
    probe: impl Future<Output = Result<T, E>>,
) -> bool {
    let ok = match tokio::time::timeout(READY_TIMEOUT, probe).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: {what} does not answer");
            false
        }
        Err(_) => {
            tracing::warn!("readiness: {what} timed out");
            false
        }
    };
    metrics::dependency_up(name, ok);
    ok
}

async fn collect_loop(
    ctx: Context,
    handle: &'static PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let ok = collect(&ctx).await;
        if let Err(e) = &ok {
            tracing::warn!(error = %e, "collecting queue metrics failed");
        }
        metrics::dependency_up("queue", ok.is_ok());
        store_ok(&ctx).await;
        // Drains histogram samples into their buckets, so memory stays flat between scrapes.
        handle.run_upkeep();
        tokio::select! {
            _ = tokio::time::sleep(COLLECT_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Reads the numbers that live in the queue (Redis or SQLite) into their gauges.
async fn collect(ctx: &Context) -> anyhow::Result<()> {
    for stage in Stage::ALL {
        metrics::queue_depth(stage, &ctx.queue.depth(stage).await?);
    }
    metrics::ee_tasks_active(ctx.queue.active_count().await?);

    let tallies = ctx.tracker.tallies().await?;
    let mut orders: BTreeMap<OrderState, u64> = BTreeMap::new();
    for (state, n) in tallies.values().flatten() {
        *orders.entry(*state).or_default() += n;
    }
    metrics::orders(&orders);

    // Each ingest entry from the same tallies: besides them, at most two submission records
    // per entry are read, however many periods it has submitted.
    let now = Utc::now();
    for s in schedule::status(&ctx.tracker, &ctx.settings.ingests, &tallies, now).await? {
        let latest = s.last_submitted.as_ref();
        metrics::ingest(&metrics::IngestFacts {
            name: &s.name,
            last_submitted_end: latest.map(|l| l.period.end),
            last_submission: latest.map(|l| l.submitted),
            last_complete_end: s.last_complete.map(|p| p.end),
            latest_orders: latest.map(|l| l.orders.clone()).unwrap_or_default(),
            next: s.next,
        });
    }

    // The operations snapshot the sweeper writes: one entry per EE task cedar waits for.
    let views: Vec<OpView> = ctx
        .snapshot
        .views()
        .await?
        .iter()
        .filter_map(|raw| serde_json::from_str(raw).ok())
        .collect();
    metrics::ee_tasks(views.iter().map(|v| (v.state.as_str(), v.start)), now);
    Ok(())
}
