//! `cargo +nightly fuzz run ingest_chain`: see `spacesync_fuzz::ingest_chain` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spacesync_fuzz::ingest_chain(data));
