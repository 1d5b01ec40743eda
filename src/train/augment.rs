//! Data augmentation of fine-tuning (`--unfreeze N --augment`), drawn from the epoch's seeded stream
//! so that a resumed run draws what an uninterrupted one draws:
//!
//! - [`AugmentStyle::Cifar`], for small tiles: random horizontal flip and a shift of up to 4 pixels per
//!   32 with black padding ([`augment_image`]; torchvision's `RandomHorizontalFlip` +
//!   `RandomCrop(32, padding=4)`), on the training pixels at the input size;
//! - [`AugmentStyle::Photo`], for photos: a random resized crop ([`random_resized_crop`]: a part of
//!   the photo of [`PHOTO_CROP_SCALE`] of its area and an aspect ratio in [3/4, 4/3], resized to the
//!   input size; torchvision's `RandomResizedCrop`) and a random horizontal flip. The crops come from
//!   the training photos decoded once at a moderate resolution ([`PhotoSet`]: shorter side 8/7 of the
//!   input size, 256 for 224, as torchvision's `Resize(256)` before a 224 crop), so that a crop of a
//!   small part still has detail and no photo is decoded again per epoch.

use super::images::{PixelSplit, RunImages};
use crate::config::{AugmentStyle, TrainConfig};
use crate::data::resize::shorter_side_to;
use crate::data::{LayoutKind, MAX_IMAGE_BYTES, RESIZE_FILTER};
use crate::error::{Error, Result};
use image::RgbImage;
use rand::RngExt;
use rayon::prelude::*;
use std::path::Path;

/// Share of the photo's area a [`random_resized_crop`] keeps, drawn uniformly from this range
/// (torchvision's default is 0.08 to 1).
pub const PHOTO_CROP_SCALE: (f64, f64) = (0.08, 1.0);
/// Aspect ratios (width / height) of the crops, drawn log-uniformly from this range (torchvision's
/// default).
pub const PHOTO_CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// The training photos decoded once for [`AugmentStyle::Photo`]: each at a shorter side of 8/7 of
/// the input size (smaller photos as they are), in the order of the training split.
pub struct PhotoSet {
    photos: Vec<RgbImage>,
}

impl PhotoSet {
    /// Decodes the training images of `images` again for photo augmentation (in parallel). For the
    /// binary release, whose records are 32x32, the training pixels at the input size are the photos.
    ///
    /// # Errors
    /// A training file that can no longer be decoded, named.
    pub fn decode(images: &RunImages) -> Result<PhotoSet> {
        let train = &images.train;
        let side = u32::try_from(train.size * 8 / 7).unwrap_or(u32::MAX);
        if images.list.layout == LayoutKind::CifarBinary {
            let per = train.size * train.size * 3;
            let s = train.size as u32;
            let photos = train
                .pixels
                .chunks_exact(per)
                .map(|px| RgbImage::from_raw(s, s, px.to_vec()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Error::Torch("training pixels are not whole images".into()))?;
            return Ok(PhotoSet { photos });
        }
        let photos = train
            .names
            .par_iter()
            .map(|name| decode_photo(&images.list.root.join(name), side))
            .collect::<Result<Vec<_>>>()?;
        Ok(PhotoSet { photos })
    }

    /// The photos (RGB, each of its own size), in the order of the training split.
    pub fn photos(&self) -> &[RgbImage] {
        &self.photos
    }

    /// Number of photos.
    pub fn len(&self) -> usize {
        self.photos.len()
    }

    /// Whether there is no photo.
    pub fn is_empty(&self) -> bool {
        self.photos.is_empty()
    }
}

/// Decodes the image file `path` to RGB with its EXIF orientation applied and, when its shorter side
/// is above `side`, resizes it to that shorter side (aspect ratio kept, bilinear).
fn decode_photo(path: &Path, side: u32) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        if let Ok(format) = image::ImageFormat::from_path(path) {
            reader.set_format(format);
        }
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    let image_error = |error| Error::Image {
        path: path.to_path_buf(),
        error,
    };
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let orientation = image::ImageDecoder::orientation(&mut decoder)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(image_error)?;
    img.apply_orientation(orientation);
    let img = img.into_rgb8();
    let (w, h) = img.dimensions();
    if w.min(h) <= side {
        return Ok(img);
    }
    let (rw, rh) = shorter_side_to(w, h, side);
    Ok(image::imageops::resize(&img, rw, rh, RESIZE_FILTER))
}

/// How a fine-tuning run's training images are augmented: the [`super::Model`] of `--unfreeze N`
/// asks it for each training batch.
pub enum Augmenter<'a> {
    /// No augmentation: the training pixels as decoded.
    None,
    /// [`AugmentStyle::Cifar`].
    Cifar,
    /// [`AugmentStyle::Photo`], from these photos.
    Photo(&'a PhotoSet),
}

impl<'a> Augmenter<'a> {
    /// The augmentation `config` asks for (`augment` and its resolved style), with the training
    /// `photos` that photo augmentation crops from.
    ///
    /// # Errors
    /// [`Error::Usage`] when photo augmentation is asked for without photos.
    pub fn of(config: &TrainConfig, photos: Option<&'a PhotoSet>) -> Result<Self> {
        if !config.augment {
            return Ok(Augmenter::None);
        }
        match (config.augment_style.resolve(config.input_size), photos) {
            (AugmentStyle::Photo, Some(p)) => Ok(Augmenter::Photo(p)),
            (AugmentStyle::Photo, None) => Err(Error::Usage(
                "photo augmentation needs the training photos (PixelSplits::photos)".into(),
            )),
            _ => Ok(Augmenter::Cifar),
        }
    }

    /// One line for the start of fine-tuning: what happens to the training images.
    pub fn describe(&self) -> &'static str {
        match self {
            Augmenter::None => "",
            Augmenter::Cifar => ", with random flips and 4-pixel crops",
            Augmenter::Photo(_) => ", with random resized crops and flips of the photos",
        }
    }

    /// The pixels (NHWC RGB `u8`, `batch.len()` images of `train.size`) of the training images
    /// `batch`, augmented with draws from `rng`.
    pub fn batch(&self, train: &PixelSplit, batch: &[usize], rng: &mut impl rand::Rng) -> Vec<u8> {
        let size = train.size;
        let per = size * size * 3;
        let mut px = Vec::with_capacity(batch.len() * per);
        for &i in batch {
            let start = px.len();
            match self {
                Augmenter::Photo(set) => {
                    px.extend(random_resized_crop(&set.photos[i], size as u32, rng));
                    if rng.random_bool(0.5) {
                        flip_horizontally(&mut px[start..], size);
                    }
                }
                _ => {
                    px.extend_from_slice(&train.pixels[i * per..(i + 1) * per]);
                    if matches!(self, Augmenter::Cifar) {
                        augment_image(&mut px[start..], size, 4 * size / 32, rng);
                    }
                }
            }
        }
        px
    }
}

/// Random horizontal flip (probability 0.5) and pad-and-crop of one HWC RGB `u8` image of side `size`
/// in place: the image is shifted by up to `pad` pixels in each direction, uncovered pixels black (zero
/// padding before normalisation, as torchvision's `RandomCrop(padding=4)`). Draws three numbers from
/// `rng` per image.
pub fn augment_image(img: &mut [u8], size: usize, pad: usize, rng: &mut impl rand::Rng) {
    let flip = rng.random_bool(0.5);
    let p = pad as i64;
    let dx = rng.random_range(-p..=p);
    let dy = rng.random_range(-p..=p);
    let src = img.to_vec();
    let s = size as i64;
    for y in 0..s {
        for x in 0..s {
            let sx = if flip { s - 1 - x } else { x } + dx;
            let sy = y + dy;
            let d = ((y * s + x) * 3) as usize;
            if (0..s).contains(&sx) && (0..s).contains(&sy) {
                let o = ((sy * s + sx) * 3) as usize;
                img[d..d + 3].copy_from_slice(&src[o..o + 3]);
            } else {
                img[d..d + 3].copy_from_slice(&[0, 0, 0]);
            }
        }
    }
}

/// Mirrors one HWC RGB `u8` image of side `size` left to right, in place.
pub fn flip_horizontally(img: &mut [u8], size: usize) {
    for row in img.chunks_exact_mut(size * 3) {
        for x in 0..size / 2 {
            let (a, b) = (x * 3, (size - 1 - x) * 3);
            for c in 0..3 {
                row.swap(a + c, b + c);
            }
        }
    }
}

/// The box `[left, top, width, height]` (pixels) of a `w`x`h` image that torchvision's
/// `RandomResizedCrop.get_params` draws with [`PHOTO_CROP_SCALE`] and [`PHOTO_CROP_RATIO`]: up to 10
/// tries of an area share and a log-uniform aspect ratio whose box fits, placed uniformly; else the
/// central box of the image clamped to the ratio range.
pub fn crop_box(w: u32, h: u32, rng: &mut impl rand::Rng) -> [u32; 4] {
    let area = f64::from(w) * f64::from(h);
    let (lo, hi) = (PHOTO_CROP_RATIO.0.ln(), PHOTO_CROP_RATIO.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(PHOTO_CROP_SCALE.0..PHOTO_CROP_SCALE.1);
        let ratio = rng.random_range(lo..hi).exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw > 0 && cw <= w && ch > 0 && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return [left, top, cw, ch];
        }
    }
    let in_ratio = f64::from(w) / f64::from(h.max(1));
    let (cw, ch) = if in_ratio < PHOTO_CROP_RATIO.0 {
        (w, (f64::from(w) / PHOTO_CROP_RATIO.0).round() as u32)
    } else if in_ratio > PHOTO_CROP_RATIO.1 {
        ((f64::from(h) * PHOTO_CROP_RATIO.1).round() as u32, h)
    } else {
        (w, h)
    };
    [
        (w - cw.min(w)) / 2,
        (h - ch.min(h)) / 2,
        cw.min(w),
        ch.min(h),
    ]
}

/// A random resized crop of `photo` ([`crop_box`]) resized to `size`x`size` with a bilinear filter
/// (antialiased when shrinking, as torchvision's on PIL images): HWC RGB `u8`, `size * size * 3`
/// bytes.
pub fn random_resized_crop(photo: &RgbImage, size: u32, rng: &mut impl rand::Rng) -> Vec<u8> {
    use fast_image_resize as fir;
    let (w, h) = photo.dimensions();
    let [left, top, cw, ch] = crop_box(w, h, rng);
    let mut dst = fir::images::Image::new(size, size, fir::PixelType::U8x3);
    let resized = fir::images::ImageRef::new(w, h, photo.as_raw(), fir::PixelType::U8x3)
        .ok()
        .and_then(|src| {
            let options = fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear))
                .crop(
                    f64::from(left),
                    f64::from(top),
                    f64::from(cw),
                    f64::from(ch),
                );
            fir::Resizer::new().resize(&src, &mut dst, &options).ok()
        });
    match resized {
        Some(()) => dst.into_vec(),
        // Cannot happen for an RgbImage's own buffer; fall back to the image crate.
        None => {
            let part = image::imageops::crop_imm(photo, left, top, cw, ch).to_image();
            image::imageops::resize(&part, size, size, RESIZE_FILTER).into_raw()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn augment_flips_and_shifts_with_black_padding() {
        // A 4x4 image whose pixel (y, x) has value 10*y + x in all channels.
        let img: Vec<u8> = (0..16)
            .flat_map(|i| [(10 * (i / 4) + i % 4) as u8; 3])
            .collect();
        let at = |v: &[u8], y: usize, x: usize| v[(y * 4 + x) * 3];
        let mut seen_flip = false;
        let mut seen_shift = false;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let mut a = img.clone();
            // Replay the draws to know what augment_image chose.
            let mut probe = rng.clone();
            let flip = probe.random_bool(0.5);
            let dx = probe.random_range(-1i64..=1);
            let dy = probe.random_range(-1i64..=1);
            augment_image(&mut a, 4, 1, &mut rng);
            for y in 0..4i64 {
                for x in 0..4i64 {
                    let sx = if flip { 3 - x } else { x } + dx;
                    let sy = y + dy;
                    let want = if (0..4).contains(&sx) && (0..4).contains(&sy) {
                        (10 * sy + sx) as u8
                    } else {
                        0
                    };
                    assert_eq!(at(&a, y as usize, x as usize), want);
                }
            }
            seen_flip |= flip;
            seen_shift |= dx != 0 || dy != 0;
        }
        assert!(seen_flip && seen_shift);
    }

    /// Crop boxes fit the image, cover the scale and ratio ranges, and repeat with the seed; an image
    /// far outside the ratio range falls back to its central box.
    #[test]
    fn crop_boxes_follow_torchvision_ranges() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (w, h) = (400u32, 300u32);
        let mut shares = Vec::new();
        for _ in 0..500 {
            let [l, t, cw, ch] = crop_box(w, h, &mut rng);
            assert!(l + cw <= w && t + ch <= h && cw > 0 && ch > 0);
            let share = f64::from(cw * ch) / f64::from(w * h);
            shares.push(share);
            let ratio = f64::from(cw) / f64::from(ch);
            assert!((0.7..1.4).contains(&ratio) || share > 0.5, "{ratio}");
        }
        let min = shares.iter().cloned().fold(1.0, f64::min);
        let max = shares.iter().cloned().fold(0.0, f64::max);
        assert!(min < 0.12 && max > 0.9, "{min} {max}");
        let again = |seed| crop_box(w, h, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(again(7), again(7));
        // A 1000x10 strip: no random box fits its ratio range in 10 tries; the centre is kept.
        let [l, t, cw, ch] = crop_box(1000, 10, &mut rng);
        assert_eq!((t, ch, cw), (0, 10, 13));
        assert_eq!(l, (1000 - 13) / 2);
    }

    /// A crop of a two-coloured photo shows its colours, is `size`x`size`, and a flip mirrors it.
    #[test]
    fn random_resized_crop_resizes_a_part_and_flip_mirrors() {
        // Left half red, right half blue.
        let photo = RgbImage::from_fn(80, 60, |x, _| {
            image::Rgb(if x < 40 { [255, 0, 0] } else { [0, 0, 255] })
        });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..20 {
            let px = random_resized_crop(&photo, 16, &mut rng);
            assert_eq!(px.len(), 16 * 16 * 3);
            assert!(px.chunks_exact(3).all(|p| p[1] == 0), "no green appears");
        }
        let mut img: Vec<u8> = (0..4 * 4).flat_map(|i| [i as u8, 0, 0]).collect();
        flip_horizontally(&mut img, 4);
        assert_eq!(&img[..12], &[3, 0, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0]);
    }
}
