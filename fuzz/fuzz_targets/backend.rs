//! The `backend` fuzz target: see `snorky::fuzzing::backend`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snorky::fuzzing::backend(data));
