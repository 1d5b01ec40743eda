//! Decoding image files to `size`x`size` HWC RGB `u8`, one file or many in parallel, and to whole
//! images ([`load_full_image`], the photos that photo augmentation crops from).
//!
//! Every decode takes the same three steps: the header, read and checked before any pixel buffer
//! exists (format sniffing, the size limits, a JPEG's end-of-image marker, the EXIF orientation);
//! the pixels, the only step that runs a decoder over the image data; then the geometry (EXIF
//! orientation, the resize policy, see [`super::geometry`]).
//!
//! A file that cannot be decoded is a value, not a batch error: [`decode_files`] and
//! [`load_images`] with [`OnError::Skip`] return a [`SkippedFile`] (path, [`SkipReason`], message)
//! for it and go on; [`OnError::Stop`] (`--strict`) returns the first failure in input order as an
//! [`Error`]. The messages are those of [`decode_image`]'s errors.
//!
//! JPEGs are decoded by libjpeg-turbo, with the defaults PIL uses, so that pipe's pixels are those of
//! the clients that decode images themselves (PIL, OpenCV, torchvision, TensorFlow); big ones at
//! 1/2, 1/4 or 1/8 of their size (DCT scaling, as PIL's `draft`) when both sides stay at least the
//! output size, then resized like any image ([`ImageSpec::dct_scaling`]). Format sniffing, the size
//! limits, truncation checks and EXIF orientation are the same on both paths; JPEGs libjpeg-turbo
//! cannot give as RGB (CMYK, YCCK, 12-bit samples) and other formats are decoded by the image crate.

use super::geometry::{orientation_swaps_sides, resize_box, shorter_side_to, stored_box};
use super::resize::{ImageSpec, ResizePolicy, RESIZE_FILTER};
use crate::error::{Error, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Why an image file was skipped. Serialised in snake case (`not_an_image`) in `skipped.json` and in
/// the error field of `pipe infer`'s JSON/CSV records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The file could not be read (missing, permissions, a folder, I/O error).
    Unreadable,
    /// The file has 0 bytes.
    Empty,
    /// The data ends early (an incomplete download or copy).
    Truncated,
    /// The contents match none of the image formats pipe reads.
    NotAnImage,
    /// An image format, or a feature of one, that the decoder does not support.
    UnsupportedFormat,
    /// Over [`MAX_IMAGE_SIDE`] or [`MAX_IMAGE_BYTES`] (a decompression bomb, or simply too big).
    Oversized,
    /// The decoder found the data invalid.
    Corrupt,
}

impl SkipReason {
    /// The snake-case name, as serialised: `unreadable`, `empty`, `truncated`, `not_an_image`,
    /// `unsupported_format`, `oversized`, `corrupt`.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Unreadable => "unreadable",
            SkipReason::Empty => "empty",
            SkipReason::Truncated => "truncated",
            SkipReason::NotAnImage => "not_an_image",
            SkipReason::UnsupportedFormat => "unsupported_format",
            SkipReason::Oversized => "oversized",
            SkipReason::Corrupt => "corrupt",
        }
    }
}

/// An image file that was not decoded, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// The file, as it was given (serialised as lossy UTF-8).
    #[serde(serialize_with = "crate::util::serialize_lossy_path")]
    pub path: PathBuf,
    /// The kind of failure.
    pub reason: SkipReason,
    /// What is wrong, without the path: the text of the error [`decode_image`] returns for it, e.g.
    /// `truncated JPEG: the image data ends without the end-of-image marker (…)`.
    pub message: String,
}

impl std::fmt::Display for SkippedFile {
    /// `<path>: <message>`, the same line as the error it stands for.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl SkippedFile {
    /// A closing-summary line for a list of skipped files, e.g. `skipped 3 image files that could not
    /// be decoded (2 truncated, 1 not_an_image)`; `None` for an empty list.
    pub fn summary(skipped: &[SkippedFile]) -> Option<String> {
        let mut counts = SkipCounts::default();
        for s in skipped {
            counts.add(s.reason);
        }
        counts.summary()
    }

    /// Writes `skipped` as a pretty JSON array to `path`, atomically (a run's `skipped.json`).
    ///
    /// # Errors
    /// As [`crate::util::write_json_atomic`].
    pub fn write_list(path: &Path, skipped: &[SkippedFile]) -> Result<()> {
        crate::util::write_json_atomic(path, &skipped)
    }

    /// Reads a list written by [`SkippedFile::write_list`].
    ///
    /// # Errors
    /// As [`crate::util::read_json`].
    pub fn read_list(path: &Path) -> Result<Vec<SkippedFile>> {
        crate::util::read_json(path)
    }
}

/// How many files were skipped for each [`SkipReason`], in the order the reasons first occurred: what
/// a long run keeps for its closing summary instead of every [`SkippedFile`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SkipCounts(Vec<(SkipReason, usize)>);

impl SkipCounts {
    /// Counts one skipped file.
    pub fn add(&mut self, reason: SkipReason) {
        match self.0.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.0.push((reason, 1)),
        }
    }

    /// Files counted.
    pub fn total(&self) -> usize {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// The closing-summary line, e.g. `skipped 3 image files that could not be decoded (2 truncated,
    /// 1 not_an_image)`; `None` when nothing was counted.
    pub fn summary(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(r, n)| format!("{n} {}", r.as_str()))
            .collect();
        Some(format!(
            "skipped {} that could not be decoded ({})",
            crate::util::plural(self.total(), "image file"),
            parts.join(", ")
        ))
    }
}

/// A failed decode: the reason and the error [`decode_image`] returns for it.
#[derive(Debug)]
struct Failure {
    reason: SkipReason,
    error: Error,
}

impl Failure {
    fn invalid(reason: SkipReason, path: &Path, message: impl Into<String>) -> Self {
        Failure {
            reason,
            error: Error::invalid(path, message),
        }
    }

    fn into_skipped(self, path: &Path) -> SkippedFile {
        let message = match &self.error {
            Error::InvalidFile { message, .. } => message.clone(),
            Error::Io { error, .. } => error.to_string(),
            Error::Image { error, .. } => format!("cannot decode image: {error}"),
            other => other.to_string(),
        };
        SkippedFile {
            path: path.to_path_buf(),
            reason: self.reason,
            message,
        }
    }
}

/// The format of `bytes`, from their signature (TGA, which has none, from the extension of `path`).
fn sniff_format(path: &Path, bytes: &[u8]) -> std::result::Result<ImageFormat, Failure> {
    if bytes.is_empty() {
        return Err(Failure::invalid(
            SkipReason::Empty,
            path,
            "empty file (0 bytes), not an image",
        ));
    }
    match image::guess_format(bytes) {
        Ok(f) => Ok(f),
        // TGA has no signature: trust the extension for it only.
        Err(_) if ImageFormat::from_path(path).ok() == Some(ImageFormat::Tga) => Ok(ImageFormat::Tga),
        Err(_) => Err(Failure::invalid(
            SkipReason::NotAnImage,
            path,
            format!(
                "not an image: its contents match none of the formats pipe reads ({SUPPORTED_FORMATS})"
            ),
        )),
    }
}

/// Classifies an image-crate error for `path` (a `format` file).
fn image_failure(path: &Path, format: ImageFormat, e: image::ImageError) -> Failure {
    match e {
        image::ImageError::Unsupported(u) => Failure::invalid(
            SkipReason::UnsupportedFormat,
            path,
            format!("unsupported image format ({u}); pipe reads {SUPPORTED_FORMATS}"),
        ),
        image::ImageError::Limits(l) => Failure::invalid(
            SkipReason::Oversized,
            path,
            format!(
                "image over pipe's decoding limit of {MAX_IMAGE_BYTES} bytes or \
                 {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels ({l})"
            ),
        ),
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            let name = format!("{format:?}").to_uppercase();
            Failure::invalid(
                SkipReason::Truncated,
                path,
                format!("truncated {name} file: the data ends early ({io})"),
            )
        }
        error => Failure {
            reason: SkipReason::Corrupt,
            error: Error::Image {
                path: path.to_path_buf(),
                error,
            },
        },
    }
}

/// Refuses an image whose header announces more than [`MAX_IMAGE_SIDE`] / [`MAX_IMAGE_BYTES`].
fn check_size(path: &Path, w: u32, h: u32, total: u64) -> std::result::Result<(), Failure> {
    let rgb_bytes = u64::from(w) * u64::from(h) * 3;
    if w > MAX_IMAGE_SIDE
        || h > MAX_IMAGE_SIDE
        || total > MAX_IMAGE_BYTES
        || rgb_bytes > MAX_IMAGE_BYTES
    {
        return Err(Failure::invalid(
            SkipReason::Oversized,
            path,
            format!(
                "image is {w}x{h} pixels ({total} bytes decoded), over pipe's limit of \
                 {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels and {MAX_IMAGE_BYTES} bytes; refused \
                 without decoding (a decompression bomb, or resize it first)"
            ),
        ));
    }
    Ok(())
}

/// An image file's header, read and checked: step 1 of every decode.
struct Header<D> {
    /// The format, from the contents ([`sniff_format`]).
    format: ImageFormat,
    /// The image crate's decoder, positioned after the header: no pixel has been decoded yet.
    decoder: D,
    /// Width and height as stored (before EXIF orientation), pixels.
    size: (u32, u32),
    /// The EXIF orientation (no transform when there is none).
    orientation: Orientation,
}

/// Step 1 of every decode: the format from the contents, the image crate's reader for it with
/// pipe's allocation limit ([`MAX_IMAGE_BYTES`]), the header only, then the checks that need no
/// pixel buffer: the announced size ([`check_size`]), a JPEG's end-of-image marker
/// ([`jpeg_is_truncated`]), and the EXIF orientation.
fn read_header<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> std::result::Result<Header<impl ImageDecoder + 'a>, Failure> {
    let format = sniff_format(path, bytes)?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    // Only the header is read here: the size is checked before any pixel buffer is allocated.
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| image_failure(path, format, e))?;
    let (w, h) = decoder.dimensions();
    check_size(path, w, h, decoder.total_bytes())?;
    if format == ImageFormat::Jpeg && jpeg_is_truncated(bytes) {
        // The JPEG decoder fills missing data with grey instead of failing.
        return Err(Failure::invalid(
            SkipReason::Truncated,
            path,
            "truncated JPEG: the image data ends without the end-of-image marker \
             (an incomplete download or copy?)",
        ));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Ok(Header {
        format,
        decoder,
        size: (w, h),
        orientation,
    })
}

/// Pixels as the decoder gives them: as stored, before EXIF orientation.
struct Stored {
    /// The pixels, in the decoder's own type (8- or 16-bit, gray, RGB, with alpha, ...).
    image: DynamicImage,
    /// The JPEG DCT reduction they were decoded at: 1 for the full size, else 2, 4 or 8 (8-bit RGB
    /// of `ceil(w / r)` x `ceil(h / r)`).
    reduction: u32,
}

/// Step 2 of every decode, and the only one that depends on the decoders: the pixels of the image
/// `header` describes. A JPEG is decoded by libjpeg-turbo ([`decode_jpeg_libjpeg`]: the decoder of
/// PIL, OpenCV, torchvision and TensorFlow, so that pipe's pixels are theirs), at the DCT reduction
/// `reduction` (1 for the full size, else 2, 4 or 8); a JPEG libjpeg-turbo cannot give as RGB
/// (CMYK or YCCK, 12-bit samples, a decoder error) and any other format are decoded in full by the
/// image crate, whose errors are the ones reported.
fn decode_pixels<D: ImageDecoder>(
    path: &Path,
    bytes: &[u8],
    header: Header<D>,
    reduction: u32,
) -> std::result::Result<Stored, Failure> {
    if header.format == ImageFormat::Jpeg {
        if let Some(rgb) = decode_jpeg_libjpeg(bytes, header.size, reduction) {
            return Ok(Stored {
                image: DynamicImage::ImageRgb8(rgb),
                reduction,
            });
        }
    }
    let format = header.format;
    let image =
        DynamicImage::from_decoder(header.decoder).map_err(|e| image_failure(path, format, e))?;
    Ok(Stored {
        image,
        reduction: 1,
    })
}

/// A JPEG of `w`x`h` (as stored) decoded by libjpeg-turbo (the `mozjpeg` crate builds its sources,
/// the libjpeg-turbo decoder unchanged) with libjpeg's defaults, as PIL's `Image.open` + `convert`
/// uses them: the accurate integer IDCT (`JDCT_ISLOW`), fancy (triangle-filter) chroma upsampling,
/// conversion to RGB inside libjpeg (gray replicated). With `r` > 1, the DCT-domain reduction to
/// `1 / r` (libjpeg's `scale_num / scale_denom`, as PIL's `Image.draft`): `ceil(w / r)` x
/// `ceil(h / r)`. `None` when libjpeg-turbo refuses the file or cannot give it as RGB.
fn decode_jpeg_libjpeg(bytes: &[u8], (w, h): (u32, u32), r: u32) -> Option<RgbImage> {
    let numerator = u8::try_from(8 / r)
        .ok()
        .filter(|n| [1, 2, 4, 8].contains(n))?;
    // libjpeg reports errors by unwinding out of its error handler (mozjpeg's error manager).
    let decoded = std::panic::catch_unwind(|| -> std::io::Result<(usize, usize, Vec<u8>)> {
        let mut d = mozjpeg::Decompress::new_mem(bytes)?;
        d.dct_method(mozjpeg::DctMethod::IntegerSlow);
        d.do_fancy_upsampling(true);
        d.scale(numerator);
        let mut started = d.rgb()?;
        let (ow, oh) = (started.width(), started.height());
        let pixels = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok((ow, oh, pixels))
    });
    let (ow, oh, pixels) = decoded.ok()?.ok()?;
    let (ow, oh) = (u32::try_from(ow).ok()?, u32::try_from(oh).ok()?);
    if (ow, oh) != (w.div_ceil(r), h.div_ceil(r)) {
        return None;
    }
    RgbImage::from_raw(ow, oh, pixels)
}

/// `image` with the EXIF orientation `o` applied, as 8-bit RGB (grayscale replicated, alpha dropped,
/// 16-bit scaled).
fn oriented_rgb(mut image: DynamicImage, o: Orientation) -> RgbImage {
    image.apply_orientation(o);
    image.into_rgb8()
}

/// What a decode makes of an image file.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// The `s`x`s` square of the spec (`s` its checked [`ImageSpec::side`]).
    Fitted(&'a ImageSpec, u32),
    /// The whole image; with a side, resized to that shorter side when its own is longer.
    Whole(Option<u32>),
}

/// The largest JPEG DCT reduction (2, 4 or 8) that leaves both sides of a `w`x`h` image at least
/// `s`, or 1 when none does.
pub fn jpeg_reduction(w: u32, h: u32, s: u32) -> u32 {
    [8, 4, 2]
        .into_iter()
        .find(|&r| w.div_ceil(r) >= s && h.div_ceil(r) >= s)
        .unwrap_or(1)
}

/// Decodes `bytes` (the contents of `path`) to 8-bit RGB, EXIF orientation applied, as `target`
/// says: [`read_header`], [`decode_pixels`], then the geometry. A fitted spec with DCT scaling asks
/// a JPEG for its [`jpeg_reduction`]; a reduced image is resized by [`fit_reduced`], and when that
/// fails the file is decoded again in full.
fn decode_classified(
    path: &Path,
    bytes: &[u8],
    target: Target<'_>,
) -> std::result::Result<RgbImage, Failure> {
    let header = read_header(path, bytes)?;
    let (size, orientation) = (header.size, header.orientation);
    let reduction = match target {
        Target::Fitted(spec, s) if spec.dct_scaling => jpeg_reduction(size.0, size.1, s),
        _ => 1,
    };
    let stored = decode_pixels(path, bytes, header, reduction)?;
    match target {
        Target::Fitted(spec, s) if stored.reduction > 1 => {
            match fit_reduced(&stored, size, orientation, spec.resize, s) {
                Some(img) => Ok(img),
                None => decode_classified(path, bytes, Target::Fitted(&spec.full_decode(), s)),
            }
        }
        Target::Fitted(spec, s) => Ok(spec.fit_side(oriented_rgb(stored.image, orientation), s)),
        Target::Whole(None) => Ok(oriented_rgb(stored.image, orientation)),
        Target::Whole(Some(side)) => Ok(shrink_to_shorter_side(
            oriented_rgb(stored.image, orientation),
            side,
        )),
    }
}

/// Resizes the part of a reduced decode (`stored`, of an image `w`x`h` as stored) that `policy`
/// keeps to `s`x`s`, then applies `orientation`. The policy's box is computed on the full-size
/// oriented image ([`ResizePolicy::source_box`]), mapped onto the stored image ([`stored_box`]) and onto the
/// reduced one with fractional coordinates, so that a partial last block row or column (a side not
/// divisible by the reduction) does not stretch the result. `None` when the box resize fails (the
/// box off the reduced image by rounding).
fn fit_reduced(
    stored: &Stored,
    (w, h): (u32, u32),
    orientation: Orientation,
    policy: ResizePolicy,
    s: u32,
) -> Option<RgbImage> {
    let reduced = stored.image.as_rgb8()?;
    let (ow, oh) = if orientation_swaps_sides(orientation) {
        (h, w)
    } else {
        (w, h)
    };
    let [left, top, bw, bh] = stored_box(orientation, policy.source_box(ow, oh, s), w, h);
    let r = f64::from(stored.reduction);
    let (sw, sh) = reduced.dimensions();
    let out = resize_box(
        sw,
        sh,
        reduced.as_raw(),
        [left / r, top / r, bw / r, bh / r],
        s,
    )?;
    Some(oriented_rgb(DynamicImage::ImageRgb8(out), orientation))
}

/// `img` resized to a shorter side of `side` ([`shorter_side_to`], aspect ratio kept, the image
/// crate's resize with [`RESIZE_FILTER`]) when its shorter side is longer; else `img` unchanged.
fn shrink_to_shorter_side(img: RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w.min(h) <= side {
        return img;
    }
    let (rw, rh) = shorter_side_to(w, h, side);
    image::imageops::resize(&img, rw, rh, RESIZE_FILTER)
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

/// Bytes [`sniff_file`] reads: more than the longest signature `image::guess_format` checks.
const SNIFF_BYTES: u64 = 64;

/// What the first bytes of `path` say: `Some` when the file cannot be an image (unreadable, empty, or
/// no signature of a format pipe reads; as [`load_images`] would report it), `None` when it may be
/// one (it can still fail to decode, e.g. truncated). Reads at most 64 bytes: cheap enough to run
/// over a whole folder before deciding where its files go.
pub fn sniff_file(path: &Path) -> Option<SkippedFile> {
    use std::io::Read;
    let mut head = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(SNIFF_BYTES).read_to_end(&mut head));
    let failure = match read {
        Err(e) => Failure {
            reason: SkipReason::Unreadable,
            error: Error::io(path, e),
        },
        Ok(_) => sniff_format(path, &head).err()?,
    };
    Some(failure.into_skipped(path))
}

/// Reads and decodes one file.
fn load_classified(path: &Path, target: Target<'_>) -> std::result::Result<RgbImage, Failure> {
    let bytes = std::fs::read(path).map_err(|e| Failure {
        reason: SkipReason::Unreadable,
        error: Error::io(path, e),
    })?;
    decode_classified(path, &bytes, target)
}

/// Decodes the bytes of one image file (any format the image crate reads, detected from content;
/// `path` names it in errors and its extension identifies TGA, which has no signature): 8-bit RGB
/// (grayscale replicated, alpha dropped, 16-bit scaled, CMYK converted), EXIF orientation applied,
/// then `spec`'s resize policy. Returns `spec.size * spec.size * 3` bytes, HWC RGB.
///
/// # Errors
/// [`Error::Usage`] for a spec of size 0; [`Error::InvalidFile`] or [`Error::Image`] naming `path`
/// when it is empty, not an image, in an unsupported format, truncated, corrupt, or over
/// [`MAX_IMAGE_SIDE`] / [`MAX_IMAGE_BYTES`] (the kinds of [`SkipReason`]).
pub fn decode_image(path: &Path, bytes: &[u8], spec: &ImageSpec) -> Result<Vec<u8>> {
    let s = spec.side()?;
    decode_classified(path, bytes, Target::Fitted(spec, s))
        .map(RgbImage::into_raw)
        .map_err(|f| f.error)
}

/// Reads and decodes one image file, as [`decode_image`].
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; otherwise as [`decode_image`].
pub fn load_image(path: &Path, spec: &ImageSpec) -> Result<Vec<u8>> {
    let s = spec.side()?;
    load_classified(path, Target::Fitted(spec, s))
        .map(RgbImage::into_raw)
        .map_err(|f| f.error)
}

/// Reads and decodes one image file whole, with the same reader, limits, checks and errors as
/// [`load_image`]: 8-bit RGB at its own size (HWC, `width * height * 3` bytes), EXIF orientation
/// applied, always the full decode (no DCT scaling). With `shorter_side`, an image whose shorter side
/// is longer is resized to that shorter side (aspect ratio kept: [`shorter_side_to`], the image
/// crate's resize with [`RESIZE_FILTER`]); a smaller one is returned as decoded. The photos that
/// photo augmentation crops from.
///
/// # Errors
/// [`Error::Usage`] for a shorter side of 0; otherwise as [`load_image`].
pub fn load_full_image(path: &Path, shorter_side: Option<u32>) -> Result<RgbImage> {
    if shorter_side == Some(0) {
        return Err(Error::Usage("shorter side 0 is not usable".into()));
    }
    load_classified(path, Target::Whole(shorter_side)).map_err(|f| f.error)
}

/// The pixels of an image file (`bytes`, the contents of `path`) as its decoder gives them, before
/// EXIF orientation and resizing: 8-bit RGB, HWC. A JPEG is decoded by libjpeg-turbo at the DCT
/// reduction `reduction`: 1 for the full size; 2, 4 or 8 for `ceil(w / r)` x `ceil(h / r)`, PIL's
/// `Image.draft`. What the tests compare with PIL's pixels.
///
/// # Errors
/// As [`decode_image`]; [`Error::Usage`] for a reduction other than 1, 2, 4 or 8, or a reduction
/// above 1 that the file cannot be decoded at (not a JPEG, or one libjpeg-turbo cannot give as RGB).
pub fn decode_stored(path: &Path, bytes: &[u8], reduction: u32) -> Result<RgbImage> {
    if ![1, 2, 4, 8].contains(&reduction) {
        return Err(Error::Usage(format!(
            "DCT reduction {reduction}: 1, 2, 4 or 8"
        )));
    }
    let header = read_header(path, bytes).map_err(|f| f.error)?;
    let stored = decode_pixels(path, bytes, header, reduction).map_err(|f| f.error)?;
    if stored.reduction != reduction {
        return Err(Error::Usage(format!(
            "{}: cannot be decoded at 1/{reduction} (DCT scaling takes JPEGs of RGB or gray)",
            path.display()
        )));
    }
    Ok(stored.image.into_rgb8())
}

/// Per file of a batch: its pixels (`spec.size * spec.size * 3` bytes, HWC RGB), or why it was skipped.
pub type FileOutcome = std::result::Result<Vec<u8>, SkippedFile>;

/// Decodes `paths` in parallel (all cores); one outcome per path, in order. A bad file never stops the
/// others. For streaming callers (`pipe infer` writes a record per file, with an error field for a
/// skipped one).
///
/// # Errors
/// [`Error::Usage`] for a spec of size 0 (no file is read).
pub fn decode_files(paths: &[&Path], spec: &ImageSpec) -> Result<Vec<FileOutcome>> {
    let s = spec.side()?;
    Ok(paths
        .par_iter()
        .map(|p| {
            load_classified(p, Target::Fitted(spec, s))
                .map(RgbImage::into_raw)
                .map_err(|f| f.into_skipped(p))
        })
        .collect())
}

/// What to do when a file of a batch cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Leave it out, report it in [`DecodedImages::skipped`] and go on (the default).
    #[default]
    Skip,
    /// Stop and return its error (`--strict`): the first failing file in input order.
    Stop,
}

impl OnError {
    /// [`OnError::Stop`] when `strict` (the `--strict` option), else [`OnError::Skip`].
    pub fn strict(strict: bool) -> Self {
        if strict {
            OnError::Stop
        } else {
            OnError::Skip
        }
    }
}

/// The images of a batch that decoded, and the files that did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedImages {
    /// NHWC RGB `u8` of the kept images, in input order: `kept.len() * size * size * 3` bytes.
    pub pixels: Vec<u8>,
    /// Input index of each kept image.
    pub kept: Vec<usize>,
    /// The files that were not decoded, in input order, each path once.
    pub skipped: Vec<SkippedFile>,
    /// Image side, pixels.
    pub size: usize,
}

/// Decodes `paths` in parallel (all cores) into one NHWC RGB `u8` buffer. With [`OnError::Skip`]
/// the files that fail are left out and listed; with [`OnError::Stop`] the first failure (in input
/// order) is returned and files after it may not be decoded.
///
/// # Errors
/// [`Error::Usage`] for a spec of size 0; with [`OnError::Stop`], the first failing file's error as
/// in [`load_image`].
pub fn load_images(paths: &[&Path], spec: &ImageSpec, on_error: OnError) -> Result<DecodedImages> {
    let s = spec.side()?;
    let per = spec.image_bytes();
    let stop = on_error == OnError::Stop;
    // Lowest failing index seen so far: with Stop, later files are not started.
    let first_failure = AtomicUsize::new(usize::MAX);
    let mut pixels = vec![0u8; paths.len() * per];
    let outcomes: Vec<Option<Failure>> = pixels
        .par_chunks_mut(per.max(1))
        .zip(paths.par_iter())
        .enumerate()
        .map(|(i, (dst, p))| {
            if stop && i > first_failure.load(Ordering::Relaxed) {
                return None;
            }
            match load_classified(p, Target::Fitted(spec, s)) {
                Ok(img) => {
                    dst.copy_from_slice(img.as_raw());
                    None
                }
                Err(f) => {
                    first_failure.fetch_min(i, Ordering::Relaxed);
                    Some(f)
                }
            }
        })
        .collect();
    let mut kept = Vec::with_capacity(paths.len());
    let mut skipped: Vec<SkippedFile> = Vec::new();
    let mut named = std::collections::HashSet::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Some(f) if stop => return Err(f.error),
            Some(f) => {
                if named.insert(paths[i]) {
                    skipped.push(f.into_skipped(paths[i]));
                }
            }
            None => {
                pixels.copy_within(i * per..(i + 1) * per, kept.len() * per);
                kept.push(i);
            }
        }
    }
    pixels.truncate(kept.len() * per);
    Ok(DecodedImages {
        pixels,
        kept,
        skipped,
        size: spec.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tests::write_png;

    /// `img` as a quality-95 JPEG.
    fn to_jpeg(img: impl Into<image::DynamicImage>) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .encode_image(&img.into())
            .unwrap();
        out
    }

    /// A JPEG of `w`x`h` with smooth gradients.
    fn jpeg_bytes(w: u32, h: u32) -> Vec<u8> {
        to_jpeg(RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x + y) * 127 / (w + h)) as u8,
            ])
        }))
    }

    /// `bytes` decoded with `spec` (DCT scaling on) and with its full decode.
    fn both_paths(path: &Path, bytes: &[u8], spec: ImageSpec) -> (Vec<u8>, Vec<u8>) {
        (
            decode_image(path, bytes, &spec).unwrap(),
            decode_image(path, bytes, &spec.full_decode()).unwrap(),
        )
    }

    /// `jpeg` with its frame header announcing 60000x60000 pixels: refused before decoding.
    fn jpeg_claiming_60000(jpeg: &[u8]) -> Vec<u8> {
        let mut big = jpeg.to_vec();
        let sof = big.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        big[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        big
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        let sum: u64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| u64::from(x.abs_diff(y)))
            .sum();
        sum as f64 / a.len() as f64
    }

    /// A folder of one good image and one of each kind of bad file.
    fn mixed_folder(dir: &Path) -> Vec<(PathBuf, Option<SkipReason>)> {
        let good = dir.join("good.png");
        write_png(&good, 40, 20, [10, 20, 30]);
        let empty = dir.join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        let text = dir.join("notes.jpg");
        std::fs::write(&text, "hello, not a jpeg").unwrap();
        let jpeg = jpeg_bytes(64, 48);
        let truncated = dir.join("cut.jpg");
        std::fs::write(&truncated, &jpeg[..jpeg.len() / 2]).unwrap();
        let bomb = dir.join("bomb.jpg");
        std::fs::write(&bomb, jpeg_claiming_60000(&jpeg)).unwrap();
        let missing = dir.join("missing.jpg");
        vec![
            (good, None),
            (empty, Some(SkipReason::Empty)),
            (text, Some(SkipReason::NotAnImage)),
            (truncated, Some(SkipReason::Truncated)),
            (bomb, Some(SkipReason::Oversized)),
            (missing, Some(SkipReason::Unreadable)),
        ]
    }

    #[test]
    fn load_image_converts_gray_and_resizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        image::GrayImage::from_pixel(64, 48, image::Luma([77]))
            .save(&p)
            .unwrap();
        let squash = ImageSpec::new(32, ResizePolicy::Squash).full_decode();
        let px = load_image(&p, &squash).unwrap();
        assert_eq!(px.len(), 32 * 32 * 3);
        assert!(px.iter().all(|&v| v == 77));
        let q = dir.path().join("c.png");
        write_png(&q, 32, 32, [1, 2, 3]);
        assert_eq!(&load_image(&q, &squash).unwrap()[..6], &[1, 2, 3, 1, 2, 3]);
    }

    /// `sniff_file` refuses what its first bytes show (the same reason and message as decoding
    /// gives) and lets the rest through, truncated files included.
    #[test]
    fn sniffing_refuses_what_the_first_bytes_show() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ImageSpec::new(8, ResizePolicy::Squash);
        let mut refused = 0;
        for (path, want) in mixed_folder(dir.path()) {
            let sniffed = sniff_file(&path);
            match want {
                Some(SkipReason::Empty | SkipReason::NotAnImage | SkipReason::Unreadable) => {
                    let decoded = load_images(&[path.as_path()], &spec, OnError::Skip).unwrap();
                    assert!(sniffed.is_some(), "{}", path.display());
                    assert_eq!(
                        sniffed.as_ref(),
                        decoded.skipped.first(),
                        "{}",
                        path.display()
                    );
                    refused += 1;
                }
                // Good, truncated, oversized: only decoding tells.
                _ => assert_eq!(sniffed, None, "{}", path.display()),
            }
        }
        assert_eq!(refused, 3);
    }

    /// Lenient: every good file kept, every bad one reported once with its reason and the error's
    /// text; strict: the first bad file's error, as `load_image` gives it.
    #[test]
    fn skip_keeps_the_good_files_and_names_each_bad_one_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = mixed_folder(dir.path());
        let mut paths: Vec<&Path> = files.iter().map(|(p, _)| p.as_path()).collect();
        paths.push(files[1].0.as_path()); // the empty file twice: named once
        paths.push(files[0].0.as_path());
        let spec = ImageSpec::new(16, ResizePolicy::Crop);
        let out = load_images(&paths, &spec, OnError::Skip).unwrap();
        assert_eq!(out.kept, vec![0, 7]);
        assert_eq!(out.pixels.len(), 2 * 16 * 16 * 3);
        assert_eq!(&out.pixels[..3], &[10, 20, 30]);
        let reasons: Vec<_> = out
            .skipped
            .iter()
            .map(|s| (s.path.clone(), s.reason))
            .collect();
        let want: Vec<_> = files[1..]
            .iter()
            .map(|(p, r)| (p.clone(), r.unwrap()))
            .collect();
        assert_eq!(reasons, want);
        for s in &out.skipped {
            let err = load_image(&s.path, &spec).unwrap_err().to_string();
            assert_eq!(err, s.to_string());
        }
        assert!(
            out.skipped[2].message.starts_with("truncated JPEG"),
            "{:?}",
            out.skipped[2]
        );
        let not_an_image = out.skipped[1].to_string();
        assert!(
            not_an_image.contains("notes.jpg: not an image"),
            "{not_an_image}"
        );
        let summary = SkippedFile::summary(&out.skipped).unwrap();
        assert_eq!(
            summary,
            "skipped 5 image files that could not be decoded (1 empty, 1 not_an_image, \
             1 truncated, 1 oversized, 1 unreadable)"
        );
        let err = load_images(&paths, &spec, OnError::Stop)
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty.jpg: empty file"), "{err}");
        let per_file = decode_files(&paths, &spec).unwrap();
        assert!(per_file[0].is_ok() && per_file[7].is_ok());
        assert_eq!(
            per_file[3].as_ref().unwrap_err().reason,
            SkipReason::Truncated
        );
    }

    #[test]
    fn skipped_files_round_trip_through_json() {
        let dir = tempfile::tempdir().unwrap();
        let files = mixed_folder(dir.path());
        let paths: Vec<&Path> = files.iter().map(|(p, _)| p.as_path()).collect();
        let out = load_images(
            &paths,
            &ImageSpec::new(8, ResizePolicy::Squash),
            OnError::Skip,
        )
        .unwrap();
        let list = dir.path().join("skipped.json");
        SkippedFile::write_list(&list, &out.skipped).unwrap();
        assert_eq!(SkippedFile::read_list(&list).unwrap(), out.skipped);
        let text = std::fs::read_to_string(&list).unwrap();
        assert!(text.contains(r#""reason": "not_an_image""#), "{text}");
        assert_eq!(SkippedFile::summary(&[]), None);
    }

    #[test]
    fn strict_batch_matches_single_files_and_zero_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.png");
        write_png(&a, 50, 30, [200, 100, 0]);
        let b = dir.path().join("b.jpg");
        std::fs::write(&b, jpeg_bytes(300, 200)).unwrap();
        let paths = [a.as_path(), b.as_path()];
        for spec in [
            ImageSpec::new(24, ResizePolicy::Squash).full_decode(),
            ImageSpec::new(24, ResizePolicy::Crop),
        ] {
            let batch = load_images(&paths, &spec, OnError::Stop).unwrap();
            let mut want = load_image(&a, &spec).unwrap();
            want.extend(load_image(&b, &spec).unwrap());
            assert_eq!((batch.pixels, batch.kept), (want, vec![0, 1]));
        }
        assert!(load_images(
            &paths,
            &ImageSpec::new(0, ResizePolicy::Crop),
            OnError::Skip
        )
        .is_err());
        assert!(
            load_images(&[], &ImageSpec::new(8, ResizePolicy::Crop), OnError::Stop)
                .unwrap()
                .pixels
                .is_empty()
        );
    }

    #[test]
    fn reduction_keeps_both_sides_large_enough() {
        assert_eq!(jpeg_reduction(500, 375, 224), 1);
        assert_eq!(jpeg_reduction(1000, 750, 224), 2);
        assert_eq!(jpeg_reduction(500, 375, 32), 8);
        assert_eq!(jpeg_reduction(2000, 300, 64), 4);
        assert_eq!(jpeg_reduction(100, 100, 224), 1);
    }

    /// The DCT-scaled path gives nearly the pixels of the full decode, for both policies, and is
    /// only taken where it applies.
    #[test]
    fn dct_scaled_decode_is_close_to_the_full_decode() {
        let path = Path::new("photo.jpg");
        let bytes = jpeg_bytes(640, 400);
        for policy in ResizePolicy::ALL {
            let (a, b) = both_paths(path, &bytes, ImageSpec::new(64, policy));
            assert_eq!(a.len(), 64 * 64 * 3);
            let d = mean_abs_diff(&a, &b);
            assert!(d < 1.5, "{policy}: mean |diff| {d}");
        }
        let reduced = |s| {
            let header = read_header(path, &bytes).unwrap();
            let r = jpeg_reduction(640, 400, s);
            let stored = decode_pixels(path, &bytes, header, r).unwrap();
            let image = &stored.image;
            (stored.reduction, image.width(), image.height())
        };
        assert_eq!(reduced(64), (4, 160, 100));
        assert_eq!(reduced(300), (1, 640, 400));
    }

    /// A crop box that rounding puts a hair past the reduced image (the shorter side 464, halved to
    /// 232, at 224: 224 * (464 / 224) > 464 in floating point) is not resized there: the image takes
    /// the full decode and gives its pixels exactly.
    #[test]
    fn a_box_off_the_reduced_image_takes_the_full_decode() {
        let path = Path::new("tall.jpg");
        let bytes = jpeg_bytes(464, 600);
        let spec = ImageSpec::new(224, ResizePolicy::Crop);
        let header = read_header(path, &bytes).unwrap();
        let none = header.orientation;
        let stored = decode_pixels(path, &bytes, header, jpeg_reduction(464, 600, 224)).unwrap();
        assert_eq!(stored.reduction, 2);
        assert!(fit_reduced(&stored, (464, 600), none, spec.resize, 224).is_none());
        let (scaled, full) = both_paths(path, &bytes, spec);
        assert_eq!(scaled, full);
    }

    /// `jpeg` with an APP1 Exif segment holding one IFD entry: Orientation (0x0112) = `value`.
    fn with_orientation(jpeg: &[u8], value: u8) -> Vec<u8> {
        let mut app1 = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0".to_vec();
        app1.extend([value, 0, 0, 0, 0, 0, 0]);
        let mut bytes = jpeg[..2].to_vec();
        bytes.extend([0xFF, 0xE1]);
        bytes.extend(u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
        bytes.extend(app1);
        bytes.extend(&jpeg[2..]);
        bytes
    }

    /// Every EXIF orientation, both policies, sides not divisible by the reduction: the scaled path
    /// gives nearly the pixels of the full decode (same box of the same oriented image), and the
    /// orientation is really applied (a "rotate 90" image differs from the untagged one).
    #[test]
    fn dct_scaled_decode_applies_every_exif_orientation() {
        // 330x210, four quadrants of distinct colours over a gradient: no symmetry.
        let img = RgbImage::from_fn(330, 210, |x, y| {
            let q = [[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]]
                [usize::from(x >= 165) + 2 * usize::from(y >= 105)];
            image::Rgb(q.map(|c: u8| c.saturating_add((x % 40) as u8)))
        });
        let plain = to_jpeg(img);
        let path = Path::new("oriented.jpg");
        for policy in ResizePolicy::ALL {
            let spec = ImageSpec::new(32, policy);
            let untagged = decode_image(path, &plain, &spec).unwrap();
            for value in 1..=8 {
                let (a, b) = both_paths(path, &with_orientation(&plain, value), spec);
                let d = mean_abs_diff(&a, &b);
                assert!(d < 1.0, "{policy} orientation {value}: mean |diff| {d}");
                if value > 1 {
                    assert!(
                        mean_abs_diff(&a, &untagged) > 20.0,
                        "{policy} orientation {value}"
                    );
                }
            }
        }
    }

    /// The whole image: EXIF orientation applied (a "rotate 90" tag turns 330x210 into 210x330), the
    /// pixels of the full decode, the shorter side reduced only when it is longer than asked; the
    /// checks and named errors of `load_image` (truncated, oversized, not an image).
    #[test]
    fn full_image_is_oriented_reduced_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let plain = jpeg_bytes(330, 210);
        let rotated = dir.path().join("rotated.jpg");
        std::fs::write(&rotated, with_orientation(&plain, 6)).unwrap();
        let whole = load_full_image(&rotated, None).unwrap();
        let stored = decode_stored(Path::new("plain.jpg"), &plain, 1).unwrap();
        let want = image::imageops::rotate90(&stored);
        assert_eq!(whole, want);
        assert_eq!(whole.dimensions(), (210, 330));
        assert_eq!(load_full_image(&rotated, Some(210)).unwrap(), whole);
        let small = load_full_image(&rotated, Some(105)).unwrap();
        assert_eq!(small.dimensions(), (105, 165));
        assert_eq!(
            small,
            image::imageops::resize(&whole, 105, 165, RESIZE_FILTER)
        );

        let photo = jpeg_bytes(640, 480);
        let bad = [
            (
                "cut.jpg",
                photo[..photo.len() - 300].to_vec(),
                "cut.jpg: truncated JPEG",
            ),
            ("bomb.jpg", jpeg_claiming_60000(&photo), "over pipe's limit"),
            ("notes.png", b"hello".to_vec(), "notes.png: not an image"),
        ];
        for (name, bytes, want) in bad {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = load_full_image(&path, Some(146)).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        let err = load_full_image(&rotated, Some(0)).unwrap_err().to_string();
        assert!(err.contains("shorter side 0"), "{err}");
    }

    /// Grayscale and CMYK JPEGs decode to the same pixels with and without DCT scaling (CMYK takes
    /// the full decode); truncated and oversized JPEGs are refused on the scaled path too.
    #[test]
    fn dct_scaling_keeps_gray_cmyk_truncation_and_limits() {
        let gray = image::GrayImage::from_fn(256, 256, |x, y| image::Luma([((x + y) / 2) as u8]));
        let path = Path::new("gray.jpg");
        let fast = ImageSpec::new(32, ResizePolicy::Squash);
        let (px, exact) = both_paths(path, &to_jpeg(gray), fast);
        assert!(px.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        assert!(mean_abs_diff(&px, &exact) < 1.5);

        let cmyk_path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cmyk-cyan-yellow-16x8.jpg");
        let cmyk = std::fs::read(&cmyk_path).unwrap();
        let (a, b) = both_paths(&cmyk_path, &cmyk, ImageSpec::new(4, ResizePolicy::Crop));
        assert_eq!(a, b);

        let photo = jpeg_bytes(640, 480);
        let cut = &photo[..photo.len() - 300];
        let err = decode_image(path, cut, &fast).unwrap_err().to_string();
        assert!(err.contains("truncated JPEG"), "{err}");
        let err = decode_image(path, &jpeg_claiming_60000(&photo), &fast)
            .unwrap_err()
            .to_string();
        assert!(err.contains("over pipe's limit"), "{err}");
    }

    /// Decode + resize of the hymenoptera photos (train + val) with and without DCT scaling, on one
    /// thread: images/s over all photos and over those a reduction applies to, and the mean
    /// |difference| per channel between the two paths.
    /// `cargo test --release --lib data::decode::tests::measure_photo_decoding -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement on data/hymenoptera; run by hand"]
    fn measure_photo_decoding() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/hymenoptera");
        let files = crate::data::collect_image_files(&[root]).unwrap();
        let bytes: Vec<(PathBuf, Vec<u8>, u32)> = files
            .iter()
            .map(|p| {
                let b = std::fs::read(p).unwrap();
                let (w, h) = image::load_from_memory(&b).unwrap().to_rgb8().dimensions();
                let jpeg = image::guess_format(&b).unwrap() == ImageFormat::Jpeg;
                (p.clone(), b, if jpeg { w.min(h) } else { 0 })
            })
            .collect();
        let rate = |spec: &ImageSpec, subset: &[&(PathBuf, Vec<u8>, u32)]| {
            let t = std::time::Instant::now();
            let px: Vec<u8> = subset
                .iter()
                .flat_map(|(p, b, _)| decode_image(p, b, spec).unwrap())
                .collect();
            (px, subset.len() as f64 / t.elapsed().as_secs_f64())
        };
        for size in [224, 112, 32] {
            let all: Vec<_> = bytes.iter().collect();
            let big: Vec<_> = bytes.iter().filter(|b| b.2 >= 2 * size as u32).collect();
            for policy in ResizePolicy::ALL {
                let fast = ImageSpec::new(size, policy);
                let exact = fast.full_decode();
                let mut line = format!("to {size} {policy}:");
                for (name, set) in [("all", &all), ("reduced", &big)] {
                    let _ = rate(&exact, set); // warm-up
                    let (a, e1) = rate(&exact, set);
                    let (b, f1) = rate(&fast, set);
                    let (_, f2) = rate(&fast, set);
                    let (_, e2) = rate(&exact, set);
                    line += &format!(
                        " {name} {}: full {:.0}/s, DCT {:.0}/s ({:.2}x), mean |diff| {:.3};",
                        set.len(),
                        (e1 + e2) / 2.0,
                        (f1 + f2) / 2.0,
                        (f1 + f2) / (e1 + e2),
                        mean_abs_diff(&a, &b)
                    );
                }
                println!("{line}");
            }
        }
    }
}
