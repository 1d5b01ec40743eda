//! tch modules built from [`Arch`]: the frozen VGG16 base and the dense head.

use crate::arch::{Arch, BaseLayer, HeadLayer, Pooling};
use crate::error::{Error, Result};
use crate::weights::NamedTensor;
use tch::{nn, Device, Tensor};

/// The frozen convolutional base: conv weights as constant tensors (no gradient) on a device.
pub struct Base {
    /// Input height and width, pixels.
    pub input_size: usize,
    layers: Vec<BaseOp>,
    /// Layers `..micro_until` run on chunks of at most `micro_batch` images (CPU only), see
    /// [`Base::features`].
    micro_until: usize,
    micro_batch: usize,
    /// How the last map becomes features.
    pooling: Pooling,
}

/// Norms below this are taken as this in [`pool`]'s L2 normalisation (an all-zero row stays zero
/// instead of becoming NaN, as ONNX's `LpNormalization` leaves it).
const NORM_FLOOR: f64 = 1e-12;

/// The head's input from the base output `x` (float32 `[n, C, H, W]`, any memory layout), as
/// `pooling` says: [`Pooling::Flatten`] gives `[n, C·H·W]` in NCHW order; [`Pooling::Max`] the
/// maximum over `H, W` of each channel, `[n, C]`, scaled to L2 norm `√C` per image.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub(crate) fn pool(x: &Tensor, pooling: Pooling) -> Result<Tensor> {
    match pooling {
        Pooling::Flatten => Ok(x.f_flatten(1, -1)?),
        Pooling::Max => {
            let channels = x.size().get(1).copied().unwrap_or(1) as usize;
            let m = x.f_amax([2, 3], false)?;
            let norm = m
                .f_norm_scalaropt_dim(2.0, [1], true)?
                .f_clamp_min(NORM_FLOOR)?;
            Ok(m.f_div(&norm)?
                .f_mul_scalar(Pooling::max_feature_norm(channels))?)
        }
    }
}

enum BaseOp {
    /// A conv and its ReLU: the operands of `form` (for a 2x2 map the [`dense_2x2`] matrix and the
    /// bias repeated for the 4 output positions).
    Conv {
        weight: Tensor,
        bias: Tensor,
        form: ConvForm,
    },
    MaxPool,
}

/// Activation elements (floats) per chunk in the micro-batched early layers: 32 images of 64 channels
/// at 32x32, 8 MiB, which stays in this machine's L3 cache (32 MiB) where a batch of 128 (33.5 MiB) of
/// block1's output does not.
const MICRO_BATCH_ELEMENTS: usize = 32 * 64 * 32 * 32;

/// A 3x3 conv (stride 1, padding 1) on a 2x2 map written as one matrix: `weight` OIHW `[co, ci, 3, 3]`
/// → `[4*ci, 4*co]` with entry ((p, q, c), (i, j, o)) = `weight[o, c, 1+p-i, 1+q-j]`. On a 2x2 map
/// every output position sees exactly the 4 input positions through 4 of the 9 taps (the other 5 fall
/// on the zero padding), so `x_nhwc.view([n, 4*ci]) @ matrix` is the conv with no wasted products,
/// and one large GEMM instead of a conv over a tiny map (VGG16's block5 at 32x32 input): twice as fast
/// on the CPU (45 → 23 ms for block5 at batch 128 here).
///
/// The matrix is gathered from the weight with one `index_select`, so it is differentiable: a
/// fine-tuned block5 conv builds it from its trainable weight in every step, and the gradient flows
/// back to the weight.
pub(crate) fn dense_2x2(weight: &Tensor) -> Result<Tensor> {
    let size = weight.size();
    let (co, ci) = (size[0], size[1]);
    // Tap (kh, kw) = (1+p-i, 1+q-j) for the (p, q, i, j) blocks in row-major order.
    let mut taps = Vec::with_capacity(16);
    for p in 0..2i64 {
        for q in 0..2i64 {
            for i in 0..2i64 {
                for j in 0..2i64 {
                    taps.push((1 + p - i) * 3 + (1 + q - j));
                }
            }
        }
    }
    let taps = Tensor::f_from_slice(&taps)?.f_to_device(weight.device())?;
    Ok(weight
        .f_permute([2, 3, 1, 0])?
        .f_reshape([9, ci, co])?
        .f_index_select(0, &taps)?
        .f_view([2, 2, 2, 2, ci, co])?
        .f_permute([0, 1, 4, 2, 3, 5])?
        .f_reshape([4 * ci, 4 * co])?)
}

/// How a 3x3 conv (stride 1, padding 1) runs, chosen by the side of its map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvForm {
    /// libtorch's `conv2d` (oneDNN) with the OIHW weight (channels-last strides).
    Direct,
    /// One matrix product of the 9 shifted copies of the zero-padded input ("im2col", `[n*h*w,
    /// 9*ci]`) with the weight as a `[9*ci, co]` matrix. Used by fine-tuning on 4x4 maps (block4 at
    /// 32x32 input), where oneDNN's bf16 weight-gradient kernel is slow (about 3x its forward here)
    /// and the copies are small: a fine-tuning step about 20% faster in bf16.
    Im2col,
    /// One matrix product on a 2x2 map with the [`dense_2x2`] matrix.
    Dense2x2,
}

impl ConvForm {
    /// The form for a conv on a `map`x`map` input: matrix products on 2x2 maps, and with `im2col` on
    /// 4x4 maps; oneDNN's conv elsewhere.
    pub(crate) fn for_map(map: usize, im2col: bool) -> Self {
        match map {
            2 => ConvForm::Dense2x2,
            4 if im2col => ConvForm::Im2col,
            _ => ConvForm::Direct,
        }
    }

    /// The operands [`conv_relu`] takes in this form, from an OIHW `weight` and its `bias`
    /// (differentiable: a trainable conv builds them in every step).
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    pub(crate) fn operands(self, weight: &Tensor, bias: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            ConvForm::Direct => (weight.shallow_clone(), bias.shallow_clone()),
            ConvForm::Im2col => {
                let size = weight.size();
                let matrix = weight
                    .f_permute([2, 3, 1, 0])?
                    .f_reshape([9 * size[1], size[0]])?;
                (matrix, bias.shallow_clone())
            }
            ConvForm::Dense2x2 => (dense_2x2(weight)?, bias.f_repeat([4])?),
        })
    }
}

/// A conv (3x3, stride 1, padding 1) and its ReLU on `x` (logical NCHW with channels-last strides),
/// in `form`, with the operands of [`ConvForm::operands`]; the result is laid out as a conv returns
/// it (channels-last).
///
/// `tf32`: on a CUDA device, whether cuDNN may run float32 convs in TF32 (10-bit mantissa
/// products, libtorch's default for convs on Ampere and later GPUs). The frozen base passes
/// `false`: its features become the run's test predictions, which export verification compares
/// with the float32 ONNX model at 1e-4, and TF32 features moved them by 2.9e-3 on an H200.
/// Fine-tuning passes `true` (its final test predictions are computed on the CPU). Ignored on
/// the CPU. Matrix products (the other forms) follow libtorch's default, float32 without TF32.
pub(crate) fn conv_relu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    form: ConvForm,
    tf32: bool,
) -> Result<Tensor> {
    let size = x.size();
    let (n, h, w) = (size[0], size[2], size[3]);
    let rows = match form {
        ConvForm::Direct if x.device().is_cuda() && !tf32 => {
            // `_convolution` with allow_tf32 = false: what conv2d runs, in exact float32.
            return Ok(x
                .f_internal_convolution(
                    weight,
                    Some(bias),
                    [1, 1],
                    [1, 1],
                    [1, 1],
                    false,
                    [0, 0],
                    1,
                    false,
                    false,
                    true,
                    false,
                )?
                .f_relu_()?);
        }
        ConvForm::Direct => {
            return Ok(x
                .f_conv2d(weight, Some(bias), [1, 1], [1, 1], [1, 1], 1)?
                .f_relu_()?);
        }
        // Logical NCHW [n, c, 2, 2] → NHWC rows [n, 4c] (no copy for channels-last input).
        ConvForm::Dense2x2 => x.f_permute([0, 2, 3, 1])?.f_reshape([n, -1])?,
        ConvForm::Im2col => {
            let padded = x
                .f_permute([0, 2, 3, 1])?
                .f_constant_pad_nd([0, 0, 1, 1, 1, 1])?;
            let shifted = (0..3)
                .flat_map(|i| (0..3).map(move |j| (i, j)))
                .map(|(i, j)| padded.f_narrow(1, i, h)?.f_narrow(2, j, w))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Tensor::f_stack(&shifted, 3)?.f_reshape([n * h * w, -1])?
        }
    };
    let out = bias.f_addmm(&rows, weight)?.f_relu_()?;
    let channels = out.size()[1] / if form == ConvForm::Dense2x2 { 4 } else { 1 };
    Ok(out.f_view([n, h, w, channels])?.f_permute([0, 3, 1, 2])?)
}

/// A tch tensor from a [`NamedTensor`], on `device`.
///
/// # Errors
/// [`Error::Torch`] when libtorch fails.
pub fn to_tch(t: &NamedTensor, device: Device) -> Result<Tensor> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_slice(&t.data)?
        .f_view(shape.as_slice())?
        .f_to_device(device)?)
}

/// The values of a tch tensor as a [`NamedTensor`] (copied to the CPU, float32).
///
/// # Errors
/// [`Error::Torch`] when libtorch fails.
pub fn from_tch(name: &str, t: &Tensor) -> Result<NamedTensor> {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let flat = t
        .f_detach()?
        .f_to_kind(tch::Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_view([-1])?;
    Ok(NamedTensor {
        name: name.to_string(),
        shape,
        data: Vec::<f32>::try_from(&flat)?,
    })
}

/// Sets libtorch's intra-op thread count (`tch::set_num_threads`) until dropped, then restores the
/// previous count.
pub struct IntraOpThreads(i32);

impl IntraOpThreads {
    /// Switches to `n` threads.
    pub fn set(n: i32) -> Self {
        let previous = tch::get_num_threads();
        tch::set_num_threads(n);
        IntraOpThreads(previous)
    }
}

impl Drop for IntraOpThreads {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

/// `t` (4-D, logical NCHW / OIHW) copied to the channels-last memory layout (strides of NHWC),
/// keeping its logical shape: libtorch's `contiguous(memory_format=channels_last)`, which tch does
/// not expose, written as permute → contiguous → permute back.
pub(crate) fn channels_last(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])?)
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
            to_tch(t, device)
        };
        let mut layers = Vec::new();
        let mut map = arch.input_size;
        let (mut pools, mut micro_until) = (0, 0);
        for l in &arch.base {
            match l {
                BaseLayer::Conv { name, .. } => {
                    let weight = next(name)?;
                    let bias = next(name)?;
                    let form = ConvForm::for_map(map, false);
                    let (weight, bias) = form.operands(&channels_last(&weight)?, &bias)?;
                    layers.push(BaseOp::Conv { weight, bias, form });
                }
                BaseLayer::MaxPool { .. } => {
                    layers.push(BaseOp::MaxPool);
                    map /= 2;
                    pools += 1;
                    // Blocks 1-3 (large maps, few channels) gain from cache-sized chunks; blocks 4-5
                    // (many weights, small maps) from the whole batch (measured per layer).
                    if pools == 3 {
                        micro_until = layers.len();
                    }
                }
            }
        }
        let micro_batch = if device == Device::Cpu {
            (MICRO_BATCH_ELEMENTS / (64 * arch.input_size * arch.input_size)).max(1)
        } else {
            usize::MAX
        };
        Ok(Base {
            input_size: arch.input_size,
            layers,
            micro_until,
            micro_batch,
            pooling: arch.pooling,
        })
    }

    /// The same base with the early layers run on chunks of at most `images` images (for tests).
    pub fn with_micro_batch(mut self, images: usize) -> Self {
        self.micro_batch = images.max(1);
        self
    }

    fn run(&self, mut x: Tensor, layers: &[BaseOp]) -> Result<Tensor> {
        for l in layers {
            x = match l {
                BaseOp::Conv { weight, bias, form } => conv_relu(&x, weight, bias, *form, false)?,
                BaseOp::MaxPool => x.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?,
            };
        }
        Ok(x)
    }

    /// Features of a preprocessed batch: `x` float32 NCHW BGR `[n, 3, S, S]` (any device) →
    /// base output pooled as the architecture says ([`pool`]), `[n, feature_dim]` on the base's
    /// device. Call under `no_grad`.
    ///
    /// Speed (all exact up to float summation order; measured on this project's 2-core CPU):
    /// - the batch and the conv weights are laid out channels-last in memory (the logical NCHW shape
    ///   is unchanged), which lets oneDNN run its NHWC convolution kernels without reordering every
    ///   layer's input and output: about 1.5x faster than NCHW;
    /// - on the CPU, blocks 1-3 run on chunks of 32 images (at 32x32; fewer at larger inputs) whose
    ///   activations fit the L3 cache, then blocks 4-5 on the whole batch;
    /// - convs on a 2x2 map (block5 at 32x32 input) run as one matrix product (`dense_2x2`).
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure (e.g. out of memory).
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let dev = match self.layers.first() {
            Some(BaseOp::Conv { weight, .. }) => weight.device(),
            _ => Device::Cpu,
        };
        let x = channels_last(&x.f_to_device(dev)?)?;
        let (early, late) = self.layers.split_at(self.micro_until);
        let n = x.size()[0];
        let x = if n as usize > self.micro_batch {
            let chunks = x
                .f_split(self.micro_batch as i64, 0)?
                .into_iter()
                .map(|c| self.run(c, early))
                .collect::<Result<Vec<_>>>()?;
            // cat keeps the chunks' channels-last layout.
            Tensor::f_cat(&chunks, 0)?
        } else {
            self.run(x, early)?
        };
        let x = self.run(x, late)?;
        Ok(pool(&x, self.pooling)?.f_contiguous()?)
    }
}

impl Base {
    /// The last conv block's output and the features made from it, for class-activation maps: `x`
    /// float32 NCHW BGR `[n, 3, S, S]` → (`A`, features), `A` float32 `[n, 512, S/16, S/16]` (the last
    /// conv's ReLU output, before the last max pooling) as a leaf that requires gradients, the
    /// features `[n, feature_dim]` computed from it as [`Base::features`] does, so that gradients of
    /// anything computed from the features reach `A`.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure; [`Error::Usage`] when the base does not end with a
    /// max pooling.
    pub fn last_block(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let dev = match self.layers.first() {
            Some(BaseOp::Conv { weight, .. }) => weight.device(),
            _ => Device::Cpu,
        };
        let Some((BaseOp::MaxPool, convs)) = self.layers.split_last() else {
            return Err(Error::Usage(
                "the base does not end with a max pooling".into(),
            ));
        };
        let a = {
            let _guard = tch::no_grad_guard();
            self.run(channels_last(&x.f_to_device(dev)?)?, convs)?
        };
        let a = a.f_contiguous()?.f_detach()?.set_requires_grad(true);
        let pooled = a.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?;
        let features = pool(&pooled, self.pooling)?;
        Ok((a, features))
    }
}

/// The trainable dense head; variables live in a VarStore under `<linear name>.weight` / `.bias`.
pub struct Head {
    layers: Vec<HeadOp>,
    names: Vec<String>,
    /// Width of the tensor each Dropout layer sees, in layer order.
    dropout_widths: Vec<i64>,
}

enum HeadOp {
    Linear(nn::Linear),
    Relu,
    Dropout(f64),
}

impl Head {
    /// Creates the head of `arch` under `root`, initialised like PyTorch's `nn.Linear`: weights and
    /// biases uniform in ±1/√fan_in (`kaiming_uniform_(a=√5)` gives that bound for the weights), drawing
    /// from libtorch's global RNG (`tch::manual_seed`). tch's own default for `nn::linear` is 2.45x wider
    /// (Kaiming with the ReLU gain, ±√(6/fan_in)); on VGG16's large unnormalised features that start
    /// cost about 4 points of CIFAR-10 test accuracy against a PyTorch reference.
    pub fn new(root: &nn::Path, arch: &Arch) -> Self {
        let layers = arch
            .head
            .iter()
            .map(|l| match l {
                HeadLayer::Linear {
                    name,
                    in_features,
                    out_features,
                } => {
                    let bound = 1.0 / (*in_features as f64).sqrt();
                    HeadOp::Linear(nn::linear(
                        root / name.as_str(),
                        *in_features as i64,
                        *out_features as i64,
                        nn::LinearConfig {
                            ws_init: nn::Init::Uniform {
                                lo: -bound,
                                up: bound,
                            },
                            bs_init: Some(nn::Init::Uniform {
                                lo: -bound,
                                up: bound,
                            }),
                            bias: true,
                        },
                    ))
                }
                HeadLayer::Relu => HeadOp::Relu,
                HeadLayer::Dropout { p } => HeadOp::Dropout(*p),
            })
            .collect();
        let mut width = arch.feature_dim() as i64;
        let mut dropout_widths = Vec::new();
        for l in &arch.head {
            match l {
                HeadLayer::Linear { out_features, .. } => width = *out_features as i64,
                HeadLayer::Dropout { .. } => dropout_widths.push(width),
                HeadLayer::Relu => {}
            }
        }
        Head {
            layers,
            names: arch.head_params().into_iter().map(|(n, _)| n).collect(),
            dropout_widths,
        }
    }

    /// The trainable parameters in [`Arch::head_params`] order, with those names
    /// (`head.dense1.weight`, ...). The tensors share storage with the model.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut ts = Vec::new();
        for l in &self.layers {
            if let HeadOp::Linear(lin) = l {
                ts.push(lin.ws.shallow_clone());
                if let Some(b) = &lin.bs {
                    ts.push(b.shallow_clone());
                }
            }
        }
        self.names.iter().cloned().zip(ts).collect()
    }

    /// Overwrites the parameters with `values` (in [`Head::parameters`] order).
    ///
    /// # Errors
    /// [`Error::Torch`] when a shape differs or libtorch fails.
    pub fn load(&self, values: &[NamedTensor]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for ((name, mut p), v) in self.parameters().into_iter().zip(values) {
            if name != v.name {
                return Err(Error::Torch(format!(
                    "head parameter {name} given {}",
                    v.name
                )));
            }
            p.f_copy_(&to_tch(v, p.device())?)?;
        }
        Ok(())
    }

    /// Draws from libtorch's generator exactly what one training step on a batch of `batch` images
    /// draws (one dropout mask per Dropout layer), without computing anything else. Used to replay the
    /// completed epochs when resuming.
    ///
    /// # Errors
    /// [`Error::Torch`] on a libtorch failure.
    pub fn replay_dropout(&self, batch: usize) -> Result<()> {
        let _guard = tch::no_grad_guard();
        // Masks are drawn from the generator of the device the head lives on (CPU or CUDA).
        let device = self
            .parameters()
            .first()
            .map(|(_, t)| t.device())
            .unwrap_or(Device::Cpu);
        let p = self.layers.iter().filter_map(|l| {
            if let HeadOp::Dropout(p) = l {
                Some(*p)
            } else {
                None
            }
        });
        for (p, w) in p.zip(&self.dropout_widths) {
            let _ = Tensor::f_ones([batch as i64, *w], (tch::Kind::Float, device))?
                .f_dropout(p, true)?;
        }
        Ok(())
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Random base weights for `arch` (He-scaled normal, from libtorch's generator seeded with
    /// `seed`), as the weights file holds them.
    pub(crate) fn random_base(arch: &Arch, seed: i64) -> Vec<NamedTensor> {
        tch::manual_seed(seed);
        arch.base_params()
            .into_iter()
            .map(|(name, shape)| {
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                let fan_in: usize = shape.iter().skip(1).product();
                let t = Tensor::randn(dims.as_slice(), (tch::Kind::Float, Device::Cpu))
                    * (2.0 / fan_in.max(1) as f64).sqrt();
                from_tch(&name, &t).unwrap()
            })
            .collect()
    }

    /// The base of `arch` as a plain NCHW conv/relu/pool chain on `weights` (the reference the fast
    /// forms are checked against), flattened to `[n, C·H·W]`; differentiable in `weights`.
    pub(crate) fn plain_chain(arch: &Arch, weights: &[Tensor], x: &Tensor) -> Tensor {
        let mut w = weights.iter();
        let mut r = x.shallow_clone();
        for l in &arch.base {
            r = match l {
                BaseLayer::Conv { .. } => {
                    let (wt, b) = (w.next().unwrap(), w.next().unwrap());
                    r.conv2d(wt, Some(b), [1, 1], [1, 1], [1, 1], 1).relu()
                }
                BaseLayer::MaxPool { .. } => r.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
            };
        }
        r.flatten(1, -1)
    }

    /// Global max pooling with L2 normalisation, against values worked by hand: a 2-channel 2x2 map
    /// whose channel maxima are 3 and 4 (norm 5) gives (3, 4) / 5 · √2; an all-zero map stays zero.
    #[test]
    fn max_pooling_normalises_channel_maxima_to_norm_sqrt_c() {
        let x = Tensor::from_slice(&[
            1.0f32, 3.0, 0.0, 2.0, /* channel 0 */ -1.0, 0.5, 4.0, 4.0, /* channel 1 */
            0.0, 0.0, 0.0, 0.0, /* image 2 */ 0.0, 0.0, 0.0, 0.0,
        ])
        .view([2, 2, 2, 2]);
        let got = Vec::<f32>::try_from(pool(&x, Pooling::Max).unwrap().flatten(0, -1)).unwrap();
        let r2 = 2f32.sqrt();
        let want = [0.6 * r2, 0.8 * r2, 0.0, 0.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        let flat = pool(&x, Pooling::Flatten).unwrap();
        assert_eq!(flat.size(), vec![2, 8]);
    }

    /// The channels-last base, micro-batched in blocks 1-3 and with block5 as matrix products at 32x32
    /// input, gives the features of a plain NCHW conv/relu/pool chain on the same weights, to float
    /// rounding, at input sizes 32 and 64 (where the last map is 2x2, so the flatten order matters).
    #[test]
    fn channels_last_features_match_plain_nchw() {
        let _rng = crate::train::global_rng_lock();
        for size in [32usize, 64] {
            let arch = Arch::vgg16_transfer(size, 10);
            let weights = random_base(&arch, 3);
            // Chunks of 2 images in blocks 1-3, the last one short.
            let base = Base::new(&arch, &weights, Device::Cpu)
                .unwrap()
                .with_micro_batch(2);
            let x = Tensor::randn(
                [5, 3, size as i64, size as i64],
                (tch::Kind::Float, Device::Cpu),
            ) * 60.0;
            let _guard = tch::no_grad_guard();
            let got = base.features(&x).unwrap();
            let w: Vec<Tensor> = weights
                .iter()
                .map(|t| to_tch(t, Device::Cpu).unwrap())
                .collect();
            let want = plain_chain(&arch, &w, &x);
            assert_eq!(got.size(), vec![5, arch.feature_dim() as i64]);
            let scale = want.abs().max().double_value(&[]);
            let diff = (&got - &want).abs().max().double_value(&[]);
            assert!(scale > 1.0, "degenerate features (max {scale})");
            assert!(
                diff <= 1e-5 * scale,
                "size {size}: max |diff| {diff} vs max {scale}"
            );
        }
    }
}
