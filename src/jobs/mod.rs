//! Jobs: one module per stage of an order's life — [`export`] → [`poll`] → [`download`] →
//! [`clean`]. Each handler takes an [`OrderJob`] (identifiers only), does its stage, records the
//! order's new state in [`Tracker`], enqueues the next stage, and returns an [`Outcome`]:
//! `Done`, or `Snooze` to run again later without spending a retry (waiting is not failing).
//!
//! Every handler may run twice (a worker dies, a lease expires): each is idempotent — export
//! reuses a deterministic EE `requestId`, download skips verified files, clean treats "not
//! found" as done, and tracking updates never move an order backwards.
//!
//! Errors are [`JobError`]: `Retry` goes back to the queue with backoff (a persisted attempt
//! count), `Fatal` fails the job at once. Both are recorded on the order with their message.

pub mod admission;
pub mod clean;
pub mod download;
pub mod eecu;
pub mod export;
pub mod poll;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth;
use crate::collection::CollectionSpec;
use crate::config::{Config, Settings};
use crate::earthengine::client::EarthEngine;
use crate::earthengine::error::EeError;
use crate::grid::Tile;
use crate::order::{Order, OrderNames};
use crate::queue::tracking::{Submission, Tracker, TrackingError};
use crate::queue::{Connection, OrderJob, Queue, QueueError, RateDecision, Snapshot, redact_url};
use crate::recipe::{Recipe, Templates};
use crate::store::{Destination, ExportBucket, StoreError, open_bucket};

/// How a job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Transient: run the job again later, with backoff.
    #[error("{0}")]
    Retry(String),
    /// Permanent: the order is failed with this message.
    #[error("{0}")]
    Fatal(String),
}

/// Each error a job meets knows at its source whether it is worth retrying (`is_retryable`); a
/// job error keeps that verdict and the message.
macro_rules! job_error_from {
    ($($source:ty),+) => {$(
        impl From<$source> for JobError {
            fn from(e: $source) -> Self {
                if e.is_retryable() {
                    JobError::Retry(e.to_string())
                } else {
                    JobError::Fatal(e.to_string())
                }
            }
        }
    )+};
}

job_error_from!(EeError, StoreError, TrackingError, crate::queue::QueueError);

/// Tunables of the stages, from `[limits]` and `[worker]`.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// EE requests per second across all workers.
    pub ee_requests_per_second: u32,
    /// How long a poll job waits before looking again at a task that is still running; the
    /// sweeper wakes it earlier when it sees the task end.
    pub poll_interval: Duration,
    /// How long an export waits when EE's task queue is full, or no slot is free.
    pub backpressure_delay: Duration,
    /// Queue-level retries of failed jobs.
    pub retry: crate::queue::RetryPolicy,
    /// The EECU budget that pauses admission (`[limits] eecu_hours_per_day`).
    pub eecu: eecu::EecuBudget,
    /// How downloads verify and how many objects of an order they copy at once.
    pub download: download::DownloadOptions,
}

impl JobSettings {
    /// The stages' tunables as configured.
    pub fn from_config(config: &Config) -> JobSettings {
        let w = &config.worker;
        JobSettings {
            ee_requests_per_second: config.limits.ee_requests_per_second,
            poll_interval: Duration::from_secs(w.poll_interval_secs.max(1)),
            backpressure_delay: Duration::from_secs(w.backpressure_secs),
            retry: crate::queue::RetryPolicy {
                base: Duration::from_millis(w.retry_base_ms),
                ..Default::default()
            },
            eecu: eecu::EecuBudget::from_config(&config.limits),
            download: download::DownloadOptions {
                verify: crate::store::Verify::parse(&config.download.verify).unwrap_or_default(),
                concurrency: config.download.concurrency.max(1) as usize,
            },
        }
    }
}

impl Default for JobSettings {
    /// The documented defaults (`config/default.toml`).
    fn default() -> Self {
        JobSettings::from_config(&Config::default())
    }
}

/// Everything a handler needs, shared by all jobs of a worker.
#[derive(Clone)]
pub struct Context {
    pub settings: Arc<Settings>,
    pub jobs: JobSettings,
    pub ee: EarthEngine,
    pub bucket: Arc<dyn ExportBucket>,
    pub dest: Arc<Destination>,
    pub tracker: Tracker,
    pub queue: Queue,
    /// The EE operations snapshot the sweeper writes and poll jobs read ([`poll`]).
    pub snapshot: Snapshot,
    submissions: Arc<Mutex<HashMap<String, Arc<Submitted>>>>,
}

/// A recorded submission with the recipe its jobs follow ([`Settings::recipe_of`]): what to
/// export, how its orders are named and where their objects live in the bucket.
#[derive(Debug)]
pub struct Submitted {
    pub submission: Submission,
    pub recipe: Recipe,
    templates: Templates,
}

impl std::ops::Deref for Submitted {
    type Target = Submission;

    fn deref(&self) -> &Submission {
        &self.submission
    }
}

impl Submitted {
    /// Resolves the recipe of `submission` (its own, or the worker's for an old record).
    pub fn new(settings: &Settings, submission: Submission) -> Result<Submitted, JobError> {
        let recipe = settings.recipe_of(&submission);
        let templates = recipe
            .templates()
            .map_err(|e| JobError::Fatal(format!("submission {}: {e}", submission.name)))?;
        Ok(Submitted {
            submission,
            recipe,
            templates,
        })
    }

    /// The names of an order: its image name and its folder.
    pub fn names(&self, order: &Order) -> Result<OrderNames, JobError> {
        order
            .names(self.templates.items(), self.submission.submitted)
            .map_err(|e| JobError::Fatal(e.to_string()))
    }

    /// Where export `generation` of `order` lives in the bucket ([`Recipe::export_base`]).
    pub fn export_base(&self, order: &Order, generation: u32) -> Result<String, JobError> {
        Ok(self.recipe.export_base(&self.names(order)?, generation))
    }

    /// The spec `order`'s collection was submitted with.
    pub fn spec(&self, order: &Order) -> Result<&CollectionSpec, JobError> {
        self.recipe.collections.get(&order.collection).ok_or_else(|| {
            JobError::Fatal(format!(
                "collection {} is not configured (this submission was recorded before cedar froze its settings, and this worker's config lacks it); add it back to [collections] or cancel the submission",
                order.collection
            ))
        })
    }

    /// The tile of `order` on the grid the submission was made on.
    pub fn tile(&self, order: &Order) -> Result<Tile, JobError> {
        self.recipe
            .grid
            .tile(order.row, order.col)
            .map_err(|e| JobError::Fatal(e.to_string()))
    }
}

impl Context {
    /// Connects everything a job needs from the settings: one connection (Redis or the SQLite
    /// file) for the queue, tracking and the snapshot, the EE client, the export bucket and the
    /// destination.
    pub async fn connect(settings: Arc<Settings>, jobs: JobSettings) -> anyhow::Result<Context> {
        let cfg = &settings.config;
        let tls_ca_file = cfg.queue.tls_ca_file.as_deref().map(std::path::Path::new);
        let queue_error =
            |e: QueueError| anyhow::anyhow!("queue.url {}: {e}", redact_url(&cfg.queue.url));
        let conn = Connection::open_with_ca(&cfg.queue.url, tls_ca_file)
            .await
            .map_err(queue_error)?;
        let ns = &cfg.queue.namespace;
        let queue = Queue::new(&conn, ns);
        // Redis accepts a connection without a password and refuses only the first command: ask
        // one now, so that a missing password is one message naming queue.url, not a failure deep
        // inside the first command that needs the queue.
        queue.ping().await.map_err(queue_error)?;
        if cfg.earthengine.project.is_empty() {
            anyhow::bail!(
                "earthengine.project is empty: set the Cloud project registered for Earth Engine \
                 ([earthengine] project = \"my-project\", or CEDAR__EARTHENGINE__PROJECT)"
            );
        }
        let tokens = auth::token_source(
            cfg.earthengine.credentials.as_deref(),
            &cfg.earthengine.scopes,
        )?;
        let ee = EarthEngine::new(
            &cfg.earthengine.endpoint,
            &cfg.earthengine.project,
            tokens.clone(),
            Duration::from_secs(cfg.earthengine.timeout_secs),
        )
        .map_err(|e| anyhow::anyhow!("[earthengine]: {e}"))?
        .with_compute_timeout(Duration::from_secs(cfg.earthengine.compute_timeout_secs));
        let endpoint = Some(cfg.store.endpoint.as_str()).filter(|e| !e.is_empty());
        let bucket = open_bucket(&settings.store_url, endpoint, tokens)?;
        let dest = Arc::new(Destination::open(&cfg.download.dest)?);
        Ok(Context {
            tracker: Tracker::new(&conn, ns),
            snapshot: Snapshot::new(&conn, ns),
            settings,
            jobs,
            ee,
            bucket,
            dest,
            queue,
            submissions: Arc::default(),
        })
    }

    /// The submission a job belongs to, with its recipe. Cached, as a submission never
    /// changes; but a name can be cleaned and submitted anew, so each use checks with one
    /// cheap lookup that the cached one is still the submission of that name.
    pub async fn submission(&self, tracking: &str) -> Result<Arc<Submitted>, JobError> {
        let cached = self
            .submissions
            .lock()
            .expect("submission cache lock")
            .get(tracking)
            .cloned();
        if let Some(s) = cached
            && self.tracker.submitted_ms(tracking).await? == Some(s.submitted.timestamp_millis())
        {
            return Ok(s);
        }
        let s = Arc::new(Submitted::new(
            &self.settings,
            self.tracker.submission(tracking).await?,
        )?);
        self.submissions
            .lock()
            .expect("submission cache lock")
            .insert(tracking.to_string(), s.clone());
        Ok(s)
    }

    /// Whether an `[[ingest]]` entry made submission `tracking`, for the `origin` of a failure
    /// metric; a submission that cannot be read counts as made by hand.
    pub async fn from_ingest(&self, tracking: &str) -> bool {
        match self.submission(tracking).await {
            Ok(s) => s.ingest.is_some(),
            Err(e) => {
                tracing::debug!(tracking, error = %e, "cannot read the submission of a failed order");
                false
            }
        }
    }

    /// Waits until the shared EE request budget allows one more call.
    pub async fn ee_permit(&self) -> Result<(), JobError> {
        loop {
            match self
                .queue
                .acquire_rate(u64::from(self.jobs.ee_requests_per_second))
                .await?
            {
                RateDecision::Go => return Ok(()),
                RateDecision::WaitMs(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
        }
    }

    /// The export bucket, once it is sure to be the one `sub` exports into: a worker whose
    /// `[export] bucket` is another would start tasks writing where it never looks, or look for
    /// a finished export where it is not.
    pub fn bucket_of(&self, sub: &Submitted) -> Result<&dyn ExportBucket, JobError> {
        let ours = &self.settings.config.export.bucket;
        if &sub.recipe.bucket != ours {
            return Err(JobError::Fatal(format!(
                "submission {} exports into bucket {:?} but this worker's export.bucket is {ours:?}; run its jobs with export.bucket = {:?}, then `cedar retry {}`",
                sub.name, sub.recipe.bucket, sub.recipe.bucket, sub.name
            )));
        }
        Ok(self.bucket.as_ref())
    }
}

/// The order a job is about.
pub fn order_of(job: &OrderJob) -> Order {
    Order {
        collection: job.collection.clone(),
        row: job.row,
        col: job.col,
        period: crate::period::Period {
            start: job.start,
            end: job.end,
        },
    }
}

/// The job for an order of a submission.
pub fn job_for(tracking: &str, order: &Order, operation: Option<String>) -> OrderJob {
    OrderJob {
        v: 1,
        tracking: tracking.to_string(),
        collection: order.collection.clone(),
        row: order.row,
        col: order.col,
        start: order.period.start,
        end: order.period.end,
        operation,
    }
}
