//! The benchmark's smoke run: every scenario at tiny sizes against the ceiling and Snorky (and
//! Channels when its venv exists; the Python-service scenario when the project's `.venv`
//! exists), checking that every delivery arrives once and in order.
//! Run by `cargo test -p snorky-bench`, and with the crate's tests by `cargo test --workspace`.

use std::process::Command;

#[test]
fn smoke_run_passes() {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new(env!("CARGO_BIN_EXE_snorky-bench"))
        .current_dir(repo)
        .args(["run", "--smoke"])
        .output()
        .expect("snorky-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "smoke run failed\n{stdout}\n{stderr}");
    for metric in [
        "fan-out",
        "idle",
        "set-up",
        "channels ×",
        "steady",
        "RPC",
        "backend",
        "routing:",
        "DataSync",
        "chat 1 room",
        "SockJS fan-out",
        "SockJS expired",
        "Several nodes on Redis",
        "Redis hop",
        "Redis CPU µs/delivery",
    ] {
        assert!(stdout.contains(metric), "no {metric:?} row in\n{stdout}");
    }
    // The Python-service and django scenarios run only when the project's venv exists (else a
    // skip line).
    let python = std::path::Path::new(repo).join(".venv/bin/python");
    for (row, skipped) in [
        ("Python RPCService echo", "python: skipped"),
        ("commit → delivery p99 (ms)", "django: skipped"),
        ("django save() of a new row in a transaction (outbox)", "django: skipped"),
    ] {
        let expected = if python.exists() { row } else { skipped };
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
}
