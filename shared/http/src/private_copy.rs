//! Copying data directories privately, for both binaries' `backup` and `restore`:
//! directories 0700, files 0600 and synced, a target that must be new or empty.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file operation that failed, with its path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {error}")]
pub struct FileError {
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    pub error: std::io::Error,
}

fn at(path: &Path) -> impl Fn(std::io::Error) -> FileError + '_ {
    move |error| FileError {
        path: path.to_path_buf(),
        error,
    }
}

/// Whether `dir` exists and holds something.
pub fn non_empty(dir: &Path) -> Result<bool, FileError> {
    if !dir.exists() {
        return Ok(false);
    }
    Ok(fs::read_dir(dir).map_err(at(dir))?.next().is_some())
}

/// Creates `dir` 0700 (its parents as needed), or makes an existing one 0700. The caller
/// checks [`non_empty`] first.
pub fn private_dir(dir: &Path) -> Result<(), FileError> {
    fs::create_dir_all(dir).map_err(at(dir))?;
    set_mode(dir, 0o700)
}

/// Sets a path's permission bits.
pub fn set_mode(path: &Path, mode: u32) -> Result<(), FileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(at(path))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Copies one file to a new file, 0600 from the moment it exists, and syncs it.
pub fn copy_file(from: &Path, to: &Path) -> Result<(), FileError> {
    let bytes = fs::read(from).map_err(at(from))?;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(to).map_err(at(to))?;
    f.write_all(&bytes).map_err(at(to))?;
    f.sync_all().map_err(at(to))
}

/// Copies a tree: directories 0700, regular files 0600; anything else (a socket, a
/// link) is left out.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), FileError> {
    private_dir(to)?;
    for e in fs::read_dir(from).map_err(at(from))? {
        let e = e.map_err(at(from))?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let kind = e.file_type().map_err(at(&src))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            copy_file(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_tree_is_private_and_skips_what_is_not_a_file() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let src = d.path().join("src");
        fs::create_dir_all(src.join("db")).unwrap_or_else(|e| panic!("{e}"));
        fs::write(src.join("a.toml"), "x").unwrap_or_else(|e| panic!("{e}"));
        fs::write(src.join("db/conf"), "y").unwrap_or_else(|e| panic!("{e}"));
        #[cfg(unix)]
        let _l = std::os::unix::net::UnixListener::bind(src.join("control.sock"))
            .unwrap_or_else(|e| panic!("{e}"));
        let dst = d.path().join("dst");
        copy_tree(&src, &dst).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            fs::read_to_string(dst.join("db/conf")).unwrap_or_default(),
            "y"
        );
        assert!(!dst.join("control.sock").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| {
                fs::metadata(p)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or(0)
            };
            assert_eq!(mode(&dst), 0o700);
            assert_eq!(mode(&dst.join("db")), 0o700);
            assert_eq!(mode(&dst.join("a.toml")), 0o600);
        }
        assert!(non_empty(&dst).unwrap_or(false));
        assert!(
            copy_file(&src.join("a.toml"), &dst.join("a.toml")).is_err(),
            "never overwrites"
        );
    }
}
