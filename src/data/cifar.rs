//! Reader of the official CIFAR-10 binary release (`cifar-10-batches-bin/`): `data_batch_1.bin` ..
//! `data_batch_5.bin` (training), `test_batch.bin` (test), `batches.meta.txt` (class names, one per line).
//! Each record is 1 label byte followed by 3,072 bytes: the 1,024 red, then green, then blue values of a
//! 32x32 image, row-major (Krizhevsky, 2009).

use crate::arch::CIFAR10_CLASSES;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Side of a CIFAR-10 image, pixels.
pub const CIFAR_SIZE: usize = 32;
/// Bytes per record: 1 label byte + 3 planes of 32x32.
pub const RECORD_BYTES: usize = 1 + 3 * CIFAR_SIZE * CIFAR_SIZE;
/// Training batch files, in order.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// Test batch file.
pub const TEST_FILE: &str = "test_batch.bin";
/// Class-name file.
pub const META_FILE: &str = "batches.meta.txt";

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `<file>#<index>`, e.g. `test_batch.bin#17`.
    pub name: String,
    /// Label, 0..classes.
    pub label: usize,
    /// 32x32 RGB pixels, HWC (interleaved), 3,072 bytes.
    pub pixels: Vec<u8>,
}

impl Record {
    /// The record's pixels fitted to `spec` (resized to its side by its policy and filter): RGB u8
    /// HWC, `spec.size^2 * 3` bytes, how training, evaluation and export verification see a record.
    ///
    /// # Errors
    /// [`Error::InvalidFile`] naming `file` (the batch file the record came from) when the record is
    /// not 32x32 RGB; [`Error::Usage`] for a `spec` size out of range.
    pub fn fitted(&self, file: &Path, spec: &crate::data::ImageSpec) -> Result<Vec<u8>> {
        let side = CIFAR_SIZE as u32;
        let img = image::RgbImage::from_raw(side, side, self.pixels.clone()).ok_or_else(|| {
            Error::invalid(
                file,
                format!("record {} is not a 32x32 RGB image", self.name),
            )
        })?;
        Ok(spec.fit(img)?.into_raw())
    }
}

/// Finds the binary release under `data`: `data` itself or `data/cifar-10-batches-bin`.
pub fn find_root(data: &Path) -> Option<PathBuf> {
    [data.to_path_buf(), data.join("cifar-10-batches-bin")]
        .into_iter()
        .find(|d| d.join(TEST_FILE).is_file() || d.join(TRAIN_FILES[0]).is_file())
}

/// Class names from `batches.meta.txt` (non-empty lines), or the CIFAR-10 names when the file is absent.
///
/// # Errors
/// [`Error::InvalidFile`] when the file exists but names fewer than 2 classes or is not UTF-8.
pub fn read_classes(root: &Path) -> Result<Vec<String>> {
    let meta = root.join(META_FILE);
    if !meta.exists() {
        return Ok(CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect());
    }
    let bytes = std::fs::read(&meta).map_err(|e| Error::io(&meta, e))?;
    let text = String::from_utf8(bytes).map_err(|_| Error::invalid(&meta, "not UTF-8 text"))?;
    let classes: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if classes.len() < 2 {
        return Err(Error::invalid(
            &meta,
            format!(
                "names {} classes; expected one class name per line",
                classes.len()
            ),
        ));
    }
    Ok(classes)
}

/// Checks one batch file's bytes and returns the label of each record.
///
/// # Errors
/// [`Error::InvalidFile`] naming `path` when the size is not a whole number of records or a label
/// byte is not below `num_classes`.
pub fn batch_labels(path: &Path, bytes: &[u8], num_classes: usize) -> Result<Vec<usize>> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_BYTES) {
        return Err(Error::invalid(
            path,
            format!(
                "{} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records (truncated or not a CIFAR-10 batch file)",
                bytes.len()
            ),
        ));
    }
    bytes
        .chunks_exact(RECORD_BYTES)
        .enumerate()
        .map(|(i, rec)| {
            let label = rec[0] as usize;
            if label >= num_classes {
                return Err(Error::invalid(
                    path,
                    format!(
                        "record {i} has label {label}, but there are only {num_classes} classes"
                    ),
                ));
            }
            Ok(label)
        })
        .collect()
}

/// `<file name>#<index>`, the name of record `index` of batch file `path`.
pub fn record_name(path: &Path, index: usize) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{file}#{index}")
}

/// Parses one batch file's bytes into records (planar RGB converted to interleaved HWC).
///
/// # Errors
/// As [`batch_labels`].
pub fn parse_batch(path: &Path, bytes: &[u8], num_classes: usize) -> Result<Vec<Record>> {
    let labels = batch_labels(path, bytes, num_classes)?;
    let hw = CIFAR_SIZE * CIFAR_SIZE;
    Ok(bytes
        .chunks_exact(RECORD_BYTES)
        .zip(labels)
        .enumerate()
        .map(|(i, (rec, label))| {
            let planes = &rec[1..];
            let mut pixels = vec![0u8; 3 * hw];
            for p in 0..hw {
                for c in 0..3 {
                    pixels[3 * p + c] = planes[c * hw + p];
                }
            }
            Record {
                name: record_name(path, i),
                label,
                pixels,
            }
        })
        .collect())
}

/// The batch files of the training (`train = true`) or test split.
pub fn split_files(train: bool) -> &'static [&'static str] {
    if train {
        &TRAIN_FILES
    } else {
        std::slice::from_ref(&TEST_FILE)
    }
}

/// Name and label of every record of the training (`train = true`) or test split, without
/// converting pixels.
///
/// # Errors
/// A missing or malformed batch file, named.
pub fn read_index(root: &Path, train: bool, num_classes: usize) -> Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    for f in split_files(train) {
        let path = root.join(f);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let labels = batch_labels(&path, &bytes, num_classes)?;
        out.extend(
            labels
                .into_iter()
                .enumerate()
                .map(|(i, l)| (record_name(&path, i), l)),
        );
    }
    Ok(out)
}

/// Reads every record of the training (`train = true`) or test split.
///
/// # Errors
/// A missing or malformed batch file, named.
pub fn read_split(root: &Path, train: bool, num_classes: usize) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for f in split_files(train) {
        let path = root.join(f);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        out.extend(parse_batch(&path, &bytes, num_classes)?);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a small binary release: `per_file` records per batch file, label = index % 10, pixel
    /// planes R = label, G = index, B = 255 - label.
    pub(crate) fn write_fake_release(dir: &Path, per_file: usize) {
        std::fs::create_dir_all(dir).unwrap();
        for f in TRAIN_FILES.iter().chain([TEST_FILE].iter()) {
            let mut bytes = Vec::new();
            for i in 0..per_file {
                let label = (i % 10) as u8;
                bytes.push(label);
                bytes.extend(std::iter::repeat_n(label, 1024));
                bytes.extend(std::iter::repeat_n(i as u8, 1024));
                bytes.extend(std::iter::repeat_n(255 - label, 1024));
            }
            std::fs::write(dir.join(f), bytes).unwrap();
        }
        std::fs::write(dir.join(META_FILE), CIFAR10_CLASSES.join("\n") + "\n\n").unwrap();
    }

    #[test]
    fn parses_planar_records_into_interleaved_rgb() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_release(dir.path(), 20);
        let root = find_root(dir.path()).unwrap();
        assert_eq!(read_classes(&root).unwrap()[9], "truck");
        let train = read_split(&root, true, 10).unwrap();
        assert_eq!(train.len(), 100);
        let r = &train[13];
        assert_eq!(r.name, "data_batch_1.bin#13");
        assert_eq!(r.label, 3);
        assert_eq!(&r.pixels[..6], &[3, 13, 252, 3, 13, 252]);
        assert_eq!(train[20].name, "data_batch_2.bin#0");
        assert_eq!(read_split(&root, false, 10).unwrap().len(), 20);
        let index = read_index(&root, true, 10).unwrap();
        assert_eq!(index.len(), 100);
        assert_eq!(index[13], ("data_batch_1.bin#13".to_string(), 3));
        assert_eq!(index[20].0, "data_batch_2.bin#0");
    }

    #[test]
    fn refuses_truncated_files_and_bad_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(TEST_FILE);
        let err = parse_batch(&p, &vec![0u8; RECORD_BYTES + 5], 10)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test_batch.bin") && err.contains("not a whole number"),
            "{err}"
        );
        let mut rec = vec![0u8; 2 * RECORD_BYTES];
        rec[RECORD_BYTES] = 10;
        let err = parse_batch(&p, &rec, 10).unwrap_err().to_string();
        assert!(err.contains("record 1 has label 10"), "{err}");
        assert!(parse_batch(&p, &[], 10).is_err());
    }

    /// A record fitted to a spec: a copy at 32, the image crate's bilinear resize of the 32x32 image
    /// otherwise (a square squashes with no crop), and a record that is not 32x32 RGB is refused
    /// naming its batch file.
    #[test]
    fn fitted_record_is_the_resized_record() {
        let pixels: Vec<u8> = (0..3 * 32 * 32).map(|i| (i % 251) as u8).collect();
        let record = Record {
            name: "test_batch.bin#0".into(),
            label: 0,
            pixels: pixels.clone(),
        };
        let file = Path::new("test_batch.bin");
        let spec = |size| crate::data::ImageSpec::new(size, crate::data::ResizePolicy::Crop);
        assert_eq!(record.fitted(file, &spec(32)).unwrap(), pixels);
        let img = image::RgbImage::from_raw(32, 32, pixels).unwrap();
        let want = image::imageops::resize(&img, 64, 64, crate::data::RESIZE_FILTER);
        assert_eq!(record.fitted(file, &spec(64)).unwrap(), want.into_raw());
        let short = Record {
            pixels: vec![0; 100],
            ..record
        };
        let err = short.fitted(file, &spec(64)).unwrap_err().to_string();
        assert!(
            err.contains("test_batch.bin: record test_batch.bin#0 is not a 32x32"),
            "{err}"
        );
    }

    #[test]
    fn nested_release_folder_is_found() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_release(&dir.path().join("cifar-10-batches-bin"), 10);
        assert_eq!(
            find_root(dir.path()).unwrap(),
            dir.path().join("cifar-10-batches-bin")
        );
        assert!(find_root(&dir.path().join("nothing")).is_none());
    }
}
