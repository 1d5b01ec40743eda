//! Fine-tuning with libtorch (tch): the frozen VGG16 base extracts features once (cached on disk), the
//! dense head is trained on them with SGD (the same mathematics as running the frozen base in every
//! step, far less work).
//!
//! A run writes `models/runs/<name>/`: `config.json` first, `checkpoint.safetensors` after every epoch,
//! then `head.safetensors`, `history.json` and `predictions.json`; `models/runs/latest` points at the
//! newest finished run. `pipe train --resume` continues an unfinished run from its last checkpoint.

mod eval;
mod features;
mod fit;
mod model;

pub use eval::{evaluate_run, sweep, validate_sweep, Evaluation, SweepRow};
pub use features::{
    cache_key, extract, prepare_features, split_features, FeatureOptions, Features, SplitInfo,
};
pub use fit::{evaluate, fit_head, Checkpoint, FitResult, HeadHyper};
pub use model::{from_tch, to_tch, Base, Head};

use crate::arch::Arch;
use crate::error::{Error, Result};
use crate::run::{self, EpochMetrics, PredictionItem, Predictions, RunConfig};
use crate::util::write_json_atomic;
use crate::weights::{load_safetensors, save_safetensors, NamedTensor, FINGERPRINT_KEY};
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
fn save_checkpoint(dir: &Path, ck: &Checkpoint, fingerprint: &str) -> Result<()> {
    let tensors: Vec<NamedTensor> = ck.params.iter().chain(&ck.momentum).cloned().collect();
    let history = serde_json::to_string(&ck.history).map_err(|e| Error::Usage(e.to_string()))?;
    let meta = HashMap::from([
        ("epoch".to_string(), ck.epoch.to_string()),
        ("history".to_string(), history),
        (FINGERPRINT_KEY.to_string(), fingerprint.to_string()),
    ]);
    save_safetensors(&dir.join(run::CHECKPOINT_FILE), &tensors, meta)
}

fn load_checkpoint(dir: &Path, arch: &Arch) -> Result<Option<Checkpoint>> {
    let path = dir.join(run::CHECKPOINT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let mut spec = arch.head_params();
    spec.extend(
        arch.head_params()
            .into_iter()
            .map(|(n, s)| (format!("momentum.{n}"), s)),
    );
    let (mut tensors, meta) = load_safetensors(&path, &spec)?;
    let epoch = meta
        .get("epoch")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| Error::invalid(&path, "no epoch in metadata"))?;
    let history: Vec<EpochMetrics> = meta
        .get("history")
        .and_then(|h| serde_json::from_str(h).ok())
        .ok_or_else(|| Error::invalid(&path, "no history in metadata"))?;
    let momentum = tensors.split_off(arch.head_params().len());
    Ok(Some(Checkpoint {
        epoch,
        params: tensors,
        momentum,
        history,
    }))
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
            optimizer: "sgd".into(),
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
    };
    if hyper.epochs == 0 || hyper.batch_size == 0 || opts.extract_batch_size == 0 {
        return Err(Error::Usage(
            "--epochs, --batch-size and --extract-batch-size must be at least 1".into(),
        ));
    }
    eprintln!(
        "pipe train: data {}, {} train / {} test images (0 = all), VGG16 frozen base + dense head on {}; \
         SGD lr {} momentum {} weight decay {}, batch {}, {} epochs, seed {}",
        config.data.display(),
        config.train_limit,
        config.test_limit,
        device_name(device),
        hyper.lr,
        hyper.momentum,
        hyper.weight_decay,
        hyper.batch_size,
        hyper.epochs,
        hyper.seed
    );
    let features = prepare_features(
        &FeatureOptions {
            data: config.data.clone(),
            weights: config.weights.clone(),
            train_limit: config.train_limit,
            test_limit: config.test_limit,
            input_size: config.input_size,
            batch_size: opts.extract_batch_size,
            cache_dir: opts.cache_dir.clone(),
            allow_unverified: opts.allow_unverified,
            progress: opts.progress,
        },
        device,
    )?;
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
        load_checkpoint(&run_dir, &arch)?
    } else {
        None
    };
    if let Some(c) = &resume_from {
        eprintln!("continuing after epoch {} of {}", c.epoch, hyper.epochs);
    }
    let fp = features.fingerprint.clone();
    let fit = fit_head(&features, &arch, &hyper, device, resume_from, true, |ck| {
        save_checkpoint(&run_dir, ck, &fp)?;
        match opts.interrupt_after {
            Some(n) if ck.epoch >= n => Err(Error::Usage(format!(
                "interrupted after epoch {} as asked; continue with `{}`",
                ck.epoch,
                run::resume_command(&opts.runs_dir, &config.name)
            ))),
            _ => Ok(()),
        }
    })
        .map_err(|e| match e {
            Error::Diverged { epoch, step, loss } => {
                let kept = if epoch > 1 {
                    format!("the last good state (epoch {}) is kept in {}", epoch - 1, run_dir.join(run::CHECKPOINT_FILE).display())
                } else {
                    "no epoch finished, so there is no checkpoint".to_string()
                };
                Error::Usage(format!(
                    "training diverged at epoch {epoch} (step {step}): the loss is {loss}; {kept}. Lower --lr (now {}) and train again",
                    hyper.lr
                ))
            }
            other => other,
        })?;
    let chance = 1.0 / config.classes.len() as f64;
    if fit.test_accuracy <= 1.5 * chance {
        eprintln!(
            "warning: test accuracy {:.3} is at chance level ({chance:.3}); the run has not learned (learning rate too high or too low?)",
            fit.test_accuracy
        );
    }

    let probs = fit.test_logits.f_softmax(-1, Kind::Float)?;
    let probs = from_tch("probabilities", &probs)?.data;
    let items = features
        .test
        .names
        .iter()
        .zip(&features.test.labels)
        .zip(probs.chunks_exact(config.classes.len()))
        .map(|((file, &label), p)| PredictionItem {
            file: file.clone(),
            label,
            probabilities: p.to_vec(),
        })
        .collect();
    let predictions = Predictions {
        data_root: features.test.root.clone(),
        classes: config.classes.clone(),
        items,
    };
    save_safetensors(
        &run_dir.join(run::HEAD_FILE),
        &fit.params,
        HashMap::from([(FINGERPRINT_KEY.to_string(), features.fingerprint.clone())]),
    )?;
    write_json_atomic(&run_dir.join(run::HISTORY_FILE), &fit.history)?;
    write_json_atomic(&run_dir.join(run::PREDICTIONS_FILE), &predictions)?;
    run::set_latest(&opts.runs_dir, &config.name)?;
    eprintln!(
        "run written to {} in {:.1} s",
        run_dir.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(TrainOutcome {
        run_dir,
        history: fit.history,
        test_loss: fit.test_loss,
        test_accuracy: fit.test_accuracy,
    })
}
