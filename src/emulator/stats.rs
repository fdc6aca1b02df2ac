//! Counters for tests and benchmarks: requests per method, responses per HTTP status,
//! operations per state and exports per description ("was this exported exactly once?").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::export::ExportPlan;
use super::faults::ApiMethod;
use super::operations::Operations;

/// A snapshot of the counters, as served by `GET /_emulator/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests per API method (`value.compute`, `image.export`, `operations.get`, …).
    pub requests: BTreeMap<String, u64>,
    /// API responses per HTTP status code.
    pub responses: BTreeMap<String, u64>,
    /// Operations per current state (`PENDING`, `RUNNING`, `SUCCEEDED`, …).
    pub operations: BTreeMap<String, u64>,
    /// Operations started per description; a duplicate `requestId` starts none.
    pub exports_by_description: BTreeMap<String, u64>,
    /// Exports whose files were written, per description.
    pub succeeded_by_description: BTreeMap<String, u64>,
    /// Objects written into the store.
    pub objects_written: u64,
    /// Bytes written into the store.
    pub bytes_written: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    requests: BTreeMap<ApiMethod, u64>,
    responses: BTreeMap<u16, u64>,
    exports: BTreeMap<String, u64>,
    succeeded: BTreeMap<String, u64>,
    objects: u64,
    bytes: u64,
}

impl Counters {
    pub fn request(&mut self, method: ApiMethod) {
        *self.requests.entry(method).or_default() += 1;
    }

    pub fn response(&mut self, status: u16) {
        *self.responses.entry(status).or_default() += 1;
    }

    /// Counts a started export; returns how many exports this description has had.
    pub fn export_started(&mut self, description: &str) -> u64 {
        let count = self.exports.entry(description.to_owned()).or_default();
        *count += 1;
        *count
    }

    /// The number of exports this description would have if one more started.
    pub fn next_attempt(&self, description: &str) -> u64 {
        self.exports.get(description).copied().unwrap_or(0) + 1
    }

    pub fn record_written(&mut self, plan: &ExportPlan, bytes: u64) {
        *self.succeeded.entry(plan.description.clone()).or_default() += 1;
        self.objects += plan.pieces.len() as u64;
        self.bytes += bytes;
    }

    pub fn snapshot(&self, operations: &Operations) -> Stats {
        let mut states = BTreeMap::new();
        for op in operations.all() {
            *states.entry(op.state.as_str().to_owned()).or_default() += 1;
        }
        Stats {
            requests: self
                .requests
                .iter()
                .map(|(m, n)| (m.as_str().to_owned(), *n))
                .collect(),
            responses: self
                .responses
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            operations: states,
            exports_by_description: self.exports.clone(),
            succeeded_by_description: self.succeeded.clone(),
            objects_written: self.objects,
            bytes_written: self.bytes,
        }
    }
}
