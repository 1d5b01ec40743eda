//! Image data: class-folder datasets, image decoding and resizing, deterministic class-balanced subsets,
//! and Keras "caffe" preprocessing.
//!
//! Pixels travel as `u8` in **NHWC RGB** order (`[N, H, W, 3]`, row-major), exactly what an ONNX
//! consumer of the exported model feeds. Preprocessing to the network's BGR NCHW float input happens
//! in [`caffe_preprocess`] (training) and inside the exported ONNX graph (inference).

pub mod cifar;

use crate::arch::IMAGENET_BGR_MEANS;
use crate::error::{Error, Result};
use image::imageops::FilterType;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// File extensions (lower case) treated as images when walking folders.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "ppm", "pgm", "pbm", "pnm", "tga",
    "qoi", "ico",
];

/// Resampling filter used when an image is not already `size`x`size`: bilinear (the image crate's
/// `FilterType::Triangle`), the usual choice of Keras' `image_dataset_from_directory` and torchvision.
pub const RESIZE_FILTER: FilterType = FilterType::Triangle;

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

fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// What a folder walk found besides images: files skipped because their extension is not an image
/// extension, and symbolic links that lead back to one of their own ancestors (not followed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Files that are not images by extension (not decoded, not counted as images).
    pub non_images: Vec<PathBuf>,
    /// Symbolic links that point to an ancestor folder (a loop), each with the folder it points to.
    pub loops: Vec<(PathBuf, PathBuf)>,
    /// Image files reached a second time through the inputs (e.g. a folder and a file inside it, or
    /// the same folder twice): kept once, at their first occurrence.
    pub duplicates: Vec<PathBuf>,
}

impl Skipped {
    /// Whether nothing was skipped.
    pub fn is_empty(&self) -> bool {
        self.non_images.is_empty() && self.loops.is_empty() && self.duplicates.is_empty()
    }

    fn extend(&mut self, other: Skipped) {
        self.non_images.extend(other.non_images);
        self.loops.extend(other.loops);
        self.duplicates.extend(other.duplicates);
    }

    /// One line per kind of skipped entry, e.g. `skipped 3 files that are not images (by extension),
    /// e.g. data/notes.txt`, for warnings on stderr.
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
}

/// Lists image files under `dir`, recursively, sorted by path; symlinks are followed, loops skipped
/// (and reported in [`Skipped`] with the other skipped files).
fn walk_images(dir: &Path) -> Result<(Vec<PathBuf>, Skipped)> {
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
    {
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
    Ok((out, skipped))
}

impl ImageFolder {
    /// Reads the class folders under `root`.
    ///
    /// # Errors
    /// [`Error::Io`] when `root` cannot be read; [`Error::InvalidFile`] when it has no class sub-folder
    /// or a class folder holds no image.
    pub fn open(root: &Path) -> Result<Self> {
        // Folder names as the file system has them (any bytes); class names are their lossy UTF-8.
        let mut dirs = Vec::new();
        for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
            let entry = entry.map_err(|e| Error::io(root, e))?;
            if entry.path().is_dir() {
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
        let classes: Vec<String> = dirs
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        let mut samples = Vec::new();
        let mut skipped = Skipped::default();
        for (label, class_dir) in dirs.iter().enumerate() {
            let dir = root.join(class_dir);
            let (files, skip) = walk_images(&dir)?;
            if files.is_empty() {
                let mut msg = "class folder holds no image".to_string();
                if !skip.is_empty() {
                    msg = format!("{msg} ({})", skip.warnings().join("; "));
                }
                return Err(Error::invalid(&dir, msg));
            }
            skipped.extend(skip);
            for path in files {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                samples.push(Sample { path, name, label });
            }
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            samples,
            skipped,
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
    /// Test images (`test/`, or `test_batch.bin`).
    Test,
}

/// The selected images of one split, decoded.
#[derive(Debug, Clone)]
pub struct LoadedSplit {
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// Folder the `names` are relative to (the split's folder, or the binary release folder).
    pub root: PathBuf,
    /// Per image: path relative to `root` (`cat/0001.jpg`) or `<batch file>#<record>`.
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

/// Where a dataset comes from, detected from `--data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// `train/<class>/*` and `test/<class>/*` image folders under this root.
    Folders(PathBuf),
    /// The official CIFAR-10 binary release in this folder.
    CifarBinary(PathBuf),
}

impl DataSource {
    /// Detects the layout of `data`: the CIFAR-10 binary release (in `data` or
    /// `data/cifar-10-batches-bin`), else `train/` and `test/` class folders.
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
            DataSource::Folders(root) => {
                Ok(ImageFolder::open(&root.join(split_dir(split)))?.classes)
            }
            DataSource::CifarBinary(root) => cifar::read_classes(root),
        }
    }

    /// Loads a class-balanced subset of at most `limit` images (`0` = all) of `split`, decoded and
    /// resized to `size`x`size`.
    ///
    /// # Errors
    /// [`Error::Usage`] when `limit` exceeds the images available; missing or malformed files, named.
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
                let root = data.join(split_dir(split));
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

fn split_dir(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "test",
    }
}

/// Largest width or height pipe decodes, pixels: bigger images are refused after reading their header,
/// before any pixel buffer is allocated (a defence against decompression bombs, e.g. a few-kB PNG that
/// announces 20000x20000 pixels).
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest decoded image pipe accepts, bytes, both as decoded and as its 8-bit RGB copy (512 MiB, the
/// image crate's default allocation limit): e.g. a 12,000 x 12,000 RGB photo (432 MB) is decoded, a
/// 16,384 x 16,384 one (805 MB as RGB) is not.
pub const MAX_IMAGE_BYTES: u64 = 512 << 20;
/// The image formats pipe decodes, for messages.
pub const SUPPORTED_FORMATS: &str = "JPEG, PNG, BMP, GIF, TIFF, WebP, PNM, TGA, QOI, ICO";

/// Decodes one image file (any format the image crate reads, detected from content), converts it to
/// 8-bit RGB (grayscale is replicated, alpha dropped, 16-bit scaled, CMYK converted), applies its EXIF
/// orientation and resizes it to `size`x`size` with [`RESIZE_FILTER`] when it has another size.
/// Returns `size*size*3` bytes, HWC RGB.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::InvalidFile`] or [`Error::Image`] naming it when
/// it is empty, not an image, in an unsupported format, truncated, corrupt, or over
/// [`MAX_IMAGE_SIDE`] / [`MAX_IMAGE_BYTES`].
pub fn load_rgb(path: &Path, size: usize) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(path, &bytes, size)
}

/// As [`load_rgb`], for the bytes of an image file already in memory; `path` only names it in errors
/// (and its extension identifies TGA, which has no signature).
///
/// # Errors
/// As [`load_rgb`].
pub fn decode_rgb(path: &Path, bytes: &[u8], size: usize) -> Result<Vec<u8>> {
    use image::{ImageDecoder, ImageFormat};
    if bytes.is_empty() {
        return Err(Error::invalid(path, "empty file (0 bytes), not an image"));
    }
    let format = match image::guess_format(bytes) {
        Ok(f) => f,
        // TGA has no signature: trust the extension for it only.
        Err(_) if ImageFormat::from_path(path).ok() == Some(ImageFormat::Tga) => ImageFormat::Tga,
        Err(_) => {
            return Err(Error::invalid(
                path,
                format!(
                    "not an image: its contents match none of the formats pipe reads ({SUPPORTED_FORMATS})"
                ),
            ))
        }
    };
    let name = format!("{format:?}").to_uppercase();
    let fail = |e: image::ImageError| -> Error {
        match e {
            image::ImageError::Unsupported(u) => Error::invalid(
                path,
                format!("unsupported image format ({u}); pipe reads {SUPPORTED_FORMATS}"),
            ),
            image::ImageError::Limits(l) => Error::invalid(
                path,
                format!(
                    "image over pipe's decoding limit of {MAX_IMAGE_BYTES} bytes or \
                     {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels ({l})"
                ),
            ),
            image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                Error::invalid(
                    path,
                    format!("truncated {name} file: the data ends early ({io})"),
                )
            }
            error => Error::Image {
                path: path.to_path_buf(),
                error,
            },
        }
    };
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    // Only the header is read here: the size is checked before any pixel buffer is allocated.
    let mut decoder = reader.into_decoder().map_err(fail)?;
    let (w, h) = decoder.dimensions();
    let rgb_bytes = u64::from(w) * u64::from(h) * 3;
    if w > MAX_IMAGE_SIDE
        || h > MAX_IMAGE_SIDE
        || decoder.total_bytes() > MAX_IMAGE_BYTES
        || rgb_bytes > MAX_IMAGE_BYTES
    {
        return Err(Error::invalid(
            path,
            format!(
                "image is {w}x{h} pixels ({} bytes decoded), over pipe's limit of \
                 {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels and {MAX_IMAGE_BYTES} bytes; refused \
                 without decoding (a decompression bomb, or resize it first)",
                decoder.total_bytes()
            ),
        ));
    }
    if format == ImageFormat::Jpeg && jpeg_is_truncated(bytes) {
        // The JPEG decoder fills missing data with grey instead of failing.
        return Err(Error::invalid(
            path,
            "truncated JPEG: the image data ends without the end-of-image marker \
             (an incomplete download or copy?)",
        ));
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(fail)?;
    img.apply_orientation(orientation);
    let rgb = img.to_rgb8();
    let s =
        u32::try_from(size).map_err(|_| Error::Usage(format!("image size {size} is too large")))?;
    let rgb = if rgb.width() == s && rgb.height() == s {
        rgb
    } else {
        image::imageops::resize(&rgb, s, s, RESIZE_FILTER)
    };
    Ok(rgb.into_raw())
}

/// Whether a JPEG stream lacks its end-of-image marker (`FF D9`) after the start of its last scan
/// (`FF DA`). Inside entropy-coded data a `FF` byte is always followed by `00` or a restart marker,
/// so the pair cannot occur there; an EXIF thumbnail's markers come before the main image's scan.
fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    let last = |m: u8| bytes.windows(2).rposition(|w| w == [0xFF, m]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi < sos,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Resizes one square HWC RGB image of `from`x`from` pixels to `to`x`to` with [`RESIZE_FILTER`]
/// (a copy when the sizes are equal), as [`load_rgb`] does for image files.
///
/// # Panics
/// If `pixels.len() != from*from*3` (a programming error).
pub fn resize_rgb(pixels: &[u8], from: usize, to: usize) -> Vec<u8> {
    assert_eq!(
        pixels.len(),
        from * from * 3,
        "not a {from}x{from} RGB image"
    );
    if from == to {
        return pixels.to_vec();
    }
    // The length was checked above, so the buffer always fits.
    image::RgbImage::from_raw(from as u32, from as u32, pixels.to_vec())
        .map(|img| image::imageops::resize(&img, to as u32, to as u32, RESIZE_FILTER).into_raw())
        .unwrap_or_default()
}

/// Decodes `paths` in parallel (all cores) into one NHWC RGB `u8` buffer of `paths.len()*size*size*3` bytes.
///
/// # Errors
/// The first file (in `paths` order) that fails, as in [`load_rgb`].
pub fn load_batch(paths: &[&Path], size: usize) -> Result<Vec<u8>> {
    let per = size * size * 3;
    let mut out = vec![0u8; paths.len() * per];
    out.par_chunks_mut(per)
        .zip(paths.par_iter())
        .try_for_each(|(dst, p)| {
            dst.copy_from_slice(&load_rgb(p, size)?);
            Ok::<(), Error>(())
        })?;
    Ok(out)
}

/// Expands files and folders (recursively, sorted) into the list of image files they hold. Files named
/// explicitly are kept whatever their extension; inside folders only [`IMAGE_EXTENSIONS`] count.
///
/// # Errors
/// As [`scan_image_files`].
pub fn collect_image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(scan_image_files(inputs)?.0)
}

/// As [`collect_image_files`], and also returns what was skipped (inside folders: files that are not
/// images by extension, symlink loops; anywhere: image files reached a second time), for a warning.
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
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
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
    fn load_rgb_converts_gray_and_resizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        image::GrayImage::from_pixel(64, 48, image::Luma([77]))
            .save(&p)
            .unwrap();
        let px = load_rgb(&p, 32).unwrap();
        assert_eq!(px.len(), 32 * 32 * 3);
        assert!(px.iter().all(|&v| v == 77));
        let q = dir.path().join("c.png");
        write_png(&q, 32, 32, [1, 2, 3]);
        assert_eq!(&load_rgb(&q, 32).unwrap()[..6], &[1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn undecodable_file_error_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fake.jpg");
        std::fs::write(&p, "hello, not a jpeg").unwrap();
        let err = load_rgb(&p, 32).unwrap_err().to_string();
        assert!(
            err.contains("fake.jpg") && err.contains("not an image"),
            "{err}"
        );
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
