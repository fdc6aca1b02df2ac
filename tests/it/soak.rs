//! The soak at CI size: `cedar soak --tile-periods 300` — two workers, one SIGKILLed every 8 s,
//! EE throwing 429/503 and FAILED tasks, a download cut mid-stream, Redis restarted once —
//! must print every invariant PASS and exit 0, within a bounded time.

use std::process::Command;

#[test]
fn a_soak_of_300_tile_periods_keeps_every_invariant() {
    let out = Command::new(env!("CARGO_BIN_EXE_cedar"))
        .args([
            "soak",
            "--tile-periods",
            "300",
            "--workers",
            "2",
            "--kill-every-secs",
            "8",
            "--lease-secs",
            "5",
            "--seconds-budget",
            "200",
        ])
        .env_remove("CEDAR_CONFIG")
        .output()
        .expect("run cedar soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for n in 0..=6 {
        assert!(
            stdout.contains(&format!("PASS ({n})")),
            "invariant ({n}) printed PASS: {stdout}"
        );
    }
    // "FAIL (n)" opens a failed invariant; "FAILED" in a description is a fault that happened.
    assert!(!stdout.lines().any(|l| l.starts_with("FAIL (")), "{stdout}");
}
