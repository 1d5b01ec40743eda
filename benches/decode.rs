//! (e) JPEG decode + resize + preprocess of 32x32 CIFAR-10 JPEGs on all cores: `pipe::data::load_images`
//! (parallel decoding to NHWC RGB u8, squashed to 32x32 with the full decode) then
//! `pipe::data::caffe_preprocess` (BGR NCHW float32 minus the ImageNet means), the input path of
//! `pipe train`. Throughput in images/s; the files are read from the page cache after the warm-up.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pipe::data::{caffe_preprocess, load_images, ImageSpec, OnError, ResizePolicy};
use std::path::Path;
use std::time::Duration;

const N: usize = 2_000;

fn bench(c: &mut Criterion) {
    let Some(files) = common::test_jpegs("decode", N) else {
        return;
    };
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let spec = ImageSpec::new(32, ResizePolicy::Squash).full_decode();
    let mut g = c.benchmark_group("decode");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(N as u64));
    g.bench_function("jpeg32_preprocess", |b| {
        b.iter(|| {
            let px = load_images(&paths, &spec, OnError::Stop).expect("decode");
            caffe_preprocess(&px.pixels, N, 32)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
