//! Feature extraction through the frozen VGG16 base with tch (libtorch), the way `pipe train` does
//! it (`pipe::train::features::extract`: caffe preprocessing, NCHW tensor, 13 convolutions, 5 poolings,
//! features back on the CPU), on pseudo-random NHWC RGB `u8` images. Throughput in images/s.
//! Reference: `benches/reference/torch_extract.py` (PyTorch, same weights, threads, batch and size).
//!
//! - `tch_batch128`: 32x32 images (CIFAR-10's size, the seed recipe) at batch 128, pipe's default
//!   `--extract-batch-size`.
//! - `tch_224_batch32`: 224x224 images (VGG16's own size, `--preset photos`) at batch 32; see
//!   [`BATCH_224`] for why not 128.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use pipe::arch::Arch;
use pipe::train::features::extract;
use pipe::train::model::Base;
use std::path::Path;

const BATCH: usize = 128;

/// Batch of the 224-pixel bench. An image at 224 is 49x the work of one at 32 (about 31 GFLOP), so
/// a batch of 32 already takes seconds, far past where per-batch overheads count, and criterion's 10
/// samples of one batch take about a minute and a half per round on two busy cores (at 128, four
/// times that). pipe's default `--extract-batch-size` (128, also under `--preset photos`) should give
/// nearly the same rate (not measured): at 224 pipe runs blocks 1-3 one image at a time whatever the
/// batch (a 224x224 block1 map alone is 12 MiB, see `Base::features`), so the batch only groups
/// blocks 4-5, whose 28x28 and 14x14 maps are already large matrix products per image. The PyTorch
/// reference, which does not chunk, holds 0.4 GB per block1 activation at batch 32 against 1.6 GB at
/// 128.
const BATCH_224: usize = 32;

/// The tch base of VGG16 at `input_size` pixels, on the CPU.
fn base(weights: &Path, input_size: usize) -> Base {
    let arch = Arch::vgg16_transfer(input_size, 10);
    let (w, _) = pipe::weights::load_base(weights, &arch, false).expect("load base weights");
    Base::new(&arch, &w, tch::Device::Cpu).expect("build the tch base")
}

fn bench(c: &mut Criterion) {
    let Some(weights) = common::weights("extract") else {
        return;
    };
    let base = base(&weights, 32);
    let pixels = common::pseudo_random_pixels(BATCH);
    eprintln!("libtorch threads: {}", tch::get_num_threads());
    let mut g = common::flat_group(c, "extract", 10, (3, 12), BATCH as u64);
    g.bench_function("tch_batch128", |b| {
        b.iter(|| extract(&base, &pixels, BATCH, BATCH, &mut |_| {}).expect("extract"))
    });
    g.finish();
}

fn bench_224(c: &mut Criterion) {
    let Some(weights) = common::weights("extract") else {
        return;
    };
    let base = base(&weights, 224);
    let pixels = common::pseudo_random_images(BATCH_224, 224);
    // 10 samples of one batch each (9 s a batch on two busy cores: criterion may warn that 45 s is
    // too short, and takes the 10 samples all the same).
    let mut g = common::flat_group(c, "extract", 10, (3, 45), BATCH_224 as u64);
    g.bench_function("tch_224_batch32", |b| {
        b.iter(|| extract(&base, &pixels, BATCH_224, BATCH_224, &mut |_| {}).expect("extract"))
    });
    g.finish();
}

criterion_group!(benches, bench, bench_224);
criterion_main!(benches);
