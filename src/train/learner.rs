//! The one training loop (a learner, in the fastai/burn sense): epochs, the learning-rate schedule and
//! optimizer steps, per-epoch metrics and history, the epoch and progress events, divergence (a non-finite loss), the best epoch, early stopping, restore-best, and checkpoint/resume.
//!
//! What is trained is a [`Model`]: it says how an epoch's examples are ordered (and so owns its
//! randomness), how a training batch runs forward, and how a split is evaluated. Two models exist: the
//! head on cached features ([`super::head::HeadModel`]) and fine-tuning of the last conv layers on
//! decoded images ([`super::finetune::FineTuneModel`]).

use super::budget::{self, EVAL_SPEEDUP};
use super::checkpoint::{Best, Checkpoint};
use super::model::from_tch;
use super::optim::{
    balanced_class_weights, cross_entropy, lr_at, lr_at_step, optimise_step, training_loss,
    OptState,
};
use crate::config::{ClassWeights, Schedule, TrainConfig};
use crate::error::{Error, Result};
use crate::events::{EpochReport, Estimate, Event, EventSink, Silent, Task};
use crate::run::{EpochMetrics, Phase};
use crate::weights::NamedTensor;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A split a [`Model`] evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSplit {
    /// The validation images (held out of training with `--val-split`, else the test split): per-epoch
    /// metrics, best epoch, early stopping.
    Validation,
    /// The test images: the final figures and predictions.
    Test,
}

/// Loss, accuracy and logits of a model on a split (evaluation mode: no dropout, no gradient).
pub struct Scores {
    /// Mean categorical cross-entropy.
    pub loss: f64,
    /// Share of correct argmax predictions, 0..1.
    pub accuracy: f64,
    /// Logits `[n, classes]`, float32, on the device the model put them.
    pub logits: Tensor,
}

impl Scores {
    /// The scores of `logits` `[n, classes]` against labels `y` `[n]` (int64, same device).
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    pub fn of(logits: Tensor, y: &Tensor) -> Result<Self> {
        let loss = cross_entropy(&logits, y)?.f_double_value(&[])?;
        let accuracy = logits
            .f_argmax(-1, false)?
            .f_eq_tensor(y)?
            .f_to_kind(Kind::Float)?
            .f_mean(Kind::Float)?
            .f_double_value(&[])?;
        Ok(Scores {
            loss,
            accuracy,
            logits,
        })
    }
}

/// Labels as an int64 tensor `[n]` on `device`.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn label_tensor(labels: &[usize], device: Device) -> Result<Tensor> {
    let l: Vec<i64> = labels.iter().map(|&v| v as i64).collect();
    Ok(Tensor::from_slice(&l).f_to_device(device)?)
}

/// The class weights of `config`'s training loss for `model`'s training labels: `None` with
/// `--class-weights none`; with `auto`, [`balanced_class_weights`] of the label counts (classes of
/// `config.classes`), as numbers and as a float32 `[classes]` tensor on `device`.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn class_weight_tensor<M: Model + ?Sized>(
    config: &TrainConfig,
    model: &M,
    device: Device,
) -> Result<Option<(Vec<f64>, Tensor)>> {
    if config.class_weights == ClassWeights::None {
        return Ok(None);
    }
    let mut counts = vec![0usize; config.classes.len()];
    for l in model.train_labels()? {
        if let Some(n) = counts.get_mut(l) {
            *n += 1;
        }
    }
    let w = balanced_class_weights(&counts);
    let t: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    let t = Tensor::from_slice(&t).f_to_device(device)?;
    Ok(Some((w, t)))
}

/// What the [`Learner`] trains.
pub trait Model {
    /// The trainable parameters, with their checkpoint names, sharing storage with the model (the
    /// optimizer updates them in place). The order is the checkpoint's.
    fn parameters(&self) -> Vec<(String, Tensor)>;

    /// Overwrites the trainable parameters with `values` ([`Model::parameters`] names and order).
    ///
    /// # Errors
    /// [`Error::Torch`] when a name or shape differs.
    fn load(&self, values: &[NamedTensor]) -> Result<()>;

    /// Training examples per epoch.
    fn train_len(&self) -> usize;

    /// The labels of the training examples, in example order (for the class weights).
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    fn train_labels(&self) -> Result<Vec<usize>>;

    /// Starts epoch `epoch` (from 1) and returns the order of the training examples in it (indices
    /// `0..train_len()`, cut into batches by the learner). The model seeds or advances its randomness
    /// here, so that a run resumed after epoch `k` draws what an uninterrupted one draws.
    fn epoch_order(&mut self, epoch: usize) -> Vec<usize>;

    /// Draws the randomness that training on `batch` would draw, without training (called for the
    /// completed epochs when a run resumes, after [`Model::epoch_order`]). Nothing by default: for a
    /// model that re-seeds at every epoch.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    fn skip_batch(&mut self, _batch: &[usize]) -> Result<()> {
        Ok(())
    }

    /// Training-mode logits `[batch, classes]` (dropout active, gradients recorded) and int64 labels
    /// `[batch]` of the training examples `batch`.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure (e.g. out of memory).
    fn train_batch(&mut self, batch: &[usize]) -> Result<(Tensor, Tensor)>;

    /// Scores on `split` in evaluation mode.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    fn evaluate(&self, split: EvalSplit) -> Result<Scores>;

    /// Examples of `split` (for time estimates; 0 when unknown).
    fn eval_len(&self, _split: EvalSplit) -> usize {
        0
    }
}

/// Result of [`Learner::fit`].
pub struct Fitted {
    /// Per-epoch metrics.
    pub history: Vec<EpochMetrics>,
    /// Final trainable parameters ([`Model::parameters`] names; the best epoch's with restore-best).
    pub params: Vec<NamedTensor>,
    /// Test logits `[n_test, classes]` of the final model, float32 on the CPU.
    pub test_logits: Tensor,
    /// Final test loss.
    pub test_loss: f64,
    /// Final test accuracy, 0..1.
    pub test_accuracy: f64,
    /// The epoch with the lowest validation loss.
    pub best: Option<Best>,
    /// Set when early stopping ended training: the last epoch run.
    pub stopped_early: Option<usize>,
}

/// The training loop over a [`Model`] with a run's settings (epochs, batch size, optimizer, schedule,
/// patience, restore-best).
pub struct Learner<'a> {
    config: &'a TrainConfig,
    events: &'a dyn EventSink,
    label: &'a str,
    progress: bool,
    phase: Option<Phase>,
    prior: &'a [EpochMetrics],
    budget: Option<(Instant, f64)>,
}

impl<'a> Learner<'a> {
    /// A silent learner (its events dropped) with the settings of `config`.
    pub fn new(config: &'a TrainConfig) -> Self {
        Learner {
            config,
            events: &Silent,
            label: "Epoch",
            progress: false,
            phase: None,
            prior: &[],
            budget: None,
        }
    }

    /// Marks the epochs as `phase` of a fine-tuning run: their history lines get the phase and the
    /// learning rates of their first and last steps, and their epoch lines the rates. Fine-tuning
    /// epochs (minutes each) also get time estimates: the expected total after the first batches, and
    /// the time left after every epoch.
    pub fn phase(self, phase: Phase) -> Self {
        Learner {
            phase: Some(phase),
            ..self
        }
    }

    /// Starts the history of a new run with `prior` (a fine-tuning run's warm-up epochs), which then
    /// stays at the head of every checkpoint's history and of the result's; early stopping and the
    /// best epoch consider only the epochs of this learner.
    pub fn after(self, prior: &'a [EpochMetrics]) -> Self {
        Learner { prior, ..self }
    }

    /// Keeps to a time budget of `seconds` counted from `start`: once an epoch has been timed, the
    /// next is started only when it, the final test and the budget's reserve still fit
    /// ([`budget::next_epoch_fits`]); otherwise training ends there (with an info line), as after
    /// the last epoch.
    pub fn budget(self, start: Instant, seconds: f64) -> Self {
        Learner {
            budget: Some((start, seconds)),
            ..self
        }
    }

    /// Reports to `events`: an [`Event::Epoch`] per epoch, whose line calls the epoch `label`
    /// (`<label> <epoch>/<epochs>  loss ...`, e.g. "Epoch 2/3"), and the early-stopping and
    /// restore-best lines.
    pub fn report(self, events: &'a dyn EventSink, label: &'a str) -> Self {
        Learner {
            events,
            label,
            ..self
        }
    }

    /// Also reports the progress of every epoch ([`Event::Progress`] per batch, in images) when `show`.
    pub fn progress(self, show: bool) -> Self {
        Learner {
            progress: show,
            ..self
        }
    }

    /// Trains `model`: from `resume` when given (the epochs after `resume.epoch`, with the earlier
    /// epochs' randomness replayed), calling `on_epoch` with the state after every epoch (to checkpoint
    /// it). Validation after every epoch; early stopping when the validation loss has not improved for
    /// `patience` epochs; the final scores are on the test split. The settings are checked where a
    /// run or sweep starts ([`TrainConfig::validate`]), not here.
    ///
    /// # Errors
    /// [`Error::Diverged`] when the training or validation loss becomes NaN or infinite; libtorch
    /// errors; `on_epoch`'s errors.
    pub fn fit<M: Model + ?Sized>(
        &self,
        model: &mut M,
        resume: Option<Checkpoint>,
        mut on_epoch: impl FnMut(&Checkpoint) -> Result<()>,
    ) -> Result<Fitted> {
        let c = self.config;
        let params = model.parameters();
        let mut opt = OptState::new(c.optimizer, &params)?;
        let weights = self.class_weights(model, &params)?;
        let (done, mut history, mut best) = match resume {
            Some(ck) => {
                model.load(&ck.params)?;
                opt.load(&ck.momentum)?;
                for epoch in 1..=ck.epoch {
                    let order = model.epoch_order(epoch);
                    for batch in order.chunks(c.batch_size) {
                        model.skip_batch(batch)?;
                    }
                }
                (ck.epoch, ck.history, ck.best)
            }
            None => (0, self.prior.to_vec(), None),
        };
        let mut stopped_early = None;
        let mut timing = Timing::default();
        for epoch in done + 1..=c.epochs {
            if patience_exhausted(&history, c.patience) {
                stopped_early = Some(epoch - 1);
                break;
            }
            if let Some(line) = self.over_budget(&timing, model, epoch) {
                self.events.info(line);
                break;
            }
            let m = self.epoch(
                model,
                (&params, &mut opt, weights.as_ref()),
                epoch,
                &mut timing,
            )?;
            let current = named(&params)?;
            if best.as_ref().is_none_or(|b: &Best| m.val_loss < b.val_loss) {
                best = Some(Best {
                    epoch,
                    val_loss: m.val_loss,
                    params: current.clone(),
                });
            }
            history.push(m);
            on_epoch(&Checkpoint {
                epoch,
                params: current,
                momentum: opt.save(&params)?,
                history: history.clone(),
                best: best.clone(),
            })?;
        }
        self.finish(model, &params, history, best, stopped_early)
    }

    /// With a budget, once an epoch has been timed: the line that ends training before `epoch`
    /// when that epoch, the final test and the reserve would end past the budget; `None` to go on.
    fn over_budget<M: Model + ?Sized>(
        &self,
        timing: &Timing,
        model: &M,
        epoch: usize,
    ) -> Option<String> {
        let (start, seconds) = self.budget?;
        let epoch_seconds = timing.mean_epoch()?;
        let test = timing.left(0, model.eval_len(EvalSplit::Test));
        let spent = start.elapsed().as_secs_f64();
        (!budget::next_epoch_fits(seconds, spent, epoch_seconds, test)).then(|| {
            format!(
                "time budget: stopping before epoch {epoch} of {}: {} spent of {}, and another \
                 epoch takes about {} (the final test about {})",
                self.config.epochs,
                crate::util::duration(spent),
                crate::util::duration(seconds),
                crate::util::duration(epoch_seconds),
                crate::util::duration(test)
            )
        })
    }

    /// The class weights of the training loss ([`class_weight_tensor`]), reported to the events.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    fn class_weights<M: Model + ?Sized>(
        &self,
        model: &M,
        params: &[(String, Tensor)],
    ) -> Result<Option<Tensor>> {
        let device = params.first().map_or(Device::Cpu, |(_, p)| p.device());
        let weights = class_weight_tensor(self.config, model, device)?;
        if let Some((w, _)) = &weights {
            let named: Vec<String> = self
                .config
                .classes
                .iter()
                .zip(w)
                .map(|(name, w)| format!("{name} {w:.2}"))
                .collect();
            self.events.info(format!(
                "class weights (inverse class frequency): {}",
                named.join(", ")
            ));
        }
        Ok(weights.map(|(_, t)| t))
    }

    /// Trains one epoch and validates: the epoch's metrics (also printed).
    fn epoch<M: Model + ?Sized>(
        &self,
        model: &mut M,
        (params, opt, weights): (&[(String, Tensor)], &mut OptState, Option<&Tensor>),
        epoch: usize,
        timing: &mut Timing,
    ) -> Result<EpochMetrics> {
        let c = self.config;
        let t0 = Instant::now();
        let n = model.train_len();
        let order = model.epoch_order(epoch);
        let steps = n.div_ceil(c.batch_size);
        let task = Task::Epoch {
            epoch,
            epochs: c.epochs,
        };
        let progress = |done: usize| {
            if self.progress {
                self.events.emit(Event::Progress {
                    task: task.clone(),
                    done: done as u64,
                    total: n as u64,
                });
            }
        };
        let done = || {
            if self.progress {
                self.events.emit(Event::ProgressDone(task.clone()));
            }
        };
        progress(0);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0i64, 0);
        for (step, batch) in order.chunks(c.batch_size).enumerate() {
            let (loss, right) = model
                .train_batch(batch)
                .and_then(|(logits, y)| {
                    optimise_step(&logits, &y, params, opt, c, weights, (epoch, step, steps))
                })
                .inspect_err(|_| done())?;
            loss_sum += loss * batch.len() as f64;
            correct += right;
            seen += batch.len();
            progress(seen);
            if self.phase == Some(Phase::FineTune) {
                if let Some(e) = timing.first_batches(model, c, (epoch, step + 1), batch.len()) {
                    self.events.emit(Event::Estimate(e));
                }
            }
        }
        done();
        let t_val = Instant::now();
        let val = model.evaluate(EvalSplit::Validation)?;
        if !val.loss.is_finite() {
            return Err(Error::Diverged {
                epoch,
                step: 0,
                loss: val.loss,
            });
        }
        let rates = |step: usize| self.phase.map(|_| lr_at_step(c, epoch, step, steps));
        let m = EpochMetrics {
            epoch,
            phase: self.phase,
            loss: loss_sum / n as f64,
            accuracy: correct as f64 / n as f64,
            val_loss: val.loss,
            val_accuracy: val.accuracy,
            lr: rates(0),
            lr_end: rates(steps.saturating_sub(1)),
            seconds: t0.elapsed().as_secs_f64(),
            train_seconds: t_val.duration_since(t0).as_secs_f64(),
        };
        timing.epoch_done(m.seconds, t_val.elapsed().as_secs_f64(), model);
        let left = (self.phase == Some(Phase::FineTune))
            .then(|| timing.left(c.epochs - epoch, model.eval_len(EvalSplit::Test)));
        let scheduled_lr =
            (m.lr.is_none() && c.schedule != Schedule::Constant).then(|| lr_at(c, m.epoch));
        self.events.emit(Event::Epoch(EpochReport {
            label: self.label.to_string(),
            metrics: m.clone(),
            epochs: c.epochs,
            images: n,
            scheduled_lr,
            left_seconds: left,
        }));
        Ok(m)
    }

    /// After the last epoch: the early-stopping line, restore-best, and the test scores.
    fn finish<M: Model + ?Sized>(
        &self,
        model: &mut M,
        params: &[(String, Tensor)],
        history: Vec<EpochMetrics>,
        best: Option<Best>,
        stopped_early: Option<usize>,
    ) -> Result<Fitted> {
        let c = self.config;
        if let Some(e) = stopped_early {
            self.events.info(early_stop_message(e, c, best.as_ref()));
        }
        if let Some(b) = best.as_ref().filter(|_| c.restore_best) {
            model.load(&b.params)?;
            self.events.info(format!(
                "restoring the parameters of epoch {} (lowest validation loss {:.4})",
                b.epoch, b.val_loss
            ));
        }
        let test = model.evaluate(EvalSplit::Test)?;
        Ok(Fitted {
            history,
            params: named(params)?,
            test_logits: test.logits.f_to_device(Device::Cpu)?,
            test_loss: test.loss,
            test_accuracy: test.accuracy,
            best,
            stopped_early,
        })
    }
}

/// The training speed of `model` with the batch size of `c`, in images per second: forward and
/// backward passes (the training loss of `c`, without class weights) of [`ESTIMATE_AFTER_BATCHES`]
/// batches, timed after one untimed batch (oneDNN's kernel set-up). The optimizer is not stepped and
/// the gradients are zeroed after, so the parameters are unchanged; the batches are the first
/// training examples in order. For a model that seeds its randomness in [`Model::epoch_order`]
/// (fine-tuning), a later epoch draws the same as without the measurement.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn measure_training_speed<M: Model + ?Sized>(model: &mut M, c: &TrainConfig) -> Result<f64> {
    let n = model.train_len().max(1);
    let size = c.batch_size.min(n).max(1);
    let params = model.parameters();
    let (mut t0, mut images) = (Instant::now(), 0);
    for k in 0..=ESTIMATE_AFTER_BATCHES {
        let batch: Vec<usize> = (0..size).map(|i| (k * size + i) % n).collect();
        let (logits, y) = model.train_batch(&batch)?;
        training_loss(&logits, &y, c, None)?.f_backward()?;
        if let Device::Cuda(i) = logits.device() {
            // CUDA runs asynchronously: the batch is done when the device is.
            tch::Cuda::synchronize(i as i64);
        }
        if k == 0 {
            t0 = Instant::now();
        } else {
            images += size;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    for (_, p) in &params {
        let mut p = p.shallow_clone();
        p.zero_grad();
    }
    Ok(images as f64 / seconds.max(1e-9))
}

/// The values of `params` as named tensors (copied to the CPU).
fn named(params: &[(String, Tensor)]) -> Result<Vec<NamedTensor>> {
    params.iter().map(|(name, p)| from_tch(name, p)).collect()
}

/// Batches after the first whose rate gives the expected total time of a fine-tuning run (the first
/// batch also pays for oneDNN's kernel set-up, so it is not counted).
pub const ESTIMATE_AFTER_BATCHES: usize = 5;

/// Wall-time bookkeeping of the epochs one [`Learner::fit`] call runs, for the time estimates of
/// fine-tuning.
#[derive(Default)]
struct Timing {
    /// When the first batch of the first epoch ended, and the images trained since.
    first: Option<(Instant, usize)>,
    /// Epochs timed, their total seconds, and seconds per validation image.
    epochs: usize,
    seconds: f64,
    eval_seconds_per_image: Option<f64>,
}

impl Timing {
    /// After batch `step` (from 1) of `epoch` with `images` images, in the first epoch of the call:
    /// at [`ESTIMATE_AFTER_BATCHES`] batches after the first, the expected total time.
    fn first_batches<M: Model + ?Sized>(
        &mut self,
        model: &M,
        c: &TrainConfig,
        (epoch, step): (usize, usize),
        images: usize,
    ) -> Option<Estimate> {
        if self.epochs > 0 {
            return None;
        }
        let Some((t, seen)) = self.first else {
            self.first = Some((Instant::now(), 0));
            return None;
        };
        let seen = seen + images;
        self.first = Some((t, seen));
        if step != ESTIMATE_AFTER_BATCHES + 1 {
            return None;
        }
        let rate = seen as f64 / t.elapsed().as_secs_f64().max(1e-9);
        let n = model.train_len();
        let epochs = c.epochs + 1 - epoch;
        let train = (n * epochs).saturating_sub(step * c.batch_size) as f64 / rate;
        let val = model.eval_len(EvalSplit::Validation) * epochs;
        let eval = (val + model.eval_len(EvalSplit::Test)) as f64 / (rate * EVAL_SPEEDUP);
        Some(Estimate {
            seconds: train + eval,
            epochs,
            images_per_second: rate,
            batches: ESTIMATE_AFTER_BATCHES + 1,
        })
    }

    /// Records an epoch of `seconds` whose validation took `val_seconds`.
    fn epoch_done<M: Model + ?Sized>(&mut self, seconds: f64, val_seconds: f64, model: &M) {
        self.epochs += 1;
        self.seconds += seconds;
        let val = model.eval_len(EvalSplit::Validation);
        if val > 0 {
            self.eval_seconds_per_image = Some(val_seconds / val as f64);
        }
    }

    /// Mean seconds of the epochs timed, validation included; `None` before the first ends.
    fn mean_epoch(&self) -> Option<f64> {
        (self.epochs > 0).then(|| self.seconds / self.epochs as f64)
    }

    /// Seconds left for `epochs` more epochs like the ones timed and the final test of `test` images.
    fn left(&self, epochs: usize, test: usize) -> f64 {
        let per_epoch = self.seconds / self.epochs.max(1) as f64;
        per_epoch * epochs as f64 + self.eval_seconds_per_image.unwrap_or(0.0) * test as f64
    }
}

/// Whether early stopping ends training after `history`: the lowest validation loss is more than
/// `patience` epochs old (an equal loss is no improvement).
pub fn patience_exhausted(history: &[EpochMetrics], patience: Option<usize>) -> bool {
    let Some(patience) = patience else {
        return false;
    };
    // A fine-tuning run's warm-up epochs (at the head of its history) do not count.
    let history: Vec<&EpochMetrics> = history
        .iter()
        .filter(|m| m.phase != Some(Phase::WarmUp))
        .collect();
    let best = history
        .iter()
        .enumerate()
        .fold(None, |b: Option<(usize, f64)>, (i, m)| match b {
            Some((_, v)) if m.val_loss >= v => b,
            _ => Some((i, m.val_loss)),
        });
    match best {
        Some((i, _)) => history.len() - 1 - i >= patience,
        None => false,
    }
}

/// The line printed when early stopping ends training after `epoch`: how long the validation loss has
/// not improved (`c.patience` epochs) and which epoch was best.
pub fn early_stop_message(epoch: usize, c: &TrainConfig, best: Option<&Best>) -> String {
    format!(
        "early stopping after epoch {epoch}: the validation loss has not improved for {} (best: epoch {})",
        crate::util::plural(c.patience.unwrap_or(0), "epoch"),
        best.map_or(0, |b| b.epoch)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patience_counts_epochs_since_lowest_val_loss() {
        let h = |losses: &[f64]| -> Vec<EpochMetrics> {
            losses
                .iter()
                .enumerate()
                .map(|(i, &l)| EpochMetrics {
                    epoch: i + 1,
                    loss: 0.0,
                    accuracy: 0.0,
                    val_loss: l,
                    val_accuracy: 0.0,
                    ..EpochMetrics::default()
                })
                .collect()
        };
        assert!(!patience_exhausted(&h(&[1.0, 0.9, 0.95]), Some(2)));
        assert!(patience_exhausted(&h(&[1.0, 0.9, 0.95, 0.91]), Some(2)));
        // An equal loss is not an improvement.
        assert!(patience_exhausted(&h(&[0.9, 0.9]), Some(1)));
        assert!(!patience_exhausted(&h(&[1.0, 2.0, 3.0]), None));
        assert!(!patience_exhausted(&[], Some(1)));
    }
}
