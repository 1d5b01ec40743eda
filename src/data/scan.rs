//! Walking folders for images: the junk policy (hidden and system entries are never classes nor
//! samples), what was skipped and why, class-folder scans.
//!
//! Junk ([`is_junk_name`]): names starting with `.` (`.DS_Store`, `.ipynb_checkpoints/`, AppleDouble
//! `._photo.jpg`, `.git/`), `__MACOSX/`, `Thumbs.db` and `desktop.ini`. They are left out without a
//! warning and counted in [`Skipped::ignored`] (for a debug line). Files that are not images by
//! extension are skipped with a counted warning ([`Skipped::warnings`]).

use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// File extensions (lower case) treated as images when walking folders.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "ppm", "pgm", "pbm", "pnm", "tga",
    "qoi", "ico",
];

/// System files that are never images nor classes, compared without regard to ASCII case (Windows
/// writes them in either case).
const JUNK_FILES: &[&str] = &["Thumbs.db", "desktop.ini"];

/// Whether a folder entry named `name` is junk that pipe never treats as a class or a sample: hidden
/// names (starting with `.`: `.DS_Store`, `.ipynb_checkpoints`, AppleDouble `._*` files), the
/// `__MACOSX` folder of macOS zip archives, and Windows' `Thumbs.db` and `desktop.ini`.
pub fn is_junk_name(name: &OsStr) -> bool {
    let bytes = name.as_encoded_bytes();
    bytes.first() == Some(&b'.')
        || bytes == b"__MACOSX"
        || JUNK_FILES
            .iter()
            .any(|j| j.as_bytes().eq_ignore_ascii_case(bytes))
}

/// Whether `path` has one of the [`IMAGE_EXTENSIONS`] (any case).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// What a folder walk found besides images: junk entries left out, files skipped because their
/// extension is not an image extension, symbolic links that lead back to one of their own ancestors
/// (not followed), and files reached twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Files that are not images by extension (not decoded, not counted as images).
    pub non_images: Vec<PathBuf>,
    /// Symbolic links that point to an ancestor folder (a loop), each with the folder it points to.
    pub loops: Vec<(PathBuf, PathBuf)>,
    /// Image files reached a second time through the inputs (e.g. a folder and a file inside it, or
    /// the same folder twice): kept once, at their first occurrence.
    pub duplicates: Vec<PathBuf>,
    /// Junk entries ([`is_junk_name`]) left out: files, and folders whose contents were not walked
    /// (each counted once). Not a warning: see [`Skipped::ignored_note`].
    pub ignored: Vec<PathBuf>,
}

impl Skipped {
    /// Whether nothing was skipped that deserves a warning (junk entries in [`Skipped::ignored`] do
    /// not count).
    pub fn is_empty(&self) -> bool {
        self.non_images.is_empty() && self.loops.is_empty() && self.duplicates.is_empty()
    }

    /// Appends everything `other` holds.
    pub fn extend(&mut self, other: Skipped) {
        self.non_images.extend(other.non_images);
        self.loops.extend(other.loops);
        self.duplicates.extend(other.duplicates);
        self.ignored.extend(other.ignored);
    }

    /// One line per kind of skipped entry, e.g. `skipped 3 files that are not images (by extension),
    /// e.g. data/notes.txt`, for warnings on stderr. Junk entries are not warned about.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(first) = self.non_images.first() {
            let n = self.non_images.len();
            out.push(format!(
                "skipped {n} {} (by extension; pipe reads {}), e.g. {}",
                if n == 1 {
                    "file that is not an image"
                } else {
                    "files that are not images"
                },
                IMAGE_EXTENSIONS.join(", "),
                first.display()
            ));
        }
        if let Some(first) = self.duplicates.first() {
            out.push(format!(
                "{} given more than once, read once, e.g. {}",
                crate::util::plural(self.duplicates.len(), "image file"),
                first.display()
            ));
        }
        for (link, target) in &self.loops {
            out.push(format!(
                "symlink loop: {} points to its own ancestor {}; not followed",
                link.display(),
                target.display()
            ));
        }
        out
    }

    /// What was skipped or ignored under `dir` (paths that start with it).
    pub fn within(&self, dir: &Path) -> Skipped {
        let inside = |p: &&PathBuf| p.starts_with(dir);
        let paths = |v: &[PathBuf]| v.iter().filter(inside).cloned().collect();
        Skipped {
            non_images: paths(&self.non_images),
            loops: self
                .loops
                .iter()
                .filter(|(p, _)| p.starts_with(dir))
                .cloned()
                .collect(),
            duplicates: paths(&self.duplicates),
            ignored: paths(&self.ignored),
        }
    }

    /// A line for a debug or verbose log when junk entries were left out, e.g. `ignored 2 hidden or
    /// system entries (.DS_Store, __MACOSX/ and the like), e.g. data/train/.DS_Store`; `None` when
    /// there were none.
    pub fn ignored_note(&self) -> Option<String> {
        let first = self.ignored.first()?;
        let n = self.ignored.len();
        Some(format!(
            "ignored {n} hidden or system {} (hidden files and folders, __MACOSX/, Thumbs.db, \
             desktop.ini), e.g. {}",
            if n == 1 { "entry" } else { "entries" },
            first.display()
        ))
    }
}

/// Lists image files under `dir`, recursively, sorted by path; symlinks are followed, loops skipped
/// and junk entries below `dir` left out (both reported in [`Skipped`] with the other skipped files).
/// `dir` itself is walked whatever its name.
///
/// # Errors
/// [`Error::Io`] (or [`Error::InvalidFile`]) naming the entry that cannot be read.
pub fn walk_images(dir: &Path) -> Result<(Vec<PathBuf>, Skipped)> {
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    let mut ignored = Vec::new();
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let junk = e.depth() > 0 && is_junk_name(e.file_name());
            if junk {
                ignored.push(e.path().to_path_buf());
            }
            !junk
        });
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                if let (Some(link), Some(target)) = (e.path(), e.loop_ancestor()) {
                    skipped
                        .loops
                        .push((link.to_path_buf(), target.to_path_buf()));
                    continue;
                }
                let path = e.path().unwrap_or(dir).to_path_buf();
                let msg = e.to_string();
                return Err(match e.into_io_error() {
                    Some(io) => Error::io(&path, io),
                    None => Error::invalid(&path, msg),
                });
            }
        };
        if entry.file_type().is_file() {
            if is_image_file(entry.path()) {
                out.push(entry.into_path());
            } else {
                skipped.non_images.push(entry.into_path());
            }
        }
    }
    skipped.ignored = ignored;
    Ok((out, skipped))
}

/// Expands files and folders (recursively, sorted) into the list of image files they hold. Files named
/// explicitly are kept whatever their extension or name; inside folders only [`IMAGE_EXTENSIONS`]
/// count and junk entries are left out.
///
/// # Errors
/// As [`scan_image_files`].
pub fn collect_image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(scan_image_files(inputs)?.0)
}

/// As [`collect_image_files`], and also returns what was skipped (inside folders: junk entries, files
/// that are not images by extension, symlink loops; anywhere: image files reached a second time).
///
/// # Errors
/// [`Error::Io`] when an input does not exist or a folder cannot be read.
pub fn scan_image_files(inputs: &[PathBuf]) -> Result<(Vec<PathBuf>, Skipped)> {
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        if meta.is_dir() {
            let (files, skip) = walk_images(input)?;
            out.extend(files);
            skipped.extend(skip);
        } else {
            out.push(input.clone());
        }
    }
    // The same file reached twice (overlapping inputs) would be classified and counted twice.
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| {
        let key = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        let first = seen.insert(key);
        if !first {
            skipped.duplicates.push(p.clone());
        }
        first
    });
    Ok((out, skipped))
}

/// The class folders of one folder in the image-folder layout (`<root>/<class>/**/<image>`), as
/// found: classes may hold no image (the caller decides whether that is an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassScan {
    /// The folder scanned.
    pub root: PathBuf,
    /// Class names: the sub-folder names (lossy UTF-8) in byte order of the file-system names; junk
    /// folders ([`is_junk_name`]) are not classes.
    pub classes: Vec<String>,
    /// Per class (same order as `classes`): its image files, sorted by path.
    pub files: Vec<Vec<PathBuf>>,
    /// What was skipped or ignored under `root`.
    pub skipped: Skipped,
}

impl ClassScan {
    /// Scans the class sub-folders of `root`. Files directly in `root` are not samples (they have
    /// no class); junk files there are counted in [`Skipped::ignored`], others are left alone.
    ///
    /// # Errors
    /// [`Error::Io`] when `root` or a class folder cannot be read; [`Error::InvalidFile`] naming
    /// `root` when it has no class sub-folder.
    pub fn open(root: &Path) -> Result<Self> {
        // Folder names as the file system has them (any bytes); class names are their lossy UTF-8.
        let mut dirs = Vec::new();
        let mut skipped = Skipped::default();
        for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
            let entry = entry.map_err(|e| Error::io(root, e))?;
            if is_junk_name(&entry.file_name()) {
                skipped.ignored.push(entry.path());
            } else if entry.path().is_dir() {
                dirs.push(entry.file_name());
            }
        }
        dirs.sort();
        if dirs.is_empty() {
            return Err(Error::invalid(
                root,
                "no class sub-folders; expected the image-folder layout <root>/<class>/<image>",
            ));
        }
        let mut files = Vec::with_capacity(dirs.len());
        for class_dir in &dirs {
            let (found, skip) = walk_images(&root.join(class_dir))?;
            files.push(found);
            skipped.extend(skip);
        }
        Ok(ClassScan {
            root: root.to_path_buf(),
            classes: dirs
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect(),
            files,
            skipped,
        })
    }

    /// The folder of class `label`.
    pub fn class_dir(&self, label: usize) -> PathBuf {
        self.root.join(&self.classes[label])
    }

    /// Refuses a class folder without images, naming it (with what was skipped in it, if anything).
    ///
    /// # Errors
    /// [`Error::InvalidFile`] naming the first empty class folder: `class folder holds no image`.
    pub fn require_images(&self) -> Result<()> {
        let Some(label) = self.files.iter().position(Vec::is_empty) else {
            return Ok(());
        };
        let dir = self.class_dir(label);
        let mut msg = "class folder holds no image".to_string();
        let here = self.skipped.within(&dir);
        if !here.is_empty() {
            msg = format!("{msg} ({})", here.warnings().join("; "));
        }
        Err(Error::invalid(&dir, msg))
    }

    /// Path of `file` relative to `base` with `/` separators (lossy UTF-8), e.g. `cat/0001.jpg`; the
    /// whole path when it is not under `base`.
    pub fn relative_name(base: &Path, file: &Path) -> String {
        let rel = file.strip_prefix(base).unwrap_or(file);
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creates each of the whitespace-separated `files` under `root` (one byte each), with their
    /// folders.
    fn touch(root: &Path, files: &str) {
        for f in files.split_whitespace() {
            let path = root.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
    }

    #[test]
    fn junk_names() {
        for junk in [
            ".DS_Store",
            ".ipynb_checkpoints",
            "._photo.jpg",
            ".hidden.png",
            "__MACOSX",
            "Thumbs.db",
            "thumbs.db",
            "desktop.ini",
            "Desktop.ini",
        ] {
            assert!(is_junk_name(OsStr::new(junk)), "{junk}");
        }
        for fine in [
            "cat",
            "photo.jpg",
            "MACOSX",
            "_cat",
            "thumbs.dbx",
            "a.DS_Store",
        ] {
            assert!(!is_junk_name(OsStr::new(fine)), "{fine}");
        }
    }

    /// Every junk kind inside a walked folder is left out silently: no sample, no warning, one entry
    /// in `ignored` each (a junk folder once, its contents not walked).
    #[test]
    fn walk_leaves_out_each_junk_kind_without_warning() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        touch(
            d,
            "a.jpg .DS_Store ._a.jpg Thumbs.db desktop.ini .ipynb_checkpoints/a-checkpoint.jpg \
             __MACOSX/._a.jpg sub/b.png sub/.hidden.png notes.txt",
        );
        let (files, skipped) = walk_images(d).unwrap();
        assert_eq!(files, vec![d.join("a.jpg"), d.join("sub/b.png")]);
        assert_eq!(skipped.non_images, vec![d.join("notes.txt")]);
        assert_eq!(skipped.ignored.len(), 7, "{:?}", skipped.ignored);
        assert!(skipped.ignored.contains(&d.join("__MACOSX")));
        assert!(skipped.ignored.contains(&d.join(".ipynb_checkpoints")));
        let w = skipped.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("skipped 1 file that is not an image"),
            "{w:?}"
        );
        let note = skipped.ignored_note().unwrap();
        assert!(
            note.starts_with("ignored 7 hidden or system entries"),
            "{note}"
        );
        assert_eq!(Skipped::default().ignored_note(), None);
    }

    /// A folder named explicitly is walked even when its own name is hidden; a file named
    /// explicitly is kept whatever its name.
    #[test]
    fn explicit_inputs_are_taken_whatever_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let hidden = dir.path().join(".cache");
        touch(&hidden, "a.jpg .b.jpg");
        let (files, skipped) = scan_image_files(std::slice::from_ref(&hidden)).unwrap();
        assert_eq!(files, vec![hidden.join("a.jpg")]);
        assert_eq!(skipped.ignored, vec![hidden.join(".b.jpg")]);
        let named = hidden.join(".b.jpg");
        assert_eq!(
            collect_image_files(std::slice::from_ref(&named)).unwrap(),
            vec![named]
        );
    }

    #[test]
    fn junk_folders_are_never_classes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        touch(
            d,
            "bees/1.jpg ants/1.jpg __MACOSX/ants/._1.jpg .ipynb_checkpoints/x.jpg .DS_Store \
             readme.txt",
        );
        let scan = ClassScan::open(d).unwrap();
        assert_eq!(scan.classes, vec!["ants", "bees"]);
        assert_eq!(scan.files[0], vec![d.join("ants/1.jpg")]);
        assert_eq!(scan.skipped.ignored.len(), 3);
        assert!(scan.skipped.is_empty());
        scan.require_images().unwrap();
    }

    #[test]
    fn empty_class_folder_is_named_with_what_was_skipped_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        touch(d, "a/1.jpg b/notes.txt b/.DS_Store");
        let scan = ClassScan::open(d).unwrap();
        let err = scan.require_images().unwrap_err().to_string();
        assert!(
            err.contains("/b: class folder holds no image (skipped 1 file that is not an image"),
            "{err}"
        );
        let only_junk = tempfile::tempdir().unwrap();
        touch(only_junk.path(), "__MACOSX/a/1.jpg");
        let err = ClassScan::open(only_junk.path()).unwrap_err().to_string();
        assert!(err.contains("no class sub-folders"), "{err}");
    }
}
