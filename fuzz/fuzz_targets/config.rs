//! `cargo fuzz run config`: the harness is `streamwatch::fuzzing::config` (src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamwatch::fuzzing::config(data));
