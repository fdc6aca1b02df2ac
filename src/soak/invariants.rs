//! The soak's invariants: each a pure check of the facts the driver gathered — the emulator's
//! counters and manifest, the tracking state, the files in the destination and the bucket, the
//! queues' depths, the workers' metrics — returning PASS or FAIL with a line of detail. None of
//! them starts a process or talks to a server; two read a tracking document or metadata JSON
//! from the folder they are given.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use cedar::config::Settings;
use cedar::emulator::{Stats, WrittenObject};
use cedar::order::parse_piece;
use cedar::queue::Depth;
use cedar::queue::tracking::{OrderState, OrderStatus};

use super::CUT_AFTER_BYTES;

/// What happened during the run, for the checks.
pub(super) struct RunLog {
    pub(super) storm: String,
    pub(super) calm: Option<String>,
    pub(super) kills: u64,
    pub(super) redis_restart: Option<Duration>,
    /// Runs of `cedar retry`.
    pub(super) retries: u64,
    /// Orders FAILED (or LOST, CANCELLED) when they ran.
    pub(super) requeued: u64,
    pub(super) calm_metrics: Option<CalmMetrics>,
}

/// The workers' counters and the emulator's stats at both ends of the calm.
pub(super) struct CalmMetrics {
    pub(super) before: Vec<String>,
    pub(super) after: Vec<String>,
    pub(super) ee_before: Stats,
    pub(super) ee_after: Stats,
    /// Orders of the calm that were exported (CLEANED).
    pub(super) cleaned: u64,
}

/// One order as cedar records it.
pub(super) struct OrderFacts {
    pub(super) tracking: String,
    /// Also the EE task description.
    pub(super) name: String,
    /// `{prefix}/{name}`: every object of the export starts so.
    pub(super) base: String,
    pub(super) status: OrderStatus,
}

/// A file found on disk.
pub(super) struct FileFact {
    pub(super) size: u64,
    pub(super) md5: String,
    pub(super) crc32c: u32,
}

/// An invariant's verdict (PASS when true), its title and a line of detail.
pub(super) type Check = (bool, &'static str, String);

/// (complete, failed) orders of a tally.
pub(super) fn tally(counts: &BTreeMap<OrderState, u64>) -> (u64, u64) {
    let sum = |f: fn(OrderState) -> bool| -> u64 {
        counts.iter().filter(|(s, _)| f(**s)).map(|(_, n)| n).sum()
    };
    (sum(OrderState::is_complete), sum(OrderState::is_failed))
}

/// (0) Each fault the soak promises really happened.
pub(super) fn faults_happened(stats: &Stats, log: &RunLog, died: &[String]) -> Check {
    let r429 = stats.responses.get("429").copied().unwrap_or(0);
    let r503 = stats.responses.get("503").copied().unwrap_or(0);
    let failed_tasks = stats.operations.get("FAILED").copied().unwrap_or(0);
    let ok = r429 > 0
        && r503 > 0
        && failed_tasks > 0
        && log.retries > 0
        && stats.downloads_truncated == 1
        && log.kills > 0
        && log.redis_restart.is_some();
    let mut detail = format!(
        "EE answered 429 x{r429} and 503 x{r503}; {failed_tasks} EE tasks FAILED, `cedar retry` ran {} times on {} failed orders; {} download cut after {CUT_AFTER_BYTES} bytes; {} worker SIGKILLs; Redis restarted {}",
        log.retries,
        log.requeued,
        stats.downloads_truncated,
        log.kills,
        match log.redis_restart {
            Some(d) => format!("once ({:.1}s down)", d.as_secs_f64()),
            None => "never".to_owned(),
        }
    );
    if died.is_empty() {
        detail.push_str("; no worker exited on its own");
    } else {
        detail.push_str(&format!(
            "; workers that exited on their own (restarted): {died:?}"
        ));
    }
    (ok, "(0) the faults happened", detail)
}

/// (1) Every tile-period with scenes succeeded in EE exactly once, and no description was
/// exported more often than cedar's own export count (1 + retries) explains.
pub(super) fn exported_once(orders: &[OrderFacts], stats: &Stats) -> Check {
    let mut problems = Vec::new();
    let (mut cleaned, mut empty, mut twice) = (0, 0, 0);
    let known: BTreeSet<&str> = orders.iter().map(|o| o.name.as_str()).collect();
    for o in orders {
        let exports = stats
            .exports_by_description
            .get(&o.name)
            .copied()
            .unwrap_or(0);
        let successes = stats
            .succeeded_by_description
            .get(&o.name)
            .copied()
            .unwrap_or(0);
        match o.status.state {
            OrderState::Cleaned => {
                cleaned += 1;
                if successes != 1 {
                    problems.push(format!("{} succeeded {successes} times in EE", o.name));
                }
                if exports > u64::from(o.status.exports.max(1)) {
                    problems.push(format!(
                        "{} exported {exports} times, cedar submitted {}",
                        o.name, o.status.exports
                    ));
                }
                if exports > 1 {
                    twice += 1;
                }
            }
            OrderState::Empty => {
                empty += 1;
                if exports != 0 {
                    problems.push(format!(
                        "{} is EMPTY but was exported {exports} times",
                        o.name
                    ));
                }
            }
            other => problems.push(format!("{} ended {}", o.name, other.as_str())),
        }
    }
    for d in stats.exports_by_description.keys() {
        if !known.contains(d.as_str()) {
            problems.push(format!("EE export {d} belongs to no order"));
        }
    }
    let detail = format!(
        "{} orders: {cleaned} CLEANED each with exactly 1 EE success ({twice} of them exported twice: FAILED first, then `cedar retry`), {empty} EMPTY never exported{}",
        orders.len(),
        first_problems(&problems)
    );
    (
        problems.is_empty(),
        "(1) every tile-period exported exactly once",
        detail,
    )
}

fn first_problems(problems: &[String]) -> String {
    if problems.is_empty() {
        return String::new();
    }
    format!(
        "; {} problems, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    )
}

/// (2) Every object EE wrote for an order is in `dest/{tracking}/` with the size, MD5 and
/// CRC32C the emulator recorded when it wrote it; every EMPTY order has its metadata JSON;
/// nothing else is there.
pub(super) fn dest_matches(
    orders: &[OrderFacts],
    manifest: &[WrittenObject],
    dest: &BTreeMap<String, FileFact>,
    dest_root: &Path,
) -> Check {
    let mut problems = Vec::new();
    let mut expected = BTreeSet::new();
    let (mut checked, mut bytes) = (0u64, 0u64);
    let by_name: BTreeMap<&str, &WrittenObject> =
        manifest.iter().map(|o| (o.name.as_str(), o)).collect();
    for o in orders {
        let meta = format!("{}.json", o.base);
        match o.status.state {
            OrderState::Cleaned => {
                // Pieces and metadata JSON, as written by the export and cedar's upload.
                let objects: Vec<&WrittenObject> = by_name
                    .range(o.base.as_str()..)
                    .take_while(|(n, _)| n.starts_with(&o.base))
                    .filter(|(n, _)| **n == meta || parse_piece(&o.base, n).is_some())
                    .map(|(_, w)| *w)
                    .collect();
                if !objects.iter().any(|w| w.source == "export") {
                    problems.push(format!("{}: the emulator wrote no pieces", o.name));
                }
                for w in objects {
                    let file = w.name.rsplit('/').next().unwrap_or(&w.name);
                    let rel = format!("{}/{file}", o.tracking);
                    expected.insert(rel.clone());
                    match dest.get(&rel) {
                        None => problems.push(format!("{rel} missing")),
                        Some(f) if f.size != w.size || f.md5 != w.md5 || f.crc32c != w.crc32c => {
                            problems.push(format!(
                                "{rel}: {} bytes md5 {} crc32c {:08x}, EE wrote {} bytes md5 {} crc32c {:08x}",
                                f.size, f.md5, f.crc32c, w.size, w.md5, w.crc32c
                            ))
                        }
                        Some(f) => {
                            checked += 1;
                            bytes += f.size;
                        }
                    }
                }
            }
            OrderState::Empty => {
                let rel = format!("{}/{}.json", o.tracking, o.name);
                expected.insert(rel.clone());
                let doc: Option<Value> = std::fs::read(dest_root.join(&rel))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                match doc {
                    Some(d) if d["task"]["status"]["state"] == "EMPTY" => checked += 1,
                    other => problems.push(format!("{rel}: not an EMPTY metadata JSON: {other:?}")),
                }
            }
            _ => {}
        }
    }
    for extra in dest.keys().filter(|k| !expected.contains(*k)) {
        problems.push(format!("unexpected file {extra}"));
    }
    let detail = format!(
        "{checked} files ({bytes} bytes of exports) match the emulator's record of size, MD5 and CRC32C; {} expected{}",
        expected.len(),
        first_problems(&problems)
    );
    (
        problems.is_empty(),
        "(2) every file in dest has the right size and checksums",
        detail,
    )
}

/// (3) Only tracking documents are left in the bucket.
pub(super) fn bucket_empty(bucket: &BTreeMap<String, FileFact>, settings: &Settings) -> Check {
    let prefix = format!("{}/", settings.config.tracking.prefix.trim_end_matches('/'));
    let left: Vec<&String> = bucket.keys().filter(|k| !k.starts_with(&prefix)).collect();
    let detail = format!(
        "{} objects left, {} of them tracking documents{}",
        bucket.len(),
        bucket.len() - left.len(),
        if left.is_empty() {
            String::new()
        } else {
            format!("; export objects left: {:?}", &left[..left.len().min(5)])
        }
    );
    (
        left.is_empty(),
        "(3) the bucket holds no export objects",
        detail,
    )
}

/// (4) Each published tracking document lists every order, each CLEANED or EMPTY, and for each
/// CLEANED order the file count and bytes it records are what is in dest.
pub(super) fn documents_agree(
    settings: &Settings,
    dir: &Path,
    names: &[String],
    orders: &[OrderFacts],
    dest: &BTreeMap<String, FileFact>,
) -> Check {
    let mut problems = Vec::new();
    let mut seen = 0;
    for name in names {
        let path = dir
            .join("bucket")
            .join(cedar::document::document_object(settings, name));
        let doc: Value = match std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(d) => d,
            None => {
                problems.push(format!("{}: no tracking document", path.display()));
                continue;
            }
        };
        let listed = doc["orders"].as_array().cloned().unwrap_or_default();
        let want = orders.iter().filter(|o| &o.tracking == name).count();
        if listed.len() != want {
            problems.push(format!("{name}: lists {} orders of {want}", listed.len()));
        }
        for o in &listed {
            seen += 1;
            let order = o["name"].as_str().unwrap_or_default();
            let status = &o["status"];
            let in_dest: Vec<&FileFact> = dest
                .range(format!("{name}/{order}")..)
                .take_while(|(k, _)| k.starts_with(&format!("{name}/{order}")))
                .filter(|(k, _)| {
                    let rest = &k[name.len() + 1 + order.len()..];
                    rest == ".json" || rest == ".tif" || rest.starts_with('-')
                })
                .map(|(_, f)| f)
                .collect();
            match status["state"].as_str() {
                Some("CLEANED") => {
                    let files = status["files"].as_u64().unwrap_or(0);
                    let bytes = status["bytes"].as_u64().unwrap_or(0);
                    let on_disk: u64 = in_dest.iter().map(|f| f.size).sum();
                    if files != in_dest.len() as u64 || bytes != on_disk {
                        problems.push(format!(
                            "{order}: document says {files} files / {bytes} bytes, dest has {} / {on_disk}",
                            in_dest.len()
                        ));
                    }
                    for v in status["objects"].as_array().into_iter().flatten() {
                        let file = v["name"]
                            .as_str()
                            .unwrap_or("")
                            .rsplit('/')
                            .next()
                            .unwrap_or("");
                        let size = dest.get(&format!("{name}/{file}")).map(|f| f.size);
                        if size != v["size"].as_u64() {
                            problems.push(format!(
                                "{order}: listed object {file} is not in dest as recorded"
                            ));
                        }
                    }
                }
                Some("EMPTY") => {
                    if in_dest.len() != 1 {
                        problems.push(format!(
                            "{order}: EMPTY but {} files in dest",
                            in_dest.len()
                        ));
                    }
                }
                other => problems.push(format!("{order}: state {other:?} in the document")),
            }
        }
    }
    let detail = format!(
        "{} documents, {seen} orders, every one CLEANED or EMPTY with files and bytes as in dest{}",
        names.len(),
        first_problems(&problems)
    );
    (
        problems.is_empty(),
        "(4) every tracking document is consistent with reality",
        detail,
    )
}

/// (5) Nothing due, scheduled, leased, dead or in the backlog, and no admission slot held.
pub(super) fn no_job_left(depths: &BTreeMap<&'static str, Depth>, active: u64) -> Check {
    let ok = depths.is_empty() && active == 0;
    let detail = if ok {
        "export, poll, download, clean: 0 due, 0 scheduled, 0 leased, 0 dead, 0 backlog; 0 admission slots held".to_owned()
    } else {
        format!("left: {depths:?}; {active} admission slots held")
    };
    (ok, "(5) no job left behind", detail)
}

/// The sum over Prometheus text pages of a series' samples whose labels include `labels`.
fn metric_sum(pages: &[String], name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for page in pages {
        for line in page.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(r) => match r.split_once("} ") {
                    Some((l, v)) => (l, v),
                    None => continue,
                },
                None => match rest.strip_prefix(' ') {
                    Some(v) => ("", v),
                    None => continue,
                },
            };
            let matches = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            if matches && let Ok(v) = value.trim().parse::<f64>() {
                total += v;
            }
        }
    }
    total
}

/// (6) Over the calm — between two quiet moments, no worker killed — the workers' counters,
/// summed, equal the emulator's counts: EE requests per method, bytes downloaded, clean jobs.
pub(super) fn metrics_agree(calm: Option<&CalmMetrics>) -> Check {
    const WHAT: &str = "(6) the metrics' totals agree with the counts";
    let Some(c) = calm else {
        return (
            false,
            WHAT,
            "no calm phase (the campaign has a single tile), so nothing could be compared honestly"
                .to_owned(),
        );
    };
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric_sum(&c.after, name, labels) - metric_sum(&c.before, name, labels)
    };
    let ee = |method: &str| {
        c.ee_after.requests.get(method).copied().unwrap_or(0)
            - c.ee_before.requests.get(method).copied().unwrap_or(0)
    };
    let rows = [
        (
            "cedar_ee_requests_total{method=\"image:export\"}",
            delta("cedar_ee_requests_total", &[("method", "image:export")]),
            "emulator image.export requests",
            ee("image.export"),
        ),
        (
            "cedar_ee_requests_total{method=\"value:compute\"}",
            delta("cedar_ee_requests_total", &[("method", "value:compute")]),
            "emulator value.compute requests",
            ee("value.compute"),
        ),
        (
            "cedar_download_bytes_total + cedar_scene_list_read_bytes_total",
            delta("cedar_download_bytes_total", &[])
                + delta("cedar_scene_list_read_bytes_total", &[]),
            "emulator media bytes sent",
            c.ee_after.media_bytes_served - c.ee_before.media_bytes_served,
        ),
        (
            "cedar_jobs_finished_total{stage=\"clean\",outcome=\"done\"}",
            delta(
                "cedar_jobs_finished_total",
                &[("stage", "clean"), ("outcome", "done")],
            ),
            "orders CLEANED",
            c.cleaned,
        ),
    ];
    let mut ok = true;
    let mut detail =
        "over the calm, sum of every worker's counter increase vs. the emulator/tracking:"
            .to_owned();
    for (metric, got, what, want) in rows {
        let agree = (got - want as f64).abs() < 0.5;
        ok &= agree;
        detail.push_str(&format!(
            "\n       {metric} {got} {} {what} {want}",
            if agree { "==" } else { "!=" }
        ));
    }
    (ok, WHAT, detail)
}

#[cfg(test)]
#[path = "invariants_tests.rs"]
mod tests;
