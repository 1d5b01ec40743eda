//! Arbitrary bytes as an image file through the path every image takes in `pipe infer` and in
//! folder training: format detection (TGA by extension), decoding limits, decoding, EXIF orientation,
//! conversion to 8-bit RGB, resizing to the network input, caffe preprocessing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipe::data::{decode_image, ImageSpec, ResizePolicy};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // `.tga`: bytes without a known signature go to the TGA decoder instead of being refused at once.
    for (name, size) in [("fuzz.tga", 32), ("fuzz.jpg", 64)] {
        let spec = ImageSpec::new(size, ResizePolicy::Squash).full_decode();
        if let Ok(px) = decode_image(Path::new(name), data, &spec) {
            assert_eq!(px.len(), size * size * 3);
            let x = pipe::data::caffe_preprocess(&px, 1, size);
            assert!(x.iter().all(|v| v.is_finite()));
        }
    }
});
