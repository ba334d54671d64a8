//! The soak's short version: 30 seconds of 200 churning connections (connect with a token,
//! subscribe to PubSub, acquire or resume a DataSync subscription, receive, leave, come back)
//! against a debug build, with publishes throughout. Nothing may be lost, duplicated or
//! reordered, no session may fail, and the server's descriptors, tasks and gauges must come back
//! to their baseline once the load stops (the soak exits non-zero otherwise). Its memory is
//! reported but judged only on long runs (`bench/run.sh --soak`).
//! Run by `cargo test -p snorky-bench`, and with the crate's tests by `cargo test --workspace`.

use std::process::Command;

#[test]
fn half_a_minute_of_churn_loses_nothing_and_leaves_nothing_behind() {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let plot = std::env::temp_dir().join(format!("snorky-bench-soak-{}.svg", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_snorky-bench"))
        .current_dir(repo)
        .args(["soak", "--secs", "30", "--connections", "200", "--channels", "10", "--owners", "10"])
        .args(["--session-min", "2", "--session-max", "8", "--pause-max", "0.5", "--sample-secs", "5"])
        .args(["--abrupt-percent", "20", "--command-line", "cargo test -p snorky-bench (soak)"])
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("snorky-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "soak failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("| 0 PubSub and 0 DataSync missing, 0 duplicated or reordered"), "{stdout}");
    // The churn happened: far more sessions than connections, resumes and abrupt endings among
    // them, and deliveries of both kinds.
    let count = |label: &str| -> u64 {
        let line = stdout.lines().find(|line| line.starts_with(&format!("| {label}"))).unwrap_or_default();
        line.rsplit('|').nth(1).map_or(0, |n| n.trim().replace(',', "").parse().unwrap_or(0))
    };
    assert!(count("sessions (") > 300, "too few sessions in\n{stdout}");
    for label in
        ["DataSync resumes", "sessions ended by cancelling", "PubSub messages received", "DataSync deltas received"]
    {
        assert!(count(label) > 0, "no {label:?} in\n{stdout}");
    }
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    let _ = std::fs::remove_file(&plot);
    assert!(svg.starts_with("<svg") && svg.contains("Server memory"), "not the plot: {}", &svg[..svg.len().min(200)]);
}
