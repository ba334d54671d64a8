//! The `token` fuzz target: see `snorky::fuzzing::token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snorky::fuzzing::token(data));
