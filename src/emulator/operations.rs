//! Long-running export operations: their state machine on an emulated clock, the scheduler
//! that advances them, and their `google.longrunning.Operation` JSON.
//!
//! ```text
//! PENDING ──(a RUNNING slot frees, by priority then age)──▶ RUNNING ──▶ SUCCEEDED | FAILED
//!    └──────────────── cancel ─────────────▶ CANCELLING ◀── cancel ──┘
//!                                                │ (next tick)
//!                                                ▼
//!                                            CANCELLED (error.code 1)
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{Duration, Instant, MissedTickBehavior};

use super::export::ExportPlan;
use serde::{Deserialize, Serialize};

use super::{EmulatorOptions, Shared, output, stable_hash};

/// Emulated time: `time_scale` emulated seconds pass per real second, starting at the real
/// wall-clock time the emulator started. Built on tokio's clock so paused-time tests work.
pub(crate) struct Clock {
    start: Instant,
    wall: DateTime<Utc>,
    scale: f64,
}

impl Clock {
    pub fn new(scale: f64) -> Self {
        Self {
            start: Instant::now(),
            wall: Utc::now(),
            scale,
        }
    }

    /// Emulated seconds since start.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * self.scale
    }

    /// RFC 3339 with 6 fractional digits and `Z`, which the Python client can parse.
    pub fn timestamp(&self, emulated: f64) -> String {
        let at = self.wall + chrono::Duration::microseconds((emulated * 1e6) as i64);
        at.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum OpState {
    Pending,
    Running,
    Cancelling,
    Succeeded,
    Failed,
    Cancelled,
}

impl OpState {
    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Pending => "PENDING",
            OpState::Running => "RUNNING",
            OpState::Cancelling => "CANCELLING",
            OpState::Succeeded => "SUCCEEDED",
            OpState::Failed => "FAILED",
            OpState::Cancelled => "CANCELLED",
        }
    }

    pub fn done(self) -> bool {
        matches!(
            self,
            OpState::Succeeded | OpState::Failed | OpState::Cancelled
        )
    }

    /// Counted against the queue limit.
    pub fn queued(self) -> bool {
        matches!(
            self,
            OpState::Pending | OpState::Running | OpState::Cancelling
        )
    }
}

/// One export operation.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub id: String,
    pub project: String,
    pub seq: u64,
    pub plan: ExportPlan,
    pub state: OpState,
    created: f64,
    updated: f64,
    started: Option<f64>,
    ended: Option<f64>,
    /// Emulated seconds it runs once started.
    duration: f64,
    /// Another pipeline's task ([`EmulatorOptions::other_tasks`]): writes nothing.
    pub foreign: bool,
    progress: f64,
    /// The store write is in flight; the op stays RUNNING until it lands.
    writing: bool,
    error: Option<(i32, String)>,
}

impl Operation {
    pub fn name(&self) -> String {
        format!("projects/{}/operations/{}", self.project, self.id)
    }

    /// The `Operation` JSON, omitting unset and default fields as proto3 JSON does.
    pub fn to_json(&self, clock: &Clock) -> Value {
        let mut metadata = json!({
            "@type": "type.googleapis.com/google.earthengine.v1.OperationMetadata",
            "state": self.state.as_str(),
        });
        if !self.plan.description.is_empty() {
            metadata["description"] = json!(self.plan.description);
        }
        if self.plan.priority != 0 {
            metadata["priority"] = json!(self.plan.priority);
        }
        metadata["createTime"] = json!(clock.timestamp(self.created));
        metadata["updateTime"] = json!(clock.timestamp(self.updated));
        if let Some(started) = self.started {
            metadata["startTime"] = json!(clock.timestamp(started));
            metadata["attempt"] = json!(1);
        }
        if let Some(ended) = self.ended {
            metadata["endTime"] = json!(clock.timestamp(ended));
        }
        metadata["type"] = json!("EXPORT_IMAGE");
        if self.progress > 0.0 {
            metadata["progress"] = json!(self.progress);
        }
        if self.started.is_some() {
            let total = self.plan.pieces.len().max(1);
            let complete = ((self.progress * total as f64).floor() as usize).min(total);
            let mut create = json!({"displayName": "Create Local Files", "totalWorkUnits": total.to_string(),
                "description": "Computation and writing of temporary files."});
            if complete > 0 {
                create["completeWorkUnits"] = json!(complete);
            }
            let mut upload = json!({"displayName": "Write Files to Destination", "totalWorkUnits": "1",
                "description": "Uploading of files to the export destination."});
            if self.state == OpState::Succeeded {
                upload["completeWorkUnits"] = json!(1);
            }
            metadata["stages"] = json!([create, upload]);
            let eecu = self.progress * self.duration * self.plan.bands.max(1) as f64 * 0.5;
            if eecu > 0.0 {
                metadata["batchEecuUsageSeconds"] = json!(eecu);
            }
        }
        metadata["destinationUris"] = json!([self.plan.destination_uri]);
        let mut operation = json!({"name": self.name(), "metadata": metadata});
        if self.state.done() {
            operation["done"] = json!(true);
            match &self.error {
                Some((code, message)) => {
                    operation["error"] = json!({"code": code, "message": message})
                }
                None => {
                    operation["response"] =
                        json!({"@type": "type.googleapis.com/google.protobuf.Empty"})
                }
            }
        }
        operation
    }
}

/// Every operation, in creation order.
#[derive(Default)]
pub(crate) struct Operations {
    list: Vec<Operation>,
    by_id: HashMap<String, usize>,
    by_request: HashMap<(String, String), usize>,
}

impl Operations {
    /// Starts a PENDING operation for `plan` that will run `duration` emulated seconds.
    pub fn create(
        &mut self,
        project: &str,
        plan: ExportPlan,
        seed: u64,
        now: f64,
        duration: f64,
    ) -> &Operation {
        let seq = self.list.len() as u64;
        let id = operation_id(seed, project, seq);
        let index = self.list.len();
        if let Some(request_id) = &plan.request_id {
            self.by_request
                .insert((project.to_owned(), request_id.clone()), index);
        }
        self.by_id.insert(id.clone(), index);
        self.list.push(Operation {
            id,
            project: project.to_owned(),
            seq,
            plan,
            state: OpState::Pending,
            created: now,
            updated: now,
            started: None,
            ended: None,
            duration,
            foreign: false,
            progress: 0.0,
            writing: false,
            error: None,
        });
        &self.list[index]
    }

    pub fn get(&self, project: &str, id: &str) -> Option<&Operation> {
        let op = &self.list[*self.by_id.get(id)?];
        (op.project == project).then_some(op)
    }

    pub fn by_request(&self, project: &str, request_id: &str) -> Option<&Operation> {
        let index = self
            .by_request
            .get(&(project.to_owned(), request_id.to_owned()))?;
        Some(&self.list[*index])
    }

    /// Operations counted against the queue limit.
    pub fn queued(&self, project: &str) -> usize {
        self.list
            .iter()
            .filter(|o| o.project == project && o.state.queued())
            .count()
    }

    pub fn all(&self) -> &[Operation] {
        &self.list
    }

    /// Every operation's life, in creation order.
    pub fn timeline(&self) -> Vec<TimelineEntry> {
        self.list
            .iter()
            .map(|o| TimelineEntry {
                name: o.name(),
                description: o.plan.description.clone(),
                foreign: o.foreign,
                state: o.state.as_str().to_owned(),
                created: o.created,
                started: o.started,
                ended: o.ended,
            })
            .collect()
    }

    /// Tops up the other pipelines' tasks of every project cedar exported in to `target`
    /// queued ones.
    fn top_up_foreign(
        &mut self,
        target: usize,
        seed: u64,
        now: f64,
        duration: impl Fn(u64) -> f64,
    ) {
        if target == 0 {
            return;
        }
        let mut queued: HashMap<String, usize> = HashMap::new();
        for op in &self.list {
            let entry = queued.entry(op.project.clone()).or_default();
            if op.foreign && op.state.queued() {
                *entry += 1;
            }
        }
        for (project, n) in queued {
            for _ in n..target {
                let seq = self.list.len() as u64;
                let plan = ExportPlan {
                    description: format!("other-pipeline-{seq}"),
                    priority: 100,
                    request_id: None,
                    bucket: "other-pipeline".into(),
                    pieces: Vec::new(),
                    bands: 1,
                    destination_uri: "gs://other-pipeline/".into(),
                    failure: None,
                };
                let d = duration(seq);
                self.create(&project, plan, seed, now, d);
                if let Some(op) = self.list.last_mut() {
                    op.foreign = true;
                }
            }
        }
    }

    /// Requests cancellation; `Err` when the operation is already done.
    pub fn cancel(&mut self, project: &str, id: &str, now: f64) -> Option<Result<(), ()>> {
        let index = *self.by_id.get(id)?;
        let op = &mut self.list[index];
        if op.project != project {
            return None;
        }
        if op.state.done() {
            return Some(Err(()));
        }
        op.state = OpState::Cancelling;
        op.updated = now;
        Some(Ok(()))
    }

    /// One page, newest first. The token is the sequence number to continue below.
    pub fn page(
        &self,
        project: &str,
        size: usize,
        below: Option<u64>,
    ) -> (Vec<&Operation>, Option<u64>) {
        let mut matching = self
            .list
            .iter()
            .rev()
            .filter(|o| o.project == project && below.is_none_or(|b| o.seq < b));
        let page: Vec<&Operation> = matching.by_ref().take(size).collect();
        let more = matching.next().is_some();
        let next = if more {
            page.last().map(|o| o.seq)
        } else {
            None
        };
        (page, next)
    }
}

/// 24 characters of base32 (`A-Z2-7`), like EE's task ids.
fn operation_id(seed: u64, project: &str, seq: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let seq = seq.to_string();
    let (a, b) = (
        stable_hash(seed, &["operation", project, &seq, "a"]),
        stable_hash(seed, &["operation", project, &seq, "b"]),
    );
    let bits = (u128::from(a) << 64) | u128::from(b);
    (0..24)
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// How long the export numbered `seq` runs: `task_seconds`, or a draw between it and
/// `task_seconds_max`, the same for a given seed.
pub(crate) fn task_duration(options: &EmulatorOptions, seq: u64) -> f64 {
    match options.task_seconds_max {
        Some(max) if max > options.task_seconds => {
            let draw = stable_hash(options.seed, &["duration", &seq.to_string()]);
            let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
            options.task_seconds + unit * (max - options.task_seconds)
        }
        _ => options.task_seconds,
    }
}

/// One operation's life in emulated seconds (`GET /_emulator/timeline`): what benchmarks
/// measure EE's run-slot use from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub name: String,
    pub description: String,
    /// Another pipeline's task.
    pub foreign: bool,
    pub state: String,
    pub created: f64,
    pub started: Option<f64>,
    pub ended: Option<f64>,
}

/// Advances operations until shutdown.
pub(crate) async fn schedule(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let options = &shared.options;
    // Tick often enough that a task's progress is seen, rarely enough to stay cheap.
    let real_task = options.task_seconds.max(0.01) / options.time_scale;
    let tick = Duration::from_secs_f64((real_task / 20.0).clamp(0.002, 0.05));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = interval.tick() => advance(&shared).await,
            // Either `true` was sent or the handle was dropped: both mean stop.
            _ = shutdown.changed() => break,
        }
    }
}

/// One scheduler step: finish, write, cancel and start operations.
pub(crate) async fn advance(shared: &Shared) {
    let mut to_write = Vec::new();
    {
        let mut state = shared.lock();
        let now = shared.clock.now();
        for op in &mut state.operations.list {
            match op.state {
                OpState::Cancelling => {
                    op.state = OpState::Cancelled;
                    op.ended = Some(now);
                    op.updated = now;
                    op.error = Some((1, "Cancelled.".into()));
                }
                OpState::Running if !op.writing => {
                    let started = op.started.unwrap_or(now);
                    op.progress = if op.duration > 0.0 {
                        ((now - started) / op.duration).min(1.0)
                    } else {
                        1.0
                    };
                    op.updated = now;
                    if op.progress >= 1.0 {
                        if op.foreign {
                            op.state = OpState::Succeeded;
                            op.ended = Some(now);
                        } else if let Some(message) = op.plan.failure.clone() {
                            op.state = OpState::Failed;
                            op.ended = Some(now);
                            op.error = Some((3, message));
                        } else {
                            op.writing = true;
                            to_write.push((op.id.clone(), op.plan.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        let options = &shared.options;
        state
            .operations
            .top_up_foreign(options.other_tasks, options.seed, now, |seq| {
                task_duration(options, seq)
            });
        start_pending(
            &mut state.operations,
            shared.options.max_concurrent_exports as usize,
            now,
        );
    }
    for (id, plan) in to_write {
        let result = output::write(&shared.store, &plan, shared.options.bytes_per_pixel).await;
        let mut state = shared.lock();
        let now = shared.clock.now();
        if let Ok(objects) = &result {
            state.counters.record_written(&plan, objects);
        }
        let Some(&index) = state.operations.by_id.get(&id) else {
            continue;
        };
        let op = &mut state.operations.list[index];
        op.writing = false;
        // A cancel that arrived during the write wins; the files stay, as they can on EE.
        if op.state == OpState::Running {
            op.ended = Some(now);
            op.updated = now;
            match result {
                Ok(_) => op.state = OpState::Succeeded,
                Err(error) => {
                    op.state = OpState::Failed;
                    op.error = Some((13, error.to_string()));
                }
            }
        }
    }
}

/// Starts PENDING operations while a project has free RUNNING slots: highest priority first,
/// then oldest, as EE documents.
fn start_pending(operations: &mut Operations, max_running: usize, now: f64) {
    let mut running: HashMap<String, usize> = HashMap::new();
    for op in &operations.list {
        if op.state == OpState::Running {
            *running.entry(op.project.clone()).or_default() += 1;
        }
    }
    let mut pending: Vec<usize> = (0..operations.list.len())
        .filter(|i| operations.list[*i].state == OpState::Pending)
        .collect();
    pending.sort_by_key(|i| (-operations.list[*i].plan.priority, operations.list[*i].seq));
    for index in pending {
        let op = &mut operations.list[index];
        let slots = running.entry(op.project.clone()).or_default();
        if *slots < max_running {
            *slots += 1;
            op.state = OpState::Running;
            op.started = Some(now);
            op.updated = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(priority: i64) -> ExportPlan {
        ExportPlan {
            description: "d".into(),
            priority,
            request_id: None,
            bucket: "b".into(),
            pieces: Vec::new(),
            bands: 1,
            destination_uri: String::new(),
            failure: None,
        }
    }

    #[test]
    fn ids_look_like_ee_task_ids() {
        let id = operation_id(0, "p", 0);
        assert_eq!(id.len(), 24);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        );
        assert_ne!(id, operation_id(0, "p", 1));
    }

    #[test]
    fn pending_operations_start_by_priority_then_age() {
        let mut ops = Operations::default();
        let low = ops.create("p", plan(100), 0, 0.0, 1.0).id.clone();
        let high = ops.create("p", plan(500), 0, 0.0, 1.0).id.clone();
        let low2 = ops.create("p", plan(100), 0, 0.0, 1.0).id.clone();
        start_pending(&mut ops, 2, 1.0);
        let state = |id: &str| ops.get("p", id).unwrap().state;
        assert_eq!(
            (state(&high), state(&low), state(&low2)),
            (OpState::Running, OpState::Running, OpState::Pending)
        );
    }

    #[test]
    fn pages_are_newest_first_and_complete() {
        let mut ops = Operations::default();
        for _ in 0..5 {
            ops.create("p", plan(100), 0, 0.0, 1.0);
        }
        ops.create("q", plan(100), 0, 0.0, 1.0);
        let (first, token) = ops.page("p", 2, None);
        assert_eq!(first.iter().map(|o| o.seq).collect::<Vec<_>>(), [4, 3]);
        let (second, token) = ops.page("p", 2, token);
        assert_eq!(second.iter().map(|o| o.seq).collect::<Vec<_>>(), [2, 1]);
        let (last, token) = ops.page("p", 2, token);
        assert_eq!((last.len(), token), (1, None));
    }

    #[test]
    fn operation_json_omits_defaults_and_reports_cancellation() {
        let clock = Clock::new(1.0);
        let mut ops = Operations::default();
        let id = ops.create("p", plan(100), 0, 0.0, 1.0).id.clone();
        let json = ops.get("p", &id).unwrap().to_json(&clock);
        assert_eq!(json["metadata"]["state"], "PENDING");
        assert!(json.get("done").is_none() && json["metadata"].get("startTime").is_none());
        assert!(
            json["metadata"]["createTime"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        assert_eq!(ops.cancel("p", &id, 1.0), Some(Ok(())));
        assert_eq!(ops.cancel("q", &id, 1.0), None);
    }
}
