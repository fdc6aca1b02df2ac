//! Counters for tests and benchmarks: requests per method, responses per HTTP status,
//! operations per state, exports per description ("was this exported exactly once?"), exports
//! and computations per workload tag, plus the storage API's requests and the manifest of every
//! object written.

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
    /// Storage JSON API requests per method (`objects.list`, `objects.get.media`, …).
    #[serde(default)]
    pub storage_requests: BTreeMap<String, u64>,
    /// Bytes of `alt=media` bodies sent: whole objects, ranges, and what went out of a cut
    /// download before the cut. A client that never fetches a byte twice makes this exactly
    /// the bytes it downloaded.
    #[serde(default)]
    pub media_bytes_served: u64,
    /// Storage JSON API requests answered 401 (no valid token, with `require_auth`).
    #[serde(default)]
    pub storage_unauthenticated: u64,
    /// Downloads cut mid-stream by [`super::Fault::TruncateNextDownload`].
    #[serde(default)]
    pub downloads_truncated: u64,
    /// Operations started per `workloadTag` (`""`: sent without one).
    #[serde(default)]
    pub exports_by_workload_tag: BTreeMap<String, u64>,
    /// Successful `value:compute` calls per `workloadTag` (`""`: sent without one).
    #[serde(default)]
    pub computes_by_workload_tag: BTreeMap<String, u64>,
}

/// One object the emulator wrote, as `GET /_emulator/objects` lists it: by an export (`source`
/// "export") or a storage upload ("upload"; a later upload of the same name replaces it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenObject {
    pub name: String,
    pub size: u64,
    /// Hex MD5 of the content.
    pub md5: String,
    /// CRC32C (Castagnoli) of the content.
    pub crc32c: u32,
    pub source: String,
}

#[derive(Default)]
pub(crate) struct Counters {
    requests: BTreeMap<ApiMethod, u64>,
    responses: BTreeMap<u16, u64>,
    exports: BTreeMap<String, u64>,
    succeeded: BTreeMap<String, u64>,
    objects: u64,
    bytes: u64,
    storage: BTreeMap<&'static str, u64>,
    media_bytes: u64,
    storage_401: u64,
    truncated: u64,
    exports_by_tag: BTreeMap<String, u64>,
    computes_by_tag: BTreeMap<String, u64>,
    /// Every object written, by name (the last write of a name wins).
    manifest: BTreeMap<String, WrittenObject>,
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

    /// Counts a started export under its workload tag.
    pub fn export_tagged(&mut self, tag: Option<&str>) {
        *self
            .exports_by_tag
            .entry(tag.unwrap_or_default().to_owned())
            .or_default() += 1;
    }

    /// Counts an answered `value:compute` under its workload tag.
    pub fn compute_tagged(&mut self, tag: Option<&str>) {
        *self
            .computes_by_tag
            .entry(tag.unwrap_or_default().to_owned())
            .or_default() += 1;
    }

    /// The number of exports this description would have if one more started.
    pub fn next_attempt(&self, description: &str) -> u64 {
        self.exports.get(description).copied().unwrap_or(0) + 1
    }

    pub fn record_written(&mut self, plan: &ExportPlan, objects: &[WrittenObject]) {
        *self.succeeded.entry(plan.description.clone()).or_default() += 1;
        self.objects += objects.len() as u64;
        self.bytes += objects.iter().map(|o| o.size).sum::<u64>();
        for o in objects {
            self.record_object(o.clone());
        }
    }

    pub fn record_object(&mut self, object: WrittenObject) {
        self.manifest.insert(object.name.clone(), object);
    }

    pub fn storage_request(&mut self, method: &'static str) {
        *self.storage.entry(method).or_default() += 1;
    }

    pub fn storage_unauthenticated(&mut self) {
        self.storage_401 += 1;
    }

    pub fn media_served(&mut self, bytes: u64) {
        self.media_bytes += bytes;
    }

    pub fn download_truncated(&mut self) {
        self.truncated += 1;
    }

    /// Every object written, in name order.
    pub fn manifest(&self) -> Vec<WrittenObject> {
        self.manifest.values().cloned().collect()
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
            storage_requests: self
                .storage
                .iter()
                .map(|(m, n)| ((*m).to_owned(), *n))
                .collect(),
            media_bytes_served: self.media_bytes,
            storage_unauthenticated: self.storage_401,
            downloads_truncated: self.truncated,
            exports_by_workload_tag: self.exports_by_tag.clone(),
            computes_by_workload_tag: self.computes_by_tag.clone(),
        }
    }
}
