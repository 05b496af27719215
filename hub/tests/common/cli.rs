//! The real `spacesync-hub` binary, run on a data directory.

use std::path::Path;
use std::process::{Command, Output};

/// The hub binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_spacesync-hub");

/// Runs `spacesync-hub --data dir args…` (ignoring any `SPACESYNC_HUB_DATA` of the caller).
pub fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data")
        .arg(dir)
        .args(args)
        .env_remove("SPACESYNC_HUB_DATA")
        .output()
        .expect("run spacesync-hub")
}

/// [`run`], which must succeed; its standard output, trimmed.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `init` on `backend`: the embedded store, or `--store` a fresh PostgreSQL database
/// (whose URL is returned).
pub fn init(dir: &Path, backend: super::Backend) -> Option<String> {
    match backend {
        super::Backend::Sled => {
            ok(dir, &["init"]);
            None
        }
        super::Backend::Postgres => {
            let url = spacesync_pgtest::database();
            ok(dir, &["init", "--store", &url]);
            Some(url)
        }
    }
}
