//! Fine-tuning with libtorch (tch): the frozen VGG16 base extracts features once, the dense head is
//! trained on them with SGD (same mathematics as running the frozen base in every step, far less work).
//!
//! A run writes `models/runs/<name>/`: `head.safetensors`, `config.json`, `history.json`,
//! `predictions.json`; `models/runs/latest` points at the newest run.

mod model;

pub use model::{Base, Head};

use crate::arch::Arch;
use crate::data::{load_batch, ImageFolder, Sample};
use crate::error::{Error, Result};
use crate::run::{self, EpochMetrics, PredictionItem, Predictions, RunConfig};
use crate::weights::{load_base, save_safetensors, NamedTensor, FINGERPRINT_KEY};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

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
                    "--device cuda: libtorch sees no CUDA device (CUDA devices: {}, libtorch_cuda linked: {}); \
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

/// Options of [`train`]: the seed recipe by default (see `pipe train --help`).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Dataset root holding `train/` and `test/` class folders.
    pub data: PathBuf,
    /// Conv-base weights written by `pipe weights import`.
    pub weights: PathBuf,
    /// Training images, class-balanced subset (0 = all).
    pub train_limit: usize,
    /// Test images, class-balanced subset (0 = all).
    pub test_limit: usize,
    /// Passes over the training features.
    pub epochs: usize,
    /// Mini-batch size of head training.
    pub batch_size: usize,
    /// SGD learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Seed of head initialisation, dropout and shuffling.
    pub seed: u64,
    /// Device.
    pub device: TrainDevice,
    /// Batch size of feature extraction through the frozen base.
    pub extract_batch_size: usize,
    /// Folder of runs (`models/runs`).
    pub runs_dir: PathBuf,
    /// Run name (default: UTC timestamp).
    pub name: Option<String>,
    /// Accept base weights whose fingerprint is not the ImageNet VGG16 one.
    pub allow_unverified: bool,
    /// Show progress bars.
    pub progress: bool,
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

/// Decodes a list of samples into a u8 NHWC tensor-ready buffer.
fn load_pixels(samples: &[Sample], size: usize) -> Result<Vec<u8>> {
    let paths: Vec<&Path> = samples.iter().map(|s| s.path.as_path()).collect();
    load_batch(&paths, size)
}

fn progress_bar(len: usize, msg: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:<22} [{bar:32}] {pos}/{len} images  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Runs the frozen base over `pixels` (NHWC RGB u8, `n` images) in batches, returning features
/// `[n, feature_dim]` float32 on the CPU.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn extract_features(
    base: &Base,
    pixels: &[u8],
    n: usize,
    batch: usize,
    pb: &ProgressBar,
) -> Result<Tensor> {
    let s = base.input_size;
    let per = s * s * 3;
    let mut parts = Vec::new();
    let _guard = tch::no_grad_guard();
    for start in (0..n).step_by(batch.max(1)) {
        let m = batch.min(n - start);
        let x = crate::data::caffe_preprocess(&pixels[start * per..(start + m) * per], m, s);
        let x = Tensor::f_from_slice(&x)?.f_view([m as i64, 3, s as i64, s as i64])?;
        parts.push(base.features(&x)?.f_to_device(Device::Cpu)?);
        pb.inc(m as u64);
    }
    pb.finish_and_clear();
    Ok(Tensor::f_cat(&parts, 0)?)
}

fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t
        .f_to_kind(Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_view([-1])?;
    Ok(Vec::<f32>::try_from(&flat)?)
}

/// Mean categorical cross-entropy of `logits` `[n, classes]` against labels `y` `[n]` (int64).
fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(logits
        .f_log_softmax(-1, Kind::Float)?
        .f_nll_loss::<Tensor>(y, None, tch::Reduction::Mean, -100)?)
}

/// Mean loss and accuracy of `head` (evaluation mode) on features `x` with labels `y`.
fn evaluate(head: &Head, x: &Tensor, y: &Tensor) -> Result<(f64, f64, Tensor)> {
    let _guard = tch::no_grad_guard();
    let logits = head.forward(x, false)?;
    let loss = cross_entropy(&logits, y)?.f_double_value(&[])?;
    let acc = logits
        .f_argmax(-1, false)?
        .f_eq_tensor(y)?
        .f_to_kind(Kind::Float)?
        .f_mean(Kind::Float)?
        .f_double_value(&[])?;
    Ok((loss, acc, logits))
}

/// Fine-tunes the dense head on the frozen VGG16 base and writes a run folder.
///
/// # Errors
/// Missing or wrong weights, unreadable data (file named), classes that differ between `train/` and
/// `test/`, a non-finite loss, libtorch failures, or a run folder that cannot be written.
pub fn train(opts: &TrainOptions) -> Result<TrainOutcome> {
    if opts.epochs == 0 || opts.batch_size == 0 || opts.extract_batch_size == 0 {
        return Err(Error::Usage(
            "--epochs, --batch-size and --extract-batch-size must be at least 1".into(),
        ));
    }
    let train_ds = ImageFolder::open(&opts.data.join("train"))?;
    let test_ds = ImageFolder::open(&opts.data.join("test"))?;
    if train_ds.classes != test_ds.classes {
        return Err(Error::invalid(
            &opts.data,
            format!(
                "class folders differ between train/ {:?} and test/ {:?}",
                train_ds.classes, test_ds.classes
            ),
        ));
    }
    if train_ds.classes.len() < 2 {
        return Err(Error::invalid(
            opts.data.join("train"),
            "needs at least 2 class folders",
        ));
    }
    let classes = train_ds.classes.clone();
    let arch = Arch::vgg16_transfer(32, classes.len());
    let (base_weights, fingerprint) = load_base(&opts.weights, &arch, opts.allow_unverified)?;
    let device = resolve_device(opts.device)?;
    let train_set = train_ds.balanced_subset(opts.train_limit);
    let test_set = test_ds.balanced_subset(opts.test_limit);
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => run::timestamp_name(),
    };
    let config = RunConfig {
        name: name.clone(),
        pipe_version: env!("CARGO_PKG_VERSION").into(),
        data: opts.data.clone(),
        weights: opts.weights.clone(),
        weights_fingerprint: fingerprint.clone(),
        classes: classes.clone(),
        input_size: arch.input_size,
        preprocessing: run::CAFFE_PREPROCESSING.into(),
        train_images: train_set.len(),
        test_images: test_set.len(),
        train_limit: opts.train_limit,
        test_limit: opts.test_limit,
        epochs: opts.epochs,
        batch_size: opts.batch_size,
        optimizer: "sgd".into(),
        lr: opts.lr,
        momentum: opts.momentum,
        seed: opts.seed,
        device: device_name(device),
    };
    eprintln!(
        "pipe train: {} train / {} test images, {} classes, VGG16 frozen base + head 512→256→{} on {}; \
         SGD lr {} momentum {}, batch {}, {} epochs, seed {}",
        train_set.len(),
        test_set.len(),
        classes.len(),
        classes.len(),
        config.device,
        opts.lr,
        opts.momentum,
        opts.batch_size,
        opts.epochs,
        opts.seed
    );

    let t0 = Instant::now();
    let train_px = load_pixels(&train_set, arch.input_size)?;
    let test_px = load_pixels(&test_set, arch.input_size)?;
    let base = Base::new(&arch, &base_weights, device)?;
    drop(base_weights);
    let total = train_set.len() + test_set.len();
    let pb = progress_bar(total, "extracting features", opts.progress);
    let t_extract = Instant::now();
    let train_x = extract_features(
        &base,
        &train_px,
        train_set.len(),
        opts.extract_batch_size,
        &pb,
    )?;
    let test_x = extract_features(
        &base,
        &test_px,
        test_set.len(),
        opts.extract_batch_size,
        &pb,
    )?;
    let extract_s = t_extract.elapsed().as_secs_f64();
    eprintln!(
        "features: {total} images through the frozen base in {extract_s:.1} s ({:.0} images/s)",
        total as f64 / extract_s.max(1e-9)
    );
    drop(base);

    let to_labels =
        |s: &[Sample]| Tensor::from_slice(&s.iter().map(|x| x.label as i64).collect::<Vec<_>>());
    let train_x = train_x.f_to_device(device)?;
    let test_x = test_x.f_to_device(device)?;
    let train_y = to_labels(&train_set).f_to_device(device)?;
    let test_y = to_labels(&test_set).f_to_device(device)?;

    tch::manual_seed(opts.seed as i64);
    let vs = nn::VarStore::new(device);
    let head = Head::new(&vs.root(), &arch);
    let mut opt = nn::Sgd {
        momentum: opts.momentum,
        ..Default::default()
    }
    .build(&vs, opts.lr)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let n = train_set.len();
    let mut order: Vec<i64> = (0..n as i64).collect();
    let mut history = Vec::with_capacity(opts.epochs);
    for epoch in 1..=opts.epochs {
        let te = Instant::now();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0f64, 0i64);
        for chunk in order.chunks(opts.batch_size) {
            let idx = Tensor::from_slice(chunk).f_to_device(device)?;
            let xb = train_x.f_index_select(0, &idx)?;
            let yb = train_y.f_index_select(0, &idx)?;
            let logits = head.forward(&xb, true)?;
            let loss = cross_entropy(&logits, &yb)?;
            opt.backward_step(&loss);
            let l = loss.f_double_value(&[])?;
            if !l.is_finite() {
                return Err(Error::Usage(format!(
                    "training diverged at epoch {epoch}: loss is {l}; lower --lr (now {})",
                    opts.lr
                )));
            }
            loss_sum += l * chunk.len() as f64;
            correct += logits
                .f_argmax(-1, false)?
                .f_eq_tensor(&yb)?
                .f_sum(Kind::Int64)?
                .f_int64_value(&[])?;
        }
        let (val_loss, val_acc, _) = evaluate(&head, &test_x, &test_y)?;
        let m = EpochMetrics {
            epoch,
            loss: loss_sum / n as f64,
            accuracy: correct as f64 / n as f64,
            val_loss,
            val_accuracy: val_acc,
            seconds: te.elapsed().as_secs_f64(),
        };
        eprintln!(
            "Epoch {epoch}/{}  loss {:.4}  accuracy {:.4}  val_loss {:.4}  val_accuracy {:.4}  ({:.2} s)",
            opts.epochs, m.loss, m.accuracy, m.val_loss, m.val_accuracy, m.seconds
        );
        history.push(m);
    }

    let (test_loss, test_accuracy, logits) = evaluate(&head, &test_x, &test_y)?;
    let probs = logits.f_softmax(-1, Kind::Float)?;
    let probs = to_vec_f32(&probs)?;
    let items = test_set
        .iter()
        .zip(probs.chunks_exact(classes.len()))
        .map(|(s, p)| PredictionItem {
            file: s.name.clone(),
            label: s.label,
            probabilities: p.to_vec(),
        })
        .collect();
    let predictions = Predictions {
        data_root: opts.data.join("test"),
        classes: classes.clone(),
        items,
    };

    let vars = vs.variables();
    let mut head_tensors = Vec::new();
    for (name, shape) in arch.head_params() {
        let key = name.trim_start_matches("head.");
        let t = vars
            .get(key)
            .ok_or_else(|| Error::Torch(format!("head variable {key} missing")))?;
        head_tensors.push(NamedTensor {
            name,
            shape,
            data: to_vec_f32(t)?,
        });
    }

    let run_dir = run::create_run(&opts.runs_dir, &name, |dir| {
        save_safetensors(
            &dir.join(run::HEAD_FILE),
            &head_tensors,
            HashMap::from([(FINGERPRINT_KEY.to_string(), fingerprint.clone())]),
        )?;
        crate::util::write_json_atomic(&dir.join(run::CONFIG_FILE), &config)?;
        crate::util::write_json_atomic(&dir.join(run::HISTORY_FILE), &history)?;
        crate::util::write_json_atomic(&dir.join(run::PREDICTIONS_FILE), &predictions)?;
        Ok(())
    })?;
    eprintln!(
        "run written to {} in {:.1} s",
        run_dir.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(TrainOutcome {
        run_dir,
        history,
        test_loss,
        test_accuracy,
    })
}
