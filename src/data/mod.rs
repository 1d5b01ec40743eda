//! Image data: dataset layouts, folder scanning (junk policy), decoding and resizing, splits,
//! deterministic class-balanced subsets, the CIFAR-10 binary release, and Keras "caffe" preprocessing.
//!
//! Pixels travel as `u8` in **NHWC RGB** order (`[N, H, W, 3]`, row-major), exactly what an ONNX
//! consumer of the exported model feeds. Preprocessing to the network's BGR NCHW float input happens
//! in [`caffe_preprocess`] (training) and inside the exported ONNX graph (inference).
//!
//! The path of a run's images, for new callers:
//! 1. [`DataLayout::detect`] on `--data` ([`DataLayout::describe`] for the first line of `pipe train`);
//! 2. [`SplitList::build`] with [`SplitOptions`] (shares, seed, limits): the file list of each split,
//!    written into the run as [`SPLIT_FILE`] ([`SplitList::write`]) and read back with
//!    [`SplitList::read`] by `evaluate`, `export --verify` and `--resume`;
//! 3. [`SplitList::load`] with an [`ImageSpec`] (size, [`ResizePolicy`], filter) and [`OnError`]
//!    (`--strict` = [`OnError::Stop`]): pixels plus the [`SkippedFile`]s (`skipped.json`,
//!    [`SkippedFile::write_list`]).
//!
//! `pipe infer` expands its inputs with [`scan_image_files`] and decodes each batch with
//! [`decode_files`] (one outcome per file) using the [`ImageSpec`] the model's metadata gives.
//! [`DataSource`], [`ImageFolder`], [`load_rgb`], [`decode_rgb`] and [`load_batch`] remain for
//! existing callers: squash, full decode, stop at the first bad file.

pub mod cifar;
pub mod decode;
pub mod layout;
pub mod resize;
pub mod scan;
pub mod split;

pub use decode::{
    decode_files, decode_image, decode_rgb, load_batch, load_image, load_images, load_rgb,
    DecodedImages, FileOutcome, OnError, SkipCounts, SkipReason, SkippedFile, MAX_IMAGE_BYTES,
    MAX_IMAGE_SIDE, SUPPORTED_FORMATS,
};
pub use layout::{DataLayout, LayoutKind};
pub use resize::{resize_rgb, ImageSpec, ResizeFilter, ResizePolicy, RESIZE_FILTER};
pub use scan::{
    collect_image_files, is_image_file, is_junk_name, scan_image_files, ClassScan, Skipped,
    IMAGE_EXTENSIONS,
};
pub use split::{
    stratified_split, LoadedPart, SplitEntry, SplitIndices, SplitList, SplitOptions, SplitPart,
    DEFAULT_TEST_SHARE, DEFAULT_VAL_SHARE, SPLIT_FILE,
};

use crate::arch::IMAGENET_BGR_MEANS;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// One labelled image of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Path of the image file.
    pub path: PathBuf,
    /// Path relative to the dataset root with `/` separators, e.g. `cat/0001.jpg`; used in reports.
    pub name: String,
    /// Class index into [`ImageFolder::classes`].
    pub label: usize,
}

/// A dataset in the "image folder" layout: one sub-folder per class, images inside (searched recursively).
/// Classes are the sub-folder names in byte order (for CIFAR-10 this is the official label order).
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// The dataset root folder.
    pub root: PathBuf,
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// All samples, grouped by class, file names sorted within a class.
    pub samples: Vec<Sample>,
    /// Files under the class folders that were not taken (not images, symlink loops).
    pub skipped: Skipped,
}

impl ImageFolder {
    /// Reads the class folders under `root` (junk entries such as `.DS_Store` or `__MACOSX/` are
    /// neither classes nor samples, see [`is_junk_name`]). New callers use [`DataLayout`] and
    /// [`SplitList`].
    ///
    /// # Errors
    /// [`Error::Io`] when `root` cannot be read; [`Error::InvalidFile`] when it has no class sub-folder
    /// or a class folder holds no image.
    pub fn open(root: &Path) -> Result<Self> {
        let scan = ClassScan::open(root)?;
        scan.require_images()?;
        let samples = scan
            .files
            .iter()
            .enumerate()
            .flat_map(|(label, files)| {
                files.iter().map(move |path| Sample {
                    name: ClassScan::relative_name(root, path),
                    path: path.clone(),
                    label,
                })
            })
            .collect();
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes: scan.classes,
            samples,
            skipped: scan.skipped,
        })
    }

    /// A deterministic, class-balanced subset of at most `limit` samples (`0` = all), see
    /// [`balanced_indices`]. The result is the same for every seed, so runs share one test set.
    pub fn balanced_subset(&self, limit: usize) -> Vec<Sample> {
        let labels: Vec<usize> = self.samples.iter().map(|s| s.label).collect();
        balanced_indices(&labels, self.classes.len(), limit)
            .into_iter()
            .map(|i| self.samples[i].clone())
            .collect()
    }
}

/// Indices of a deterministic class-balanced subset of at most `limit` items (`0`, or a limit at least
/// the number of items, = all, in order): class `c` gets `limit / C` items, plus one for the first
/// `limit % C` classes, taken in item order; the result is grouped by class.
pub fn balanced_indices(labels: &[usize], num_classes: usize, limit: usize) -> Vec<usize> {
    if limit == 0 || limit >= labels.len() {
        return (0..labels.len()).collect();
    }
    let mut out = Vec::with_capacity(limit);
    for class in 0..num_classes {
        let quota = limit / num_classes + usize::from(class < limit % num_classes);
        out.extend(
            labels
                .iter()
                .enumerate()
                .filter(|(_, &l)| l == class)
                .map(|(i, _)| i)
                .take(quota),
        );
    }
    out
}

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training images (`train/`, or `data_batch_1..5.bin`).
    Train,
    /// Test images (`test/`, else `val/`, or `test_batch.bin`).
    Test,
}

/// The selected images of one split, decoded.
#[derive(Debug, Clone)]
pub struct LoadedSplit {
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// Folder the `names` are relative to (the split's folder, the binary release folder, or
    /// [`SplitList::root`]).
    pub root: PathBuf,
    /// Per image: path relative to `root` with `/` separators (`cat/0001.jpg`, or `train/cat/0001.jpg`
    /// from a [`SplitList`]) or `<batch file>#<record>`.
    pub names: Vec<String>,
    /// Per image: label.
    pub labels: Vec<usize>,
    /// NHWC RGB `u8` pixels, `len() * size * size * 3` bytes.
    pub pixels: Vec<u8>,
    /// Image side, pixels.
    pub size: usize,
}

impl LoadedSplit {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Where a dataset comes from, detected from `--data`: the two layouts pipe read before
/// [`DataLayout`], which new callers use (it also knows a single folder of class folders, and lets a
/// held-out split lack a class).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// `train/<class>/*` and `test/<class>/*` (or, without `test/`, `val/<class>/*`) image folders
    /// under this root.
    Folders(PathBuf),
    /// The official CIFAR-10 binary release in this folder.
    CifarBinary(PathBuf),
}

impl DataSource {
    /// Detects the layout of `data`: the CIFAR-10 binary release (in `data` or
    /// `data/cifar-10-batches-bin`), else `train/` and `test/` (or `val/`) class folders.
    ///
    /// # Errors
    /// [`Error::InvalidFile`] naming `data` when it is neither.
    pub fn detect(data: &Path) -> Result<Self> {
        if let Some(root) = cifar::find_root(data) {
            return Ok(DataSource::CifarBinary(root));
        }
        if data.join("train").is_dir() || data.join("test").is_dir() {
            return Ok(DataSource::Folders(data.to_path_buf()));
        }
        Err(Error::invalid(
            data,
            "holds neither train/ and test/ class folders nor the CIFAR-10 binary release \
             (data_batch_1.bin .. data_batch_5.bin, test_batch.bin); run `make setup` for data/cifar10",
        ))
    }

    /// A short description for logs and `config.json`.
    pub fn describe(&self) -> String {
        match self {
            DataSource::Folders(p) => format!("image folders in {}", p.display()),
            DataSource::CifarBinary(p) => format!("CIFAR-10 binary release in {}", p.display()),
        }
    }

    /// Class names of the split.
    ///
    /// # Errors
    /// As [`ImageFolder::open`] or [`cifar::read_classes`].
    pub fn classes(&self, split: Split) -> Result<Vec<String>> {
        match self {
            DataSource::Folders(root) => Ok(ImageFolder::open(&split_folder(root, split))?.classes),
            DataSource::CifarBinary(root) => cifar::read_classes(root),
        }
    }

    /// Loads a class-balanced subset of at most `limit` images (`0` = all) of `split`, decoded and
    /// squashed to `size`x`size` ([`load_batch`]). New callers use [`SplitList::load`] (resize policy,
    /// skipped files as values).
    ///
    /// # Errors
    /// [`Error::Usage`] when `limit` exceeds the images available; missing or malformed files, named
    /// (the first bad image stops the load).
    pub fn load(&self, split: Split, limit: usize, size: usize) -> Result<LoadedSplit> {
        let flag = match split {
            Split::Train => "--train-limit",
            Split::Test => "--test-limit",
        };
        let too_many = |have: usize, root: &Path| {
            Error::Usage(format!(
                "{flag} {limit} exceeds the {have} images in {}; use 0 for all",
                root.display()
            ))
        };
        match self {
            DataSource::Folders(data) => {
                let root = split_folder(data, split);
                let ds = ImageFolder::open(&root)?;
                for w in ds.skipped.warnings() {
                    eprintln!("warning: {}: {w}", root.display());
                }
                if limit > ds.samples.len() {
                    return Err(too_many(ds.samples.len(), &root));
                }
                let subset = ds.balanced_subset(limit);
                let paths: Vec<&Path> = subset.iter().map(|s| s.path.as_path()).collect();
                let pixels = load_batch(&paths, size)?;
                Ok(LoadedSplit {
                    classes: ds.classes,
                    root,
                    names: subset.iter().map(|s| s.name.clone()).collect(),
                    labels: subset.iter().map(|s| s.label).collect(),
                    pixels,
                    size,
                })
            }
            DataSource::CifarBinary(root) => {
                let classes = cifar::read_classes(root)?;
                let records = cifar::read_split(root, split == Split::Train, classes.len())?;
                if limit > records.len() {
                    return Err(too_many(records.len(), root));
                }
                let labels: Vec<usize> = records.iter().map(|r| r.label).collect();
                let idx = balanced_indices(&labels, classes.len(), limit);
                let mut pixels = Vec::with_capacity(idx.len() * size * size * 3);
                for &i in &idx {
                    let px = &records[i].pixels;
                    pixels.extend(resize_rgb(px, cifar::CIFAR_SIZE, size));
                }
                Ok(LoadedSplit {
                    classes,
                    root: root.clone(),
                    names: idx.iter().map(|&i| records[i].name.clone()).collect(),
                    labels: idx.iter().map(|&i| records[i].label).collect(),
                    pixels,
                    size,
                })
            }
        }
    }
}

/// The folder of `split` under `data`: `train/`, and `test/` for the test split, or `val/` when
/// there is no `test/` but a `val/`.
fn split_folder(data: &Path, split: Split) -> PathBuf {
    match split {
        Split::Train => data.join("train"),
        Split::Test if !data.join("test").is_dir() && data.join("val").is_dir() => data.join("val"),
        Split::Test => data.join("test"),
    }
}

/// Keras "caffe" preprocessing (`keras.applications.vgg16.preprocess_input`) of `n` images of
/// `size`x`size`: NHWC RGB `u8` in, NCHW **BGR** `f32` out, minus [`IMAGENET_BGR_MEANS`], no scaling.
/// Output length `n*3*size*size`.
///
/// # Panics
/// If `pixels.len() != n*size*size*3` (a programming error, not user input).
pub fn caffe_preprocess(pixels: &[u8], n: usize, size: usize) -> Vec<f32> {
    let hw = size * size;
    assert_eq!(
        pixels.len(),
        n * hw * 3,
        "pixel buffer does not hold {n} images of {size}x{size}x3"
    );
    let mut out = vec![0f32; n * 3 * hw];
    for (img, dst) in pixels
        .chunks_exact(hw * 3)
        .zip(out.chunks_exact_mut(3 * hw))
    {
        for (i, px) in img.chunks_exact(3).enumerate() {
            // Output channel c in BGR order: c=0 is B = px[2], c=1 is G = px[1], c=2 is R = px[0].
            for c in 0..3 {
                dst[c * hw + i] = f32::from(px[2 - c]) - IMAGENET_BGR_MEANS[c];
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a `w`x`h` PNG of one colour, creating its folder.
    pub(crate) fn write_png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
            .save(path)
            .unwrap();
    }

    #[test]
    fn caffe_preprocess_flips_to_bgr_subtracts_means_and_goes_nchw() {
        // 1 image of 2x2: pixel i has R=10+i, G=20+i, B=30+i.
        let px: Vec<u8> = (0..4u8).flat_map(|i| [10 + i, 20 + i, 30 + i]).collect();
        let out = caffe_preprocess(&px, 1, 2);
        assert_eq!(out.len(), 12);
        for i in 0..4 {
            let f = i as f32;
            assert_eq!(out[i], 30.0 + f - 103.939); // B plane first
            assert_eq!(out[4 + i], 20.0 + f - 116.779); // then G
            assert_eq!(out[8 + i], 10.0 + f - 123.68); // then R
        }
    }

    #[test]
    fn image_folder_classes_sorted_and_balanced_subset_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        for (class, n) in [("b_cls", 5), ("a_cls", 4), ("c_cls", 3)] {
            for i in 0..n {
                write_png(
                    &dir.path().join(class).join(format!("{i:02}.png")),
                    32,
                    32,
                    [i as u8, 0, 0],
                );
            }
        }
        std::fs::write(dir.path().join("a_cls/notes.txt"), "not an image").unwrap();
        let ds = ImageFolder::open(dir.path()).unwrap();
        assert_eq!(ds.classes, vec!["a_cls", "b_cls", "c_cls"]);
        assert_eq!(ds.samples.len(), 12);
        assert_eq!(ds.samples[0].name, "a_cls/00.png");
        assert_eq!(ds.samples[4].label, 1);
        let sub = ds.balanced_subset(7); // 3,2,2
        let counts: Vec<usize> = (0..3)
            .map(|c| sub.iter().filter(|s| s.label == c).count())
            .collect();
        assert_eq!(counts, vec![3, 2, 2]);
        assert_eq!(sub[3].name, "b_cls/00.png");
        assert_eq!(ds.balanced_subset(7), sub);
        assert_eq!(ds.balanced_subset(0).len(), 12);
        assert_eq!(ds.balanced_subset(100).len(), 12);
    }

    #[test]
    fn data_source_detects_the_binary_release_and_balances_it() {
        let dir = tempfile::tempdir().unwrap();
        cifar::tests::write_fake_release(dir.path(), 30);
        let src = DataSource::detect(dir.path()).unwrap();
        assert_eq!(src, DataSource::CifarBinary(dir.path().to_path_buf()));
        let train = src.load(Split::Train, 20, 32).unwrap();
        assert_eq!(train.len(), 20);
        assert_eq!(train.labels[..2], [0, 0]);
        assert_eq!(
            train.names[..2],
            [
                "data_batch_1.bin#0".to_string(),
                "data_batch_1.bin#10".to_string()
            ]
        );
        assert_eq!(train.pixels.len(), 20 * 32 * 32 * 3);
        let all = src.load(Split::Test, 0, 32).unwrap();
        assert_eq!(all.len(), 30);
        let err = src.load(Split::Test, 31, 32).unwrap_err().to_string();
        assert!(
            err.contains("--test-limit 31 exceeds the 30 images"),
            "{err}"
        );
        let big = src.load(Split::Test, 10, 64).unwrap();
        assert_eq!(big.pixels.len(), 10 * 64 * 64 * 3);
        assert!(DataSource::detect(&dir.path().join("none")).is_err());
    }

    /// The loader of before reads `val/` as the test split when there is no `test/`, and leaves junk
    /// folders out of the classes.
    #[test]
    fn data_source_reads_val_when_there_is_no_test_folder() {
        let dir = tempfile::tempdir().unwrap();
        for (folder, rgb) in [
            ("train/ants", [1, 2, 3]),
            ("train/bees", [4, 5, 6]),
            ("val/bees", [7, 8, 9]),
        ] {
            write_png(&dir.path().join(folder).join("0.png"), 8, 8, rgb);
        }
        write_png(&dir.path().join("val/__MACOSX/0.png"), 8, 8, [0, 0, 0]);
        std::fs::write(dir.path().join("val/bees/.DS_Store"), b"x").unwrap();
        let src = DataSource::detect(dir.path()).unwrap();
        assert_eq!(src.classes(Split::Train).unwrap(), vec!["ants", "bees"]);
        assert_eq!(src.classes(Split::Test).unwrap(), vec!["bees"]);
        let test = src.load(Split::Test, 0, 8).unwrap();
        assert_eq!(test.root, dir.path().join("val"));
        assert_eq!(test.names, vec!["bees/0.png"]);
        assert_eq!(&test.pixels[..3], &[7, 8, 9]);
    }

    #[test]
    fn balanced_indices_groups_by_class() {
        let labels = [0, 1, 0, 1, 2, 0, 2];
        assert_eq!(balanced_indices(&labels, 3, 4), vec![0, 2, 1, 4]);
        assert_eq!(balanced_indices(&labels, 3, 0), (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn empty_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = ImageFolder::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no class sub-folders"), "{err}");
    }

    /// Overlapping inputs (a folder twice, a file inside it, the file by another spelling) give each
    /// image once, at its first occurrence, and a warning that counts the repeats (b three times, a
    /// once).
    #[test]
    fn overlapping_inputs_give_each_image_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("d/a.png"), dir.path().join("d/b.png"));
        write_png(&a, 2, 2, [1, 2, 3]);
        write_png(&b, 2, 2, [1, 2, 3]);
        let folder = dir.path().join("d");
        let other_spelling = dir.path().join("d/../d/b.png");
        let (files, skipped) =
            scan_image_files(&[b.clone(), folder.clone(), folder, other_spelling]).unwrap();
        assert_eq!(files, vec![b.clone(), a]);
        assert_eq!(skipped.duplicates.len(), 4);
        let w = skipped.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("4 image files given more than once, read once, e.g. "),
            "{w:?}"
        );
    }
}
