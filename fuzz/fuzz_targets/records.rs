//! `cargo +nightly fuzz run records`: see `spacesync_fuzz::records` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spacesync_fuzz::records(data));
