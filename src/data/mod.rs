//! Image data: dataset layouts, folder scanning (junk policy), decoding and resizing, splits,
//! deterministic class-balanced subsets, the CIFAR-10 binary release, and Keras "caffe" preprocessing.
//!
//! Pixels travel as `u8` in **NHWC RGB** order (`[N, H, W, 3]`, row-major), exactly what an ONNX
//! consumer of the exported model feeds. Preprocessing to the network's BGR NCHW float input happens
//! in [`caffe_preprocess`] (training) and inside the exported ONNX graph (inference).
//!
//! The path of a run's images:
//! 1. [`DataLayout::detect`] on `--data` ([`DataLayout::describe`] for the first line of `pipe train`);
//! 2. [`SplitList::build`] with [`SplitOptions`] (shares, seed, limits): the file list of each split,
//!    written into the run as [`SPLIT_FILE`] ([`SplitList::write`]) and read back with
//!    [`SplitList::read`] by `evaluate`, `export --verify` and `--resume`;
//! 3. [`SplitList::load`] with an [`ImageSpec`] (size, [`ResizePolicy`], filter, DCT scaling) and
//!    [`OnError`] (`--strict` = [`OnError::Stop`]): a [`LoadedSplit`] (pixels, names, labels) plus
//!    the [`SkippedFile`]s (`skipped.json`, [`SkippedFile::write_list`]).
//!
//! Files outside a split list are decoded with the same [`ImageSpec`]: [`load_images`] (a batch, one
//! NHWC buffer), [`decode_files`] (one outcome per file: `pipe infer` expands its inputs with
//! [`scan_image_files`] and decodes each batch so, with the spec the model's metadata gives),
//! [`load_image`] / [`decode_image`] (one file, or its bytes). [`load_full_image`] decodes a file
//! whole (the photos that photo augmentation crops from) through the same checks. The pixels of
//! pipe's first versions are `ImageSpec::new(size, ResizePolicy::Squash).full_decode()`. The
//! geometry of every resize and crop is in [`geometry`].

pub mod cifar;
pub mod decode;
pub mod geometry;
pub mod layout;
pub mod resize;
pub mod scan;
pub mod split;

pub use decode::{
    decode_files, decode_image, decode_stored, load_full_image, load_image, load_images,
    sniff_file, DecodedImages, FileOutcome, OnError, SkipCounts, SkipReason, SkippedFile,
    MAX_IMAGE_BYTES, MAX_IMAGE_SIDE, SUPPORTED_FORMATS,
};
pub use layout::{DataLayout, LayoutKind};
pub use resize::{ImageSpec, ResizeFilter, ResizePolicy, RESIZE_FILTER};
pub use scan::{
    collect_image_files, is_image_file, is_junk_name, scan_image_files, ClassScan, Skipped,
    IMAGE_EXTENSIONS,
};
pub use split::{
    stratified_split, LoadedPart, SplitEntry, SplitIndices, SplitList, SplitOptions, SplitPart,
    DEFAULT_TEST_SHARE, DEFAULT_VAL_SHARE, SPLIT_FILE,
};

use crate::arch::IMAGENET_BGR_MEANS;
use std::path::PathBuf;

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

/// The images of one split, decoded ([`SplitList::load`]).
#[derive(Debug, Clone)]
pub struct LoadedSplit {
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// Folder the `names` are relative to ([`SplitList::root`]).
    pub root: PathBuf,
    /// Per image: the file relative to `root` with `/` separators (`train/cat/0001.jpg`) or
    /// `<batch file>#<record>` for the binary release.
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
    use std::path::Path;

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
    fn balanced_indices_groups_by_class() {
        let labels = [0, 1, 0, 1, 2, 0, 2];
        assert_eq!(balanced_indices(&labels, 3, 4), vec![0, 2, 1, 4]);
        assert_eq!(balanced_indices(&labels, 3, 0), (0..7).collect::<Vec<_>>());
        assert_eq!(balanced_indices(&labels, 3, 7), (0..7).collect::<Vec<_>>());
        assert_eq!(
            balanced_indices(&labels, 3, 100),
            (0..7).collect::<Vec<_>>()
        );
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
