//! The life of a training run: [`train`] checks the settings (or finds the run to resume), detects
//! the data's layout, decodes the images, then trains the head on cached frozen-base features or
//! (`--unfreeze N`) fine-tunes the last N convs after a head warm-up, writing `config.json` and
//! `split.json` first and a checkpoint after every epoch; [`super::outputs`] writes the rest.
//! `--resume` continues an unfinished run from its last checkpoint and ends exactly as an
//! uninterrupted run would.

use super::augment::{Augmenter, PhotoSet};
use super::budget;
use super::checkpoint::{load_checkpoint, save_checkpoint, trainable_params, Checkpoint};
use super::device::{device_name, resolve_device};
use super::features::{extract_shard, prepare_features, Features, ShardPart};
use super::finetune::{time_precisions, FineTuneModel, PixelSplits};
use super::head::HeadModel;
use super::images::{self, RunImages, SplitInfo};
use super::learner::{
    measure_training_speed, EvalSplit, Fitted, Learner, Model, ESTIMATE_AFTER_BATCHES,
};
use super::outputs::{fingerprint_meta, finish, FinishedRun, TrainOutcome};
use crate::arch::Arch;
use crate::config::{AugmentStyle, Precision, TrainConfig, TrainEnv};
use crate::cpu::CpuFeatures;
use crate::data::{DataLayout, LayoutKind, LoadedSplit, OnError, SkippedFile, SPLIT_FILE};
use crate::error::{Error, Result};
use crate::events::{EventSink, Warning};
use crate::run::{self, EpochMetrics, Phase};
use crate::shard::Shard;
use crate::util::write_json_atomic;
use crate::weights::{load_base, save_safetensors, NamedTensor};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

/// Trains a new run with `config` (validated first), or with `env.resume` finishes an unfinished one
/// (whose `config.json` and `split.json` then win over `config`), and writes the run folder.
///
/// What the run does goes to `events`: its first lines (data, settings), progress, epochs and
/// warnings. Image files that cannot be decoded are skipped (reported, listed in the outcome and the
/// run's `skipped.json`), or with `env.strict` stop the run.
///
/// # Errors
/// An invalid configuration; missing or wrong weights; unusable data (a layout pipe does not know,
/// too few classes or images, a class only in a held-out split: named); with `env.strict`, the first
/// image that cannot be decoded; a non-finite loss (the last good checkpoint stays in the run
/// folder); libtorch failures; a run folder that cannot be written.
pub fn train(config: &TrainConfig, env: &TrainEnv, events: &dyn EventSink) -> Result<TrainOutcome> {
    let t0 = Instant::now();
    let (dir, config, images, device) = prepare(config, env, events)?;
    let start = Start {
        env,
        dir,
        device,
        t0,
        events,
    };
    if config.unfreeze > 0 {
        finetune_run(start, config, &images)
    } else {
        head_run(start, config, &images)
    }
}

/// `pipe train --extract-shard K/N`: the images of a new run with `config` decoded as [`train`]
/// decodes them, then shard `shard` of each split's frozen-base features extracted into the feature
/// cache ([`super::features::extract_shard`]); no run folder is written. Once every shard is there,
/// `pipe train` with the same data, weights and image options extracts nothing.
///
/// # Errors
/// As [`train`] up to the decoding; `--resume` (a shard belongs to no run); no feature cache;
/// weights or libtorch errors; an unwritable cache folder.
pub fn extract_feature_shard(
    config: &TrainConfig,
    env: &TrainEnv,
    shard: Shard,
    events: &dyn EventSink,
) -> Result<(Vec<ShardPart>, Vec<SkippedFile>)> {
    if env.resume {
        return Err(Error::Usage(
            "--extract-shard extracts features for a new run; it cannot be used with --resume"
                .into(),
        ));
    }
    env.extract.cache().ok_or_else(|| {
        Error::Usage(
            "--extract-shard writes into the feature cache, which --no-cache turns off".into(),
        )
    })?;
    let (_, config, images, device) = prepare(config, env, events)?;
    let parts = extract_shard(&images, &config, &env.extract, shard, device, events)?;
    Ok((parts, images.skipped.clone()))
}

/// What [`train`] does before training: the settings checked (or the run to resume found), the
/// data's layout detected, the image list built and the images decoded. Returns the resumed run's
/// folder, the configuration, the images and the device.
///
/// # Errors
/// As [`train`], up to the decoding.
fn prepare(
    config: &TrainConfig,
    env: &TrainEnv,
    events: &dyn EventSink,
) -> Result<(Option<PathBuf>, TrainConfig, RunImages, Device)> {
    let device = resolve_device(env.extract.device)?;
    let (dir, config, why) = run_config(config, env, device, events)?;
    env.extract.validate()?;
    let resumed_list = match &dir {
        Some(d) => images::read_list(d)?,
        None => None,
    };
    let layout = match &resumed_list {
        Some(list) => images::list_layout(list),
        None => DataLayout::detect(&config.data)?,
    };
    events.info(images::layout_line(&layout));
    let config = match config.layout {
        // A run started before layouts were recorded resumes with the shares it was started with.
        None if env.resume => config,
        _ => {
            let shares = config.split_options().shares(layout.kind)?;
            config.with_shares(layout.kind, shares)
        }
    };
    events.info(config.describe(&device_name(device), &why));
    if !config.holds_out_validation() && (config.patience.is_some() || config.restore_best) {
        events.warn(Warning::Other(
            "without --val-split, --patience and --restore-best choose epochs by the test split's \
             loss, so the final test accuracy is not a held-out figure; add --val-split 0.1"
                .into(),
        ));
    }
    let list = match resumed_list {
        Some(list) => list,
        None => images::build_list(&layout, &config, events)?,
    };
    let spec = images::run_spec(&config);
    let images = RunImages::load(list, spec, OnError::strict(env.strict), events)?;
    Ok((dir, config, images, device))
}

/// The run folder (when resuming), configuration and the reason for its fine-tuning precision of
/// [`train`]: a resumed run's `config.json`, or `config` checked and recorded for a new run (cheap checks first: nothing is written and no image
/// decoded for a bad option).
fn run_config(
    config: &TrainConfig,
    env: &TrainEnv,
    device: Device,
    events: &dyn EventSink,
) -> Result<(Option<PathBuf>, TrainConfig, String)> {
    if env.resume {
        let dir = run::find_resumable(&env.runs_dir, env.name.as_deref())?;
        let config: TrainConfig = crate::util::read_json(&dir.join(run::CONFIG_FILE))?;
        events.info(format!(
            "resuming run {} (its config.json wins over other options)",
            dir.display()
        ));
        return Ok((Some(dir), config, "as the run started".to_string()));
    }
    let name = env.name.clone().unwrap_or_else(run::timestamp_name);
    run::check_new_run(&env.runs_dir, &name)?;
    config.validate()?;
    let (started, why) = started(config, &name, device);
    Ok((None, started, why))
}

/// `config` as a new run named `name` records it on `device` ([`TrainConfig::started`]), with its
/// fine-tuning precision resolved for the device and this CPU, and why ([`Precision::resolve`]).
pub(super) fn started(config: &TrainConfig, name: &str, device: Device) -> (TrainConfig, String) {
    let (precision, why) = config
        .precision
        .unwrap_or_default()
        .resolve(device.is_cuda(), CpuFeatures::detect());
    let started = config
        .clone()
        .started(name, &device_name(device), precision);
    (started, why)
}

/// How a run starts: the invocation's choices, the folder of a resumed run, the device, the clock,
/// where the run reports.
struct Start<'a> {
    env: &'a TrainEnv,
    /// The run folder when resuming; a new run's is created by [`Run::open`].
    dir: Option<PathBuf>,
    device: Device,
    t0: Instant,
    events: &'a dyn EventSink,
}

/// What a run finds in its data and weights, recorded in its `config.json`.
struct Found<'i> {
    fingerprint: String,
    images: &'i RunImages,
}

/// The frozen-base path of [`train`]: the head trained on cached features.
fn head_run(start: Start, config: TrainConfig, images: &RunImages) -> Result<TrainOutcome> {
    let events = start.events;
    let features = prepare_features(images, &config, &start.env.extract, start.device, events)?;
    events.info(extraction_line(&features));
    if let Some(line) = split_line(images) {
        events.info(line);
    }
    start.check_fingerprint(&config, &features.fingerprint)?;
    let found = Found {
        fingerprint: features.fingerprint.clone(),
        images,
    };
    let (run, resume) = Run::open(start, config, found)?;
    let fitted = {
        let model = HeadModel::new(&features, &run.arch(), run.config.seed, run.device);
        let mut model = model.map_err(|e| run.abandon_if_empty(e))?;
        let learner = Learner::new(&run.config).report(events, "Epoch");
        run.fit(&mut model, learner, resume)?
    };
    run.finish(fitted, &features.test, &images.test, &images.skipped)
}

/// The `--unfreeze N` path of [`train`]: decoded images instead of cached features, the last N convs
/// trained with the head (after a head warm-up); the tuned base is written to `base.safetensors` in
/// the run folder (export and evaluate use it).
fn finetune_run(start: Start, config: TrainConfig, images: &RunImages) -> Result<TrainOutcome> {
    let arch = config.arch(images.list.classes.len());
    let (weights, fingerprint) =
        load_base(&config.weights, &arch, start.env.extract.allow_unverified)?;
    start.check_fingerprint(&config, &fingerprint)?;
    if let Some(line) = split_line(images) {
        start.events.info(line);
    }
    let found = Found {
        fingerprint,
        images,
    };
    let (mut run, resume) = Run::open(start, config, found)?;
    let photos = run.photos(images)?;
    run.events.info(format!(
        "fine-tuning the last {} conv layers and the head on {} images per epoch{}",
        run.config.unfreeze,
        images.train.len(),
        Augmenter::of(&run.config, photos.as_ref())?.describe()
    ));
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
    // `--precision auto` left to a timing (a CPU with AVX512_BF16 but no AMX): both are timed and
    // the faster is recorded, so that a resumed run trains in it.
    let timed = if run.config.precision == Some(Precision::Auto) {
        let timing =
            time_precisions(&mut model, &run.config).map_err(|e| run.abandon_if_empty(e))?;
        run.events.info(timing.line());
        run.config.precision = Some(timing.chosen);
        Some(timing.rate())
    } else {
        None
    };
    // A new run with a budget plans its epochs here; a resumed one trains the epochs it planned.
    let budget = match (&resume, run.config.budget()) {
        (None, Some(seconds)) => {
            run.plan_epochs(&mut model, seconds, timed)
                .map_err(|e| run.abandon_if_empty(e))?;
            Some(seconds)
        }
        _ => None,
    };
    // The precision kept and the epochs planned, in one write.
    if timed.is_some() || budget.is_some() {
        write_json_atomic(&run.dir.join(run::CONFIG_FILE), &run.config)
            .map_err(|e| run.abandon_if_empty(e))?;
    }
    // Fine-tuning epochs take minutes, so they report progress (head epochs take a fraction of a
    // second and do not).
    let mut learner = Learner::new(&run.config)
        .report(run.events, "Epoch")
        .progress(true)
        .phase(Phase::FineTune)
        .after(&warm_up);
    if let Some(seconds) = budget {
        learner = learner.budget(run.t0, seconds);
    }
    let fitted = run.fit(&mut model, learner, resume)?;
    let base = model.base_tensors(&arch)?;
    drop(model);
    save_safetensors(
        &run.dir.join(run::BASE_FILE),
        &base,
        fingerprint_meta(&run.config),
    )?;
    let info = images.test_info();
    run.finish(fitted, &info, test, &images.skipped)
}

/// Where the features came from: extracted (with the rate) or the cache.
pub(crate) fn extraction_line(f: &Features) -> String {
    if f.extracted > 0 {
        format!(
            "features: {} images through the frozen base in {:.1} s ({} images/s)",
            f.extracted,
            f.extract_seconds,
            crate::util::images_per_s(f.extracted as f64 / f.extract_seconds.max(1e-9))
        )
    } else {
        format!(
            "features: all {} images from the feature cache ({:.1} s)",
            f.train.labels.len()
                + f.val.as_ref().map_or(0, |v| v.labels.len())
                + f.test.labels.len(),
            f.extract_seconds
        )
    }
}

/// What validates, when it is not the test split: a `--val-split` share of the training images, the
/// `val/` folder, or (for a single folder of class folders) the whole split pipe made.
fn split_line(images: &RunImages) -> Option<String> {
    let list = &images.list;
    let held_out = images.val.as_ref().map_or(0, LoadedSplit::len);
    let test_only = "the test split is used only at the end";
    match list.layout {
        LayoutKind::ClassFolders => Some(format!(
            "split: {} (--val-split {}, --test-split {}; the list is kept in the run's {SPLIT_FILE})",
            list.describe(),
            list.val_share,
            list.test_share
        )),
        LayoutKind::TrainValTest => Some(format!(
            "validation: the {held_out} images of val/; {test_only}"
        )),
        _ if list.val_share > 0.0 => Some(format!(
            "validation: {held_out} of the training images held out (--val-split {}); {test_only}",
            list.val_share
        )),
        _ => None,
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
    events: &'a dyn EventSink,
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
            events: start.events,
        };
        let resume = if run.env.resume {
            let trainable = trainable_params(&run.arch(), run.config.unfreeze);
            load_checkpoint(&run.dir, &trainable, run.config.optimizer)?
        } else {
            None
        };
        if let Some(c) = &resume {
            run.events.info(format!(
                "continuing after epoch {} of {}",
                c.epoch, run.config.epochs
            ));
        }
        Ok((run, resume))
    }

    /// The network of the run.
    fn arch(&self) -> Arch {
        self.config.arch(self.config.classes.len())
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

    /// Plans the epochs of a new run with a budget of `seconds` ([`budget::plan`]) from the speed of
    /// a few training batches of `model` (`measured` images/s when a precision timing just measured
    /// it, else timed here) and the time spent since the run started, says what fits,
    /// and sets the run's `epochs` to the epochs planned (the caller writes them to `config.json`, so
    /// that a resumed run trains the same schedule).
    ///
    /// # Errors
    /// libtorch failures.
    fn plan_epochs(
        &mut self,
        model: &mut impl Model,
        seconds: f64,
        measured: Option<f64>,
    ) -> Result<()> {
        let rate = match measured {
            Some(rate) => rate,
            None => measure_training_speed(model, &self.config)?,
        };
        let sizes = budget::Sizes {
            train: model.train_len(),
            val: model.eval_len(EvalSplit::Validation),
            test: model.eval_len(EvalSplit::Test),
        };
        let spent = self.t0.elapsed().as_secs_f64();
        let max = self.config.epochs;
        let plan = budget::plan(seconds, spent, rate, sizes, max);
        let d = crate::util::duration;
        let measured = format!(
            "fine-tuning at {} images/s over {ESTIMATE_AFTER_BATCHES} batches, {} spent",
            crate::util::images_per_s(rate),
            d(spent)
        );
        if plan.fits {
            self.events.info(format!(
                "time budget {}: {} ({measured}; expected to end after about {})",
                d(seconds),
                if plan.capped {
                    format!("all {} fit", crate::util::plural(max, "epoch"))
                } else {
                    format!("{} of {max} epochs fit", plan.epochs)
                },
                d(plan.expected_seconds)
            ));
        } else {
            self.events.warn(Warning::Other(format!(
                "time budget {}: not even one epoch fits ({measured}, about {} per epoch); training \
                 1 epoch, which ends after about {}",
                d(seconds),
                d(plan.epoch_seconds),
                d(plan.expected_seconds)
            )));
        }
        self.config.epochs = plan.epochs;
        Ok(())
    }

    /// The training photos that photo augmentation crops from ([`photo_set`]).
    fn photos(&self, images: &RunImages) -> Result<Option<PhotoSet>> {
        photo_set(&self.config, images, self.events).map_err(|e| self.abandon_if_empty(e))
    }

    /// Trains the head alone for `head_epochs` epochs ([`head_warm_up`]) and returns its parameters
    /// and history (the run's first history lines, marked as warm-up).
    fn warm_up_head(&self, images: &RunImages) -> Result<(Vec<NamedTensor>, Vec<EpochMetrics>)> {
        let warm_up = || -> Result<(Vec<NamedTensor>, Vec<EpochMetrics>)> {
            let (env, device) = (&self.env.extract, self.device);
            let features = prepare_features(images, &self.config, env, device, self.events)?;
            head_warm_up(&self.config, &features, device, self.events)
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

    /// Writes the outputs of the finished run ([`finish`]).
    ///
    /// # Errors
    /// As [`finish`].
    fn finish(
        self,
        fitted: Fitted,
        test: &SplitInfo,
        test_images: &LoadedSplit,
        skipped: &[SkippedFile],
    ) -> Result<TrainOutcome> {
        let run = FinishedRun {
            dir: self.dir,
            config: &self.config,
            runs_dir: &self.env.runs_dir,
            t0: self.t0,
        };
        finish(run, fitted, test, test_images, skipped)
    }
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
                 Lower --lr (now {}) and train again",
                crate::util::rate(lr)
            ))
        }
        other => other,
    }
}

/// The training photos that photo augmentation crops from, decoded when `config` asks for it
/// (`--augment` with the photo style); `None` otherwise.
///
/// # Errors
/// No training photo can be decoded.
pub(crate) fn photo_set(
    config: &TrainConfig,
    images: &RunImages,
    events: &dyn EventSink,
) -> Result<Option<PhotoSet>> {
    if !config.augment || config.augment_style.resolve(config.input_size) != AugmentStyle::Photo {
        return Ok(None);
    }
    let t0 = Instant::now();
    let photos = PhotoSet::decode(images)?;
    events.info(format!(
        "photo augmentation: {} training photos decoded at a shorter side of up to {} pixels in \
         {:.1} s",
        photos.len(),
        config.input_size * 8 / 7,
        t0.elapsed().as_secs_f64()
    ));
    Ok(Some(photos))
}

/// The head warm-up that precedes fine-tuning: the head alone, trained for `config.head_epochs`
/// epochs on the frozen-base `features` with the settings of [`TrainConfig::head_warm_up`]. Returns
/// the head's parameters and the warm-up's history; its epochs are reported to `events` as
/// `Warm-up epoch` lines.
///
/// # Errors
/// libtorch errors; a diverging warm-up.
pub(crate) fn head_warm_up(
    config: &TrainConfig,
    features: &Features,
    device: Device,
    events: &dyn EventSink,
) -> Result<(Vec<NamedTensor>, Vec<EpochMetrics>)> {
    events.info(format!(
        "head warm-up: {} of the head alone on frozen-base features (--head-epochs), lr {}",
        crate::util::plural(config.head_epochs, "epoch"),
        crate::util::rate(config.head_lr)
    ));
    let settings = config.head_warm_up();
    let arch = config.arch(config.classes.len());
    let mut model = HeadModel::new(features, &arch, settings.seed, device)?;
    let learner = Learner::new(&settings)
        .report(events, "Warm-up epoch")
        .phase(Phase::WarmUp);
    let fitted = learner.fit(&mut model, None, |_| Ok(()))?;
    Ok((fitted.params, fitted.history))
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
