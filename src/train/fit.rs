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

/// Hyper-parameters of head training.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadHyper {
    /// Passes over the training features.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// Momentum (0 = plain SGD).
    pub momentum: f64,
    /// L2 weight decay added to the gradient (PyTorch `weight_decay`).
    pub weight_decay: f64,
    /// Seed of initialisation, dropout masks and shuffling.
    pub seed: u64,
}

/// Training state at the end of an epoch.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Epochs completed.
    pub epoch: usize,
    /// Head parameters, [`Arch::head_params`] names and order.
    pub params: Vec<NamedTensor>,
    /// SGD momentum buffers, same order, names prefixed `momentum.`.
    pub momentum: Vec<NamedTensor>,
    /// Metrics of the completed epochs.
    pub history: Vec<EpochMetrics>,
}

/// Result of [`fit_head`].
pub struct FitResult {
    /// Per-epoch metrics.
    pub history: Vec<EpochMetrics>,
    /// Final head parameters.
    pub params: Vec<NamedTensor>,
    /// Test logits `[n_test, classes]` of the final head, on the CPU.
    pub test_logits: Tensor,
    /// Final test loss.
    pub test_loss: f64,
    /// Final test accuracy, 0..1.
    pub test_accuracy: f64,
}

/// Mean categorical cross-entropy of `logits` `[n, classes]` against labels `y` `[n]` (int64).
fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
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

fn labels(l: &[usize], device: Device) -> Result<Tensor> {
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

/// Trains the head of `arch` on `f`'s features; validation is the test split. Starts from `resume`
/// when given (epochs after `resume.epoch`), and calls `on_epoch` with the state after every epoch
/// (to checkpoint it). `log` prints one Keras-style line per epoch.
///
/// # Errors
/// [`Error::Diverged`] when the loss becomes NaN or infinite; libtorch errors; `on_epoch`'s errors.
pub fn fit_head(
    f: &Features,
    arch: &Arch,
    hp: &HeadHyper,
    device: Device,
    resume: Option<Checkpoint>,
    log: bool,
    mut on_epoch: impl FnMut(&Checkpoint) -> Result<()>,
) -> Result<FitResult> {
    super::validate_hyper(hp)?;
    let train_x = f.train_x.f_to_device(device)?;
    let test_x = f.test_x.f_to_device(device)?;
    let train_y = labels(&f.train.labels, device)?;
    let test_y = labels(&f.test.labels, device)?;
    tch::manual_seed(hp.seed as i64);
    let vs = nn::VarStore::new(device);
    let head = Head::new(&vs.root(), arch);
    let params: Vec<(String, Tensor)> = head.parameters();
    let mut momentum: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.f_zeros_like())
        .collect::<std::result::Result<_, _>>()?;
    let (start, mut history) = match resume {
        Some(c) => {
            head.load(&c.params)?;
            for (buf, saved) in momentum.iter_mut().zip(&c.momentum) {
                *buf = to_tch(saved, device)?;
            }
            (c.epoch, c.history)
        }
        None => (0, Vec::new()),
    };
    let n = f.train.labels.len();
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
    for epoch in start + 1..=hp.epochs {
        let t0 = Instant::now();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0f64, 0i64);
        for (step, chunk) in order.chunks(hp.batch_size).enumerate() {
            let idx = Tensor::from_slice(chunk).f_to_device(device)?;
            let xb = train_x.f_index_select(0, &idx)?;
            let yb = train_y.f_index_select(0, &idx)?;
            let logits = head.forward(&xb, true)?;
            let loss = cross_entropy(&logits, &yb)?;
            let l = loss.f_double_value(&[])?;
            if !l.is_finite() {
                return Err(Error::Diverged {
                    epoch,
                    step: step + 1,
                    loss: l,
                });
            }
            for (_, p) in &params {
                let mut p = p.shallow_clone();
                p.zero_grad();
            }
            loss.f_backward()?;
            sgd_step(&params, &mut momentum, hp.lr, hp.momentum, hp.weight_decay)?;
            loss_sum += l * chunk.len() as f64;
            correct += logits
                .f_argmax(-1, false)?
                .f_eq_tensor(&yb)?
                .f_sum(Kind::Int64)?
                .f_int64_value(&[])?;
        }
        let (val_loss, val_accuracy, _) = evaluate(&head, &test_x, &test_y)?;
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
        if log {
            eprintln!(
                "Epoch {epoch}/{}  loss {:.4}  accuracy {:.4}  val_loss {:.4}  val_accuracy {:.4}  ({:.2} s)",
                hp.epochs, m.loss, m.accuracy, m.val_loss, m.val_accuracy, m.seconds
            );
        }
        history.push(m);
        let ck = Checkpoint {
            epoch,
            params: params
                .iter()
                .map(|(name, p)| from_tch(name, p))
                .collect::<Result<_>>()?,
            momentum: params
                .iter()
                .zip(&momentum)
                .map(|((name, _), b)| from_tch(&format!("momentum.{name}"), b))
                .collect::<Result<_>>()?,
            history: history.clone(),
        };
        on_epoch(&ck)?;
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;

    /// Our SGD step matches libtorch's own `torch.optim.SGD` (through tch) over several steps.
    #[test]
    fn sgd_step_matches_libtorch_sgd() {
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
        for (ta, tb) in a.iter().zip(&b) {
            let worst = ta
                .data
                .iter()
                .zip(&tb.data)
                .map(|(u, v)| (u - v).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-6, "{}: max diff {worst}", ta.name);
        }
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
