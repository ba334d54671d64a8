//! Replays every committed fuzz input through the fuzz targets' entry points: the minimized
//! corpus of each target (fuzz/corpus/<target>/) and the inputs that once failed
//! (fuzz/regressions/<target>/), so a regression fails `cargo test` without cargo-fuzz or
//! libFuzzer. `make fuzz` grows and minimizes the corpora.

use std::fs;
use std::path::{Path, PathBuf};

use snorky::fuzzing::TARGETS;

/// The inputs of `target` under fuzz/<kind>/, sorted for a stable order.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target);
    let Ok(entries) = fs::read_dir(&directory) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> =
        entries.map(|entry| entry.expect("a readable corpus directory").path()).filter(|path| path.is_file()).collect();
    files.sort();
    files
}

/// Runs every input of every target; returns how many ran.
fn replay(kind: &str) -> usize {
    let mut count = 0;
    for &(target, run) in TARGETS {
        for path in inputs(kind, target) {
            let data = fs::read(&path).expect("a readable corpus file");
            // A failing input panics inside `run`; name it first so the failure says which.
            eprintln!("{target}: {}", path.display());
            run(&data);
            count += 1;
        }
    }
    count
}

#[test]
fn every_corpus_input_passes() {
    let count = replay("corpus");
    // Every target has a committed corpus; an empty replay would hide a moved directory.
    for &(target, _) in TARGETS {
        assert!(!inputs("corpus", target).is_empty(), "fuzz/corpus/{target}/ is missing or empty");
    }
    println!("replayed {count} corpus inputs");
}

#[test]
fn every_regression_input_passes() {
    let count = replay("regressions");
    println!("replayed {count} regression inputs");
}
