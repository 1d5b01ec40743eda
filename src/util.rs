//! Small helpers shared by the commands: atomic file writes, counted nouns in messages.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

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
    write_atomic_with(path, |w| write(w).map_err(|e| Error::io(path, e)), check)
}

/// As [`write_atomic_checked`], for a `write` that can fail otherwise than by I/O (say, a report that
/// classifies images while it writes them) and returns a value: its errors are returned as they are,
/// so it names `path` in its own I/O errors.
///
/// # Errors
/// As [`write_atomic`], `write`'s error, or `check`'s error.
pub fn write_atomic_with<T>(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<T>,
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<T> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    remove_stale_temps(dir, &name);
    // `.<name>.<pid>.<random>.tmp`: the pid lets a later write remove it if this process is killed.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.{}.", std::process::id()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(path, e))?;
    let value = {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        let value = write(&mut w)?;
        w.flush().map_err(|e| Error::io(path, e))?;
        value
    };
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    // Temporary files are created 0600; give the result the usual permissions of a new file.
    set_mode(tmp.path(), 0o666).map_err(|e| Error::io(path, e))?;
    check(tmp.path())?;
    pause_point(&format!("before-rename:{name}"));
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(value)
}

/// The environment variable of [`pause_point`].
pub const PAUSE_ENV: &str = "PIPE_TEST_PAUSE";

/// A test hook: when the environment variable [`PAUSE_ENV`] equals `point`, the calling thread
/// prints `paused at <point>` on stderr and stops here for good, so that a test can wait for that
/// line and then signal or kill the process at exactly this point (after a training checkpoint,
/// before an atomic write's rename) instead of racing it. The points: `after-checkpoint`, and
/// `before-rename:<file name>` for every [`write_atomic`] family write. Unset (normal use), it does
/// nothing.
pub fn pause_point(point: &str) {
    if std::env::var_os(PAUSE_ENV).is_some_and(|v| v == point) {
        eprintln!("{}", paused_line(point));
        loop {
            std::thread::park();
        }
    }
}

/// The line [`pause_point`] prints when it stops at `point`.
pub fn paused_line(point: &str) -> String {
    format!("paused at {point}")
}

/// Removes the temporary files `.<name>.<pid>.<random>.tmp` that [`write_atomic`] left in `dir` when
/// its process `pid` was killed (SIGKILL, power loss) before it could clean up. Files of running
/// processes are left alone; failures are ignored (the files are hidden and harmless).
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .filter(|r| r.ends_with(".tmp"))
        else {
            continue;
        };
        let Some(pid) = rest
            .split('.')
            .next()
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Checks, before any work, that a file can be created at `path`: `path` is not a folder, and its
/// folder exists (or, with `create_parents`, can be created: no part of it is a regular file) and is
/// a folder.
///
/// # Errors
/// [`Error::InvalidFile`] naming `path` when it is a folder, or the offending folder: it does not
/// exist, or it is not a folder.
pub fn check_output_path(path: &Path, create_parents: bool) -> Result<()> {
    if path.is_dir() {
        return Err(Error::invalid(
            path,
            "is a folder, not a file to write; name a file (a new one, or one to replace) instead",
        ));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    for ancestor in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        match std::fs::metadata(ancestor) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => {
                return Err(Error::invalid(
                    ancestor,
                    format!(
                        "not a folder, so {} cannot be written; choose another output path",
                        path.display()
                    ),
                ))
            }
            Err(_) if create_parents => continue,
            Err(e) => {
                return Err(Error::invalid(
                    dir,
                    format!(
                        "folder does not exist ({e}), so {} cannot be written; create it first",
                        path.display()
                    ),
                ))
            }
        }
    }
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

/// Serialises `path` as a string in lossy UTF-8 (a name that is not UTF-8 shows U+FFFD in place of
/// its invalid bytes), for `#[serde(serialize_with = "crate::util::serialize_lossy_path")]` on the
/// paths of records written as JSON or CSV (`skipped.json`, `split.json`, `pipe infer`'s records).
///
/// # Errors
/// The serializer's error, as its `serialize_str` returns it.
pub fn serialize_lossy_path<S: serde::Serializer>(
    path: &Path,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// `path` made absolute against the current folder, as a record names a data folder (`lr_find.json`,
/// `sweep.json`, the settings lines); `path` itself when the current folder cannot be read. Symbolic
/// links are kept (std's `path::absolute`, no file-system access beyond the current folder).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `n` followed by `noun`, with an English plural `s` unless `n` is 1: `plural(1, "epoch")` is
/// "1 epoch", `plural(3, "epoch")` is "3 epochs". For messages only (regular nouns).
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A rate of images per second as messages print it: whole numbers from 10 on (`"300"`), one decimal
/// below (`"0.8"`, as a photo at 384 pixels trains), so that a slow rate does not round to 1 or 0.
pub fn images_per_s(images_per_second: f64) -> String {
    // 9.95 and above round to a whole 10 either way.
    if images_per_second < 9.95 {
        format!("{images_per_second:.1}")
    } else {
        format!("{images_per_second:.0}")
    }
}

/// An image limit (`--train-limit`, `--test-limit`) as the settings lines say it: the count, or
/// `all` for 0.
pub fn limit(n: usize) -> String {
    if n == 0 {
        "all".into()
    } else {
        n.to_string()
    }
}

/// A wall time for people: `45 s`, `2 min 30 s`, `12 min`, `1 h 05 min` (`seconds` rounded to
/// the second below 10 minutes, to the minute above; negative as 0).
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=89 => format!("{s} s"),
        90..=599 if s.is_multiple_of(60) => format!("{} min", s / 60),
        90..=599 => format!("{} min {:02} s", s / 60, s % 60),
        600..=5399 => format!("{} min", (s + 30) / 60),
        _ => {
            let m = (s + 30) / 60;
            format!("{} h {:02} min", m / 60, m % 60)
        }
    }
}

/// A learning rate (or weight decay) as every line of pipe writes it, the way recipes are written:
/// below 0.01 and from 1000 up in exponent form, `1e-4`, `5.62e-5`, `1e3`; between them as a decimal,
/// `0.05`, `10`; at most
/// three significant digits (a computed rate is rounded, a typed one such as `3e-4` kept as typed);
/// zero as `0`.
pub fn rate(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return x.to_string();
    }
    // Round to three significant digits, then print the shortest form of the rounded value.
    let rounded: f64 = format!("{x:.2e}").parse().unwrap_or(x);
    if (0.01..1000.0).contains(&rounded.abs()) {
        rounded.to_string()
    } else {
        format!("{rounded:e}")
    }
}

/// `n` with thousands separators: 14714688 → "14,714,688".
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn image_rates_keep_one_decimal_below_ten() {
        assert_eq!(images_per_s(299.6), "300");
        assert_eq!(images_per_s(10.0), "10");
        assert_eq!(images_per_s(9.96), "10");
        assert_eq!(images_per_s(9.94), "9.9");
        assert_eq!(images_per_s(0.76), "0.8");
        assert_eq!(images_per_s(0.0), "0.0");
    }

    #[test]
    fn thousands_groups_by_three() {
        assert_eq!(thousands(14_714_688), "14,714,688");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(0), "0");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(-3.0), "0 s");
        assert_eq!(duration(89.4), "89 s");
        assert_eq!(duration(150.0), "2 min 30 s");
        assert_eq!(duration(120.2), "2 min");
        assert_eq!(duration(599.0), "9 min 59 s");
        assert_eq!(duration(2700.0), "45 min");
        assert_eq!(duration(629.0), "10 min");
        assert_eq!(duration(5400.0), "1 h 30 min");
        assert_eq!(duration(3.0 * 3600.0 + 32.0 * 60.0), "3 h 32 min");
    }

    #[test]
    fn rates_read_as_recipes_write_them() {
        assert_eq!(rate(1e-4), "1e-4");
        assert_eq!(rate(3e-4), "3e-4");
        assert_eq!(rate(0.0005), "5e-4");
        assert_eq!(rate(1e-7), "1e-7");
        assert_eq!(rate(5.623_413e-5), "5.62e-5");
        assert_eq!(rate(9.999_9e-4), "1e-3");
        assert_eq!(rate(0.01), "0.01");
        assert_eq!(rate(0.05), "0.05");
        assert_eq!(rate(0.123_456), "0.123");
        assert_eq!(rate(10.0), "10");
        assert_eq!(rate(999.0), "999");
        assert_eq!(rate(1000.0), "1e3");
        assert_eq!(rate(1e12), "1e12");
        assert_eq!(rate(0.0), "0");
    }

    #[test]
    fn plural_counts() {
        assert_eq!(plural(1, "epoch"), "1 epoch");
        assert_eq!(plural(0, "epoch"), "0 epochs");
        assert_eq!(plural(15, "image"), "15 images");
    }
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
    fn temp_files_of_dead_processes_are_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        // pid_max is at most 2^22 on Linux, so this process cannot exist; our own pid is alive.
        let dead = dir.path().join(".m.onnx.99999999.abc123.tmp");
        let alive = dir
            .path()
            .join(format!(".m.onnx.{}.abc123.tmp", std::process::id()));
        let other = dir.path().join(".n.onnx.99999999.abc123.tmp");
        for f in [&dead, &alive, &other] {
            std::fs::write(f, b"partial").unwrap();
        }
        write_atomic(&p, |w| w.write_all(b"x")).unwrap();
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
    }

    #[test]
    fn output_path_checks_name_the_bad_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = check_output_path(&file.join("a/out.json"), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/f: not a folder"), "{err}");
        let err = check_output_path(&dir.path().join("no/out.json"), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no: folder does not exist"), "{err}");
        check_output_path(&dir.path().join("no/out.json"), true).unwrap();
        let err = check_output_path(dir.path(), true).unwrap_err().to_string();
        assert!(err.contains("is a folder, not a file to write"), "{err}");
        check_output_path(Path::new("out.json"), false).unwrap();
    }

    #[test]
    fn write_into_missing_folder_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing/out.bin");
        let err = write_atomic(&p, |w| w.write_all(b"x")).unwrap_err();
        assert!(err.to_string().contains("missing/out.bin"), "{err}");
    }

    /// A path serialises as its string, with U+FFFD for bytes that are not UTF-8.
    #[test]
    fn paths_serialise_as_lossy_utf8() {
        let json = |p: &Path| {
            serialize_lossy_path(p, serde_json::value::Serializer)
                .unwrap()
                .to_string()
        };
        assert_eq!(json(Path::new("a/b.jpg")), r#""a/b.jpg""#);
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let bad = Path::new(std::ffi::OsStr::from_bytes(b"x\xffy.jpg"));
            assert_eq!(json(bad), "\"x\u{fffd}y.jpg\"");
        }
    }
}
