//! `cargo fuzz run glob`: the harness is `streamwatch::fuzzing::glob` (src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamwatch::fuzzing::glob(data));
