//! The `filter` fuzz target: see `snorky::fuzzing::filter`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snorky::fuzzing::filter(data));
