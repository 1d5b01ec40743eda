//! One fine-tuning epoch through pipe's learner, in two forms; each prints and writes the training
//! images/s (validation not counted), after a warm-up epoch:
//!
//! - default: as `pipe train --preset finetune` trains (all 13 convs and the head, CIFAR-style
//!   augmentation, SGD momentum 0.9, weight decay 5e-4, one-cycle, batch 128, the precision `auto`
//!   chooses on this CPU) on 2,560 decoded CIFAR-10 training JPEGs, after a warm-up of 256; written to
//!   `target/bench/finetune_pipe.json` (or `--out FILE`).
//! - `--photos`: as `pipe train --preset photos --unfreeze 13 --augment` trains (the preset's input
//!   size, 384x384, and max pooling; all 13 convs and the head, random resized crops and flips of the
//!   photos, SGD lr 3e-3 momentum 0.9, batch 32, the precision `auto` chooses) on all the ants-and-bees
//!   training photos (`data/hymenoptera/train`, junk skipped), after a warm-up of 32; written to
//!   `target/bench/finetune_photos_pipe.json`.
//!
//! Each form also writes what its PyTorch reference (`benches/reference/torch_finetune.py`, with
//! `--photos` for the second) trains on, so that both sides run the same images with the same
//! settings: the recipe (`finetune_recipe.json` / `finetune_photos_recipe.json`: the settings and the
//! chosen precision), the labels, and the decoded CIFAR-10 pixels (`finetune_pixels.u8`) or the
//! photos as photo augmentation crops from them (`finetune_photos.u8`, each photo's RGB bytes in turn,
//! their sizes in the recipe). `make bench` alternates pipe and PyTorch.

mod common;

use pipe::arch::Arch;
use pipe::config::{Precision, Preset, TrainConfig};
use pipe::cpu::CpuFeatures;
use pipe::data::{
    DataLayout, ImageSpec, LoadedSplit, OnError, ResizePolicy, SplitList, SplitOptions, SplitPart,
};
use pipe::events::Silent;
use pipe::train::augment::PhotoSet;
use pipe::train::finetune::{time_precisions, FineTuneModel, PixelSplits};
use pipe::train::images::{build_list, run_spec, PixelSplit, RunImages};
use pipe::train::learner::Learner;
use pipe::weights::NamedTensor;
use std::path::{Path, PathBuf};

/// Training images of the timed epoch (20 batches of 128).
const IMAGES: usize = 2560;
/// Images of the warm-up epoch (oneDNN kernel set-up, first-touch memory).
const WARM_UP: usize = 256;
/// Validation and test images (evaluated after the epoch, not timed).
const EVAL: usize = 128;
/// Convs the photo form fine-tunes: all of VGG16's 13.
const PHOTO_UNFREEZE: usize = 13;
/// Photos of the photo form's warm-up epoch (one batch of the preset's 32).
const PHOTO_WARM_UP: usize = 32;
/// Validation and test photos of the photo form (evaluated, not timed).
const PHOTO_EVAL: usize = 16;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let photos = args.iter().any(|a| a == "--photos");
    let out = args
        .iter()
        .skip_while(|a| *a != "--out")
        .nth(1)
        .map_or_else(
            || {
                common::out_dir().join(if photos {
                    "finetune_photos_pipe.json"
                } else {
                    "finetune_pipe.json"
                })
            },
            PathBuf::from,
        );
    let Some(weights) = common::weights("finetune") else {
        return;
    };
    if photos {
        photo_bench(&weights, &out);
    } else {
        cifar_bench(&weights, &out);
    }
}

/// What every fine-tuning model of a bench is built from: the network, its base weights, and the
/// training images an epoch draws from (NHWC RGB `u8` pixels of side `size`, labels, and the
/// photos for photo augmentation). Validation and test are the first `eval` images (evaluated,
/// not timed).
struct Bench<'a> {
    arch: &'a Arch,
    weights: &'a [NamedTensor],
    pixels: &'a [u8],
    labels: &'a [usize],
    size: usize,
    photos: Option<&'a PhotoSet>,
    eval: usize,
}

impl<'a> Bench<'a> {
    /// A fresh model of `config` on the first `n` images.
    fn fresh_model(&self, config: &TrainConfig, n: usize) -> FineTuneModel<'a> {
        let per = self.size * self.size * 3;
        let part = |len: usize| PixelSplit {
            pixels: &self.pixels[..len * per],
            labels: &self.labels[..len],
            size: self.size,
        };
        let splits = PixelSplits {
            train: part(n),
            val: part(self.eval),
            test: part(self.eval),
            photos: self.photos,
        };
        FineTuneModel::new(
            splits,
            self.arch,
            self.weights,
            config,
            None,
            tch::Device::Cpu,
        )
        .expect("build the network")
    }

    /// Trains a fresh model on the first `n` images for one epoch of `config`; returns the
    /// training images/s.
    fn epoch_rate(&self, config: &TrainConfig, n: usize) -> f64 {
        let mut model = self.fresh_model(config, n);
        let fitted = Learner::new(config)
            .fit(&mut model, None, |_| Ok(()))
            .expect("train");
        n as f64 / fitted.history[0].train_seconds
    }

    /// The precision `--precision auto` (the presets' setting) chooses on this CPU, and why.
    /// Where the CPU alone does not decide (AVX512_BF16 but no AMX), `pipe train` times both
    /// precisions on the run's model before fine-tuning and trains in the faster; so does this,
    /// on a fresh model of `config` on the first `n` images ([`time_precisions`]).
    fn auto_precision(&self, config: &TrainConfig, n: usize) -> (Precision, String) {
        let (p, why) = Precision::Auto.resolve(false, CpuFeatures::detect());
        if p != Precision::Auto {
            return (p, why.to_string());
        }
        let mut model = self.fresh_model(config, n);
        let timing = time_precisions(&mut model, config).expect("time both precisions");
        (timing.chosen, format!("{why}; {}", timing.line()))
    }
}

/// Writes the bench result `rate` (images/s) with its settings to `out`, and prints it.
fn write_result(
    out: &Path,
    task: &str,
    rate: f64,
    (images, size): (usize, usize),
    precision: Precision,
) {
    println!("pipe {task} epoch: {rate:.1} images/s");
    let json = serde_json::json!({
        "task": task, "images_per_s": rate, "images": images, "size": size,
        "precision": precision.name(), "threads": tch::get_num_threads(),
    });
    std::fs::write(out, json.to_string()).expect("write the result");
}

/// The default form: 2,560 CIFAR-10 training images, the finetune preset.
fn cifar_bench(weights: &Path, out: &Path) {
    let data = common::root().join("data/cifar10");
    if !data.join("train").is_dir() {
        common::skip("finetune", &data.join("train"));
        return;
    }
    // IMAGES training JPEGs, the first of each class in equal shares, squashed to 32x32 with the
    // full decode.
    let limit = SplitOptions {
        train_limit: IMAGES,
        ..SplitOptions::default()
    };
    let squash = ImageSpec::new(32, ResizePolicy::Squash).full_decode();
    let split = DataLayout::detect(&data)
        .and_then(|layout| SplitList::build(&layout, &limit))
        .and_then(|(list, _)| list.load(SplitPart::Train, &squash, OnError::Stop))
        .expect("decode the training JPEGs")
        .split;
    // The class names as `pipe train` sets them: the class weights of the loss are per class.
    let mut config = TrainConfig {
        epochs: 1,
        precision: Some(Precision::Auto),
        classes: split.classes.clone(),
        ..Preset::Finetune.config()
    };
    let arch = Arch::vgg16_transfer(32, split.classes.len());
    let (w, _) = pipe::weights::load_base(weights, &arch, false).expect("load base weights");
    let bench = Bench {
        arch: &arch,
        weights: &w,
        pixels: &split.pixels,
        labels: &split.labels,
        size: 32,
        photos: None,
        eval: EVAL,
    };
    let (precision, why) = bench.auto_precision(&config, IMAGES);
    config.precision = Some(precision);
    write_reference_inputs(&split, &config);
    eprintln!(
        "fine-tuning bench: {IMAGES} images, {} ({why}), {} libtorch threads",
        precision.name(),
        tch::get_num_threads()
    );
    bench.epoch_rate(&config, WARM_UP);
    let rate = bench.epoch_rate(&config, IMAGES);
    write_result(out, "finetune", rate, (IMAGES, 32), precision);
}

/// The `--photos` form: every ants-and-bees training photo at the preset's size, the photos preset fine-tuning
/// all 13 convs with photo augmentation.
fn photo_bench(weights: &Path, out: &Path) {
    let data = common::root().join("data/hymenoptera");
    if !data.join("train").is_dir() {
        common::skip("finetune --photos", &data.join("train"));
        return;
    }
    let mut config = TrainConfig {
        data: data.clone(),
        epochs: 1,
        unfreeze: PHOTO_UNFREEZE,
        augment: true,
        precision: Some(Precision::Auto),
        ..Preset::Photos.config()
    };
    let layout = DataLayout::detect(&data).expect("detect the photo folders");
    let list = build_list(&layout, &config, &Silent).expect("list the photos");
    let images = RunImages::load(list, run_spec(&config), OnError::Skip, &Silent)
        .expect("decode the photos");
    let photos = PhotoSet::decode(&images).expect("decode the photos for augmentation");
    let train = &images.train;
    config.classes = train.classes.clone();
    let arch = config.arch(train.classes.len());
    let (w, _) = pipe::weights::load_base(weights, &arch, false).expect("load base weights");
    let n = train.len();
    let bench = Bench {
        arch: &arch,
        weights: &w,
        pixels: &train.pixels,
        labels: &train.labels,
        size: config.input_size,
        photos: Some(&photos),
        eval: PHOTO_EVAL,
    };
    let (precision, why) = bench.auto_precision(&config, n);
    config.precision = Some(precision);
    write_photo_reference_inputs(&photos, &train.labels, train.classes.len(), &config);
    eprintln!(
        "photo fine-tuning bench: {n} photos at {}, {} ({why}), {} libtorch threads",
        config.input_size,
        precision.name(),
        tch::get_num_threads()
    );
    bench.epoch_rate(&config, PHOTO_WARM_UP);
    let rate = bench.epoch_rate(&config, n);
    write_result(
        out,
        "finetune_photos",
        rate,
        (n, config.input_size),
        precision,
    );
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

/// The photos, labels (of `classes` classes) and recipe the PyTorch reference of the photo form
/// trains on.
fn write_photo_reference_inputs(
    photos: &PhotoSet,
    labels: &[usize],
    classes: usize,
    c: &TrainConfig,
) {
    let dir = common::out_dir();
    let bytes: Vec<u8> = photos
        .photos()
        .iter()
        .flat_map(|p| p.as_raw().iter().copied())
        .collect();
    std::fs::write(dir.join("finetune_photos.u8"), bytes).expect("write photos");
    let labels: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
    std::fs::write(dir.join("finetune_photos_labels.u8"), &labels).expect("write labels");
    let shapes: Vec<[u32; 2]> = photos
        .photos()
        .iter()
        .map(|p| [p.height(), p.width()])
        .collect();
    let recipe = serde_json::json!({
        "images": labels.len(), "warm_up_images": PHOTO_WARM_UP, "size": c.input_size,
        "classes": classes, "pooling": c.pooling,
        "unfreeze": c.unfreeze, "augment": c.augment, "augment_style": "photo",
        "batch_size": c.batch_size, "lr": c.lr, "momentum": c.momentum,
        "weight_decay": c.weight_decay, "label_smoothing": c.label_smoothing,
        "schedule": c.schedule, "precision": c.precision.unwrap_or_default().name(),
        "seed": c.seed, "photo_shapes_hw": shapes,
    });
    std::fs::write(dir.join("finetune_photos_recipe.json"), recipe.to_string())
        .expect("write recipe");
}
