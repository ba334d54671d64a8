//! The `frame` fuzz target: see `snorky::fuzzing::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snorky::fuzzing::frame(data));
