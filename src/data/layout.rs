//! The layouts of a dataset folder (`--data`), detected: `train/` + `test/`, `train/` + `val/`,
//! `train/` + `val/` + `test/`, a single folder of class folders (pipe makes the splits, see
//! [`SplitList`](super::SplitList)), and the CIFAR-10 binary release.

use super::cifar;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The kind of a dataset folder. Serialised in snake case (`train_val`) in `split.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutKind {
    /// `train/<class>/*` and `test/<class>/*`: `test/` is the held-out split.
    TrainTest,
    /// `train/<class>/*` and `val/<class>/*` (ImageNet's and PyTorch's tutorial naming): `val/` is the
    /// held-out split.
    TrainVal,
    /// `train/`, `val/` and `test/`: `val/` validates during training, `test/` is the held-out split.
    TrainValTest,
    /// `<class>/*` only: pipe makes seeded, class-stratified validation and test splits.
    ClassFolders,
    /// The official CIFAR-10 binary release (`data_batch_1.bin` .. `data_batch_5.bin`,
    /// `test_batch.bin`): the test batch is the held-out split.
    CifarBinary,
}

/// A detected dataset folder: its kind and the folder the split lists are relative to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLayout {
    /// The kind.
    pub kind: LayoutKind,
    /// The folder holding `train/` etc.; for [`LayoutKind::ClassFolders`] the folder holding the
    /// class folders (`--data`, or `--data/train` when `train/` stands alone); for
    /// [`LayoutKind::CifarBinary`] the folder holding the batch files.
    pub root: PathBuf,
}

impl DataLayout {
    /// Detects the layout of `data`, in this order: the CIFAR-10 binary release (in `data` or
    /// `data/cifar-10-batches-bin`); `train/` with `test/` and/or `val/`; `train/` alone (a single
    /// folder of class folders in `train/`); any other folder with sub-folders (a single folder of
    /// class folders; junk folders such as `__MACOSX/` or `.ipynb_checkpoints/` do not count). A
    /// dataset whose classes are literally named `train`, `test` or `val` is read as split folders.
    ///
    /// # Errors
    /// [`Error::InvalidFile`] naming `data` when it is none of these: missing, not a folder, no
    /// sub-folder, or `test/` / `val/` without `train/`.
    pub fn detect(data: &Path) -> Result<Self> {
        match std::fs::metadata(data) {
            Err(e) => {
                return Err(Error::invalid(
                    data,
                    format!(
                        "cannot read the data folder ({e}); --data names a folder of class folders \
                         (`make setup` extracts CIFAR-10 into data/cifar10)"
                    ),
                ))
            }
            Ok(m) if !m.is_dir() => {
                return Err(Error::invalid(
                    data,
                    "is a file, not a folder; --data names a folder of class folders (or train/ + val/)",
                ))
            }
            Ok(_) => {}
        }
        if let Some(root) = cifar::find_root(data) {
            return Ok(DataLayout {
                kind: LayoutKind::CifarBinary,
                root,
            });
        }
        let has = |d: &str| data.join(d).is_dir();
        let layout = |kind: LayoutKind, root: PathBuf| Ok(DataLayout { kind, root });
        match (has("train"), has("val"), has("test")) {
            (true, true, true) => layout(LayoutKind::TrainValTest, data.to_path_buf()),
            (true, true, false) => layout(LayoutKind::TrainVal, data.to_path_buf()),
            (true, false, true) => layout(LayoutKind::TrainTest, data.to_path_buf()),
            (true, false, false) => layout(LayoutKind::ClassFolders, data.join("train")),
            (false, val, test) if val || test => Err(Error::invalid(
                data,
                format!(
                    "has {} but no train/ folder; expected train/ beside it, or a single folder of \
                     class folders",
                    if test { "test/" } else { "val/" }
                ),
            )),
            _ if has_class_folders(data) => layout(LayoutKind::ClassFolders, data.to_path_buf()),
            _ => match top_level_images(data) {
                0 => Err(Error::invalid(
                    data,
                    format!(
                        "holds neither train/ + test/ (or val/) class folders, a folder of class \
                         folders, nor the CIFAR-10 binary release (data_batch_1.bin .. \
                         data_batch_5.bin, test_batch.bin){}",
                        if data.ends_with("cifar10") {
                            "; run `make setup` for data/cifar10"
                        } else {
                            ""
                        }
                    ),
                )),
                n => Err(Error::invalid(
                    data,
                    format!(
                        "holds {} directly, in no class folder: pipe learns a class from the \
                         name of the folder its images are in; put them in one sub-folder per \
                         class (e.g. {}/cats/, {}/dogs/)",
                        crate::util::plural(n, "image file"),
                        data.display(),
                        data.display()
                    ),
                )),
            },
        }
    }

    /// One line for the start of `pipe train` and for logs, e.g. `image folders train/ + val/ in
    /// data/hymenoptera (val/ is the held-out split)`.
    pub fn describe(&self) -> String {
        let root = self.root.display();
        match self.kind {
            LayoutKind::TrainTest => format!("image folders train/ + test/ in {root}"),
            LayoutKind::TrainVal => {
                format!("image folders train/ + val/ in {root} (val/ is the held-out split)")
            }
            LayoutKind::TrainValTest => format!(
                "image folders train/ + val/ + test/ in {root} (val/ validates, test/ is the \
                 held-out split)"
            ),
            LayoutKind::ClassFolders => format!(
                "one folder of class folders in {root} (pipe splits it into train, validation \
                 and test, seeded and class-stratified)"
            ),
            LayoutKind::CifarBinary => format!("CIFAR-10 binary release in {root}"),
        }
    }

    /// The training folder's name under `root` (`train`), or `None` when the layout is not made
    /// of split folders.
    pub fn train_dir(&self) -> Option<&'static str> {
        matches!(
            self.kind,
            LayoutKind::TrainTest | LayoutKind::TrainVal | LayoutKind::TrainValTest
        )
        .then_some("train")
    }

    /// The held-out folder's name under `root` (`test` or `val`), or `None` when the layout has none
    /// (pipe makes it, or the binary release).
    pub fn held_out_dir(&self) -> Option<&'static str> {
        match self.kind {
            LayoutKind::TrainTest | LayoutKind::TrainValTest => Some("test"),
            LayoutKind::TrainVal => Some("val"),
            LayoutKind::ClassFolders | LayoutKind::CifarBinary => None,
        }
    }

    /// The validation folder's name under `root` (`val` for [`LayoutKind::TrainValTest`]), or `None`.
    pub fn validation_dir(&self) -> Option<&'static str> {
        (self.kind == LayoutKind::TrainValTest).then_some("val")
    }
}

/// Whether `dir` has at least one sub-folder that is not junk.
/// The number of image files (by extension, junk names left out) directly in `dir`.
fn top_level_images(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| {
                !super::scan::is_junk_name(&e.file_name())
                    && e.path().is_file()
                    && super::scan::is_image_file(&e.path())
            })
            .count()
    })
}

fn has_class_folders(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| !super::scan::is_junk_name(&e.file_name()) && e.path().is_dir())
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(root: &Path, names: &[&str]) {
        for n in names {
            std::fs::create_dir_all(root.join(n)).unwrap();
        }
    }

    #[test]
    fn detects_each_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let cases = [
            ("tt", vec!["train/a", "test/a"], LayoutKind::TrainTest, ""),
            ("tv", vec!["train/a", "val/a"], LayoutKind::TrainVal, ""),
            (
                "tvt",
                vec!["train/a", "val/a", "test/a"],
                LayoutKind::TrainValTest,
                "",
            ),
            (
                "one",
                vec!["ants", "bees", "__MACOSX"],
                LayoutKind::ClassFolders,
                "",
            ),
            (
                "alone",
                vec!["train/ants"],
                LayoutKind::ClassFolders,
                "train",
            ),
        ];
        for (name, folders, kind, sub) in cases {
            let root = t.join(name);
            dirs(&root, &folders);
            let layout = DataLayout::detect(&root).unwrap();
            assert_eq!(layout.kind, kind, "{name}");
            assert_eq!(layout.root, root.join(sub), "{name}");
        }
        let cifar = t.join("bin");
        cifar::tests::write_fake_release(&cifar.join("cifar-10-batches-bin"), 10);
        let layout = DataLayout::detect(&cifar).unwrap();
        assert_eq!(layout.kind, LayoutKind::CifarBinary);
        assert_eq!(layout.root, cifar.join("cifar-10-batches-bin"));
    }

    #[test]
    fn descriptions_say_which_split_is_held_out() {
        let layout = DataLayout {
            kind: LayoutKind::TrainVal,
            root: PathBuf::from("data/hymenoptera"),
        };
        assert_eq!(
            layout.describe(),
            "image folders train/ + val/ in data/hymenoptera (val/ is the held-out split)"
        );
        assert_eq!(layout.held_out_dir(), Some("val"));
        assert_eq!(layout.validation_dir(), None);
        let one = DataLayout {
            kind: LayoutKind::ClassFolders,
            root: PathBuf::from("photos"),
        };
        assert!(one
            .describe()
            .starts_with("one folder of class folders in photos"));
        assert_eq!(one.held_out_dir(), None);
        assert_eq!(one.train_dir(), None);
    }

    #[test]
    fn refuses_what_is_no_dataset() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let err = DataLayout::detect(&t.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing: cannot read the data folder (No such file")
                && err.contains("make setup"),
            "{err}"
        );
        std::fs::write(t.join("file"), b"x").unwrap();
        let err = DataLayout::detect(&t.join("file")).unwrap_err().to_string();
        assert!(err.contains("file: is a file, not a folder"), "{err}");
        dirs(&t.join("junk"), &["__MACOSX", ".ipynb_checkpoints"]);
        std::fs::write(t.join("junk/notes.txt"), b"x").unwrap();
        let err = DataLayout::detect(&t.join("junk")).unwrap_err().to_string();
        assert!(
            err.contains("holds neither") && !err.contains("make setup"),
            "{err}"
        );
        std::fs::write(t.join("junk/a.jpg"), b"x").unwrap();
        std::fs::write(t.join("junk/b.PNG"), b"x").unwrap();
        let err = DataLayout::detect(&t.join("junk")).unwrap_err().to_string();
        assert!(
            err.contains("holds 2 image files directly, in no class folder")
                && err.contains("one sub-folder per class"),
            "{err}"
        );
        dirs(&t.join("notrain"), &["val/a"]);
        let err = DataLayout::detect(&t.join("notrain"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("has val/ but no train/"), "{err}");
    }
}
