//! Fine-tuning beyond the frozen head (`--unfreeze N`): the last N conv layers of the VGG16 base train
//! together with the dense head, on decoded images (no feature cache, since the trainable layers change
//! the features), optionally with data augmentation (`--augment`, see `augment.rs`).
//!
//! Randomness is seeded per epoch (shuffle and augmentation from a ChaCha8 stream numbered by the
//! epoch, dropout from libtorch's generator re-seeded at each epoch), so that a run resumed from an
//! epoch checkpoint ends exactly like an uninterrupted one without replaying earlier epochs.

use super::augment::{Augmenter, PhotoSet};
use super::images::PixelSplit;
use super::learner::{
    label_tensor, measure_training_speed, EvalSplit, Model, Scores, ESTIMATE_AFTER_BATCHES,
};
use super::model::{channels_last, conv_relu, from_tch, pool, to_tch, ConvForm, Head};
use crate::arch::{Arch, BaseLayer, Pooling};
pub use crate::config::VGG16_CONVS;
use crate::config::{Precision, TrainConfig};
use crate::data::caffe_preprocess;
use crate::error::{Error, Result};
use crate::weights::NamedTensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{nn, Device, Kind, Tensor};

/// One conv layer of [`FineTuneNet`].
struct Conv {
    /// float32 master weight, OIHW with channels-last strides (the layout oneDNN's NHWC kernels read
    /// without reordering); the optimizer updates it in place when trainable.
    weight: Tensor,
    /// float32 master bias.
    bias: Tensor,
    /// How it runs, by the side of its map.
    form: ConvForm,
    /// For a frozen conv: its [`conv_relu`] operands, prepared once per compute kind (float32, and
    /// bfloat16 when training in bf16).
    frozen: Vec<(Kind, (Tensor, Tensor))>,
}

impl Conv {
    /// The [`conv_relu`] operands in `kind`: prepared ones for a frozen conv, else cast (and laid out
    /// as the form's matrix) from the master weight in this pass, differentiably, so that the
    /// gradients reach the float32 weights.
    fn operands(&self, kind: Kind) -> Result<(Tensor, Tensor)> {
        if let Some((_, (w, b))) = self.frozen.iter().find(|(k, _)| *k == kind) {
            return Ok((w.shallow_clone(), b.shallow_clone()));
        }
        let (w, b) = (self.weight.f_to_kind(kind)?, self.bias.f_to_kind(kind)?);
        self.form.operands(&w, &b)
    }
}

enum Layer {
    Conv(Conv),
    Pool,
}

impl Layer {
    fn apply(&self, x: Tensor, kind: Kind) -> Result<Tensor> {
        match self {
            Layer::Conv(c) => {
                let (w, b) = c.operands(kind)?;
                conv_relu(&x, &w, &b, c.form, true)
            }
            Layer::Pool => Ok(x.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?),
        }
    }
}

/// VGG16 base with its last `unfreeze` conv layers trainable, plus the dense head.
///
/// It runs as the extraction base does (see [`super::model::Base::features`]): channels-last
/// activations and weights, which spare oneDNN's layout reorders in forward and backward, and the
/// convs on 2x2 maps (block5 at 32x32 input) as matrix products; the convs on 4x4 maps (block4) run
/// as im2col matrix products ([`ConvForm::Im2col`]). The conv layers compute in the `kind`
/// given to [`FineTuneNet::forward`]: float32, or bfloat16 (mixed precision, `--precision bf16`) with
/// float32 master weights, head and loss.
pub struct FineTuneNet {
    layers: Vec<Layer>,
    /// Index in `layers` of the first trainable conv.
    first_trainable: usize,
    /// Names (`base.<conv>.weight|bias`) of the trainable conv parameters, in order.
    base_names: Vec<String>,
    /// How the last map becomes the head's input.
    pooling: Pooling,
    head: Head,
}

impl FineTuneNet {
    /// Builds the network from the ImageNet base `weights` ([`Arch::base_params`] order) on `device`,
    /// with the frozen convs prepared for float32 and for `train_kind` (the compute kind of training
    /// passes); the head is initialised under `root` from libtorch's global generator.
    ///
    /// # Errors
    /// [`Error::Usage`] when `unfreeze` is 0 or above 13; [`Error::Torch`] on a libtorch failure.
    pub fn new(
        root: &nn::Path,
        arch: &Arch,
        weights: &[NamedTensor],
        unfreeze: usize,
        (device, train_kind): (Device, Kind),
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
        let mut next = |name: &str| -> Result<&NamedTensor> {
            it.next()
                .ok_or_else(|| Error::Torch(format!("base weight {name} missing")))
        };
        let (mut layers, mut base_names) = (Vec::new(), Vec::new());
        let (mut first_trainable, mut k, mut map) = (usize::MAX, 0, arch.input_size);
        for l in &arch.base {
            let BaseLayer::Conv { name, .. } = l else {
                layers.push(Layer::Pool);
                map /= 2;
                continue;
            };
            let trainable = k + unfreeze >= convs;
            let (w, b) = (next(name)?, next(name)?);
            let mut conv = Conv {
                weight: channels_last(&to_tch(w, device)?)?,
                bias: to_tch(b, device)?,
                form: ConvForm::for_map(map, true),
                frozen: Vec::new(),
            };
            if trainable {
                base_names.extend([w.name.clone(), b.name.clone()]);
                conv.weight = conv.weight.f_set_requires_grad(true)?;
                conv.bias = conv.bias.f_set_requires_grad(true)?;
                first_trainable = first_trainable.min(layers.len());
            }
            layers.push(Layer::Conv(conv));
            k += 1;
        }
        let mut net = FineTuneNet {
            layers,
            first_trainable,
            base_names,
            pooling: arch.pooling,
            head: Head::new(root, arch),
        };
        net.prepare(Kind::Float)?;
        net.prepare(train_kind)?;
        Ok(net)
    }

    /// Prepares the frozen convs' operands in `kind` (once per kind: later passes in `kind` read
    /// them instead of casting and laying out the weights again).
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    fn prepare(&mut self, kind: Kind) -> Result<()> {
        let frozen = self.first_trainable.min(self.layers.len());
        for l in &mut self.layers[..frozen] {
            if let Layer::Conv(c) = l {
                if !c.frozen.iter().any(|(k, _)| *k == kind) {
                    let prepared = c.operands(kind)?;
                    c.frozen.push((kind, prepared));
                }
            }
        }
        Ok(())
    }

    /// Trainable parameters: the unfrozen conv weights and biases (`base.<conv>.weight|bias`), then
    /// the head's. The tensors share storage with the network.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let tuned = self.layers[self.first_trainable.min(self.layers.len())..]
            .iter()
            .filter_map(|l| match l {
                Layer::Conv(c) => Some([c.weight.shallow_clone(), c.bias.shallow_clone()]),
                Layer::Pool => None,
            })
            .flatten();
        let mut out: Vec<(String, Tensor)> = self.base_names.iter().cloned().zip(tuned).collect();
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
            Layer::Conv(c) => vec![&c.weight, &c.bias],
            Layer::Pool => vec![],
        });
        names
            .iter()
            .zip(tensors)
            .map(|((n, _), t)| from_tch(n, t))
            .collect()
    }

    /// Logits `[n, classes]` (float32) of a preprocessed batch `x` (float32 NCHW BGR, on the network's
    /// device), with the conv layers computing in `kind` (`Kind::Float` or `Kind::BFloat16`); the
    /// frozen layers run without gradient, dropout only when `train`.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure (e.g. out of memory).
    pub fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Result<Tensor> {
        let split = self.first_trainable.min(self.layers.len());
        let mut h = channels_last(x)?.f_to_kind(kind)?;
        {
            let _guard = tch::no_grad_guard();
            for l in &self.layers[..split] {
                h = l.apply(h, kind)?;
            }
        }
        for l in &self.layers[split..] {
            h = l.apply(h, kind)?;
        }
        let features = pool(&h.f_to_kind(Kind::Float)?, self.pooling)?;
        self.head.forward(&features, train)
    }
}

/// The compute kind of the conv layers in training passes at `precision` (`auto` before a timing
/// decided it: float32).
fn compute_kind(precision: Precision) -> Kind {
    match precision {
        Precision::Bf16 => Kind::BFloat16,
        Precision::Fp32 | Precision::Auto => Kind::Float,
    }
}

/// What [`time_precisions`] measured: training passes per second in each precision, and the one
/// kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecisionTiming {
    /// Images per second of float32 training passes (forward and backward).
    pub fp32: f64,
    /// Images per second of bf16 mixed-precision training passes.
    pub bf16: f64,
    /// [`Precision::faster`] of the two.
    pub chosen: Precision,
}

impl PrecisionTiming {
    /// The rate of the precision kept, images per second.
    pub fn rate(&self) -> f64 {
        match self.chosen {
            Precision::Bf16 => self.bf16,
            _ => self.fp32,
        }
    }

    /// The line `pipe train` prints after the timing.
    pub fn line(&self) -> String {
        format!(
            "precision auto: {} images/s in float32, {} in bf16 over {ESTIMATE_AFTER_BATCHES} \
             training batches each; fine-tuning in {}",
            crate::util::images_per_s(self.fp32),
            crate::util::images_per_s(self.bf16),
            self.chosen.label()
        )
    }
}

/// `--precision auto` where neither float32 nor bf16 is known to be the faster ([`Precision::resolve`]
/// leaves it `Auto` on a CPU with AVX512_BF16 but no AMX): times the training passes of `model` in
/// each ([`measure_training_speed`]: forward and backward of [`ESTIMATE_AFTER_BATCHES`] batches of
/// `config`'s size after an untimed one, the parameters unchanged), then sets the model to the one
/// [`Precision::faster`] keeps. The run's later epochs draw the same shuffles, augmentations and
/// dropout as without the timing.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn time_precisions(model: &mut FineTuneModel, config: &TrainConfig) -> Result<PrecisionTiming> {
    model.set_precision(Precision::Fp32)?;
    let fp32 = measure_training_speed(model, config)?;
    model.set_precision(Precision::Bf16)?;
    let bf16 = measure_training_speed(model, config)?;
    let chosen = Precision::faster(fp32, bf16);
    model.set_precision(chosen)?;
    Ok(PrecisionTiming { fp32, bf16, chosen })
}

/// Batch size of evaluation passes (no gradient, so larger than training batches).
const EVAL_BATCH: usize = 256;

fn batch_tensor(pixels: &[u8], n: usize, size: usize, device: Device) -> Result<Tensor> {
    let x = caffe_preprocess(pixels, n, size);
    Ok(Tensor::f_from_slice(&x)?
        .f_view([n as i64, 3, size as i64, size as i64])?
        .f_to_device(device)?)
}

/// Scores of `net` in evaluation mode on `split`, in batches of 256, in float32 (whatever precision
/// training used); logits `[n, classes]` on the CPU.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn evaluate_pixels(net: &FineTuneNet, split: &PixelSplit, device: Device) -> Result<Scores> {
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
        parts.push(
            net.forward(&x, false, Kind::Float)?
                .f_to_device(Device::Cpu)?,
        );
    }
    Scores::of(
        Tensor::f_cat(&parts, 0)?,
        &label_tensor(split.labels, Device::Cpu)?,
    )
}

/// The images a fine-tuning run trains, validates and tests on.
pub struct PixelSplits<'a> {
    /// Training images.
    pub train: PixelSplit<'a>,
    /// Validation images (held out of training with `--val-split`, else the test images).
    pub val: PixelSplit<'a>,
    /// Test images.
    pub test: PixelSplit<'a>,
    /// The training photos that photo augmentation crops from (`None` without it).
    pub photos: Option<&'a PhotoSet>,
}

/// The last `unfreeze` conv layers and the head trained on decoded images, augmented with `augment`:
/// the [`Model`] of an `--unfreeze N` run.
pub struct FineTuneModel<'a> {
    net: FineTuneNet,
    _vs: nn::VarStore,
    splits: PixelSplits<'a>,
    augment: Augmenter<'a>,
    seed: u64,
    device: Device,
    /// Compute kind of the conv layers in training passes (`--precision`).
    kind: Kind,
    arch: Arch,
    unfreeze: usize,
    /// The current epoch's stream of shuffle and augmentation draws.
    rng: rand_chacha::ChaCha8Rng,
}

impl<'a> FineTuneModel<'a> {
    /// Builds the network from the ImageNet base `weights` with the last `config.unfreeze` convs
    /// trainable, its head initialised from libtorch's generator seeded with `config.seed`, or taken
    /// from `init_head` (head parameters from a warm-up) when given. Training passes compute in
    /// `config.precision` (bf16 or float32); evaluation always in float32.
    ///
    /// # Errors
    /// As [`FineTuneNet::new`] and [`Augmenter::of`]; [`Error::Torch`] when `init_head` does not fit
    /// the head.
    pub fn new(
        splits: PixelSplits<'a>,
        arch: &Arch,
        weights: &[NamedTensor],
        config: &TrainConfig,
        init_head: Option<&[NamedTensor]>,
        device: Device,
    ) -> Result<Self> {
        let kind = compute_kind(config.precision.unwrap_or_default());
        tch::manual_seed(config.seed as i64);
        let vs = nn::VarStore::new(device);
        let net = FineTuneNet::new(&vs.root(), arch, weights, config.unfreeze, (device, kind))?;
        if let Some(h) = init_head {
            net.head.load(h)?;
        }
        Ok(FineTuneModel {
            net,
            _vs: vs,
            augment: Augmenter::of(config, splits.photos)?,
            splits,
            seed: config.seed,
            device,
            kind,
            arch: arch.clone(),
            unfreeze: config.unfreeze,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(config.seed),
        })
    }

    /// The whole base, frozen and tuned layers, as [`Arch::base_params`] tensors.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    pub fn base_tensors(&self, arch: &Arch) -> Result<Vec<NamedTensor>> {
        self.net.base_tensors(arch)
    }

    /// The precision of the training passes from now on (float32 for `auto`); evaluation stays
    /// float32.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        let kind = compute_kind(precision);
        self.net.prepare(kind)?;
        self.kind = kind;
        Ok(())
    }

    /// The precision of the training passes: [`Precision::Bf16`] or [`Precision::Fp32`].
    pub fn precision(&self) -> Precision {
        if self.kind == Kind::BFloat16 {
            Precision::Bf16
        } else {
            Precision::Fp32
        }
    }

    /// A float32 copy of the network on the CPU (with its variable store), for the final test
    /// predictions of a run trained on CUDA.
    fn on_cpu(&self) -> Result<(FineTuneNet, nn::VarStore)> {
        let vs = nn::VarStore::new(Device::Cpu);
        let base = self.net.base_tensors(&self.arch)?;
        let cpu = (Device::Cpu, Kind::Float);
        let net = FineTuneNet::new(&vs.root(), &self.arch, &base, self.unfreeze, cpu)?;
        let head: Vec<NamedTensor> = self
            .net
            .head
            .parameters()
            .iter()
            .map(|(n, t)| from_tch(n, t))
            .collect::<Result<_>>()?;
        net.head.load(&head)?;
        Ok((net, vs))
    }
}

impl Model for FineTuneModel<'_> {
    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.net.parameters()
    }

    fn load(&self, values: &[NamedTensor]) -> Result<()> {
        self.net.load(values)
    }

    fn train_len(&self) -> usize {
        self.splits.train.labels.len()
    }

    fn train_labels(&self) -> Result<Vec<usize>> {
        Ok(self.splits.train.labels.to_vec())
    }

    fn epoch_order(&mut self, epoch: usize) -> Vec<usize> {
        // Per-epoch randomness: a resumed run draws exactly what an uninterrupted one draws.
        tch::manual_seed(self.seed.wrapping_add(epoch as u64) as i64);
        self.rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        self.rng.set_stream(epoch as u64);
        let mut order: Vec<usize> = (0..self.train_len()).collect();
        order.shuffle(&mut self.rng);
        order
    }

    fn train_batch(&mut self, batch: &[usize]) -> Result<(Tensor, Tensor)> {
        let train = &self.splits.train;
        let px = self.augment.batch(train, batch, &mut self.rng);
        let x = batch_tensor(&px, batch.len(), train.size, self.device)?;
        let labels: Vec<usize> = batch.iter().map(|&i| train.labels[i]).collect();
        Ok((
            self.net.forward(&x, true, self.kind)?,
            label_tensor(&labels, self.device)?,
        ))
    }

    fn eval_len(&self, split: EvalSplit) -> usize {
        match split {
            EvalSplit::Validation => self.splits.val.labels.len(),
            EvalSplit::Test => self.splits.test.labels.len(),
        }
    }

    fn evaluate(&self, split: EvalSplit) -> Result<Scores> {
        match split {
            EvalSplit::Validation => evaluate_pixels(&self.net, &self.splits.val, self.device),
            // The final figures and predictions.json, which the exported float32 model must
            // reproduce to 1e-4: on the CPU, where float32 is float32 (libtorch's CUDA convolutions
            // use TF32 by default on recent GPUs, which would differ by more).
            EvalSplit::Test if self.device != Device::Cpu => {
                let (net, _vs) = self.on_cpu()?;
                evaluate_pixels(&net, &self.splits.test, Device::Cpu)
            }
            EvalSplit::Test => evaluate_pixels(&self.net, &self.splits.test, Device::Cpu),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::optim::cross_entropy;
    use super::*;

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
        let cpu = (Device::Cpu, Kind::Float);
        let net = FineTuneNet::new(&vs.root(), &arch, &weights, 2, cpu).unwrap();
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
        cross_entropy(&net.forward(&x, true, Kind::Float).unwrap(), &y)
            .unwrap()
            .backward();
        for (n, p) in net.parameters() {
            assert!(p.grad().defined(), "{n} has no gradient");
        }
        assert_eq!(net.base_tensors(&arch).unwrap().len(), 26);
        assert!(FineTuneNet::new(&vs.root(), &arch, &weights, 14, cpu).is_err());
    }

    /// The precision timing of `--precision auto` measures both precisions, leaves every parameter
    /// as it was, keeps the one [`Precision::faster`] picks, and later training passes run in it
    /// (bf16 logits of the same reseeded batch differ from float32's, within bf16's rounding).
    #[test]
    fn timing_the_precisions_keeps_the_faster_and_changes_no_parameter() {
        let _rng = crate::train::global_rng_lock();
        let arch = Arch::vgg16_transfer(32, 3);
        let weights = super::super::model::tests::random_base(&arch, 7);
        let (n, size) = (6usize, 32usize);
        let pixels: Vec<u8> = (0..n * size * size * 3)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let split = || PixelSplit {
            pixels: &pixels,
            labels: &labels,
            size,
        };
        let splits_again = || PixelSplits {
            train: split(),
            val: split(),
            test: split(),
            photos: None,
        };
        let splits = splits_again();
        let config = TrainConfig {
            unfreeze: 2,
            augment: true,
            batch_size: 2,
            precision: Some(Precision::Auto),
            ..TrainConfig::default()
        };
        let mut model =
            FineTuneModel::new(splits, &arch, &weights, &config, None, Device::Cpu).unwrap();
        assert_eq!(model.precision(), Precision::Fp32);
        let before: Vec<Tensor> = model.parameters().iter().map(|(_, p)| p.copy()).collect();
        let timing = time_precisions(&mut model, &config).unwrap();
        assert!(timing.fp32 > 0.0 && timing.bf16 > 0.0, "{timing:?}");
        assert_eq!(timing.chosen, Precision::faster(timing.fp32, timing.bf16));
        assert_eq!(model.precision(), timing.chosen);
        assert!(
            timing.line().contains("images/s in float32"),
            "{}",
            timing.line()
        );
        for ((name, p), b) in model.parameters().iter().zip(&before) {
            assert!(p.equal(b), "{name} changed");
            assert!(
                !p.grad().defined() || p.grad().abs().max().double_value(&[]) == 0.0,
                "{name} kept a gradient"
            );
        }
        // The frozen convs are prepared for both precisions.
        let Layer::Conv(first) = &model.net.layers[0] else {
            panic!("the first layer is a conv")
        };
        let kinds: Vec<Kind> = first.frozen.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [Kind::Float, Kind::BFloat16]);
        let mut logits = |p| {
            model.set_precision(p).unwrap();
            let order = model.epoch_order(1);
            (order.clone(), model.train_batch(&order[..2]).unwrap().0)
        };
        let ((order, fp32), (_, bf16)) = (logits(Precision::Fp32), logits(Precision::Bf16));
        let gap = relative(&bf16, &fp32);
        assert!(gap > 0.0 && gap < 0.05, "bf16 against float32: {gap}");
        // A model that was never timed draws the same first epoch: shuffle, augmentation, dropout.
        let mut untimed =
            FineTuneModel::new(splits_again(), &arch, &weights, &config, None, Device::Cpu)
                .unwrap();
        assert_eq!(untimed.epoch_order(1), order);
        assert!(untimed.train_batch(&order[..2]).unwrap().0.equal(&fp32));
    }

    /// Largest |a - b| over the largest |b|.
    fn relative(a: &Tensor, b: &Tensor) -> f64 {
        let scale = b.abs().max().double_value(&[]);
        assert!(scale > 0.0, "degenerate reference");
        (a - b).abs().max().double_value(&[]) / scale
    }

    /// With every conv trainable, the network (channels-last, im2col on block4's 4x4 maps, matrix
    /// products on block5's 2x2 maps at 32x32 input; plain convs on 8x8 and 4x4 maps at 64x64) gives
    /// the logits of a plain NCHW chain on the same weights to float32 rounding (1e-4 of the largest
    /// logit), and the same gradients for every conv weight (1e-3 of the largest). In bf16 the logits
    /// stay within 5% of the largest float32 logit (bf16 keeps 8 bits of mantissa; measured: 1-2%
    /// with these random weights).
    #[test]
    fn forward_and_gradients_match_a_plain_chain_and_bf16_stays_close() {
        let _rng = crate::train::global_rng_lock();
        for size in [32usize, 64] {
            let arch = Arch::vgg16_transfer(size, 10);
            let weights = super::super::model::tests::random_base(&arch, 5);
            let vs = nn::VarStore::new(Device::Cpu);
            let cpu = (Device::Cpu, Kind::BFloat16);
            let net = FineTuneNet::new(&vs.root(), &arch, &weights, VGG16_CONVS, cpu).unwrap();
            let x =
                Tensor::randn([3, 3, size as i64, size as i64], (Kind::Float, Device::Cpu)) * 60.0;
            let y = Tensor::from_slice(&[1i64, 2, 3]);
            let logits = net.forward(&x, false, Kind::Float).unwrap();
            cross_entropy(&logits, &y).unwrap().backward();
            let plain: Vec<Tensor> = weights
                .iter()
                .map(|t| to_tch(t, Device::Cpu).unwrap().set_requires_grad(true))
                .collect();
            let features = super::super::model::tests::plain_chain(&arch, &plain, &x);
            let want = net.head.forward(&features, false).unwrap();
            cross_entropy(&want, &y).unwrap().backward();
            let diff = relative(&logits, &want);
            assert!(diff < 1e-4, "size {size}: logits differ by {diff}");
            let params = net.parameters();
            for ((name, p), q) in params.iter().zip(&plain).filter(|(_, q)| q.dim() == 4) {
                let diff = relative(&p.grad(), &q.grad());
                assert!(
                    diff < 1e-3,
                    "size {size}: gradient of {name} differs by {diff}"
                );
            }
            let bf16 = net.forward(&x, false, Kind::BFloat16).unwrap();
            assert_eq!(bf16.kind(), Kind::Float, "the head computes in float32");
            let diff = relative(&bf16, &logits);
            eprintln!("size {size}: bf16 logits within {diff:.4} of the largest float32 logit");
            assert!(diff < 0.05, "size {size}: bf16 logits differ by {diff}");
        }
    }
}
