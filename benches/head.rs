//! (b) One epoch of head training on cached features: 5,000 x 512 synthetic features (ReLU'd
//! pseudo-random values, the shape of the seed recipe's cached VGG16 features), batch 128, SGD with
//! momentum, plus the end-of-epoch validation on 1,000 test features, via `pipe::train::learner::Learner`
//! over `pipe::train::head::HeadModel`.
//! Throughput in training images/s.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use pipe::arch::Arch;
use pipe::config::TrainConfig;
use pipe::train::features::Features;
use pipe::train::head::HeadModel;
use pipe::train::images::SplitInfo;
use pipe::train::learner::Learner;
use tch::Tensor;

const TRAIN: usize = 5_000;
const TEST: usize = 1_000;
const DIM: usize = 512;

fn split(n: usize) -> SplitInfo {
    SplitInfo {
        root: "synthetic".into(),
        names: (0..n).map(|i| format!("{i}")).collect(),
        labels: (0..n).map(|i| i % 10).collect(),
    }
}

fn features(n: usize, seed: u64) -> Tensor {
    let v = common::pseudo_random(n * DIM, seed, -1.0, 3.0);
    Tensor::from_slice(&v).view([n as i64, DIM as i64]).relu()
}

fn bench(c: &mut Criterion) {
    let arch = Arch::vgg16_transfer(32, 10);
    let f = Features {
        classes: (0..10).map(|i| format!("c{i}")).collect(),
        train: split(TRAIN),
        test: split(TEST),
        train_x: features(TRAIN, 7),
        test_x: features(TEST, 8),
        fingerprint: "synthetic".into(),
        extracted: 0,
        extract_seconds: 0.0,
        val: None,
        val_x: None,
    };
    let config = TrainConfig {
        epochs: 1,
        batch_size: 128,
        lr: 1e-4,
        momentum: 0.9,
        weight_decay: 0.0,
        seed: 42,
        ..Default::default()
    };
    let mut g = common::flat_group(c, "head", 20, (2, 6), TRAIN as u64);
    g.bench_function("epoch_5000x512_batch128", |b| {
        b.iter(|| {
            let mut model =
                HeadModel::new(&f, &arch, config.seed, tch::Device::Cpu).expect("head model");
            Learner::new(&config)
                .fit(&mut model, None, |_| Ok(()))
                .expect("fit")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
