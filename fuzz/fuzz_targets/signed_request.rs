//! `cargo +nightly fuzz run signed_request`: see `spacesync_fuzz::signed_request` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spacesync_fuzz::signed_request(data));
