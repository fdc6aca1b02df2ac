//! Metrics are the numbers every `cedar worker` serves to Prometheus; this module is the one
//! place that defines them.
//!
//! [`CATALOGUE`] lists every metric as data — name, type, unit, labels with every value they may
//! take, meaning — and both the registration ([`install`]) and the table in `docs/metrics.md`
//! ([`catalogue_markdown`]) are produced from it, so the two cannot drift apart (a test fails
//! when the file is stale). Names follow `cedar_<name>_<unit>[_total]` in base units, and every
//! label value comes from a fixed list, or from the names the configuration gives (`ingest`
//! entries and `collection` IDs, [`CONFIGURED`]): never a tile, a tracking name, an operation or
//! an error text. A value outside its list is recorded as `other`, so a new EE method or error
//! can never grow the number of series.
//!
//! The code records through the small functions below (`job_done`, `ee_request`,
//! `downloaded`, `order_failed`, …), one line at each place where something happens. Numbers
//! that live in Redis — queue depths, orders per state, EE tasks in flight, what each
//! `[[ingest]]` entry has done — are read by the worker's collector
//! (`crate::worker`) every few seconds and recorded here too; every worker reports the same values for them, so dashboards and alerts
//! aggregate those with `max`, and per-process counters with `sum`.
//!
//! The worker's HTTP server answers `/metrics` with [`install`]'s handle, beside `/healthz` and
//! `/readyz`, on `[metrics] listen`.
//!
//! apalis's own `PrometheusLayer` is not used: it labels every series with the worker name,
//! which is unique per process start (see [`crate::queue::worker_name`]), so each restart would
//! add series forever.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::period::Period;
use crate::queue::tracking::OrderState;
use crate::queue::{Depth, Outcome, Stage};
use crate::store::StoreError;

/// How a metric behaves, in Prometheus terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A label and every value it may take.
#[derive(Debug, Clone, Copy)]
pub struct LabelDef {
    pub name: &'static str,
    pub values: &'static [&'static str],
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    /// The base unit the value is in (`seconds`, `bytes`, or what is counted).
    pub unit: &'static str,
    pub labels: &'static [LabelDef],
    /// What the number means, for `# HELP` and the docs.
    pub help: &'static str,
    /// Histogram bucket upper bounds; empty for counters and gauges.
    pub buckets: &'static [f64],
}

/// The `other` value every open-ended label falls back to.
pub const OTHER: &str = "other";

const STAGE: LabelDef = LabelDef {
    name: "stage",
    values: &["export", "poll", "download", "clean"],
};
const OUTCOME: LabelDef = LabelDef {
    name: "outcome",
    values: &["done", "snoozed", "pushed_back", "retried", "failed"],
};
const ERROR_CLASS: LabelDef = LabelDef {
    name: "error_class",
    values: &[
        "ee_throttled",
        "ee_server",
        "ee_network",
        "ee_other",
        "queue",
        "incomplete_export",
        OTHER,
    ],
};
const EE_METHOD: LabelDef = LabelDef {
    name: "method",
    values: &[
        "value:compute",
        "image:export",
        "operations.get",
        "operations.list",
        "operations.cancel",
        "projects.getConfig",
        OTHER,
    ],
};
const CODE_CLASS: LabelDef = LabelDef {
    name: "code_class",
    values: &["2xx", "3xx", "4xx", "5xx", "transport", OTHER],
};
const EE_STATE: LabelDef = LabelDef {
    name: "ee_state",
    values: &[
        "PENDING",
        "RUNNING",
        "CANCELLING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "UNKNOWN",
    ],
};
const EE_END_STATE: LabelDef = LabelDef {
    name: "ee_state",
    values: &["SUCCEEDED", "FAILED", "CANCELLED"],
};
const ORDER_STATE: LabelDef = LabelDef {
    name: "state",
    values: &[
        "QUEUED",
        "PENDING",
        "RUNNING",
        "CANCELLING",
        "SUCCEEDED",
        "DOWNLOADED",
        "CLEANED",
        "EMPTY",
        "FAILED",
        "CANCELLED",
        "LOST",
    ],
};
const QUEUE_STATE: LabelDef = LabelDef {
    name: "state",
    values: &["backlog", "due", "scheduled", "leased", "dead"],
};
const CHECK: LabelDef = LabelDef {
    name: "check",
    values: &["size", "md5", "crc32c", OTHER],
};
const CONCURRENCY_SOURCE: LabelDef = LabelDef {
    name: "source",
    values: &["v1alpha", "v1", "default"],
};
const DEPENDENCY: LabelDef = LabelDef {
    name: "dependency",
    values: &["queue", "store"],
};
const VERSION: LabelDef = LabelDef {
    name: "version",
    values: &[env!("CARGO_PKG_VERSION")],
};

// Continuous ingest and failed orders. `ingest` and `collection` take the names the worker's
// configuration gives ([`CONFIGURED`]): bounded by it, and created at zero by [`configure`].
const INGEST: LabelDef = LabelDef {
    name: "ingest",
    values: &[],
};
const COLLECTION: LabelDef = LabelDef {
    name: "collection",
    values: &[OTHER],
};
const ORIGIN: LabelDef = LabelDef {
    name: "origin",
    values: &["ingest", "manual"],
};
const REFRESH_REASON: LabelDef = LabelDef {
    name: "reason",
    values: &["expiring", "unauthorized"],
};
const FAILURE_CAUSE: LabelDef = LabelDef {
    name: "cause",
    values: &["ee_task", "lost", "job"],
};

/// Labels that take, besides their fixed values, the names the configuration gives: the label
/// and where its values come from.
pub const CONFIGURED: &[(&str, &str)] = &[
    ("ingest", "the name of each `[[ingest]]` entry"),
    ("collection", "each collection ID under `[collections]`"),
];

/// From 10 ms (a snooze) to 10 min (a large download).
const JOB_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// From a minute to EE's 10-day limit on a task.
const EE_TASK_BUCKETS: &[f64] = &[
    60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0,
    432000.0, 864000.0,
];

/// Every metric cedar exports.
pub const CATALOGUE: &[MetricDef] = &[
    MetricDef {
        name: "cedar_build_info",
        kind: Kind::Gauge,
        unit: "info",
        labels: &[VERSION],
        help: "Always 1; the version label names the running cedar.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_jobs_finished_total",
        kind: Kind::Counter,
        unit: "jobs",
        labels: &[STAGE, OUTCOME],
        help: "Job runs by stage and outcome: done, snoozed (waiting, no retry spent), retried (failed, will run again), failed (fatal or out of attempts; the order is FAILED).",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_job_retries_total",
        kind: Kind::Counter,
        unit: "jobs",
        labels: &[STAGE, ERROR_CLASS],
        help: "Job runs that failed with a retryable error and were scheduled again, by stage and error class.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_job_duration_seconds",
        kind: Kind::Histogram,
        unit: "seconds",
        labels: &[STAGE],
        help: "Time one job run took in its handler, whatever its outcome.",
        buckets: JOB_BUCKETS,
    },
    MetricDef {
        name: "cedar_last_success_timestamp_seconds",
        kind: Kind::Gauge,
        unit: "seconds",
        labels: &[STAGE],
        help: "Unix time of this process's last job of the stage that finished done; 0 until one does.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ee_requests_total",
        kind: Kind::Counter,
        unit: "requests",
        labels: &[EE_METHOD, CODE_CLASS],
        help: "HTTP requests sent to the Earth Engine REST API, by method and HTTP status class (transport: no response, e.g. timeout or refused connection).",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_auth_token_refreshes_total",
        kind: Kind::Counter,
        unit: "tokens",
        labels: &[REFRESH_REASON],
        help: "OAuth access tokens this process replaced: expiring (less than 4 min left), unauthorized (Earth Engine or Cloud Storage answered 401; the call was sent again once with the new token). A first token is not counted.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ee_tasks_active",
        kind: Kind::Gauge,
        unit: "tasks",
        labels: &[],
        help: "EE export tasks holding an admission slot (submitted, not yet ended), across all workers of the namespace.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ee_admission_cap",
        kind: Kind::Gauge,
        unit: "tasks",
        labels: &[],
        help: "The most EE tasks this worker lets be in flight at once (--max-active-exports, or EE's maxConcurrentExports x factor).",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ee_admission_room",
        kind: Kind::Gauge,
        unit: "tasks",
        labels: &[],
        help: "The admission cap learnt from EE's queue: its limit less other pipelines' tasks, grown while exports are accepted (the configured cap until EE first says its queue is full).",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ee_other_tasks",
        kind: Kind::Gauge,
        unit: "tasks",
        labels: &[],
        help: "Tasks of other pipelines PENDING or RUNNING in the EE project at the last sweep: they share its run slots and queue.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ee_queue_full_total",
        kind: Kind::Counter,
        unit: "",
        labels: &[],
        help: "Exports EE refused because its task queue was full; each gave its admission slot back and waits at the front of the backlog.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ee_max_concurrent_exports",
        kind: Kind::Gauge,
        unit: "tasks",
        labels: &[CONCURRENCY_SOURCE],
        help: "Exports EE runs at once for the project, as this worker read it at start, on the series of where it came from: maxConcurrentExports of the v1alpha project config, else of the v1 one, else the default of 2 (0 on the others; all 0 when --max-active-exports is given).",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_eecu_seconds_total",
        kind: Kind::Counter,
        unit: "seconds",
        labels: &[COLLECTION],
        help: "EECU-seconds (batchEecuUsageSeconds) EE billed for the export tasks this process saw end, by collection; each task counted once across all workers.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_eecu_window_seconds",
        kind: Kind::Gauge,
        unit: "seconds",
        labels: &[],
        help: "EECU-seconds the ended tasks of the namespace used in the EECU budget's rolling window ([limits] eecu_window_secs, a day).",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_eecu_budget_seconds",
        kind: Kind::Gauge,
        unit: "seconds",
        labels: &[],
        help: "The EECU budget per window in EECU-seconds ([limits] eecu_hours_per_day x 3600); 0 when there is none.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_eecu_budget_paused",
        kind: Kind::Gauge,
        unit: "",
        labels: &[],
        help: "1 while admission is paused because the window's EECU use reached the budget (no new export starts), else 0.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ee_queue_cap",
        kind: Kind::Gauge,
        unit: "tasks",
        labels: &[],
        help: "EE's documented limit of pending batch tasks per project (3000).",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ee_tasks",
        kind: Kind::Gauge,
        unit: "tasks",
        labels: &[EE_STATE],
        help: "EE tasks cedar waits for, by the state the last operations sweep saw.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ee_task_running_oldest_age_seconds",
        kind: Kind::Gauge,
        unit: "seconds",
        labels: &[],
        help: "How long the longest-running EE task cedar waits for has been RUNNING (0 if none).",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ee_task_duration_seconds",
        kind: Kind::Histogram,
        unit: "seconds",
        labels: &[EE_END_STATE],
        help: "Run time of EE tasks (start to end, as EE reports them), observed when a poll job sees the task end.",
        buckets: EE_TASK_BUCKETS,
    },
    MetricDef {
        name: "cedar_orders",
        kind: Kind::Gauge,
        unit: "orders",
        labels: &[ORDER_STATE],
        help: "Orders (collection x tile x period) per tracking state, summed over every submission in the namespace.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_queue_jobs",
        kind: Kind::Gauge,
        unit: "jobs",
        labels: &[STAGE, QUEUE_STATE],
        help: "Jobs in the queue of a stage: backlog (exports waiting for admission), due (runnable now), scheduled (due later: backoff or snooze), leased (running), dead (given up).",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_queue_oldest_waiting_age_seconds",
        kind: Kind::Gauge,
        unit: "seconds",
        labels: &[STAGE],
        help: "How long the oldest due job of a stage has waited for a worker (0 if none).",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_download_bytes_total",
        kind: Kind::Counter,
        unit: "bytes",
        labels: &[],
        help: "Bytes copied from the export bucket to the destination and verified.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_scene_list_read_bytes_total",
        kind: Kind::Counter,
        unit: "bytes",
        labels: &[],
        help: "Bytes of metadata JSON a re-run export read back from the export bucket, to export the scenes listed the first time.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_download_checksum_failures_total",
        kind: Kind::Counter,
        unit: "objects",
        labels: &[CHECK],
        help: "Downloads refused because the bytes received did not match the bucket's size, MD5 or CRC32C.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_download_resumes_total",
        kind: Kind::Counter,
        unit: "requests",
        labels: &[],
        help: "Ranged GETs that resumed a download cut mid-body from the bytes already written.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_dependency_up",
        kind: Kind::Gauge,
        unit: "boolean",
        labels: &[DEPENDENCY],
        help: "1 if the last check of the dependency succeeded, else 0: queue (Redis, or the SQLite file), store (the export bucket).",
        buckets: &[],
    },
    // Continuous ingest: one series per `[[ingest]]` entry, read from the tracking state.
    MetricDef {
        name: "cedar_ingest_last_submitted_period_end_timestamp_seconds",
        kind: Kind::Gauge,
        unit: "seconds",
        labels: &[INGEST],
        help: "End (exclusive, 00:00 UTC) of the newest period the ingest entry submitted; 0 before its first.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ingest_last_submission_timestamp_seconds",
        kind: Kind::Gauge,
        unit: "seconds",
        labels: &[INGEST],
        help: "When the ingest entry's newest period was submitted; 0 before its first.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ingest_last_complete_period_end_timestamp_seconds",
        kind: Kind::Gauge,
        unit: "seconds",
        labels: &[INGEST],
        help: "End of the newest period of the ingest entry whose every order is complete (CLEANED or EMPTY); 0 until one is.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ingest_latest_period_orders",
        kind: Kind::Gauge,
        unit: "orders",
        labels: &[INGEST, ORDER_STATE],
        help: "Orders of the ingest entry's newest submitted period, per tracking state.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ingest_next_due_timestamp_seconds",
        kind: Kind::Gauge,
        unit: "seconds",
        labels: &[INGEST],
        help: "When the ingest entry's first period not yet submitted is due (its end plus lag_days, 00:00 UTC); workers submit it at the next cron time after that, so a time long past means the entry is behind its schedule.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_ingest_next_period_seconds",
        kind: Kind::Gauge,
        unit: "seconds",
        labels: &[INGEST],
        help: "Length of the ingest entry's first period not yet submitted (the one due at cedar_ingest_next_due_timestamp_seconds), so that alerts can allow a delay of one period.",
        buckets: &[],
    },
    MetricDef {
        name: "cedar_order_failures_total",
        kind: Kind::Counter,
        unit: "orders",
        labels: &[COLLECTION, ORIGIN, FAILURE_CAUSE],
        help: "Orders this process saw fail, by collection, by origin (ingest: the submission was made by an [[ingest]] entry; manual: by cedar submit) and cause: ee_task (EE ended the task FAILED), lost (EE no longer knows the operation), job (cedar gave up a job: fatal error or out of attempts).",
        buckets: &[],
    },
];

/// `value` if the label allows it, else [`OTHER`] (for labels that have it).
fn bounded(label: &LabelDef, value: &str) -> &'static str {
    label
        .values
        .iter()
        .find(|v| **v == value)
        .copied()
        .unwrap_or(OTHER)
}

/// The recorder, installed once per process; `/metrics` renders it.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        for d in CATALOGUE.iter().filter(|d| d.kind == Kind::Histogram) {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(d.name.to_owned()), d.buckets)
                .expect("catalogue buckets are non-empty");
        }
        let handle = match builder.install_recorder() {
            Ok(h) => h,
            Err(e) => {
                // Another recorder owns the facade; metrics still render, but stay empty.
                tracing::error!(error = %e, "cannot install the Prometheus recorder");
                PrometheusBuilder::new().build_recorder().handle()
            }
        };
        register();
        handle
    })
}

/// Describes every metric and creates every labelled series at zero, so that `rate()` works
/// from the first event and a missing series means a missing worker, not a quiet one.
fn register() {
    for d in CATALOGUE {
        let unit = match d.unit {
            "seconds" => ::metrics::Unit::Seconds,
            "bytes" => ::metrics::Unit::Bytes,
            _ => ::metrics::Unit::Count,
        };
        match d.kind {
            Kind::Counter => ::metrics::describe_counter!(d.name, unit, d.help),
            Kind::Gauge => ::metrics::describe_gauge!(d.name, unit, d.help),
            Kind::Histogram => ::metrics::describe_histogram!(d.name, unit, d.help),
        }
        for labels in label_sets(d.labels) {
            match d.kind {
                Kind::Counter => ::metrics::counter!(d.name, &labels).increment(0),
                Kind::Gauge => ::metrics::gauge!(d.name, &labels).set(0.0),
                Kind::Histogram => {
                    let _ = ::metrics::histogram!(d.name, &labels);
                }
            }
        }
    }
    ::metrics::gauge!("cedar_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Every combination of label values (one empty set for a metric without labels).
fn label_sets(labels: &[LabelDef]) -> Vec<Vec<(&'static str, &'static str)>> {
    let mut sets = vec![Vec::new()];
    for l in labels {
        sets = sets
            .into_iter()
            .flat_map(|set| {
                l.values.iter().map(move |v| {
                    let mut s = set.clone();
                    s.push((l.name, *v));
                    s
                })
            })
            .collect();
    }
    sets
}

/// Runs a handler and records how long it took.
pub async fn timed<T>(stage: Stage, run: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = run.await;
    ::metrics::histogram!("cedar_job_duration_seconds", "stage" => stage.name())
        .record(started.elapsed().as_secs_f64());
    out
}

/// Records a job run that succeeded (done or snoozed); returns its outcome unchanged.
pub fn job_done(stage: Stage, outcome: Outcome) -> Outcome {
    let label = match outcome {
        Outcome::Done => {
            ::metrics::gauge!("cedar_last_success_timestamp_seconds", "stage" => stage.name())
                .set(Utc::now().timestamp() as f64);
            "done"
        }
        Outcome::Snooze { .. } => "snoozed",
        Outcome::Backlog => "pushed_back",
    };
    finished(stage, label);
    outcome
}

/// Records a job run that failed with a retryable error and will run again.
pub fn job_retried(stage: Stage, message: &str) {
    finished(stage, "retried");
    ::metrics::counter!(
        "cedar_job_retries_total",
        "stage" => stage.name(),
        "error_class" => error_class(message)
    )
    .increment(1);
}

/// Records a job run that failed for good (fatal, or out of attempts).
pub fn job_failed(stage: Stage) {
    finished(stage, "failed");
}

fn finished(stage: Stage, outcome: &'static str) {
    ::metrics::counter!(
        "cedar_jobs_finished_total",
        "stage" => stage.name(),
        "outcome" => outcome
    )
    .increment(1);
}

/// The class of a retryable job error, from the message its source wrote: the EE client's
/// errors start with `Earth Engine {method}:` and say the HTTP status, queue errors start with
/// `Redis:` or `SQLite:`. Anything else (storage, mostly) is `other`.
pub fn error_class(message: &str) -> &'static str {
    if let Some(rest) = message.strip_prefix("Earth Engine ") {
        let status = rest
            .split_once(": HTTP ")
            .and_then(|(_, s)| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok());
        return match status {
            Some(429) => "ee_throttled",
            Some(500..=599) => "ee_server",
            Some(_) => "ee_other",
            None if rest.contains(": timed out") || rest.contains(": connection failed") => {
                "ee_network"
            }
            None => "ee_other",
        };
    }
    // The queue's own errors, whichever backend holds it: Redis or the SQLite file.
    if ["Redis: ", "redis: ", "SQLite: "]
        .iter()
        .any(|p| message.starts_with(p))
    {
        "queue"
    } else if message.starts_with("incomplete export") {
        "incomplete_export"
    } else {
        OTHER
    }
}

/// Records one HTTP request to EE: `status` is `None` when no response came back.
pub fn ee_request(method: &str, status: Option<u16>) {
    let class = match status {
        None => "transport",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => OTHER,
    };
    ::metrics::counter!(
        "cedar_ee_requests_total",
        "method" => bounded(&EE_METHOD, method),
        "code_class" => class
    )
    .increment(1);
}

/// Records the token refreshes `crate::auth` has counted, per reason (`auth::token_refreshes`),
/// as the counter's value: the worker calls this before every `/metrics` answer.
pub fn auth_token_refreshes(counts: &[(&'static str, u64)]) {
    for (reason, n) in counts {
        ::metrics::counter!(
            "cedar_auth_token_refreshes_total",
            "reason" => bounded(&REFRESH_REASON, reason)
        )
        .absolute(*n);
    }
}

/// Records bytes written to the destination and verified.
pub fn downloaded(bytes: u64) {
    ::metrics::counter!("cedar_download_bytes_total").increment(bytes);
}

/// Records a download resumed from the bytes already written after its transfer was cut.
pub fn download_resumed() {
    ::metrics::counter!("cedar_download_resumes_total").increment(1);
}

/// Records a metadata JSON read back from the bucket by a re-run export.
pub fn scene_list_read(bytes: u64) {
    ::metrics::counter!("cedar_scene_list_read_bytes_total").increment(bytes);
}

/// Records a failed download write; only checksum and size mismatches count.
pub fn download_error(e: &StoreError) {
    if let StoreError::Mismatch { what, .. } = e {
        ::metrics::counter!(
            "cedar_download_checksum_failures_total",
            "check" => bounded(&CHECK, what)
        )
        .increment(1);
    }
}

/// Records an EE task that ended in `state`, with the start and end times EE reported.
pub fn ee_task_ended(state: &str, start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) {
    let (Some(start), Some(end)) = (start, end) else {
        return;
    };
    if !EE_END_STATE.values.contains(&state) {
        return;
    }
    let secs = (end - start).num_milliseconds().max(0) as f64 / 1000.0;
    ::metrics::histogram!(
        "cedar_ee_task_duration_seconds",
        "ee_state" => bounded(&EE_END_STATE, state)
    )
    .record(secs);
}

/// Records the depth of one stage's queue.
pub fn queue_depth(stage: Stage, d: &Depth) {
    for (state, n) in [
        ("backlog", d.backlog),
        ("due", d.due_now),
        ("scheduled", d.scheduled),
        ("leased", d.leased),
        ("dead", d.dead),
    ] {
        ::metrics::gauge!("cedar_queue_jobs", "stage" => stage.name(), "state" => state)
            .set(n as f64);
    }
    ::metrics::gauge!("cedar_queue_oldest_waiting_age_seconds", "stage" => stage.name())
        .set(d.oldest_due_age_secs as f64);
}

/// Records the EE tasks that hold an admission slot.
pub fn ee_tasks_active(active: u64) {
    ::metrics::gauge!("cedar_ee_tasks_active").set(active as f64);
}

/// Records the admission cap a worker runs with, and EE's cap on queued tasks per project.
pub fn admission_cap(cap: u64, ee_queue_cap: u64) {
    ::metrics::gauge!("cedar_ee_admission_cap").set(cap as f64);
    ::metrics::gauge!("cedar_ee_queue_cap").set(ee_queue_cap as f64);
}

/// Records the admission room learnt from EE's queue.
pub fn admission_room(room: u64) {
    ::metrics::gauge!("cedar_ee_admission_room").set(room as f64);
}

/// Records other pipelines' tasks seen queued in the EE project.
pub fn other_tasks(n: u64) {
    ::metrics::gauge!("cedar_ee_other_tasks").set(n as f64);
}

/// Counts an export EE refused with a full queue.
pub fn queue_full() {
    ::metrics::counter!("cedar_ee_queue_full_total").increment(1);
}

/// Records EE's export concurrency a worker read at start, and where it came from
/// (`v1alpha`, `v1` or `default`).
pub fn ee_max_concurrent_exports(max: u64, source: &'static str) {
    let source = bounded(&CONCURRENCY_SOURCE, source);
    ::metrics::gauge!("cedar_ee_max_concurrent_exports", "source" => source).set(max as f64);
}

/// Records the orders of every submission by state (summed over submissions).
pub fn orders(counts: &BTreeMap<OrderState, u64>) {
    for state in OrderState::ALL {
        let n = counts.get(&state).copied().unwrap_or(0);
        ::metrics::gauge!("cedar_orders", "state" => state.as_str()).set(n as f64);
    }
}

/// Records the EE tasks cedar waits for, by the state the last sweep saw (with the start time
/// EE reported), and the age of the oldest RUNNING one at `now`.
pub fn ee_tasks<'a>(
    tasks: impl IntoIterator<Item = (&'a str, Option<DateTime<Utc>>)>,
    now: DateTime<Utc>,
) {
    let mut per_state: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut oldest_running = 0.0f64;
    for (seen, start) in tasks {
        let state = EE_STATE
            .values
            .iter()
            .find(|v| **v == seen)
            .copied()
            .unwrap_or("UNKNOWN");
        *per_state.entry(state).or_default() += 1;
        if state == "RUNNING"
            && let Some(start) = start
        {
            let age = (now - start).num_milliseconds().max(0) as f64 / 1000.0;
            oldest_running = oldest_running.max(age);
        }
    }
    for state in EE_STATE.values {
        let n = per_state.get(state).copied().unwrap_or(0);
        ::metrics::gauge!("cedar_ee_tasks", "ee_state" => *state).set(n as f64);
    }
    ::metrics::gauge!("cedar_ee_task_running_oldest_age_seconds").set(oldest_running);
}

/// Records whether a dependency (`queue` or `store`) answered.
pub fn dependency_up(dependency: &'static str, up: bool) {
    ::metrics::gauge!("cedar_dependency_up", "dependency" => bounded(&DEPENDENCY, dependency))
        .set(f64::from(up));
}

/// The collection IDs of the configuration ([`configure`]); a failure in any other collection is
/// recorded as `other`.
static COLLECTIONS: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

/// Creates at zero the series whose label values the configuration gives: the gauges of every
/// `[[ingest]]` entry in `ingests`, and the failure counters of every collection in
/// `collections` (plus `other`), so that `increase()` sees a first failure and an entry that has
/// not submitted yet is shown. Call it once, when the worker starts.
pub fn configure<'a>(
    ingests: impl IntoIterator<Item = &'a str>,
    collections: impl IntoIterator<Item = &'a str>,
) {
    let mut known = COLLECTIONS.write().expect("collections lock");
    known.extend(collections.into_iter().map(str::to_owned));
    for collection in known.iter().map(String::as_str).chain([OTHER]) {
        for origin in ORIGIN.values {
            for cause in FAILURE_CAUSE.values {
                ::metrics::counter!(
                    "cedar_order_failures_total",
                    "collection" => collection.to_owned(),
                    "origin" => *origin,
                    "cause" => *cause
                )
                .increment(0);
            }
        }
        ::metrics::counter!("cedar_eecu_seconds_total", "collection" => collection.to_owned())
            .increment(0);
    }
    drop(known);
    for name in ingests {
        ingest(&IngestFacts {
            name,
            ..IngestFacts::default()
        });
    }
}

/// Why an order failed, for `cedar_order_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// EE ended the export task FAILED.
    EeTask,
    /// EE no longer knows the operation.
    Lost,
    /// cedar gave up a job of the order: a fatal error, or out of attempts.
    Job,
}

impl FailureCause {
    fn label(self) -> &'static str {
        match self {
            FailureCause::EeTask => "ee_task",
            FailureCause::Lost => "lost",
            FailureCause::Job => "job",
        }
    }
}

/// The collection label of `collection`: itself if the configuration names it, else `other`.
fn collection_label(collection: &str) -> String {
    let known = COLLECTIONS
        .read()
        .expect("collections lock")
        .contains(collection);
    if known {
        collection.to_owned()
    } else {
        OTHER.to_owned()
    }
}

/// What each collection's EECU counter has not counted yet: a fraction of a second.
static EECU_CARRY: std::sync::Mutex<BTreeMap<String, f64>> = std::sync::Mutex::new(BTreeMap::new());

/// Records the EECU-seconds an ended task of `collection` used (once per task).
pub fn eecu_used(collection: &str, seconds: f64) {
    let label = collection_label(collection);
    // Counters hold whole numbers: the fractions are carried over to the next task, so the
    // counter stays within a second of the sum.
    let whole = {
        let mut carry = EECU_CARRY.lock().expect("eecu carry lock");
        let c = carry.entry(label.clone()).or_default();
        *c += seconds.max(0.0);
        let whole = c.floor();
        *c -= whole;
        whole as u64
    };
    ::metrics::counter!("cedar_eecu_seconds_total", "collection" => label).increment(whole);
}

/// Records the EECU window's use, the budget (`None`: none) and whether admission is paused.
pub fn eecu_budget(used_seconds: f64, budget_seconds: Option<f64>, paused: bool) {
    ::metrics::gauge!("cedar_eecu_window_seconds").set(used_seconds);
    ::metrics::gauge!("cedar_eecu_budget_seconds").set(budget_seconds.unwrap_or(0.0));
    ::metrics::gauge!("cedar_eecu_budget_paused").set(if paused { 1.0 } else { 0.0 });
}

/// Records an order of `collection` that failed; `from_ingest` when an `[[ingest]]` entry made
/// its submission.
pub fn order_failed(collection: &str, from_ingest: bool, cause: FailureCause) {
    ::metrics::counter!(
        "cedar_order_failures_total",
        "collection" => collection_label(collection),
        "origin" => if from_ingest { "ingest" } else { "manual" },
        "cause" => cause.label()
    )
    .increment(1);
}

/// What is known about one `[[ingest]]` entry, as the worker exports it
/// (`crate::schedule::IngestStatus` reads it from the tracking state).
#[derive(Debug, Clone, Default)]
pub struct IngestFacts<'a> {
    /// The entry's name, from the configuration.
    pub name: &'a str,
    /// End of the newest period submitted, and when it was submitted.
    pub last_submitted_end: Option<NaiveDate>,
    pub last_submission: Option<DateTime<Utc>>,
    /// End of the newest period whose every order is complete.
    pub last_complete_end: Option<NaiveDate>,
    /// Orders of the newest period submitted, per state.
    pub latest_orders: BTreeMap<OrderState, u64>,
    /// The first period not submitted yet, and the day it is due.
    pub next: Option<(Period, NaiveDate)>,
}

/// Records the facts about one `[[ingest]]` entry; what is unknown is 0.
pub fn ingest(f: &IngestFacts) {
    let name = f.name.to_owned();
    let day = |d: Option<NaiveDate>| {
        d.map_or(0.0, |d| {
            d.and_time(NaiveTime::MIN).and_utc().timestamp() as f64
        })
    };
    let gauges = [
        (
            "cedar_ingest_last_submitted_period_end_timestamp_seconds",
            day(f.last_submitted_end),
        ),
        (
            "cedar_ingest_last_submission_timestamp_seconds",
            f.last_submission.map_or(0.0, |t| t.timestamp() as f64),
        ),
        (
            "cedar_ingest_last_complete_period_end_timestamp_seconds",
            day(f.last_complete_end),
        ),
        (
            "cedar_ingest_next_due_timestamp_seconds",
            day(f.next.map(|(_, due)| due)),
        ),
        (
            "cedar_ingest_next_period_seconds",
            f.next
                .map_or(0.0, |(p, _)| (p.end - p.start).num_seconds() as f64),
        ),
    ];
    for (metric, value) in gauges {
        ::metrics::gauge!(metric, "ingest" => name.clone()).set(value);
    }
    for state in OrderState::ALL {
        let n = f.latest_orders.get(&state).copied().unwrap_or(0);
        ::metrics::gauge!(
            "cedar_ingest_latest_period_orders",
            "ingest" => name.clone(),
            "state" => state.as_str()
        )
        .set(n as f64);
    }
}

/// The catalogue as the Markdown page `docs/metrics.md`.
pub fn catalogue_markdown() -> String {
    let mut out = String::from(
        "# Metrics\n\n\
         <!-- Generated from `CATALOGUE` in src/metrics.rs by the test \
         `metrics::docs_metrics_md_is_current` (CEDAR_UPDATE_DOCS=1 rewrites it). Do not edit. -->\n\n\
         Every `cedar worker` serves these at `http://{[metrics] listen}/metrics` (default \
         `127.0.0.1:9464`), next to `/healthz` (the process is alive) and `/readyz` (Redis and \
         the export store answer; 503 otherwise).\n\n\
         Counters and histograms count what this process did: aggregate them with `sum`. \
         Gauges read from Redis (queue, orders, EE tasks, ingest) are the same on every worker \
         of a namespace: aggregate them with `max`. Every labelled series exists from the start \
         at 0. Label values are fixed lists, or (`ingest`, `collection`) the names in the \
         worker's configuration; an unexpected value is recorded as `other`.\n\n\
         | name | type | unit | labels (values) | meaning |\n\
         |---|---|---|---|---|\n",
    );
    for d in CATALOGUE {
        let labels = if d.labels.is_empty() {
            "—".to_owned()
        } else {
            d.labels
                .iter()
                .map(|l| {
                    if l.name == "version" {
                        "`version` (crate version)".to_owned()
                    } else if let Some((_, what)) = CONFIGURED.iter().find(|(n, _)| *n == l.name) {
                        let values = std::iter::once(*what).chain(l.values.iter().copied());
                        format!("`{}` ({})", l.name, values.collect::<Vec<_>>().join(", "))
                    } else {
                        format!("`{}` ({})", l.name, l.values.join(", "))
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            d.name,
            d.kind.as_str(),
            d.unit,
            labels,
            d.help
        );
    }
    out.push_str(
        "\nAlert rules: `deploy/prometheus/alerts.yml`; dashboard: `deploy/grafana/cedar.json`.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for d in CATALOGUE {
            assert!(seen.insert(d.name), "{} defined twice", d.name);
            assert!(d.name.starts_with("cedar_"), "{}", d.name);
            assert!(
                d.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                d.name
            );
            assert_eq!(
                d.kind == Kind::Counter,
                d.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                d.name
            );
            if d.unit == "seconds" || d.unit == "bytes" {
                assert!(
                    d.name.contains(&format!("_{}", d.unit)),
                    "{} must name its unit",
                    d.name
                );
            }
            assert_eq!(
                d.kind == Kind::Histogram,
                !d.buckets.is_empty(),
                "{}",
                d.name
            );
            assert!(d.buckets.windows(2).all(|w| w[0] < w[1]), "{}", d.name);
            for l in d.labels {
                let configured = CONFIGURED.iter().any(|(n, _)| *n == l.name);
                assert!(
                    !l.values.is_empty() || configured,
                    "{} {}: a label needs values, fixed or configured",
                    d.name,
                    l.name
                );
            }
        }
    }

    #[test]
    fn label_value_lists_agree_with_the_code() {
        let stages: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(STAGE.values, stages.as_slice());
        let states: Vec<&str> = OrderState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(ORDER_STATE.values, states.as_slice());
        // The series never exceed the product of the label lists.
        let series: usize = CATALOGUE.iter().map(|d| label_sets(d.labels).len()).sum();
        assert!(series < 250, "{series} series");
    }

    #[test]
    fn unknown_label_values_become_other() {
        assert_eq!(bounded(&EE_METHOD, "image:export"), "image:export");
        assert_eq!(bounded(&EE_METHOD, "projects/x/operations/123"), OTHER);
        assert_eq!(bounded(&CHECK, "sha256"), OTHER);
    }

    #[test]
    fn error_classes() {
        let cases = [
            (
                "Earth Engine image:export: HTTP 429 RESOURCE_EXHAUSTED: quota",
                "ee_throttled",
            ),
            (
                "Earth Engine value:compute: HTTP 503: unavailable",
                "ee_server",
            ),
            (
                "Earth Engine operations.get: timed out: after 60 s",
                "ee_network",
            ),
            (
                "Earth Engine operations.list: connection failed: refused",
                "ee_network",
            ),
            (
                "Earth Engine value:compute: unexpected response (HTTP 200): eof",
                "ee_other",
            ),
            ("Redis: connection refused", "queue"),
            ("redis: broken pipe", "queue"),
            ("SQLite: database is locked", "queue"),
            (
                "incomplete export: 2 of 9 pieces missing, e.g. x",
                "incomplete_export",
            ),
            ("list gs://b/p: HTTP 503: backend error", OTHER),
        ];
        for (message, class) in cases {
            assert_eq!(error_class(message), class, "{message}");
            assert!(ERROR_CLASS.values.contains(&class));
        }
    }

    #[test]
    fn every_catalogue_metric_renders_with_its_type_before_any_event() {
        let text = install().render();
        // A metric with a label that has only configured values has no series until
        // `configure` names them (see the test below).
        for d in CATALOGUE
            .iter()
            .filter(|d| d.labels.iter().all(|l| !l.values.is_empty()))
        {
            assert!(
                text.contains(&format!("# TYPE {} {}\n", d.name, d.kind.as_str())),
                "{} missing from:\n{text}",
                d.name
            );
        }
        assert!(text.contains(&format!(
            "cedar_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        admission_cap(20, 3000);
        let text = install().render();
        assert!(text.contains("cedar_ee_queue_cap 3000\n"), "{text}");
        assert!(text.contains("cedar_ee_admission_cap 20\n"), "{text}");
    }

    #[test]
    fn configured_series_start_at_zero_and_other_collections_are_other() {
        let handle = install();
        configure(["t-daily"], ["T/CONFIGURED"]);
        let text = handle.render();
        for d in CATALOGUE {
            assert!(
                text.contains(&format!("# TYPE {} {}\n", d.name, d.kind.as_str())),
                "{} missing once configured:\n{text}",
                d.name
            );
        }
        for series in [
            r#"cedar_ingest_next_due_timestamp_seconds{ingest="t-daily"} 0"#,
            r#"cedar_ingest_latest_period_orders{ingest="t-daily",state="FAILED"} 0"#,
            r#"cedar_order_failures_total{collection="T/CONFIGURED",origin="ingest",cause="ee_task"} 0"#,
            r#"cedar_order_failures_total{collection="other",origin="manual",cause="job"} "#,
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }

        order_failed("T/CONFIGURED", true, FailureCause::EeTask);
        order_failed("T/NOT-CONFIGURED", false, FailureCause::Lost);
        let day = |s: &str| s.parse::<NaiveDate>().unwrap();
        ingest(&IngestFacts {
            name: "t-daily",
            last_submitted_end: Some(day("2024-03-02")),
            last_submission: Some("2024-03-02T06:00:05Z".parse().unwrap()),
            last_complete_end: Some(day("2024-03-01")),
            latest_orders: [(OrderState::Failed, 2), (OrderState::Cleaned, 3)].into(),
            next: Some((
                Period {
                    start: day("2024-03-02"),
                    end: day("2024-03-03"),
                },
                day("2024-03-04"),
            )),
        });
        let text = handle.render();
        assert!(!text.contains("T/NOT-CONFIGURED"), "{text}");
        for (series, value) in [
            (
                r#"cedar_order_failures_total{collection="T/CONFIGURED",origin="ingest",cause="ee_task"}"#,
                1.0,
            ),
            (
                r#"cedar_ingest_last_submitted_period_end_timestamp_seconds{ingest="t-daily"}"#,
                1_709_337_600.0,
            ),
            (
                r#"cedar_ingest_last_submission_timestamp_seconds{ingest="t-daily"}"#,
                1_709_359_205.0,
            ),
            (
                r#"cedar_ingest_last_complete_period_end_timestamp_seconds{ingest="t-daily"}"#,
                1_709_251_200.0,
            ),
            (
                r#"cedar_ingest_next_due_timestamp_seconds{ingest="t-daily"}"#,
                1_709_510_400.0,
            ),
            (
                r#"cedar_ingest_next_period_seconds{ingest="t-daily"}"#,
                86_400.0,
            ),
            (
                r#"cedar_ingest_latest_period_orders{ingest="t-daily",state="FAILED"}"#,
                2.0,
            ),
            (
                r#"cedar_ingest_latest_period_orders{ingest="t-daily",state="QUEUED"}"#,
                0.0,
            ),
        ] {
            let found = text.lines().find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            });
            assert_eq!(found, Some(value), "{series}:\n{text}");
        }
        let other =
            r#"cedar_order_failures_total{collection="other",origin="manual",cause="lost"}"#;
        let n = text.lines().find_map(|l| {
            l.strip_prefix(other)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        });
        assert!(n >= Some(1.0), "{other}:\n{text}");
    }

    #[test]
    fn label_sets_are_the_cartesian_product() {
        assert_eq!(label_sets(&[]), vec![Vec::new()]);
        let sets = label_sets(&[STAGE, OUTCOME]);
        assert_eq!(sets.len(), 4 * 5);
        assert!(sets.contains(&vec![("stage", "poll"), ("outcome", "snoozed")]));
    }
}
