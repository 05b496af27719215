//! `cargo +nightly fuzz run agent_intake`: see `spacesync_fuzz::agent_intake` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spacesync_fuzz::agent_intake(data));
