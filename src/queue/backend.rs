//! The apalis 1.0 backend: lets apalis's `WorkerBuilder`, `Monitor` and layers (concurrency,
//! timeout, tracing, Prometheus, catch_panic) drive cedar handlers over a [`Queue`].
//!
//! apalis-core's `Persistence` trait is the seam: `fetch_next` leases, `heartbeat` renews this
//! worker's leases and reaps dead workers' ones, `handle_events` settles each run from its
//! [`Outcome`] or error, `reenqueue_abandoned` releases what a stopping worker fetched but never
//! started, and `push_tasks` enqueues with deterministic ids. `Persisted` turns that into a
//! `Backend`, and `TaskSink` (`push`, `push_bulk`) comes for free.
//!
//! Quirks of apalis-core 1.0.0 this module works around:
//! - Any error returned by a `Persistence` method turns `Persisted` Dead, which stops the worker;
//!   so every method retries transient queue errors (Redis, a busy SQLite file) itself, for as
//!   long as it takes.
//! - An empty fetch parks the worker until the next heartbeat (a quarter of the lease, 15 s by
//!   default). apalis's own `poll_with_interval` does not help for long: once its timer fires it
//!   arms a new one without polling it, so nothing wakes the worker again until the heartbeat
//!   (measured: the poll, download and clean of a one-tile campaign each waited up to 15 s for
//!   it). Wrap the backend with [`CedarBackend::polled`] instead: [`IdlePoll`] re-arms its
//!   timer properly and also wakes the worker when this process makes a job of its stage due.
//! - `push_bulk` builds tasks without ids: `push_tasks` derives them from the payload.
//! - apalis's attempt counter lives in the process; ours lives in the queue and is handed to
//!   apalis only for tracing.
//! - `TaskPersistService` stringifies errors, so a `RetryAfterError`'s duration is lost: such
//!   errors are ordinary failures here. Handlers wait with `Ok(Outcome::Snooze { .. })`.
//! - `Persisted` heartbeats only when its fetch buffer is empty: see [`BackendConfig::batch_size`].
//! - Panics caught by `catch_panic` and timeouts arrive with status `Running` and an error: they
//!   are failures like any other.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::{Arc, LazyLock, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::{
    backend::{
        Backend, BackendConfig as ApalisBackendConfig, TaskResult, WireFormatBackend,
        codec::Codec,
        ext::poll_strategy::{PollSnapshot, PollStrategy, PollWith},
        finalize::Durable,
        persistence::{Persisted, Persistence, TaskEvent, TaskPersistLayer},
    },
    task::{Task, builder::TaskBuilder, status::Status, task_id::TaskId},
    worker::context::WorkerContext,
};
use futures::Sink;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{Notify, futures::OwnedNotified};

use super::{Outcome, Queue, QueueError, QueueJob, RetryPolicy, Stage};

/// How one stage's workers lease and retry jobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendConfig {
    /// Jobs leased per fetch (default 1). apalis-core 1.0.0's `Persisted` sends no heartbeat
    /// while fetched tasks wait in its buffer for a free concurrency slot, so during that time
    /// neither their leases nor those of the running tasks are renewed (reproduced). Raise it
    /// only when `lease` exceeds the longest run, or when workers are rarely saturated.
    pub batch_size: usize,
    /// How long a lease lasts without renewal (default 60 s): the time a dead worker's jobs wait
    /// before another worker takes them.
    pub lease: Duration,
    /// How often the worker renews its leases and reaps expired ones (default 15 s). Clamped to
    /// at most a third of `lease`, so two missed heartbeats never lose a lease.
    pub heartbeat: Duration,
    /// Queue-level retries of failed runs (see [`RetryPolicy`] for the defaults).
    pub retry: RetryPolicy,
    /// For the export stage only: when set, every fetch first admits backlog jobs while fewer
    /// than this many hold an EE admission slot (default none: something else calls `admit`).
    pub admit_max_active: Option<u64>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            batch_size: 1,
            lease: Duration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            retry: RetryPolicy::default(),
            admit_max_active: None,
        }
    }
}

/// A worker name unique per stage, host, process start and restart, e.g.
/// `poll-host1-4242-9f3a1c2e-w0-r1`. Names are lease owners: two live workers sharing one would
/// renew each other's leases, and a restarted process reusing a pid would adopt its previous
/// life's leases, which then never expire. The random per-process part rules both out.
pub fn worker_name(stage: Stage, index: usize, restarts: usize) -> String {
    static PROCESS: LazyLock<String> = LazyLock::new(|| {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "host".to_owned());
        format!(
            "{host}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )
    });
    format!("{stage}-{}-w{index}-r{restarts}", *PROCESS)
}

/// Builds the apalis backend of `stage` for handlers taking `Args`.
pub fn backend<Args: QueueJob>(
    queue: Queue,
    stage: Stage,
    cfg: BackendConfig,
) -> CedarBackend<Args> {
    let cfg = clamp(cfg);
    CedarBackend {
        persist: Persisted::new(StageStore {
            queue,
            stage,
            cfg,
            held: Arc::default(),
            _args: PhantomData,
        }),
        cfg,
    }
}

/// At least one job per fetch; a heartbeat of at most a third of the lease.
fn clamp(cfg: BackendConfig) -> BackendConfig {
    BackendConfig {
        batch_size: cfg.batch_size.max(1),
        heartbeat: cfg.heartbeat.min(cfg.lease / 3),
        ..cfg
    }
}

/// Encodes payloads as JSON bytes, the format stored in `{ns}:{stage}:data`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonPayload;

impl<T: Serialize + DeserializeOwned> Codec<T> for JsonPayload {
    type Error = serde_json::Error;
    type Compact = Vec<u8>;

    fn encode(&self, val: &T) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(val)
    }

    fn decode(&self, val: &Vec<u8>) -> Result<T, serde_json::Error> {
        serde_json::from_slice(val)
    }
}

/// Passes the handler's [`Outcome`] through unchanged. Being a `Codec<Outcome>` only, it makes a
/// handler returning anything else a compile error instead of a silently dropped snooze.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutcomeCodec;

impl Codec<Outcome> for OutcomeCodec {
    type Error = Infallible;
    type Compact = Outcome;

    fn encode(&self, val: &Outcome) -> Result<Outcome, Infallible> {
        Ok(*val)
    }

    fn decode(&self, val: &Outcome) -> Result<Outcome, Infallible> {
        Ok(*val)
    }
}

/// Retries `op` while it fails with a retryable error (backoff 100 ms doubling to 5 s), because
/// an error returned to apalis would kill the worker. Fatal errors are returned at once.
async fn retrying<T, F, Fut>(what: &'static str, mut op: F) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Err(e) if e.is_retryable() => {
                tracing::warn!(operation = what, error = %e, retry_in_ms = delay.as_millis() as u64, "queue: transient error");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// The `Persistence` of one stage: what apalis calls to fetch and settle jobs.
pub struct StageStore<Args> {
    queue: Queue,
    stage: Stage,
    cfg: BackendConfig,
    /// The ids each worker of this process holds (fetched and not yet settled), by worker name.
    held: Arc<Mutex<HashMap<String, HashSet<String>>>>,
    _args: PhantomData<fn() -> Args>,
}

impl<Args> Clone for StageStore<Args> {
    fn clone(&self) -> Self {
        StageStore {
            queue: self.queue.clone(),
            stage: self.stage,
            cfg: self.cfg,
            held: self.held.clone(),
            _args: PhantomData,
        }
    }
}

impl<Args: QueueJob> StageStore<Args> {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        self.held.lock().expect("held-jobs lock")
    }

    /// Applies one finished run to the queue.
    async fn settle(&self, result: TaskResult<Outcome>, worker: &str) -> Result<(), QueueError> {
        let Some(id) = result.task_id.as_string() else {
            // Every task we hand out has a string id; anything else is not ours to settle.
            tracing::warn!(task_id = ?result.task_id, "queue: result for a task id that is not a string");
            return Ok(());
        };
        if let Some(ids) = self.held().get_mut(worker) {
            ids.remove(id);
        }
        let (q, stage, policy) = (&self.queue, self.stage, &self.cfg.retry);
        match (&result.result, &result.status) {
            (Ok(Outcome::Done), _) => {
                retrying("complete", || q.complete(stage, id)).await?;
            }
            (Ok(Outcome::Backlog), _) => {
                if !retrying("push_back", || q.push_back(worker, id)).await? {
                    tracing::warn!(%stage, id, "queue: push-back of a job whose lease was lost");
                }
            }
            (Ok(Outcome::Snooze { secs }), _) => {
                let delay = Duration::from_secs(*secs);
                if !retrying("snooze", || q.snooze(stage, worker, id, delay)).await? {
                    tracing::warn!(%stage, id, "queue: snooze of a job whose lease was lost");
                }
            }
            // AbortError: the handler says retrying cannot help.
            (Err(error), Status::Killed) => {
                retrying("bury", || q.bury(stage, id, error)).await?;
                tracing::warn!(%stage, id, error, "queue: job buried");
            }
            // Failed, Running (panic caught, timeout) or Pending (RetryAfterError, duration lost).
            (Err(error), status) => {
                let outcome = retrying("fail", || q.fail(stage, worker, id, error, policy)).await?;
                // The worker logs the failure once, at WARN or ERROR; this is the queue's detail.
                tracing::debug!(%stage, id, error, ?status, ?outcome, "queue: job failed");
            }
        }
        Ok(())
    }
}

impl<Args: QueueJob> Persistence for StageStore<Args> {
    type Compact = Vec<u8>;
    type Response = Outcome;
    type Error = QueueError;

    async fn register(&mut self, _worker: &WorkerContext) -> Result<(), QueueError> {
        // Nothing to record (leases are the liveness); this only waits until the queue answers.
        let q = &self.queue;
        retrying("register", || q.now_ms()).await.map(|_| ())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), QueueError> {
        let (q, stage, cfg) = (&self.queue, self.stage, &self.cfg);
        let (_, lost) = retrying("renew", || q.renew(stage, worker.name(), cfg.lease)).await?;
        if lost > 0 {
            tracing::warn!(%stage, worker = worker.name(), lost, "queue: leases expired before renewal");
        }
        // The queue may record leases this worker no longer holds: a Redis restarted from its
        // append-only file can have lost the last second of acks. Renewing those forever would
        // strand the jobs, so hand back every lease this process does not hold.
        let recorded = retrying("leased_by", || q.leased_by(stage, worker.name())).await?;
        let stray: Vec<String> = {
            let held = self.held();
            let mine = held.get(worker.name());
            recorded
                .into_iter()
                .filter(|id| mine.is_none_or(|m| !m.contains(id)))
                .collect()
        };
        for id in &stray {
            if retrying("release", || q.release(stage, worker.name(), id)).await? {
                tracing::warn!(%stage, id, "queue: released a lease this worker no longer held");
            }
        }
        retrying("reap", || q.reap(stage, &cfg.retry)).await?;
        Ok(())
    }

    async fn fetch_next(
        &mut self,
        worker: &WorkerContext,
    ) -> Result<Vec<Task<Vec<u8>>>, QueueError> {
        let (q, stage, cfg) = (&self.queue, self.stage, &self.cfg);
        if let (Stage::Export, Some(max)) = (stage, cfg.admit_max_active) {
            retrying("admit", || q.admit(max)).await?;
        }
        let leased = retrying("lease", || {
            q.lease(stage, worker.name(), cfg.batch_size, cfg.lease, &cfg.retry)
        })
        .await?;
        let mut tasks = Vec::with_capacity(leased.len());
        for job in leased {
            // A payload this version cannot read would fail the worker's stream in apalis's
            // decoder; bury it here instead, with the reason, for a human to look at.
            if let Err(e) = serde_json::from_slice::<Args>(&job.payload) {
                let reason = format!("undecodable payload: {e}");
                retrying("bury", || q.bury(stage, &job.id, &reason)).await?;
                tracing::error!(%stage, id = job.id, reason, "queue: job buried");
                continue;
            }
            tasks.push(
                TaskBuilder::new(job.payload)
                    .task_id(TaskId::from_string(job.id))
                    .attempt(job.attempts as usize)
                    .lock_by(Some(worker.name().to_owned()))
                    .build(),
            );
        }
        let mut held = self.held();
        let mine = held.entry(worker.name().to_owned()).or_default();
        for t in &tasks {
            if let Some(id) = t.task_id().and_then(|id| id.as_string()) {
                mine.insert(id.to_owned());
            }
        }
        Ok(tasks)
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<Task<Vec<u8>>>,
        worker: &WorkerContext,
    ) -> Result<u64, QueueError> {
        let (q, stage) = (&self.queue, self.stage);
        let mut released = 0;
        for task in tasks {
            let Some(id) = task.task_id().and_then(|id| id.as_string()) else {
                continue;
            };
            if retrying("release", || q.release(stage, worker.name(), id)).await? {
                released += 1;
            }
        }
        Ok(released)
    }

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Outcome>>,
        worker: &WorkerContext,
    ) -> Result<(), QueueError> {
        for event in events {
            match event {
                TaskEvent::Complete(result) => self.settle(result, worker.name()).await?,
                TaskEvent::Release { task_id } => {
                    if let Some(id) = task_id.as_string() {
                        let (q, stage) = (&self.queue, self.stage);
                        retrying("release", || q.release(stage, worker.name(), id)).await?;
                    }
                }
                // Lock: the lease was taken in fetch_next (we run with lock_tasks(false)).
                // Cancel: not emitted by apalis 1.0; cancel goes through remove_tracking.
                _ => {}
            }
        }
        Ok(())
    }

    async fn push_tasks(&mut self, tasks: Vec<Task<Vec<u8>>>) -> Result<(), QueueError> {
        let mut jobs = Vec::with_capacity(tasks.len());
        for task in tasks {
            // push_bulk builds tasks without ids: derive the deterministic one from the payload.
            let id = match task.task_id().and_then(|id| id.as_string()) {
                Some(id) => id.to_owned(),
                None => serde_json::from_slice::<Args>(&task.args)?.job_id(),
            };
            jobs.push((id, task.args));
        }
        let (q, stage) = (&self.queue, self.stage);
        retrying("enqueue", || {
            q.enqueue_encoded(stage, &jobs, Duration::ZERO)
        })
        .await?;
        Ok(())
    }
}

/// The apalis backend of one stage; build it with [`backend`] and hand it to
/// `WorkerBuilder::new(worker_name(..)).backend(b.polled(..))`.
pub struct CedarBackend<Args: QueueJob> {
    persist: Persisted<StageStore<Args>>,
    cfg: BackendConfig,
}

impl<Args: QueueJob> CedarBackend<Args> {
    /// The backend as a worker runs it: when idle, it looks for jobs every `every` (`[worker]
    /// idle_poll_ms`) and at once when this process makes a job of its stage due.
    pub fn polled(self, every: Duration) -> PollWith<Self, IdlePoll> {
        let nudges = self.persist.queue.nudges(self.persist.stage);
        PollWith::new(self, IdlePoll::new(every, nudges))
    }
}

/// When an idle worker looks for jobs again: every `every`, and when its stage's nudge
/// ([`Queue`]'s, raised by an enqueue, a wake or a freed admission slot in this process) comes.
///
/// The timer is the guarantee, the nudge a shortcut: a nudge that arrives while a fetch is
/// already under way is spent on that fetch, which may have looked just before the job became
/// due; the next tick finds it.
pub struct IdlePoll {
    every: Duration,
    tick: Pin<Box<tokio::time::Sleep>>,
    nudges: Arc<Notify>,
    nudged: Pin<Box<OwnedNotified>>,
}

impl IdlePoll {
    fn new(every: Duration, nudges: Arc<Notify>) -> IdlePoll {
        // A zero interval would spin.
        let every = every.max(Duration::from_millis(1));
        IdlePoll {
            every,
            tick: Box::pin(tokio::time::sleep(every)),
            nudged: Box::pin(nudges.clone().notified_owned()),
            nudges,
        }
    }
}

impl Clone for IdlePoll {
    /// A fresh timer and a fresh wait on the same nudges (apalis clones the backend for every
    /// worker it starts).
    fn clone(&self) -> Self {
        IdlePoll::new(self.every, self.nudges.clone())
    }
}

impl PollStrategy for IdlePoll {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut ready = false;
        // Whatever fired is re-armed and polled again before returning, so that the worker's
        // waker stays registered with both: apalis's IntervalStrategy skips that second poll.
        while self.tick.as_mut().poll(cx).is_ready() {
            let next = tokio::time::Instant::now() + self.every;
            self.tick.as_mut().reset(next);
            ready = true;
        }
        while self.nudged.as_mut().poll(cx).is_ready() {
            self.nudged = Box::pin(self.nudges.clone().notified_owned());
            ready = true;
        }
        if ready {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

impl<Args: QueueJob> Clone for CedarBackend<Args> {
    fn clone(&self) -> Self {
        CedarBackend {
            persist: self.persist.clone(),
            cfg: self.cfg,
        }
    }
}

impl<Args: QueueJob> Backend for CedarBackend<Args> {
    type Task = Task<Vec<u8>>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        w: &WorkerContext,
    ) -> Poll<Result<(), QueueError>> {
        self.persist.poll_ready(cx, w, self.cfg.heartbeat)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        w: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, QueueError>>> {
        self.persist.poll_next(cx, w)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        w: &WorkerContext,
    ) -> Poll<Result<(), QueueError>> {
        self.persist.poll_close(cx, w)
    }
}

impl<Args: QueueJob> ApalisBackendConfig for CedarBackend<Args> {
    type Args = Args;
    type Id = String;
    type Kind = Durable;
    type Config = BackendConfig;
    type Layer = TaskPersistLayer<OutcomeCodec, Outcome>;

    fn config(&self) -> &BackendConfig {
        &self.cfg
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        self.persist
            .layer(OutcomeCodec, self.cfg.batch_size)
            // Without persisted results apalis sends no Complete event at all: nothing would
            // ever be acknowledged.
            .persist_results(true)
            // The lease is taken atomically in fetch_next; a Lock event would be a second,
            // racy round trip.
            .lock_tasks(false)
    }
}

impl<Args: QueueJob> WireFormatBackend for CedarBackend<Args> {
    type Codec = JsonPayload;
    type Compact = Vec<u8>;

    fn codec(&self) -> &JsonPayload {
        &JsonPayload
    }
}

impl<Args: QueueJob> Sink<Task<Vec<u8>>> for CedarBackend<Args> {
    type Error = QueueError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), QueueError>> {
        Pin::new(&mut self.get_mut().persist).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Task<Vec<u8>>) -> Result<(), QueueError> {
        Pin::new(&mut self.get_mut().persist).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), QueueError>> {
        Pin::new(&mut self.get_mut().persist).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), QueueError>> {
        Pin::new(&mut self.get_mut().persist).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_are_unique_per_index_and_restart() {
        let a = worker_name(Stage::Poll, 0, 0);
        assert!(a.starts_with("poll-"));
        assert!(a.ends_with("-w0-r0"));
        assert_ne!(a, worker_name(Stage::Poll, 1, 0));
        assert_ne!(a, worker_name(Stage::Poll, 0, 1));
        assert_ne!(a, worker_name(Stage::Export, 0, 0));
    }

    #[test]
    fn heartbeat_is_clamped_below_the_lease() {
        let cfg = BackendConfig {
            batch_size: 0,
            lease: Duration::from_secs(9),
            heartbeat: Duration::from_secs(30),
            ..BackendConfig::default()
        };
        let cfg = clamp(cfg);
        assert_eq!(cfg.heartbeat, Duration::from_secs(3));
        assert_eq!(cfg.batch_size, 1);
    }
}
