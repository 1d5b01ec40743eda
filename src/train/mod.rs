//! Training with libtorch (tch). A run is the frozen VGG16 base plus the dense head trained on cached
//! base features, or (`--unfreeze N`) the last N conv layers fine-tuned with the head on decoded images
//! after a head warm-up on the cached features.
//!
//! - [`train`] (this file) orchestrates a run: its folder, data or features, the model, the learner,
//!   and the outputs (`config.json` and `split.json` first, `checkpoint.safetensors` after every
//!   epoch, then `skipped.json`, `head.safetensors`, `best.safetensors`, `base.safetensors` when fine-tuned, `history.json`,
//!   `predictions.json`, the figures; then `models/runs/latest`). `--resume` continues an unfinished
//!   run from its last checkpoint and ends exactly as an uninterrupted run would.
//! - `learner.rs`: the one epoch loop ([`Learner`]) over a [`Model`]; `head.rs` ([`HeadModel`]) and
//!   `finetune.rs` ([`FineTuneModel`]) are the two models.
//! - `optim.rs`: SGD, Adam and the learning-rate schedules; `checkpoint.rs`: the per-epoch state.
//! - `images.rs`: the run's images: layout, split list (`split.json`), decoding with the run's
//!   [`crate::data::ImageSpec`], skipped files (`skipped.json`); `augment.rs`: augmentation of
//!   fine-tuning (CIFAR-style flips and shifts, photo-style random resized crops).
//! - `features.rs`: feature extraction through the frozen base and the feature cache; `model.rs`:
//!   the tch base and head built from [`crate::arch`].
//! - `eval.rs`: `pipe evaluate` and `pipe sweep`.

mod augment;
mod checkpoint;
mod eval;
mod features;
mod finetune;
mod head;
mod images;
mod learner;
mod model;
mod optim;

pub use crate::config::{
    validate_input_size, Optimizer, Schedule, TrainDevice, DEFAULT_CACHE_DIR, VGG16_CONVS,
};
pub use augment::{
    augment_image, crop_box, flip_horizontally, random_resized_crop, Augmenter, PhotoSet,
    PHOTO_CROP_RATIO, PHOTO_CROP_SCALE,
};
pub use checkpoint::{load_checkpoint, save_checkpoint, trainable_params, Best, Checkpoint};
pub use eval::{evaluate_run, sweep, validate_sweep, Evaluation, SweepRow};
pub use features::{
    cache_key, extract, prepare_features, preview_indices, preview_pixels, split_features,
    Features, SplitInfo, PREVIEW_IMAGES,
};
pub use finetune::{evaluate_pixels, FineTuneModel, FineTuneNet, PixelSplit, PixelSplits};
pub use head::{evaluate_head, HeadModel};
pub use images::{
    build_list, held_out_info, layout_line, list_layout, read_list, report_skipped, run_spec,
    RunImages, SKIPPED_FILE,
};
pub use learner::{
    early_stop_message, label_tensor, patience_exhausted, EvalSplit, Fitted, Learner, Model, Scores,
};
pub use model::{from_tch, to_tch, Base, Head, IntraOpThreads};
pub use optim::{
    adam_step, cross_entropy, lr_at, lr_at_step, optimise_step, optimizer_state_spec, sgd_step,
    OptState,
};

use crate::arch::Arch;
use crate::config::{AugmentStyle, CpuBf16, TrainConfig, TrainEnv};
use crate::data::{DataLayout, LayoutKind, LoadedSplit, OnError, SkippedFile, SPLIT_FILE};
use crate::error::{Error, Result};
use crate::run::{self, EpochMetrics, Phase, PredictionItem, Predictions};
use crate::util::write_json_atomic;
use crate::weights::{load_base, save_safetensors, NamedTensor, FINGERPRINT_KEY};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind};

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
    /// Image files left out because they could not be decoded (also in the run's `skipped.json`).
    pub skipped: Vec<SkippedFile>,
}

/// Trains a new run with `config` (validated first), or with `env.resume` finishes an unfinished one
/// (whose `config.json` and `split.json` then win over `config`), and writes the run folder.
///
/// Image files that cannot be decoded are skipped (named on stderr, listed in the outcome and the
/// run's `skipped.json`), or with `env.strict` stop the run.
///
/// # Errors
/// An invalid configuration; missing or wrong weights; unusable data (a layout pipe does not know,
/// too few classes or images, a class only in a held-out split: named); with `env.strict`, the first
/// image that cannot be decoded; a non-finite loss (the last good checkpoint stays in the run
/// folder); libtorch failures; a run folder that cannot be written.
pub fn train(config: &TrainConfig, env: &TrainEnv) -> Result<TrainOutcome> {
    let t0 = Instant::now();
    let device = resolve_device(env.device)?;
    let (dir, config, why) = run_config(config, env, device)?;
    env.validate()?;
    let resumed_list = match &dir {
        Some(d) => images::read_list(d)?,
        None => None,
    };
    let layout = match &resumed_list {
        Some(list) => images::list_layout(list),
        None => DataLayout::detect(&config.data)?,
    };
    eprintln!("{}", images::layout_line(&layout));
    let config = match config.layout {
        // A run started before layouts were recorded resumes with the shares it was started with.
        None if env.resume => config,
        _ => {
            let shares = config.split_options().shares(layout.kind)?;
            config.with_shares(layout.kind, shares)
        }
    };
    eprintln!("{}", config.describe(&device_name(device), &why));
    if !config.holds_out_validation() && (config.patience.is_some() || config.restore_best) {
        eprintln!(
            "warning: without --val-split, --patience and --restore-best choose epochs by the test \
             split's loss, so the final test accuracy is not a held-out figure; add --val-split 0.1"
        );
    }
    let list = match resumed_list {
        Some(list) => list,
        None => images::build_list(&layout, &config)?,
    };
    let images = RunImages::load(list, images::run_spec(&config), OnError::strict(env.strict))?;
    let start = Start {
        env,
        dir,
        device,
        t0,
    };
    if config.unfreeze > 0 {
        finetune_run(start, config, &images)
    } else {
        head_run(start, config, &images)
    }
}

/// The run folder (when resuming), configuration and the reason for its fine-tuning precision of
/// [`train`]: a resumed run's `config.json`, or `config` checked and recorded for a new run (cheap checks first: nothing is written and no image
/// decoded for a bad option).
fn run_config(
    config: &TrainConfig,
    env: &TrainEnv,
    device: Device,
) -> Result<(Option<PathBuf>, TrainConfig, String)> {
    if env.resume {
        let dir = run::find_resumable(&env.runs_dir, env.name.as_deref())?;
        let config: TrainConfig = crate::util::read_json(&dir.join(run::CONFIG_FILE))?;
        eprintln!(
            "resuming run {} (its config.json wins over other options)",
            dir.display()
        );
        return Ok((Some(dir), config, "as the run started".to_string()));
    }
    let name = env.name.clone().unwrap_or_else(run::timestamp_name);
    run::check_new_run(&env.runs_dir, &name)?;
    config.validate()?;
    let (precision, why) = config
        .precision
        .unwrap_or_default()
        .resolve(device.is_cuda(), CpuBf16::detect());
    let started = config
        .clone()
        .started(&name, &device_name(device), precision);
    Ok((None, started, why))
}

/// How a run starts: the invocation's choices, the folder of a resumed run, the device, the clock.
struct Start<'a> {
    env: &'a TrainEnv,
    /// The run folder when resuming; a new run's is created by [`Run::open`].
    dir: Option<PathBuf>,
    device: Device,
    t0: Instant,
}

/// What a run finds in its data and weights, recorded in its `config.json`.
struct Found<'i> {
    fingerprint: String,
    images: &'i RunImages,
}

/// The frozen-base path of [`train`]: the head trained on cached features.
fn head_run(start: Start, config: TrainConfig, images: &RunImages) -> Result<TrainOutcome> {
    let features = prepare_features(images, &config, start.env, start.device)?;
    report_extraction(&features);
    report_split(images);
    start.check_fingerprint(&config, &features.fingerprint)?;
    let found = Found {
        fingerprint: features.fingerprint.clone(),
        images,
    };
    let (run, resume) = Run::open(start, config, found)?;
    let fitted = {
        let model = HeadModel::new(&features, &run.arch(), run.config.seed, run.device);
        let mut model = model.map_err(|e| run.abandon_if_empty(e))?;
        run.fit(&mut model, Learner::new(&run.config).log("Epoch"), resume)?
    };
    run.finish(
        fitted,
        &features.test,
        (&features.test_preview, features.preview_size),
        &images.skipped,
    )
}

/// The `--unfreeze N` path of [`train`]: decoded images instead of cached features, the last N convs
/// trained with the head (after a head warm-up); the tuned base is written to `base.safetensors` in
/// the run folder (export and evaluate use it).
fn finetune_run(start: Start, config: TrainConfig, images: &RunImages) -> Result<TrainOutcome> {
    let arch = config.arch(images.list.classes.len());
    let (weights, fingerprint) = load_base(&config.weights, &arch, start.env.allow_unverified)?;
    start.check_fingerprint(&config, &fingerprint)?;
    report_split(images);
    let found = Found {
        fingerprint,
        images,
    };
    let (run, resume) = Run::open(start, config, found)?;
    let photos = run.photos(images)?;
    eprintln!(
        "fine-tuning the last {} conv layers and the head on {} images per epoch{}",
        run.config.unfreeze,
        images.train.len(),
        Augmenter::of(&run.config, photos.as_ref())?.describe()
    );
    let (init_head, warm_up) = match resume {
        None if run.config.head_epochs > 0 => {
            let (params, history) = run.warm_up_head(images)?;
            (Some(params), history)
        }
        _ => (None, Vec::new()),
    };
    let test = &images.test;
    let splits = PixelSplits {
        train: (&images.train).into(),
        val: images.val.as_ref().unwrap_or(test).into(),
        test: test.into(),
        photos: photos.as_ref(),
    };
    let mut model = FineTuneModel::new(
        splits,
        &arch,
        &weights,
        &run.config,
        init_head.as_deref(),
        run.device,
    )
    .map_err(|e| run.abandon_if_empty(e))?;
    // Fine-tuning epochs take minutes, so they show a progress bar (head epochs take a fraction of a
    // second and do not).
    let learner = Learner::new(&run.config)
        .log("Epoch")
        .progress(run.env.progress)
        .phase(Phase::FineTune)
        .after(&warm_up);
    let fitted = run.fit(&mut model, learner, resume)?;
    let base = model.base_tensors(&arch)?;
    drop(model);
    save_safetensors(&run.dir.join(run::BASE_FILE), &base, run.fingerprint_meta())?;
    let preview = preview_pixels(test);
    let info = images.test_info();
    run.finish(fitted, &info, (&preview, test.size), &images.skipped)
}

/// Prints where the features came from: extracted (with the rate) or the cache.
fn report_extraction(f: &Features) {
    if f.extracted > 0 {
        eprintln!(
            "features: {} images through the frozen base in {:.1} s ({:.0} images/s)",
            f.extracted,
            f.extract_seconds,
            f.extracted as f64 / f.extract_seconds.max(1e-9)
        );
    } else {
        eprintln!(
            "features: all {} images from the feature cache ({:.1} s)",
            f.train.labels.len()
                + f.val.as_ref().map_or(0, |v| v.labels.len())
                + f.test.labels.len(),
            f.extract_seconds
        );
    }
}

/// Prints what validates: a `--val-split` share of the training images, the `val/` folder, or (for
/// a single folder of class folders) the whole split pipe made.
fn report_split(images: &RunImages) {
    let list = &images.list;
    let held_out = images.val.as_ref().map_or(0, LoadedSplit::len);
    let test_only = "the test split is used only at the end";
    match list.layout {
        LayoutKind::ClassFolders => eprintln!(
            "split: {} (--val-split {}, --test-split {}; the list is kept in the run's {SPLIT_FILE})",
            list.describe(),
            list.val_share,
            list.test_share
        ),
        LayoutKind::TrainValTest => {
            eprintln!("validation: the {held_out} images of val/; {test_only}")
        }
        _ if list.val_share > 0.0 => eprintln!(
            "validation: {held_out} of the training images held out (--val-split {}); {test_only}",
            list.val_share
        ),
        _ => {}
    }
}

impl Start<'_> {
    /// A resumed run must see the base weights it started with.
    fn check_fingerprint(&self, config: &TrainConfig, fingerprint: &str) -> Result<()> {
        if self.env.resume && config.weights_fingerprint != fingerprint {
            return Err(Error::invalid(
                &config.weights,
                "base weights changed since the run started; cannot resume",
            ));
        }
        Ok(())
    }
}

/// A run being trained: its folder and configuration, with the invocation's choices.
struct Run<'a> {
    env: &'a TrainEnv,
    dir: PathBuf,
    config: TrainConfig,
    device: Device,
    t0: Instant,
}

impl<'a> Run<'a> {
    /// Records `found` in the configuration; for a new run creates the folder and writes
    /// `config.json` and `split.json`, for a resumed one reads its checkpoint (and writes the
    /// `split.json` a run of an earlier pipe lacks).
    fn open(
        start: Start<'a>,
        config: TrainConfig,
        found: Found,
    ) -> Result<(Run<'a>, Option<Checkpoint>)> {
        let images = found.images;
        let config = TrainConfig {
            weights_fingerprint: found.fingerprint,
            classes: images.list.classes.clone(),
            train_images: images.train.len(),
            val_images: images.val.as_ref().map_or(0, LoadedSplit::len),
            test_images: images.test.len(),
            ..config
        };
        let dir = match start.dir {
            Some(dir) => dir,
            None => {
                let dir = run::new_run_dir(&start.env.runs_dir, &config.name)?;
                write_json_atomic(&dir.join(run::CONFIG_FILE), &config)?;
                dir
            }
        };
        if !dir.join(SPLIT_FILE).is_file() {
            images.list.write(&dir.join(SPLIT_FILE))?;
        }
        let run = Run {
            env: start.env,
            dir,
            config,
            device: start.device,
            t0: start.t0,
        };
        let resume = if run.env.resume {
            let trainable = trainable_params(&run.arch(), run.config.unfreeze);
            load_checkpoint(&run.dir, &trainable, run.config.optimizer)?
        } else {
            None
        };
        if let Some(c) = &resume {
            eprintln!(
                "continuing after epoch {} of {}",
                c.epoch, run.config.epochs
            );
        }
        Ok((run, resume))
    }

    /// The network of the run.
    fn arch(&self) -> Arch {
        self.config.arch(self.config.classes.len())
    }

    /// The metadata of the run's safetensors files: the base-weights fingerprint.
    fn fingerprint_meta(&self) -> HashMap<String, String> {
        HashMap::from([(
            FINGERPRINT_KEY.to_string(),
            self.config.weights_fingerprint.clone(),
        )])
    }

    /// Trains `model` with `learner`, from `resume` when given, writing the checkpoint after every
    /// epoch; a divergence is explained, and a new run that fails before its first checkpoint leaves
    /// no folder.
    fn fit(
        &self,
        model: &mut impl Model,
        learner: Learner,
        resume: Option<Checkpoint>,
    ) -> Result<Fitted> {
        learner
            .fit(model, resume, |ck| self.epoch_done(ck))
            .map_err(|e| self.abandon_if_empty(explain_divergence(e, &self.dir, self.config.lr)))
    }

    /// The training photos that photo augmentation crops from, decoded when the run asks for it.
    fn photos(&self, images: &RunImages) -> Result<Option<PhotoSet>> {
        let c = &self.config;
        if !c.augment || c.augment_style.resolve(c.input_size) != AugmentStyle::Photo {
            return Ok(None);
        }
        let t0 = Instant::now();
        let photos = PhotoSet::decode(images).map_err(|e| self.abandon_if_empty(e))?;
        eprintln!(
            "photo augmentation: {} training photos decoded at a shorter side of up to {} pixels in \
             {:.1} s",
            photos.len(),
            c.input_size * 8 / 7,
            t0.elapsed().as_secs_f64()
        );
        Ok(Some(photos))
    }

    /// Trains the head alone for `head_epochs` epochs on frozen-base features of `images` (from the
    /// feature cache when present), with the settings of [`TrainConfig::head_warm_up`], and returns
    /// its parameters and history (the run's first history lines, marked as warm-up).
    fn warm_up_head(&self, images: &RunImages) -> Result<(Vec<NamedTensor>, Vec<EpochMetrics>)> {
        let c = &self.config;
        eprintln!(
            "head warm-up: {} of the head alone on frozen-base features (--head-epochs), lr {}",
            crate::util::plural(c.head_epochs, "epoch"),
            c.head_lr
        );
        let warm_up = || -> Result<(Vec<NamedTensor>, Vec<EpochMetrics>)> {
            let features = prepare_features(images, c, self.env, self.device)?;
            let settings = c.head_warm_up();
            let mut model = HeadModel::new(&features, &self.arch(), settings.seed, self.device)?;
            let learner = Learner::new(&settings)
                .log("Warm-up epoch")
                .phase(Phase::WarmUp);
            let fitted = learner.fit(&mut model, None, |_| Ok(()))?;
            Ok((fitted.params, fitted.history))
        };
        warm_up().map_err(|e| self.abandon_if_empty(e))
    }

    /// After each epoch: writes the checkpoint, and stops as asked by `--interrupt-after-epoch`.
    fn epoch_done(&self, ck: &Checkpoint) -> Result<()> {
        save_checkpoint(&self.dir, ck, &self.config.weights_fingerprint)?;
        match self.env.interrupt_after {
            Some(n) if ck.epoch >= n => Err(Error::Usage(format!(
                "interrupted after epoch {} as asked; continue with `{}`",
                ck.epoch,
                run::resume_command(&self.env.runs_dir, &self.config.name)
            ))),
            _ => Ok(()),
        }
    }

    /// When a new run fails before its first checkpoint (e.g. a loss that diverges in epoch 1), removes
    /// its folder, which then holds only `config.json`: left behind, `--resume` would pick it up as the
    /// latest unfinished run and fail the same way. Returns `e`.
    fn abandon_if_empty(&self, e: Error) -> Error {
        if !self.env.resume
            && !self.dir.join(run::CHECKPOINT_FILE).exists()
            && std::fs::remove_dir_all(&self.dir).is_ok()
        {
            return match e {
                Error::Usage(m) => Error::Usage(format!("{m} (the empty run folder was removed)")),
                other => other,
            };
        }
        e
    }

    /// Writes the outputs of a finished run: the `skipped` image files, head (and best epoch)
    /// weights, history, tch's predictions on the `test` images, figures (with the `preview` images
    /// of side `preview_size`); then points `latest` at the run.
    ///
    /// # Errors
    /// Unwritable run folder; libtorch errors.
    fn finish(
        self,
        fitted: Fitted,
        test: &SplitInfo,
        (preview, preview_size): (&[(usize, Vec<u8>)], usize),
        skipped: &[SkippedFile],
    ) -> Result<TrainOutcome> {
        let c = &self.config;
        SkippedFile::write_list(&self.dir.join(SKIPPED_FILE), skipped)?;
        let chance = 1.0 / c.classes.len() as f64;
        if fitted.test_accuracy <= 1.5 * chance {
            eprintln!(
                "warning: test accuracy {:.3} is at chance level ({chance:.3}); the run has not learned \
                 (learning rate too high or too low?)",
                fitted.test_accuracy
            );
        }
        let predictions = predictions(test, &fitted, &c.classes)?;
        let head_names: Vec<String> = self
            .arch()
            .head_params()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let head: Vec<NamedTensor> = fitted
            .params
            .iter()
            .filter(|t| head_names.contains(&t.name))
            .cloned()
            .collect();
        save_safetensors(
            &self.dir.join(run::HEAD_FILE),
            &head,
            self.fingerprint_meta(),
        )?;
        if let Some(b) = &fitted.best {
            let mut meta = self.fingerprint_meta();
            meta.insert("epoch".to_string(), b.epoch.to_string());
            meta.insert("val_loss".to_string(), b.val_loss.to_string());
            save_safetensors(&self.dir.join(run::BEST_FILE), &b.params, meta)?;
        }
        write_json_atomic(&self.dir.join(run::HISTORY_FILE), &fitted.history)?;
        write_json_atomic(&self.dir.join(run::PREDICTIONS_FILE), &predictions)?;
        write_figures(
            &self.dir,
            c,
            preview,
            preview_size,
            &fitted.history,
            &predictions,
        )?;
        run::set_latest(&self.env.runs_dir, &c.name)?;
        eprintln!(
            "run written to {} in {:.1} s",
            self.dir.display(),
            self.t0.elapsed().as_secs_f64()
        );
        Ok(TrainOutcome {
            run_dir: self.dir,
            history: fitted.history,
            test_loss: fitted.test_loss,
            test_accuracy: fitted.test_accuracy,
            skipped: skipped.to_vec(),
        })
    }
}

/// `predictions.json`: tch's softmax probabilities of the `test` images from the final test logits.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
fn predictions(test: &SplitInfo, fitted: &Fitted, classes: &[String]) -> Result<Predictions> {
    let probs = fitted.test_logits.f_softmax(-1, Kind::Float)?;
    let probs = from_tch("probabilities", &probs)?.data;
    let items = test
        .names
        .iter()
        .zip(&test.labels)
        .zip(probs.chunks_exact(classes.len()))
        .map(|((file, &label), p)| PredictionItem {
            file: file.clone(),
            label,
            probabilities: p.to_vec(),
        })
        .collect();
    Ok(Predictions {
        data_root: test.root.clone(),
        classes: classes.to_vec(),
        items,
    })
}

/// Writes the run's figures: `accuracy.png` and `loss.png` (training and validation per epoch),
/// `predictions.png` (a grid of test images with tch's predicted labels, wrong ones in red) and
/// `confusion.png` (test confusion matrix).
///
/// # Errors
/// [`Error::Io`] naming the figure when it cannot be drawn or written.
fn write_figures(
    run_dir: &Path,
    config: &TrainConfig,
    preview: &[(usize, Vec<u8>)],
    preview_size: usize,
    history: &[EpochMetrics],
    predictions: &Predictions,
) -> Result<()> {
    use crate::plot;
    let val_name = if config.holds_out_validation() {
        "validation"
    } else {
        "validation (test split)"
    };
    for (curve, file) in [
        (plot::Curve::Accuracy, run::ACCURACY_PNG),
        (plot::Curve::Loss, run::LOSS_PNG),
    ] {
        plot::training_curves(history, curve, val_name, &run_dir.join(file))?;
    }
    if config.unfreeze > 0 {
        let (warm_up, fine_tune) = lr_curve(config, history);
        plot::learning_rate(warm_up, fine_tune, &run_dir.join(run::LR_PNG))?;
    }
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

/// Points (x, y) of a plotted line.
type Curve = Vec<(f64, f64)>;

/// The learning rate of a fine-tuning run with `history` as (epoch, rate) points, x from the start of
/// the head warm-up: the warm-up's constant rate, then the rate of every fine-tuning step (the
/// schedule's, as [`optimise_step`] used it) up to the last epoch run.
fn lr_curve(c: &TrainConfig, history: &[EpochMetrics]) -> (Curve, Curve) {
    let warm = history
        .iter()
        .filter(|m| m.phase == Some(Phase::WarmUp))
        .count() as f64;
    let warm_up = if warm > 0.0 {
        vec![(0.0, c.head_lr), (warm, c.head_lr)]
    } else {
        Vec::new()
    };
    let epochs = history
        .iter()
        .filter(|m| m.phase == Some(Phase::FineTune))
        .count();
    let steps = c.train_images.div_ceil(c.batch_size).max(1);
    let fine_tune = (1..=epochs)
        .flat_map(|e| (0..steps).map(move |s| (e, s)))
        .map(|(e, s)| {
            let x = warm + (e - 1) as f64 + s as f64 / steps as f64;
            (x, lr_at_step(c, e, s, steps))
        })
        .collect();
    (warm_up, fine_tune)
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
