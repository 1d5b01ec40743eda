//! pipe's decoded pixels against PIL's, whose JPEG decoder is libjpeg-turbo (as OpenCV's,
//! torchvision's and TensorFlow's): clients of the exported model that decode images themselves must
//! see the same pixels pipe trained and classifies on. `tests/python/pil_pixels.py` writes JPEGs of
//! every common kind with PIL and PIL's decodes of them (full size, and `draft`'s DCT-scaled 1/2, 1/4
//! and 1/8); here pipe decodes the same files and every byte must match.

mod common;

use common::{cifar10, root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The first `n` JPEGs of CIFAR-10's test folder, sorted by path.
fn cifar_test_jpegs(n: usize) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cifar10().join("test"))
        .unwrap()
        .flat_map(|class| std::fs::read_dir(class.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    files.truncate(n);
    files
}

#[test]
fn jpeg_pixels_equal_pils_at_full_size_and_dct_scaled() {
    let dir = tempfile::tempdir().unwrap();
    let cifar = cifar_test_jpegs(40);
    let python = root().join(".venv/bin/python");
    let out = Command::new(&python)
        .arg(root().join("tests/python/pil_pixels.py"))
        .arg(dir.path())
        .args(&cifar)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run `make setup`)", python.display()));
    assert!(
        out.status.success(),
        "pil_pixels.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let records = manifest["records"].as_array().unwrap();
    let mut failures = Vec::new();
    let (mut full, mut reduced) = (0, 0);
    for r in records {
        let file = Path::new(r["file"].as_str().unwrap());
        let reduction = r["reduction"].as_u64().unwrap() as u32;
        let (w, h) = (r["width"].as_u64().unwrap(), r["height"].as_u64().unwrap());
        let want = std::fs::read(r["raw"].as_str().unwrap()).unwrap();
        let got = pipe::data::decode_stored(file, &std::fs::read(file).unwrap(), reduction)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let what = format!(
            "{} at 1/{reduction}",
            file.file_name().unwrap().to_string_lossy()
        );
        if (u64::from(got.width()), u64::from(got.height())) != (w, h) {
            failures.push(format!(
                "{what}: {:?} against PIL's {w}x{h}",
                got.dimensions()
            ));
            continue;
        }
        let diff: Vec<u8> = got
            .as_raw()
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let differing = diff.iter().filter(|&&d| d > 0).count();
        if differing > 0 {
            failures.push(format!(
                "{what}: {differing} of {} values differ (max {})",
                diff.len(),
                diff.iter().max().unwrap()
            ));
        }
        if reduction == 1 {
            full += 1;
        } else {
            reduced += 1;
        }
    }
    eprintln!(
        "{full} full-size and {reduced} DCT-scaled decodes compared with PIL (libjpeg-turbo {})",
        manifest["libjpeg_turbo"]
    );
    assert!(
        failures.is_empty(),
        "pipe's pixels differ from PIL's:\n{}",
        failures.join("\n")
    );
    // 9 generated kinds and the CIFAR-10 files at full size; the 3 large ones at three reductions.
    assert_eq!((full, reduced), (9 + cifar.len(), 3 * 3));
}

/// pipe's `--resize squash` and `--resize crop` at 384 pixels against PIL's bilinear resize as
/// torchvision applies it (Resize + CenterCrop for crop), on the same decoded pixels (three 1003x757
/// JPEGs of texture and noise, the hard case for resampling): not the same algorithm (pipe resizes the
/// crop box in one step, with fractional edges), so a measured closeness: every value within one
/// level, mean |Δ| under 0.25 (measured: 0.138 squash, 0.138 crop, max 1). The figure is printed.
#[test]
fn resizes_are_close_to_pils_bilinear_as_torchvision_uses_it() {
    use pipe::data::{ImageSpec, ResizePolicy};
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/python/pil_pixels.py"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let resized = manifest["resized"].as_array().unwrap();
    assert_eq!(resized.len(), 3 * 2);
    for policy in ["squash", "crop"] {
        let (mut sum, mut n, mut max, mut within1) = (0u64, 0usize, 0u8, 0usize);
        for r in resized.iter().filter(|r| r["policy"] == policy) {
            let file = Path::new(r["file"].as_str().unwrap());
            let spec = ImageSpec::new(384, policy.parse::<ResizePolicy>().unwrap()).full_decode();
            let got = pipe::data::load_image(file, &spec).unwrap();
            let want = std::fs::read(r["raw"].as_str().unwrap()).unwrap();
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                let d = a.abs_diff(*b);
                sum += u64::from(d);
                max = max.max(d);
                within1 += usize::from(d <= 1);
                n += 1;
            }
        }
        let mean = sum as f64 / n as f64;
        eprintln!(
            "--resize {policy} at 384 against PIL bilinear: mean |Δ| {mean:.4} ({sum} over {n} values), max {max}, {:.2}% of values within 1",
            100.0 * within1 as f64 / n as f64
        );
        assert!(
            mean < 0.25 && max <= 1,
            "{policy}: mean |Δ| {mean}, max {max}"
        );
    }
}
