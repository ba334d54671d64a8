//! The `rpc` fuzz target: see `snorky::fuzzing::rpc`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snorky::fuzzing::rpc(data));
