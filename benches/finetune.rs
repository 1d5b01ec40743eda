//! One fine-tuning epoch as `pipe train --preset finetune` trains it (all 13 convs and the head,
//! augmentation, SGD momentum 0.9, weight decay 5e-4, one-cycle, batch 128, the precision `auto`
//! chooses on this CPU) on 2,560 decoded CIFAR-10 training JPEGs, through pipe's learner. Prints and
//! writes the training images/s (validation not counted) to `target/bench/finetune_pipe.json` (or
//! `--out FILE`), after a warm-up epoch of 256 images.
//!
//! It also writes what the PyTorch reference (`benches/reference/torch_finetune.py`) trains on: the
//! decoded pixels and labels (`target/bench/finetune_pixels.u8`, `finetune_labels.u8`) and the
//! recipe (`target/bench/finetune_recipe.json`: the preset's settings and the chosen precision), so
//! that both sides run the same images with the same settings. `make bench` alternates the two.

mod common;

use pipe::arch::Arch;
use pipe::config::{CpuBf16, Preset, TrainConfig};
use pipe::data::{DataSource, LoadedSplit, Split};
use pipe::train::{FineTuneModel, Learner, PixelSplit, PixelSplits};
use std::path::PathBuf;

/// Training images of the timed epoch (20 batches of 128).
const IMAGES: usize = 2560;
/// Images of the warm-up epoch (oneDNN kernel set-up, first-touch memory).
const WARM_UP: usize = 256;
/// Validation and test images (evaluated after the epoch, not timed).
const EVAL: usize = 128;

fn main() {
    let out = std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .map_or_else(
            || common::out_dir().join("finetune_pipe.json"),
            PathBuf::from,
        );
    let Some(weights) = common::weights("finetune") else {
        return;
    };
    let data = common::root().join("data/cifar10");
    if !data.join("train").is_dir() {
        common::skip("finetune", &data.join("train"));
        return;
    }
    let split = DataSource::detect(&data)
        .and_then(|s| s.load(Split::Train, IMAGES, 32))
        .expect("decode the training JPEGs");
    let (precision, why) = Preset::Finetune
        .config()
        .precision
        .unwrap_or_default()
        .resolve(false, CpuBf16::detect());
    let config = TrainConfig {
        epochs: 1,
        precision: Some(precision),
        ..Preset::Finetune.config()
    };
    write_reference_inputs(&split, &config);
    let arch = Arch::vgg16_transfer(32, split.classes.len());
    let (w, _) = pipe::weights::load_base(&weights, &arch, false).expect("load base weights");
    let epoch = |n: usize| -> f64 {
        let part = |from: usize, len: usize| PixelSplit {
            pixels: &split.pixels[from * 32 * 32 * 3..(from + len) * 32 * 32 * 3],
            labels: &split.labels[from..from + len],
            size: 32,
        };
        let splits = PixelSplits {
            train: part(0, n),
            val: part(0, EVAL),
            test: part(0, EVAL),
        };
        let device = tch::Device::Cpu;
        let mut model = FineTuneModel::new(splits, &arch, &w, &config, None, device)
            .expect("build the network");
        let fitted = Learner::new(&config)
            .fit(&mut model, None, |_| Ok(()))
            .expect("train");
        n as f64 / fitted.history[0].train_seconds
    };
    let threads = tch::get_num_threads();
    eprintln!(
        "fine-tuning bench: {IMAGES} images, {} ({why}), {threads} libtorch threads",
        precision.name()
    );
    epoch(WARM_UP);
    let rate = epoch(IMAGES);
    println!("pipe fine-tuning epoch: {rate:.1} images/s");
    let json = serde_json::json!({
        "task": "finetune", "images_per_s": rate, "images": IMAGES, "precision": precision.name(),
        "threads": threads,
    });
    std::fs::write(&out, json.to_string()).expect("write the result");
}

/// The pixels, labels and recipe the PyTorch reference trains on.
fn write_reference_inputs(split: &LoadedSplit, c: &TrainConfig) {
    let dir = common::out_dir();
    std::fs::write(dir.join("finetune_pixels.u8"), &split.pixels).expect("write pixels");
    let labels: Vec<u8> = split.labels.iter().map(|&l| l as u8).collect();
    std::fs::write(dir.join("finetune_labels.u8"), labels).expect("write labels");
    let recipe = serde_json::json!({
        "images": split.len(), "warm_up_images": WARM_UP, "size": split.size,
        "unfreeze": c.unfreeze, "augment": c.augment, "batch_size": c.batch_size, "lr": c.lr,
        "momentum": c.momentum, "weight_decay": c.weight_decay,
        "label_smoothing": c.label_smoothing, "schedule": c.schedule,
        "precision": c.precision.unwrap_or_default().name(), "seed": c.seed,
    });
    std::fs::write(dir.join("finetune_recipe.json"), recipe.to_string()).expect("write recipe");
}
