//! Generated datasets and images: a CIFAR-10 binary release with learnable classes, image folders, PNGs.

use std::path::Path;

/// `batches.meta.txt` of the CIFAR-10 binary release: the class names in label order, one a line.
pub const CIFAR10_META: &str =
    "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";

/// The CIFAR-10 class names in label order.
pub fn cifar10_names() -> Vec<&'static str> {
    CIFAR10_META.lines().collect()
}

/// A CIFAR-10 binary release with `per_file` records per batch file: label i % 10, pixels a
/// class-dependent colour pattern plus per-record variation, so that classes are learnable.
pub fn write_binary_release(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let files = (1..=5)
        .map(|i| format!("data_batch_{i}.bin"))
        .chain(["test_batch.bin".to_string()]);
    for (fi, f) in files.enumerate() {
        let mut bytes = Vec::new();
        for i in 0..per_file {
            let label = (i % 10) as u8;
            bytes.push(label);
            for c in 0..3u32 {
                for p in 0..1024u32 {
                    let (y, x) = (p / 32, p % 32);
                    let stripe = ((x + y * u32::from(label)) / (2 + u32::from(label) % 4)) % 2;
                    let v = 40
                        + 25 * u32::from(label) * (c + 1) % 200
                        + 60 * stripe
                        + ((i as u32 * 7 + fi as u32 * 3 + p) % 13);
                    bytes.push(v.min(255) as u8);
                }
            }
        }
        std::fs::write(dir.join(f), bytes).unwrap();
    }
    std::fs::write(dir.join("batches.meta.txt"), CIFAR10_META).unwrap();
}

/// Image folders `root/<split>/<class>/<i>.png` (32x32, class-coloured), `n` images per class.
pub fn image_folders(root: &Path, split: &str, classes: &[&str], n: usize) {
    for (c, class) in classes.iter().enumerate() {
        let d = root.join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            png(&d.join(format!("{i}.png")), 32, 32, |x, y| {
                [(c * 90) as u8, (x * 8) as u8 ^ (i as u8), (y * 8) as u8]
            });
        }
    }
}

/// An 8-bit RGB PNG of `w`x`h` pixels with colour `f(x, y)`.
pub fn png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}
