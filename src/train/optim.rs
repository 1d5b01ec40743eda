//! Optimizers and learning-rate schedules, written out with PyTorch's semantics (so that their state
//! can be checkpointed and a resumed run continues exactly): SGD with momentum, Adam, and the
//! constant, cosine, step and one-cycle schedules; and one optimisation step on a batch.

use super::model::{from_tch, to_tch};
use crate::config::{Optimizer, Schedule, TrainConfig};
use crate::error::{Error, Result};
use crate::weights::NamedTensor;
use tch::{Kind, Tensor};

/// Adam's first-moment decay (PyTorch's default beta1).
pub const ADAM_BETA1: f64 = 0.9;
/// Adam's second-moment decay (PyTorch's default beta2).
pub const ADAM_BETA2: f64 = 0.999;
/// Adam's denominator term (PyTorch's default eps).
pub const ADAM_EPS: f64 = 1e-8;
/// Factor of the step schedule (PyTorch `StepLR`'s usual gamma).
pub const STEP_GAMMA: f64 = 0.1;
/// Share of the steps spent warming up under [`Schedule::OneCycle`] (PyTorch's `pct_start`).
pub const ONE_CYCLE_PCT_START: f64 = 0.3;
/// Initial rate = lr / this under [`Schedule::OneCycle`] (PyTorch's `div_factor`).
pub const ONE_CYCLE_DIV: f64 = 25.0;
/// Final rate = initial rate / this under [`Schedule::OneCycle`] (PyTorch's `final_div_factor`).
pub const ONE_CYCLE_FINAL_DIV: f64 = 1e4;

/// The learning rate of step `step` (from 0) of epoch `epoch` (from 1) with `steps_per_epoch` steps:
/// [`lr_at`] for the per-epoch schedules; PyTorch's `OneCycleLR` formula (total steps = epochs x
/// steps per epoch) for [`Schedule::OneCycle`].
pub fn lr_at_step(c: &TrainConfig, epoch: usize, step: usize, steps_per_epoch: usize) -> f64 {
    if c.schedule != Schedule::OneCycle {
        return lr_at(c, epoch);
    }
    let total = (c.epochs * steps_per_epoch).max(2) as f64;
    let t = ((epoch.saturating_sub(1)) * steps_per_epoch + step) as f64;
    let initial = c.lr / ONE_CYCLE_DIV;
    let min = initial / ONE_CYCLE_FINAL_DIV;
    let warm_end = ONE_CYCLE_PCT_START * total - 1.0;
    let anneal = |start: f64, end: f64, pct: f64| {
        end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
    };
    if t <= warm_end {
        anneal(initial, c.lr, t / warm_end.max(1e-9))
    } else {
        let pct = (t - warm_end) / (total - 1.0 - warm_end).max(1e-9);
        anneal(c.lr, min, pct.min(1.0))
    }
}

/// The learning rate of `epoch` (from 1) under a per-epoch schedule (for one-cycle: the rate of the
/// epoch's first step as if an epoch were one step, the figure printed in the epoch line; training
/// uses [`lr_at_step`]).
pub fn lr_at(c: &TrainConfig, epoch: usize) -> f64 {
    let e = epoch.saturating_sub(1);
    match c.schedule {
        Schedule::Constant => c.lr,
        Schedule::OneCycle => lr_at_step(c, epoch, 0, 1),
        Schedule::Cosine => {
            c.lr * 0.5 * (1.0 + (std::f64::consts::PI * e as f64 / c.epochs.max(1) as f64).cos())
        }
        Schedule::Step => c.lr * STEP_GAMMA.powi((e / c.lr_step_epochs.max(1)) as i32),
    }
}

/// Names and shapes of the optimizer state tensors kept in a checkpoint, for trainable parameters
/// `params` (names and shapes): SGD's momentum buffers `momentum.<param>`, or Adam's moments
/// `adam.exp_avg.<param>` then `adam.exp_avg_sq.<param>`.
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
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(logits
        .f_log_softmax(-1, Kind::Float)?
        .f_nll_loss::<Tensor>(y, None, tch::Reduction::Mean, -100)?)
}

/// The weights of `--class-weights auto` from the training split's class counts: `n / (k × n_c)`
/// for each of the `k` classes present (`n` examples in all; scikit-learn's
/// `compute_class_weight("balanced")`), 1 for a class without examples (it never weighs in).
pub fn balanced_class_weights(counts: &[usize]) -> Vec<f64> {
    let n: usize = counts.iter().sum();
    let present = counts.iter().filter(|&&c| c > 0).count();
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                1.0
            } else {
                n as f64 / (present as f64 * c as f64)
            }
        })
        .collect()
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
    let bc1 = 1.0 - ADAM_BETA1.powi(step as i32);
    let bc2 = 1.0 - ADAM_BETA2.powi(step as i32);
    let _guard = tch::no_grad_guard();
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

/// Optimizer state: one (SGD) or two (Adam) tensors per trainable parameter, on its device.
pub struct OptState {
    kind: Optimizer,
    /// SGD momentum buffers, or Adam's first moments.
    a: Vec<Tensor>,
    /// Adam's second moments (empty for SGD).
    b: Vec<Tensor>,
}

impl OptState {
    /// Zero state for `params` (as PyTorch starts).
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    pub fn new(kind: Optimizer, params: &[(String, Tensor)]) -> Result<Self> {
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

    /// Replaces the state with `saved` (in [`optimizer_state_spec`] order), on the parameters' device.
    ///
    /// # Errors
    /// [`Error::Torch`] when the count differs or libtorch fails.
    pub fn load(&mut self, saved: &[NamedTensor]) -> Result<()> {
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
            let slot = if i < n {
                &mut self.a[i]
            } else {
                &mut self.b[i - n]
            };
            *slot = to_tch(t, slot.device())?;
        }
        Ok(())
    }

    /// The state as named tensors ([`optimizer_state_spec`] names for `params`), on the CPU.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    pub fn save(&self, params: &[(String, Tensor)]) -> Result<Vec<NamedTensor>> {
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

    /// One step of the optimizer on the gradients in `params`, at rate `lr`; `step` is the global
    /// step number from 1 (Adam's bias correction); momentum and weight decay from `c`.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    pub fn step(
        &mut self,
        params: &[(String, Tensor)],
        step: i64,
        lr: f64,
        c: &TrainConfig,
    ) -> Result<()> {
        match self.kind {
            Optimizer::Sgd => sgd_step(params, &mut self.a, lr, c.momentum, c.weight_decay),
            Optimizer::Adam => {
                adam_step(params, &mut self.a, &mut self.b, step, lr, c.weight_decay)
            }
        }
    }
}

/// The training loss of a batch: cross-entropy of `logits` against `y`, with `c.label_smoothing`
/// when set, and weighted by class with `weights` (`[classes]` float32, on the logits' device;
/// PyTorch's `CrossEntropyLoss(weight=...)`: the sum of each example's weighted loss over the sum of
/// their weights).
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn training_loss(
    logits: &Tensor,
    y: &Tensor,
    c: &TrainConfig,
    weights: Option<&Tensor>,
) -> Result<Tensor> {
    Ok(if c.label_smoothing > 0.0 || weights.is_some() {
        logits.f_cross_entropy_loss::<&Tensor>(
            y,
            weights,
            tch::Reduction::Mean,
            -100,
            c.label_smoothing,
        )?
    } else {
        cross_entropy(logits, y)?
    })
}

/// One optimisation step on a batch's training-mode `logits` and labels `y`: the loss
/// ([`training_loss`]: cross-entropy, with `c.label_smoothing` when set, class `weights` when given; NaN or infinite
/// stops training with [`Error::Diverged`]), gradients, and an optimizer step at the schedule's rate for
/// step `step` (from 0) of `epoch` (from 1) with `steps_per_epoch`. Returns the batch's mean loss and
/// number of correct predictions.
///
/// # Errors
/// [`Error::Diverged`]; libtorch errors.
pub fn optimise_step(
    logits: &Tensor,
    y: &Tensor,
    params: &[(String, Tensor)],
    opt: &mut OptState,
    c: &TrainConfig,
    weights: Option<&Tensor>,
    (epoch, step, steps_per_epoch): (usize, usize, usize),
) -> Result<(f64, i64)> {
    let loss = training_loss(logits, y, c, weights)?;
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
    let global_step = ((epoch - 1) * steps_per_epoch + step + 1) as i64;
    opt.step(
        params,
        global_step,
        lr_at_step(c, epoch, step, steps_per_epoch),
        c,
    )?;
    let correct = logits
        .f_argmax(-1, false)?
        .f_eq_tensor(y)?
        .f_sum(Kind::Int64)?
        .f_int64_value(&[])?;
    Ok((l, correct))
}

#[cfg(test)]
mod tests {
    use super::super::model::Head;
    use super::*;
    use crate::arch::Arch;
    use tch::nn::{self, OptimizerConfig};
    use tch::Device;

    /// `--class-weights auto` by hand: labels 0, 1, 1 give weights 3 / (2 × 1) = 1.5 and 3 / (2 × 2) =
    /// 0.75 (a class without examples: 1); the weighted training loss of three examples is
    /// Σ wᵢ·nllᵢ / Σ wᵢ with nllᵢ = log Σⱼ exp(zⱼ) - z_yᵢ computed here in f64, and without weights
    /// the plain mean.
    #[test]
    fn class_weights_change_the_loss_as_the_formula_says() {
        assert_eq!(balanced_class_weights(&[1, 2, 0]), vec![1.5, 0.75, 1.0]);
        assert_eq!(balanced_class_weights(&[5, 5]), vec![1.0, 1.0]);
        let z = [[2.0f64, 0.0], [0.0, 1.0], [1.0, 1.0]];
        let y = [0usize, 1, 1];
        let w = [1.5f64, 0.75];
        let nll: Vec<f64> = z
            .iter()
            .zip(&y)
            .map(|(row, &k)| row.iter().map(|v| v.exp()).sum::<f64>().ln() - row[k])
            .collect();
        let weighted = nll.iter().zip(&y).map(|(l, &k)| w[k] * l).sum::<f64>()
            / y.iter().map(|&k| w[k]).sum::<f64>();
        let plain = nll.iter().sum::<f64>() / 3.0;
        let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]).view([3, 2]);
        let labels = Tensor::from_slice(&[0i64, 1, 1]);
        let c = TrainConfig::default();
        let weights = Tensor::from_slice(&[1.5f32, 0.75]);
        let got = |w: Option<&Tensor>| {
            training_loss(&logits, &labels, &c, w)
                .unwrap()
                .double_value(&[])
        };
        assert!(
            (got(Some(&weights)) - weighted).abs() < 1e-6,
            "{} vs {weighted}",
            got(Some(&weights))
        );
        assert!((got(None) - plain).abs() < 1e-6);
        assert!(
            (weighted - plain).abs() > 1e-2,
            "the weights change the loss"
        );
    }

    /// Largest |a - b| over all parameters.
    fn max_diff(a: &[NamedTensor], b: &[NamedTensor]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .flat_map(|(ta, tb)| ta.data.iter().zip(&tb.data).map(|(u, v)| (u - v).abs()))
            .fold(0f32, f32::max)
    }

    /// Our optimizer step, given the parameters and the step number from 1.
    type OurStep<'a> = &'a mut dyn FnMut(&[(String, Tensor)], i64);

    /// Trains a fresh head (seed 1) for `steps` full-batch steps on fixed random features, either with
    /// `ours` (given the parameters and step number from 1) or with libtorch's optimizer `theirs`;
    /// returns the final parameters.
    fn train_head(
        steps: i64,
        mut ours: Option<OurStep>,
        theirs: impl FnOnce(&nn::VarStore) -> nn::Optimizer,
    ) -> Vec<NamedTensor> {
        let arch = Arch::vgg16_transfer(32, 10);
        tch::manual_seed(7);
        let x = Tensor::randn([16, 512], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&(0..16).map(|i| i % 10).collect::<Vec<i64>>());
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let head = Head::new(&vs.root(), &arch);
        let params = head.parameters();
        let mut opt = theirs(&vs);
        for step in 1..=steps {
            let loss = cross_entropy(&head.forward(&x, false).unwrap(), &y).unwrap();
            match ours.as_mut() {
                Some(f) => {
                    for (_, p) in &params {
                        p.shallow_clone().zero_grad();
                    }
                    loss.backward();
                    f(&params, step);
                }
                None => opt.backward_step(&loss),
            }
        }
        params
            .iter()
            .map(|(n, p)| from_tch(n, p).unwrap())
            .collect()
    }

    /// Our Adam step matches libtorch's own `torch.optim.Adam` (through tch) over several steps, with
    /// and without weight decay.
    #[test]
    fn adam_step_matches_libtorch_adam() {
        let _rng = crate::train::global_rng_lock();
        for wd in [0.0, 5e-4] {
            let c = TrainConfig {
                optimizer: Optimizer::Adam,
                weight_decay: wd,
                ..Default::default()
            };
            let adam = |vs: &nn::VarStore| {
                nn::Adam {
                    wd,
                    ..Default::default()
                }
                .build(vs, 1e-3)
                .unwrap()
            };
            let mut state: Option<OptState> = None;
            let mut step = |params: &[(String, Tensor)], t: i64| {
                let s =
                    state.get_or_insert_with(|| OptState::new(Optimizer::Adam, params).unwrap());
                s.step(params, t, 1e-3, &c).unwrap();
            };
            let ours = train_head(5, Some(&mut step), adam);
            assert!(max_diff(&ours, &train_head(5, None, adam)) < 1e-6);
        }
    }

    /// Our SGD step matches libtorch's own `torch.optim.SGD` (through tch) with momentum and weight
    /// decay. The decay (0.05, lr 0.01, 8 steps) moves the parameters by about 1e-3, a thousand times
    /// the 1e-6 tolerance, so a missing or tripled decay fails: checked below on libtorch's side.
    #[test]
    fn sgd_step_matches_libtorch_sgd_including_weight_decay() {
        const LR: f64 = 0.01;
        const WD: f64 = 0.05;
        const STEPS: i64 = 8;
        const TOLERANCE: f32 = 1e-6;
        let _rng = crate::train::global_rng_lock();
        let sgd = |wd: f64| {
            move |vs: &nn::VarStore| {
                nn::Sgd {
                    momentum: 0.9,
                    wd,
                    ..Default::default()
                }
                .build(vs, LR)
                .unwrap()
            }
        };
        let mut bufs: Option<Vec<Tensor>> = None;
        let mut step = |params: &[(String, Tensor)], _: i64| {
            let b =
                bufs.get_or_insert_with(|| params.iter().map(|(_, p)| p.zeros_like()).collect());
            sgd_step(params, b, LR, 0.9, WD).unwrap();
        };
        let ours = train_head(STEPS, Some(&mut step), sgd(WD));
        let theirs = train_head(STEPS, None, sgd(WD));
        let diff = max_diff(&ours, &theirs);
        assert!(diff < TOLERANCE, "max |ours - libtorch| {diff}");
        // The test can see the decay: without it, or tripled, libtorch ends far outside the tolerance.
        for other in [0.0, 3.0 * WD] {
            let d = max_diff(&theirs, &train_head(STEPS, None, sgd(other)));
            assert!(
                d > 100.0 * TOLERANCE,
                "weight decay {other}: only {d} apart"
            );
        }
        // And training moved the parameters.
        let fresh = train_head(0, None, sgd(WD));
        assert!(max_diff(&fresh, &ours) > 100.0 * TOLERANCE);
    }

    #[test]
    fn schedules_follow_pytorch() {
        let base = TrainConfig {
            lr: 1e-2,
            epochs: 10,
            ..Default::default()
        };
        let cos = TrainConfig {
            schedule: Schedule::Cosine,
            ..base.clone()
        };
        assert_eq!(lr_at(&cos, 1), 1e-2);
        assert!((lr_at(&cos, 6) - 5e-3).abs() < 1e-12);
        assert!(lr_at(&cos, 10) < lr_at(&cos, 9) && lr_at(&cos, 10) > 0.0);
        let step = TrainConfig {
            schedule: Schedule::Step,
            lr_step_epochs: 3,
            ..base.clone()
        };
        let got: Vec<f64> = (1..=7).map(|e| lr_at(&step, e)).collect();
        let want = [1e-2, 1e-2, 1e-2, 1e-3, 1e-3, 1e-3, 1e-4];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{got:?}");
        }
        assert_eq!(lr_at(&base, 7), 1e-2);
        // One-cycle against PyTorch 2.13's OneCycleLR(max_lr=1e-2, total_steps=100,
        // cycle_momentum=False), whose learning rates at steps 0, 14, 29, 50 and 99 were printed by torch.
        let oc = TrainConfig {
            schedule: Schedule::OneCycle,
            epochs: 10,
            ..base.clone()
        };
        let at = |t: usize| lr_at_step(&oc, t / 10 + 1, t % 10, 10);
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
}
