//! The images of a run's splits: seeded, class-stratified splits, and [`SplitList`], the file list a
//! run writes (`split.json`) so that `evaluate`, `export --verify` and `--resume` read exactly the
//! same images, with a loader from it.
//!
//! Labels are always indices into the training split's classes: a held-out folder may lack a class
//! of the training folder; a class found only in a held-out folder is refused by name.

use super::decode::{load_images, sniff_file, OnError, SkippedFile};
use super::layout::{DataLayout, LayoutKind};
use super::resize::ImageSpec;
use super::scan::{ClassScan, Skipped};
use super::{balanced_indices, cifar, LoadedSplit};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Default validation share of each class for a single folder of class folders (`--val-split`).
pub const DEFAULT_VAL_SHARE: f64 = 0.15;
/// Default test share of each class for a single folder of class folders (`--test-split`).
pub const DEFAULT_TEST_SHARE: f64 = 0.15;
/// File name of the split list in a run folder.
pub const SPLIT_FILE: &str = "split.json";
/// Format version written into `split.json`.
pub const SPLIT_FORMAT: u32 = 1;

/// Salt of the split's random stream (`"val_splt"`): the same stream as the feature-level
/// `--val-split` of earlier runs, so that their validation images stay the same.
const SPLIT_SALT: u64 = 0x7661_6c5f_7370_6c74;

/// Indices of a stratified split, each list ascending; together they are `0..n`, disjoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SplitIndices {
    /// Training images.
    pub train: Vec<usize>,
    /// Validation images.
    pub val: Vec<usize>,
    /// Test (held-out) images.
    pub test: Vec<usize>,
}

/// A class with too few images for every split to get one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallClass {
    /// The class (label).
    pub label: usize,
    /// Its number of images.
    pub count: usize,
    /// Images it needs: 1 for training plus 1 per non-empty share.
    pub needed: usize,
}

/// Splits items `0..labels.len()` per class: of a class of `n` items, `round(share * n)` (at least 1
/// when the share is above 0) go to test and to validation, chosen by a ChaCha8 shuffle seeded with
/// `seed`, and at least one stays in training. The same labels, shares and seed give the same split.
/// With `test_share == 0` the validation images are those the feature-level `--val-split` of earlier
/// pipe versions held out, for every class of at least 2 images.
///
/// Shares are expected in `[0, 1)` (see [`SplitOptions`]); a share of 0 leaves that split empty.
///
/// # Errors
/// The first class (by label) with fewer images than 1 + the number of shares above 0.
pub fn stratified_split(
    labels: &[usize],
    num_classes: usize,
    val_share: f64,
    test_share: f64,
    seed: u64,
) -> std::result::Result<SplitIndices, SmallClass> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ SPLIT_SALT);
    let needed = 1 + usize::from(val_share > 0.0) + usize::from(test_share > 0.0);
    let mut part = vec![0u8; labels.len()]; // 0 train, 1 val, 2 test
    for label in 0..num_classes {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == label).collect();
        let count = idx.len();
        if count == 0 {
            continue;
        }
        if count < needed {
            return Err(SmallClass {
                label,
                count,
                needed,
            });
        }
        let take = |share: f64| {
            let k = (share * count as f64).round() as usize;
            if share > 0.0 {
                k.max(1)
            } else {
                0
            }
        };
        let (mut k_test, mut k_val) = (take(test_share), take(val_share));
        // Leave at least one training image, taking back from the larger share first.
        while k_test + k_val > count - 1 {
            if k_val >= k_test && k_val > 1 || k_test <= 1 {
                k_val -= 1;
            } else {
                k_test -= 1;
            }
        }
        idx.shuffle(&mut rng);
        for &i in &idx[..k_test] {
            part[i] = 2;
        }
        for &i in &idx[k_test..k_test + k_val] {
            part[i] = 1;
        }
    }
    let pick = |p: u8| (0..labels.len()).filter(|&i| part[i] == p).collect();
    Ok(SplitIndices {
        train: pick(0),
        val: pick(1),
        test: pick(2),
    })
}

/// How to make a run's splits from a layout (the later `--val-split`, `--test-split`, `--seed`,
/// `--train-limit`, `--test-limit`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitOptions {
    /// Share of each class for validation. `None`: [`DEFAULT_VAL_SHARE`] for a single folder of
    /// class folders, else 0 (validate on the held-out split, as Keras' `validation_data`). For
    /// split-folder layouts and the binary release it is carved out of the (limited) training split.
    pub val_share: Option<f64>,
    /// Share of each class for test; only for a single folder of class folders (`None`:
    /// [`DEFAULT_TEST_SHARE`]).
    pub test_share: Option<f64>,
    /// Seed of the shuffles.
    pub seed: u64,
    /// At most this many training images, class-balanced ([`balanced_indices`]); 0 = all.
    pub train_limit: usize,
    /// At most this many held-out images, class-balanced; 0 = all.
    pub test_limit: usize,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            val_share: None,
            test_share: None,
            seed: 42,
            train_limit: 0,
            test_limit: 0,
        }
    }
}

impl SplitOptions {
    /// The (validation, test) shares for `kind`, checked.
    ///
    /// # Errors
    /// [`Error::Usage`]: a share outside `[0, 1)`, shares that leave no training image, a test
    /// share of 0 for a single folder, a share for a split that a folder already provides.
    pub fn shares(&self, kind: LayoutKind) -> Result<(f64, f64)> {
        let check = |flag: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(v)
            } else {
                Err(Error::Usage(format!(
                    "{flag} must be at least 0 and below 1, got {v}"
                )))
            }
        };
        let given = |s: Option<f64>| s.filter(|&v| v != 0.0);
        match kind {
            LayoutKind::ClassFolders => {
                let val = check("--val-split", self.val_share.unwrap_or(DEFAULT_VAL_SHARE))?;
                let test = check(
                    "--test-split",
                    self.test_share.unwrap_or(DEFAULT_TEST_SHARE),
                )?;
                if test == 0.0 {
                    return Err(Error::Usage(
                        "--test-split must be above 0 for a single folder of class folders: pipe \
                         needs a held-out split for the test accuracy"
                            .into(),
                    ));
                }
                if val + test >= 1.0 {
                    return Err(Error::Usage(format!(
                        "--val-split {val} and --test-split {test} leave no training images"
                    )));
                }
                Ok((val, test))
            }
            _ if given(self.test_share).is_some() => Err(Error::Usage(
                "--test-split applies only to a single folder of class folders; this dataset \
                 has its own held-out split"
                    .into(),
            )),
            LayoutKind::TrainValTest if given(self.val_share).is_some() => Err(Error::Usage(
                "--val-split does not apply: the dataset's val/ folder is the validation split"
                    .into(),
            )),
            _ => Ok((check("--val-split", self.val_share.unwrap_or(0.0))?, 0.0)),
        }
    }
}

/// One image of a split: file relative to [`SplitList::root`] (`/` separators, e.g.
/// `train/ants/1.jpg`, `ants/1.jpg`, or `data_batch_1.bin#17` for a record of the binary release)
/// and label (index into [`SplitList::classes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitEntry {
    /// The file, relative to the list's root (a name that is not UTF-8 with U+FFFD in its place).
    pub file: String,
    /// Index into the training classes.
    pub label: usize,
    /// The bytes of the relative path when it is not UTF-8 (Unix), so that `file`'s lossy name
    /// still finds the file; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Vec<u8>>,
}

impl SplitEntry {
    /// The entry of `file` (under `root`) with `label`.
    pub fn of(root: &Path, file: &Path, label: usize) -> SplitEntry {
        let rel = file.strip_prefix(root).unwrap_or(file);
        SplitEntry {
            file: ClassScan::relative_name(root, file),
            label,
            raw: raw_bytes(rel),
        }
    }

    /// The entry's file under `root`.
    pub fn path(&self, root: &Path) -> PathBuf {
        match &self.raw {
            #[cfg(unix)]
            Some(bytes) => {
                use std::os::unix::ffi::OsStrExt;
                root.join(std::ffi::OsStr::from_bytes(bytes))
            }
            _ => root.join(&self.file),
        }
    }
}

/// The bytes of `rel` when it is not valid UTF-8 (Unix only).
fn raw_bytes(rel: &Path) -> Option<Vec<u8>> {
    #[cfg(unix)]
    if rel.to_str().is_none() {
        use std::os::unix::ffi::OsStrExt;
        return Some(rel.as_os_str().as_bytes().to_vec());
    }
    None
}

/// One of a run's splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SplitPart {
    /// The images the model learns from.
    Train,
    /// The images that validate after every epoch (empty: the held-out split validates).
    Val,
    /// The held-out images of the closing `test accuracy`.
    Test,
}

impl SplitPart {
    /// `train`, `validation` or `test`, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitPart::Train => "train",
            SplitPart::Val => "validation",
            SplitPart::Test => "test",
        }
    }
}

/// The file list of each split of a run, with what made it: written into the run as `split.json`,
/// read back by `evaluate`, `export --verify` and `--resume`, which then load exactly these images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitList {
    /// [`SPLIT_FORMAT`].
    pub format: u32,
    /// The layout the list was made from.
    pub layout: LayoutKind,
    /// The folder the entries are relative to ([`DataLayout::root`]).
    #[serde(serialize_with = "crate::util::serialize_lossy_path")]
    pub root: PathBuf,
    /// Class names of the training split, in order: index = label.
    pub classes: Vec<String>,
    /// Seed of the shuffles.
    pub seed: u64,
    /// Validation share of each class (0: no validation split).
    pub val_share: f64,
    /// Test share of each class (0 unless pipe made the test split).
    pub test_share: f64,
    /// Training images, grouped by class, file names sorted within a class.
    pub train: Vec<SplitEntry>,
    /// Validation images (empty: the test split validates).
    pub val: Vec<SplitEntry>,
    /// Held-out images.
    pub test: Vec<SplitEntry>,
    /// Image files left out before the splits were made because their first bytes show they are no
    /// image ([`sniff_file`]: unreadable, empty, not an image), so that none takes a place in a
    /// split; a run that loads the list reports them with the files that fail to decode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unusable: Vec<SkippedFile>,
}

/// Decoded images of one split, and the files that were skipped.
#[derive(Debug, Clone)]
pub struct LoadedPart {
    /// The decoded images: `root` is the list's root, `names` its entries' files.
    pub split: LoadedSplit,
    /// Files left out because they could not be decoded (always empty with [`OnError::Stop`]).
    pub skipped: Vec<SkippedFile>,
}

impl SplitList {
    /// Scans `layout` and makes the splits `opts` asks for: training and held-out images from the
    /// layout's folders or batch files (each limited, class-balanced), validation carved out of the
    /// training images by [`stratified_split`] when `val_share` > 0; for a single folder of class
    /// folders, all three from [`stratified_split`], then the limits. Image files whose first bytes
    /// are no image go to [`SplitList::unusable`] before any split is made (for a single folder,
    /// before the split; else before the validation carve-out, after the limits). Also returns what
    /// the folder scan skipped (for warnings) and ignored (junk).
    ///
    /// # Errors
    /// [`Error::Usage`] for bad shares or a limit over the images available; [`Error::InvalidFile`]
    /// naming the folder for fewer than 2 classes, a training class without images, a class too small
    /// to split (named), a held-out class that training lacks (named); I/O errors, named.
    pub fn build(layout: &DataLayout, opts: &SplitOptions) -> Result<(SplitList, Skipped)> {
        let (val_share, test_share) = opts.shares(layout.kind)?;
        let pools = Pools::scan(layout)?;
        let mut list = SplitList {
            format: SPLIT_FORMAT,
            layout: layout.kind,
            root: layout.root.clone(),
            classes: pools.classes,
            seed: opts.seed,
            val_share,
            test_share,
            train: Vec::new(),
            val: Vec::new(),
            test: Vec::new(),
            unusable: Vec::new(),
        };
        let mut train = pools.train;
        let mut test = pools.test;
        if layout.kind == LayoutKind::ClassFolders {
            train = list.usable(train);
            let split = list.stratify(&train)?;
            list.val = pick(&train, &split.val);
            test = pick(&train, &split.test);
            train = pick(&train, &split.train);
        }
        list.train = limited(train, opts.train_limit, "--train-limit", &pools.train_dir)?;
        list.test = limited(test, opts.test_limit, "--test-limit", &pools.test_dir)?;
        if layout.kind != LayoutKind::ClassFolders {
            // The limits first: a folder of many images is sniffed only where it is used.
            let (train, test) = (
                std::mem::take(&mut list.train),
                std::mem::take(&mut list.test),
            );
            list.train = list.usable(train);
            list.val = list.usable(pools.val);
            list.test = list.usable(test);
        }
        if layout.kind != LayoutKind::ClassFolders && val_share > 0.0 {
            let split = list.stratify(&list.train)?;
            list.val = pick(&list.train, &split.val);
            list.train = pick(&list.train, &split.train);
        }
        Ok((list, pools.skipped))
    }

    /// The entries of `entries` that may be images; the files that cannot be ([`sniff_file`]) go to
    /// [`SplitList::unusable`]. Batch-file records are not files: all kept.
    fn usable(&mut self, entries: Vec<SplitEntry>) -> Vec<SplitEntry> {
        if self.layout == LayoutKind::CifarBinary {
            return entries;
        }
        let root = self.root.clone();
        entries
            .into_iter()
            .filter(|e| match sniff_file(&e.path(&root)) {
                Some(skipped) => {
                    self.unusable.push(skipped);
                    false
                }
                None => true,
            })
            .collect()
    }

    /// [`stratified_split`] of `entries` with this list's shares and seed; a class too small is
    /// refused by name, with its folder.
    fn stratify(&self, entries: &[SplitEntry]) -> Result<SplitIndices> {
        let labels: Vec<usize> = entries.iter().map(|e| e.label).collect();
        let (val, test) = (self.val_share, self.test_share);
        stratified_split(&labels, self.classes.len(), val, test, self.seed).map_err(|small| {
            let folder = entries
                .iter()
                .find(|e| e.label == small.label && self.layout != LayoutKind::CifarBinary)
                .and_then(|e| Path::new(&e.file).parent())
                .map_or_else(|| self.root.clone(), |dir| self.root.join(dir));
            let splits = match (val > 0.0, test > 0.0) {
                (true, true) => "training, validation and test",
                (true, false) => "training and validation",
                _ => "training and test",
            };
            Error::invalid(
                folder,
                format!(
                    "class {:?} has {} for {splits}: each class needs at least {}; add images to \
                     it, or lower the shares (--val-split 0 makes no validation split)",
                    self.classes[small.label],
                    crate::util::plural(small.count, "image"),
                    small.needed
                ),
            )
        })
    }

    /// The entries of `part`.
    pub fn part(&self, part: SplitPart) -> &[SplitEntry] {
        match part {
            SplitPart::Train => &self.train,
            SplitPart::Val => &self.val,
            SplitPart::Test => &self.test,
        }
    }

    /// One line for logs, e.g. `2 classes: train 278, validation 60, test 60 images (seed 42)`,
    /// with `; 2 files left out: no image` when [`SplitList::unusable`] holds some.
    pub fn describe(&self) -> String {
        format!(
            "{} classes: train {}, validation {}, test {} images (seed {}){}",
            self.classes.len(),
            self.train.len(),
            self.val.len(),
            self.test.len(),
            self.seed,
            match self.unusable.len() {
                0 => String::new(),
                n => format!("; {} left out: no image", crate::util::plural(n, "file")),
            }
        )
    }

    /// Writes the list as JSON to `path` atomically (a run's [`SPLIT_FILE`]).
    ///
    /// # Errors
    /// As [`crate::util::write_json_atomic`].
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::util::write_json_atomic(path, self)
    }

    /// Reads a list written by [`SplitList::write`].
    ///
    /// # Errors
    /// As [`crate::util::read_json`]; [`Error::InvalidFile`] naming `path` for another format version
    /// or a label that is not an index into its classes.
    pub fn read(path: &Path) -> Result<SplitList> {
        let list: SplitList = crate::util::read_json(path)?;
        if list.format != SPLIT_FORMAT {
            return Err(Error::invalid(
                path,
                format!(
                    "split list format {} is not the {SPLIT_FORMAT} this pipe reads",
                    list.format
                ),
            ));
        }
        let n = list.classes.len();
        if let Some(e) = [&list.train, &list.val, &list.test]
            .into_iter()
            .flatten()
            .find(|e| e.label >= n)
        {
            return Err(Error::invalid(
                path,
                format!(
                    "{} has label {}, but there are {n} classes",
                    e.file, e.label
                ),
            ));
        }
        Ok(list)
    }

    /// Decodes the images of `part` with `spec`: files that cannot be decoded are left out and
    /// listed ([`OnError::Skip`]) or stop the load ([`OnError::Stop`]). The result's `root` is the
    /// list's root and its `names` the entries' files, in list order (skipped ones left out).
    ///
    /// # Errors
    /// As [`load_images`]; for the binary release, a missing or malformed batch file, or a record
    /// whose label differs from the list (the data changed since the list was written).
    pub fn load(&self, part: SplitPart, spec: &ImageSpec, on_error: OnError) -> Result<LoadedPart> {
        let entries = self.part(part);
        if self.layout == LayoutKind::CifarBinary {
            return self.load_records(entries, spec);
        }
        let paths: Vec<PathBuf> = entries.iter().map(|e| e.path(&self.root)).collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let decoded = load_images(&refs, spec, on_error)?;
        Ok(LoadedPart {
            split: LoadedSplit {
                classes: self.classes.clone(),
                root: self.root.clone(),
                names: decoded
                    .kept
                    .iter()
                    .map(|&i| entries[i].file.clone())
                    .collect(),
                labels: decoded.kept.iter().map(|&i| entries[i].label).collect(),
                pixels: decoded.pixels,
                size: spec.size,
            },
            skipped: decoded.skipped,
        })
    }

    /// Loads binary-release records named `<batch file>#<index>`, each batch file read once.
    fn load_records(&self, entries: &[SplitEntry], spec: &ImageSpec) -> Result<LoadedPart> {
        let mut files: Vec<(String, Vec<cifar::Record>)> = Vec::new();
        let mut pixels = Vec::with_capacity(entries.len() * spec.image_bytes());
        for e in entries {
            let bad = |msg: &str| Error::invalid(self.root.join(&e.file), msg.to_string());
            let (file, index) = e
                .file
                .rsplit_once('#')
                .and_then(|(f, i)| Some((f, i.parse::<usize>().ok()?)))
                .ok_or_else(|| bad("not a <batch file>#<record> name"))?;
            let records = match files.iter().position(|(f, _)| f == file) {
                Some(k) => &files[k].1,
                None => {
                    let path = self.root.join(file);
                    let bytes = std::fs::read(&path).map_err(|err| Error::io(&path, err))?;
                    let records = cifar::parse_batch(&path, &bytes, self.classes.len())?;
                    files.push((file.to_string(), records));
                    &files[files.len() - 1].1
                }
            };
            let record = records
                .get(index)
                .filter(|r| r.label == e.label)
                .ok_or_else(|| {
                    bad("record missing or relabelled since the split list was written")
                })?;
            pixels.extend(record.fitted(&self.root.join(file), spec)?);
        }
        Ok(LoadedPart {
            split: LoadedSplit {
                classes: self.classes.clone(),
                root: self.root.clone(),
                names: entries.iter().map(|e| e.file.clone()).collect(),
                labels: entries.iter().map(|e| e.label).collect(),
                pixels,
                size: spec.size,
            },
            skipped: Vec::new(),
        })
    }
}

/// The entries at `idx`.
fn pick(entries: &[SplitEntry], idx: &[usize]) -> Vec<SplitEntry> {
    idx.iter().map(|&i| entries[i].clone()).collect()
}

/// At most `limit` of `entries` (0 = all), class-balanced over the classes present; `flag` and
/// `dir` name the option and the folder when the limit is too large.
fn limited(
    entries: Vec<SplitEntry>,
    limit: usize,
    flag: &str,
    dir: &Path,
) -> Result<Vec<SplitEntry>> {
    if limit > entries.len() {
        return Err(Error::Usage(format!(
            "{flag} {limit} exceeds the {} images in {}; use 0 for all",
            entries.len(),
            dir.display()
        )));
    }
    // Dense labels over the classes present, so that a class missing from a held-out split does not
    // take a share of the limit.
    let mut present: Vec<usize> = entries.iter().map(|e| e.label).collect();
    present.sort_unstable();
    present.dedup();
    let dense: Vec<usize> = entries
        .iter()
        .map(|e| present.partition_point(|&l| l < e.label))
        .collect();
    Ok(pick(
        &entries,
        &balanced_indices(&dense, present.len(), limit),
    ))
}

/// The images a layout offers before any split: training classes, training and held-out entries
/// (validation too for `train/` + `val/` + `test/`), what the scan skipped, and the folders of the
/// training and held-out images (for messages).
struct Pools {
    classes: Vec<String>,
    train: Vec<SplitEntry>,
    val: Vec<SplitEntry>,
    test: Vec<SplitEntry>,
    skipped: Skipped,
    train_dir: PathBuf,
    test_dir: PathBuf,
}

impl Pools {
    fn scan(layout: &DataLayout) -> Result<Pools> {
        let root = &layout.root;
        if layout.kind == LayoutKind::CifarBinary {
            let classes = cifar::read_classes(root)?;
            let entries = |train: bool| -> Result<Vec<SplitEntry>> {
                Ok(cifar::read_index(root, train, classes.len())?
                    .into_iter()
                    .map(|(file, label)| SplitEntry {
                        file,
                        label,
                        raw: None,
                    })
                    .collect())
            };
            return Ok(Pools {
                train: entries(true)?,
                test: entries(false)?,
                classes,
                val: Vec::new(),
                skipped: Skipped::default(),
                train_dir: root.clone(),
                test_dir: root.clone(),
            });
        }
        let folder = |dir: Option<&str>| dir.map_or_else(|| root.clone(), |d| root.join(d));
        let train_dir = folder(layout.train_dir());
        let scan = ClassScan::open(&train_dir)?;
        scan.require_images()?;
        if scan.classes.len() < 2 {
            return Err(Error::invalid(
                &train_dir,
                format!("needs at least 2 classes, found {}", scan.classes.len()),
            ));
        }
        let mut skipped = scan.skipped.clone();
        let train = class_entries(&scan, &scan.classes, root, &train_dir)?;
        let mut held = |dir: Option<&str>| -> Result<Vec<SplitEntry>> {
            let Some(dir) = dir else {
                return Ok(Vec::new());
            };
            let other = ClassScan::open(&root.join(dir))?;
            skipped.extend(other.skipped.clone());
            class_entries(&other, &scan.classes, root, &train_dir)
        };
        let val = held(layout.validation_dir())?;
        let test = held(layout.held_out_dir())?;
        Ok(Pools {
            classes: scan.classes,
            train,
            val,
            test,
            skipped,
            test_dir: folder(layout.held_out_dir()),
            train_dir,
        })
    }
}

/// The entries of a class scan, labelled with their index in `classes` (the training classes),
/// files relative to `root`.
///
/// # Errors
/// [`Error::InvalidFile`] naming a class folder with images whose class is not in `classes`.
fn class_entries(
    scan: &ClassScan,
    classes: &[String],
    root: &Path,
    train_dir: &Path,
) -> Result<Vec<SplitEntry>> {
    let mut out = Vec::new();
    for (k, (name, files)) in scan.classes.iter().zip(&scan.files).enumerate() {
        let Some(label) = classes.iter().position(|c| c == name) else {
            if files.is_empty() {
                continue;
            }
            return Err(Error::invalid(
                scan.class_dir(k),
                format!(
                    "class {name:?} is not a class of the training split {} ({}); pipe can only \
                     test classes it learns: add its images to the training split, or remove the \
                     folder",
                    train_dir.display(),
                    classes.join(", ")
                ),
            ));
        };
        out.extend(files.iter().map(|f| SplitEntry::of(root, f, label)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{tests::write_png, ResizePolicy, SkipReason};

    /// A temporary dataset from a whitespace-separated `<folder>:<n>` list: `n` 8x8 PNGs in each
    /// folder (`00.png`..), coloured [k, i, 7] for the k-th folder and the i-th image.
    fn dataset(spec: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for (k, item) in spec.split_whitespace().enumerate() {
            let (folder, n) = item.split_once(':').unwrap();
            for i in 0..n.parse::<usize>().unwrap() {
                let path = tmp.path().join(folder).join(format!("{i:02}.png"));
                write_png(&path, 8, 8, [k as u8, i as u8, 7]);
            }
        }
        tmp
    }

    fn build(root: &Path, opts: SplitOptions) -> Result<SplitList> {
        Ok(SplitList::build(&DataLayout::detect(root)?, &opts)?.0)
    }

    /// The error text of a build that must fail, checked to contain each of `parts`.
    fn refused(root: &Path, opts: SplitOptions, parts: &[&str]) -> String {
        let err = build(root, opts).unwrap_err().to_string();
        assert!(parts.iter().all(|p| err.contains(p)), "{err}");
        err
    }

    fn files(entries: &[SplitEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.file.as_str()).collect()
    }

    fn labels_of(entries: &[SplitEntry]) -> Vec<usize> {
        entries.iter().map(|e| e.label).collect()
    }

    fn opts(val: Option<f64>, test: Option<f64>) -> SplitOptions {
        SplitOptions {
            val_share: val,
            test_share: test,
            ..SplitOptions::default()
        }
    }

    #[test]
    fn stratified_split_is_reproducible_disjoint_and_covering() {
        let labels: Vec<usize> = (0..53)
            .map(|i| usize::from(i >= 30) + usize::from(i >= 50))
            .collect();
        let a = stratified_split(&labels, 3, 0.15, 0.15, 7).unwrap();
        assert_eq!(a, stratified_split(&labels, 3, 0.15, 0.15, 7).unwrap());
        assert_ne!(a, stratified_split(&labels, 3, 0.15, 0.15, 8).unwrap());
        let mut all: Vec<usize> = [a.train.clone(), a.val.clone(), a.test.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..53).collect::<Vec<_>>(), "disjoint and covering");
        let count = |idx: &[usize]| {
            (0..3)
                .map(|c| idx.iter().filter(|&&i| labels[i] == c).count())
                .collect::<Vec<_>>()
        };
        // round(0.15 * 30) = 5 (4.5 rounds up), round(0.15 * 20) = 3, and 1 of the class of 3.
        assert_eq!(count(&a.val), [5, 3, 1]);
        assert_eq!(count(&a.test), [5, 3, 1]);
        assert_eq!(count(&a.train), [20, 14, 1]);
        for part in [&a.train, &a.val, &a.test] {
            assert!(part.windows(2).all(|w| w[0] < w[1]), "ascending");
        }
    }

    /// Without a test share, the validation images are those the feature-level `--val-split` of
    /// earlier pipe versions picked for the same labels, share and seed (values taken from it).
    #[test]
    fn validation_only_matches_the_feature_level_holdout() {
        let labels: Vec<usize> = (0..23).map(|i| (i * 7) % 3).collect();
        let s = stratified_split(&labels, 3, 0.3, 0.0, 5).unwrap();
        assert_eq!(s.val, vec![2, 6, 10, 11, 18, 22]);
        let train = vec![0, 1, 3, 4, 5, 7, 8, 9, 12, 13, 14, 15, 16, 17, 19, 20, 21];
        assert_eq!(s.train, train);
        assert!(s.test.is_empty());
    }

    #[test]
    fn too_small_classes_and_large_shares() {
        let labels = [0, 0, 0, 1, 1];
        let small = stratified_split(&labels, 2, 0.1, 0.1, 1).unwrap_err();
        let want = SmallClass {
            label: 1,
            count: 2,
            needed: 3,
        };
        assert_eq!(small, want);
        assert!(stratified_split(&labels, 2, 0.1, 0.0, 1).is_ok());
        // Shares of 0.45 + 0.45 of 4 images: 2 + 2 rounded, cut back to leave one for training.
        let s = stratified_split(&[0, 0, 0, 0], 1, 0.45, 0.45, 1).unwrap();
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (1, 1, 2));
    }

    #[test]
    fn train_test_folders_with_a_class_missing_from_test() {
        let tmp = dataset("train/ant:3 train/bee:2 train/fly:2 test/bee:2");
        let root = tmp.path();
        std::fs::create_dir_all(root.join("test/fly")).unwrap(); // empty: absent
        std::fs::write(root.join("test/.DS_Store"), b"x").unwrap();
        let layout = DataLayout::detect(root).unwrap();
        let (list, skipped) = SplitList::build(&layout, &SplitOptions::default()).unwrap();
        assert_eq!(list.layout, LayoutKind::TrainTest);
        assert_eq!(list.classes, vec!["ant", "bee", "fly"]);
        assert_eq!(
            files(&list.train)[..2],
            ["train/ant/00.png", "train/ant/01.png"]
        );
        assert_eq!(files(&list.test), ["test/bee/00.png", "test/bee/01.png"]);
        assert_eq!(
            labels_of(&list.test),
            [1, 1],
            "labels index the training classes"
        );
        assert!(list.val.is_empty());
        assert_eq!(skipped.ignored, vec![root.join("test/.DS_Store")]);
        let spec = ImageSpec::new(4, ResizePolicy::Crop);
        let test = list
            .load(SplitPart::Test, &spec, OnError::Stop)
            .unwrap()
            .split;
        assert_eq!((test.root.as_path(), test.labels), (root, vec![1, 1]));
        assert_eq!(test.pixels.len(), 2 * 4 * 4 * 3);
        assert_eq!(&test.pixels[..3], &[3, 0, 7]);
    }

    #[test]
    fn a_class_only_in_the_held_out_split_is_refused_by_name() {
        let tmp = dataset("train/ant:2 train/bee:2 val/ant:1 val/wasp:1");
        let err = build(tmp.path(), SplitOptions::default()).unwrap_err();
        let Error::InvalidFile { path, message } = &err else {
            panic!("{err}")
        };
        assert_eq!(path, &tmp.path().join("val/wasp"));
        assert!(
            message.contains(r#"class "wasp" is not a class of the training split"#),
            "{err}"
        );
        assert!(message.contains("(ant, bee)"), "{err}");
    }

    #[test]
    fn train_val_and_train_val_test_folders() {
        let tv = dataset("train/a:2 train/b:2 val/a:1 val/b:1");
        let list = build(tv.path(), SplitOptions::default()).unwrap();
        assert_eq!(list.layout, LayoutKind::TrainVal);
        assert_eq!(files(&list.test), ["val/a/00.png", "val/b/00.png"]);
        assert!(list.val.is_empty());
        let tvt = dataset("train/a:2 train/b:2 val/a:1 test/b:1");
        let list = build(tvt.path(), SplitOptions::default()).unwrap();
        assert_eq!(list.layout, LayoutKind::TrainValTest);
        assert_eq!(
            (files(&list.val), files(&list.test)),
            (vec!["val/a/00.png"], vec!["test/b/00.png"])
        );
        refused(
            tvt.path(),
            opts(Some(0.2), None),
            &["val/ folder is the validation split"],
        );
    }

    /// A single folder of class folders: pipe's splits are reproducible by seed, disjoint, cover
    /// every image, keep each class in each split, survive a write/read round trip and load back.
    #[test]
    fn single_folder_is_split_by_seed_and_the_list_round_trips() {
        let tmp = dataset("ants:10 bees:7 __MACOSX/ants:1 .ipynb_checkpoints:1");
        let root = tmp.path();
        let seeded = SplitOptions {
            seed: 3,
            ..SplitOptions::default()
        };
        let list = build(root, seeded).unwrap();
        assert_eq!(list.layout, LayoutKind::ClassFolders);
        assert_eq!(list.classes, vec!["ants", "bees"]);
        assert_eq!(
            (list.val_share, list.test_share),
            (DEFAULT_VAL_SHARE, DEFAULT_TEST_SHARE)
        );
        assert_eq!(build(root, seeded).unwrap(), list);
        assert_ne!(
            build(root, SplitOptions { seed: 4, ..seeded }).unwrap(),
            list
        );
        let mut all: Vec<&str> = [files(&list.train), files(&list.val), files(&list.test)].concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 17);
        for part in [&list.train, &list.val, &list.test] {
            assert!(labels_of(part).contains(&0) && labels_of(part).contains(&1));
        }
        assert_eq!(
            list.describe(),
            "2 classes: train 11, validation 3, test 3 images (seed 3)"
        );
        let path = root.join(SPLIT_FILE);
        list.write(&path).unwrap();
        let back = SplitList::read(&path).unwrap();
        assert_eq!(back, list);
        let spec = ImageSpec::new(8, ResizePolicy::Squash);
        let a = list
            .load(SplitPart::Val, &spec, OnError::Stop)
            .unwrap()
            .split;
        let b = back
            .load(SplitPart::Val, &spec, OnError::Stop)
            .unwrap()
            .split;
        assert_eq!(a.names, files(&list.val));
        assert_eq!((a.pixels, a.labels), (b.pixels, b.labels));
    }

    /// Files with an image's extension whose first bytes are no image (empty, text) take no place in
    /// a split: a single folder's split is the one without them, and on split folders they leave the
    /// limited lists; listed as unusable with their reasons, kept through `split.json`.
    #[test]
    fn files_that_are_no_image_take_no_place_in_a_split() {
        let tmp = dataset("ants:10 bees:7");
        let root = tmp.path();
        let seeded = SplitOptions {
            seed: 3,
            ..SplitOptions::default()
        };
        let clean = build(root, seeded).unwrap();
        std::fs::write(root.join("ants/empty.jpg"), b"").unwrap();
        std::fs::write(root.join("bees/fake.jpg"), b"<html>not found</html>").unwrap();
        let list = build(root, seeded).unwrap();
        assert_eq!(
            (&list.train, &list.val, &list.test),
            (&clean.train, &clean.val, &clean.test)
        );
        let reasons: Vec<(String, SkipReason)> = list
            .unusable
            .iter()
            .map(|s| {
                (
                    s.path.strip_prefix(root).unwrap().display().to_string(),
                    s.reason,
                )
            })
            .collect();
        assert_eq!(
            reasons,
            [
                ("ants/empty.jpg".to_string(), SkipReason::Empty),
                ("bees/fake.jpg".to_string(), SkipReason::NotAnImage)
            ]
        );
        assert_eq!(
            list.describe(),
            "2 classes: train 11, validation 3, test 3 images (seed 3); 2 files left out: no image"
        );
        let path = root.join(SPLIT_FILE);
        list.write(&path).unwrap();
        assert_eq!(SplitList::read(&path).unwrap(), list);
        // Split folders: the limits, then the files that are no image leave.
        let tmp = dataset("train/a:4 train/b:4 test/a:3 test/b:3");
        let root = tmp.path();
        std::fs::write(root.join("test/b/00.png"), b"").unwrap();
        let list = build(root, opts(Some(0.0), None)).unwrap();
        assert_eq!(
            files(&list.test),
            [
                "test/a/00.png",
                "test/a/01.png",
                "test/a/02.png",
                "test/b/01.png",
                "test/b/02.png"
            ]
        );
        assert_eq!(list.unusable.len(), 1);
        assert_eq!(list.train.len(), 8);
    }

    #[test]
    fn single_folder_errors_name_the_class_and_the_option() {
        let tmp = dataset("ants:5 bees:2");
        let root = tmp.path();
        let small = [
            r#"class "bees" has 2 images for training, validation and test"#,
            "at least 3",
        ];
        refused(root, SplitOptions::default(), &small);
        let err = build(root, SplitOptions::default()).unwrap_err();
        assert!(matches!(&err, Error::InvalidFile { path, .. } if path == &root.join("bees")));
        let list = build(root, opts(Some(0.0), None)).unwrap();
        assert_eq!(
            (list.train.len(), list.val.len(), list.test.len()),
            (5, 0, 2)
        );
        refused(
            root,
            opts(None, Some(0.0)),
            &["--test-split must be above 0"],
        );
        refused(
            root,
            opts(Some(1.0), None),
            &["--val-split must be at least 0 and below 1"],
        );
        refused(
            root,
            opts(Some(0.5), Some(0.5)),
            &["leave no training images"],
        );
        let tt = dataset("train/a:2 train/b:2 test/a:1");
        refused(
            tt.path(),
            opts(None, Some(0.2)),
            &["--test-split applies only to a single folder"],
        );
    }

    /// Limits take class-balanced subsets (of the classes present), validation is carved from the
    /// limited training images, and a limit over what is there names the option and the folder.
    #[test]
    fn limits_and_validation_carving_on_split_folders() {
        let tmp = dataset("train/a:6 train/b:6 test/a:4 test/b:1");
        let limits = SplitOptions {
            train_limit: 8,
            test_limit: 4,
            ..opts(Some(0.25), None)
        };
        let list = build(tmp.path(), limits).unwrap();
        assert_eq!(list.train.len() + list.val.len(), 8);
        assert_eq!(labels_of(&list.val), [0, 1]);
        assert_eq!(
            files(&list.test),
            ["test/a/00.png", "test/a/01.png", "test/b/00.png"]
        );
        let too_many = SplitOptions {
            train_limit: 13,
            ..SplitOptions::default()
        };
        refused(
            tmp.path(),
            too_many,
            &["--train-limit 13 exceeds the 12 images in", "train"],
        );
    }

    /// The binary release as a split list: limits balance the classes in record order, the records
    /// load with their own pixels (a uniform record stays uniform when resized), a limit over the
    /// records is refused, and a record that changed label since the list was written is refused.
    #[test]
    fn binary_release_lists_records_and_loads_them() {
        let tmp = tempfile::tempdir().unwrap();
        cifar::tests::write_fake_release(tmp.path(), 30);
        let limits = SplitOptions {
            train_limit: 20,
            test_limit: 10,
            ..SplitOptions::default()
        };
        let list = build(tmp.path(), limits).unwrap();
        assert_eq!(list.layout, LayoutKind::CifarBinary);
        assert_eq!((list.train.len(), list.test.len()), (20, 10));
        assert_eq!(
            files(&list.train)[..2],
            ["data_batch_1.bin#0", "data_batch_1.bin#10"]
        );
        assert_eq!(labels_of(&list.train)[..3], [0, 0, 1]);
        let spec = ImageSpec::new(64, ResizePolicy::Squash).full_decode();
        let ours = list
            .load(SplitPart::Train, &spec, OnError::Skip)
            .unwrap()
            .split;
        assert_eq!(ours.names, files(&list.train));
        assert_eq!(ours.labels, labels_of(&list.train));
        assert_eq!(ours.pixels.len(), 20 * 64 * 64 * 3);
        // write_fake_release: record i of a file has R = label, G = i, B = 255 - label.
        for (k, image) in ours.pixels.chunks_exact(64 * 64 * 3).enumerate() {
            let index: u8 = ours.names[k].rsplit_once('#').unwrap().1.parse().unwrap();
            let label = ours.labels[k] as u8;
            let want = [label, index, 255 - label];
            assert!(
                image.chunks_exact(3).all(|p| p == want),
                "{}",
                ours.names[k]
            );
        }
        let all = build(tmp.path(), SplitOptions::default()).unwrap();
        assert_eq!((all.train.len(), all.test.len()), (150, 30));
        let too_many = SplitOptions {
            test_limit: 31,
            ..SplitOptions::default()
        };
        refused(
            tmp.path(),
            too_many,
            &["--test-limit 31 exceeds the 30 images"],
        );
        let mut bad = list.clone();
        bad.train[0].label = 5;
        let err = bad
            .load(SplitPart::Train, &spec, OnError::Skip)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data_batch_1.bin#0") && err.contains("relabelled"),
            "{err}"
        );
    }

    /// Split folders: classes are the training folder's sub-folders in byte order (junk and
    /// non-image files left out), entries grouped by class with sorted names, and a limit takes the
    /// same class-balanced subset every time (7 of 4 + 5 + 3: 3, 2, 2).
    #[test]
    fn split_folders_give_sorted_classes_and_a_balanced_limit() {
        let tmp = dataset("train/b_cls:5 train/a_cls:4 train/c_cls:3 test/a_cls:1");
        let root = tmp.path();
        std::fs::write(root.join("train/a_cls/notes.txt"), "not an image").unwrap();
        let layout = DataLayout::detect(root).unwrap();
        let (all, skipped) = SplitList::build(&layout, &SplitOptions::default()).unwrap();
        assert_eq!(all.classes, vec!["a_cls", "b_cls", "c_cls"]);
        assert_eq!(all.train.len(), 12);
        assert_eq!(skipped.non_images, vec![root.join("train/a_cls/notes.txt")]);
        assert_eq!(
            files(&all.train)[..2],
            ["train/a_cls/00.png", "train/a_cls/01.png"]
        );
        assert_eq!(labels_of(&all.train)[4], 1);
        let limited = SplitOptions {
            train_limit: 7,
            ..SplitOptions::default()
        };
        let list = build(root, limited).unwrap();
        let counts: Vec<usize> = (0..3)
            .map(|c| labels_of(&list.train).iter().filter(|&&l| l == c).count())
            .collect();
        assert_eq!(counts, [3, 2, 2]);
        assert_eq!(list.train[3].file, "train/b_cls/00.png");
        assert_eq!(build(root, limited).unwrap(), list);
    }

    /// Without `test/`, `val/` is the held-out split; a junk folder in it is no class, a junk file
    /// no image, and its images keep the training labels.
    #[test]
    fn val_folder_is_the_held_out_split_without_test() {
        let tmp = dataset("train/ants:1 train/bees:1 val/bees:1 val/__MACOSX:1");
        let root = tmp.path();
        std::fs::write(root.join("val/bees/.DS_Store"), b"x").unwrap();
        let layout = DataLayout::detect(root).unwrap();
        let (list, skipped) = SplitList::build(&layout, &SplitOptions::default()).unwrap();
        assert_eq!(list.classes, vec!["ants", "bees"]);
        assert_eq!(files(&list.test), ["val/bees/00.png"]);
        assert_eq!(labels_of(&list.test), [1]);
        assert!(skipped.ignored.contains(&root.join("val/__MACOSX")));
        assert!(skipped.ignored.contains(&root.join("val/bees/.DS_Store")));
        let spec = ImageSpec::new(8, ResizePolicy::Squash).full_decode();
        let test = list
            .load(SplitPart::Test, &spec, OnError::Stop)
            .unwrap()
            .split;
        assert_eq!(test.root, root);
        // dataset(): the third folder's first image is [2, 0, 7].
        assert_eq!(&test.pixels[..3], &[2, 0, 7]);
    }

    #[test]
    fn empty_training_folder_is_refused() {
        let tmp = dataset("test/a:1");
        std::fs::create_dir(tmp.path().join("train")).unwrap();
        refused(
            tmp.path(),
            SplitOptions::default(),
            &["train: no class sub-folders"],
        );
    }

    /// A broken file in a split: left out and named with its reason (names and labels stay
    /// aligned), or, strict, the load stops with its error.
    #[test]
    fn lenient_and_strict_loads_of_a_list() {
        let tmp = dataset("train/a:2 train/b:2 test/a:1 test/b:1");
        let root = tmp.path();
        // A PNG cut short: its signature passes the split's sniffing, its decoding fails.
        let png = std::fs::read(root.join("train/a/01.png")).unwrap();
        std::fs::write(root.join("train/a/01.png"), &png[..png.len() / 2]).unwrap();
        let list = build(root, SplitOptions::default()).unwrap();
        assert!(list.unusable.is_empty());
        let spec = ImageSpec::new(4, ResizePolicy::Squash);
        let train = list.load(SplitPart::Train, &spec, OnError::Skip).unwrap();
        assert_eq!(
            train.split.names,
            ["train/a/00.png", "train/b/00.png", "train/b/01.png"]
        );
        assert_eq!(train.split.labels, [0, 1, 1]);
        let skipped: Vec<_> = train.skipped.iter().map(|s| s.path.clone()).collect();
        assert_eq!(skipped, [root.join("train/a/01.png")]);
        let message = &train.skipped[0].message;
        let err = list
            .load(SplitPart::Train, &spec, OnError::Stop)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("01.png: {message}")), "{err}");
    }

    #[test]
    fn reading_refuses_other_formats_and_bad_labels() {
        let tmp = dataset("a:3 b:3");
        let mut list = build(tmp.path(), SplitOptions::default()).unwrap();
        let path = tmp.path().join(SPLIT_FILE);
        list.test[0].label = 2;
        list.write(&path).unwrap();
        let err = SplitList::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("has label 2, but there are 2 classes"),
            "{err}"
        );
        list.format = 9;
        list.write(&path).unwrap();
        assert!(SplitList::read(&path)
            .unwrap_err()
            .to_string()
            .contains("format 9"));
    }
}
