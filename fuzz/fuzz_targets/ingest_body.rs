//! `cargo +nightly fuzz run ingest_body`: see `spacesync_fuzz::ingest_body` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spacesync_fuzz::ingest_body(data));
