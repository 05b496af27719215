//! Ed25519 key files and the public-key line an admin pastes.
//!
//! This is the one module of `shared` that touches the file system: key files are the
//! same on agent and hub, and their permission rules must not differ between them.
//!
//! Secret key file (mode 0600, refused when group or others can read it):
//! ```text
//! spacesync-secret-key-v1
//! <base64 of the 32-byte Ed25519 seed>
//! ```
//! Public key line (what `pubkey` prints and `agents add --key` takes):
//! `ed25519:<base64 of the 32-byte public key>`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SigningKey, VerifyingKey};

const SECRET_HEADER: &str = "spacesync-secret-key-v1";
const PUBLIC_PREFIX: &str = "ed25519:";

/// A key file problem; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operating system gave no randomness.
    #[error("cannot generate a key: the system random source failed ({0})")]
    Random(String),
    /// The key file exists already.
    #[error(
        "{0}: a key file exists already; refusing to overwrite it (move it away first if you really mean to replace this identity)"
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
    /// The key file can be read by group or others.
    #[error("{path}: key file is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file's content is not a key.
    #[error("{path}: not a spacesync secret key file ({why})")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
}

/// Why a public key line is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    /// Not of the form `ed25519:<base64>`.
    #[error("a public key looks like \"ed25519:<base64 of 32 bytes>\" (as `pubkey` prints it)")]
    Format,
    /// Not a valid curve point.
    #[error("the public key is not a valid Ed25519 point")]
    Invalid,
    /// A key with a small-order component (small or mixed order), which would accept
    /// forged signatures or make verifiers disagree.
    #[error(
        "the public key is weak (it has a small-order component) and is refused; generate a new key with the agent's init"
    )]
    Weak,
}

/// A fresh key from the operating system's random source.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes a new secret key file with mode 0600, flushed to disk. Refuses to overwrite.
pub fn write_secret(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let io = |error| KeyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_path_buf())
        } else {
            io(e)
        }
    })?;
    let text = format!("{SECRET_HEADER}\n{}\n", STANDARD.encode(key.to_bytes()));
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

/// Reads a secret key file, refusing one that group or others can read.
pub fn read_secret(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |error| KeyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let meta = fs::metadata(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let text = fs::read_to_string(path).map_err(io)?;
    parse_secret(&text).map_err(|why| KeyError::Malformed {
        path: path.to_path_buf(),
        why,
    })
}

fn parse_secret(text: &str) -> Result<SigningKey, &'static str> {
    let mut lines = text.lines();
    if lines.next() != Some(SECRET_HEADER) {
        return Err("the first line must be spacesync-secret-key-v1");
    }
    let b = lines.next().ok_or("the key line is missing")?;
    let bytes = STANDARD
        .decode(b.trim())
        .map_err(|_| "the key line is not base64")?;
    let seed: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| "the key is not 32 bytes")?;
    if lines.any(|l| !l.trim().is_empty()) {
        return Err("unexpected text after the key line");
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key line: `ed25519:<base64>`.
pub fn public_key_line(key: &VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}", STANDARD.encode(key.as_bytes()))
}

/// Parses a public key line, refusing invalid and weak keys.
pub fn parse_public_key(line: &str) -> Result<VerifyingKey, PublicKeyError> {
    let b = line
        .trim()
        .strip_prefix(PUBLIC_PREFIX)
        .ok_or(PublicKeyError::Format)?;
    let bytes = STANDARD.decode(b).map_err(|_| PublicKeyError::Format)?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| PublicKeyError::Format)?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| PublicKeyError::Invalid)?;
    // Small-order and mixed-order keys alike: the one rule of `crate::sig`.
    crate::sig::check_key(&key).map_err(|_| PublicKeyError::Weak)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = generate().unwrap();
        write_secret(&path, &key).unwrap();
        assert_eq!(read_secret(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(matches!(
            write_secret(&path, &key),
            Err(KeyError::Exists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let err = read_secret(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::Permissions { mode: 0o644, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"));
        }
    }

    #[test]
    fn malformed_key_files_are_refused() {
        for text in [
            "",
            "spacesync-secret-key-v1\n",
            "spacesync-secret-key-v1\nAAAA\n",
            "hello\n",
        ] {
            assert!(parse_secret(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn public_key_line_round_trips_and_weak_keys_are_refused() {
        let key = SigningKey::from_bytes(&[1; 32]).verifying_key();
        let line = public_key_line(&key);
        assert!(line.starts_with("ed25519:"));
        assert_eq!(parse_public_key(&line), Ok(key));
        assert_eq!(
            parse_public_key("ssh-ed25519 AAAA"),
            Err(PublicKeyError::Format)
        );
        assert_eq!(
            parse_public_key("ed25519:AAAA"),
            Err(PublicKeyError::Format)
        );
        // The identity point (a small-order point) encoded: y = 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = format!("ed25519:{}", STANDARD.encode(identity));
        assert_eq!(parse_public_key(&weak), Err(PublicKeyError::Weak));
    }
}
