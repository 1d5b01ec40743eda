//! (d) Inference on pre-decoded batches with the tract and ort backends (`pipe::infer::open_backend`,
//! as `pipe infer` opens them: all cores), at batch 1 and 256. Throughput in images/s.
//!
//! The model is exported from the real VGG16 base weights and a synthetic head to
//! `target/bench/model.onnx`, with the metadata `pipe export` writes (CIFAR-10's class names, see
//! [`metadata`]) so that `pipe infer` classifies with it as with a trained model
//! (`benches/e2e_infer.py` runs it on the 10,000 test JPEGs), and the batch (the first 256 CIFAR-10
//! test JPEGs, one in every 39, decoded) to `target/bench/batch256.u8` (NHWC RGB u8), so that the
//! ONNX Runtime Python reference (`benches/reference/ort_infer.py`) runs the very same model on the
//! very same pixels.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use ndarray::{Array4, Axis};
use pipe::arch::Arch;
use pipe::contract::{ModelMetadata, Output};
use pipe::data::{DataLayout, ImageSpec, OnError, ResizePolicy, SplitList, SplitOptions};
use pipe::export::{build_model, write_model, ExportOptions};
use pipe::infer::{open_backend, BackendKind, BackendOptions, InferDevice};
use std::path::Path;
use std::time::Duration;

const BATCH: usize = 256;

fn bench(c: &mut Criterion) {
    let Some(weights) = common::weights("infer") else {
        return;
    };
    let Some(files) = common::test_jpegs("infer", BATCH) else {
        return;
    };
    let out = common::out_dir();
    let arch = Arch::vgg16_transfer(32, 10);
    let (base, fingerprint) =
        pipe::weights::load_base(&weights, &arch, false).expect("load base weights");
    let model_path = out.join("model.onnx");
    let opts = ExportOptions {
        metadata: metadata(&arch, fingerprint),
        ..ExportOptions::default()
    };
    let model =
        build_model(&arch, &base, &common::synthetic_head(&arch), &opts).expect("build_model");
    write_model(&model_path, &model).expect("write model");
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let squash = ImageSpec::new(32, ResizePolicy::Squash).full_decode();
    let pixels = pipe::data::load_images(&paths, &squash, OnError::Stop)
        .expect("decode the test images")
        .pixels;
    pipe::util::write_atomic(&out.join("batch256.u8"), |w| w.write_all(&pixels))
        .expect("write batch");
    let images = Array4::from_shape_vec(
        (BATCH, 32, 32, 3),
        pixels.iter().map(|&v| f32::from(v)).collect(),
    )
    .expect("batch shape");
    let one = images.slice_axis(Axis(0), (0..1).into());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("backend threads: {threads}");

    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let opts = BackendOptions {
            kind,
            device: InferDevice::Cpu,
            threads: 0,
            ort_lib: None,
        };
        let mut backend = match open_backend(&model_path, &opts) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipping {kind:?}: {e}");
                continue;
            }
        };
        let name = backend.name();
        let mut g = c.benchmark_group("infer");
        g.sample_size(20)
            .warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(5))
            .throughput(Throughput::Elements(1));
        g.bench_function(format!("{name}_batch1"), |b| {
            b.iter(|| backend.run(one.view()).expect("run"))
        });
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .measurement_time(Duration::from_secs(if name == "tract" { 20 } else { 10 }))
            .throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("{name}_batch256"), |b| {
            b.iter(|| backend.run(images.view()).expect("run"))
        });
        g.finish();
    }
}

/// The metadata `pipe export` writes, for the synthetic model: the class names of `data/cifar10` as
/// `pipe train` names and orders them (its split list's classes), squashed 32x32 input (the JPEGs are
/// 32x32 already), probabilities, the base weights' fingerprint, run name `bench`.
fn metadata(arch: &Arch, fingerprint: String) -> Vec<(String, String)> {
    let data = common::root().join("data/cifar10");
    let classes = DataLayout::detect(&data)
        .and_then(|layout| SplitList::build(&layout, &SplitOptions::default()))
        .expect("class folders of data/cifar10")
        .0
        .classes;
    assert_eq!(
        classes.len(),
        arch.num_classes,
        "classes of {}",
        data.display()
    );
    ModelMetadata {
        classes,
        input_size: arch.input_size,
        resize: ResizePolicy::Squash,
        pooling: arch.pooling,
        output: Output::Probabilities,
        weights_fingerprint: fingerprint,
        fine_tuned_conv_layers: 0,
        run: "bench".into(),
        fp16_weights: false,
        test_accuracy: None,
        int8: None,
        tta_flip: false,
    }
    .to_props()
}

criterion_group!(benches, bench);
criterion_main!(benches);
