//! `cargo fuzz run template`: the harness is `streamwatch::fuzzing::template` (src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamwatch::fuzzing::template(data));
