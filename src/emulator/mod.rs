//! An Earth Engine emulator: an HTTP server that speaks the EE REST API v1 closely enough that a
//! pipeline which works against it works against Google.
//!
//! It exists so that every layer of cedar above the EE client can be tested end to end on
//! loopback, and so that failure modes Google produces rarely (throttling, outages, failed tasks,
//! a full queue) can be produced on demand.
//!
//! # What it emulates
//!
//! - `value:compute` over a synthetic, deterministic [`catalogue`] of Landsat Collection 2 and
//!   Sentinel-2 scenes ([`evaluate`] holds the supported subset of algorithms).
//! - `image:export`, which starts an operation that moves `PENDING → RUNNING → SUCCEEDED|FAILED`
//!   on an emulated clock ([`operations`]) and, on success, writes the files exactly as EE names
//!   them, as GeoTIFFs GDAL reads ([`geotiff`], [`wkt`]), into an [`ObjectStore`] that stands
//!   for the bucket ([`output`]).
//! - `operations.get/list/cancel`, `projects.getConfig`, and Google's OAuth token endpoint
//!   ([`auth`]).
//! - A minimal Cloud Storage JSON API over the same object store ([`storage`]): list, get,
//!   media download, delete, media upload, so cedar's `gs://` client runs against it.
//!
//! # A fake that can disagree
//!
//! Nothing here reuses the request or response types of [`crate::earthengine`]: bodies are walked
//! as [`serde_json::Value`] and checked against the published schema ([`schema`]) and algorithm
//! list ([`expression`]), so a misspelled field is rejected here the way Google rejects it.
//!
//! # Faults
//!
//! Throttling (429), outages (503) and task failures happen at configurable, seeded rates, and
//! one-shot faults can be injected in-process ([`RunningEmulator::inject`]) or over HTTP
//! (`POST /_emulator/faults`), including a download cut mid-stream. `GET /_emulator/stats`
//! counts requests, responses, operation states and exports per description;
//! `GET /_emulator/objects` lists every object written with its size, MD5 and CRC32C.

mod auth;
mod catalogue;
mod cli;
mod evaluate;
mod export;
mod expression;
mod faults;
mod geotiff;
mod operations;
mod output;
mod schema;
mod server;
mod stats;
mod storage;
mod wkt;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use cli::{EmulatorArgs, open_store, run};
pub use faults::{ApiMethod, Fault};
pub use operations::TimelineEntry;
pub use stats::{Stats, WrittenObject};

/// How the emulator answers an `image:export` whose non-empty `requestId` was already used.
///
/// Google documents only that "only one of those requests may successfully start a long-running
/// operation"; which answer the duplicate gets is unverified, so both are available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateRequest {
    /// Answer 200 with the operation the first request started (the default).
    #[default]
    ReturnExisting,
    /// Answer 409 `ALREADY_EXISTS`.
    AlreadyExists,
}

/// Everything that shapes the emulator's behaviour. The defaults are fast and fault-free.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// The only project the emulator serves; `None` (the default) serves any project id.
    pub project: Option<String>,
    /// The only bucket exports may name; `None` (the default) accepts any bucket name.
    pub bucket: Option<String>,
    /// Emulated seconds an export spends RUNNING. Default 1.0.
    pub task_seconds: f64,
    /// When set, each export runs a duration drawn (from the seed) uniformly between
    /// `task_seconds` and this. Default `None`: every export runs `task_seconds`.
    pub task_seconds_max: Option<f64>,
    /// Tasks of other pipelines the emulator keeps queued (PENDING or RUNNING) in every project
    /// cedar exported in, as when a project's queue is shared: they take run slots and queue
    /// places, write no files and are listed like any operation. Default 0.
    pub other_tasks: usize,
    /// Emulated seconds per real second. Default 1.0; benchmarks use e.g. 1000.
    pub time_scale: f64,
    /// Fraction of exports that end FAILED with "Computation timed out.". Default 0.
    pub fail_rate: f64,
    /// When false (the default) only the first export with a given description can fail from
    /// `fail_rate`, so a resubmission with a new `requestId` succeeds; when true every attempt
    /// draws again.
    pub fail_repeats: bool,
    /// Fraction of API requests answered 429 RESOURCE_EXHAUSTED. Default 0.
    pub throttle_rate: f64,
    /// Fraction of API requests answered 503 UNAVAILABLE. Default 0.
    pub unavailable_rate: f64,
    /// Seed of every random choice (catalogue, faults, ids, file contents). Default 0.
    pub seed: u64,
    /// Exports RUNNING at once per project; the rest wait PENDING. Default 2, EE's documented
    /// average.
    pub max_concurrent_exports: u32,
    /// Operations PENDING or RUNNING beyond which `image:export` is refused. Default 3000.
    pub queue_limit: usize,
    /// Require a bearer token issued by `POST /token` on every API call. Default false.
    pub require_auth: bool,
    /// `expires_in` of issued access tokens, in seconds. Default 3599, as Google.
    pub token_expires_in_secs: u64,
    /// With `require_auth`, each issued token is revoked after this many requests (EE and
    /// storage together) and answered 401 from then on, though unexpired: a key disabled
    /// mid-campaign, as a client meets it. Default 0: never.
    pub token_revoke_after_uses: u64,
    /// With `require_auth`, each issued token is revoked this many milliseconds after it was
    /// issued, though its `expires_in` promised more. Default 0: never.
    pub token_revoke_after_ms: u64,
    /// The answer to a repeated `requestId`. Default [`DuplicateRequest::ReturnExisting`].
    pub duplicate_request: DuplicateRequest,
    /// When set, `operations.list` and `operations.get` name operations with this project number
    /// (`projects/123456/operations/ID`) while `image:export` answers with the project as the
    /// request named it: which form Google uses where is not documented, so a client must match
    /// operations by ID. Paths may name the project by this number too. Requires `project`.
    /// Default `None`: every name uses the project as requested.
    pub project_number: Option<u64>,
    /// When set, `operations.list` leaves out operations that ended more than this many emulated
    /// seconds ago (`operations.get` still answers them), as EE drops old tasks from its list.
    /// Default `None`: every operation stays listed.
    pub list_retention_secs: Option<f64>,
    /// Serve `GET /v1alpha/projects/{p}/config`, where Google's CLI reads
    /// `maxConcurrentExports`. Default true; false answers it 404, as an API without v1alpha.
    pub serve_v1alpha: bool,
    /// The JWT `aud` the token endpoint accepts; `None` (the default) accepts this server's own
    /// `/token` URL and `https://oauth2.googleapis.com/token`.
    pub token_audience: Option<String>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            project: None,
            bucket: None,
            task_seconds: 1.0,
            task_seconds_max: None,
            other_tasks: 0,
            time_scale: 1.0,
            fail_rate: 0.0,
            fail_repeats: false,
            throttle_rate: 0.0,
            unavailable_rate: 0.0,
            seed: 0,
            max_concurrent_exports: 2,
            queue_limit: 3000,
            require_auth: false,
            token_expires_in_secs: 3599,
            token_revoke_after_uses: 0,
            token_revoke_after_ms: 0,
            duplicate_request: DuplicateRequest::ReturnExisting,
            project_number: None,
            list_retention_secs: None,
            serve_v1alpha: true,
            token_audience: None,
        }
    }
}

/// Errors of starting or running the emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The `--store` URL could not be turned into an object store.
    #[error("invalid store URL {url}: {source}")]
    StoreUrl {
        url: String,
        #[source]
        source: object_store::Error,
    },
    /// An option is out of range.
    #[error("invalid emulator option: {0}")]
    Option(String),
    /// Binding or serving failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The state every request handler and the scheduler share.
pub(crate) struct Shared {
    options: EmulatorOptions,
    store: Arc<dyn ObjectStore>,
    clock: operations::Clock,
    url: String,
    state: Mutex<State>,
}

/// Mutable state behind one lock: requests are short and never hold it across an await.
#[derive(Default)]
pub(crate) struct State {
    operations: operations::Operations,
    faults: faults::Faults,
    counters: stats::Counters,
    tokens: auth::Tokens,
}

impl Shared {
    /// When issued tokens are revoked (see [`EmulatorOptions::token_revoke_after_uses`]).
    fn revocation(&self) -> auth::Revocation {
        auth::Revocation {
            after_uses: self.options.token_revoke_after_uses,
            after_ms: self.options.token_revoke_after_ms,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A handler that panicked while holding the lock leaves consistent-enough counters;
        // the emulator keeps serving rather than poisoning every later test request.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A started emulator. Dropping it stops the server and scheduler at their next turn.
pub struct RunningEmulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Binds `listen` (port 0 picks a free port), starts the server and the operation scheduler.
pub async fn start(
    listen: SocketAddr,
    store: Arc<dyn ObjectStore>,
    options: EmulatorOptions,
) -> std::io::Result<RunningEmulator> {
    validate_options(&options).map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        clock: operations::Clock::new(options.time_scale),
        options,
        store,
        url: format!("http://{addr}"),
        state: Mutex::new(State::default()),
    });
    let (shutdown, rx) = watch::channel(false);
    let server = tokio::spawn(server::serve(listener, shared.clone(), rx.clone()));
    let scheduler = tokio::spawn(operations::schedule(shared.clone(), rx));
    Ok(RunningEmulator {
        shared,
        addr,
        shutdown,
        tasks: vec![server, scheduler],
    })
}

fn validate_options(options: &EmulatorOptions) -> Result<(), EmulatorError> {
    let rates = [
        ("fail_rate", options.fail_rate),
        ("throttle_rate", options.throttle_rate),
        ("unavailable_rate", options.unavailable_rate),
    ];
    for (name, rate) in rates {
        if !(0.0..=1.0).contains(&rate) {
            return Err(EmulatorError::Option(format!(
                "{name} must be in [0, 1], got {rate}"
            )));
        }
    }
    if !(options.time_scale > 0.0 && options.time_scale.is_finite()) {
        return Err(EmulatorError::Option("time_scale must be positive".into()));
    }
    if !(options.task_seconds >= 0.0 && options.task_seconds.is_finite()) {
        return Err(EmulatorError::Option("task_seconds must be >= 0".into()));
    }
    if let Some(max) = options.task_seconds_max
        && !(max >= options.task_seconds && max.is_finite())
    {
        return Err(EmulatorError::Option(
            "task_seconds_max must be >= task_seconds".into(),
        ));
    }
    if options.max_concurrent_exports == 0 {
        return Err(EmulatorError::Option(
            "max_concurrent_exports must be >= 1".into(),
        ));
    }
    if options.project_number.is_some() && options.project.is_none() {
        return Err(EmulatorError::Option(
            "project_number needs project: the number stands for that project".into(),
        ));
    }
    if options
        .list_retention_secs
        .is_some_and(|s| !(s >= 0.0 && s.is_finite()))
    {
        return Err(EmulatorError::Option(
            "list_retention_secs must be >= 0".into(),
        ));
    }
    Ok(())
}

impl RunningEmulator {
    /// The base URL, e.g. `http://127.0.0.1:PORT`; the API lives under `/v1`, tokens at `/token`.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters also served at `GET /_emulator/stats`.
    pub fn stats(&self) -> Stats {
        let state = self.shared.lock();
        state.counters.snapshot(&state.operations)
    }

    /// Every operation's life in emulated seconds, as `GET /_emulator/timeline` serves it.
    pub fn timeline(&self) -> Vec<TimelineEntry> {
        let state = self.shared.lock();
        state.operations.timeline()
    }

    /// Every object written (exports and storage uploads), as `GET /_emulator/objects` lists.
    pub fn objects(&self) -> Vec<WrittenObject> {
        self.shared.lock().counters.manifest()
    }

    /// Injects a fault, as `POST /_emulator/faults` does.
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().faults.inject(fault);
    }

    /// Registers an RSA public key (PEM, `PUBLIC KEY` or `RSA PUBLIC KEY`); from then on the
    /// token endpoint verifies JWT signatures against the registered keys.
    ///
    /// # Panics
    /// If `pem` is not PEM: a test that registers a broken key is itself broken.
    pub fn register_public_key_pem(&self, pem: &str) {
        let der = auth::pem_to_der(pem).unwrap_or_else(|e| panic!("invalid public key PEM: {e}"));
        self.shared.lock().tokens.register_key(der);
    }

    /// Stops accepting requests, stops the scheduler and waits for both.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            // A task that panicked has stopped too, which is all shutdown needs.
            let _ = task.await;
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A stable 64-bit hash of a seed and some strings (FNV-1a, then a splitmix finaliser so that
/// nearby inputs spread over the whole range). Stable across runs and platforms, unlike
/// `std::hash`, because the catalogue and fault draws must be reproducible from the seed.
pub(crate) fn stable_hash(seed: u64, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    splitmix(h)
}

/// The splitmix64 finaliser; also the step of the deterministic byte generator.
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps a hash to `[0, 1)`.
pub(crate) fn unit(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64
}
