//! How a decoded image of any size becomes the network's `size`x`size` input: the resize policy
//! (squash or shorter side + centre crop), the filter, and [`ImageSpec`], which bundles them with the
//! size so that training, export (ONNX metadata) and inference apply exactly the same steps.

use super::geometry::{centre_offset, shorter_side_to};
use crate::error::{Error, Result};
use image::imageops::FilterType;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Resampling filter used when an image is not already `size`x`size`: bilinear (the image crate's
/// `FilterType::Triangle`), the usual choice of Keras' `image_dataset_from_directory` and torchvision.
pub const RESIZE_FILTER: FilterType = FilterType::Triangle;

/// How an image of any aspect ratio becomes a square of `size`x`size` pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizePolicy {
    /// Stretch the whole image to `size`x`size` (aspect ratio not kept, nothing cut off): Keras'
    /// `load_img(target_size=(size, size))`. pipe's behaviour before the policy existed.
    #[default]
    Squash,
    /// Resize the shorter side to `size` (aspect ratio kept), then cut the central `size`x`size`
    /// square: torchvision's `Resize(size)` followed by `CenterCrop(size)`.
    Crop,
}

impl ResizePolicy {
    /// Every policy, for help texts.
    pub const ALL: [ResizePolicy; 2] = [ResizePolicy::Squash, ResizePolicy::Crop];

    /// The name used on the command line and in the ONNX metadata: `squash` or `crop`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResizePolicy::Squash => "squash",
            ResizePolicy::Crop => "crop",
        }
    }

    /// The part of a `w`x`h` (oriented) image that this policy resizes to `s`x`s`, as `[left, top,
    /// width, height]` in its pixels (fractional): all of it ([`ResizePolicy::Squash`]), or the box
    /// that torchvision's `Resize(s)` + `CenterCrop(s)` keeps ([`ResizePolicy::Crop`]:
    /// [`shorter_side_to`] and [`centre_offset`] scaled back to the image).
    pub fn source_box(self, w: u32, h: u32, s: u32) -> [f64; 4] {
        match self {
            ResizePolicy::Squash => [0.0, 0.0, f64::from(w), f64::from(h)],
            ResizePolicy::Crop => {
                let (rw, rh) = shorter_side_to(w, h, s);
                let (fx, fy) = (f64::from(w) / f64::from(rw), f64::from(h) / f64::from(rh));
                [
                    f64::from(centre_offset(rw, s)) * fx,
                    f64::from(centre_offset(rh, s)) * fy,
                    f64::from(s) * fx,
                    f64::from(s) * fy,
                ]
            }
        }
    }
}

/// `Display` as the type's `as_str`, and `FromStr` from any name of its `ALL` (ASCII case ignored,
/// surrounding blanks trimmed), refusing others with [`Error::Usage`] and `$unknown` (a format string
/// given the text).
macro_rules! named_values {
    ($t:ty, $unknown:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $t {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self> {
                <$t>::ALL
                    .into_iter()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
                    .ok_or_else(|| Error::Usage(format!($unknown, s)))
            }
        }
    };
}

named_values!(
    ResizePolicy,
    "unknown resize policy {:?}; expected squash or crop"
);
named_values!(
    ResizeFilter,
    "unknown resize filter {:?}; pipe resizes with bilinear"
);

/// The resampling filter of a resize. One for now; named so that the ONNX metadata records it and
/// a model that asks for another is refused instead of being fed other pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    /// Bilinear (triangle) filtering with a support that widens when shrinking (antialiased), the
    /// image crate's `FilterType::Triangle` ([`RESIZE_FILTER`]).
    #[default]
    Bilinear,
}

impl ResizeFilter {
    /// Every filter.
    pub const ALL: [ResizeFilter; 1] = [ResizeFilter::Bilinear];

    /// The name used in the ONNX metadata and `config.json`: `bilinear`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResizeFilter::Bilinear => "bilinear",
        }
    }

    /// The image crate's filter.
    pub fn filter_type(self) -> FilterType {
        match self {
            ResizeFilter::Bilinear => RESIZE_FILTER,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Everything that decides the pixels an image file becomes: output side, resize policy, filter, and
/// whether JPEGs may be decoded at reduced size first (DCT scaling, see
/// [`decode_image`](super::decode_image)). Training records it in the run, export writes it into the
/// ONNX metadata (`size`, `resize`, `filter`), inference reads it back and decodes the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Output side, pixels: images become `size`x`size` HWC RGB `u8`.
    pub size: usize,
    /// Squash or crop.
    #[serde(default)]
    pub resize: ResizePolicy,
    /// Resampling filter.
    #[serde(default)]
    pub filter: ResizeFilter,
    /// Decode a JPEG at 1/2, 1/4 or 1/8 of its size (DCT scaling) when that still leaves both sides
    /// at least `size`, then resize: 2-10x faster on big photos, pixels within a few levels of the full
    /// decode. `false` = always the full decode (pipe's pixels before the option existed).
    #[serde(default = "default_true")]
    pub dct_scaling: bool,
}

impl ImageSpec {
    /// A spec with `size`, `resize`, the bilinear filter and DCT scaling on: what new callers use.
    pub fn new(size: usize, resize: ResizePolicy) -> Self {
        ImageSpec {
            size,
            resize,
            filter: ResizeFilter::Bilinear,
            dct_scaling: true,
        }
    }

    /// The same spec with DCT scaling off: every image takes the full decode.
    pub fn full_decode(self) -> Self {
        ImageSpec {
            dct_scaling: false,
            ..self
        }
    }

    /// Output side as `u32`.
    ///
    /// # Errors
    /// [`Error::Usage`] when it is 0 or does not fit.
    pub fn side(&self) -> Result<u32> {
        u32::try_from(self.size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| Error::Usage(format!("image size {} is not usable", self.size)))
    }

    /// Bytes of one output image: `size * size * 3`.
    pub fn image_bytes(&self) -> usize {
        self.size * self.size * 3
    }

    /// Applies the policy to `img`: the result is `size`x`size`. An image already of that size is
    /// returned unchanged (both policies).
    ///
    /// # Errors
    /// As [`ImageSpec::side`].
    pub fn fit(&self, img: RgbImage) -> Result<RgbImage> {
        Ok(self.fit_side(img, self.side()?))
    }

    /// [`ImageSpec::fit`] to a side `s` already checked by [`ImageSpec::side`].
    pub(crate) fn fit_side(&self, img: RgbImage, s: u32) -> RgbImage {
        let (w, h) = img.dimensions();
        if w == s && h == s {
            return img;
        }
        let filter = self.filter.filter_type();
        match self.resize {
            ResizePolicy::Squash => image::imageops::resize(&img, s, s, filter),
            ResizePolicy::Crop => {
                let (rw, rh) = shorter_side_to(w, h, s);
                let resized = if (rw, rh) == (w, h) {
                    img
                } else {
                    image::imageops::resize(&img, rw, rh, filter)
                };
                let (left, top) = (centre_offset(rw, s), centre_offset(rh, s));
                image::imageops::crop_imm(&resized, left, top, s, s).to_image()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Squash keeps the whole image; crop keeps the central square of the shorter side, scaled back
    /// from the resized image (500x375 to 224: Resize gives 298x224, the crop starts at column 37).
    #[test]
    fn policy_boxes_of_squash_and_crop() {
        assert_eq!(
            ResizePolicy::Squash.source_box(500, 375, 224),
            [0.0, 0.0, 500.0, 375.0]
        );
        let [left, top, bw, bh] = ResizePolicy::Crop.source_box(500, 375, 224);
        let fx = 500.0 / 298.0;
        assert_eq!([left, bw], [37.0 * fx, 224.0 * fx]);
        assert!((bw - 375.84).abs() < 0.01, "{bw}");
        assert_eq!(top, 0.0);
        assert!((bh - 375.0).abs() < 1e-9, "{bh}");
        let [left, top, ..] = ResizePolicy::Crop.source_box(375, 500, 224);
        assert_eq!((left, top), (0.0, 37.0 * 500.0 / 298.0));
    }

    const RED: [u8; 3] = [255, 0, 0];
    const GREEN: [u8; 3] = [0, 255, 0];
    const BLUE: [u8; 3] = [0, 0, 255];

    /// 64x32: columns 0..16 red, 16..48 green, 48..64 blue.
    fn quarters() -> RgbImage {
        RgbImage::from_fn(64, 32, |x, _| {
            image::Rgb(match x {
                0..16 => RED,
                16..48 => GREEN,
                _ => BLUE,
            })
        })
    }

    fn column(img: &RgbImage, x: u32) -> Vec<[u8; 3]> {
        (0..img.height()).map(|y| img.get_pixel(x, y).0).collect()
    }

    /// Crop keeps the central 32x32 square (all green: the red and blue quarters are cut off).
    /// Squash keeps the whole width, halved: red then green then blue, 8 + 16 + 8 columns, with
    /// blended columns only at the two borders.
    #[test]
    fn crop_drops_the_outer_quarters_squash_keeps_them_scaled() {
        let crop = ImageSpec::new(32, ResizePolicy::Crop);
        let out = crop.fit(quarters()).unwrap();
        assert_eq!(out.dimensions(), (32, 32));
        assert!(out.pixels().all(|p| p.0 == GREEN));
        let out = ImageSpec {
            resize: ResizePolicy::Squash,
            ..crop
        }
        .fit(quarters())
        .unwrap();
        assert_eq!(out.dimensions(), (32, 32));
        for x in 0..=6 {
            assert!(column(&out, x).iter().all(|&p| p == RED), "column {x}");
        }
        for x in 9..=22 {
            assert!(column(&out, x).iter().all(|&p| p == GREEN), "column {x}");
        }
        for x in 25..=31 {
            assert!(column(&out, x).iter().all(|&p| p == BLUE), "column {x}");
        }
        // At the borders, a mix of the two neighbours.
        let mixed = out.get_pixel(8, 0).0;
        assert!(mixed[0] > 0 && mixed[1] > 0 && mixed[2] == 0, "{mixed:?}");
    }

    /// Crop of a larger, portrait image: the shorter side is scaled to the output, then the middle
    /// rows are kept; the top and bottom bands are gone.
    #[test]
    fn crop_of_a_portrait_image_keeps_the_middle_rows() {
        // 40x120: rows 0..30 red, 30..90 green, 90..120 blue. Resize(20) gives 20x60, the crop keeps
        // its rows 20..40, from source rows 40..80.
        let img = RgbImage::from_fn(40, 120, |_, y| {
            image::Rgb(match y {
                0..30 => RED,
                30..90 => GREEN,
                _ => BLUE,
            })
        });
        let out = ImageSpec::new(20, ResizePolicy::Crop).fit(img).unwrap();
        assert_eq!(out.dimensions(), (20, 20));
        assert!(out.pixels().all(|p| p.0 == GREEN));
    }

    #[test]
    fn same_size_is_untouched_and_zero_is_refused() {
        let img = quarters();
        let square = image::imageops::crop_imm(&img, 0, 0, 32, 32).to_image();
        for p in ResizePolicy::ALL {
            let spec = ImageSpec::new(32, p);
            assert_eq!(spec.fit(square.clone()).unwrap(), square);
        }
        assert!(ImageSpec::new(0, ResizePolicy::Crop).fit(img).is_err());
    }

    #[test]
    fn names_parse_and_print() {
        for p in ResizePolicy::ALL {
            assert_eq!(p.to_string().parse::<ResizePolicy>().unwrap(), p);
        }
        assert_eq!("CROP".parse::<ResizePolicy>().unwrap(), ResizePolicy::Crop);
        let err = "stretch".parse::<ResizePolicy>().unwrap_err().to_string();
        assert!(err.contains("squash or crop"), "{err}");
        assert_eq!(
            "bilinear".parse::<ResizeFilter>().unwrap().to_string(),
            "bilinear"
        );
        assert!("lanczos".parse::<ResizeFilter>().is_err());
        let spec = ImageSpec::new(224, ResizePolicy::Crop);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            json,
            r#"{"size":224,"resize":"crop","filter":"bilinear","dct_scaling":true}"#
        );
        let old: ImageSpec = serde_json::from_str(r#"{"size":32}"#).unwrap();
        assert_eq!(old, ImageSpec::new(32, ResizePolicy::Squash));
        assert!(
            !ImageSpec::new(32, ResizePolicy::Squash)
                .full_decode()
                .dct_scaling
        );
    }
}
