//! Fine-tuning beyond the frozen head (`--unfreeze N`): the last N conv layers of the VGG16 base train
//! together with the dense head, on decoded images (no feature cache, since the trainable layers change
//! the features), optionally with data augmentation (`--augment`, see `augment.rs`).
//!
//! Randomness is seeded per epoch (shuffle and augmentation from a ChaCha8 stream numbered by the
//! epoch, dropout from libtorch's generator re-seeded at each epoch), so that a run resumed from an
//! epoch checkpoint ends exactly like an uninterrupted one without replaying earlier epochs.

use super::augment::{Augmenter, PhotoSet};
use super::learner::{label_tensor, EvalSplit, Model, Scores};
use super::model::{from_tch, to_tch, Head};
use crate::arch::{Arch, BaseLayer};
use crate::config::TrainConfig;
pub use crate::config::VGG16_CONVS;
use crate::data::{caffe_preprocess, LoadedSplit};
use crate::error::{Error, Result};
use crate::weights::NamedTensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{nn, Device, Tensor};

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

/// Scores of `net` in evaluation mode on `split`, in batches of 256; logits `[n, classes]` on the CPU.
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
        parts.push(net.forward(&x, false)?.f_to_device(Device::Cpu)?);
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
    /// The current epoch's stream of shuffle and augmentation draws.
    rng: rand_chacha::ChaCha8Rng,
}

impl<'a> FineTuneModel<'a> {
    /// Builds the network from the ImageNet base `weights` with the last `config.unfreeze` convs
    /// trainable, its head initialised from libtorch's generator seeded with `config.seed`, or taken
    /// from `init_head` (head parameters from a warm-up) when given.
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
        tch::manual_seed(config.seed as i64);
        let vs = nn::VarStore::new(device);
        let net = FineTuneNet::new(&vs.root(), arch, weights, config.unfreeze, device)?;
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
            self.net.forward(&x, true)?,
            label_tensor(&labels, self.device)?,
        ))
    }

    fn evaluate(&self, split: EvalSplit) -> Result<Scores> {
        let images = match split {
            EvalSplit::Validation => &self.splits.val,
            EvalSplit::Test => &self.splits.test,
        };
        evaluate_pixels(&self.net, images, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::super::optim::cross_entropy;
    use super::*;
    use tch::Kind;

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
