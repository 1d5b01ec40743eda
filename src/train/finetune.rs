//! Fine-tuning beyond the frozen head (`--unfreeze N`): the last N conv layers of the VGG16 base train
//! together with the dense head, on decoded images (no feature cache, since the trainable layers change
//! the features), optionally with data augmentation (`--augment`: random horizontal flip and 4-pixel
//! pad-and-crop, as torchvision's `RandomHorizontalFlip` + `RandomCrop(32, padding=4)`).
//!
//! Randomness is seeded per epoch (shuffle and augmentation from a ChaCha8 stream numbered by the
//! epoch, dropout from libtorch's generator re-seeded at each epoch), so that a run resumed from an
//! epoch checkpoint ends exactly like an uninterrupted one without replaying earlier epochs.

use super::fit::{
    cross_entropy, labels, optimise_step, patience_exhausted, Best, Checkpoint, FitResult,
    HeadHyper, OptState,
};
use super::model::{from_tch, to_tch, Head};
use crate::arch::{Arch, BaseLayer};
use crate::data::{caffe_preprocess, LoadedSplit};
use crate::error::{Error, Result};
use crate::run::EpochMetrics;
use crate::weights::NamedTensor;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// Number of conv layers in the VGG16 base (the most `--unfreeze` accepts).
pub const VGG16_CONVS: usize = 13;

enum Layer {
    Conv { weight: Tensor, bias: Tensor },
    Pool,
}

/// VGG16 base with its last `unfreeze` conv layers trainable, plus the dense head.
pub struct FineTuneNet {
    layers: Vec<Layer>,
    /// Index in `layers` of the first trainable conv.
    first_trainable: usize,
    /// Names (`base.<conv>.weight|bias`) of the trainable conv parameters, in order.
    base_names: Vec<String>,
    head: Head,
}

impl FineTuneNet {
    /// Builds the network from the ImageNet base `weights` ([`Arch::base_params`] order) on `device`;
    /// the head is initialised under `root` from libtorch's global generator.
    ///
    /// # Errors
    /// [`Error::Usage`] when `unfreeze` is 0 or above 13; [`Error::Torch`] on a libtorch failure.
    pub fn new(
        root: &nn::Path,
        arch: &Arch,
        weights: &[NamedTensor],
        unfreeze: usize,
        device: Device,
    ) -> Result<Self> {
        if unfreeze == 0 || unfreeze > VGG16_CONVS {
            return Err(Error::Usage(format!(
                "--unfreeze must be between 1 and {VGG16_CONVS} (conv layers of VGG16), got {unfreeze}"
            )));
        }
        let convs = arch
            .base
            .iter()
            .filter(|l| matches!(l, BaseLayer::Conv { .. }))
            .count();
        let mut it = weights.iter();
        let mut layers = Vec::new();
        let mut base_names = Vec::new();
        let mut first_trainable = usize::MAX;
        let mut k = 0;
        for l in &arch.base {
            match l {
                BaseLayer::Conv { name, .. } => {
                    let trainable = k + unfreeze >= convs;
                    let mut next = || -> Result<Tensor> {
                        let t = it
                            .next()
                            .ok_or_else(|| Error::Torch(format!("base weight {name} missing")))?;
                        if trainable {
                            base_names.push(t.name.clone());
                            Ok(to_tch(t, device)?.f_set_requires_grad(true)?)
                        } else {
                            to_tch(t, device)
                        }
                    };
                    let weight = next()?;
                    let bias = next()?;
                    if trainable && first_trainable == usize::MAX {
                        first_trainable = layers.len();
                    }
                    layers.push(Layer::Conv { weight, bias });
                    k += 1;
                }
                BaseLayer::MaxPool { .. } => layers.push(Layer::Pool),
            }
        }
        Ok(FineTuneNet {
            layers,
            first_trainable,
            base_names,
            head: Head::new(root, arch),
        })
    }

    /// Trainable parameters: the unfrozen conv weights and biases (`base.<conv>.weight|bias`), then
    /// the head's. The tensors share storage with the network.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut names = self.base_names.iter();
        for l in &self.layers[self.first_trainable.min(self.layers.len())..] {
            if let Layer::Conv { weight, bias } = l {
                for t in [weight, bias] {
                    if let Some(n) = names.next() {
                        out.push((n.clone(), t.shallow_clone()));
                    }
                }
            }
        }
        out.extend(self.head.parameters());
        out
    }

    /// Overwrites the trainable parameters with `values` (in [`FineTuneNet::parameters`] order).
    ///
    /// # Errors
    /// [`Error::Torch`] when a name or shape differs.
    pub fn load(&self, values: &[NamedTensor]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let params = self.parameters();
        if params.len() != values.len() {
            return Err(Error::Torch(format!(
                "{} parameters given for {}",
                values.len(),
                params.len()
            )));
        }
        for ((name, mut p), v) in params.into_iter().zip(values) {
            if name != v.name {
                return Err(Error::Torch(format!("parameter {name} given {}", v.name)));
            }
            p.f_copy_(&to_tch(v, p.device())?)?;
        }
        Ok(())
    }

    /// The whole base, frozen and tuned layers, as [`Arch::base_params`] tensors (for `base.safetensors`
    /// and the ONNX export).
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    pub fn base_tensors(&self, arch: &Arch) -> Result<Vec<NamedTensor>> {
        let names = arch.base_params();
        let tensors = self.layers.iter().flat_map(|l| match l {
            Layer::Conv { weight, bias } => vec![weight, bias],
            Layer::Pool => vec![],
        });
        names
            .iter()
            .zip(tensors)
            .map(|((n, _), t)| from_tch(n, t))
            .collect()
    }

    /// Logits `[n, classes]` of a preprocessed batch `x` (float32 NCHW BGR, on the network's device);
    /// the frozen layers run without gradient, dropout only when `train`.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure (e.g. out of memory).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let apply = |h: Tensor, l: &Layer| -> Result<Tensor> {
            Ok(match l {
                Layer::Conv { weight, bias } => h
                    .f_conv2d(weight, Some(bias), [1, 1], [1, 1], [1, 1], 1)?
                    .f_relu()?,
                Layer::Pool => h.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?,
            })
        };
        let split = self.first_trainable.min(self.layers.len());
        let mut h = x.shallow_clone();
        {
            let _guard = tch::no_grad_guard();
            for l in &self.layers[..split] {
                h = apply(h, l)?;
            }
        }
        for l in &self.layers[split..] {
            h = apply(h, l)?;
        }
        self.head.forward(&h.f_flatten(1, -1)?, train)
    }
}

/// Random horizontal flip (probability 0.5) and pad-and-crop of one HWC RGB `u8` image of side `size`
/// in place: the image is shifted by up to `pad` pixels in each direction, uncovered pixels black (zero
/// padding before normalisation, as torchvision's `RandomCrop(padding=4)`). Draws three numbers from
/// `rng` per image.
pub fn augment_image(img: &mut [u8], size: usize, pad: usize, rng: &mut impl rand::Rng) {
    let flip = rng.random_bool(0.5);
    let p = pad as i64;
    let dx = rng.random_range(-p..=p);
    let dy = rng.random_range(-p..=p);
    let src = img.to_vec();
    let s = size as i64;
    for y in 0..s {
        for x in 0..s {
            let sx = if flip { s - 1 - x } else { x } + dx;
            let sy = y + dy;
            let d = ((y * s + x) * 3) as usize;
            if (0..s).contains(&sx) && (0..s).contains(&sy) {
                let o = ((sy * s + sx) * 3) as usize;
                img[d..d + 3].copy_from_slice(&src[o..o + 3]);
            } else {
                img[d..d + 3].copy_from_slice(&[0, 0, 0]);
            }
        }
    }
}

/// Images and labels of one split as used by fine-tuning: NHWC RGB `u8` pixels.
pub struct PixelSplit<'a> {
    /// Pixels of all images, `labels.len() * size * size * 3` bytes.
    pub pixels: &'a [u8],
    /// Labels.
    pub labels: &'a [usize],
    /// Image side, pixels.
    pub size: usize,
}

impl<'a> From<&'a LoadedSplit> for PixelSplit<'a> {
    fn from(s: &'a LoadedSplit) -> Self {
        PixelSplit {
            pixels: &s.pixels,
            labels: &s.labels,
            size: s.size,
        }
    }
}

/// Batch size of evaluation passes (no gradient, so larger than training batches).
const EVAL_BATCH: usize = 256;

fn batch_tensor(pixels: &[u8], n: usize, size: usize, device: Device) -> Result<Tensor> {
    let x = caffe_preprocess(pixels, n, size);
    Ok(Tensor::f_from_slice(&x)?
        .f_view([n as i64, 3, size as i64, size as i64])?
        .f_to_device(device)?)
}

/// Mean loss, accuracy and logits (`[n, classes]`, CPU) of `net` in evaluation mode on `split`.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn evaluate_pixels(
    net: &FineTuneNet,
    split: &PixelSplit,
    device: Device,
) -> Result<(f64, f64, Tensor)> {
    let _guard = tch::no_grad_guard();
    let per = split.size * split.size * 3;
    let n = split.labels.len();
    let mut parts = Vec::new();
    for start in (0..n).step_by(EVAL_BATCH) {
        let m = EVAL_BATCH.min(n - start);
        let x = batch_tensor(
            &split.pixels[start * per..(start + m) * per],
            m,
            split.size,
            device,
        )?;
        parts.push(net.forward(&x, false)?.f_to_device(Device::Cpu)?);
    }
    let logits = Tensor::f_cat(&parts, 0)?;
    let y = labels(split.labels, Device::Cpu)?;
    let loss = cross_entropy(&logits, &y)?.f_double_value(&[])?;
    let acc = logits
        .f_argmax(-1, false)?
        .f_eq_tensor(&y)?
        .f_to_kind(Kind::Float)?
        .f_mean(Kind::Float)?
        .f_double_value(&[])?;
    Ok((loss, acc, logits))
}

/// What [`fit_finetune`] returns besides the usual [`FitResult`].
pub struct FineTuneResult {
    /// Head parameters, history, test logits and metrics, best epoch (its `params` hold the trainable
    /// conv and head parameters).
    pub fit: FitResult,
    /// The whole base after training (frozen and tuned layers), [`Arch::base_params`] names.
    pub base: Vec<NamedTensor>,
}

/// Fine-tunes the last `unfreeze` conv layers and the head on decoded images. Validation on `val`
/// (per-epoch metrics, early stopping, best epoch), final metrics on `test`. `resume` continues after
/// its epoch; `init_head` (head parameters from a warm-up) replaces the random head; `on_epoch` receives the state after every epoch (to checkpoint it).
///
/// # Errors
/// [`Error::Diverged`] on a non-finite loss; libtorch errors; `on_epoch`'s errors.
#[allow(clippy::too_many_arguments)]
pub fn fit_finetune(
    train: &PixelSplit,
    val: &PixelSplit,
    test: &PixelSplit,
    arch: &Arch,
    base_weights: &[NamedTensor],
    unfreeze: usize,
    augment: bool,
    hp: &HeadHyper,
    device: Device,
    resume: Option<Checkpoint>,
    init_head: Option<&[NamedTensor]>,
    progress: bool,
    mut on_epoch: impl FnMut(&Checkpoint) -> Result<()>,
) -> Result<FineTuneResult> {
    super::validate_hyper(hp)?;
    tch::manual_seed(hp.seed as i64);
    let vs = nn::VarStore::new(device);
    let net = FineTuneNet::new(&vs.root(), arch, base_weights, unfreeze, device)?;
    if let Some(h) = init_head {
        net.head.load(h)?;
    }
    let params = net.parameters();
    let mut opt = OptState::new(hp.optimizer, &params)?;
    let (start, mut history, mut best) = match resume {
        Some(c) => {
            net.load(&c.params)?;
            opt.load(&c.momentum, device)?;
            (c.epoch, c.history, c.best)
        }
        None => (0, Vec::new(), None),
    };
    let n = train.labels.len();
    let size = train.size;
    let per = size * size * 3;
    let pad = 4 * size / 32;
    let steps_per_epoch = n.div_ceil(hp.batch_size) as i64;
    let mut stopped_early = None;
    for epoch in start + 1..=hp.epochs {
        if patience_exhausted(&history, hp.patience) {
            stopped_early = Some(epoch - 1);
            break;
        }
        let t0 = Instant::now();
        let lr = hp.lr_at(epoch);
        // Per-epoch randomness: a resumed run draws exactly what an uninterrupted one draws.
        tch::manual_seed(hp.seed.wrapping_add(epoch as u64) as i64);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(hp.seed);
        rng.set_stream(epoch as u64);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let pb = if progress {
            let pb = ProgressBar::new(n as u64);
            pb.set_style(
                ProgressStyle::with_template(&format!(
                    "epoch {epoch}/{} [{{bar:32}}] {{pos}}/{{len}} images  {{per_sec}}  eta {{eta}}",
                    hp.epochs
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            pb
        } else {
            ProgressBar::hidden()
        };
        let (mut loss_sum, mut correct) = (0f64, 0i64);
        for (step, chunk) in order.chunks(hp.batch_size).enumerate() {
            let mut px = Vec::with_capacity(chunk.len() * per);
            for &i in chunk {
                let start = px.len();
                px.extend_from_slice(&train.pixels[i * per..(i + 1) * per]);
                if augment {
                    augment_image(&mut px[start..], size, pad, &mut rng);
                }
            }
            let x = batch_tensor(&px, chunk.len(), size, device)?;
            let yb = labels(
                &chunk.iter().map(|&i| train.labels[i]).collect::<Vec<_>>(),
                device,
            )?;
            let logits = net.forward(&x, true)?;
            let (l, c) = optimise_step(
                &logits,
                &yb,
                &params,
                &mut opt,
                hp,
                (epoch, step, steps_per_epoch),
            )
            .inspect_err(|_| pb.finish_and_clear())?;
            loss_sum += l * chunk.len() as f64;
            correct += c;
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        let (val_loss, val_accuracy, _) = evaluate_pixels(&net, val, device)?;
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
        eprintln!(
            "Epoch {epoch}/{}  loss {:.4}  accuracy {:.4}  val_loss {:.4}  val_accuracy {:.4}  lr {lr:.3e}  ({:.1} s, {:.0} images/s)",
            hp.epochs,
            m.loss,
            m.accuracy,
            m.val_loss,
            m.val_accuracy,
            m.seconds,
            n as f64 / m.seconds.max(1e-9)
        );
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
        on_epoch(&Checkpoint {
            epoch,
            params: current,
            momentum: opt.save(&params)?,
            history: history.clone(),
            best: best.clone(),
        })?;
    }
    if let Some(e) = stopped_early {
        eprintln!("{}", super::fit::early_stop_message(e, hp, best.as_ref()));
    }
    if hp.restore_best {
        if let Some(b) = &best {
            net.load(&b.params)?;
            eprintln!(
                "restoring the parameters of epoch {} (lowest validation loss {:.4})",
                b.epoch, b.val_loss
            );
        }
    }
    let (test_loss, test_accuracy, test_logits) = evaluate_pixels(&net, test, device)?;
    let head_names: Vec<String> = arch.head_params().into_iter().map(|(n, _)| n).collect();
    let head_params = params
        .iter()
        .filter(|(n, _)| head_names.contains(n))
        .map(|(n, p)| from_tch(n, p))
        .collect::<Result<_>>()?;
    Ok(FineTuneResult {
        base: net.base_tensors(arch)?,
        fit: FitResult {
            history,
            params: head_params,
            test_logits,
            test_loss,
            test_accuracy,
            best,
            stopped_early,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augment_flips_and_shifts_with_black_padding() {
        // A 4x4 image whose pixel (y, x) has value 10*y + x in all channels.
        let img: Vec<u8> = (0..16)
            .flat_map(|i| [(10 * (i / 4) + i % 4) as u8; 3])
            .collect();
        let at = |v: &[u8], y: usize, x: usize| v[(y * 4 + x) * 3];
        let mut seen_flip = false;
        let mut seen_shift = false;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let mut a = img.clone();
            // Replay the draws to know what augment_image chose.
            let mut probe = rng.clone();
            let flip = probe.random_bool(0.5);
            let dx = probe.random_range(-1i64..=1);
            let dy = probe.random_range(-1i64..=1);
            augment_image(&mut a, 4, 1, &mut rng);
            for y in 0..4i64 {
                for x in 0..4i64 {
                    let sx = if flip { 3 - x } else { x } + dx;
                    let sy = y + dy;
                    let want = if (0..4).contains(&sx) && (0..4).contains(&sy) {
                        (10 * sy + sx) as u8
                    } else {
                        0
                    };
                    assert_eq!(at(&a, y as usize, x as usize), want);
                }
            }
            seen_flip |= flip;
            seen_shift |= dx != 0 || dy != 0;
        }
        assert!(seen_flip && seen_shift);
    }

    #[test]
    fn unfreeze_selects_the_last_convs() {
        let _rng = crate::train::global_rng_lock();
        let arch = Arch::vgg16_transfer(32, 10);
        let weights: Vec<NamedTensor> = arch
            .base_params()
            .into_iter()
            .map(|(name, shape)| NamedTensor {
                data: vec![0.01; shape.iter().product()],
                name,
                shape,
            })
            .collect();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = FineTuneNet::new(&vs.root(), &arch, &weights, 2, Device::Cpu).unwrap();
        let names: Vec<String> = net.parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            &names[..4],
            [
                "base.block5_conv2.weight",
                "base.block5_conv2.bias",
                "base.block5_conv3.weight",
                "base.block5_conv3.bias"
            ]
        );
        assert_eq!(names.len(), 4 + 4);
        // Gradients reach the unfrozen convs, not the frozen ones.
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[1i64, 2]);
        cross_entropy(&net.forward(&x, true).unwrap(), &y)
            .unwrap()
            .backward();
        for (n, p) in net.parameters() {
            assert!(p.grad().defined(), "{n} has no gradient");
        }
        assert_eq!(net.base_tensors(&arch).unwrap().len(), 26);
        assert!(FineTuneNet::new(&vs.root(), &arch, &weights, 14, Device::Cpu).is_err());
    }
}
