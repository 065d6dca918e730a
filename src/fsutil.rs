//! Atomic file replacement: write a temporary file beside the target, fsync, rename, fsync the
//! directory (once for several files of one directory). A reader (nginx) sees the old file or the
//! new one, never a partial one.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes`, creating it with `mode` (e.g. 0o600 for keys): durable once
/// this returns (the file and the directory are fsynced).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = split(path)?;
    write_atomic_many(dir, &[(name, bytes, mode)])
}

/// Replaces `path` atomically but without any fsync: a reader sees the old file or the new one,
/// but after a crash the file may be the old one, or empty if it did not exist before. Only for
/// data whose loss is harmless (advisory state), where an fsync costs more than the data is worth.
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = split(path)?;
    let tmp = write_tmp(dir, name, bytes, mode, false)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Replaces several files of one directory, each atomically, durable once this returns: every
/// temporary file is written and fsynced first, then all are renamed into place back to back,
/// then the directory is fsynced once. Readers of a pair (nginx reading a certificate and its
/// key) can only see it mixed during the few microseconds between the renames, not during any
/// fsync.
pub fn write_atomic_many(dir: &Path, files: &[(&OsStr, &[u8], u32)]) -> io::Result<()> {
    let mut tmps: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(files.len());
    let result = (|| {
        for (name, bytes, mode) in files {
            let tmp = write_tmp(dir, name, bytes, *mode, true)?;
            tmps.push((tmp, dir.join(name)));
        }
        for (tmp, path) in &tmps {
            fs::rename(tmp, path)?;
        }
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        for (tmp, _) in &tmps {
            let _ = fs::remove_file(tmp);
        }
    }
    result
}

fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok((dir, name))
}

/// Writes `bytes` to a temporary file beside `dir/name` with exactly `mode`, fsynced if `sync`.
fn write_tmp(dir: &Path, name: &OsStr, bytes: &[u8], mode: u32, sync: bool) -> io::Result<PathBuf> {
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.write_all(bytes)?;
        if sync {
            file.sync_all()?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_atomic(&path, b"one", 0o644).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }

    #[test]
    fn many_files_and_unsynced() {
        let dir = tempfile::tempdir().unwrap();
        let files: [(&OsStr, &[u8], u32); 2] =
            [(OsStr::new("privkey.pem"), b"key", 0o600), (OsStr::new("fullchain.pem"), b"chain", 0o644)];
        write_atomic_many(dir.path(), &files).unwrap();
        assert_eq!(fs::read(dir.path().join("privkey.pem")).unwrap(), b"key");
        assert_eq!(fs::metadata(dir.path().join("privkey.pem")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.path().join("fullchain.pem")).unwrap().permissions().mode() & 0o777, 0o644);
        let state = dir.path().join("state.json");
        write_atomic_unsynced(&state, b"{}", 0o600).unwrap();
        assert_eq!(fs::read(&state).unwrap(), b"{}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3, "no temporary file left behind");
        assert!(write_atomic_many(&dir.path().join("missing"), &files).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
    }
}
