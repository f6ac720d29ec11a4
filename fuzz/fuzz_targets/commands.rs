//! `cargo fuzz run commands`: the harness is `streamwatch::fuzzing::commands` (src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamwatch::fuzzing::commands(data));
