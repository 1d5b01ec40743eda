//! Small helpers shared by the commands: atomic file writes.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Writes `path` atomically: the bytes go to a temporary file in the same folder, which is flushed
/// and then renamed over `path`. On any error nothing is left at `path` (an older file stays intact)
/// and the temporary file is removed.
///
/// # Errors
/// [`Error::Io`] naming `path` when the folder is missing or not writable, or the disk is full.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    write_atomic_checked(path, write, |_| Ok(()))
}

/// As [`write_atomic`], and `check` is called with the complete temporary file before the rename:
/// when it fails, the temporary file is removed and nothing appears at `path`.
///
/// # Errors
/// As [`write_atomic`], or `check`'s error.
pub fn write_atomic_checked(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(path, e))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut w).map_err(|e| Error::io(path, e))?;
        w.flush().map_err(|e| Error::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    // Temporary files are created 0600; give the result the usual permissions of a new file.
    set_mode(tmp.path(), 0o666).map_err(|e| Error::io(path, e))?;
    check(tmp.path())?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Sets `mode` on `path`, masked by the process umask (as `open`/`mkdir` would for a new file or folder).
///
/// # Errors
/// The operating-system error of `chmod`.
pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !umask()))
}

/// The process umask, read from /proc (setting and restoring it would race with other threads);
/// the conventional 022 when /proc is unavailable.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string()))
        })
        .and_then(|v| u32::from_str_radix(&v, 8).ok())
        .unwrap_or(0o022)
}

/// Serialises `value` as pretty JSON and writes it atomically to `path` (see [`write_atomic`]).
///
/// # Errors
/// As [`write_atomic`].
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::invalid(path, format!("cannot serialise JSON: {e}")))?;
    write_atomic(path, |w| {
        w.write_all(&bytes)?;
        w.write_all(b"\n")
    })
}

/// Reads and parses a JSON file.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::InvalidFile`] when it is not valid JSON of type `T`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::invalid(path, format!("invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.json");
        std::fs::write(&p, b"old").unwrap();
        let err = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("simulated failure"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("out.json"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn written_file_gets_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        write_atomic(&p, |w| w.write_all(b"x")).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask());
        assert_ne!(mode & 0o044, 0, "readable by others under the usual umask");
    }

    #[test]
    fn write_into_missing_folder_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing/out.bin");
        let err = write_atomic(&p, |w| w.write_all(b"x")).unwrap_err();
        assert!(err.to_string().contains("missing/out.bin"), "{err}");
    }
}
