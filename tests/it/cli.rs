//! The `cedar` binary: configuration checks, tiles and periods, with their exit codes.

use std::path::Path;
use std::process::Output;

use crate::support::{cedar_command, one_tile};

/// Runs `cedar ARGS` in `dir` with the developer's own settings kept out and `env` added.
fn cedar(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = cedar_command();
    cmd.current_dir(dir).args(args).envs(env.iter().copied());
    cmd.output().expect("run cedar")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn config_check_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "ok.toml",
        "[earthengine]\nproject = \"p\"\ncredentials = \"none\"\n[export]\nbucket = \"b-1\"\n",
    );
    let o = cedar(dir.path(), &["--config", &cfg, "config", "check"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.starts_with("ok:") && out.contains("gs://b-1"), "{out}");
    // Valid, but Google refuses requests without a token: said now, not at the first export.
    assert!(
        err.contains("warning: earthengine.credentials = \"none\""),
        "{err}"
    );
    assert!(!err.contains("earthengine.project"), "{err}");

    // Without a project every EE call would fail later; the check says so, naming the key.
    let cfg = write(
        dir.path(),
        "no-project.toml",
        "[earthengine]\nendpoint = \"http://127.0.0.1:9\"\ncredentials = \"none\"\n[export]\nbucket = \"b-1\"\n",
    );
    let o = cedar(dir.path(), &["--config", &cfg, "config", "check"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            "warning: earthengine.project is empty: every command that talks to Earth Engine will fail; set the Cloud project registered for Earth Engine"
        ],
        "{err}"
    );
}

#[test]
fn config_check_prints_one_line_per_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "bad.toml",
        r#"[earthengine]
credentials = "/nonexistent/key.json"
[queue]
url = "http://:s3cret-pass@redis.example"
[export]
file_dimensions = 100
[tracking]
template = "T_{today}"
"#,
    );
    let o = cedar(dir.path(), &["--config", &cfg, "config", "check"], &[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    for key in [
        "earthengine.credentials",
        "queue.url",
        "export.bucket",
        "export.file_dimensions",
        "tracking.template",
    ] {
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains(&format!(" {key}: ")))
                .count(),
            1,
            "{key} once in:\n{err}"
        );
    }
    assert!(!err.contains("s3cret-pass"), "password leaked:\n{err}");
}

#[test]
fn environment_overrides_and_config_env_var() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "c.toml", "[earthengine]\nproject = \"p\"\n");
    // Missing bucket in the file, supplied by the environment.
    let o = cedar(
        dir.path(),
        &["config", "check"],
        &[
            ("CEDAR_CONFIG", &cfg),
            ("CEDAR__EXPORT__BUCKET", "env-bucket"),
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("env-bucket"), "{out}");
    let o = cedar(
        dir.path(),
        &["config", "check"],
        &[("CEDAR_CONFIG", &cfg), ("CEDAR__EXPORT__BUKET", "x")],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("export.buket: unknown"), "{err}");
}

#[test]
fn unknown_keys_and_malformed_files_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "u.toml",
        "[export]\nbucket = \"b-1\"\nbukket = 3\n",
    );
    let o = cedar(dir.path(), &["--config", &cfg, "config", "check"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("export.bukket"), "{:?}", text(&o));

    let cfg = write(dir.path(), "m.toml", "[export\nbucket=");
    let o = cedar(dir.path(), &["--config", &cfg, "config", "check"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("malformed TOML"), "{:?}", text(&o));

    let o = cedar(
        dir.path(),
        &["--config", "/nonexistent.toml", "config", "check"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("cannot read /nonexistent.toml"),
        "{:?}",
        text(&o)
    );
}

#[test]
fn config_show_prints_effective_values_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let o = cedar(
        dir.path(),
        &["config", "show"],
        &[("CEDAR__QUEUE__URL", "redis://:topsecret@127.0.0.1:6380/1")],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("[export]") && out.contains("file_dimensions = 1024"),
        "{out}"
    );
    assert!(!out.contains("topsecret") && out.contains(":***@"), "{out}");
}

#[test]
fn tiles_print_their_exact_grid() {
    let dir = tempfile::tempdir().unwrap();
    let o = cedar(dir.path(), &["tile", "3,10"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("h010v003")
            && out.contains("[-1065585, 2714805, -915585, 2864805]")
            && out.contains("[30.0, 0.0, -1065585.0, 0.0, -30.0, 2864805.0]")
            && out.contains("5000x5000"),
        "{out}"
    );
    let o = cedar(dir.path(), &["tile", "22,0"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("outside the grid"), "{:?}", text(&o));
    let o = cedar(dir.path(), &["tile", "3;10"], &[]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("ROW,COL"), "{:?}", text(&o));
}

#[test]
fn periods_warn_about_a_dropped_partial_period() {
    let dir = tempfile::tempdir().unwrap();
    let o = cedar(
        dir.path(),
        &[
            "periods",
            "--start",
            "1997-06-01",
            "--end",
            "2000-01-01",
            "--freq",
            "1YS",
        ],
        &[],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        out,
        "1998-01-01 1999-01-01\n1999-01-01 2000-01-01\n2000-01-01 2001-01-01\n"
    );
    assert!(err.contains("1997-06-01..1998-01-01 is dropped"), "{err}");
    let o = cedar(
        dir.path(),
        &["periods", "--start", "2000-01-01", "--end", "1999-01-01"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("not after start"), "{:?}", text(&o));
    let o = cedar(
        dir.path(),
        &[
            "periods",
            "--start",
            "2000-01-01",
            "--end",
            "2001-01-01",
            "--freq",
            "1Y",
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).1.contains("YS (years)"), "{:?}", text(&o));
}

/// The README's walkthrough, command by command, with the shipped `config/emulator.toml`: only
/// its paths and the emulator's port are moved to the test's own (`CEDAR__…` overrides), so a
/// key the walkthrough needs and the file lacks fails here.
#[test]
fn the_emulator_walkthrough_runs_with_the_shipped_config() {
    use crate::support::{Process, free_port};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/emulator.toml");
    let port = free_port();
    let bucket = format!("file://{}/bucket", root.display());
    let overrides = [
        ("CEDAR_CONFIG", shipped.display().to_string()),
        (
            "CEDAR__EARTHENGINE__ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("CEDAR__STORE__URL", bucket.clone()),
        (
            "CEDAR__QUEUE__URL",
            format!("sqlite://{}/cedar.db", root.display()),
        ),
        (
            "CEDAR__DOWNLOAD__DEST",
            root.join("downloads").display().to_string(),
        ),
        ("CEDAR__METRICS__LISTEN", "127.0.0.1:0".to_owned()),
    ];
    let env: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let spawn = |args: &[&str], log: &str| {
        let mut cmd = cedar_command();
        cmd.current_dir(root).args(args).envs(env.iter().copied());
        Process::spawn(cmd, root.join(log))
    };
    let mut emulator = spawn(
        &[
            "emulator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            &bucket,
            "--project",
            "cedar-walkthrough",
        ],
        "emulator.log",
    );

    let check = cedar(root, &["config", "check"], &env);
    assert!(check.status.success(), "{:?}", text(&check));
    // doctor asks the emulator, which may still be starting.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{}", emulator.tail(20));
        std::thread::sleep(Duration::from_millis(100));
    }
    let doctor = cedar(root, &["doctor"], &env);
    let (out, err) = text(&doctor);
    assert!(doctor.status.success(), "{out}{err}");
    assert!(
        out.lines().count() == 8 && out.lines().all(|l| l.starts_with("ok   ")),
        "{out}"
    );
    let submit = cedar(
        root,
        &[&["submit"][..], &one_tile("2021-09-01")].concat(),
        &env,
    );
    let (out, err) = text(&submit);
    assert!(submit.status.success(), "{out}{err}");
    let name = out.trim().to_owned();
    let mut worker = spawn(&["worker"], "worker.log");

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = cedar(root, &["status", &name], &env);
        if status.status.code() == Some(0) {
            assert!(text(&status).0.contains("CLEANED=1"), "{:?}", text(&status));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status {:?}; worker log:\n{}",
            text(&status),
            worker.tail(30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let list = cedar(root, &["list"], &env);
    assert!(text(&list).0.contains(&name), "{:?}", text(&list));
    // Watching needs only the queue: a file with nothing but [queue] will do.
    let queue_only = write(
        root,
        "queue-only.toml",
        &format!("[queue]\nurl = \"sqlite://{}/cedar.db\"\n", root.display()),
    );
    for args in [&["list"][..], &["status", &name]] {
        let mut all = vec!["--config", queue_only.as_str()];
        all.extend_from_slice(args);
        let o = cedar(root, &all, &[]);
        let (out, err) = text(&o);
        assert!(
            o.status.success() && out.contains(&name),
            "{args:?}: {out}{err}"
        );
    }
    let pieces = std::fs::read_dir(root.join("downloads").join(&name))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "tif")
        })
        .count();
    assert!(pieces > 0, "no GeoTIFF downloaded");
    worker.kill();
    emulator.kill();
}

/// The default SQLite queue of a configuration file lives beside the file, whatever the working
/// directory; reading commands never create an empty queue, they say where they looked.
#[test]
fn the_default_queue_is_beside_the_config_file_and_never_created_by_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (conf_dir, elsewhere) = (dir.path().join("conf"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let cfg = write(
        &conf_dir,
        "c.toml",
        "[earthengine]\nproject = \"p\"\ncredentials = \"none\"\n[export]\nbucket = \"b-1\"\n",
    );
    let show = cedar(&elsewhere, &["--config", &cfg, "config", "show"], &[]);
    let queue = format!("sqlite://{}", conf_dir.join("cedar.db").display());
    assert!(
        text(&show).0.contains(&format!("url = \"{queue}\"")),
        "{:?}",
        text(&show)
    );
    for command in [&["list"][..], &["status", "X"], &["show", "X"]] {
        let mut args = vec!["--config", cfg.as_str()];
        args.extend_from_slice(command);
        let o = cedar(&elsewhere, &args, &[]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{command:?}: {out}{err}");
        assert!(
            err.contains(&format!(
                "no queue at {}",
                conf_dir.join("cedar.db").display()
            )),
            "{command:?}: {err}"
        );
    }
    for d in [&conf_dir, &elsewhere] {
        let files: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            files.iter().all(|f| f == "c.toml"),
            "{}: {files:?}",
            d.display()
        );
    }
}
