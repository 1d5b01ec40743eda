//! The head-training loop on cached features: mini-batch SGD with momentum (PyTorch semantics, written
//! out so that its state can be checkpointed), seeded per epoch so that a run resumed from an epoch
//! checkpoint ends exactly like an uninterrupted one.

use super::features::Features;
use super::model::{from_tch, to_tch, Head};
use crate::arch::Arch;
use crate::error::{Error, Result};
use crate::run::EpochMetrics;
use crate::weights::NamedTensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

pub use crate::run::{Optimizer, Schedule};

/// Adam's first-moment decay (PyTorch's default beta1).
pub const ADAM_BETA1: f64 = 0.9;
/// Adam's second-moment decay (PyTorch's default beta2).
pub const ADAM_BETA2: f64 = 0.999;
/// Adam's denominator term (PyTorch's default eps).
pub const ADAM_EPS: f64 = 1e-8;
/// Factor of the step schedule (PyTorch `StepLR`'s usual gamma).
pub const STEP_GAMMA: f64 = 0.1;

/// Hyper-parameters of head training. `Default` is the seed recipe (SGD lr 1e-4, momentum 0.9,
/// batch 128, 3 epochs, seed 42, no schedule, no early stopping).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadHyper {
    /// Passes over the training features.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Learning rate (the initial one under a schedule).
    pub lr: f64,
    /// SGD momentum (0 = plain SGD); unused by Adam.
    pub momentum: f64,
    /// L2 weight decay added to the gradient (PyTorch `weight_decay`).
    pub weight_decay: f64,
    /// Seed of initialisation, dropout masks and shuffling.
    pub seed: u64,
    /// Optimizer.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: Schedule,
    /// Epochs between two divisions of the rate by 10 under [`Schedule::Step`].
    #[serde(default = "default_lr_step_epochs")]
    pub lr_step_epochs: usize,
    /// Early stopping: stop when the validation loss has not improved for this many epochs.
    #[serde(default)]
    pub patience: Option<usize>,
    /// End with the parameters of the epoch with the lowest validation loss (Keras'
    /// `restore_best_weights`) instead of the last epoch's.
    #[serde(default)]
    pub restore_best: bool,
}

fn default_lr_step_epochs() -> usize {
    5
}

impl Default for HeadHyper {
    fn default() -> Self {
        HeadHyper {
            epochs: 3,
            batch_size: 128,
            lr: 1e-4,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 42,
            optimizer: Optimizer::Sgd,
            schedule: Schedule::Constant,
            lr_step_epochs: default_lr_step_epochs(),
            patience: None,
            restore_best: false,
        }
    }
}

/// Share of the steps spent warming up under [`Schedule::OneCycle`] (PyTorch's `pct_start`).
pub const ONE_CYCLE_PCT_START: f64 = 0.3;
/// Initial rate = lr / this under [`Schedule::OneCycle`] (PyTorch's `div_factor`).
pub const ONE_CYCLE_DIV: f64 = 25.0;
/// Final rate = initial rate / this under [`Schedule::OneCycle`] (PyTorch's `final_div_factor`).
pub const ONE_CYCLE_FINAL_DIV: f64 = 1e4;

impl HeadHyper {
    /// The learning rate of step `step` (from 0) of epoch `epoch` (from 1) with `steps_per_epoch`
    /// steps: [`HeadHyper::lr_at`] for the per-epoch schedules; PyTorch's `OneCycleLR` formula for
    /// [`Schedule::OneCycle`].
    pub fn lr_at_step(&self, epoch: usize, step: usize, steps_per_epoch: usize) -> f64 {
        if self.schedule != Schedule::OneCycle {
            return self.lr_at(epoch);
        }
        let total = (self.epochs * steps_per_epoch).max(2) as f64;
        let t = ((epoch.saturating_sub(1)) * steps_per_epoch + step) as f64;
        let initial = self.lr / ONE_CYCLE_DIV;
        let min = initial / ONE_CYCLE_FINAL_DIV;
        let warm_end = ONE_CYCLE_PCT_START * total - 1.0;
        let anneal = |start: f64, end: f64, pct: f64| {
            end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
        };
        if t <= warm_end {
            anneal(initial, self.lr, t / warm_end.max(1e-9))
        } else {
            let pct = (t - warm_end) / (total - 1.0 - warm_end).max(1e-9);
            anneal(self.lr, min, pct.min(1.0))
        }
    }

    /// The learning rate of `epoch` (from 1) under a per-epoch schedule (for one-cycle: the rate of
    /// the epoch's first step, assuming one step per epoch; use [`HeadHyper::lr_at_step`]).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let e = epoch.saturating_sub(1);
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::OneCycle => self.lr_at_step(epoch, 0, 1),
            Schedule::Cosine => {
                self.lr
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * e as f64 / self.epochs.max(1) as f64).cos())
            }
            Schedule::Step => self.lr * STEP_GAMMA.powi((e / self.lr_step_epochs.max(1)) as i32),
        }
    }
}

/// The parameters of the epoch with the lowest validation loss so far.
#[derive(Debug, Clone)]
pub struct Best {
    /// Epoch (from 1).
    pub epoch: usize,
    /// Its validation loss.
    pub val_loss: f64,
    /// Head parameters after that epoch, [`Arch::head_params`] names.
    pub params: Vec<NamedTensor>,
}

/// Training state at the end of an epoch.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Epochs completed.
    pub epoch: usize,
    /// Head parameters, [`Arch::head_params`] names and order.
    pub params: Vec<NamedTensor>,
    /// Optimizer state, same order: SGD momentum buffers named `momentum.<param>`, or Adam's moments
    /// `adam.exp_avg.<param>` then `adam.exp_avg_sq.<param>` (see [`optimizer_state_spec`]).
    pub momentum: Vec<NamedTensor>,
    /// Metrics of the completed epochs.
    pub history: Vec<EpochMetrics>,
    /// The best epoch so far by validation loss.
    pub best: Option<Best>,
}

/// Result of [`fit_head`].
pub struct FitResult {
    /// Per-epoch metrics.
    pub history: Vec<EpochMetrics>,
    /// Final head parameters (the best epoch's with `restore_best`).
    pub params: Vec<NamedTensor>,
    /// Test logits `[n_test, classes]` of the final head, on the CPU.
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

/// Names and shapes of the optimizer state tensors kept in a checkpoint, for head parameters `params`
/// (names and shapes as [`Arch::head_params`]).
pub fn optimizer_state_spec(
    optimizer: Optimizer,
    params: &[(String, Vec<usize>)],
) -> Vec<(String, Vec<usize>)> {
    let prefixed = |p: &str| {
        params
            .iter()
            .map(|(n, s)| (format!("{p}{n}"), s.clone()))
            .collect::<Vec<_>>()
    };
    match optimizer {
        Optimizer::Sgd => prefixed("momentum."),
        Optimizer::Adam => {
            let mut v = prefixed("adam.exp_avg.");
            v.extend(prefixed("adam.exp_avg_sq."));
            v
        }
    }
}

/// Mean categorical cross-entropy of `logits` `[n, classes]` against labels `y` `[n]` (int64).
pub(crate) fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(logits
        .f_log_softmax(-1, Kind::Float)?
        .f_nll_loss::<Tensor>(y, None, tch::Reduction::Mean, -100)?)
}

/// Mean loss, accuracy and logits of `head` (evaluation mode) on features `x` with labels `y`.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn evaluate(head: &Head, x: &Tensor, y: &Tensor) -> Result<(f64, f64, Tensor)> {
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

pub(crate) fn labels(l: &[usize], device: Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(&l.iter().map(|&v| v as i64).collect::<Vec<_>>()).f_to_device(device)?)
}

/// One SGD step with PyTorch's semantics (`torch.optim.SGD`, dampening 0, not Nesterov), on the
/// gradients already accumulated in `params`: `g += weight_decay * p; buf = momentum * buf + g; p -= lr * buf`.
/// Buffers start at zero, so the first step uses `g`, as PyTorch does.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn sgd_step(
    params: &[(String, Tensor)],
    bufs: &mut [Tensor],
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for ((_, p), buf) in params.iter().zip(bufs.iter_mut()) {
        let mut g = p.f_grad()?;
        if weight_decay != 0.0 {
            g = g.f_add(&p.f_mul_scalar(weight_decay)?)?;
        }
        *buf = buf.f_mul_scalar(momentum)?.f_add(&g)?;
        let mut p = p.shallow_clone();
        let _ = p.f_sub_(&buf.f_mul_scalar(lr)?)?;
    }
    Ok(())
}

/// One Adam step with PyTorch's semantics (`torch.optim.Adam`, not AMSGrad), on the gradients already
/// accumulated in `params`; `step` is the step number from 1:
/// `g += wd * p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
/// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn adam_step(
    params: &[(String, Tensor)],
    exp_avg: &mut [Tensor],
    exp_avg_sq: &mut [Tensor],
    step: i64,
    lr: f64,
    weight_decay: f64,
) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let bc1 = 1.0 - ADAM_BETA1.powi(step as i32);
    let bc2 = 1.0 - ADAM_BETA2.powi(step as i32);
    for (((_, p), m), v) in params
        .iter()
        .zip(exp_avg.iter_mut())
        .zip(exp_avg_sq.iter_mut())
    {
        let mut g = p.f_grad()?;
        if weight_decay != 0.0 {
            g = g.f_add(&p.f_mul_scalar(weight_decay)?)?;
        }
        *m = m
            .f_mul_scalar(ADAM_BETA1)?
            .f_add(&g.f_mul_scalar(1.0 - ADAM_BETA1)?)?;
        *v = v
            .f_mul_scalar(ADAM_BETA2)?
            .f_add(&g.f_mul(&g)?.f_mul_scalar(1.0 - ADAM_BETA2)?)?;
        let denom = v
            .f_sqrt()?
            .f_div_scalar(bc2.sqrt())?
            .f_add_scalar(ADAM_EPS)?;
        let mut p = p.shallow_clone();
        let _ = p.f_sub_(&m.f_div(&denom)?.f_mul_scalar(lr / bc1)?)?;
    }
    Ok(())
}

/// Optimizer state: one or two tensors per parameter.
pub(crate) struct OptState {
    kind: Optimizer,
    /// SGD momentum buffers, or Adam's first moments.
    a: Vec<Tensor>,
    /// Adam's second moments (empty for SGD).
    b: Vec<Tensor>,
}

impl OptState {
    pub(crate) fn new(kind: Optimizer, params: &[(String, Tensor)]) -> Result<Self> {
        let zeros = || -> Result<Vec<Tensor>> {
            Ok(params
                .iter()
                .map(|(_, p)| p.f_zeros_like())
                .collect::<std::result::Result<_, _>>()?)
        };
        Ok(OptState {
            kind,
            a: zeros()?,
            b: if kind == Optimizer::Adam {
                zeros()?
            } else {
                Vec::new()
            },
        })
    }

    pub(crate) fn load(&mut self, saved: &[NamedTensor], device: Device) -> Result<()> {
        let n = self.a.len();
        if saved.len() != self.a.len() + self.b.len() {
            return Err(Error::Torch(format!(
                "checkpoint holds {} optimizer tensors, {:?} needs {}",
                saved.len(),
                self.kind,
                self.a.len() + self.b.len()
            )));
        }
        for (i, t) in saved.iter().enumerate() {
            let v = to_tch(t, device)?;
            if i < n {
                self.a[i] = v;
            } else {
                self.b[i - n] = v;
            }
        }
        Ok(())
    }

    pub(crate) fn save(&self, params: &[(String, Tensor)]) -> Result<Vec<NamedTensor>> {
        let spec: Vec<(String, Vec<usize>)> = params
            .iter()
            .map(|(n, _)| (n.clone(), Vec::new()))
            .collect();
        let names = optimizer_state_spec(self.kind, &spec);
        names
            .iter()
            .zip(self.a.iter().chain(&self.b))
            .map(|((name, _), t)| from_tch(name, t))
            .collect()
    }

    pub(crate) fn step(
        &mut self,
        params: &[(String, Tensor)],
        step: i64,
        lr: f64,
        hp: &HeadHyper,
    ) -> Result<()> {
        match self.kind {
            Optimizer::Sgd => sgd_step(params, &mut self.a, lr, hp.momentum, hp.weight_decay),
            Optimizer::Adam => {
                adam_step(params, &mut self.a, &mut self.b, step, lr, hp.weight_decay)
            }
        }
    }
}

/// One optimisation step on a batch's training-mode `logits` and labels `y`: the loss (NaN or infinite
/// stops training with [`Error::Diverged`]), gradients, and an optimizer step at the schedule's rate for
/// step `step` (from 0) of `epoch` (from 1) with `steps_per_epoch`. Returns the batch's mean loss and
/// number of correct predictions.
///
/// # Errors
/// [`Error::Diverged`]; libtorch errors.
pub(crate) fn optimise_step(
    logits: &Tensor,
    y: &Tensor,
    params: &[(String, Tensor)],
    opt: &mut OptState,
    hp: &HeadHyper,
    (epoch, step, steps_per_epoch): (usize, usize, i64),
) -> Result<(f64, i64)> {
    let loss = cross_entropy(logits, y)?;
    let l = loss.f_double_value(&[])?;
    if !l.is_finite() {
        return Err(Error::Diverged {
            epoch,
            step: step + 1,
            loss: l,
        });
    }
    for (_, p) in params {
        let mut p = p.shallow_clone();
        p.zero_grad();
    }
    loss.f_backward()?;
    let global_step = (epoch as i64 - 1) * steps_per_epoch + step as i64 + 1;
    let lr = hp.lr_at_step(epoch, step, steps_per_epoch as usize);
    opt.step(params, global_step, lr, hp)?;
    let correct = logits
        .f_argmax(-1, false)?
        .f_eq_tensor(y)?
        .f_sum(Kind::Int64)?
        .f_int64_value(&[])?;
    Ok((l, correct))
}

/// Validation and test data of [`fit_head`].
fn eval_sets(f: &Features, device: Device) -> Result<((Tensor, Tensor), (Tensor, Tensor))> {
    let test = (
        f.test_x.f_to_device(device)?,
        labels(&f.test.labels, device)?,
    );
    let val = match (&f.val_x, &f.val) {
        (Some(x), Some(info)) => (x.f_to_device(device)?, labels(&info.labels, device)?),
        _ => (test.0.shallow_clone(), test.1.shallow_clone()),
    };
    Ok((val, test))
}

/// Whether early stopping ends training after `history`: the lowest validation loss is more than
/// `patience` epochs old.
pub(crate) fn patience_exhausted(history: &[EpochMetrics], patience: Option<usize>) -> bool {
    let Some(patience) = patience else {
        return false;
    };
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
/// not improved (`hp.patience` epochs) and which epoch was best.
pub fn early_stop_message(epoch: usize, hp: &HeadHyper, best: Option<&Best>) -> String {
    format!(
        "early stopping after epoch {epoch}: the validation loss has not improved for {} (best: epoch {})",
        crate::util::plural(hp.patience.unwrap_or(0), "epoch"),
        best.map_or(0, |b| b.epoch)
    )
}

/// Trains the head of `arch` on `f`'s features. Validation (per-epoch `val_*` metrics, early stopping,
/// best epoch) uses `f.val_x` when a validation split was carved out of the training data, else the
/// test split as in the Keras seed; the final loss and accuracy are on the test split. Starts from
/// `resume` when given (epochs after `resume.epoch`), and calls `on_epoch` with the state after every
/// epoch (to checkpoint it). With `log = Some(label)`, prints one Keras-style line per epoch,
/// `<label> <epoch>/<epochs>  loss ...` (e.g. "Epoch 2/3"), and the early-stopping line.
///
/// # Errors
/// [`Error::Diverged`] when the loss becomes NaN or infinite; libtorch errors; `on_epoch`'s errors.
pub fn fit_head(
    f: &Features,
    arch: &Arch,
    hp: &HeadHyper,
    device: Device,
    resume: Option<Checkpoint>,
    log: Option<&str>,
    mut on_epoch: impl FnMut(&Checkpoint) -> Result<()>,
) -> Result<FitResult> {
    super::validate_hyper(hp)?;
    // The head's matrices are small, so a second libtorch thread gains little, and on a busy machine
    // OpenMP threads wait for each other at every tiny op: here, with other work on the 2 cores, one
    // thread ran an epoch in 0.15 s against 0.75-4 s with two (`cargo bench --bench head`), and the
    // 5x15 sweep took 17 s instead of 97-206 s. Restored when training ends.
    let _threads = super::model::IntraOpThreads::set(1);
    let train_x = f.train_x.f_to_device(device)?;
    let train_y = labels(&f.train.labels, device)?;
    let ((val_x, val_y), (test_x, test_y)) = eval_sets(f, device)?;
    tch::manual_seed(hp.seed as i64);
    let vs = nn::VarStore::new(device);
    let head = Head::new(&vs.root(), arch);
    let params: Vec<(String, Tensor)> = head.parameters();
    let mut opt = OptState::new(hp.optimizer, &params)?;
    let (start, mut history, mut best) = match resume {
        Some(c) => {
            head.load(&c.params)?;
            opt.load(&c.momentum, device)?;
            (c.epoch, c.history, c.best)
        }
        None => (0, Vec::new(), None),
    };
    let n = f.train.labels.len();
    let steps_per_epoch = n.div_ceil(hp.batch_size) as i64;
    // All randomness is seeded once, as in a plain PyTorch script: libtorch's generator (initialisation
    // above, then dropout masks) and a ChaCha8 stream for the per-epoch shuffles. To resume exactly
    // after epoch `start`, the draws of the completed epochs are replayed: the shuffles, and one
    // dropout mask per step (a mask's draws depend only on its shape, not on the values).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(hp.seed);
    let mut order: Vec<i64> = (0..n as i64).collect();
    for _ in 0..start {
        order.shuffle(&mut rng);
        for chunk in order.chunks(hp.batch_size) {
            head.replay_dropout(chunk.len())?;
        }
    }
    let mut stopped_early = None;
    for epoch in start + 1..=hp.epochs {
        if patience_exhausted(&history, hp.patience) {
            stopped_early = Some(epoch - 1);
            break;
        }
        let t0 = Instant::now();
        let lr = hp.lr_at(epoch);
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0f64, 0i64);
        for (step, chunk) in order.chunks(hp.batch_size).enumerate() {
            let idx = Tensor::from_slice(chunk).f_to_device(device)?;
            let xb = train_x.f_index_select(0, &idx)?;
            let yb = train_y.f_index_select(0, &idx)?;
            let logits = head.forward(&xb, true)?;
            let (l, c) = optimise_step(
                &logits,
                &yb,
                &params,
                &mut opt,
                hp,
                (epoch, step, steps_per_epoch),
            )?;
            loss_sum += l * chunk.len() as f64;
            correct += c;
        }
        let (val_loss, val_accuracy, _) = evaluate(&head, &val_x, &val_y)?;
        if !val_loss.is_finite() {
            return Err(Error::Diverged {
                epoch,
                step: 0,
                loss: val_loss,
            });
        }
        let m = EpochMetrics {
            epoch,
            loss: loss_sum / n as f64,
            accuracy: correct as f64 / n as f64,
            val_loss,
            val_accuracy,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if let Some(label) = log {
            let lr_note = if hp.schedule == Schedule::Constant {
                String::new()
            } else {
                format!("  lr {lr:.3e}")
            };
            eprintln!(
                "{label} {epoch}/{}  loss {:.4}  accuracy {:.4}  val_loss {:.4}  val_accuracy {:.4}{lr_note}  ({:.2} s)",
                hp.epochs, m.loss, m.accuracy, m.val_loss, m.val_accuracy, m.seconds
            );
        }
        history.push(m);
        let current: Vec<NamedTensor> = params
            .iter()
            .map(|(name, p)| from_tch(name, p))
            .collect::<Result<_>>()?;
        if best.as_ref().is_none_or(|b: &Best| val_loss < b.val_loss) {
            best = Some(Best {
                epoch,
                val_loss,
                params: current.clone(),
            });
        }
        let ck = Checkpoint {
            epoch,
            params: current,
            momentum: opt.save(&params)?,
            history: history.clone(),
            best: best.clone(),
        };
        on_epoch(&ck)?;
    }
    if let (Some(e), Some(_)) = (stopped_early, log) {
        eprintln!("{}", early_stop_message(e, hp, best.as_ref()));
    }
    if hp.restore_best {
        if let Some(b) = &best {
            head.load(&b.params)?;
            if log.is_some() {
                eprintln!(
                    "restoring the parameters of epoch {} (lowest validation loss {:.4})",
                    b.epoch, b.val_loss
                );
            }
        }
    }
    let (test_loss, test_accuracy, logits) = evaluate(&head, &test_x, &test_y)?;
    Ok(FitResult {
        history,
        params: params
            .iter()
            .map(|(name, p)| from_tch(name, p))
            .collect::<Result<_>>()?,
        test_logits: logits.f_to_device(Device::Cpu)?,
        test_loss,
        test_accuracy,
        best,
        stopped_early,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;

    fn assert_close(a: &[NamedTensor], b: &[NamedTensor]) {
        assert_eq!(a.len(), b.len());
        for (ta, tb) in a.iter().zip(b) {
            let worst = ta
                .data
                .iter()
                .zip(&tb.data)
                .map(|(u, v)| (u - v).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-6, "{}: max diff {worst}", ta.name);
        }
    }

    /// Our Adam step matches libtorch's own `torch.optim.Adam` (through tch) over several steps, with
    /// and without weight decay.
    #[test]
    fn adam_step_matches_libtorch_adam() {
        let _rng = crate::train::global_rng_lock();
        let arch = Arch::vgg16_transfer(32, 10);
        tch::manual_seed(7);
        let x = Tensor::randn([16, 512], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&(0..16).map(|i| i % 10).collect::<Vec<i64>>());
        for wd in [0.0, 5e-4] {
            let run = |ours: bool| -> Vec<NamedTensor> {
                tch::manual_seed(1);
                let vs = nn::VarStore::new(Device::Cpu);
                let head = Head::new(&vs.root(), &arch);
                let params = head.parameters();
                let mut state = OptState::new(Optimizer::Adam, &params).unwrap();
                let mut opt = nn::Adam {
                    wd,
                    ..Default::default()
                }
                .build(&vs, 1e-3)
                .unwrap();
                let hp = HeadHyper {
                    optimizer: Optimizer::Adam,
                    weight_decay: wd,
                    ..Default::default()
                };
                for step in 1..=5 {
                    let loss = cross_entropy(&head.forward(&x, false).unwrap(), &y).unwrap();
                    if ours {
                        for (_, p) in &params {
                            p.shallow_clone().zero_grad();
                        }
                        loss.backward();
                        state.step(&params, step, 1e-3, &hp).unwrap();
                    } else {
                        opt.backward_step(&loss);
                    }
                }
                params
                    .iter()
                    .map(|(n, p)| from_tch(n, p).unwrap())
                    .collect()
            };
            assert_close(&run(true), &run(false));
        }
    }

    #[test]
    fn schedules_follow_pytorch() {
        let base = HeadHyper {
            lr: 1e-2,
            epochs: 10,
            ..Default::default()
        };
        let cos = HeadHyper {
            schedule: Schedule::Cosine,
            ..base.clone()
        };
        assert_eq!(cos.lr_at(1), 1e-2);
        assert!((cos.lr_at(6) - 5e-3).abs() < 1e-12);
        assert!(cos.lr_at(10) < cos.lr_at(9) && cos.lr_at(10) > 0.0);
        let step = HeadHyper {
            schedule: Schedule::Step,
            lr_step_epochs: 3,
            ..base.clone()
        };
        let got: Vec<f64> = (1..=7).map(|e| step.lr_at(e)).collect();
        let want = [1e-2, 1e-2, 1e-2, 1e-3, 1e-3, 1e-3, 1e-4];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{got:?}");
        }
        assert_eq!(base.lr_at(7), 1e-2);
        // One-cycle against PyTorch 2.13's OneCycleLR(max_lr=1e-2, total_steps=100,
        // cycle_momentum=False), whose learning rates at steps 0, 14, 29, 50 and 99 were printed by torch.
        let oc = HeadHyper {
            schedule: Schedule::OneCycle,
            epochs: 10,
            ..base.clone()
        };
        let at = |t: usize| oc.lr_at_step(t / 10 + 1, t % 10, 10);
        for (t, want) in [
            (0, 0.0003999999999999993),
            (14, 0.004940133238789995),
            (29, 0.01),
            (50, 0.00793893450575732),
            (99, 4e-08),
        ] {
            assert!(
                (at(t) - want).abs() < 1e-12 * want.max(1e-3),
                "step {t}: {} vs {want}",
                at(t)
            );
        }
        for t in 1..30 {
            assert!(at(t) > at(t - 1), "warm-up rises at {t}");
        }
        for t in 30..100 {
            assert!(at(t) < at(t - 1), "decay falls at {t}");
        }
    }

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
                    seconds: 0.0,
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

    /// Our SGD step matches libtorch's own `torch.optim.SGD` (through tch) over several steps.
    #[test]
    fn sgd_step_matches_libtorch_sgd() {
        let _rng = crate::train::global_rng_lock();
        let arch = Arch::vgg16_transfer(32, 10);
        tch::manual_seed(7);
        let x = Tensor::randn([16, 512], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&(0..16).map(|i| i % 10).collect::<Vec<i64>>());
        let run = |ours: bool| -> Vec<NamedTensor> {
            tch::manual_seed(1);
            let vs = nn::VarStore::new(Device::Cpu);
            let head = Head::new(&vs.root(), &arch);
            let params = head.parameters();
            let mut bufs: Vec<Tensor> = params.iter().map(|(_, p)| p.zeros_like()).collect();
            let mut opt = nn::Sgd {
                momentum: 0.9,
                wd: 5e-4,
                ..Default::default()
            }
            .build(&vs, 1e-3)
            .unwrap();
            for _ in 0..4 {
                let loss = cross_entropy(&head.forward(&x, false).unwrap(), &y).unwrap();
                if ours {
                    for (_, p) in &params {
                        p.shallow_clone().zero_grad();
                    }
                    loss.backward();
                    sgd_step(&params, &mut bufs, 1e-3, 0.9, 5e-4).unwrap();
                } else {
                    opt.backward_step(&loss);
                }
            }
            params
                .iter()
                .map(|(n, p)| from_tch(n, p).unwrap())
                .collect()
        };
        let (a, b) = (run(true), run(false));
        assert_close(&a, &b);
        // And training moved the parameters.
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let fresh = Head::new(&vs.root(), &arch).parameters();
        let moved = from_tch("w", &fresh[0].1)
            .unwrap()
            .data
            .iter()
            .zip(&a[0].data)
            .any(|(u, v)| u != v);
        assert!(moved);
    }
}
