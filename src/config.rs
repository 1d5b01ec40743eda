//! The configuration of a training run: [`TrainConfig`], the one shape of a run's settings. The command
//! line fills it (a [`Preset`] gives the starting values, [`Overrides`] the options given explicitly),
//! [`TrainConfig::validate`] checks it once before any work, and it is written as the run's
//! `config.json`, which `--resume`, `evaluate` and `export` read back. Choices of one invocation that
//! are not part of the run (device, cache, progress, runs folder, ...) are a [`TrainEnv`].
//!
//! No libtorch here: the libtorch-free build reads runs through this module.

use crate::arch::{Arch, Pooling};
use crate::data::{LayoutKind, ResizePolicy};
use crate::error::{Error, Result};
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

/// A training run's settings, and what the run recorded about its data and weights: exactly the
/// run's `config.json` (field names and order are the file's).
///
/// `Default` is the seed recipe (the Keras transfer-learning job): CIFAR-10, 5,000 training and 1,000
/// test images at 32x32, frozen VGG16 base, SGD lr 1e-4 momentum 0.9, batch 128, 3 epochs, seed 42,
/// the test split as validation. The fields marked *recorded* are filled in when the run starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// *Recorded*: run name (the run's folder name).
    pub name: String,
    /// *Recorded*: version of pipe that trained it.
    pub pipe_version: String,
    /// `--data`: dataset root (`train/` with `test/` and/or `val/` class folders, a single folder of
    /// class folders, or the CIFAR-10 binary release); absolute once the run has started.
    pub data: PathBuf,
    /// *Recorded*: the layout detected in `data` (`None` in runs made before layouts were recorded).
    #[serde(default)]
    pub layout: Option<LayoutKind>,
    /// Conv-base weights file (safetensors, see `pipe weights import`); absolute once started.
    pub weights: PathBuf,
    /// *Recorded*: SHA-256 fingerprint of the base weights (hex).
    pub weights_fingerprint: String,
    /// *Recorded*: class names, index = label.
    pub classes: Vec<String>,
    /// Side of the square network input, pixels: a multiple of 32 (VGG16's five 2x2 poolings), at
    /// most 512. 32 keeps CIFAR-10's size; 64 upsamples 2x and gives 2,048 features per image.
    pub input_size: usize,
    /// How images of any aspect ratio become `input_size` squares (`squash`: stretch the whole image,
    /// Keras' `load_img`; `crop`: shorter side to `input_size`, then the centre square, torchvision's
    /// `Resize` + `CenterCrop`); written into the exported model's metadata, where `pipe infer` reads it.
    #[serde(default)]
    pub resize: ResizePolicy,
    /// How the base's last map becomes the head's input ([`Pooling`]: `flatten`, the Keras recipe,
    /// or `max`, global max pooling L2-normalised to 512 features at any input size); built into the
    /// exported graph. Runs made before it existed read as `flatten`.
    #[serde(default)]
    pub pooling: Pooling,
    /// Preprocessing description (`crate::contract::CAFFE_PREPROCESSING`), as in the ONNX metadata.
    pub preprocessing: String,
    /// *Recorded*: training images used (after the validation hold-out).
    pub train_images: usize,
    /// *Recorded*: test images used.
    pub test_images: usize,
    /// `--train-limit`: a class-balanced subset of the training images of this size (0 = all).
    pub train_limit: usize,
    /// `--test-limit`: a class-balanced subset of the test images of this size (0 = all).
    pub test_limit: usize,
    /// Passes over the training set.
    pub epochs: usize,
    /// Mini-batch size of training.
    pub batch_size: usize,
    /// Optimizer.
    pub optimizer: Optimizer,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: Schedule,
    /// Epochs between two divisions of the rate by 10 under [`Schedule::Step`].
    #[serde(default = "default_lr_step_epochs")]
    pub lr_step_epochs: usize,
    /// Early stopping: end training when the validation loss has not improved for this many epochs
    /// (`None` = train all epochs).
    #[serde(default)]
    pub patience: Option<usize>,
    /// End with the parameters of the epoch with the lowest validation loss (Keras'
    /// `restore_best_weights`) instead of the last epoch's.
    #[serde(default)]
    pub restore_best: bool,
    /// `--val-split`: share of each training class held out for validation, class-stratified and
    /// seeded (0 = the held-out split validates, as in the Keras seed). `None`: the layout's default,
    /// 0 for split folders and the binary release, [`crate::data::DEFAULT_VAL_SHARE`] for a single folder of class
    /// folders. Recorded resolved once the run has started.
    #[serde(default)]
    pub val_split: Option<f64>,
    /// `--test-split`: share of each class held out as the test split; only for a single folder of
    /// class folders (`None`: [`crate::data::DEFAULT_TEST_SHARE`] there). Recorded resolved (0 when the dataset
    /// has its own held-out split).
    #[serde(default)]
    pub test_split: Option<f64>,
    /// *Recorded*: validation images carved out of the training images.
    #[serde(default)]
    pub val_images: usize,
    /// Conv layers fine-tuned with the head, counted from the last (0 = frozen base on cached
    /// features; at most [`VGG16_CONVS`]).
    #[serde(default)]
    pub unfreeze: usize,
    /// Augment training images (needs `unfreeze`), as `augment_style` says.
    #[serde(default)]
    pub augment: bool,
    /// How `augment` changes training images (see [`AugmentStyle`]); recorded resolved (never
    /// `auto`) once the run has started.
    #[serde(default)]
    pub augment_style: AugmentStyle,
    /// With `unfreeze`: the arithmetic of the conv layers while fine-tuning (`--precision`). `auto` on
    /// the command line; a started run records what was chosen (`fp32` or `bf16`). Absent (`None`) for
    /// a frozen-base run, whose head and features are always float32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// With `unfreeze`: epochs of head-only training on frozen-base features before fine-tuning (a
    /// random head's large early gradients would wreck the pre-trained convs). Recorded as 0 for a
    /// frozen-base run.
    #[serde(default)]
    pub head_epochs: usize,
    /// Learning rate of the head warm-up (constant, the run's optimizer).
    #[serde(default)]
    pub head_lr: f64,
    /// Learning rate (the peak rate under a schedule).
    pub lr: f64,
    /// SGD momentum, in [0, 1); unused by Adam.
    pub momentum: f64,
    /// L2 weight decay added to the gradient (PyTorch's `weight_decay`), >= 0.
    #[serde(default)]
    pub weight_decay: f64,
    /// Label smoothing of the training loss (PyTorch's `CrossEntropyLoss(label_smoothing=...)`), in
    /// [0, 1): the target puts `1 - s` on the label and spreads `s` over all classes. Validation and
    /// test losses stay the plain cross-entropy. Absent from `config.json` when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// Seed of initialisation, dropout, shuffling, augmentation and the validation hold-out.
    pub seed: u64,
    /// *Recorded*: device the run trained on (`cpu`, `cuda:0`).
    pub device: String,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn default_lr_step_epochs() -> usize {
    5
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

/// Arithmetic of the conv layers while fine-tuning (`--precision`). Master weights, optimizer state,
/// the head and the loss stay float32 in every case, and so do validation, the final test predictions
/// and the exported model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on a CPU with AVX512_BF16 (or AMX), float32 otherwise and on CUDA.
    #[default]
    Auto,
    /// float32 everywhere.
    Fp32,
    /// bf16 mixed precision: conv weights and activations cast to bfloat16 in the training forward
    /// pass (the casts are differentiable, so the gradients reach the float32 weights).
    Bf16,
}

/// What the CPU offers for bf16 arithmetic, read at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuBf16 {
    /// AVX512_BF16: bf16 dot products in AVX-512 registers (oneDNN's `avx512_core_bf16` kernels).
    pub avx512_bf16: bool,
    /// AMX-BF16 tiles (oneDNN's `avx512_core_amx` kernels).
    pub amx_bf16: bool,
}

impl CpuBf16 {
    /// The features of the CPU this process runs on.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // AMX-BF16 is CPUID leaf 7, sub-leaf 0, EDX bit 22 (`is_x86_feature_detected!` for AMX is
            // not stable Rust); only reported, since every CPU with AMX also has AVX512_BF16.
            let amx = std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 22) != 0;
            CpuBf16 {
                avx512_bf16: std::arch::is_x86_feature_detected!("avx512bf16"),
                amx_bf16: amx,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        CpuBf16::default()
    }
}

impl Precision {
    /// The precision a run uses on a CUDA device (`cuda`) or on a CPU with `cpu`'s features, and why
    /// (for the first line of `pipe train`): `auto` is bf16 where the CPU computes bf16 natively,
    /// float32 elsewhere (on CUDA, libtorch's float32 convolutions already use TF32 tensor cores).
    pub fn resolve(self, cuda: bool, cpu: CpuBf16) -> (Precision, String) {
        let native = if cpu.amx_bf16 {
            "this CPU has AVX512_BF16 and AMX-BF16"
        } else {
            "this CPU has AVX512_BF16"
        };
        match self {
            Precision::Auto if cuda => (Precision::Fp32, "auto: float32 on CUDA".into()),
            Precision::Auto if cpu.avx512_bf16 => (Precision::Bf16, format!("auto: {native}")),
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

    /// The name used in `config.json` and messages.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Named training recipes (`pipe train --preset`); [`Preset::config`] gives each one's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Fine-tune the whole VGG16 with augmentation (see [`TrainConfig::finetune`]).
    #[value(help = "Fine-tune the whole VGG16 on CIFAR-10 with augmentation (settings above)")]
    Finetune,
    /// A few hundred photos of one's own classes (see [`TrainConfig::photos`]).
    #[value(help = "A few hundred photos of your own classes at 384 pixels (settings above)")]
    Photos,
}

impl Preset {
    /// The recipe's settings (before explicit options are applied with [`Overrides::apply`]).
    pub fn config(self) -> TrainConfig {
        match self {
            Preset::Finetune => TrainConfig::finetune(),
            Preset::Photos => TrainConfig::photos(),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            name: String::new(),
            pipe_version: env!("CARGO_PKG_VERSION").into(),
            data: PathBuf::from(DEFAULT_DATA),
            layout: None,
            weights: PathBuf::from(DEFAULT_WEIGHTS),
            weights_fingerprint: String::new(),
            classes: Vec::new(),
            input_size: 32,
            resize: ResizePolicy::Squash,
            pooling: Pooling::Flatten,
            preprocessing: crate::contract::CAFFE_PREPROCESSING.into(),
            train_images: 0,
            test_images: 0,
            train_limit: 5000,
            test_limit: 1000,
            epochs: 3,
            batch_size: 128,
            optimizer: Optimizer::Sgd,
            schedule: Schedule::Constant,
            lr_step_epochs: default_lr_step_epochs(),
            patience: None,
            restore_best: false,
            val_split: None,
            test_split: None,
            val_images: 0,
            unfreeze: 0,
            augment: false,
            augment_style: AugmentStyle::Auto,
            precision: None,
            head_epochs: 3,
            head_lr: 1e-3,
            lr: 1e-4,
            momentum: 0.9,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            seed: 42,
            device: String::new(),
        }
    }
}

impl TrainConfig {
    /// The seed recipe (the same as `Default`).
    pub fn seed_recipe() -> Self {
        Self::default()
    }

    /// The `finetune` recipe: all 13 convs and the head after 5 head-only epochs at lr 1e-3, with
    /// augmentation; SGD peak lr 1e-3 momentum 0.9 weight decay 5e-4, one-cycle, 20 epochs, batch 128;
    /// the full training and test sets, 10% of training held out for validation, patience 4, restore
    /// best. Chosen by measurement on the full CIFAR-10 (README, "Training results"): a peak rate of
    /// 1e-3 beat 1e-4 by 8 points after 3 epochs, and fine-tuning all 13 convs beat leaving blocks 1-2
    /// frozen at equal epochs; the full-data run took 37 minutes on a 2-core CPU with AMX-BF16 (early
    /// stopping ended it after 17 of the 20 epochs; the run estimated 43 minutes for all 20).
    pub fn finetune() -> Self {
        TrainConfig {
            unfreeze: VGG16_CONVS,
            augment: true,
            head_epochs: 5,
            optimizer: Optimizer::Sgd,
            lr: 1e-3,
            head_lr: 1e-3,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: Schedule::OneCycle,
            epochs: 20,
            batch_size: 128,
            train_limit: 0,
            test_limit: 0,
            val_split: Some(0.1),
            patience: Some(4),
            restore_best: true,
            ..Self::default()
        }
    }

    /// The `photos` recipe, for a few hundred photos of one's own classes: input 384 (above VGG16's
    /// own 224), shorter side + centre crop, all images, the frozen base, global max pooling with L2
    /// normalisation ([`Pooling::Max`]) and the dense head (SGD lr 3e-3 momentum 0.9, batch 32, 10
    /// epochs). On the ants-and-bees photos it measured best of the variations in the README's
    /// training results (0.953 mean over 10 seeds, against 0.922 for the flattened head at 224).
    /// With `unfreeze` and `augment`, photo augmentation ([`AugmentStyle::Photo`], which `auto`
    /// resolves to above 64 pixels).
    pub fn photos() -> Self {
        TrainConfig {
            input_size: 384,
            resize: ResizePolicy::Crop,
            pooling: Pooling::Max,
            train_limit: 0,
            test_limit: 0,
            epochs: 10,
            batch_size: 32,
            lr: 3e-3,
            ..Self::default()
        }
    }

    /// Checks every setting before any work: epochs and batch size at least 1, a positive finite
    /// learning rate (and head warm-up rate when a warm-up runs), momentum in [0, 1), patience and
    /// step epochs at least 1, a non-negative weight decay, the input size, `unfreeze` at most 13,
    /// `augment` only with `unfreeze`, `val_split` and `test_split` in [0, 1).
    ///
    /// # Errors
    /// [`Error::Usage`] naming the command-line option.
    pub fn validate(&self) -> Result<()> {
        self.validate_optimisation()?;
        validate_input_size(self.input_size)?;
        if self.unfreeze > VGG16_CONVS {
            return Err(Error::Usage(format!(
                "--unfreeze must be between 0 and {VGG16_CONVS} (conv layers of VGG16), got {}",
                self.unfreeze
            )));
        }
        if self.augment && self.unfreeze == 0 {
            return Err(Error::Usage(
                "--augment needs --unfreeze N: with a frozen base the features are extracted once and \
                 cached, so augmented images would never be seen"
                    .into(),
            ));
        }
        for (flag, share) in [
            ("--val-split", self.val_split),
            ("--test-split", self.test_split),
        ] {
            if share.is_some_and(|v| !(0.0..1.0).contains(&v)) {
                return Err(Error::Usage(format!(
                    "{flag} must be between 0 and 1 (0 included, 1 excluded), got {}",
                    share.unwrap_or_default()
                )));
            }
        }
        if self.unfreeze > 0 && self.head_epochs > 0 && !positive(self.head_lr) {
            return Err(Error::Usage(format!(
                "--head-lr must be a positive number, got {}",
                self.head_lr
            )));
        }
        Ok(())
    }

    /// The optimisation checks of [`TrainConfig::validate`].
    fn validate_optimisation(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::Usage(
                "--epochs and --batch-size must be at least 1".into(),
            ));
        }
        if !positive(self.lr) {
            return Err(Error::Usage(format!(
                "--lr must be a positive number, got {}",
                self.lr
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::Usage(format!(
                "--momentum must be in [0, 1), got {}",
                self.momentum
            )));
        }
        if self.patience == Some(0) {
            return Err(Error::Usage(
                "--patience must be at least 1 (epochs without improvement before stopping)".into(),
            ));
        }
        if self.lr_step_epochs == 0 {
            return Err(Error::Usage("--lr-step-epochs must be at least 1".into()));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::Usage(format!(
                "--weight-decay must be zero or positive, got {}",
                self.weight_decay
            )));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::Usage(format!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            )));
        }
        Ok(())
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
    /// for a frozen-base run no warm-up epochs and no precision, and the augmentation style resolved
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
            precision: tuned.then_some(precision),
            augment_style: self.augment_style.resolve(self.input_size),
            device: device.into(),
            ..self
        }
    }

    /// One line echoing the configuration at the start of training, on `device` (`cpu`, `cuda:0`);
    /// a fine-tuning run also names its precision and `why` it was chosen.
    pub fn describe(&self, device: &str, why: &str) -> String {
        let opt = match self.optimizer {
            Optimizer::Sgd => format!("SGD lr {} momentum {}", self.lr, self.momentum),
            Optimizer::Adam => format!("Adam lr {}", self.lr),
        };
        let schedule = match self.schedule {
            Schedule::Constant => String::new(),
            Schedule::Cosine => ", cosine schedule".into(),
            Schedule::Step => format!(
                ", lr /10 every {}",
                crate::util::plural(self.lr_step_epochs, "epoch")
            ),
            Schedule::OneCycle => ", one-cycle schedule".into(),
        };
        let val = match self.val_share() {
            v if v > 0.0 => format!("validation {:.0}% of train", v * 100.0),
            _ if self.layout == Some(LayoutKind::TrainValTest) => "validation = val/".into(),
            _ => "validation = test split".into(),
        };
        let test = match self.test_split {
            Some(t) if t > 0.0 => format!(", test {:.0}% of each class", t * 100.0),
            _ => String::new(),
        };
        let stop = self
            .patience
            .map(|p| format!(", early stopping (patience {p})"))
            .unwrap_or_default();
        let best = if self.restore_best {
            ", restore best"
        } else {
            ""
        };
        let smoothing = if self.label_smoothing > 0.0 {
            format!(", label smoothing {}", self.label_smoothing)
        } else {
            String::new()
        };
        let head = match self.pooling {
            Pooling::Flatten => "dense head",
            Pooling::Max => "global max pooling (L2-normalised) + dense head",
        };
        let model = if self.unfreeze > 0 {
            format!(
                "VGG16 with its last {} conv layers fine-tuned + {head}{}, {} ({why})",
                self.unfreeze,
                match (self.augment, self.augment_style.resolve(self.input_size)) {
                    (false, _) => "",
                    (true, AugmentStyle::Photo) =>
                        ", photo augmentation (random resized crops, flips)",
                    (true, _) => ", augmented images",
                },
                match self.precision.unwrap_or_default() {
                    Precision::Bf16 => "bf16 mixed precision",
                    Precision::Fp32 => "float32",
                    Precision::Auto => "precision auto",
                }
            )
        } else {
            format!("VGG16 frozen base + {head}")
        };
        format!(
            "pipe train: data {}, {} train / {} test images (0 = all), {val}{test}, input {}x{} \
             ({}); {model} on {device}; {opt} weight decay {}{smoothing}{schedule}, batch {}, \
             {}{stop}{best}, seed {}",
            self.data.display(),
            self.train_limit,
            self.test_limit,
            self.input_size,
            self.input_size,
            self.resize,
            self.weight_decay,
            self.batch_size,
            crate::util::plural(self.epochs, "epoch"),
            self.seed
        )
    }
}

impl TrainConfig {
    /// The network this configuration trains, for `num_classes` classes: VGG16 at `input_size`
    /// with the head after `pooling`.
    pub fn arch(&self, num_classes: usize) -> Arch {
        Arch::vgg16_pooled(self.input_size, num_classes, self.pooling)
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

fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// Checks `--input-size`: a positive multiple of 32 (VGG16's five 2x2 poolings), at most 512.
///
/// # Errors
/// [`Error::Usage`].
pub fn validate_input_size(size: usize) -> Result<()> {
    if size == 0 || !size.is_multiple_of(32) || size > 512 {
        return Err(Error::Usage(format!(
            "--input-size must be a multiple of 32 between 32 and 512, got {size}"
        )));
    }
    Ok(())
}

/// Declares [`Overrides`]: one `Option` per setting that the command line can give.
macro_rules! overrides {
    ($($(#[$doc:meta])* $field:ident: $ty:ty,)*) => {
        /// Settings given explicitly (on the command line), each `Some` replacing the value of the
        /// preset (or of the seed recipe) in [`Overrides::apply`]. Same names and units as
        /// [`TrainConfig`]'s fields.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Overrides {
            $($(#[$doc])* pub $field: Option<$ty>,)*
        }

        impl Overrides {
            /// `config` with every given setting replaced.
            pub fn apply(self, mut config: TrainConfig) -> TrainConfig {
                $(if let Some(v) = self.$field {
                    config.$field = v;
                })*
                config
            }
        }
    };
}

overrides! {
    /// `--data`.
    data: PathBuf,
    /// `--weights`.
    weights: PathBuf,
    /// `--train-limit`.
    train_limit: usize,
    /// `--test-limit`.
    test_limit: usize,
    /// `--input-size`.
    input_size: usize,
    /// `--epochs`.
    epochs: usize,
    /// `--batch-size`.
    batch_size: usize,
    /// `--optimizer`.
    optimizer: Optimizer,
    /// `--lr`.
    lr: f64,
    /// `--momentum`.
    momentum: f64,
    /// `--weight-decay`.
    weight_decay: f64,
    /// `--label-smoothing`.
    label_smoothing: f64,
    /// `--schedule`.
    schedule: Schedule,
    /// `--lr-step-epochs`.
    lr_step_epochs: usize,
    /// `--val-split`.
    val_split: Option<f64>,
    /// `--test-split`.
    test_split: Option<f64>,
    /// `--resize`.
    resize: ResizePolicy,
    /// `--pooling`.
    pooling: Pooling,
    /// `--augment-style`.
    augment_style: AugmentStyle,
    /// `--patience`.
    patience: Option<usize>,
    /// `--restore-best`.
    restore_best: bool,
    /// `--unfreeze`.
    unfreeze: usize,
    /// `--augment`.
    augment: bool,
    /// `--precision`.
    precision: Option<Precision>,
    /// `--head-epochs`.
    head_epochs: usize,
    /// `--head-lr`.
    head_lr: f64,
    /// `--seed`.
    seed: u64,
}

/// Device choice for training and evaluation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainDevice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA GPU (an error when there is none).
    Cuda,
}

/// Choices of one `train`, `evaluate` or `sweep` invocation that are not part of a run's
/// configuration: they do not change its results (a resumed run may make other choices).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainEnv {
    /// Device to compute on.
    pub device: TrainDevice,
    /// Folder of runs (`models/runs`).
    pub runs_dir: PathBuf,
    /// Run name (default: UTC timestamp); with `resume`, the run to continue (default: the most
    /// recent unfinished one).
    pub name: Option<String>,
    /// Continue an unfinished run from its last checkpoint (its `config.json` wins over the
    /// configuration given).
    pub resume: bool,
    /// Feature cache folder (`None` = `--no-cache`).
    pub cache_dir: Option<PathBuf>,
    /// Images per batch of feature extraction through the frozen base.
    pub extract_batch_size: usize,
    /// Accept base weights whose fingerprint is not the ImageNet VGG16 one.
    pub allow_unverified: bool,
    /// Show progress bars (on stderr).
    pub progress: bool,
    /// Stop after this many epochs as if interrupted, leaving the run unfinished (for testing
    /// `--resume`).
    pub interrupt_after: Option<usize>,
    /// `--strict`: stop at the first image file that cannot be decoded, instead of skipping it.
    pub strict: bool,
}

impl Default for TrainEnv {
    fn default() -> Self {
        TrainEnv {
            device: TrainDevice::Auto,
            runs_dir: PathBuf::from(DEFAULT_RUNS_DIR),
            name: None,
            resume: false,
            cache_dir: Some(PathBuf::from(DEFAULT_CACHE_DIR)),
            extract_batch_size: 128,
            allow_unverified: false,
            progress: false,
            interrupt_after: None,
            strict: false,
        }
    }
}

impl TrainEnv {
    /// Checks the extraction batch size (at least 1).
    ///
    /// # Errors
    /// [`Error::Usage`].
    pub fn validate(&self) -> Result<()> {
        if self.extract_batch_size == 0 {
            return Err(Error::Usage(
                "--epochs, --batch-size and --extract-batch-size must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finetune_preset_expands_to_the_documented_recipe() {
        let c = Preset::Finetune.config();
        // All 13 convs after 5 head-only epochs at lr 1e-3, with augmentation.
        assert_eq!((c.unfreeze, c.augment), (13, true));
        assert_eq!((c.head_epochs, c.head_lr), (5, 1e-3));
        // SGD peak lr 1e-3 momentum 0.9 weight decay 5e-4, one-cycle, 20 epochs of batch 128.
        assert_eq!((c.optimizer, c.lr, c.momentum), (Optimizer::Sgd, 1e-3, 0.9));
        assert_eq!((c.weight_decay, c.schedule), (5e-4, Schedule::OneCycle));
        assert_eq!((c.epochs, c.batch_size), (20, 128));
        // The full data, 10% held out, patience 4, restore best.
        assert_eq!(
            (c.train_limit, c.test_limit, c.val_split),
            (0, 0, Some(0.1))
        );
        assert_eq!((c.patience, c.restore_best), (Some(4), true));
        // Everything else is the seed recipe's.
        let seed = TrainConfig::seed_recipe();
        let rest = |c: &TrainConfig| {
            (
                c.seed,
                c.input_size,
                c.lr_step_epochs,
                c.data.clone(),
                c.weights.clone(),
            )
        };
        assert_eq!(rest(&c), rest(&seed));
        assert_eq!((rest(&seed).0, rest(&seed).1), (42, 32));
        c.validate().unwrap();
    }

    #[test]
    fn explicit_options_override_the_preset() {
        let given = Overrides {
            epochs: Some(2),
            lr: Some(3e-4),
            unfreeze: Some(2),
            patience: Some(None),
            train_limit: Some(300),
            input_size: Some(64),
            ..Overrides::default()
        };
        let c = given.apply(Preset::Finetune.config());
        assert_eq!((c.epochs, c.lr, c.unfreeze), (2, 3e-4, 2));
        assert_eq!((c.patience, c.train_limit, c.input_size), (None, 300, 64));
        // What was not given keeps the preset's value.
        assert_eq!((c.weight_decay, c.schedule), (5e-4, Schedule::OneCycle));
        assert!(c.augment && c.restore_best);
        assert_eq!(
            (c.head_epochs, c.test_limit, c.val_split),
            (5, 0, Some(0.1))
        );
        // Nothing given: the preset unchanged; on the seed recipe, the seed recipe.
        let p = Preset::Finetune.config();
        assert_eq!(Overrides::default().apply(p.clone()), p);
        let seed = Overrides::default().apply(TrainConfig::seed_recipe());
        assert_eq!(seed, TrainConfig::default());
    }

    #[test]
    fn validation_names_the_option() {
        let err = |c: TrainConfig| c.validate().unwrap_err().to_string();
        type Spoil = fn(&mut TrainConfig);
        let cases: [(Spoil, &str); 11] = [
            (
                |c| c.epochs = 0,
                "--epochs and --batch-size must be at least 1",
            ),
            (|c| c.lr = f64::NAN, "--lr must be a positive number"),
            (|c| c.momentum = 1.0, "--momentum must be in [0, 1)"),
            (|c| c.patience = Some(0), "--patience must be at least 1"),
            (
                |c| c.lr_step_epochs = 0,
                "--lr-step-epochs must be at least 1",
            ),
            (
                |c| c.weight_decay = -1.0,
                "--weight-decay must be zero or positive",
            ),
            (
                |c| c.input_size = 48,
                "--input-size must be a multiple of 32",
            ),
            (|c| c.unfreeze = 14, "--unfreeze must be between 0 and 13"),
            (|c| c.augment = true, "--augment needs --unfreeze N"),
            (
                |c| c.test_split = Some(-0.1),
                "--test-split must be between 0 and 1",
            ),
            (
                |c| c.val_split = Some(1.0),
                "--val-split must be between 0 and 1",
            ),
        ];
        for (spoil, message) in cases {
            let mut c = TrainConfig::default();
            spoil(&mut c);
            assert!(err(c).contains(message), "{message}");
        }
        let ft = TrainConfig {
            head_lr: 0.0,
            ..TrainConfig::finetune()
        };
        assert!(err(ft.clone()).contains("--head-lr"));
        // Without warm-up epochs the warm-up rate is not used.
        TrainConfig {
            head_epochs: 0,
            ..ft
        }
        .validate()
        .unwrap();
        let env = TrainEnv {
            extract_batch_size: 0,
            ..TrainEnv::default()
        };
        assert!(env.validate().is_err());
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

    /// `--precision auto` is bf16 exactly on a CPU with AVX512_BF16 (AMX only adds to the reason),
    /// float32 on other CPUs and on CUDA; explicit choices are kept, with a warning for emulated bf16.
    #[test]
    fn precision_auto_is_bf16_only_where_the_cpu_has_it() {
        let none = CpuBf16::default();
        let avx = CpuBf16 {
            avx512_bf16: true,
            amx_bf16: false,
        };
        let amx = CpuBf16 {
            avx512_bf16: true,
            amx_bf16: true,
        };
        let auto = |cuda, cpu| Precision::Auto.resolve(cuda, cpu);
        assert_eq!(auto(false, amx).0, Precision::Bf16);
        assert!(auto(false, amx).1.contains("AVX512_BF16 and AMX-BF16"));
        assert_eq!(auto(false, avx).0, Precision::Bf16);
        assert!(!auto(false, avx).1.contains("AMX"));
        assert_eq!(auto(false, none).0, Precision::Fp32);
        assert!(auto(false, none).1.contains("no AVX512_BF16"));
        assert_eq!(auto(true, amx).0, Precision::Fp32);
        assert_eq!(Precision::Fp32.resolve(false, amx).0, Precision::Fp32);
        let emulated = Precision::Bf16.resolve(false, none);
        assert_eq!(emulated.0, Precision::Bf16);
        assert!(emulated.1.contains("emulated"));
        assert_eq!(Precision::Bf16.resolve(true, none).1, "as asked");
        // Detection agrees with the standard library's.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            CpuBf16::detect().avx512_bf16,
            std::arch::is_x86_feature_detected!("avx512bf16")
        );
        assert_eq!(Precision::Bf16.name(), "bf16");
    }

    /// A `config.json` of an earlier pipe (no layout, test split, resize or augmentation style; the
    /// validation share a number) still reads: squash, the share given, no test share.
    #[test]
    fn config_json_of_earlier_runs_still_reads() {
        let mut old =
            serde_json::to_value(TrainConfig::finetune().started("r", "cpu", Precision::Fp32))
                .unwrap();
        let map = old.as_object_mut().unwrap();
        for k in ["layout", "test_split", "resize", "augment_style"] {
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
        assert_eq!(c.augment_style.resolve(c.input_size), AugmentStyle::Cifar);
    }

    /// Photo augmentation is the default above 64 pixels; the photos preset is 384 with crop and
    /// max pooling.
    #[test]
    fn augment_style_resolves_by_input_size_and_photos_preset_is_384_crop_max() {
        assert_eq!(AugmentStyle::Auto.resolve(64), AugmentStyle::Cifar);
        assert_eq!(AugmentStyle::Auto.resolve(96), AugmentStyle::Photo);
        assert_eq!(AugmentStyle::Cifar.resolve(224), AugmentStyle::Cifar);
        let p = Preset::Photos.config();
        assert_eq!(
            (p.input_size, p.resize, p.pooling),
            (384, ResizePolicy::Crop, Pooling::Max)
        );
        assert_eq!(p.arch(2).feature_dim(), 512);
        assert_eq!((p.train_limit, p.test_limit), (0, 0));
        p.validate().unwrap();
        let started = p.started("r", "cpu", Precision::Fp32);
        assert_ne!(started.augment_style, AugmentStyle::Auto);
    }
}
