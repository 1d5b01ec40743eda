//! (a) Feature extraction through the frozen VGG16 base with tch (libtorch) at batch 128, the way
//! `pipe train` does it (`pipe::train::extract`: caffe preprocessing, NCHW tensor, 13 convolutions,
//! 5 poolings, features back on the CPU). Throughput in images/s.
//! Reference: `benches/reference/torch_extract.py` (PyTorch, same weights, threads and batch).

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use indicatif::ProgressBar;
use pipe::arch::Arch;
use pipe::train::{extract, Base};

const BATCH: usize = 128;

fn bench(c: &mut Criterion) {
    let Some(weights) = common::weights("extract") else {
        return;
    };
    let arch = Arch::vgg16_transfer(32, 10);
    let (w, _) = pipe::weights::load_base(&weights, &arch, false).expect("load base weights");
    let base = Base::new(&arch, &w, tch::Device::Cpu).expect("build the tch base");
    let pixels = common::pseudo_random_pixels(BATCH);
    eprintln!("libtorch threads: {}", tch::get_num_threads());
    let pb = ProgressBar::hidden();
    let mut g = common::flat_group(c, "extract", 10, (3, 12), BATCH as u64);
    g.bench_function("tch_batch128", |b| {
        b.iter(|| extract(&base, &pixels, BATCH, BATCH, &pb).expect("extract"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
