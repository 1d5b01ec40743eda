//! The configuration of a training run: [`TrainConfig`], the one declaration of a run's settings.
//!
//! Each setting is one field of [`TrainConfig`]: its name, type, default (the clap attribute's
//! `default_value`), command-line help (the doc comment) and `config.json` form (the serde attribute)
//! are written there once. `pipe train` and `pipe sweep` take the struct as their options
//! (`#[command(flatten)]`), a run writes it as its `config.json`, and `--resume`, `evaluate` and
//! `export` read it back. The seed recipe, [`TrainConfig::default`], is what the command line gives
//! with no option at all. The rest of a setting is its use, and its range check in
//! [`TrainConfig::validate`] (`validate.rs`).
//!
//! - `preset.rs`: [`Preset`]s (named recipes) and [`TrainConfig::with_given`], which lays the
//!   options given on a command line over a preset;
//! - `validate.rs`: the checks made once before any work;
//! - `describe.rs`: the settings line that `pipe train` prints first;
//! - `env.rs`: [`TrainEnv`] and [`ExtractEnv`], the choices of one invocation that are not part of a
//!   run (device, feature cache, runs folder, run name, resume).
//!
//! No libtorch here: the libtorch-free build reads runs through this module.

mod describe;
mod env;
mod preset;
mod validate;

pub use env::{ExtractEnv, TrainDevice, TrainEnv};
pub use preset::{Preset, FINETUNE_BUDGET_SECONDS};
pub use validate::validate_input_size;

use crate::arch::{Arch, Pooling};
use crate::cpu::CpuFeatures;
use crate::data::{LayoutKind, ResizePolicy};
use clap::{Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Default `--data`: the CIFAR-10 image folders that `make setup` extracts.
pub const DEFAULT_DATA: &str = "data/cifar10";
/// Default conv-base weights, written by `pipe weights import` (`make setup`).
pub const DEFAULT_WEIGHTS: &str = "models/vgg16_imagenet.safetensors";
/// Default folder of training runs.
pub const DEFAULT_RUNS_DIR: &str = "models/runs";
/// Default folder of the feature cache.
pub const DEFAULT_CACHE_DIR: &str = "models/cache/features";
/// Number of conv layers in the VGG16 base (the most `--unfreeze` accepts).
pub const VGG16_CONVS: usize = 13;

/// `--time-budget`'s value in seconds: a duration in humantime's notation (`45m`, `1h 30m`, `90s`,
/// `1h30m`), or `off`/`none`/`0` for no budget (0, which [`TrainConfig::budget`] reads as none).
///
/// # Errors
/// A message naming the value when it is neither.
pub fn parse_time_budget(s: &str) -> std::result::Result<f64, String> {
    match s.trim() {
        "off" | "none" | "0" => Ok(0.0),
        t => humantime::parse_duration(t)
            .map(|d| d.as_secs_f64())
            .map_err(|e| format!("{e}; give a duration such as 45m, 1h30m or 90s, or off")),
    }
}

/// Help heading of the data settings.
const DATA: &str = "Data";
/// Help heading of the model and optimisation settings.
const TRAINING: &str = "Training";
/// Help heading of the fine-tuning settings (those that only `--unfreeze N` runs use).
pub const FINE_TUNING: &str = "Fine-tuning (--unfreeze)";

/// A training run's settings, and what the run recorded about its data and weights: exactly the
/// run's `config.json` (field names and order are the file's), and the training options of the
/// command line (each field's doc comment is its `--help` text).
///
/// `Default` is the seed recipe (the Keras transfer-learning job): CIFAR-10, 5,000 training and 1,000
/// test images at 32x32, frozen VGG16 base, SGD lr 1e-4 momentum 0.9, batch 128, 3 epochs, seed 42,
/// the test split as validation. The fields without an option (`#[arg(skip)]`) are *recorded*: filled
/// in when the run starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
pub struct TrainConfig {
    /// Recorded: run name (the run's folder name).
    #[arg(skip)]
    pub name: String,
    /// Recorded: version of pipe that trained it.
    #[arg(skip = env!("CARGO_PKG_VERSION").to_string())]
    pub pipe_version: String,
    /// Dataset, its layout detected: train/<class>/* with test/<class>/* (test/ is held out) or
    /// val/<class>/* (val/ is held out), or both (val/ validates); a single folder of class folders
    /// (pipe splits it, see --val-split and --test-split); or the CIFAR-10 binary release
    /// (cifar-10-batches-bin/ with data_batch_1..5.bin and test_batch.bin). Hidden entries
    /// (.DS_Store, ._*, .ipynb_checkpoints/), __MACOSX/, Thumbs.db and desktop.ini are ignored.
    /// Recorded absolute once the run has started.
    #[arg(long, default_value = DEFAULT_DATA, help_heading = DATA)]
    pub data: PathBuf,
    /// Recorded: the layout detected in `data` (`None` in runs made before layouts were recorded).
    #[arg(skip)]
    #[serde(default)]
    pub layout: Option<LayoutKind>,
    /// Conv-base weights written by `pipe weights import` (made by `make setup`); recorded absolute
    /// once the run has started.
    #[arg(long, default_value = DEFAULT_WEIGHTS, help_heading = DATA)]
    pub weights: PathBuf,
    /// Recorded: SHA-256 fingerprint of the base weights (hex).
    #[arg(skip)]
    pub weights_fingerprint: String,
    /// Recorded: class names, index = label.
    #[arg(skip)]
    pub classes: Vec<String>,
    /// Network input size in pixels (multiple of 32, at most 512): images are resized to it with a
    /// bilinear filter. 32 keeps CIFAR-10's size; 64 upsamples 2x (4x the extraction work, 2,048
    /// features per image); 224 is VGG16's own, for photos (49x the work of 32, 25,088 features per
    /// image).
    #[arg(long, default_value_t = 32, help_heading = DATA)]
    pub input_size: usize,
    /// How images of any shape become --input-size squares: squash (stretch the whole image, as
    /// Keras' load_img) or crop (shorter side to the input size, then the centre square, as
    /// torchvision's Resize + CenterCrop). Recorded in the run; the exported model carries it.
    #[arg(long, default_value_t = ResizePolicy::Squash, value_name = "squash|crop", help_heading = DATA)]
    #[serde(default)]
    pub resize: ResizePolicy,
    /// How the base's last feature map becomes the head's input: flatten (the Keras recipe: every
    /// position of the map, 512·(S/32)² features, 25,088 at 224) or max (global max pooling, then
    /// L2 normalisation: 512 features at any --input-size, each the strongest response of one
    /// channel anywhere in the image; better on photos at 224 and above, and what --preset photos
    /// uses). Built into the exported model. Runs made before it existed read as flatten.
    #[arg(long, value_enum, default_value_t = Pooling::Flatten, value_name = "flatten|max", help_heading = TRAINING)]
    #[serde(default)]
    pub pooling: Pooling,
    /// Recorded: preprocessing description, as in the ONNX metadata.
    #[arg(skip = crate::contract::CAFFE_PREPROCESSING.to_string())]
    pub preprocessing: String,
    /// Recorded: training images used (after the validation hold-out).
    #[arg(skip)]
    pub train_images: usize,
    /// Recorded: test images used.
    #[arg(skip)]
    pub test_images: usize,
    /// Training images: a deterministic class-balanced subset of this size (0 = all).
    #[arg(long, default_value_t = 5000, help_heading = DATA)]
    pub train_limit: usize,
    /// Test images, class-balanced subset of this size (0 = all); also the validation set unless
    /// --val-split is given.
    #[arg(long, default_value_t = 1000, help_heading = DATA)]
    pub test_limit: usize,
    /// Passes over the training set.
    #[arg(long, default_value_t = 3, help_heading = TRAINING)]
    pub epochs: usize,
    /// Mini-batch size of training.
    #[arg(long, default_value_t = 128, help_heading = TRAINING)]
    pub batch_size: usize,
    /// Wall-time budget of a fine-tuning run, from the start of `pipe train` to its last file (e.g.
    /// 45m, 1h30m, 90s; off for none): after the head warm-up, the speed of a few training batches
    /// decides how many epochs fit (at most --epochs), and the schedule is laid over those; an
    /// epoch that would end past the budget is not started. Recorded in seconds; the planned epochs
    /// replace --epochs in the run's config.json.
    #[arg(long, value_name = "TIME", value_parser = parse_time_budget, help_heading = FINE_TUNING)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_budget: Option<f64>,
    /// Optimizer: sgd (with --momentum) or adam (PyTorch defaults: betas 0.9/0.999, eps 1e-8).
    #[arg(long, value_enum, default_value_t = Optimizer::Sgd, help_heading = TRAINING)]
    pub optimizer: Optimizer,
    /// Learning-rate schedule: constant, cosine (anneals to near 0 by the last epoch), step (divides
    /// the rate by 10 every --lr-step-epochs) or onecycle (per batch: warm-up from lr/25 to lr over 30%
    /// of the steps, then down to lr/250,000).
    #[arg(long, value_enum, default_value_t = Schedule::Constant, help_heading = TRAINING)]
    #[serde(default)]
    pub schedule: Schedule,
    /// Epochs between two divisions of the rate by 10 with --schedule step.
    #[arg(long, default_value_t = 5, help_heading = TRAINING)]
    #[serde(default = "TrainConfig::seed_lr_step_epochs")]
    pub lr_step_epochs: usize,
    /// Early stopping: end training when the validation loss has not improved for N epochs.
    #[arg(long, value_name = "N", help_heading = TRAINING)]
    #[serde(default)]
    pub patience: Option<usize>,
    /// Finish with the parameters of the epoch with the lowest validation loss (they are always kept
    /// in best.safetensors) instead of the last epoch's, as Keras' restore_best_weights.
    #[arg(long, help_heading = TRAINING)]
    #[serde(default)]
    pub restore_best: bool,
    /// Hold out this share of each training class (seeded) as the validation set; 0 validates on the
    /// held-out split as the Keras seed does. Default: 0, or 0.15 for a single folder of class folders.
    /// Recorded resolved once the run has started.
    #[arg(long, value_name = "SHARE", help_heading = DATA)]
    #[serde(default)]
    pub val_split: Option<f64>,
    /// For a single folder of class folders: hold out this share of each class (seeded) as the test
    /// split of the closing test accuracy (default 0.15). Every class needs an image in each split;
    /// a class too small is named. Recorded resolved (0 when the dataset has its own held-out split).
    #[arg(long, value_name = "SHARE", help_heading = DATA)]
    #[serde(default)]
    pub test_split: Option<f64>,
    /// Recorded: validation images carved out of the training images.
    #[arg(skip)]
    #[serde(default)]
    pub val_images: usize,
    /// Fine-tune the last N conv layers of VGG16 with the head (1..13; 0 = frozen base with cached
    /// features). Trains on decoded images every epoch: far slower than the frozen base on a CPU.
    #[arg(long, default_value_t = 0, value_name = "N", help_heading = FINE_TUNING)]
    #[serde(default)]
    pub unfreeze: usize,
    /// Augment training images every epoch (needs --unfreeze), as --augment-style says.
    #[arg(long, help_heading = FINE_TUNING)]
    #[serde(default)]
    pub augment: bool,
    /// How --augment changes training images: cifar (random flip and a shift of up to 4 pixels per
    /// 32, for small tiles), photo (random resized crop: a random part of 8% to 100% of the photo's
    /// area, aspect 3/4 to 4/3, resized to the input size; and a random flip), or auto (photo for
    /// --input-size above 64, else cifar). Recorded resolved (never auto) once the run has started.
    #[arg(long, value_enum, default_value_t = AugmentStyle::Auto, help_heading = FINE_TUNING)]
    #[serde(default)]
    pub augment_style: AugmentStyle,
    /// With --unfreeze: arithmetic of the conv layers while fine-tuning. auto = bf16 mixed precision on
    /// a CPU with AMX; on a CPU with AVX512_BF16 but no AMX, five training batches are timed in each
    /// before fine-tuning and bf16 is kept only when it runs at least 1.05x float32's rate; float32
    /// on other CPUs (bf16 is emulated there) and on CUDA. The weights, optimizer, head, loss,
    /// validation, final test predictions and the exported model stay float32 in every case. The
    /// choice is recorded in config.json (absent for a frozen-base run, whose head and features are
    /// always float32). [default: auto]
    #[arg(long, value_enum, value_name = "P", help_heading = FINE_TUNING)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// With --unfreeze: first train the head alone for N epochs on the cached frozen-base features
    /// (seconds), as Keras' fine-tuning guide advises: a random head's large early gradients would
    /// otherwise wreck the pre-trained conv layers. 0 fine-tunes from a random head. Recorded as 0 for
    /// a frozen-base run.
    #[arg(long, default_value_t = 3, value_name = "N", help_heading = FINE_TUNING)]
    #[serde(default)]
    pub head_epochs: usize,
    /// Learning rate of the head warm-up (--head-epochs, constant, the run's optimizer); the
    /// frozen-base recipe's rate for the full training set.
    #[arg(long, default_value = "1e-3", help_heading = FINE_TUNING)]
    #[serde(default)]
    pub head_lr: f64,
    /// Learning rate (of SGD or Adam; the peak rate with --schedule onecycle).
    #[arg(long, default_value = "1e-4", help_heading = TRAINING)]
    pub lr: f64,
    /// SGD momentum, in [0, 1); unused by Adam.
    #[arg(long, default_value_t = 0.9, help_heading = TRAINING)]
    pub momentum: f64,
    /// L2 weight decay (added to the gradient, as PyTorch's weight_decay), 0 or more.
    #[arg(long, default_value_t = 0.0, help_heading = TRAINING)]
    #[serde(default)]
    pub weight_decay: f64,
    /// Label smoothing of the training loss, in [0, 1): the target puts 1 - S on the label and spreads
    /// S over all classes (PyTorch's CrossEntropyLoss(label_smoothing=S)); validation and test losses
    /// stay the plain cross-entropy. Absent from config.json when 0.
    #[arg(long, value_name = "S", default_value_t = 0.0, help_heading = TRAINING)]
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// Weights of the classes in the training loss: none, or auto = inverse class frequency in the
    /// training split, n / (classes × n_class) (scikit-learn's "balanced", Keras' class_weight),
    /// PyTorch's weighted CrossEntropyLoss (the batch's weighted mean). For imbalanced classes;
    /// validation and test losses stay unweighted. Absent from config.json when none.
    #[arg(long, value_enum, value_name = "W", default_value_t = ClassWeights::None, help_heading = TRAINING)]
    #[serde(default, skip_serializing_if = "ClassWeights::is_none")]
    pub class_weights: ClassWeights,
    /// Seed of head initialisation, dropout, shuffling, augmentation and the validation hold-out.
    #[arg(long, default_value_t = 42, help_heading = TRAINING)]
    pub seed: u64,
    /// Recorded: device the run trained on (`cpu`, `cuda:0`).
    #[arg(skip)]
    pub device: String,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for TrainConfig {
    /// The seed recipe: the settings of a command line that gives no option.
    fn default() -> Self {
        command_line_defaults()
    }
}

/// The value of `T`'s options when none is given on the command line: where the defaults of the
/// settings are declared (their clap attributes). Parsing an empty command line fails only for a
/// declaration that clap's own checks refuse (`Cli::command().debug_assert()` in the CLI's tests);
/// clap then prints why and exits.
fn command_line_defaults<T: Args + FromArgMatches>() -> T {
    let matches = T::augment_args(Command::new("pipe")).get_matches_from(["pipe"]);
    T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Optimizer of training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// SGD with momentum (PyTorch `torch.optim.SGD`, dampening 0, not Nesterov).
    #[default]
    Sgd,
    /// Adam (PyTorch `torch.optim.Adam`: betas 0.9 and 0.999, eps 1e-8, L2 weight decay added to the
    /// gradient).
    Adam,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The same learning rate in every epoch.
    #[default]
    Constant,
    /// Cosine annealing over the epochs (PyTorch `CosineAnnealingLR`, `T_max` = epochs, stepped per
    /// epoch): `lr * (1 + cos(pi * (epoch - 1) / epochs)) / 2`.
    Cosine,
    /// Step decay (PyTorch `StepLR`, gamma 0.1): the rate is divided by 10 every `--lr-step-epochs`.
    Step,
    /// One-cycle, stepped per batch (PyTorch `OneCycleLR` defaults without momentum cycling): a cosine
    /// warm-up from lr/25 to lr over the first 30% of the steps, then a cosine decay to lr/250,000.
    #[value(name = "onecycle")]
    #[serde(rename = "onecycle")]
    OneCycle,
}

/// Weights of the classes in the training loss (`--class-weights`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeights {
    /// Every class weighs 1.
    #[default]
    None,
    /// Inverse class frequency in the training split: n / (classes × n_class).
    Auto,
}

impl ClassWeights {
    /// Whether no class is weighted (the default, left out of `config.json`).
    pub fn is_none(&self) -> bool {
        *self == ClassWeights::None
    }
}

/// How `--augment` changes a training image at every epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AugmentStyle {
    /// `photo` when the input size is above [`PHOTO_AUGMENT_MIN_SIZE`], else `cifar`.
    #[default]
    #[value(help = "photo when --input-size is above 64, else cifar")]
    Auto,
    /// For small tiles such as CIFAR-10's: random horizontal flip and a shift of up to 4 pixels per 32
    /// with black padding (torchvision's `RandomHorizontalFlip` + `RandomCrop(32, padding=4)`).
    Cifar,
    /// For photos: random resized crop (a random part of the photo, of a random share of its area and
    /// aspect ratio, resized to the input size; torchvision's `RandomResizedCrop`) and random
    /// horizontal flip, drawn from the photo decoded at a moderate resolution
    /// ([`crate::train::augment`]).
    #[value(
        help = "For photos: random resized crop (a random part of the photo, of a random share \
                    of its area and aspect ratio, resized to the input size; torchvision's \
                    RandomResizedCrop) and random horizontal flip"
    )]
    Photo,
}

/// Input sizes above this get [`AugmentStyle::Photo`] from [`AugmentStyle::Auto`]: 32 and 64 are
/// CIFAR-like tiles (or tiles upsampled), 96 and above photos.
pub const PHOTO_AUGMENT_MIN_SIZE: usize = 64;

impl AugmentStyle {
    /// The style `Auto` stands for at `input_size`; other styles unchanged.
    pub fn resolve(self, input_size: usize) -> AugmentStyle {
        match self {
            AugmentStyle::Auto if input_size > PHOTO_AUGMENT_MIN_SIZE => AugmentStyle::Photo,
            AugmentStyle::Auto => AugmentStyle::Cifar,
            other => other,
        }
    }
}

/// How much faster than float32 bf16 training passes must time for `--precision auto` to pick bf16
/// on a CPU where it times them ([`Precision::faster`]): 1.05. float32 is the exact one, so bf16
/// has to win by a margin; a near tie is no reason to give up precision (a pick, not a measurement:
/// neighbouring virtual machines can move one short timing by more).
pub const BF16_MIN_GAIN: f64 = 1.05;

/// Arithmetic of the conv layers while fine-tuning (`--precision`). Master weights, optimizer state,
/// the head and the loss stay float32 in every case, and so do validation, the final test predictions
/// and the exported model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on a CPU with AMX-BF16 tiles; on a CPU with AVX512_BF16 but no AMX, the faster of the
    /// two in a short timing before fine-tuning; float32 elsewhere and on CUDA.
    #[default]
    Auto,
    /// float32 everywhere.
    Fp32,
    /// bf16 mixed precision: conv weights and activations cast to bfloat16 in the training forward
    /// pass (the casts are differentiable, so the gradients reach the float32 weights).
    Bf16,
}

impl Precision {
    /// The precision a run uses on a CUDA device (`cuda`) or on a CPU with `cpu`'s features, and why
    /// (for the first line of `pipe train`): `auto` is bf16 on a CPU with AMX-BF16 tiles, float32
    /// on CUDA (libtorch's float32 convolutions already use TF32 tensor cores there) and on CPUs
    /// without AVX512_BF16 (where bf16 is emulated). With AVX512_BF16 but no AMX neither is known to
    /// be faster (on a 2-core Xeon of that kind the finetune preset's first batches ran at 66 images/s
    /// in bf16 against 102 in float32, on a 2-core Zen 4 EPYC at 196-203 against 96-103), so
    /// `auto` stays `Auto` here: the run times both before fine-tuning and keeps the faster
    /// (`pipe::train::finetune::time_precisions`, deciding by [`Precision::faster`]).
    pub fn resolve(self, cuda: bool, cpu: CpuFeatures) -> (Precision, String) {
        match self {
            Precision::Auto if cuda => (Precision::Fp32, "auto: float32 on CUDA".into()),
            Precision::Auto if cpu.amx_bf16 => {
                (Precision::Bf16, "auto: this CPU has AMX-BF16 tiles".into())
            }
            Precision::Auto if cpu.avx512_bf16 => (
                Precision::Auto,
                "auto: this CPU has AVX512_BF16 but no AMX, so float32 and bf16 are timed before \
                 fine-tuning and the faster trains"
                    .into(),
            ),
            Precision::Auto => (
                Precision::Fp32,
                "auto: this CPU has no AVX512_BF16, where bf16 would be emulated and slower".into(),
            ),
            Precision::Bf16 if !cuda && !cpu.avx512_bf16 => (
                Precision::Bf16,
                "as asked; this CPU has no AVX512_BF16, so bf16 is emulated and slow".into(),
            ),
            p => (p, "as asked".into()),
        }
    }

    /// What `auto` keeps after timing training passes at `fp32` and `bf16` images per second: bf16
    /// only when it is at least [`BF16_MIN_GAIN`] times as fast.
    pub fn faster(fp32: f64, bf16: f64) -> Precision {
        if bf16 >= BF16_MIN_GAIN * fp32 {
            Precision::Bf16
        } else {
            Precision::Fp32
        }
    }

    /// How the terminal lines of `pipe train` and `pipe lr-find` name it: `float32`, `bf16 mixed
    /// precision`, or `precision auto` while a timing is still to decide.
    pub fn label(self) -> &'static str {
        match self {
            Precision::Auto => "precision auto",
            Precision::Fp32 => "float32",
            Precision::Bf16 => "bf16 mixed precision",
        }
    }

    /// The name used in `config.json` and on the command line (`--precision`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl TrainConfig {
    /// The seed recipe (the same as `Default`).
    pub fn seed_recipe() -> Self {
        Self::default()
    }

    /// The seed recipe's `lr_step_epochs`, for a `config.json` written before the setting existed.
    fn seed_lr_step_epochs() -> usize {
        Self::default().lr_step_epochs
    }

    /// The settings of the head warm-up that precedes fine-tuning: `head_epochs` epochs at the
    /// constant rate `head_lr`, without early stopping or restore-best; everything else (optimizer,
    /// batch size, momentum, weight decay, seed, data) is the run's.
    pub fn head_warm_up(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.head_epochs,
            lr: self.head_lr,
            schedule: Schedule::Constant,
            patience: None,
            restore_best: false,
            ..self.clone()
        }
    }

    /// The configuration recorded when a new run `name` starts on `device` (`cpu`, `cuda:0`) with the
    /// fine-tuning `precision` chosen for it ([`Precision::resolve`]): the data and weights paths made
    /// absolute (so that the run can be evaluated and exported from any folder), this pipe's version,
    /// for a frozen-base run no warm-up epochs, no precision and no time budget, and the augmentation style resolved
    /// ([`AugmentStyle::resolve`]).
    pub fn started(self, name: &str, device: &str, precision: Precision) -> TrainConfig {
        let absolute = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
        let tuned = self.unfreeze > 0;
        TrainConfig {
            name: name.into(),
            pipe_version: env!("CARGO_PKG_VERSION").into(),
            data: absolute(self.data.clone()),
            weights: absolute(self.weights.clone()),
            head_epochs: if tuned { self.head_epochs } else { 0 },
            time_budget: self.time_budget.filter(|_| tuned),
            precision: tuned.then_some(precision),
            augment_style: self.augment_style.resolve(self.input_size),
            device: device.into(),
            ..self
        }
    }

    /// The network this configuration trains, for `num_classes` classes: VGG16 at `input_size`
    /// with the head after `pooling`.
    pub fn arch(&self, num_classes: usize) -> Arch {
        Arch::vgg16_pooled(self.input_size, num_classes, self.pooling)
    }

    /// The wall-time budget (`--time-budget`) in seconds, when there is one: `None` for no budget
    /// and for a budget of 0 (`off`).
    pub fn budget(&self) -> Option<f64> {
        self.time_budget.filter(|&s| s > 0.0)
    }

    /// The validation share: `val_split`, 0 when not given.
    pub fn val_share(&self) -> f64 {
        self.val_split.unwrap_or(0.0)
    }

    /// Whether the run validates on images other than the test split's (a `--val-split` share of
    /// the training images, or the `val/` folder of a train/ + val/ + test/ dataset): then the test
    /// split is used only at the end. For a configuration whose shares are resolved
    /// ([`TrainConfig::with_shares`]).
    pub fn holds_out_validation(&self) -> bool {
        self.val_share() > 0.0 || self.layout == Some(LayoutKind::TrainValTest)
    }

    /// The configuration with the dataset's `layout` and the validation and test shares it gets
    /// (`val_share`, `test_share`: from [`crate::data::SplitOptions::shares`]) recorded.
    pub fn with_shares(self, layout: LayoutKind, (val_share, test_share): (f64, f64)) -> Self {
        TrainConfig {
            layout: Some(layout),
            val_split: Some(val_share),
            test_split: Some(test_share),
            ..self
        }
    }

    /// How to make the run's splits from its data: shares, seed and limits.
    pub fn split_options(&self) -> crate::data::SplitOptions {
        crate::data::SplitOptions {
            val_share: self.val_split,
            test_share: self.test_split,
            seed: self.seed,
            train_limit: self.train_limit,
            test_limit: self.test_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed recipe, read off the command line's defaults, is the Keras job's.
    #[test]
    fn the_seed_recipe_is_the_command_line_without_options() {
        let c = TrainConfig::default();
        assert_eq!(c.data, PathBuf::from(DEFAULT_DATA));
        assert_eq!(c.weights, PathBuf::from(DEFAULT_WEIGHTS));
        assert_eq!(
            (c.train_limit, c.test_limit, c.input_size),
            (5000, 1000, 32)
        );
        assert_eq!(
            (c.resize, c.pooling),
            (ResizePolicy::Squash, Pooling::Flatten)
        );
        assert_eq!((c.optimizer, c.lr, c.momentum), (Optimizer::Sgd, 1e-4, 0.9));
        assert_eq!((c.epochs, c.batch_size, c.seed), (3, 128, 42));
        assert_eq!((c.schedule, c.lr_step_epochs), (Schedule::Constant, 5));
        assert_eq!((c.patience, c.restore_best), (None, false));
        assert_eq!((c.val_split, c.test_split), (None, None));
        assert_eq!((c.unfreeze, c.augment, c.precision), (0, false, None));
        assert_eq!(
            (c.augment_style, c.head_epochs, c.head_lr),
            (AugmentStyle::Auto, 3, 1e-3)
        );
        assert_eq!((c.weight_decay, c.label_smoothing), (0.0, 0.0));
        // The recorded fields start empty, but for the version and the preprocessing.
        assert_eq!((c.name.as_str(), c.device.as_str()), ("", ""));
        assert_eq!(c.pipe_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(c.preprocessing, crate::contract::CAFFE_PREPROCESSING);
        assert!(c.classes.is_empty() && c.layout.is_none());
    }

    #[test]
    fn warm_up_and_started_run_are_derived_from_the_config() {
        let c = TrainConfig::finetune();
        let w = c.head_warm_up();
        assert_eq!((w.epochs, w.lr, w.schedule), (5, 1e-3, Schedule::Constant));
        assert_eq!((w.patience, w.restore_best), (None, false));
        assert_eq!((w.batch_size, w.weight_decay, w.seed), (128, 5e-4, 42));
        // A frozen-base run records no warm-up epochs; a fine-tuning run keeps them.
        let frozen = TrainConfig::default().started("r", "cpu", Precision::Bf16);
        assert_eq!((frozen.head_epochs, frozen.name.as_str()), (0, "r"));
        assert_eq!((frozen.device.as_str(), frozen.precision), ("cpu", None));
        let tuned = c.started("r", "cpu", Precision::Bf16);
        assert_eq!(
            (tuned.head_epochs, tuned.precision),
            (5, Some(Precision::Bf16))
        );
    }

    /// `config.json` keeps its field names and order, and reads back to the same value.
    #[test]
    fn config_json_round_trips_with_its_field_order() {
        let c = TrainConfig {
            label_smoothing: 0.1,
            ..TrainConfig::finetune()
        }
        .started("r", "cpu", Precision::Fp32);
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&text).unwrap(), c);
        let order = [
            "name",
            "pipe_version",
            "data",
            "layout",
            "weights",
            "weights_fingerprint",
            "classes",
            "input_size",
            "resize",
            "pooling",
            "preprocessing",
            "train_images",
            "test_images",
            "train_limit",
            "test_limit",
            "epochs",
            "batch_size",
            "optimizer",
            "schedule",
            "lr_step_epochs",
            "patience",
            "restore_best",
            "val_split",
            "test_split",
            "val_images",
            "unfreeze",
            "augment",
            "augment_style",
            "precision",
            "head_epochs",
            "head_lr",
            "lr",
            "momentum",
            "weight_decay",
            "label_smoothing",
            "seed",
            "device",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.contains("\"schedule\":\"onecycle\""), "{text}");
        assert!(text.contains("\"precision\":\"fp32\""), "{text}");
        // A frozen-base run's config.json has no precision (its head and features are float32), and
        // a config.json without the field reads back as one.
        let frozen = TrainConfig::default().started("r", "cpu", Precision::Bf16);
        let text = serde_json::to_string(&frozen).unwrap();
        assert!(!text.contains("precision"), "{text}");
        assert!(!text.contains("label_smoothing"), "{text}");
        assert_eq!(serde_json::from_str::<TrainConfig>(&text).unwrap(), frozen);
    }

    /// `--precision auto` is bf16 on a CPU with AMX-BF16, left to a timing with AVX512_BF16 alone,
    /// float32 on other CPUs and on CUDA; explicit choices are kept, with a warning for emulated
    /// bf16.
    #[test]
    fn precision_auto_is_bf16_with_amx_and_timed_with_avx512_bf16_alone() {
        let none = CpuFeatures::default();
        let avx = CpuFeatures {
            avx512_bf16: true,
            ..CpuFeatures::default()
        };
        let amx = CpuFeatures {
            avx512_bf16: true,
            amx_bf16: true,
            ..CpuFeatures::default()
        };
        let auto = |cuda, cpu| Precision::Auto.resolve(cuda, cpu);
        assert_eq!(auto(false, amx).0, Precision::Bf16);
        assert!(auto(false, amx).1.contains("AMX-BF16"));
        assert_eq!(auto(false, avx).0, Precision::Auto);
        assert!(
            auto(false, avx).1.contains("no AMX") && auto(false, avx).1.contains("timed"),
            "{}",
            auto(false, avx).1
        );
        assert_eq!(auto(true, avx).0, Precision::Fp32);
        assert_eq!(auto(false, none).0, Precision::Fp32);
        assert!(auto(false, none).1.contains("no AVX512_BF16"));
        assert_eq!(auto(true, amx).0, Precision::Fp32);
        assert_eq!(Precision::Fp32.resolve(false, amx).0, Precision::Fp32);
        assert_eq!(
            Precision::Bf16.resolve(false, avx),
            (Precision::Bf16, "as asked".into())
        );
        let emulated = Precision::Bf16.resolve(false, none);
        assert_eq!(emulated.0, Precision::Bf16);
        assert!(emulated.1.contains("emulated"));
        assert_eq!(Precision::Bf16.resolve(true, none).1, "as asked");
        assert_eq!(Precision::Bf16.name(), "bf16");
    }

    /// The timing keeps bf16 only at 1.05x float32's rate or more (hand-picked rates either side).
    #[test]
    fn a_timing_keeps_bf16_only_when_it_is_clearly_faster() {
        assert_eq!(Precision::faster(100.0, 104.9), Precision::Fp32);
        assert_eq!(Precision::faster(100.0, 105.0), Precision::Bf16);
        assert_eq!(Precision::faster(102.0, 66.0), Precision::Fp32);
        assert_eq!(Precision::faster(60.0, 90.0), Precision::Bf16);
    }

    /// A `config.json` of an earlier pipe (no layout, test split, resize, augmentation style or step
    /// epochs; the validation share a number) still reads: squash, the share given, no test share,
    /// the seed recipe's step epochs.
    #[test]
    fn config_json_of_earlier_runs_still_reads() {
        let mut old =
            serde_json::to_value(TrainConfig::finetune().started("r", "cpu", Precision::Fp32))
                .unwrap();
        let map = old.as_object_mut().unwrap();
        for k in [
            "layout",
            "test_split",
            "resize",
            "augment_style",
            "lr_step_epochs",
        ] {
            map.remove(k);
        }
        map.insert("val_split".into(), serde_json::json!(0.2));
        let c: TrainConfig = serde_json::from_value(old).unwrap();
        assert_eq!(
            (c.val_split, c.test_split, c.layout),
            (Some(0.2), None, None)
        );
        assert_eq!(
            (c.resize, c.augment_style),
            (ResizePolicy::Squash, AugmentStyle::Auto)
        );
        assert_eq!(c.lr_step_epochs, 5);
        assert_eq!(c.augment_style.resolve(c.input_size), AugmentStyle::Cifar);
    }

    /// Photo augmentation is the default above 64 pixels.
    #[test]
    fn augment_style_resolves_by_input_size() {
        assert_eq!(AugmentStyle::Auto.resolve(64), AugmentStyle::Cifar);
        assert_eq!(AugmentStyle::Auto.resolve(96), AugmentStyle::Photo);
        assert_eq!(AugmentStyle::Cifar.resolve(224), AugmentStyle::Cifar);
    }
}
