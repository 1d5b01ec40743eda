//! Shared set-up of the benchmarks: project paths, the files `make setup` provides (with a clear
//! message when they are missing), deterministic inputs, and files handed to the Python references.
#![allow(dead_code)] // each bench uses a subset

use std::path::{Path, PathBuf};

/// The project root (where Cargo.toml is).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/bench/`: inputs shared with the references in `benches/reference/` (model, batches) and
/// their results. Created on first use.
pub fn out_dir() -> PathBuf {
    let d = root().join("target/bench");
    std::fs::create_dir_all(&d).expect("create target/bench");
    d
}

/// Prints why a benchmark is skipped and how to get what it needs.
pub fn skip(bench: &str, what: &Path) {
    eprintln!(
        "skipping the {bench} benchmark: {} not found; run `make setup` (ImageNet VGG16 weights, CIFAR-10, .venv with libtorch and onnxruntime)",
        what.display()
    );
}

/// The ImageNet VGG16 base weights written by `make setup`, or `None` (after a message).
pub fn weights(bench: &str) -> Option<PathBuf> {
    let p = root().join("models/vgg16_imagenet.safetensors");
    if p.is_file() {
        Some(p)
    } else {
        skip(bench, &p);
        None
    }
}

/// The first `n` CIFAR-10 test JPEGs (class folders in order, sorted names), or `None` (after a
/// message) when `make setup` has not extracted them.
pub fn test_jpegs(bench: &str, n: usize) -> Option<Vec<PathBuf>> {
    let dir = root().join("data/cifar10/test");
    let files = dir
        .is_dir()
        .then(|| pipe::data::collect_image_files(std::slice::from_ref(&dir)).ok())
        .flatten()
        .filter(|f| f.len() >= n);
    match files {
        Some(mut f) => {
            // Spread over the classes: every (len / n)-th file.
            let step = f.len() / n;
            f = f.into_iter().step_by(step).take(n).collect();
            Some(f)
        }
        None => {
            skip(bench, &dir);
            None
        }
    }
}

/// `n` deterministic pseudo-random values in `lo..hi` (xorshift), for synthetic inputs whose
/// contents do not change the work done (dense convolutions, matrix products).
pub fn pseudo_random(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// `n` images of 32x32 NHWC RGB `u8` pixels, pseudo-random (seed 1).
pub fn pseudo_random_pixels(n: usize) -> Vec<u8> {
    pseudo_random_images(n, 32)
}

/// `n` images of `size`x`size` NHWC RGB `u8` pixels, pseudo-random (seed 1).
pub fn pseudo_random_images(n: usize, size: usize) -> Vec<u8> {
    pseudo_random(n * size * size * 3, 1, 0.0, 256.0)
        .into_iter()
        .map(|v| v.min(255.0) as u8)
        .collect()
}

/// A head of `arch`'s shapes with pseudo-random values in ±0.05 (stands in for a trained head:
/// export and inference do the same work whatever the values).
pub fn synthetic_head(arch: &pipe::arch::Arch) -> Vec<pipe::weights::NamedTensor> {
    arch.head_params()
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| pipe::weights::NamedTensor {
            data: pseudo_random(shape.iter().product(), 11 + i as u64, -0.05, 0.05),
            name,
            shape,
        })
        .collect()
}

/// A criterion group `name` in flat sampling mode (each sample the same number of iterations, for
/// work of a second or more per iteration): `samples` samples after `warm_up_s` seconds of warm-up,
/// `measure_s` seconds of measurement, throughput counted in `elements` per iteration.
pub fn flat_group<'a>(
    c: &'a mut criterion::Criterion,
    name: &str,
    samples: usize,
    (warm_up_s, measure_s): (u64, u64),
    elements: u64,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(criterion::SamplingMode::Flat)
        .sample_size(samples)
        .warm_up_time(std::time::Duration::from_secs(warm_up_s))
        .measurement_time(std::time::Duration::from_secs(measure_s))
        .throughput(criterion::Throughput::Elements(elements));
    g
}
