//! The geometry of resizing and cropping, in pixels of the image it applies to: the shorter-side
//! size and centre offset of torchvision's `Resize(s)` + `CenterCrop(s)`, the box a
//! [`ResizePolicy`] keeps, that box on the image as stored under an EXIF orientation, the box of a
//! random resized crop, and the resize of a box to a square.

use image::metadata::Orientation;
use image::RgbImage;
use rand::RngExt;

/// Share of the photo's area a random resized crop ([`crop_box`]) keeps, drawn uniformly from this
/// range (torchvision's `RandomResizedCrop` default, 0.08 to 1).
pub const PHOTO_CROP_SCALE: (f64, f64) = (0.08, 1.0);
/// Aspect ratios (width / height) of the random resized crops ([`crop_box`]), drawn log-uniformly
/// from this range (torchvision's `RandomResizedCrop` default, 3/4 to 4/3).
pub const PHOTO_CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// Size after torchvision's `Resize(s)` of a `w`x`h` image: the shorter side becomes `s`, the longer
/// `floor(s * long / short)` (never below `s`). Pixels in, pixels out.
pub fn shorter_side_to(w: u32, h: u32, s: u32) -> (u32, u32) {
    let long_to = |long: u32, short: u32| {
        u32::try_from(u64::from(s) * u64::from(long) / u64::from(short.max(1))).unwrap_or(u32::MAX)
    };
    if w <= h {
        (s, long_to(h, w).max(s))
    } else {
        (long_to(w, h).max(s), s)
    }
}

/// Offset, pixels, of a centred crop of `crop` out of `len` as torchvision's `CenterCrop` computes
/// it: `int(round((len - crop) / 2))` with Python's round-half-to-even; 0 when `crop >= len`.
pub fn centre_offset(len: u32, crop: u32) -> u32 {
    let d = len.saturating_sub(crop);
    let half = d / 2;
    // d odd: (d / 2) ends in .5 and rounds to the even neighbour.
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Whether the EXIF orientation `o` turns a `w`x`h` image into an `h`x`w` one (the four transposing
/// orientations).
pub fn orientation_swaps_sides(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Maps a box `[left, top, width, height]` (pixels, fractional) of the image that the image crate's
/// `apply_orientation(o)` makes from a `w`x`h` stored image back onto the stored image.
pub fn stored_box(o: Orientation, [x, y, bw, bh]: [f64; 4], w: u32, h: u32) -> [f64; 4] {
    use Orientation as O;
    let (w, h) = (f64::from(w), f64::from(h));
    match o {
        O::NoTransforms => [x, y, bw, bh],
        O::FlipHorizontal => [w - x - bw, y, bw, bh],
        O::FlipVertical => [x, h - y - bh, bw, bh],
        O::Rotate180 => [w - x - bw, h - y - bh, bw, bh],
        O::Rotate90 => [y, h - x - bw, bh, bw],
        O::Rotate270 => [w - y - bh, x, bh, bw],
        O::Rotate90FlipH => [y, x, bh, bw],
        O::Rotate270FlipH => [w - y - bh, h - x - bw, bh, bw],
    }
}

/// The box `[left, top, width, height]` (pixels) of a `w`x`h` image that torchvision's
/// `RandomResizedCrop.get_params` draws with [`PHOTO_CROP_SCALE`] and [`PHOTO_CROP_RATIO`]: up to 10
/// tries of an area share and a log-uniform aspect ratio whose box fits, placed uniformly; else the
/// central box of the image clamped to the ratio range. Each try draws two numbers from `rng`, a
/// fitting one two more.
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

/// Resizes the box `[left, top, width, height]` (pixels, fractional) of a `w`x`h` HWC RGB `u8`
/// image (`rgb`, `w * h * 3` bytes) to `s`x`s`, bilinear with a support that widens when shrinking
/// (`fast_image_resize`'s convolution with its bilinear filter, the filter
/// [`RESIZE_FILTER`](super::RESIZE_FILTER) names). `None` when `rgb` is not `w * h * 3` bytes or the
/// box is not inside the image (as `fast_image_resize` checks it, in floating point).
pub fn resize_box(
    w: u32,
    h: u32,
    rgb: &[u8],
    [left, top, bw, bh]: [f64; 4],
    s: u32,
) -> Option<RgbImage> {
    use fast_image_resize as fir;
    let src = fir::images::ImageRef::new(w, h, rgb, fir::PixelType::U8x3).ok()?;
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear))
        .crop(left, top, bw, bh);
    let mut dst = fir::images::Image::new(s, s, fir::PixelType::U8x3);
    fir::Resizer::new().resize(&src, &mut dst, &options).ok()?;
    RgbImage::from_raw(s, s, dst.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn torchvision_sizes_and_offsets() {
        assert_eq!(shorter_side_to(500, 375, 224), (298, 224));
        assert_eq!(shorter_side_to(375, 500, 224), (224, 298));
        assert_eq!(shorter_side_to(32, 32, 224), (224, 224));
        assert_eq!(shorter_side_to(64, 32, 32), (64, 32));
        // int(round(x / 2)) with half to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 37 -> 37.
        assert_eq!(centre_offset(225, 224), 0);
        assert_eq!(centre_offset(227, 224), 2);
        assert_eq!(centre_offset(229, 224), 2);
        assert_eq!(centre_offset(298, 224), 37);
        assert_eq!(centre_offset(224, 224), 0);
    }

    /// For every EXIF orientation and every box of a 4x4 corner of the oriented image, the stored
    /// box holds exactly the box's pixels: cropping the stored image there and orienting the crop
    /// gives the crop of the oriented image. The transposing orientations swap the sides.
    #[test]
    fn stored_box_maps_each_orientation_back() {
        let (w, h) = (7u32, 4u32);
        // Every pixel distinct.
        let stored = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let all = [
            Orientation::NoTransforms,
            Orientation::FlipHorizontal,
            Orientation::FlipVertical,
            Orientation::Rotate180,
            Orientation::Rotate90,
            Orientation::Rotate270,
            Orientation::Rotate90FlipH,
            Orientation::Rotate270FlipH,
        ];
        for o in all {
            let mut oriented = image::DynamicImage::ImageRgb8(stored.clone());
            oriented.apply_orientation(o);
            let oriented = oriented.into_rgb8();
            let swaps = orientation_swaps_sides(o);
            let sides = if swaps { (h, w) } else { (w, h) };
            assert_eq!(oriented.dimensions(), sides, "{o:?}");
            for (x, y, bw, bh) in (0..4).flat_map(|x| {
                (0..4).flat_map(move |y| {
                    (1..=4 - x).flat_map(move |bw| (1..=4 - y).map(move |bh| (x, y, bw, bh)))
                })
            }) {
                let want = image::imageops::crop_imm(&oriented, x, y, bw, bh).to_image();
                let b = [x, y, bw, bh].map(f64::from);
                let [sx, sy, sw, sh] = stored_box(o, b, w, h).map(|v| v as u32);
                let part = image::imageops::crop_imm(&stored, sx, sy, sw, sh).to_image();
                let mut got = image::DynamicImage::ImageRgb8(part);
                got.apply_orientation(o);
                assert_eq!(got.into_rgb8(), want, "{o:?} box {:?}", (x, y, bw, bh));
            }
        }
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

    /// The box resize shows the box (a box in the blue half of a red and blue image is all blue; the
    /// filter reads a little around the box, so it starts 4 pixels into the half), gives `s`x`s`,
    /// and refuses a box outside the image or a buffer of the wrong length.
    #[test]
    fn resize_box_takes_the_box_only() {
        let img = RgbImage::from_fn(40, 20, |x, _| {
            image::Rgb(if x < 20 { [255, 0, 0] } else { [0, 0, 255] })
        });
        let out = resize_box(40, 20, img.as_raw(), [24.0, 2.0, 16.0, 16.0], 8).unwrap();
        assert_eq!(out.dimensions(), (8, 8));
        assert!(out.pixels().all(|p| p.0 == [0, 0, 255]));
        let whole = resize_box(40, 20, img.as_raw(), [0.0, 0.0, 40.0, 20.0], 8).unwrap();
        assert_eq!(whole.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(whole.get_pixel(7, 7).0, [0, 0, 255]);
        assert!(resize_box(40, 20, img.as_raw(), [30.0, 0.0, 20.0, 20.0], 8).is_none());
        assert!(resize_box(40, 20, &img.as_raw()[3..], [0.0, 0.0, 40.0, 20.0], 8).is_none());
    }
}
