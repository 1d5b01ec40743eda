//! tch modules built from [`Arch`]: the frozen VGG16 base and the dense head.

use crate::arch::{Arch, BaseLayer, HeadLayer};
use crate::error::{Error, Result};
use crate::weights::NamedTensor;
use tch::{nn, Device, Tensor};

/// The frozen convolutional base: conv weights as constant tensors (no gradient) on a device.
pub struct Base {
    /// Input height and width, pixels.
    pub input_size: usize,
    layers: Vec<BaseOp>,
}

enum BaseOp {
    Conv { weight: Tensor, bias: Tensor },
    MaxPool,
}

impl Base {
    /// Builds the base of `arch` from `weights` (in [`Arch::base_params`] order) on `device`.
    ///
    /// # Errors
    /// [`Error::Torch`] when a tensor is missing or cannot be moved to the device.
    pub fn new(arch: &Arch, weights: &[NamedTensor], device: Device) -> Result<Self> {
        let mut it = weights.iter();
        let mut next = |what: &str| -> Result<Tensor> {
            let t = it
                .next()
                .ok_or_else(|| Error::Torch(format!("base weight {what} missing")))?;
            let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            Ok(Tensor::f_from_slice(&t.data)?
                .f_view(shape.as_slice())?
                .f_to_device(device)?)
        };
        let mut layers = Vec::new();
        for l in &arch.base {
            match l {
                BaseLayer::Conv { name, .. } => {
                    let weight = next(name)?;
                    let bias = next(name)?;
                    layers.push(BaseOp::Conv { weight, bias });
                }
                BaseLayer::MaxPool { .. } => layers.push(BaseOp::MaxPool),
            }
        }
        Ok(Base {
            input_size: arch.input_size,
            layers,
        })
    }

    /// Features of a preprocessed batch: `x` float32 NCHW BGR `[n, 3, S, S]` (any device) →
    /// flattened base output `[n, feature_dim]` on the base's device. Call under `no_grad`.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure (e.g. out of memory).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let dev = match self.layers.first() {
            Some(BaseOp::Conv { weight, .. }) => weight.device(),
            _ => Device::Cpu,
        };
        let mut x = x.f_to_device(dev)?;
        for l in &self.layers {
            x = match l {
                BaseOp::Conv { weight, bias } => x
                    .f_conv2d(weight, Some(bias), [1, 1], [1, 1], [1, 1], 1)?
                    .f_relu()?,
                BaseOp::MaxPool => x.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?,
            };
        }
        Ok(x.f_flatten(1, -1)?)
    }
}

/// The trainable dense head; variables live in a VarStore under `<linear name>.weight` / `.bias`.
pub struct Head {
    layers: Vec<HeadOp>,
}

enum HeadOp {
    Linear(nn::Linear),
    Relu,
    Dropout(f64),
}

impl Head {
    /// Creates the head of `arch` under `root`, initialised like PyTorch's `nn.Linear` (Kaiming-uniform
    /// weights, uniform ±1/√fan_in biases), drawing from libtorch's global RNG (`tch::manual_seed`).
    pub fn new(root: &nn::Path, arch: &Arch) -> Self {
        let layers = arch
            .head
            .iter()
            .map(|l| match l {
                HeadLayer::Linear {
                    name,
                    in_features,
                    out_features,
                } => HeadOp::Linear(nn::linear(
                    root / name.as_str(),
                    *in_features as i64,
                    *out_features as i64,
                    Default::default(),
                )),
                HeadLayer::Relu => HeadOp::Relu,
                HeadLayer::Dropout { p } => HeadOp::Dropout(*p),
            })
            .collect();
        Head { layers }
    }

    /// Logits `[n, classes]` for features `[n, feature_dim]`; dropout is active only when `train`.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for l in &self.layers {
            x = match l {
                HeadOp::Linear(lin) => x.f_linear(&lin.ws, lin.bs.as_ref())?,
                HeadOp::Relu => x.f_relu()?,
                HeadOp::Dropout(p) => x.f_dropout(*p, train)?,
            };
        }
        Ok(x)
    }
}
