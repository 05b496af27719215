//! The intake token: the bearer secret every local API request except `/healthz` must carry.
//!
//! It lives in `<data>/intake.token`, one line, mode 0600. `init` generates it (32 bytes from
//! the operating system's random source, as 64 hex digits) and prints it once;
//! `spacesync-agent token` prints it again, `token --generate` creates it in a data directory
//! made before tokens existed, and `token --rotate` replaces it (restart the agent after).
//!
//! Why a file and not a key in `agent.toml`: the configuration is edited, copied into
//! tickets and backed up far more freely than a secret should be; a file of its own can
//! stay 0600 and be rotated without touching the configuration. The old optional
//! `intake_token` key of `agent.toml` is still read (so old files load) but ignored: with it
//! the default was "no token", which a web page in a browser on the same machine could use.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Shortest token accepted from the file (an operator may write their own).
pub const MIN_LEN: usize = 32;
/// Longest token accepted from the file.
pub const MAX_LEN: usize = 256;

/// An intake token problem; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The data directory has no token file.
    #[error(
        "{path}: no intake token. Every request to the agent's API must carry one; create it with `spacesync-agent --data {data} token --generate`, give it to the platform (`Authorization: Bearer <token>`) and start the agent again"
    )]
    Missing {
        /// The token file.
        path: PathBuf,
        /// The data directory, for the command to run.
        data: String,
    },
    /// The token file exists already.
    #[error(
        "{0}: an intake token exists already; `spacesync-agent token` prints it, `token --rotate` replaces it"
    )]
    Exists(PathBuf),
    /// Reading or writing failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The token file can be read or written by group or others.
    #[error(
        "{path}: the intake token is readable or writable by group or others (mode {mode:03o}); refusing to use it. Run `chmod 600 {path}`, and `spacesync-agent token --rotate` if others may have read it"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a usable token.
    #[error(
        "{path}: not a usable intake token ({why}); write one line of {MIN_LEN} to {MAX_LEN} visible ASCII characters, or replace it with `spacesync-agent token --rotate`"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// The operating system gave no randomness.
    #[error("cannot generate an intake token: the system random source failed ({0})")]
    Random(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |error| TokenError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// A fresh token: 32 bytes from the operating system, as 64 lower-case hex digits.
pub fn generate() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Options that create a file with mode 0600 from the start (never chmod after writing:
/// between the write and the chmod anyone could have opened it).
fn private_file() -> fs::OpenOptions {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts
}

fn write_to(path: &Path, token: &str) -> Result<(), TokenError> {
    let mut f = private_file().open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            TokenError::Exists(path.to_path_buf())
        } else {
            io(path)(e)
        }
    })?;
    f.write_all(format!("{token}\n").as_bytes())
        .map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(())
}

/// Writes a new token file (mode 0600, flushed). Refuses to overwrite.
pub fn write_new(path: &Path, token: &str) -> Result<(), TokenError> {
    write_to(path, token)
}

/// Replaces the token file atomically: a new 0600 file beside it, renamed over it.
pub fn replace(path: &Path, token: &str) -> Result<(), TokenError> {
    let tmp = path.with_extension("token.new");
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&tmp)(e)),
    }
    write_to(&tmp, token)?;
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        // The rename is durable once the directory is; failing here loses nothing.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the token, refusing a file that group or others can read or write, and one that
/// does not hold a single line of [`MIN_LEN`]–[`MAX_LEN`] visible ASCII characters.
pub fn read(path: &Path) -> Result<String, TokenError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TokenError::Missing {
                path: path.to_path_buf(),
                data: path
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| ".".into()),
            });
        }
        Err(e) => return Err(io(path)(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = fs::read(path).map_err(io(path))?;
    parse(&text).map_err(|why| TokenError::Malformed {
        path: path.to_path_buf(),
        why,
    })
}

fn parse(text: &[u8]) -> Result<String, &'static str> {
    let text = std::str::from_utf8(text).map_err(|_| "it is not text")?;
    let mut lines = text.lines();
    let token = lines.next().unwrap_or("").trim();
    if lines.any(|l| !l.trim().is_empty()) {
        return Err("it has more than one line");
    }
    if token.is_empty() {
        return Err("it is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it holds spaces or characters that are not visible ASCII");
    }
    if token.len() < MIN_LEN {
        return Err("it is too short to resist guessing");
    }
    if token.len() > MAX_LEN {
        return Err("it is too long");
    }
    Ok(token.to_string())
}

/// Compares a presented token with the expected one in time that depends only on the
/// expected length, so the token does not leak through timing.
pub fn matches(given: &str, expected: &str) -> bool {
    let (g, e) = (given.as_bytes(), expected.as_bytes());
    let mut diff = (g.len() != e.len()) as u8;
    for (i, b) in e.iter().enumerate() {
        diff |= b ^ g.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_written_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("intake.token");
        let t = generate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.len(), 64);
        assert_ne!(t, generate().unwrap_or_else(|e| panic!("{e}")));
        write_new(&path, &t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&path).ok().as_deref(), Some(t.as_str()));
        assert!(matches!(write_new(&path, &t), Err(TokenError::Exists(_))));
        let t2 = generate().unwrap_or_else(|e| panic!("{e}"));
        replace(&path, &t2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&path).ok().as_deref(), Some(t2.as_str()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(mode, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640))
                .unwrap_or_else(|e| panic!("{e}"));
            let err = read(&path).map(|_| ()).expect_err("0640 must be refused");
            assert!(matches!(err, TokenError::Permissions { mode: 0o640, .. }));
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn a_missing_token_says_how_to_create_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let err = read(&dir.path().join("intake.token"))
            .map(|_| ())
            .expect_err("missing");
        assert!(err.to_string().contains("token --generate"), "{err}");
    }

    #[test]
    fn unusable_token_files_are_refused() {
        for text in [
            &b""[..],
            b"\n",
            b"short\n",
            b"0123456789abcdef0123456789abcdef\nsecond\n",
            b"0123456789abcdef 0123456789abcdef\n",
            b"0123456789abcdef\xff0123456789abcdef\n",
        ] {
            assert!(parse(text).is_err(), "{:?}", String::from_utf8_lossy(text));
        }
        assert_eq!(
            parse(b"  0123456789abcdef0123456789abcdef \n\n")
                .ok()
                .as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn comparison_needs_the_whole_token() {
        assert!(matches("abc", "abc"));
        assert!(!matches("ab", "abc"));
        assert!(!matches("abcd", "abc"));
        assert!(!matches("", "abc"));
        assert!(!matches("abd", "abc"));
    }
}
