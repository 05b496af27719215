//! `cargo +nightly fuzz run envelope`: see `spacesync_fuzz::envelope` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spacesync_fuzz::envelope(data));
