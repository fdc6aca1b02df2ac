//! The `cedar` binary: configuration checks, tiles and periods, with their exit codes.

use std::path::Path;
use std::process::Output;

use crate::support::cedar_command;

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
