//! (c) ONNX export: the graph of the trained network (real ImageNet VGG16 base weights, a head of the
//! seed recipe's shape) built natively by `pipe::export::build_model` and written by
//! `pipe::export::write_model` (temporary file + rename) — what `pipe export` does before its
//! verification with tract (that verification is inference, measured by the `infer` bench).

mod common;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use pipe::arch::Arch;
use pipe::export::{build_model, write_model, ExportOptions};
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let Some(weights) = common::weights("export") else {
        return;
    };
    let arch = Arch::vgg16_transfer(32, 10);
    let (base, _) = pipe::weights::load_base(&weights, &arch, false).expect("load base weights");
    let head = common::synthetic_head(&arch);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("model.onnx");
    let mut g = c.benchmark_group("export");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    g.bench_function("build_and_write", |b| {
        b.iter(|| {
            let model =
                build_model(&arch, &base, &head, &ExportOptions::default()).expect("build_model");
            write_model(&out, &model).expect("write_model");
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
