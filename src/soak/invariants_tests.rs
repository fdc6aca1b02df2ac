//! Unit tests of the soak's invariants (a separate file to keep `invariants.rs` readable): each
//! check passes on the facts of a clean run and fails, naming the problem, when one fact is
//! spoiled.

use super::*;

use cedar::config::Config;

/// The tracking name of the one submission the facts below describe.
const TRACKING: &str = "t";

/// The objects EE and cedar wrote for order `n1`: two pieces and its metadata JSON.
const N1_OBJECTS: [(&str, u64, &str, u32); 3] = [
    ("n1-0000000000-0000000000.tif", 100, "aa", 1),
    ("n1-0000000000-0000002560.tif", 50, "bb", 2),
    ("n1.json", 20, "cc", 3),
];

const EMPTY_JSON: &str = r#"{"task":{"status":{"state":"EMPTY"}}}"#;

/// The facts a clean run leaves: order `n1` CLEANED, exported once into [`N1_OBJECTS`], all
/// of them in dest; order `n2` EMPTY, never exported, its metadata JSON in dest; the
/// tracking document in the bucket folder; nothing else anywhere. Each test spoils one fact.
struct Run {
    dir: tempfile::TempDir,
    settings: Settings,
    orders: Vec<OrderFacts>,
    stats: Stats,
    manifest: Vec<WrittenObject>,
    dest: BTreeMap<String, FileFact>,
}

impl Run {
    fn clean() -> Run {
        let mut c = Config::default();
        c.export.bucket = "b-1".into();
        let settings = c.validate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut stats = Stats::default();
        stats.exports_by_description.insert("n1".into(), 1);
        stats.succeeded_by_description.insert("n1".into(), 1);
        let mut manifest = Vec::new();
        let mut dest = BTreeMap::new();
        for (file, size, md5, crc32c) in N1_OBJECTS {
            manifest.push(WrittenObject {
                name: format!("CEDAR_PREARD/{file}"),
                size,
                md5: md5.into(),
                crc32c,
                source: if file.ends_with(".tif") {
                    "export"
                } else {
                    "upload"
                }
                .into(),
            });
            dest.insert(format!("{TRACKING}/{file}"), fact(size, md5, crc32c));
        }
        dest.insert(
            format!("{TRACKING}/n2.json"),
            fact(EMPTY_JSON.len() as u64, "dd", 4),
        );
        let empty_json = dir.path().join("dest").join(TRACKING).join("n2.json");
        std::fs::create_dir_all(empty_json.parent().unwrap()).unwrap();
        std::fs::write(&empty_json, EMPTY_JSON).unwrap();
        let run = Run {
            dir,
            settings,
            orders: vec![
                order("n1", OrderState::Cleaned, 1),
                order("n2", OrderState::Empty, 0),
            ],
            stats,
            manifest,
            dest,
        };
        run.write_document(&document(170));
        run
    }

    fn write_document(&self, doc: &Value) {
        let path = self
            .dir
            .path()
            .join("bucket")
            .join(cedar::document::document_object(&self.settings, TRACKING));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(doc).unwrap()).unwrap();
    }

    fn exported_once(&self) -> Check {
        exported_once(&self.orders, &self.stats)
    }

    fn dest_matches(&self) -> Check {
        dest_matches(
            &self.orders,
            &self.manifest,
            &self.dest,
            &self.dir.path().join("dest"),
        )
    }

    fn documents_agree(&self) -> Check {
        documents_agree(
            &self.settings,
            self.dir.path(),
            &[TRACKING.to_owned()],
            &self.orders,
            &self.dest,
        )
    }
}

fn order(name: &str, state: OrderState, exports: u32) -> OrderFacts {
    let mut status = OrderStatus::new(state);
    status.exports = exports;
    OrderFacts {
        tracking: TRACKING.into(),
        name: name.into(),
        base: format!("CEDAR_PREARD/{name}"),
        status,
    }
}

fn fact(size: u64, md5: &str, crc32c: u32) -> FileFact {
    FileFact {
        size,
        md5: md5.into(),
        crc32c,
    }
}

/// The tracking document of the clean run, saying `n1` downloaded `n1_bytes` bytes.
fn document(n1_bytes: u64) -> Value {
    serde_json::json!({"orders": [
        {"name": "n1", "status": {"state": "CLEANED", "files": 3, "bytes": n1_bytes, "objects": [
            {"name": "CEDAR_PREARD/n1-0000000000-0000000000.tif", "size": 100},
            {"name": "CEDAR_PREARD/n1-0000000000-0000002560.tif", "size": 50},
        ]}},
        {"name": "n2", "status": {"state": "EMPTY"}},
    ]})
}

/// Asserts that `check` failed and says why in terms of `mentions`.
fn assert_fails(check: Check, mentions: &str) {
    let (ok, what, detail) = check;
    assert!(!ok, "{what} passed: {detail}");
    assert!(
        detail.contains(mentions),
        "{what} failed without mentioning {mentions:?}: {detail}"
    );
}

fn assert_passes(check: Check) {
    let (ok, what, detail) = check;
    assert!(ok, "{what} failed: {detail}");
}

#[test]
fn faults_pass_only_when_every_fault_happened() {
    let mut stats = Stats::default();
    stats.responses.insert("429".into(), 3);
    stats.responses.insert("503".into(), 2);
    stats.operations.insert("FAILED".into(), 1);
    stats.downloads_truncated = 1;
    let log = || RunLog {
        storm: TRACKING.into(),
        calm: None,
        kills: 2,
        redis_restart: Some(Duration::from_millis(300)),
        retries: 1,
        requeued: 1,
        calm_metrics: None,
    };
    assert_passes(faults_happened(&stats, &log(), &[]));

    let no_restart = RunLog {
        redis_restart: None,
        ..log()
    };
    assert_fails(
        faults_happened(&stats, &no_restart, &[]),
        "Redis restarted never",
    );
    let no_kill = RunLog { kills: 0, ..log() };
    assert_fails(faults_happened(&stats, &no_kill, &[]), "0 worker SIGKILLs");
    let no_retry = RunLog {
        retries: 0,
        ..log()
    };
    assert_fails(
        faults_happened(&stats, &no_retry, &[]),
        "`cedar retry` ran 0 times",
    );
    let mut uncut = stats.clone();
    uncut.downloads_truncated = 0;
    assert_fails(faults_happened(&uncut, &log(), &[]), "0 download cut");
    let mut no_throttle = stats.clone();
    no_throttle.responses.remove("429");
    assert_fails(faults_happened(&no_throttle, &log(), &[]), "429 x0");
}

#[test]
fn exported_once_passes_a_clean_run_and_a_failure_retried_once() {
    let mut run = Run::clean();
    assert_passes(run.exported_once());
    // FAILED in EE, then `cedar retry`: two exports, both submitted by cedar, one success.
    run.stats.exports_by_description.insert("n1".into(), 2);
    run.orders[0].status.exports = 2;
    assert_passes(run.exported_once());
}

#[test]
fn exported_once_fails_an_order_exported_twice() {
    let mut run = Run::clean();
    run.stats.exports_by_description.insert("n1".into(), 2);
    run.stats.succeeded_by_description.insert("n1".into(), 2);
    assert_fails(run.exported_once(), "n1 succeeded 2 times in EE");

    // One success, but an export cedar never asked for (a lost requestId, say).
    run.stats.succeeded_by_description.insert("n1".into(), 1);
    assert_fails(
        run.exported_once(),
        "n1 exported 2 times, cedar submitted 1",
    );
}

#[test]
fn exported_once_fails_an_exported_empty_order_an_unfinished_order_and_a_stray_export() {
    let mut run = Run::clean();
    run.stats.exports_by_description.insert("n2".into(), 1);
    assert_fails(run.exported_once(), "n2 is EMPTY but was exported 1 times");

    let mut run = Run::clean();
    run.orders[0].status.state = OrderState::Running;
    assert_fails(run.exported_once(), "n1 ended RUNNING");

    let mut run = Run::clean();
    run.stats.exports_by_description.insert("n9".into(), 1);
    assert_fails(run.exported_once(), "EE export n9 belongs to no order");
}

#[test]
fn dest_matches_passes_when_every_file_is_as_written() {
    let (ok, _, detail) = Run::clean().dest_matches();
    assert!(ok, "{detail}");
    assert!(
        detail.starts_with("4 files (170 bytes of exports)"),
        "{detail}"
    );
}

#[test]
fn dest_matches_fails_a_file_whose_size_md5_or_crc32c_disagrees() {
    let piece = format!("{TRACKING}/{}", N1_OBJECTS[0].0);
    for spoil in [
        |f: &mut FileFact| f.size -= 1,
        |f: &mut FileFact| f.md5 = "ff".into(),
        |f: &mut FileFact| f.crc32c ^= 1,
    ] {
        let mut run = Run::clean();
        spoil(run.dest.get_mut(&piece).unwrap());
        assert_fails(run.dest_matches(), &format!("{piece}: "));
    }
}

#[test]
fn dest_matches_fails_a_missing_file_a_stray_file_and_a_missing_export() {
    let mut run = Run::clean();
    run.dest.remove(&format!("{TRACKING}/n1.json"));
    assert_fails(run.dest_matches(), "t/n1.json missing");

    let mut run = Run::clean();
    run.dest
        .insert(format!("{TRACKING}/n1-copy.tif"), fact(1, "ee", 5));
    assert_fails(run.dest_matches(), "unexpected file t/n1-copy.tif");

    let mut run = Run::clean();
    run.manifest.retain(|w| w.source != "export");
    assert_fails(run.dest_matches(), "n1: the emulator wrote no pieces");

    let run = Run::clean();
    std::fs::write(run.dir.path().join("dest/t/n2.json"), "{}").unwrap();
    assert_fails(run.dest_matches(), "t/n2.json: not an EMPTY metadata JSON");
}

#[test]
fn bucket_empty_allows_tracking_documents_only() {
    let settings = Run::clean().settings;
    let mut bucket = BTreeMap::from([("CEDAR_TRACKING/t.json".to_owned(), fact(9, "aa", 1))]);
    assert_passes(bucket_empty(&bucket, &settings));
    bucket.insert(
        "CEDAR_PREARD/n1-0000000000-0000000000.tif".into(),
        fact(100, "aa", 1),
    );
    assert_fails(
        bucket_empty(&bucket, &settings),
        "export objects left: [\"CEDAR_PREARD/n1-0000000000-0000000000.tif\"]",
    );
}

#[test]
fn documents_agree_passes_a_document_that_matches_dest() {
    assert_passes(Run::clean().documents_agree());
}

#[test]
fn documents_agree_fails_a_document_that_disagrees_with_dest() {
    let run = Run::clean();
    run.write_document(&document(171));
    assert_fails(
        run.documents_agree(),
        "n1: document says 3 files / 171 bytes, dest has 3 / 170",
    );

    let mut run = Run::clean();
    run.dest
        .insert(format!("{TRACKING}/{}", N1_OBJECTS[1].0), fact(49, "bb", 2));
    assert_fails(
        run.documents_agree(),
        "n1: listed object n1-0000000000-0000002560.tif is not in dest as recorded",
    );

    let run = Run::clean();
    let mut doc = document(170);
    doc["orders"][1]["status"]["state"] = "RUNNING".into();
    run.write_document(&doc);
    assert_fails(
        run.documents_agree(),
        r#"n2: state Some(\"RUNNING\") in the document"#,
    );

    let run = Run::clean();
    let mut doc = document(170);
    doc["orders"].as_array_mut().unwrap().pop();
    run.write_document(&doc);
    assert_fails(run.documents_agree(), "t: lists 1 orders of 2");

    let run = Run::clean();
    std::fs::remove_dir_all(run.dir.path().join("bucket")).unwrap();
    assert_fails(run.documents_agree(), "no tracking document");
}

#[test]
fn no_job_left_fails_a_job_in_any_state_and_a_held_slot() {
    assert_passes(no_job_left(&BTreeMap::new(), 0));
    for depth in [
        Depth {
            due_now: 1,
            ..Depth::default()
        },
        Depth {
            scheduled: 1,
            ..Depth::default()
        },
        Depth {
            leased: 1,
            ..Depth::default()
        },
        Depth {
            dead: 1,
            ..Depth::default()
        },
        Depth {
            backlog: 1,
            ..Depth::default()
        },
    ] {
        assert_fails(
            no_job_left(&BTreeMap::from([("poll", depth)]), 0),
            "left: {\"poll\": Depth {",
        );
    }
    assert_fails(no_job_left(&BTreeMap::new(), 1), "1 admission slots held");
}

/// The workers' `/metrics` pages at the two ends of the calm (two workers, each counting
/// some of the work) and the emulator's stats that agree with them.
fn calm() -> CalmMetrics {
    // Series that share a name with the ones compared (a 5xx export, a download job done) are
    // on every page, so a check that ignored the labels would count them and disagree.
    let page = |exports: u32, computes: u32, bytes: u32, cleaned: u32| {
        format!(
            "# TYPE cedar_ee_requests_total counter\n\
             cedar_ee_requests_total{{method=\"image:export\",code_class=\"2xx\"}} {exports}\n\
             cedar_ee_requests_total{{method=\"image:export\",code_class=\"5xx\"}} 1\n\
             cedar_ee_requests_total{{method=\"value:compute\",code_class=\"2xx\"}} {computes}\n\
             cedar_download_bytes_total {bytes}\n\
             cedar_jobs_finished_total{{stage=\"clean\",outcome=\"done\"}} {cleaned}\n\
             cedar_jobs_finished_total{{stage=\"download\",outcome=\"done\"}} {cleaned}\n"
        )
    };
    let mut ee_before = Stats::default();
    ee_before.requests.insert("image.export".into(), 12);
    ee_before.requests.insert("value.compute".into(), 20);
    ee_before.media_bytes_served = 1000;
    let mut ee_after = ee_before.clone();
    // 4 + 3 exports, 5 + 5 computes, 300 + 200 bytes, 2 + 1 cleaned.
    *ee_after.requests.get_mut("image.export").unwrap() += 7;
    *ee_after.requests.get_mut("value.compute").unwrap() += 10;
    ee_after.media_bytes_served += 500;
    CalmMetrics {
        before: vec![page(10, 10, 600, 5), page(2, 0, 0, 0)],
        after: vec![page(14, 15, 900, 7), page(5, 5, 200, 1)],
        ee_before,
        ee_after,
        cleaned: 3,
    }
}

#[test]
fn metrics_agree_passes_equal_totals_and_fails_any_difference() {
    assert_passes(metrics_agree(Some(&calm())));

    let mut c = calm();
    *c.ee_after.requests.get_mut("image.export").unwrap() += 1;
    assert_fails(
        metrics_agree(Some(&c)),
        "cedar_ee_requests_total{method=\"image:export\"} 7 != emulator image.export requests 8",
    );
    let mut c = calm();
    c.ee_after.media_bytes_served -= 1;
    assert_fails(
        metrics_agree(Some(&c)),
        "cedar_download_bytes_total + cedar_scene_list_read_bytes_total 500 != emulator media bytes sent 499",
    );
    let mut c = calm();
    c.cleaned = 4;
    assert_fails(metrics_agree(Some(&c)), "!= orders CLEANED 4");
    assert_fails(metrics_agree(None), "no calm phase");
}

#[test]
fn metric_sums_match_labels_across_pages() {
    let page = "# HELP x\ncedar_ee_requests_total{method=\"image:export\",code_class=\"2xx\"} 3\n\
                cedar_ee_requests_total{method=\"image:export\",code_class=\"5xx\"} 2\n\
                cedar_ee_requests_total{method=\"value:compute\",code_class=\"2xx\"} 7\n\
                cedar_download_bytes_total 100\n"
        .to_owned();
    let pages = [page.clone(), page];
    assert_eq!(
        metric_sum(
            &pages,
            "cedar_ee_requests_total",
            &[("method", "image:export")]
        ),
        10.0
    );
    assert_eq!(metric_sum(&pages, "cedar_download_bytes_total", &[]), 200.0);
    assert_eq!(metric_sum(&pages, "cedar_nothing", &[]), 0.0);
}

#[test]
fn tallies_split_complete_and_failed() {
    let counts = BTreeMap::from([
        (OrderState::Cleaned, 3),
        (OrderState::Empty, 1),
        (OrderState::Failed, 2),
        (OrderState::Running, 5),
    ]);
    assert_eq!(tally(&counts), (4, 2));
}
