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
use crate::data::geometry::resize_box;
use crate::data::{load_full_image, LayoutKind, RESIZE_FILTER};
use crate::error::{Error, Result};
use image::RgbImage;
use rand::RngExt;
use rayon::prelude::*;

pub use crate::data::geometry::{crop_box, PHOTO_CROP_RATIO, PHOTO_CROP_SCALE};

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
    /// As [`load_full_image`]: a training file that can no longer be decoded (missing, truncated, over
    /// the size limits, ...), named.
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
            .map(|name| load_full_image(&images.list.root.join(name), Some(side)))
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

/// A random resized crop of `photo` ([`crop_box`]) resized to `size`x`size` with a bilinear filter
/// (antialiased when shrinking, as torchvision's on PIL images): HWC RGB `u8`, `size * size * 3`
/// bytes.
pub fn random_resized_crop(photo: &RgbImage, size: u32, rng: &mut impl rand::Rng) -> Vec<u8> {
    let (w, h) = photo.dimensions();
    let [left, top, cw, ch] = crop_box(w, h, rng);
    let crop = [left, top, cw, ch].map(f64::from);
    match resize_box(w, h, photo.as_raw(), crop, size) {
        Some(img) => img.into_raw(),
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
