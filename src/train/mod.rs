//! Fine-tuning with libtorch (tch): the frozen VGG16 base extracts features once (cached on disk), the
//! dense head is trained on them with SGD (the same mathematics as running the frozen base in every
//! step, far less work).
//!
//! A run writes `models/runs/<name>/`: `config.json` first, `checkpoint.safetensors` after every epoch,
//! then `head.safetensors`, `history.json` and `predictions.json`; `models/runs/latest` points at the
//! newest finished run. `pipe train --resume` continues an unfinished run from its last checkpoint.

mod eval;
mod features;
mod finetune;
mod fit;
mod model;

pub use eval::{evaluate_run, sweep, validate_sweep, Evaluation, SweepRow};
pub use features::{
    cache_key, carve_validation, extract, load_train_test, prepare_features, preview_indices,
    preview_pixels, split_features, stratified_holdout, FeatureOptions, Features, SplitInfo,
    PREVIEW_IMAGES,
};
pub use finetune::{augment_image, fit_finetune, FineTuneNet, PixelSplit, VGG16_CONVS};
pub use fit::{
    adam_step, evaluate, fit_head, optimizer_state_spec, sgd_step, Best, Checkpoint, FitResult,
    HeadHyper, Optimizer, Schedule,
};
pub use model::{from_tch, to_tch, Base, Head};

use crate::arch::Arch;
use crate::error::{Error, Result};
use crate::run::{self, EpochMetrics, PredictionItem, Predictions, RunConfig};
use crate::util::write_json_atomic;
use crate::weights::{load_base, load_safetensors, save_safetensors, NamedTensor, FINGERPRINT_KEY};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind};

/// Device choice for training.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TrainDevice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA GPU (an error when there is none).
    Cuda,
}

/// Resolves the requested device.
///
/// # Errors
/// [`Error::Usage`] for `cuda` when libtorch sees no CUDA device.
pub fn resolve_device(d: TrainDevice) -> Result<Device> {
    match d {
        TrainDevice::Cpu => Ok(Device::Cpu),
        TrainDevice::Auto => Ok(Device::cuda_if_available()),
        TrainDevice::Cuda => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(Error::Usage(format!(
                    "--device cuda: libtorch sees no CUDA device (devices: {}, libtorch built with CUDA: {}); \
                     use --device cpu or --device auto",
                    tch::Cuda::device_count(),
                    tch::utils::has_cuda()
                )))
            }
        }
    }
}

/// Human name of a tch device (`cpu`, `cuda:0`).
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Default folder of the feature cache.
pub const DEFAULT_CACHE_DIR: &str = "models/cache/features";

/// Options of [`train`]: the seed recipe by default (see `pipe train --help`).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Dataset (`--data`).
    pub data: PathBuf,
    /// Conv-base weights written by `pipe weights import`.
    pub weights: PathBuf,
    /// Training images, class-balanced subset (0 = all).
    pub train_limit: usize,
    /// Test images, class-balanced subset (0 = all).
    pub test_limit: usize,
    /// Head-training hyper-parameters.
    pub hyper: HeadHyper,
    /// Fraction of the training images held out for validation (0 = validate on the test split).
    pub val_split: f64,
    /// Conv layers of the base to fine-tune, counted from the last (0 = frozen base, cached features).
    pub unfreeze: usize,
    /// Random flip and pad-and-crop of training images (only with `unfreeze`).
    pub augment: bool,
    /// With `unfreeze`: epochs of head-only training on cached frozen-base features first, so that
    /// the randomly initialised head does not wreck the pre-trained convs with huge early gradients
    /// (the Keras fine-tuning advice).
    pub head_epochs: usize,
    /// Learning rate of the head warm-up.
    pub head_lr: f64,
    /// Device.
    pub device: TrainDevice,
    /// Batch size of feature extraction through the frozen base.
    pub extract_batch_size: usize,
    /// Side of the square network input, pixels: images are resized to it (a multiple of 32; 32 keeps
    /// CIFAR-10's size, 64 upsamples 2x and gives 2,048 features per image).
    pub input_size: usize,
    /// Folder of runs (`models/runs`).
    pub runs_dir: PathBuf,
    /// Run name (default: UTC timestamp; with `resume`, the run to continue).
    pub name: Option<String>,
    /// Continue an unfinished run from its last checkpoint (its config.json wins over other options).
    pub resume: bool,
    /// Feature cache folder (`None` = `--no-cache`).
    pub cache_dir: Option<PathBuf>,
    /// Accept base weights whose fingerprint is not the ImageNet VGG16 one.
    pub allow_unverified: bool,
    /// Show progress bars.
    pub progress: bool,
    /// Stop after this many epochs as if interrupted, leaving the run unfinished (for testing `--resume`).
    pub interrupt_after: Option<usize>,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Per-epoch metrics.
    pub history: Vec<EpochMetrics>,
    /// Test-set loss (mean categorical cross-entropy) at the end of training.
    pub test_loss: f64,
    /// Test-set accuracy in 0..1 at the end of training.
    pub test_accuracy: f64,
}

/// Writes a checkpoint atomically: parameters and momentum buffers as tensors, epoch and history
/// (JSON) in the metadata.
/// Writes a checkpoint atomically: parameters, optimizer state and the best epoch's parameters
/// (`best.<param>`) as tensors; epoch, history (JSON) and the best epoch and its validation loss in the
/// metadata.
fn save_checkpoint(dir: &Path, ck: &Checkpoint, fingerprint: &str) -> Result<()> {
    let mut tensors: Vec<NamedTensor> = ck.params.iter().chain(&ck.momentum).cloned().collect();
    let history = serde_json::to_string(&ck.history).map_err(|e| Error::Usage(e.to_string()))?;
    let mut meta = HashMap::from([
        ("epoch".to_string(), ck.epoch.to_string()),
        ("history".to_string(), history),
        (FINGERPRINT_KEY.to_string(), fingerprint.to_string()),
    ]);
    if let Some(b) = &ck.best {
        meta.insert("best_epoch".into(), b.epoch.to_string());
        // JSON keeps the f64 exactly (serde_json float_roundtrip), so a resumed run compares alike.
        meta.insert(
            "best_val_loss".into(),
            serde_json::to_string(&b.val_loss).map_err(|e| Error::Usage(e.to_string()))?,
        );
        tensors.extend(b.params.iter().map(|t| NamedTensor {
            name: format!("best.{}", t.name),
            ..t.clone()
        }));
    }
    save_safetensors(&dir.join(run::CHECKPOINT_FILE), &tensors, meta)
}

fn load_checkpoint(
    dir: &Path,
    trainable: &[(String, Vec<usize>)],
    optimizer: Optimizer,
) -> Result<Option<Checkpoint>> {
    let path = dir.join(run::CHECKPOINT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let head = trainable.to_vec();
    let state = optimizer_state_spec(optimizer, &head);
    let n_state = state.len();
    let mut spec = head.clone();
    spec.extend(state);
    // The best epoch's parameters are present from the first finished epoch on.
    let best_spec = head.iter().map(|(n, s)| (format!("best.{n}"), s.clone()));
    let with_best: Vec<_> = spec.iter().cloned().chain(best_spec).collect();
    let (mut tensors, meta) = match load_safetensors(&path, &with_best) {
        Ok(x) => x,
        Err(_) => load_safetensors(&path, &spec)?,
    };
    let num = |key: &str| -> Option<String> { meta.get(key).cloned() };
    let epoch = num("epoch")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| Error::invalid(&path, "no epoch in metadata"))?;
    let history: Vec<EpochMetrics> = num("history")
        .and_then(|h| serde_json::from_str(&h).ok())
        .ok_or_else(|| Error::invalid(&path, "no history in metadata"))?;
    let best_params = if tensors.len() > head.len() + n_state {
        tensors
            .split_off(head.len() + n_state)
            .into_iter()
            .map(|t| NamedTensor {
                name: t.name.trim_start_matches("best.").to_string(),
                ..t
            })
            .collect()
    } else {
        Vec::new()
    };
    let momentum = tensors.split_off(head.len());
    let best = match (
        num("best_epoch").and_then(|e| e.parse().ok()),
        num("best_val_loss").and_then(|v| serde_json::from_str(&v).ok()),
    ) {
        (Some(epoch), Some(val_loss)) if !best_params.is_empty() => Some(Best {
            epoch,
            val_loss,
            params: best_params,
        }),
        _ => None,
    };
    Ok(Some(Checkpoint {
        epoch,
        params: tensors,
        momentum,
        history,
        best,
    }))
}

/// One line echoing a run's configuration at the start of training.
pub fn describe_config(c: &RunConfig, device: Device) -> String {
    let opt = match c.optimizer {
        Optimizer::Sgd => format!("SGD lr {} momentum {}", c.lr, c.momentum),
        Optimizer::Adam => format!("Adam lr {}", c.lr),
    };
    let schedule = match c.schedule {
        Schedule::Constant => String::new(),
        Schedule::Cosine => ", cosine schedule".into(),
        Schedule::Step => format!(
            ", lr /10 every {}",
            crate::util::plural(c.lr_step_epochs, "epoch")
        ),
        Schedule::OneCycle => ", one-cycle schedule".into(),
    };
    let val = if c.val_split > 0.0 {
        format!("validation {:.0}% of train", c.val_split * 100.0)
    } else {
        "validation = test split".into()
    };
    let stop = c
        .patience
        .map(|p| format!(", early stopping (patience {p})"))
        .unwrap_or_default();
    let best = if c.restore_best { ", restore best" } else { "" };
    let model = if c.unfreeze > 0 {
        format!(
            "VGG16 with its last {} conv layers fine-tuned + dense head{}",
            c.unfreeze,
            if c.augment { ", augmented images" } else { "" }
        )
    } else {
        "VGG16 frozen base + dense head".to_string()
    };
    format!(
        "pipe train: data {}, {} train / {} test images (0 = all), {val}, input {}x{}; {model} \
         on {}; {opt} weight decay {}{schedule}, batch {}, {}{stop}{best}, seed {}",
        c.data.display(),
        c.train_limit,
        c.test_limit,
        c.input_size,
        c.input_size,
        device_name(device),
        c.weight_decay,
        c.batch_size,
        crate::util::plural(c.epochs, "epoch"),
        c.seed
    )
}

/// Writes the run's figures: `accuracy.png` and `loss.png` (training and validation per epoch),
/// `predictions.png` (a grid of test images with tch's predicted labels, wrong ones in red) and
/// `confusion.png` (test confusion matrix).
///
/// # Errors
/// [`Error::Io`] naming the figure when it cannot be drawn or written.
fn write_figures(
    run_dir: &Path,
    config: &RunConfig,
    preview: &[(usize, Vec<u8>)],
    preview_size: usize,
    history: &[EpochMetrics],
    predictions: &Predictions,
) -> Result<()> {
    use crate::plot;
    let val_name = if config.val_split > 0.0 {
        "validation"
    } else {
        "validation (test split)"
    };
    plot::training_curves(
        history,
        plot::Curve::Accuracy,
        val_name,
        &run_dir.join(run::ACCURACY_PNG),
    )?;
    plot::training_curves(
        history,
        plot::Curve::Loss,
        val_name,
        &run_dir.join(run::LOSS_PNG),
    )?;
    let predicted: Vec<usize> = predictions
        .items
        .iter()
        .map(|it| crate::infer::argmax(&it.probabilities))
        .collect();
    let tiles: Vec<plot::PredictionTile> = preview
        .iter()
        .filter_map(|(i, px)| {
            let item = predictions.items.get(*i)?;
            let p = *predicted.get(*i)?;
            Some(plot::PredictionTile {
                pixels: px.clone(),
                size: preview_size,
                label: item.label,
                predicted: p,
                probability: item.probabilities.get(p).copied().unwrap_or(0.0),
            })
        })
        .collect();
    if !tiles.is_empty() {
        plot::prediction_grid(&tiles, &config.classes, &run_dir.join(run::PREDICTIONS_PNG))?;
    }
    let truth: Vec<usize> = predictions.items.iter().map(|it| it.label).collect();
    let report = crate::report::ClassReport::new(&config.classes, &truth, &predicted);
    plot::confusion_matrix(&report, &run_dir.join(run::CONFUSION_PNG))
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

/// Checks hyper-parameters before any work: epochs and batch size at least 1, a positive finite
/// learning rate, momentum in 0..1, a non-negative weight decay.
///
/// # Errors
/// [`Error::Usage`] naming the option.
pub fn validate_hyper(h: &HeadHyper) -> Result<()> {
    if h.epochs == 0 || h.batch_size == 0 {
        return Err(Error::Usage(
            "--epochs and --batch-size must be at least 1".into(),
        ));
    }
    if !(h.lr.is_finite() && h.lr > 0.0) {
        return Err(Error::Usage(format!(
            "--lr must be a positive number, got {}",
            h.lr
        )));
    }
    if !(0.0..1.0).contains(&h.momentum) {
        return Err(Error::Usage(format!(
            "--momentum must be in [0, 1), got {}",
            h.momentum
        )));
    }
    if h.patience == Some(0) {
        return Err(Error::Usage(
            "--patience must be at least 1 (epochs without improvement before stopping)".into(),
        ));
    }
    if h.lr_step_epochs == 0 {
        return Err(Error::Usage("--lr-step-epochs must be at least 1".into()));
    }
    if !(h.weight_decay.is_finite() && h.weight_decay >= 0.0) {
        return Err(Error::Usage(format!(
            "--weight-decay must be zero or positive, got {}",
            h.weight_decay
        )));
    }
    Ok(())
}

/// Fine-tunes the dense head on the frozen VGG16 base and writes (or, with `resume`, finishes) a run.
///
/// # Errors
/// Missing or wrong weights, unreadable data (file named), classes that differ between the splits, a
/// non-finite loss (the last good checkpoint stays in the run folder), libtorch failures, or a run
/// folder that cannot be written.
pub fn train(opts: &TrainOptions) -> Result<TrainOutcome> {
    let t0 = Instant::now();
    let device = resolve_device(opts.device)?;
    let (run_dir, config) = if opts.resume {
        let dir = run::find_resumable(&opts.runs_dir, opts.name.as_deref())?;
        let config: RunConfig = crate::util::read_json(&dir.join(run::CONFIG_FILE))?;
        eprintln!(
            "resuming run {} (its config.json wins over other options)",
            dir.display()
        );
        (dir, config)
    } else {
        let name = opts.name.clone().unwrap_or_else(run::timestamp_name);
        // Cheap checks first: nothing is written and no image decoded for a bad option.
        run::check_new_run(&opts.runs_dir, &name)?;
        validate_hyper(&opts.hyper)?;
        validate_input_size(opts.input_size)?;
        if opts.unfreeze > VGG16_CONVS {
            return Err(Error::Usage(format!(
                "--unfreeze must be between 0 and {VGG16_CONVS} (conv layers of VGG16), got {}",
                opts.unfreeze
            )));
        }
        if opts.augment && opts.unfreeze == 0 {
            return Err(Error::Usage(
                "--augment needs --unfreeze N: with a frozen base the features are extracted once and \
                 cached, so augmented images would never be seen"
                    .into(),
            ));
        }
        if opts.val_split != 0.0 && !(opts.val_split > 0.0 && opts.val_split < 1.0) {
            return Err(Error::Usage(format!(
                "--val-split must be between 0 and 1 (exclusive), got {}",
                opts.val_split
            )));
        }
        let h = &opts.hyper;
        let config = RunConfig {
            name: name.clone(),
            pipe_version: env!("CARGO_PKG_VERSION").into(),
            // Absolute paths, so that the run can be evaluated and exported from any folder.
            data: std::fs::canonicalize(&opts.data).unwrap_or_else(|_| opts.data.clone()),
            weights: std::fs::canonicalize(&opts.weights).unwrap_or_else(|_| opts.weights.clone()),
            weights_fingerprint: String::new(),
            classes: Vec::new(),
            input_size: opts.input_size,
            preprocessing: run::CAFFE_PREPROCESSING.into(),
            train_images: 0,
            test_images: 0,
            train_limit: opts.train_limit,
            test_limit: opts.test_limit,
            epochs: h.epochs,
            batch_size: h.batch_size,
            optimizer: h.optimizer,
            schedule: h.schedule,
            lr_step_epochs: h.lr_step_epochs,
            patience: h.patience,
            restore_best: h.restore_best,
            val_split: opts.val_split,
            val_images: 0,
            unfreeze: opts.unfreeze,
            augment: opts.augment,
            head_epochs: if opts.unfreeze > 0 {
                opts.head_epochs
            } else {
                0
            },
            head_lr: opts.head_lr,
            lr: h.lr,
            momentum: h.momentum,
            weight_decay: h.weight_decay,
            seed: h.seed,
            device: device_name(device),
        };
        (PathBuf::new(), config)
    };
    let hyper = HeadHyper {
        epochs: config.epochs,
        batch_size: config.batch_size,
        lr: config.lr,
        momentum: config.momentum,
        weight_decay: config.weight_decay,
        seed: config.seed,
        optimizer: config.optimizer,
        schedule: config.schedule,
        lr_step_epochs: config.lr_step_epochs,
        patience: config.patience,
        restore_best: config.restore_best,
    };
    if hyper.epochs == 0 || hyper.batch_size == 0 || opts.extract_batch_size == 0 {
        return Err(Error::Usage(
            "--epochs, --batch-size and --extract-batch-size must be at least 1".into(),
        ));
    }
    eprintln!("{}", describe_config(&config, device));
    if config.val_split == 0.0 && (config.patience.is_some() || config.restore_best) {
        eprintln!(
            "warning: without --val-split, --patience and --restore-best choose epochs by the test \
             split's loss, so the final test accuracy is not a held-out figure; add --val-split 0.1"
        );
    }
    if config.unfreeze > 0 {
        return finetune_run(opts, config, hyper, run_dir, device, t0);
    }
    let features = prepare_features(&feature_options(opts, &config), device)?;
    let total = features.train.labels.len() + features.test.labels.len();
    if features.extracted > 0 {
        eprintln!(
            "features: {} images through the frozen base in {:.1} s ({:.0} images/s)",
            features.extracted,
            features.extract_seconds,
            features.extracted as f64 / features.extract_seconds.max(1e-9)
        );
    } else {
        eprintln!(
            "features: all {total} images from the feature cache ({:.1} s)",
            features.extract_seconds
        );
    }
    let features = if config.val_split > 0.0 {
        let f = carve_validation(features, config.val_split, config.seed)?;
        if let Some(v) = &f.val {
            eprintln!(
                "validation: {} of the training images held out (--val-split {}); the test split is used only at the end",
                v.labels.len(),
                config.val_split
            );
        }
        f
    } else {
        features
    };
    if opts.resume && config.weights_fingerprint != features.fingerprint {
        return Err(Error::invalid(
            &config.weights,
            "base weights changed since the run started; cannot resume",
        ));
    }
    let config = RunConfig {
        weights_fingerprint: features.fingerprint.clone(),
        classes: features.classes.clone(),
        train_images: features.train.labels.len(),
        val_images: features.val.as_ref().map_or(0, |v| v.labels.len()),
        test_images: features.test.labels.len(),
        ..config
    };
    let run_dir = if opts.resume {
        run_dir
    } else {
        let dir = run::new_run_dir(&opts.runs_dir, &config.name)?;
        write_json_atomic(&dir.join(run::CONFIG_FILE), &config)?;
        dir
    };
    let arch = Arch::vgg16_transfer(config.input_size, config.classes.len());
    let resume_from = if opts.resume {
        load_checkpoint(&run_dir, &arch.head_params(), hyper.optimizer)?
    } else {
        None
    };
    if let Some(c) = &resume_from {
        eprintln!("continuing after epoch {} of {}", c.epoch, hyper.epochs);
    }
    let fp = features.fingerprint.clone();
    let fit = fit_head(
        &features,
        &arch,
        &hyper,
        device,
        resume_from,
        Some("Epoch"),
        |ck| epoch_done(opts, &run_dir, &config, ck, &fp),
    )
    .map_err(|e| abandon_if_empty(opts, &run_dir, explain_divergence(e, &run_dir, hyper.lr)))?;
    finish_run(
        opts,
        &run_dir,
        &config,
        fit,
        &features.test,
        &features.test_preview,
        features.preview_size,
        &features.fingerprint,
        t0,
    )
}

/// The feature-extraction settings of a run: its data, weights, subsets and input size, with the
/// command's batch size, cache and progress choices.
fn feature_options(opts: &TrainOptions, config: &RunConfig) -> FeatureOptions {
    FeatureOptions {
        data: config.data.clone(),
        weights: config.weights.clone(),
        train_limit: config.train_limit,
        test_limit: config.test_limit,
        input_size: config.input_size,
        batch_size: opts.extract_batch_size,
        cache_dir: opts.cache_dir.clone(),
        allow_unverified: opts.allow_unverified,
        progress: opts.progress,
    }
}

/// After each epoch: writes the checkpoint, and stops as asked by `--interrupt-after-epoch`.
fn epoch_done(
    opts: &TrainOptions,
    run_dir: &Path,
    config: &RunConfig,
    ck: &Checkpoint,
    fingerprint: &str,
) -> Result<()> {
    save_checkpoint(run_dir, ck, fingerprint)?;
    match opts.interrupt_after {
        Some(n) if ck.epoch >= n => Err(Error::Usage(format!(
            "interrupted after epoch {} as asked; continue with `{}`",
            ck.epoch,
            run::resume_command(&opts.runs_dir, &config.name)
        ))),
        _ => Ok(()),
    }
}

/// When a new run fails before its first checkpoint (e.g. a loss that diverges in epoch 1), removes
/// its folder, which then holds only `config.json`: left behind, `--resume` would pick it up as the
/// latest unfinished run and fail the same way. Returns `e`.
fn abandon_if_empty(opts: &TrainOptions, run_dir: &Path, e: Error) -> Error {
    if !opts.resume
        && !run_dir.join(run::CHECKPOINT_FILE).exists()
        && std::fs::remove_dir_all(run_dir).is_ok()
    {
        return match e {
            Error::Usage(m) => Error::Usage(format!("{m} (the empty run folder was removed)")),
            other => other,
        };
    }
    e
}

/// Turns [`Error::Diverged`] into a message that says what was kept and what to do.
fn explain_divergence(e: Error, run_dir: &Path, lr: f64) -> Error {
    match e {
        Error::Diverged { epoch, step, loss } => {
            let kept = if epoch > 1 {
                format!(
                    "the last good state (epoch {}) is kept in {}",
                    epoch - 1,
                    run_dir.join(run::CHECKPOINT_FILE).display()
                )
            } else {
                "no epoch finished, so there is no checkpoint".to_string()
            };
            Error::Usage(format!(
                "training diverged at epoch {epoch} (step {step}): the loss is {loss}; {kept}. \
                 Lower --lr (now {lr}) and train again"
            ))
        }
        other => other,
    }
}

/// Writes the outputs of a finished run: head (and best epoch) weights, history, tch's test
/// predictions, figures; then points `latest` at the run.
///
/// # Errors
/// Unwritable run folder; libtorch errors.
#[allow(clippy::too_many_arguments)]
fn finish_run(
    opts: &TrainOptions,
    run_dir: &Path,
    config: &RunConfig,
    fit: FitResult,
    test: &SplitInfo,
    preview: &[(usize, Vec<u8>)],
    preview_size: usize,
    fingerprint: &str,
    t0: Instant,
) -> Result<TrainOutcome> {
    let chance = 1.0 / config.classes.len() as f64;
    if fit.test_accuracy <= 1.5 * chance {
        eprintln!(
            "warning: test accuracy {:.3} is at chance level ({chance:.3}); the run has not learned \
             (learning rate too high or too low?)",
            fit.test_accuracy
        );
    }
    let probs = fit.test_logits.f_softmax(-1, Kind::Float)?;
    let probs = from_tch("probabilities", &probs)?.data;
    let items = test
        .names
        .iter()
        .zip(&test.labels)
        .zip(probs.chunks_exact(config.classes.len()))
        .map(|((file, &label), p)| PredictionItem {
            file: file.clone(),
            label,
            probabilities: p.to_vec(),
        })
        .collect();
    let predictions = Predictions {
        data_root: test.root.clone(),
        classes: config.classes.clone(),
        items,
    };
    save_safetensors(
        &run_dir.join(run::HEAD_FILE),
        &fit.params,
        HashMap::from([(FINGERPRINT_KEY.to_string(), fingerprint.to_string())]),
    )?;
    if let Some(b) = &fit.best {
        save_safetensors(
            &run_dir.join(run::BEST_FILE),
            &b.params,
            HashMap::from([
                (FINGERPRINT_KEY.to_string(), fingerprint.to_string()),
                ("epoch".to_string(), b.epoch.to_string()),
                ("val_loss".to_string(), b.val_loss.to_string()),
            ]),
        )?;
    }
    write_json_atomic(&run_dir.join(run::HISTORY_FILE), &fit.history)?;
    write_json_atomic(&run_dir.join(run::PREDICTIONS_FILE), &predictions)?;
    write_figures(
        run_dir,
        config,
        preview,
        preview_size,
        &fit.history,
        &predictions,
    )?;
    run::set_latest(&opts.runs_dir, &config.name)?;
    eprintln!(
        "run written to {} in {:.1} s",
        run_dir.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(TrainOutcome {
        run_dir: run_dir.to_path_buf(),
        history: fit.history,
        test_loss: fit.test_loss,
        test_accuracy: fit.test_accuracy,
    })
}

/// Trains the head alone for `config.head_epochs` epochs on frozen-base features (from the feature
/// cache when present), with the run's optimizer at a constant rate, and returns its parameters.
///
/// # Errors
/// As [`prepare_features`] and [`fit_head`].
fn warm_up_head(
    opts: &TrainOptions,
    config: &RunConfig,
    hyper: &HeadHyper,
    device: Device,
) -> Result<Vec<NamedTensor>> {
    eprintln!(
        "head warm-up: {} of the head alone on frozen-base features (--head-epochs), lr {}",
        crate::util::plural(config.head_epochs, "epoch"),
        config.head_lr
    );
    let features = prepare_features(&feature_options(opts, config), device)?;
    let features = if config.val_split > 0.0 {
        carve_validation(features, config.val_split, config.seed)?
    } else {
        features
    };
    let arch = Arch::vgg16_transfer(config.input_size, features.classes.len());
    let hp = HeadHyper {
        epochs: config.head_epochs,
        lr: config.head_lr,
        schedule: Schedule::Constant,
        patience: None,
        restore_best: false,
        ..hyper.clone()
    };
    let fit = fit_head(
        &features,
        &arch,
        &hp,
        device,
        None,
        Some("Warm-up epoch"),
        |_| Ok(()),
    )?;
    Ok(fit.params)
}

/// The `--unfreeze N` path of [`train`]: decoded images instead of cached features, the last N convs
/// trained with the head; the tuned base is written to `base.safetensors` in the run folder (export and
/// evaluate use it).
fn finetune_run(
    opts: &TrainOptions,
    config: RunConfig,
    hyper: HeadHyper,
    run_dir: PathBuf,
    device: Device,
    t0: Instant,
) -> Result<TrainOutcome> {
    use crate::data::LoadedSplit;
    let (train_all, test) = load_train_test(
        &config.data,
        config.train_limit,
        config.test_limit,
        config.input_size,
    )?;
    let classes = train_all.classes.clone();
    let arch = Arch::vgg16_transfer(config.input_size, classes.len());
    let (weights, fingerprint) = load_base(&config.weights, &arch, opts.allow_unverified)?;
    if opts.resume && config.weights_fingerprint != fingerprint {
        return Err(Error::invalid(
            &config.weights,
            "base weights changed since the run started; cannot resume",
        ));
    }
    let subset = |idx: &[usize]| -> LoadedSplit {
        let per = train_all.size * train_all.size * 3;
        LoadedSplit {
            classes: classes.clone(),
            root: train_all.root.clone(),
            names: idx.iter().map(|&i| train_all.names[i].clone()).collect(),
            labels: idx.iter().map(|&i| train_all.labels[i]).collect(),
            pixels: idx
                .iter()
                .flat_map(|&i| train_all.pixels[i * per..(i + 1) * per].iter().copied())
                .collect(),
            size: train_all.size,
        }
    };
    let (train_split, val_split) = if config.val_split > 0.0 {
        let (t, v) = stratified_holdout(
            &train_all.labels,
            classes.len(),
            config.val_split,
            config.seed,
        )?;
        eprintln!(
            "validation: {} of the training images held out (--val-split {}); the test split is used only at the end",
            v.len(),
            config.val_split
        );
        (subset(&t), Some(subset(&v)))
    } else {
        (train_all.clone(), None)
    };
    let config = RunConfig {
        weights_fingerprint: fingerprint.clone(),
        classes: classes.clone(),
        train_images: train_split.len(),
        val_images: val_split.as_ref().map_or(0, |v| v.len()),
        test_images: test.len(),
        ..config
    };
    let run_dir = if opts.resume {
        run_dir
    } else {
        let dir = run::new_run_dir(&opts.runs_dir, &config.name)?;
        write_json_atomic(&dir.join(run::CONFIG_FILE), &config)?;
        dir
    };
    let mut trainable: Vec<(String, Vec<usize>)> = arch.base_params();
    trainable = trainable.split_off(trainable.len() - 2 * config.unfreeze);
    trainable.extend(arch.head_params());
    let resume_from = if opts.resume {
        load_checkpoint(&run_dir, &trainable, hyper.optimizer)?
    } else {
        None
    };
    if let Some(c) = &resume_from {
        eprintln!("continuing after epoch {} of {}", c.epoch, hyper.epochs);
    }
    eprintln!(
        "fine-tuning the last {} conv layers and the head on {} images per epoch{}",
        config.unfreeze,
        train_split.len(),
        if config.augment {
            ", with random flips and 4-pixel crops"
        } else {
            ""
        }
    );
    let init_head = if config.head_epochs > 0 && resume_from.is_none() {
        Some(warm_up_head(opts, &config, &hyper, device)?)
    } else {
        None
    };
    let val = val_split.as_ref().unwrap_or(&test);
    let result = fit_finetune(
        &(&train_split).into(),
        &val.into(),
        &(&test).into(),
        &arch,
        &weights,
        config.unfreeze,
        config.augment,
        &hyper,
        device,
        resume_from,
        init_head.as_deref(),
        opts.progress,
        |ck| epoch_done(opts, &run_dir, &config, ck, &fingerprint),
    )
    .map_err(|e| abandon_if_empty(opts, &run_dir, explain_divergence(e, &run_dir, hyper.lr)))?;
    save_safetensors(
        &run_dir.join(run::BASE_FILE),
        &result.base,
        HashMap::from([(FINGERPRINT_KEY.to_string(), fingerprint.clone())]),
    )?;
    let preview = preview_pixels(&test);
    let info = SplitInfo {
        root: test.root.clone(),
        names: test.names.clone(),
        labels: test.labels.clone(),
    };
    finish_run(
        opts,
        &run_dir,
        &config,
        result.fit,
        &info,
        &preview,
        test.size,
        &fingerprint,
        t0,
    )
}

/// Serialises the unit tests that seed or draw from libtorch's process-wide RNG (`tch::manual_seed`,
/// random initialisation, `Tensor::randn`): cargo runs tests on parallel threads, and one test's draws
/// between another's `manual_seed` and its own draws would change that test's numbers.
#[cfg(test)]
pub(crate) fn global_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A divergence after the first epoch names the checkpoint of the last good epoch (written at the
    /// end of every finished epoch, so it holds that epoch's state) and says what to do; in the first
    /// epoch there is none to keep.
    #[test]
    fn divergence_message_names_the_last_good_checkpoint() {
        let dir = Path::new("/runs/r");
        let later = explain_divergence(
            Error::Diverged {
                epoch: 3,
                step: 7,
                loss: f64::NAN,
            },
            dir,
            0.5,
        )
        .to_string();
        assert!(later.contains("diverged at epoch 3 (step 7)"), "{later}");
        assert!(
            later.contains(
                "the last good state (epoch 2) is kept in /runs/r/checkpoint.safetensors"
            ),
            "{later}"
        );
        assert!(later.contains("Lower --lr (now 0.5)"), "{later}");
        let first = explain_divergence(
            Error::Diverged {
                epoch: 1,
                step: 1,
                loss: f64::INFINITY,
            },
            dir,
            1e6,
        )
        .to_string();
        assert!(
            first.contains("no epoch finished, so there is no checkpoint"),
            "{first}"
        );
        // Other errors pass through unchanged.
        let other = explain_divergence(Error::Usage("x".into()), dir, 1.0);
        assert_eq!(other.to_string(), "x");
    }
}
