//! Unit tests of the configuration: loading, environment overrides, every section's checks.

use super::*;
use crate::collection::DataType;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn valid_toml() -> String {
    "[earthengine]\nproject = \"p\"\n[export]\nbucket = \"my-bucket\"\n".to_string()
}

#[test]
fn embedded_defaults_match_config_default() {
    let c = Config::from_toml("default", DEFAULT_TOML, no_env()).unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn a_minimal_file_validates_with_presets() {
    let c = Config::from_toml("t", &valid_toml(), no_env()).unwrap();
    let s = c.validate().unwrap();
    assert_eq!(s.store_url, "gs://my-bucket");
    assert_eq!(s.grid.name, "Landsat ARD v1 - CONUS");
    assert_eq!(s.collections.len(), collection::PRESET_IDS.len());
}

#[test]
fn environment_overrides_win() {
    let env = vec![
        ("CEDAR__EXPORT__BUCKET".to_string(), "from-env".to_string()),
        (
            "CEDAR__EXPORT__FILE_DIMENSIONS".to_string(),
            "2048".to_string(),
        ),
        (
            "CEDAR__EARTHENGINE__CREDENTIALS".to_string(),
            "none".to_string(),
        ),
        ("OTHER".to_string(), "x".to_string()),
    ];
    let c = Config::from_toml("t", &valid_toml(), env).unwrap();
    assert_eq!(c.export.bucket, "from-env");
    assert_eq!(c.export.file_dimensions, 2048);
    assert_eq!(c.earthengine.credentials.as_deref(), Some("none"));
}

#[test]
fn the_storage_emulator_host_fills_an_empty_store_endpoint_only() {
    let host = || vec![(EMULATOR_HOST_ENV.to_string(), "127.0.0.1:9023".to_string())];
    let c = Config::from_toml("t", &valid_toml(), host()).unwrap();
    assert_eq!(c.store.endpoint, "http://127.0.0.1:9023");
    let text = format!("{}[store]\nendpoint = \"http://gcs:1\"\n", valid_toml());
    let c = Config::from_toml("t", &text, host()).unwrap();
    assert_eq!(c.store.endpoint, "http://gcs:1");
    let mut env = host();
    env.push(("CEDAR__STORE__ENDPOINT".into(), "https://over".into()));
    let c = Config::from_toml("t", &valid_toml(), env).unwrap();
    assert_eq!(c.store.endpoint, "https://over");
    let c = Config::from_toml("t", &valid_toml(), no_env()).unwrap();
    assert_eq!(c.store.endpoint, "");
}

#[test]
fn a_gs_store_url_must_be_the_export_bucket_itself() {
    // export.bucket is "my-bucket"; each URL with the problems `config check` reports.
    let problems = |url: &str, env: Vec<(String, String)>| -> Vec<Problem> {
        let text = format!("{}[store]\nurl = \"{url}\"\n", valid_toml());
        match Config::from_toml("t", &text, env).unwrap().validate() {
            Ok(_) => Vec::new(),
            Err(e) => e.problems,
        }
    };
    for fine in [
        "gs://my-bucket",
        "gs://my-bucket/",
        "file:///srv/emulator/bucket",
        "memory:///",
        "s3://other-bucket/mirror",
    ] {
        assert_eq!(problems(fine, no_env()), [], "{fine}");
    }
    // An emulator's endpoint changes the server, not the bucket a gs:// URL names.
    let emulator = vec![(EMULATOR_HOST_ENV.to_string(), "127.0.0.1:9023".to_string())];
    for (url, says) in [
        ("gs://other-bucket", "names bucket \"other-bucket\""),
        ("gs://other-bucket/x", "names bucket \"other-bucket\""),
        (
            "gs://my-bucket/campaigns",
            "points at the folder \"campaigns\"",
        ),
    ] {
        for env in [no_env(), emulator.clone()] {
            let found = problems(url, env);
            assert_eq!(found.len(), 1, "{url}: {found:?}");
            assert_eq!(found[0].key, "store.url");
            let message = &found[0].message;
            assert!(
                message.contains(says)
                    && message.contains("export.bucket \"my-bucket\"") == says.contains("other")
                    && message.contains("set url = \"gs://my-bucket\""),
                "{url}: {message}"
            );
        }
    }
    // Without an export bucket only that is reported.
    let text = "[store]\nurl = \"gs://other-bucket\"\n";
    let e = Config::from_toml("t", text, no_env())
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(
        e.problems.iter().all(|p| p.key != "store.url"),
        "{:?}",
        e.problems
    );
}

#[test]
fn templates_that_cannot_tell_orders_apart_or_are_no_file_name_are_refused() {
    let check = |name: &str, tracking: &str| -> Vec<String> {
        let mut c = Config::from_toml("t", &valid_toml(), no_env()).unwrap();
        c.export.name_template = name.into();
        c.tracking.template = tracking.into();
        match c.validate() {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    };
    let default_tracking = TrackingConfig::default().template;
    assert_eq!(
        check(&ExportConfig::default().name_template, &default_tracking),
        Vec::<String>::new()
    );
    for (name, lacking) in [
        ("fixed_{date_start}", "collections"),
        ("{collection}_{date_start}", "tile rows"),
        ("{collection}_{tile}", "periods"),
        ("{tile}_{date_start}", "collections"),
        ("{collection}_h{col}_{date_start}", "tile rows"),
    ] {
        let problems = check(name, &default_tracking);
        assert!(
            problems.len() == 1
                && problems[0].starts_with("export.name_template: ")
                && problems[0].contains(lacking),
            "{name}: {problems:?}"
        );
    }
    for tracking in [".", "..", "a/b{now}"] {
        let problems = check(&ExportConfig::default().name_template, tracking);
        assert!(
            problems.len() == 1 && problems[0].starts_with("tracking.template: "),
            "{tracking}: {problems:?}"
        );
    }
}

#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    let env = vec![(
        "CEDAR__EXPORT__FILE_DIMENSIONS".to_string(),
        "1000".to_string(),
    )];
    let e = Config::from_toml("t", &valid_toml(), env)
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].key, "export.file_dimensions");
    assert_eq!(
        e.problems[0].variable.as_deref(),
        Some("CEDAR__EXPORT__FILE_DIMENSIONS")
    );
    assert!(
        e.to_string()
            .ends_with("(set by the environment variable CEDAR__EXPORT__FILE_DIMENSIONS)"),
        "{e}"
    );
    // The commands that read only the queue check [queue] alone, and name the variable too.
    let env = vec![("CEDAR__QUEUE__NAMESPACE".to_string(), "bad ns".to_string())];
    let e = Config::from_toml("t", &valid_toml(), env)
        .unwrap()
        .validate_queue()
        .unwrap_err();
    assert_eq!(
        e.problems[0].variable.as_deref(),
        Some("CEDAR__QUEUE__NAMESPACE"),
        "{e}"
    );
}

#[test]
fn worker_settings_are_checked() {
    let text = format!(
        "{}[worker]\nconcurrency = 0\nsweep_min_interval_secs = 10\nsweep_max_interval_secs = 5\nsweep_completions_per_page = -1.0\n",
        valid_toml()
    );
    let e = Config::from_toml("t", &text, no_env())
        .unwrap()
        .validate()
        .unwrap_err();
    let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "worker.concurrency",
            "worker.sweep_max_interval_secs",
            "worker.sweep_completions_per_page"
        ],
        "{e}"
    );
}

#[test]
fn unknown_keys_are_errors_everywhere_and_all_reported() {
    let text = format!(
        "{}bukket = \"x\"\nfile_dimension = 1024\n[nope]\na = 1\n[worker]\nconcurency = 2\n",
        valid_toml()
    );
    let e = Config::from_toml("t", &text, no_env()).unwrap_err();
    let mut keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "export.bukket",
            "export.file_dimension",
            "nope",
            "worker.concurency"
        ],
        "{e}"
    );
    let env = vec![("CEDAR__EXPORT__BUKET".to_string(), "x".to_string())];
    let e = Config::from_toml("t", &valid_toml(), env).unwrap_err();
    assert_eq!(e.problems[0].key, "export.buket", "{e}");
    assert!(
        e.problems[0].message.contains("unknown")
            && e.problems[0].variable.as_deref() == Some("CEDAR__EXPORT__BUKET"),
        "{e}"
    );
}

#[test]
fn wrong_types_and_malformed_toml_name_the_key() {
    let e = Config::from_toml("t", "[export]\nfile_dimensions = \"big\"\n", no_env()).unwrap_err();
    assert_eq!(e.problems[0].key, "export.file_dimensions", "{e}");
    let e = Config::from_toml("t", "[export\nbucket = 1", no_env()).unwrap_err();
    assert_eq!(e.problems[0].key, "toml");
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn validation_reports_every_problem_once() {
    let text = r#"
[earthengine]
endpoint = "ftp://x"
credentials = "/nonexistent/key.json"
[queue]
url = "http://user:hunter2@host"
[export]
file_dimensions = 1000
name_template = "{collection}_{period_start}"
[tracking]
template = "TRACKING_{date_start}"
[grid]
preset = "nope"
[metrics]
listen = "localhost"
[collections."MY/COLL"]
filters = ["CLOUD = 3"]
"#;
    let e = Config::from_toml("t", text, no_env())
        .unwrap()
        .validate()
        .unwrap_err();
    let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
    for k in [
        "earthengine.endpoint",
        "earthengine.credentials",
        "queue.url",
        "export.bucket",
        "export.file_dimensions",
        "export.name_template",
        "tracking.template",
        "grid.preset",
        "metrics.listen",
        "collections.\"MY/COLL\".bands",
        "collections.\"MY/COLL\".filters",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
    // The Redis password never appears in messages.
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn explicit_grid_and_collection_overrides() {
    let text = format!(
        "{}{}",
        valid_toml(),
        r#"
[grid]
preset = "Landsat ARD v1 - CONUS"
[collections."LANDSAT/LC08/C02/T1_L2"]
filters = ["CLOUD_COVER < 50"]
nodata = -9999
data_type = "int16"
"#
    );
    let s = Config::from_toml("t", &text, no_env())
        .unwrap()
        .validate()
        .unwrap();
    let l8 = &s.collections["LANDSAT/LC08/C02/T1_L2"];
    assert_eq!(l8.filters[0].to_string(), "CLOUD_COVER < 50");
    assert_eq!((l8.nodata, l8.data_type), (-9999.0, DataType::Int16));
    assert_eq!(l8.bands.len(), 8);

    let text = format!(
        "{}{}",
        valid_toml(),
        "[grid]\npreset = \"x\"\ncrs = \"EPSG:5070\"\n"
    );
    let e = Config::from_toml("t", &text, no_env())
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(e.problems[0].key, "grid");

    let mut c = Config::from_toml("t", &valid_toml(), no_env()).unwrap();
    c.grid = GridConfig {
        preset: None,
        name: Some("utm".into()),
        crs: Some("EPSG:32610".into()),
        ul: Some([500_000.0, 4_200_000.0]),
        res: Some([10.0, 20.0]),
        size: Some([100, 50]),
        limits: Some([[0, 3], [0, 4]]),
    };
    let s = c.validate().unwrap();
    assert_eq!(s.grid.tile(1, 1).unwrap().bounds.top, 4_199_000.0);
}

#[test]
fn an_explicit_grid_in_a_file_replaces_the_default_preset() {
    let text = format!(
        "{}[grid]\nname = \"utm\"\ncrs = \"EPSG:32610\"\nul = [500000.0, 4200000.0]\nres = [10.0, 20.0]\nsize = [100, 50]\nlimits = [[0, 3], [0, 4]]\n",
        valid_toml()
    );
    let s = Config::from_toml("t", &text, no_env())
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(s.grid.name, "utm");
    // No [grid] table at all keeps the default preset.
    let s = Config::from_toml("t", &valid_toml(), no_env())
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(s.grid.name, "Landsat ARD v1 - CONUS");
}

#[test]
fn queue_urls_redis_sqlite_or_empty() {
    for ok in [
        "",
        "redis://127.0.0.1:6379",
        "rediss://:pw@h:6380/1",
        "sqlite:///var/lib/cedar/cedar.db",
        "sqlite://cedar.db",
    ] {
        let mut c = Config::from_toml("t", &valid_toml(), no_env()).unwrap();
        c.queue.url = ok.into();
        assert!(c.validate().is_ok(), "{ok:?}");
    }
    for bad in ["sqlite://", "/tmp/cedar.db", "postgres://u:hunter2@h/db"] {
        let mut c = Config::from_toml("t", &valid_toml(), no_env()).unwrap();
        c.queue.url = bad.into();
        let e = c.validate().unwrap_err();
        assert_eq!(e.problems[0].key, "queue.url", "{bad:?}: {e}");
        assert!(e.to_string().contains("sqlite://"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    let mut c = Config::from_toml("t", &valid_toml(), no_env()).unwrap();
    c.queue.url = "sqlite://".into();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("names no database file"), "{e}");
}

#[test]
fn scopes_default_to_earth_engine_and_storage_and_are_checked() {
    let c = Config::from_toml("t", &valid_toml(), no_env()).unwrap();
    assert_eq!(
        c.earthengine.scopes,
        [
            "https://www.googleapis.com/auth/earthengine",
            "https://www.googleapis.com/auth/devstorage.read_write"
        ]
    );
    let problem = |scopes: &str| {
        let text = valid_toml().replacen("[export]", &format!("scopes = {scopes}\n[export]"), 1);
        match Config::from_toml("t", &text, no_env()).unwrap().validate() {
            Ok(_) => None,
            Err(e) => {
                assert_eq!(e.problems.len(), 1, "{e}");
                assert_eq!(e.problems[0].key, "earthengine.scopes");
                Some(e.problems[0].to_string())
            }
        }
    };
    assert_eq!(
        problem(r#"["https://www.googleapis.com/auth/cloud-platform"]"#),
        None
    );
    let cases = [
        ("[]", "is empty; list OAuth scope URLs"),
        (
            r#"["https://www.googleapis.com/auth/earthengine", "devstorage.read_write"]"#,
            "\"devstorage.read_write\" is not a Google OAuth scope",
        ),
        (
            r#"["https://www.googleapis.com/auth/"]"#,
            "is not a Google OAuth scope",
        ),
        (
            r#"["https://www.googleapis.com/auth/devstorage.read_write"]"#,
            "lets Earth Engine run exports; add \"https://www.googleapis.com/auth/earthengine\"",
        ),
    ];
    for (scopes, expect) in cases {
        let got = problem(scopes).unwrap_or_else(|| panic!("{scopes} accepted"));
        assert!(got.contains(expect), "{scopes}: {got}");
    }
}

#[test]
fn the_web_console_is_loopback_or_behind_a_token() {
    let check = |web: &str| -> Vec<String> {
        let text = format!("{}[web]\n{web}\n", valid_toml());
        match Config::from_toml("t", &text, no_env()).unwrap().validate() {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    };
    assert!(check("listen = \"127.0.0.1:0\"").is_empty());
    assert!(check("listen = \"[::1]:8080\"").is_empty());
    assert!(check("listen = \"0.0.0.0:8080\"\ntoken = \"s3cret\"").is_empty());
    assert!(check("allow_actions = true\ntoken = \"s3cret\"").is_empty());
    let open = check("listen = \"0.0.0.0:8080\"");
    assert!(
        open.len() == 1 && open[0].starts_with("web.listen: \"0.0.0.0:8080\" is reachable"),
        "{open:?}"
    );
    // A blank token is no token.
    let blank = check("listen = \"10.0.0.1:8080\"\ntoken = \"  \"");
    assert_eq!(blank.len(), 1, "{blank:?}");
    let actions = check("allow_actions = true");
    assert!(
        actions.len() == 1 && actions[0].starts_with("web.allow_actions: needs web.token"),
        "{actions:?}"
    );
    // An empty address is the metrics listener's, guarded where the worker places it.
    assert!(check("listen = \"\"").is_empty());
    let bad = check("listen = \"localhost\"");
    assert!(
        bad.len() == 1 && bad[0].contains("is not a socket address"),
        "{bad:?}"
    );
}

#[test]
fn the_console_shares_the_metrics_listener_unless_that_is_exposed_without_a_token() {
    let web = |listen: &str, token: Option<&str>| WebConfig {
        listen: listen.into(),
        allow_actions: false,
        token: token.map(str::to_owned),
    };
    assert_eq!(
        web("", None).placement("127.0.0.1:9464"),
        WebPlacement::Metrics
    );
    assert_eq!(
        web("127.0.0.1:0", None).placement("127.0.0.1:0"),
        WebPlacement::Metrics
    );
    assert_eq!(
        web("127.0.0.1:8080", None).placement("0.0.0.0:9464"),
        WebPlacement::Own("127.0.0.1:8080")
    );
    assert!(matches!(
        web("", None).placement("0.0.0.0:9464"),
        WebPlacement::Off(why) if why.contains("[web] token")
    ));
    assert_eq!(
        web("", Some("t")).placement("0.0.0.0:9464"),
        WebPlacement::Metrics
    );
    assert_eq!(web("", None).standalone_listen(), WebConfig::STANDALONE);
    assert_eq!(web("10.0.0.1:1", None).standalone_listen(), "10.0.0.1:1");
}
