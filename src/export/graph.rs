//! The inference graph of an [`Arch`] as an ONNX `ModelProto`: one small function per layer kind
//! (preprocessing, conv + ReLU, max pooling, flatten, dense, ReLU, softmax, float16 weight), chained
//! by [`layers`] in the order of the architecture.
//!
//! Graph (opset 17 by default):
//! ```text
//! images f32 [N,S,S,3] RGB 0..255
//!   → Transpose(0,3,1,2)          NHWC → NCHW
//!   → Gather(axis 1, [2,1,0])     RGB → BGR
//!   → Sub(ImageNet BGR means)     caffe preprocessing, no scaling
//!   → 13 × (Conv 3x3 pad 1 → Relu), 5 × MaxPool 2x2/2     VGG16 base
//!   → Flatten(axis 1)             [N, 512·(S/32)²]                  (pooling flatten)
//!     or GlobalMaxPool → Flatten → LpNormalization(p 2) → Mul(√512)  [N, 512]   (pooling max)
//!   → Gemm(transB) → Relu → Gemm  dense head (Dropout is absent: inference graph)
//!   → Softmax(axis 1)             probabilities f32 [N, classes]   (or logits with `Output::Logits`)
//! ```
//! Node and value names (`base/block1_conv1`, `head/dense1`, ...) follow the layer names of [`Arch`];
//! parameters are initializers named as in [`Arch::base_params`] and [`Arch::head_params`].
//!
//! An int8 export ([`ExportOptions::quantization`], see [`super::quantize`]) is the same graph in QDQ
//! form: each weight and bias an int8 / int32 initializer behind a `DequantizeLinear` that outputs
//! the parameter's name; a `QuantizeLinear` + `DequantizeLinear` pair on the preprocessed input, on
//! each Conv's output (instead of its ReLU), after each max pooling and flatten, on the pooled
//! features and on the hidden dense layer's output (instead of its ReLU). A point's pair is named
//! after the point (`base/block1_conv1/relu/q`, `.../dq`, constants `.../scale`, `.../zero_point`).

use super::quantize::{quantize_bias, quantize_weight, ActivationQuant, QuantPlan};
use crate::arch::{Arch, BaseLayer, HeadLayer, Pooling, IMAGENET_BGR_MEANS};
use crate::contract::{self, Output, INPUT_NAME, LOGITS};
use crate::error::{Error, Result};
use crate::onnx::build::{
    attr_int, attr_ints, f16_tensor, f32_tensor, i32_tensor, i64_tensor, i8_tensor, metadata_props,
    model, node, u8_tensor, value_info,
};
use crate::weights::NamedTensor;
use std::collections::HashMap;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

/// Default ONNX opset.
pub const DEFAULT_OPSET: i64 = 17;
/// Opsets the graph's operators are valid in.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// Options of [`build_model`].
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// ONNX opset of the default domain (13..=21 supported by the ops used).
    pub opset: i64,
    /// Output kind.
    pub output: Output,
    /// Extra `metadata_props` (class names, fingerprint, run id, ...), written in this order.
    pub metadata: Vec<(String, String)>,
    /// Store the conv and dense weights as float16 (half the file size); a `Cast` node turns each back
    /// into float32, so the computation stays float32.
    pub fp16_weights: bool,
    /// Quantize to int8 with this plan (QDQ form, see [`super::quantize`]); `None`: float32.
    pub quantization: Option<QuantPlan>,
    /// Test-time augmentation by horizontal flip ([`tta_flip`]): the graph runs the network on each
    /// image and on its mirror and outputs the mean of the two outputs.
    pub tta_flip: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            opset: DEFAULT_OPSET,
            output: Output::Probabilities,
            metadata: Vec::new(),
            fp16_weights: false,
            quantization: None,
            tta_flip: false,
        }
    }
}

/// Builds the inference graph of `arch` with the given base (in [`Arch::base_params`] order) and head
/// (in [`Arch::head_params`] order) weights, float32 or (with a quantization plan) int8 in QDQ form.
///
/// # Errors
/// [`Error::Usage`] when a tensor is missing or has the wrong shape, the opset is outside 13..=21,
/// float16 weights are asked for an int8 export, or the plan lacks a calibration point.
pub fn build_model(
    arch: &Arch,
    base: &[NamedTensor],
    head: &[NamedTensor],
    opts: &ExportOptions,
) -> Result<pb::ModelProto> {
    if !OPSETS.contains(&opts.opset) {
        return Err(Error::Usage(format!(
            "opset {} is not supported (13..=21)",
            opts.opset
        )));
    }
    let (mut initializer, mut nodes) = match &opts.quantization {
        Some(_) if opts.fp16_weights => {
            return Err(Error::Usage(
                "an int8 export stores int8 weights: float16 weights do not apply".into(),
            ))
        }
        Some(plan) => quantized_parameters(arch, base, head, plan)?,
        None => parameters(arch, base, head, opts.fp16_weights)?,
    };
    initializer.extend(preprocess_constants());
    if arch.pooling == Pooling::Max {
        initializer.push(feature_scale(arch));
    }
    let (layer_nodes, constants) = layers(arch, opts.output, opts.quantization.as_ref())?;
    nodes.extend(layer_nodes);
    initializer.extend(constants);
    if opts.tta_flip {
        tta_flip(&mut nodes, &mut initializer, opts.output.name(), opts.opset);
    }
    let graph = graph(arch, opts.output, nodes, initializer);
    Ok(pb::ModelProto {
        producer_name: "pipe".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "Exported by pipe (Rust, native ONNX writer)".into(),
        metadata_props: metadata_props(&opts.metadata),
        ..model(opts.opset, graph)
    })
}

/// Test-time augmentation by horizontal flip, around the finished graph `nodes` whose output is
/// `output`: the input `[N, S, S, 3]` (NHWC) and its mirror (Slice with step -1 along W, axis 2) are
/// concatenated into a batch of `2N`, which the unchanged network runs; its `[2N, classes]` output is
/// split in two halves (the images, then the mirrors) whose mean is the graph's output. For
/// probabilities the mean of the two softmaxes (as fastai's `tta`), for logits the mean of the logits.
/// Standard operators only; `Split` takes `num_outputs` from opset 18 on (before it splits evenly
/// into as many outputs as named).
fn tta_flip(
    nodes: &mut Vec<pb::NodeProto>,
    initializer: &mut Vec<pb::TensorProto>,
    output: &str,
    opset: i64,
) {
    for n in nodes.iter_mut() {
        for i in n.input.iter_mut() {
            if i == INPUT_NAME {
                *i = "tta/batch".into();
            }
        }
        for o in n.output.iter_mut() {
            if o == output {
                *o = "tta/both".into();
            }
        }
    }
    initializer.extend([
        i64_tensor("tta.mirror_starts", &[-1]),
        i64_tensor("tta.mirror_ends", &[i64::MIN]),
        i64_tensor("tta.mirror_axes", &[2]),
        i64_tensor("tta.mirror_steps", &[-1]),
        f32_tensor("tta.half", &[], &[0.5]),
    ]);
    let mirror = node(
        "Slice",
        "tta/mirror",
        &[
            INPUT_NAME,
            "tta.mirror_starts",
            "tta.mirror_ends",
            "tta.mirror_axes",
            "tta.mirror_steps",
        ],
        "tta/mirror",
        vec![],
    );
    let batch = node(
        "Concat",
        "tta/batch",
        &[INPUT_NAME, "tta/mirror"],
        "tta/batch",
        vec![attr_int("axis", 0)],
    );
    nodes.splice(0..0, [mirror, batch]);
    let mut split_attrs = vec![attr_int("axis", 0)];
    if opset >= 18 {
        split_attrs.push(attr_int("num_outputs", 2));
    }
    let mut split = node(
        "Split",
        "tta/split",
        &["tta/both"],
        "tta/plain",
        split_attrs,
    );
    split.output.push("tta/mirrored".into());
    nodes.extend([
        split,
        node(
            "Add",
            "tta/sum",
            &["tta/plain", "tta/mirrored"],
            "tta/sum",
            vec![],
        ),
        node("Mul", "tta/mean", &["tta/sum", "tta.half"], output, vec![]),
    ]);
}

/// The graph around `nodes` and `initializer`: its name, doc string, input and output.
fn graph(
    arch: &Arch,
    output: Output,
    nodes: Vec<pb::NodeProto>,
    initializer: Vec<pb::TensorProto>,
) -> pb::GraphProto {
    let output_doc = match output {
        Output::Probabilities => "softmax probabilities per class",
        Output::Logits => "logits per class",
    };
    pb::GraphProto {
        name: "pipe_vgg16_transfer".into(),
        node: nodes,
        initializer,
        doc_string: "ImageNet VGG16 conv base (frozen) + dense head fine-tuned by pipe; caffe preprocessing inside".into(),
        input: vec![value_info(
            INPUT_NAME,
            &contract::input_dims(arch.input_size),
            "RGB pixels, NHWC, float32 in 0..255",
        )],
        output: vec![value_info(
            output.name(),
            &contract::output_dims(arch.num_classes),
            output_doc,
        )],
        ..Default::default()
    }
}

/// The parameters as initializers, in [`Arch::base_params`] then [`Arch::head_params`] order, and,
/// with `fp16`, the `Cast` node of each (see [`fp16_weight`]).
///
/// # Errors
/// [`Error::Usage`] naming a missing parameter or one of the wrong shape.
fn parameters(
    arch: &Arch,
    base: &[NamedTensor],
    head: &[NamedTensor],
    fp16: bool,
) -> Result<(Vec<pb::TensorProto>, Vec<pb::NodeProto>)> {
    let get = parameter_lookup(base, head);
    let mut initializer = Vec::new();
    let mut casts = Vec::new();
    for (name, shape) in arch.base_params().into_iter().chain(arch.head_params()) {
        let t = get(&name, &shape)?;
        if fp16 {
            let (tensor, cast) = fp16_weight(&name, &shape, &t.data);
            initializer.push(tensor);
            casts.push(cast);
        } else {
            initializer.push(f32_tensor(&name, &shape, &t.data));
        }
    }
    Ok((initializer, casts))
}

/// Finds a parameter of `base` or `head` by name, checking its shape: an [`Error::Usage`] names a
/// missing parameter or one of the wrong shape.
fn parameter_lookup<'a>(
    base: &'a [NamedTensor],
    head: &'a [NamedTensor],
) -> impl Fn(&str, &[usize]) -> Result<&'a NamedTensor> {
    let params: HashMap<&str, &NamedTensor> = base
        .iter()
        .chain(head)
        .map(|t| (t.name.as_str(), t))
        .collect();
    move |name, shape| {
        let t = params
            .get(name)
            .ok_or_else(|| Error::Usage(format!("export: weight {name} is missing")))?;
        if t.shape != shape {
            return Err(Error::Usage(format!(
                "export: weight {name} has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        Ok(t)
    }
}

/// A weight stored as float16: the initializer `<name>.float16` and the `Cast` node
/// `weights/<name>/to_float32` whose output, float32, carries the weight's own name.
fn fp16_weight(name: &str, shape: &[usize], data: &[f32]) -> (pb::TensorProto, pb::NodeProto) {
    let half = format!("{name}.float16");
    let cast = node(
        "Cast",
        &format!("weights/{name}/to_float32"),
        &[&half],
        name,
        vec![attr_int("to", DataType::Float as i64)],
    );
    (f16_tensor(&half, shape, data), cast)
}

/// The parameters of an int8 export (in [`Arch::base_params`] then [`Arch::head_params`] order), each
/// weight int8 per output channel and each bias int32 in steps of its layer's input scale times the
/// weight's ([`quantize_weight`], [`quantize_bias`]), and the `DequantizeLinear` node of each, whose
/// output carries the parameter's name. A layer's input scale is that of the calibration point that
/// feeds it: the preprocessed input, the previous conv's output (through max pooling and
/// flattening, which keep it), the pooled features, or the previous dense layer's output.
///
/// # Errors
/// [`Error::Usage`] naming a missing parameter, one of the wrong shape, or a point the plan lacks.
fn quantized_parameters(
    arch: &Arch,
    base: &[NamedTensor],
    head: &[NamedTensor],
    plan: &QuantPlan,
) -> Result<(Vec<pb::TensorProto>, Vec<pb::NodeProto>)> {
    let get = parameter_lookup(base, head);
    let mut layers: Vec<(String, String)> = Vec::new(); // (parameter prefix, input point)
    let mut input = "preprocess/out".to_string();
    for layer in &arch.base {
        if let BaseLayer::Conv { name, .. } = layer {
            layers.push((format!("base.{name}"), input));
            input = format!("base/{name}/relu");
        }
    }
    if arch.pooling == Pooling::Max {
        input = "head/pooled".into();
    }
    for layer in &arch.head {
        if let HeadLayer::Linear { name, .. } = layer {
            layers.push((format!("head.{name}"), input));
            input = format!("head/{name}_relu");
        }
    }
    let shapes: HashMap<String, Vec<usize>> = arch
        .base_params()
        .into_iter()
        .chain(arch.head_params())
        .collect();
    let (mut initializer, mut nodes) = (Vec::new(), Vec::new());
    for (prefix, point) in layers {
        let (w_name, b_name) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        let shape = |n: &str| shapes.get(n).cloned().unwrap_or_default();
        let (w_shape, b_shape) = (shape(&w_name), shape(&b_name));
        let w = get(&w_name, &w_shape)?;
        let b = get(&b_name, &b_shape)?;
        let q = quantize_weight(&w.data, w_shape[0], plan.reduce_range);
        let input_scale = plan.activation(&point)?.scale;
        let (bias, bias_scales) = quantize_bias(&b.data, input_scale, &q.scales);
        let channels = [q.scales.len()];
        initializer.extend([
            i8_tensor(&format!("{w_name}/int8"), &w_shape, &q.values),
            f32_tensor(&format!("{w_name}/scale"), &channels, &q.scales),
            i8_tensor(
                &format!("{w_name}/zero_point"),
                &channels,
                &vec![0; q.scales.len()],
            ),
            i32_tensor(&format!("{b_name}/int32"), &b_shape, &bias),
            f32_tensor(&format!("{b_name}/scale"), &channels, &bias_scales),
            i32_tensor(
                &format!("{b_name}/zero_point"),
                &channels,
                &vec![0; q.scales.len()],
            ),
        ]);
        for (name, stored) in [(&w_name, "int8"), (&b_name, "int32")] {
            nodes.push(node(
                "DequantizeLinear",
                &format!("weights/{name}/dequantize"),
                &[
                    &format!("{name}/{stored}"),
                    &format!("{name}/scale"),
                    &format!("{name}/zero_point"),
                ],
                name,
                vec![attr_int("axis", 0)],
            ));
        }
    }
    Ok((initializer, nodes))
}

/// The constants of the preprocessing nodes: the ImageNet BGR means `[1,3,1,1]` float32 and the
/// channel order `[2,1,0]` int64.
fn preprocess_constants() -> [pb::TensorProto; 2] {
    [
        f32_tensor(
            "preprocess.imagenet_bgr_mean",
            &[1, 3, 1, 1],
            &IMAGENET_BGR_MEANS,
        ),
        i64_tensor("preprocess.bgr_order", &[2, 1, 0]),
    ]
}

/// All nodes from the input to the output, in order: preprocessing, the base, the pooling, the head
/// and, for probabilities, softmax; with a quantization `plan`, the QDQ pairs of the int8 graph
/// (see the module's documentation) and their scale and zero-point constants.
///
/// # Errors
/// [`Error::Usage`] when the plan lacks a calibration point.
fn layers(
    arch: &Arch,
    output: Output,
    plan: Option<&QuantPlan>,
) -> Result<(Vec<pb::NodeProto>, Vec<pb::TensorProto>)> {
    let mut g = Qdq {
        nodes: preprocess(INPUT_NAME),
        constants: Vec::new(),
        plan,
        current: None,
    };
    g.quantize("preprocess/out", "preprocess/out")?;
    for layer in &arch.base {
        let x = last_output(&g.nodes);
        match (layer, plan) {
            (BaseLayer::Conv { name, .. }, None) => g.nodes.extend(conv_relu(name, &x)),
            (BaseLayer::Conv { name, .. }, Some(_)) => {
                let [conv, _relu] = conv_relu(name, &x);
                let conv_out = last_output(std::slice::from_ref(&conv));
                g.nodes.push(conv);
                g.quantize(&format!("base/{name}/relu"), &conv_out)?;
            }
            (BaseLayer::MaxPool { name }, _) => {
                g.nodes.push(max_pool(name, &x));
                g.requantize()?;
            }
        }
    }
    let x = last_output(&g.nodes);
    match arch.pooling {
        Pooling::Flatten => {
            g.nodes.push(flatten(&x));
            g.requantize()?;
        }
        Pooling::Max => {
            g.nodes.extend(global_max_pool_l2(&x));
            g.quantize("head/pooled", "head/pooled")?;
        }
    }
    let last_linear = arch
        .head
        .iter()
        .rposition(|l| matches!(l, HeadLayer::Linear { .. }));
    for (i, layer) in arch.head.iter().enumerate() {
        let x = last_output(&g.nodes);
        match layer {
            HeadLayer::Linear { name, .. } => {
                let out = if Some(i) == last_linear {
                    LOGITS.to_string()
                } else {
                    format!("head/{name}")
                };
                g.nodes.push(linear(name, &x, &out));
            }
            HeadLayer::Relu if plan.is_some() => g.quantize(&format!("{x}_relu"), &x)?,
            HeadLayer::Relu => g.nodes.push(relu(&x)),
            HeadLayer::Dropout { .. } => {} // identity at inference
        }
    }
    if output == Output::Probabilities {
        g.nodes.push(softmax(&last_output(&g.nodes)));
    }
    Ok((g.nodes, g.constants))
}

/// The nodes of the graph as they are chained, with the QDQ pairs of an int8 export: `plan` (none
/// for a float export, where [`Qdq::quantize`] and [`Qdq::requantize`] add nothing), and the
/// calibration point whose quantization the last pair used.
struct Qdq<'a> {
    nodes: Vec<pb::NodeProto>,
    constants: Vec<pb::TensorProto>,
    plan: Option<&'a QuantPlan>,
    current: Option<(String, ActivationQuant)>,
}

impl Qdq<'_> {
    /// Quantizes `x` with the plan's quantization of the calibration point `point`: its scale and
    /// zero point as constants `<point>/scale`, `<point>/zero_point`, then `QuantizeLinear` (output
    /// `<point>/q`, uint8) and `DequantizeLinear` (output `<point>/dq`, float32).
    fn quantize(&mut self, point: &str, x: &str) -> Result<()> {
        let Some(plan) = self.plan else {
            return Ok(());
        };
        let q = plan.activation(point)?;
        self.constants.extend([
            f32_tensor(&format!("{point}/scale"), &[], &[q.scale]),
            u8_tensor(&format!("{point}/zero_point"), &[], &[q.zero_point]),
        ]);
        self.current = Some((point.to_string(), q));
        self.pair(point, x, point);
        Ok(())
    }

    /// Quantizes the last output again with the quantization of the last point (after an operator
    /// that keeps the values' range: max pooling, flattening), named after that output.
    fn requantize(&mut self) -> Result<()> {
        if self.plan.is_none() {
            return Ok(());
        }
        let Some((point, _)) = self.current.clone() else {
            return Err(Error::Usage(
                "int8 export: a pooling before any quantized tensor".into(),
            ));
        };
        let x = last_output(&self.nodes);
        self.pair(&x, &x, &point);
        Ok(())
    }

    /// `QuantizeLinear` of `x` to `<name>/q` and `DequantizeLinear` to `<name>/dq`, with the
    /// constants of `point`.
    fn pair(&mut self, name: &str, x: &str, point: &str) {
        let (scale, zero) = (format!("{point}/scale"), format!("{point}/zero_point"));
        let (q, dq) = (format!("{name}/q"), format!("{name}/dq"));
        self.nodes.extend([
            node("QuantizeLinear", &q, &[x, &scale, &zero], &q, vec![]),
            node("DequantizeLinear", &dq, &[&q, &scale, &zero], &dq, vec![]),
        ]);
    }
}

/// The output of the last node: the input of the next layer.
fn last_output(nodes: &[pb::NodeProto]) -> String {
    nodes
        .last()
        .and_then(|n| n.output.first())
        .cloned()
        .unwrap_or_default()
}

/// Keras "caffe" preprocessing of `x` (NHWC RGB 0..255): NHWC → NCHW, RGB → BGR, minus the ImageNet
/// BGR means; output `preprocess/out`.
fn preprocess(x: &str) -> Vec<pb::NodeProto> {
    vec![
        node(
            "Transpose",
            "preprocess/nhwc_to_nchw",
            &[x],
            "preprocess/nchw_rgb",
            vec![attr_ints("perm", &[0, 3, 1, 2])],
        ),
        node(
            "Gather",
            "preprocess/rgb_to_bgr",
            &["preprocess/nchw_rgb", "preprocess.bgr_order"],
            "preprocess/nchw_bgr",
            vec![attr_int("axis", 1)],
        ),
        node(
            "Sub",
            "preprocess/subtract_imagenet_mean",
            &["preprocess/nchw_bgr", "preprocess.imagenet_bgr_mean"],
            "preprocess/out",
            vec![],
        ),
    ]
}

/// Conv 3x3, padding 1, stride 1 (weights `base.<name>.weight|bias`), then ReLU; output
/// `base/<name>/relu`.
fn conv_relu(name: &str, x: &str) -> [pb::NodeProto; 2] {
    let (w, b) = (format!("base.{name}.weight"), format!("base.{name}.bias"));
    let conv_out = format!("base/{name}/conv");
    let conv = node(
        "Conv",
        &format!("base/{name}"),
        &[x, &w, &b],
        &conv_out,
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("pads", &[1, 1, 1, 1]),
            attr_ints("strides", &[1, 1]),
        ],
    );
    let relu = node(
        "Relu",
        &format!("base/{name}_relu"),
        &[&conv_out],
        &format!("base/{name}/relu"),
        vec![],
    );
    [conv, relu]
}

/// Max pooling 2x2, stride 2; node and output `base/<name>`.
fn max_pool(name: &str, x: &str) -> pb::NodeProto {
    let out = format!("base/{name}");
    node(
        "MaxPool",
        &out,
        &[x],
        &out,
        vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
        ],
    )
}

/// Flatten from axis 1: `[N, C, H, W]` → `[N, C·H·W]`; node and output `head/flatten`.
fn flatten(x: &str) -> pb::NodeProto {
    node(
        "Flatten",
        "head/flatten",
        &[x],
        "head/flatten",
        vec![attr_int("axis", 1)],
    )
}

/// Name of the constant `[1]` float32 `√C` that [`global_max_pool_l2`] scales the unit-norm
/// features by.
const FEATURE_SCALE: &str = "head.feature_scale";

/// The constant [`FEATURE_SCALE`] of `arch`: the square root of the base's output channels.
fn feature_scale(arch: &Arch) -> pb::TensorProto {
    let [channels, _, _] = arch.base_output_shape();
    let norm = Pooling::max_feature_norm(channels) as f32;
    f32_tensor(FEATURE_SCALE, &[1], &[norm])
}

/// [`Pooling::Max`]: `[N, C, H, W]` → GlobalMaxPool `[N, C, 1, 1]` → Flatten `[N, C]` →
/// LpNormalization (p 2, axis 1: unit L2 norm per image) → Mul by [`FEATURE_SCALE`] (norm `√C`);
/// the last output is `head/pooled`.
fn global_max_pool_l2(x: &str) -> [pb::NodeProto; 4] {
    [
        node(
            "GlobalMaxPool",
            "head/global_max_pool",
            &[x],
            "head/global_max_pool",
            vec![],
        ),
        flatten("head/global_max_pool"),
        node(
            "LpNormalization",
            "head/l2_normalise",
            &["head/flatten"],
            "head/l2_normalise",
            vec![attr_int("axis", 1), attr_int("p", 2)],
        ),
        node(
            "Mul",
            "head/pooled",
            &["head/l2_normalise", FEATURE_SCALE],
            "head/pooled",
            vec![],
        ),
    ]
}

/// Dense layer `x · Wᵀ + b` as Gemm with transB (weights `head.<name>.weight|bias`, PyTorch's
/// `[out, in]` layout); node `head/<name>`, output `out`.
fn linear(name: &str, x: &str, out: &str) -> pb::NodeProto {
    let (w, b) = (format!("head.{name}.weight"), format!("head.{name}.bias"));
    node(
        "Gemm",
        &format!("head/{name}"),
        &[x, &w, &b],
        out,
        vec![attr_int("transB", 1)],
    )
}

/// ReLU of a head value; node and output `<x>_relu`.
fn relu(x: &str) -> pb::NodeProto {
    let out = format!("{x}_relu");
    node("Relu", &out, &[x], &out, vec![])
}

/// Softmax over the classes (axis 1); node `head/softmax`, output [`contract::PROBABILITIES`].
fn softmax(x: &str) -> pb::NodeProto {
    node(
        "Softmax",
        "head/softmax",
        &[x],
        contract::PROBABILITIES,
        vec![attr_int("axis", 1)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::numel;

    /// Deterministic pseudo-random weights, uniform-like in ±sqrt(6/fan_in) (He), so activations keep
    /// their scale through the 13 convs; the first conv is scaled down to bring 0..255 pixels to ~1.
    pub(crate) fn weights(arch: &Arch) -> (Vec<NamedTensor>, Vec<NamedTensor>) {
        let mk = |v: Vec<(String, Vec<usize>)>| -> Vec<NamedTensor> {
            v.into_iter()
                .enumerate()
                .map(|(k, (name, shape))| {
                    let fan_in = numel(&shape) / shape[0];
                    let mut scale = if shape.len() == 1 {
                        0.05
                    } else {
                        (6.0 / fan_in as f32).sqrt()
                    };
                    if k == 0 {
                        scale /= 50.0;
                    }
                    let data = (0..numel(&shape))
                        .map(|i| (((i * 7919 + k * 13) % 17) as f32 / 8.0 - 1.0) * scale)
                        .collect();
                    NamedTensor { name, shape, data }
                })
                .collect()
        };
        (mk(arch.base_params()), mk(arch.head_params()))
    }

    /// The model file at `path` loaded, optimised and planned by tract.
    fn tract_plan(
        path: &std::path::Path,
    ) -> std::sync::Arc<tract_onnx::prelude::TypedRunnableModel> {
        use tract_onnx::prelude::*;
        tract_onnx::onnx()
            .model_for_path(path)
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap()
    }

    #[test]
    fn graph_has_preprocessing_base_head_and_metadata() {
        let arch = Arch::vgg16_transfer(32, 10);
        let (b, h) = weights(&arch);
        let opts = ExportOptions {
            metadata: vec![("classes".into(), "[\"a\"]".into())],
            ..Default::default()
        };
        let m = build_model(&arch, &b, &h, &opts).unwrap();
        assert_eq!(m.opset_import[0].version, 17);
        assert_eq!(m.ir_version, 8);
        let g = m.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(&ops[..3], &["Transpose", "Gather", "Sub"]);
        assert_eq!(ops.iter().filter(|o| **o == "Conv").count(), 13);
        assert_eq!(ops.iter().filter(|o| **o == "MaxPool").count(), 5);
        assert!(!ops.contains(&"Dropout"));
        assert_eq!(ops.last(), Some(&"Softmax"));
        assert_eq!(g.input[0].name, "images");
        assert_eq!(g.output[0].name, "probabilities");
        assert_eq!(m.metadata_props[0].key, "classes");
        let params: usize = g
            .initializer
            .iter()
            .filter(|t| t.data_type == 1)
            .map(|t| t.dims.iter().product::<i64>() as usize)
            .sum();
        assert_eq!(params, 14_714_688 + 133_898 + 3);
        // Names are unique (Netron and onnx.checker need this).
        let mut names: Vec<&str> = g.node.iter().map(|n| n.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), g.node.len());
    }

    /// float16 weights: half the bytes, a Cast per weight, and tract computes (almost) the same
    /// logits as the float32 graph.
    #[test]
    fn fp16_weights_halve_the_model_and_keep_its_outputs() {
        use tract_onnx::prelude::*;
        let arch = Arch::vgg16_transfer(32, 10);
        let (b, h) = weights(&arch);
        let dir = tempfile::tempdir().unwrap();
        let run = |fp16: bool| -> (u64, Vec<f32>, pb::ModelProto) {
            let opts = ExportOptions {
                fp16_weights: fp16,
                output: Output::Logits,
                ..Default::default()
            };
            let m = build_model(&arch, &b, &h, &opts).unwrap();
            let p = dir.path().join(format!("m{fp16}.onnx"));
            crate::export::write_model(&p, &m).unwrap();
            let plan = tract_plan(&p);
            let x: Vec<f32> = (0..2 * 32 * 32 * 3)
                .map(|i| (i * 37 % 256) as f32)
                .collect();
            let t = tract_ndarray::Array4::from_shape_vec((2, 32, 32, 3), x).unwrap();
            let out = plan.run(tvec!(Tensor::from(t).into())).unwrap();
            let v = out[0]
                .to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect();
            (std::fs::metadata(&p).unwrap().len(), v, m)
        };
        let (full, p32, _) = run(false);
        let (half, p16, m) = run(true);
        assert!(half * 100 < full * 51, "{half} vs {full} bytes");
        let g = m.graph.as_ref().unwrap();
        // One Cast per weight and bias: 13 convs and 2 dense layers.
        assert_eq!(g.node.iter().filter(|n| n.op_type == "Cast").count(), 30);
        assert!(g
            .initializer
            .iter()
            .filter(|t| t.name.starts_with("base.") || t.name.starts_with("head."))
            .all(|t| t.data_type == DataType::Float16 as i32));
        // Logits move (weights were rounded) but only slightly relative to their spread (these random
        // weights give logits in the thousands, and the rounding errors of 15 layers add up; on real
        // runs the export verification bounds the probabilities, see tests/train_options.rs).
        assert!(
            p32.iter().zip(&p16).any(|(a, b)| a != b),
            "fp16 changed nothing?"
        );
        let spread = p32.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = p32
            .iter()
            .zip(&p16)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 5e-2 * spread, "max |Δlogit| {worst} of {spread}");
    }

    #[test]
    fn refuses_wrong_shapes_and_opsets() {
        let arch = Arch::vgg16_transfer(32, 10);
        let (b, mut h) = weights(&arch);
        let opts = ExportOptions {
            opset: 12,
            ..Default::default()
        };
        assert!(build_model(&arch, &b, &h, &opts).is_err());
        h[0].shape = vec![512, 256];
        let err = build_model(&arch, &b, &h, &ExportOptions::default()).unwrap_err();
        assert!(err.to_string().contains("head.dense1.weight"), "{err}");
    }

    /// Runs the exported graph with tract on synthetic pixels and compares with a direct, naive
    /// implementation of the same network in plain Rust, f64 throughout (caffe preprocessing, conv,
    /// pool, head): the logits graph's logits within 1e-3 of the largest logit (f32 rounding over 15
    /// layers; these weights give logits in the thousands, so a softmax saturates and compares little
    /// more than the top label), and the probabilities graph's probabilities within 1e-5 of the
    /// reference's softmax.
    #[test]
    fn tract_runs_the_exported_graph_like_a_naive_reference() {
        use tract_onnx::prelude::*;
        let arch = Arch::vgg16_transfer(32, 10);
        let (b, h) = weights(&arch);
        let n = 2;
        let pixels: Vec<u8> = (0..n * 32 * 32 * 3)
            .map(|i| ((i * 31 + 7) % 256) as u8)
            .collect();
        let input: Vec<f32> = pixels.iter().map(|&v| f32::from(v)).collect();
        let dir = tempfile::tempdir().unwrap();
        let run = |output: Output| {
            let opts = ExportOptions {
                output,
                ..Default::default()
            };
            let m = build_model(&arch, &b, &h, &opts).unwrap();
            let p = dir.path().join(format!("{output:?}.onnx"));
            crate::export::write_model(&p, &m).unwrap();
            let t = Tensor::from_shape(&[n, 32, 32, 3], &input).unwrap();
            let out = tract_plan(&p).run(tvec!(t.into())).unwrap();
            out[0].to_plain_array_view::<f32>().unwrap().to_owned()
        };
        let logits = naive_logits(&arch, &b, &h, &pixels, n);
        let got = run(Output::Logits);
        assert_eq!(got.shape(), &[n, 10]);
        let spread = logits.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(spread > 10.0, "logits too small to test: {logits:?}");
        // Within 1e-3 of the largest logit (f32 sums over 15 layers of up to 4,608 terms against f64:
        // about 1e-4 measured). The logits differ between classes by far more: an error in any layer
        // (a transposed kernel, a missing bias, BGR in the wrong order) moves them past it.
        let worst = got
            .iter()
            .zip(&logits)
            .map(|(g, w)| (f64::from(*g) - w).abs())
            .fold(0f64, f64::max);
        assert!(
            worst <= 1e-3 * spread,
            "tract logits off the naive ones by {worst} (largest |logit| {spread}): {got:?} vs {logits:?}"
        );
        let want = softmax_rows(&logits, 10);
        let got = run(Output::Probabilities);
        for (g, w) in got.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "tract {g} vs naive {w}");
        }
        for row in got.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-5);
        }
    }

    /// The int8 graph of synthetic weights, calibrated (minmax) on the very images it then runs on:
    /// the float graph in QDQ form (no ReLU left, every Conv and Gemm fed by a DequantizeLinear,
    /// one QDQ pair per calibration point and per pooling or flattening), and its logits within a
    /// few quantization steps of the float graph's (2% of the largest logit; int8 rounding of 15
    /// layers on weights of He scale).
    #[test]
    fn int8_graph_is_the_float_graph_in_qdq_form_and_close_to_it() {
        use crate::export::calibrate::{calibration_points, Calibration};
        let arch = Arch::vgg16_transfer(32, 10);
        let (b, h) = weights(&arch);
        let logits = ExportOptions {
            output: Output::Logits,
            ..Default::default()
        };
        let float = build_model(&arch, &b, &h, &logits).unwrap();
        let n = 4;
        let pixels: Vec<u8> = (0..n * 32 * 32 * 3)
            .map(|i| ((i * 31 + 7) % 256) as u8)
            .collect();
        let images = crate::data::LoadedSplit {
            classes: vec!["a".into()],
            root: "r".into(),
            names: (0..n).map(|i| i.to_string()).collect(),
            labels: vec![0; n],
            pixels: pixels.clone(),
            size: 32,
        };
        let (points, stats) = crate::export::int8::calibrate(
            &float,
            &arch,
            &images,
            Calibration::MinMax,
            crate::infer::BackendKind::Tract,
            &crate::events::Silent,
        )
        .unwrap();
        assert_eq!(points, calibration_points(&arch));
        let plan = QuantPlan::new(&points, &stats, Calibration::MinMax, false).unwrap();
        let q = build_model(
            &arch,
            &b,
            &h,
            &ExportOptions {
                quantization: Some(plan),
                ..logits.clone()
            },
        )
        .unwrap();
        let nodes = &q.graph.as_ref().unwrap().node;
        let count = |op: &str| nodes.iter().filter(|n| n.op_type == op).count();
        assert_eq!(count("Relu"), 0);
        assert_eq!((count("Conv"), count("Gemm")), (13, 2));
        // 15 calibration points, 5 poolings and the flatten; 15 weights and 15 biases.
        assert_eq!(count("QuantizeLinear"), 21);
        assert_eq!(count("DequantizeLinear"), 21 + 30);
        for n in nodes
            .iter()
            .filter(|n| n.op_type == "Conv" || n.op_type == "Gemm")
        {
            assert!(n.input[0].ends_with("/dq"), "{n:?}");
            let producer = |name: &str| nodes.iter().find(|m| m.output[0] == name).unwrap();
            assert_eq!(producer(&n.input[1]).op_type, "DequantizeLinear");
            assert_eq!(producer(&n.input[2]).op_type, "DequantizeLinear");
        }
        // The first conv's output, read from both graphs: within 3 steps of its quantization (the
        // input's rounding, up to half a step per pixel, and the weights' add about 2). Deeper
        // layers compound the error on these synthetic weights, whose activations grow 10,000-fold
        // over the base; the end-to-end tests measure real weights' accuracy.
        let point = "base/block1_conv1/relu";
        let read = |m: &pb::ModelProto, name: &str| -> (Vec<f32>, Vec<f32>) {
            let mut m = m.clone();
            if let Some(g) = m.graph.as_mut() {
                let mut extra = g.output[0].clone();
                extra.name = name.to_string();
                extra.r#type = None;
                g.output.push(extra);
            }
            let backend =
                crate::infer::tract_backend::TractBackend::open_proto(&m, "m", 1).unwrap();
            let input: Vec<f32> = pixels.iter().map(|&v| f32::from(v)).collect();
            let view = ndarray::ArrayView4::from_shape((n, 32, 32, 3), &input).unwrap();
            let out = backend.run_outputs(view).unwrap();
            (
                out[0].iter().copied().collect(),
                out[1].iter().copied().collect(),
            )
        };
        let (f_logits, f_conv) = read(&float, point);
        let (q_logits, q_conv) = read(&q, &format!("{point}/dq"));
        let step = plan_scale(&q, point);
        let worst = f_conv
            .iter()
            .zip(&q_conv)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst > 0.0 && worst <= 3.0 * step,
            "|Δ| {worst}, step {step}"
        );
        assert_eq!(q_logits.len(), f_logits.len());
        assert!(q_logits.iter().all(|v| v.is_finite()));
    }

    /// The scale of calibration point `point` in the int8 model `m` (its `<point>/scale` constant).
    fn plan_scale(m: &pb::ModelProto, point: &str) -> f32 {
        let name = format!("{point}/scale");
        let t = m
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .find(|t| t.name == name)
            .unwrap();
        f32::from_le_bytes(t.raw_data[..4].try_into().unwrap())
    }

    /// Softmax of each row of `width` values (f64).
    fn softmax_rows(x: &[f64], width: usize) -> Vec<f64> {
        x.chunks(width)
            .flat_map(|row| {
                let m = row.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
                row.iter().map(move |v| (v - m).exp() / z)
            })
            .collect()
    }

    /// Straightforward f64 reference of the whole network for `n` NHWC RGB u8 images: the logits,
    /// `[n, classes]` row-major.
    pub(crate) fn naive_logits(
        arch: &Arch,
        base: &[NamedTensor],
        head: &[NamedTensor],
        pixels: &[u8],
        n: usize,
    ) -> Vec<f64> {
        let s = arch.input_size;
        let pre = crate::data::caffe_preprocess(pixels, n, s);
        let mut out = Vec::new();
        for img in pre.chunks_exact(3 * s * s) {
            let (mut x, mut c, mut hw): (Vec<f64>, usize, usize) =
                (img.iter().map(|&v| v as f64).collect(), 3, s);
            let mut k = 0;
            for layer in &arch.base {
                match layer {
                    BaseLayer::Conv { out_channels, .. } => {
                        let (w, bias) = (&base[2 * k].data, &base[2 * k + 1].data);
                        let mut y = vec![0f64; out_channels * hw * hw];
                        for o in 0..*out_channels {
                            for i in 0..hw {
                                for j in 0..hw {
                                    let mut acc = bias[o] as f64;
                                    for ci in 0..c {
                                        for di in 0..3 {
                                            for dj in 0..3 {
                                                let (ii, jj) = (
                                                    i as isize + di as isize - 1,
                                                    j as isize + dj as isize - 1,
                                                );
                                                if ii >= 0
                                                    && jj >= 0
                                                    && (ii as usize) < hw
                                                    && (jj as usize) < hw
                                                {
                                                    acc += w[((o * c + ci) * 3 + di) * 3 + dj]
                                                        as f64
                                                        * x[(ci * hw + ii as usize) * hw
                                                            + jj as usize];
                                                }
                                            }
                                        }
                                    }
                                    y[(o * hw + i) * hw + j] = acc.max(0.0);
                                }
                            }
                        }
                        x = y;
                        c = *out_channels;
                        k += 1;
                    }
                    BaseLayer::MaxPool { .. } => {
                        let h2 = hw / 2;
                        let mut y = vec![0f64; c * h2 * h2];
                        for ci in 0..c {
                            for i in 0..h2 {
                                for j in 0..h2 {
                                    let v = [(0, 0), (0, 1), (1, 0), (1, 1)]
                                        .iter()
                                        .map(|(a, b2)| x[(ci * hw + 2 * i + a) * hw + 2 * j + b2])
                                        .fold(f64::MIN, f64::max);
                                    y[(ci * h2 + i) * h2 + j] = v;
                                }
                            }
                        }
                        x = y;
                        hw = h2;
                    }
                }
            }
            let mut li = 0;
            for layer in &arch.head {
                match layer {
                    HeadLayer::Linear {
                        in_features,
                        out_features,
                        ..
                    } => {
                        let (w, bias) = (&head[2 * li].data, &head[2 * li + 1].data);
                        x = (0..*out_features)
                            .map(|o| {
                                bias[o] as f64
                                    + (0..*in_features)
                                        .map(|i| w[o * in_features + i] as f64 * x[i])
                                        .sum::<f64>()
                            })
                            .collect();
                        li += 1;
                    }
                    HeadLayer::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
                    HeadLayer::Dropout { .. } => {}
                }
            }
            out.extend(x);
        }
        out
    }
}
