//! A batched tail for a model's small late feature maps.
//!
//! A single-image plan (the batch bound to 1) turns a 3x3 convolution into a matrix product as wide
//! as the feature map: 16 columns on VGG16's block-4 maps and 4 on its block-5 maps at 32x32 pixels.
//! There each image streams the layer's weights (9.4 MB for 512 to 512 channels) from memory for few
//! multiply-adds, and tract ran those layers at 40-60% of the rate of the wider early ones
//! (`examples/tract_profile.rs`). From the first such convolution on, [`split`] cuts the model in two:
//! the head keeps its single-image plan, and the tail runs a thread's images together, with each
//! small-map convolution written as one matrix product over all of them, whose rows are
//! `batch x height x width`:
//! - im2col form, for maps of at least as many positions as the kernel has taps: the map is padded
//!   and its `kh x kw` shifted copies are concatenated along the channels, giving rows of
//!   `kh * kw * C` values (NHWC order), multiplied by the weights reordered to `[kh * kw * C, OC]`;
//! - dense form, for smaller maps (2x2 under a 3x3 kernel): the whole map is one row of `H * W * C`
//!   values and the convolution is the linear map it is, `[H * W * C, H * W * OC]`, which skips the
//!   taps that fall in the padding (4 of 9 products instead of 9 at 2x2);
//! - Winograd form, for 3x3 kernels on 4x4 maps with many input channels (VGG16's block 4 at 32x32
//!   pixels): one F(4x4, 3x3) tile per map, 36 products of `[OC, C] x [C, N]` instead of the 144
//!   multiply-adds per channel pair of the im2col form ([`super::winograd::small_map`], passed in
//!   by the tract backend). On the Zen 5 EPYC the tail ran 2.2x as fast, and `pipe infer --backend
//!   tract` 1.16-1.21x (docs/RESULTS.md).
//!
//! The forms compute the convolution's sums in another order: results agree with the plain plan
//! to float32 rounding (Winograd's to about 2e-6 of the largest output).

use crate::onnx::build::{attr_int, attr_ints, f32_tensor, i64_tensor, node, value_info};
use std::collections::{HashMap, HashSet};
use tract_onnx::model::ParseResult;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::prelude::*;

/// Largest feature map (height x width, positions) whose convolutions go to the batched tail.
/// At 32x32 pixels VGG16's block-4 maps are 4x4 (16) and its block-5 maps 2x2; at 64 pixels its
/// block-4 maps are 8x8 (64) and stay in the single-image head.
pub const SMALL_MAP: usize = 16;

/// Fewest rows (images) a tail computes by Winograd: its transformed weights are 4 times the
/// size of the im2col form's, and they are read once per batch. On the Zen 5 EPYC (VGG16's block
/// 4 and 5 tail, one thread) the Winograd tail ran 281, 410, 627 and 840 images/s on batches of 1,
/// 2, 4 and 8 against 426, 597, 614 and 703 for the im2col form.
pub const WINOGRAD_MIN_ROWS: usize = 4;

/// A model cut at the input of its first small-map convolution: `head` computes the cut tensor
/// (`[N, C, H, W]`, float32) from the model's input, `tail` the model's outputs from it.
pub struct Split {
    pub head: pb::ModelProto,
    pub tail: pb::ModelProto,
    /// When `tail` computes some convolutions in the faster form given to [`split`] (Winograd's):
    /// the same tail with every small-map convolution in im2col or dense form, for fewer than
    /// [`WINOGRAD_MIN_ROWS`] rows.
    pub narrow_tail: Option<pb::ModelProto>,
    /// Rows of the cut tensor per image (2 for a test-time augmentation graph that runs each image
    /// and its mirror): the tail's input for `n` images is row `r` of every image, for `r` in
    /// `0..rows`.
    pub rows: usize,
}

/// Another form for a small-map convolution in a batched tail ([`split`]): its nodes and
/// initializers, or `None` to keep the im2col or dense form.
pub type FasterForm =
    dyn Fn(&pb::NodeProto, &SameConv) -> Option<(Vec<pb::NodeProto>, Vec<pb::TensorProto>)>;

/// Every named tensor's shape (`[R, C, H, W]` and so on) with a batch of one image, from
/// [`one_image_shapes`].
pub type Shapes = HashMap<String, Vec<usize>>;

/// A convolution that keeps its map size, with what a rewrite of it needs ([`same_conv`]).
pub struct SameConv {
    /// Input channels, output channels, map height and width, kernel height and width.
    pub c: usize,
    pub oc: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    /// Weights `[OC, C, kh, kw]` and bias `[OC]` (zeros when the node has none).
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// The initializers of `graph` by name.
pub fn initializers(graph: &pb::GraphProto) -> HashMap<&str, &pb::TensorProto> {
    graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect()
}

/// The inputs of `graph` that are not initializers: the data the model is run on.
fn data_inputs<'g>(
    graph: &'g pb::GraphProto,
    initializers: &HashMap<&str, &pb::TensorProto>,
) -> Vec<&'g pb::ValueInfoProto> {
    graph
        .input
        .iter()
        .filter(|i| !initializers.contains_key(i.name.as_str()))
        .collect()
}

/// Every named tensor's shape with a batch of one image, or `None` when the model does not fix
/// them: a model whose only input is `[N, H, W, C]` (float32, `N` symbolic, the others known), of
/// opset 13 or later. `parsed` is tract's parse of `model`, whose graph is cloned to infer the
/// shapes; tensors whose shape tract cannot make concrete are left out.
///
/// # Errors
/// When tract cannot infer the model's shapes with a batch of 1.
pub fn one_image_shapes(
    model: &pb::ModelProto,
    parsed: &ParseResult,
) -> TractResult<Option<Shapes>> {
    let Some(graph) = &model.graph else {
        return Ok(None);
    };
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    let inputs = data_inputs(graph, &initializers(graph));
    if opset < 13 || inputs.len() != 1 {
        return Ok(None);
    }
    let Some(input_dims) = concrete_tail_dims(inputs[0]) else {
        return Ok(None);
    };
    let mut inference = parsed.model.clone();
    let mut one = vec![1];
    one.extend(input_dims);
    inference.set_input_fact(0, f32::fact(&one).into())?;
    inference.analyse(false)?;
    let shapes = parsed
        .outlets_by_name
        .iter()
        .filter_map(|(name, outlet)| {
            let fact = inference.outlet_fact(*outlet).ok()?;
            Some((
                name.clone(),
                fact.shape.as_concrete_finite().ok()??.to_vec(),
            ))
        })
        .collect();
    Ok(Some(shapes))
}

/// Cuts `model` for a batched tail, or `None` when it has no small-map convolution to batch: a
/// model whose tensors have the one-image shapes `shapes` ([`one_image_shapes`]), with a 3x3-like
/// convolution ([`same_conv`]) on a map of at most [`SMALL_MAP`] positions, from which on the graph
/// is a chain (nothing computed before that convolution's input is used after it) of operators
/// that keep each image's rows apart (see `rowwise_tail`).
///
/// `faster` may give another form for a small-map convolution (the tract backend passes Winograd's,
/// `winograd::small_map`, for wide 4x4 maps); the tail uses it where it does, and then
/// [`Split::narrow_tail`] is the tail without it.
pub fn split(model: &pb::ModelProto, shapes: &Shapes, faster: &FasterForm) -> Option<Split> {
    let graph = model.graph.as_ref()?;
    let initializers = initializers(graph);
    let [input] = data_inputs(graph, &initializers)[..] else {
        return None;
    };
    let shape = |name: &str| shapes.get(name).cloned();
    let small = |n: &pb::NodeProto| {
        same_conv(n, &initializers, shape(n.input.first()?), |k| {
            k.h * k.w <= SMALL_MAP
        })
    };
    let cut = graph.node.iter().position(|n| small(n).is_some())?;
    let cut_tensor = graph.node[cut].input[0].clone();
    // The chain condition: of what the head computes, the tail and the outputs use the cut only.
    let head_made: HashSet<&str> = graph.node[..cut]
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(std::iter::once(input.name.as_str()))
        .collect();
    let tail_uses = graph.node[cut..]
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(graph.output.iter().map(|o| o.name.as_str()));
    if tail_uses
        .filter(|t| head_made.contains(t))
        .any(|t| t != cut_tensor)
    {
        return None;
    }
    let cut_shape = shape(&cut_tensor)?;
    let rows = cut_shape[0];
    if !rowwise_tail(
        &graph.node[cut..],
        graph,
        &cut_tensor,
        rows,
        &initializers,
        &shape,
    ) {
        return None;
    }
    let cut_dims: Vec<Option<i64>> = std::iter::once(None)
        .chain(cut_shape[1..].iter().map(|&d| Some(d as i64)))
        .collect();
    // The tail's nodes and new initializers, with the faster form where `use_faster` and it allow,
    // and whether it was used.
    let tail_graph = |use_faster: bool| {
        let mut tail_nodes = Vec::new();
        let mut new_initializers = Vec::new();
        let mut used = false;
        for n in &graph.node[cut..] {
            match small(n) {
                Some(conv) => {
                    let fast = if use_faster { faster(n, &conv) } else { None };
                    used |= fast.is_some();
                    let (nodes, tensors) = fast.unwrap_or_else(|| rewrite(n, &conv));
                    tail_nodes.extend(nodes);
                    new_initializers.extend(tensors);
                }
                None => tail_nodes.push(n.clone()),
            }
        }
        (tail_nodes, new_initializers, used)
    };
    // The head's output has `rows` rows per image: its first dimension is left unnamed.
    let mut head_output = value_info(&cut_tensor, &cut_dims, "");
    if let Some(pb::type_proto::Value::TensorType(t)) =
        head_output.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        if let Some(first) = t.shape.as_mut().and_then(|s| s.dim.first_mut()) {
            first.value = None;
        }
    }
    let head = sub_model(
        model,
        graph,
        graph.node[..cut].to_vec(),
        graph.input.clone(),
        vec![head_output],
        Vec::new(),
    );
    let tail_model = |(nodes, initializers, _): (Vec<_>, Vec<_>, bool)| {
        sub_model(
            model,
            graph,
            nodes,
            vec![value_info(&cut_tensor, &cut_dims, "")],
            graph.output.clone(),
            initializers,
        )
    };
    let wide = tail_graph(true);
    let narrow_tail = wide.2.then(|| tail_model(tail_graph(false)));
    Some(Split {
        head,
        tail: tail_model(wide),
        narrow_tail,
        rows,
    })
}

/// Whether the tail `nodes` (from the cut tensor `cut`, `rows` rows per image in the order "row r
/// of every image" for r = 0, 1, ...) computes each image's outputs from its own rows only, whatever
/// the number of images it is run on: every node is one of the row-wise operators below, or a
/// `Split` along the batch axis into `rows` equal parts (test-time augmentation's halves), which
/// leaves one row per image; the graph's outputs have one row per image. `shape` gives a tensor's
/// shape with one image.
fn rowwise_tail(
    nodes: &[pb::NodeProto],
    graph: &pb::GraphProto,
    cut: &str,
    rows: usize,
    initializers: &HashMap<&str, &pb::TensorProto>,
    shape: &dyn Fn(&str) -> Option<Vec<usize>>,
) -> bool {
    let attr = |n: &pb::NodeProto, name: &str| n.attribute.iter().find(|a| a.name == name).cloned();
    let mut per_image: HashMap<String, usize> = HashMap::from([(cut.to_string(), rows)]);
    let mut constant: HashSet<String> = initializers.keys().map(|k| k.to_string()).collect();
    for n in nodes {
        let inputs: Vec<&str> = n
            .input
            .iter()
            .map(String::as_str)
            .filter(|i| !i.is_empty())
            .collect();
        if inputs.iter().all(|i| constant.contains(*i)) {
            constant.extend(n.output.iter().cloned());
            continue;
        }
        let data: Vec<(usize, &str)> = inputs
            .iter()
            .enumerate()
            .filter(|(_, i)| !constant.contains(**i))
            .map(|(k, i)| (k, *i))
            .collect();
        let Some(r) = per_image.get(data[0].1).copied() else {
            return false;
        };
        if data.iter().any(|(_, i)| per_image.get(*i) != Some(&r)) {
            return false;
        }
        let only_first = data.len() == 1 && data[0].0 == 0;
        let axis_not_batch = attr(n, "axis").is_none_or(|a| a.i != 0);
        let fits = match n.op_type.as_str() {
            "Relu" | "Sigmoid" | "Tanh" | "LeakyRelu" | "Clip" | "Identity" | "Dropout"
            | "MaxPool" | "AveragePool" | "GlobalMaxPool" | "GlobalAveragePool" | "Conv" => {
                only_first
            }
            "Gemm" => only_first && attr(n, "transA").is_none_or(|a| a.i == 0),
            "MatMul" => only_first,
            "Flatten" | "Softmax" | "LogSoftmax" | "LpNormalization" => {
                only_first && axis_not_batch
            }
            "Transpose" => {
                only_first && attr(n, "perm").is_some_and(|a| a.ints.first() == Some(&0))
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                // A constant operand must not have a batch axis of its own.
                let rank = shape(data[0].1).map_or(0, |s| s.len());
                inputs.iter().all(|i| {
                    !constant.contains(*i)
                        || initializers
                            .get(i)
                            .is_some_and(|t| t.dims.len() < rank || t.dims.first() == Some(&1))
                })
            }
            "Split" => {
                let equal = inputs.len() == 1 && attr(n, "split").is_none();
                let batch_axis = attr(n, "axis").is_none_or(|a| a.i == 0);
                if !(only_first && equal && batch_axis && n.output.len() == r) {
                    return false;
                }
                for o in &n.output {
                    per_image.insert(o.clone(), 1);
                }
                continue;
            }
            _ => false,
        };
        if !fits {
            return false;
        }
        for o in &n.output {
            per_image.insert(o.clone(), r);
        }
    }
    graph
        .output
        .iter()
        .all(|o| per_image.get(&o.name) == Some(&1))
}

/// The dimensions after the first of a rank-4 input whose first dimension is symbolic and the others
/// known, float32.
fn concrete_tail_dims(input: &pb::ValueInfoProto) -> Option<Vec<usize>> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(t)) = input.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    if t.elem_type != DataType::Float as i32 {
        return None;
    }
    let dims = &t.shape.as_ref()?.dim;
    if dims.len() != 4 || matches!(dims[0].value, Some(Value::DimValue(_))) {
        return None;
    }
    dims[1..]
        .iter()
        .map(|d| match d.value {
            Some(Value::DimValue(v)) if v > 0 => Some(v as usize),
            _ => None,
        })
        .collect()
}

/// `node` as a [`SameConv`] when it is a convolution on its input of shape `input` (`[R, C, H, W]`
/// with one image: R rows per image) of group 1, stride 1, dilation 1 and an odd kernel, padded so
/// that the map keeps its size, with float32 weights (and bias) stored in the file, and `keep`
/// accepts its sizes. `keep` sees a [`SameConv`] whose weight and bias are still empty: they are
/// read from the file only for a convolution it keeps.
pub fn same_conv(
    node: &pb::NodeProto,
    initializers: &HashMap<&str, &pb::TensorProto>,
    input: Option<Vec<usize>>,
    keep: impl Fn(&SameConv) -> bool,
) -> Option<SameConv> {
    if node.op_type != "Conv" || !node.domain.is_empty() || node.output.len() != 1 {
        return None;
    }
    let [_, c, h, w]: [usize; 4] = input?.as_slice().try_into().ok()?;
    let weight_tensor = initializers.get(node.input.get(1)?.as_str())?;
    let [oc, wc, kh, kw] = weight_tensor
        .dims
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<_>>>()?
        .as_slice()
        .try_into()
        .ok()?;
    if wc != c || kh % 2 == 0 || kw % 2 == 0 {
        return None;
    }
    let (ph, pw) = ((kh / 2) as i64, (kw / 2) as i64);
    for a in &node.attribute {
        let fits = match a.name.as_str() {
            "group" => a.i == 1,
            "strides" | "dilations" => a.ints.iter().all(|&v| v == 1),
            "kernel_shape" => a.ints == [kh as i64, kw as i64],
            "pads" => a.ints == [ph, pw, ph, pw],
            "auto_pad" => a.s == b"NOTSET" || (a.s == b"SAME_UPPER" || a.s == b"SAME_LOWER"),
            _ => false,
        };
        if !fits {
            return None;
        }
    }
    let has_pads = node.attribute.iter().any(|a| a.name == "pads");
    let auto_same = node
        .attribute
        .iter()
        .any(|a| a.name == "auto_pad" && a.s != b"NOTSET");
    if (ph, pw) != (0, 0) && !has_pads && !auto_same {
        return None;
    }
    let mut conv = SameConv {
        c,
        oc,
        h,
        w,
        kh,
        kw,
        weight: Vec::new(),
        bias: Vec::new(),
    };
    if !keep(&conv) {
        return None;
    }
    conv.weight = f32_data(weight_tensor, oc * c * kh * kw)?;
    conv.bias = match node.input.get(2).filter(|b| !b.is_empty()) {
        Some(b) => f32_data(initializers.get(b.as_str())?, oc)?,
        None => vec![0.0; oc],
    };
    Some(conv)
}

/// The prefix of the names a rewrite of `conv` gives its nodes and tensors: `{conv}/{what}/`,
/// `conv` being the node's name, or its output's when it has none.
pub fn rewrite_prefix(conv: &pb::NodeProto, what: &str) -> String {
    let conv_name = if conv.name.is_empty() {
        &conv.output[0]
    } else {
        &conv.name
    };
    format!("{conv_name}/{what}/")
}

/// The `len` float32 values a tensor stores in the file (raw little-endian or `float_data`).
fn f32_data(t: &pb::TensorProto, len: usize) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float as i32 || !t.external_data.is_empty() {
        return None;
    }
    let values: Vec<f32> = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    (values.len() == len).then_some(values)
}

/// The nodes and initializers that compute `node`'s output (NCHW) from its input (NCHW) as one
/// matrix product over the batch's rows, in im2col or dense form.
fn rewrite(conv: &pb::NodeProto, k: &SameConv) -> (Vec<pb::NodeProto>, Vec<pb::TensorProto>) {
    let p = rewrite_prefix(conv, "batched");
    let name = |suffix: &str| format!("{p}{suffix}");
    let (c, oc, h, w, kh, kw) = (k.c, k.oc, k.h, k.w, k.kh, k.kw);
    let mut nodes = vec![node_(
        "Transpose",
        &name("nhwc"),
        &[&conv.input[0]],
        vec![attr_ints("perm", &[0, 2, 3, 1])],
    )];
    let mut tensors = Vec::new();
    let (rows, matrix, bias);
    if h * w >= kh * kw {
        // im2col: the padded map's positions in a row per image ([N, (H + 2ph) * (W + 2pw), C]),
        // one Gather of the `kh * kw` taps of every output position ([N, H * W, kh * kw, C]), then
        // row (n, y, x) holds the padded map's values at (y + dy, x + dx, c) in (dy, dx, c) order;
        // weight row (dy * kw + dx) * C + c.
        let (ph, pw) = (kh / 2, kw / 2);
        let padded_w = w + 2 * pw;
        let (ph, pw) = (ph as i64, pw as i64);
        tensors.push(i64_tensor(&name("pads"), &[0, ph, pw, 0, 0, ph, pw, 0]));
        nodes.push(node_(
            "Pad",
            &name("padded"),
            &[&name("nhwc"), &name("pads")],
            vec![],
        ));
        let positions = (h + 2 * (kh / 2)) * padded_w;
        tensors.push(i64_tensor(
            &name("positions_shape"),
            &[-1, positions as i64, c as i64],
        ));
        nodes.push(node_(
            "Reshape",
            &name("positions"),
            &[&name("padded"), &name("positions_shape")],
            vec![],
        ));
        let taps: Vec<i64> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (y, x)))
            .flat_map(|(y, x)| {
                (0..kh).flat_map(move |dy| {
                    (0..kw).map(move |dx| ((y + dy) * padded_w + x + dx) as i64)
                })
            })
            .collect();
        let mut taps = i64_tensor(&name("taps"), &taps);
        taps.dims = vec![(h * w) as i64, (kh * kw) as i64];
        tensors.push(taps);
        nodes.push(node_(
            "Gather",
            &name("patches"),
            &[&name("positions"), &name("taps")],
            vec![attr_int("axis", 1)],
        ));
        rows = name("patches");
        let mut m = vec![0f32; kh * kw * c * oc];
        for o in 0..oc {
            for i in 0..c {
                for dy in 0..kh {
                    for dx in 0..kw {
                        m[((dy * kw + dx) * c + i) * oc + o] =
                            k.weight[((o * c + i) * kh + dy) * kw + dx];
                    }
                }
            }
        }
        matrix = f32_tensor(&name("weight"), &[kh * kw * c, oc], &m);
        bias = f32_tensor(&name("bias"), &[oc], &k.bias);
        tensors.push(i64_tensor(&name("row_shape"), &[-1, (kh * kw * c) as i64]));
    } else {
        // Dense: row n holds the whole map (y, x, c); column (y', x', o) of the output takes input
        // position (y, x) through tap (y - y' + kh / 2, x - x' + kw / 2) when that tap exists.
        rows = name("nhwc");
        let (hw, cols) = (h * w, h * w * oc);
        let mut m = vec![0f32; hw * c * cols];
        for (iy, ix, oy, ox) in (0..h).flat_map(|iy| {
            (0..w).flat_map(move |ix| {
                (0..h).flat_map(move |oy| (0..w).map(move |ox| (iy, ix, oy, ox)))
            })
        }) {
            let (dy, dx) = (iy + kh / 2, ix + kw / 2);
            let (Some(dy), Some(dx)) = (dy.checked_sub(oy), dx.checked_sub(ox)) else {
                continue;
            };
            if dy >= kh || dx >= kw {
                continue;
            }
            for i in 0..c {
                let row = (iy * w + ix) * c + i;
                for o in 0..oc {
                    m[row * cols + (oy * w + ox) * oc + o] =
                        k.weight[((o * c + i) * kh + dy) * kw + dx];
                }
            }
        }
        matrix = f32_tensor(&name("weight"), &[hw * c, cols], &m);
        let tiled: Vec<f32> = (0..hw).flat_map(|_| k.bias.iter().copied()).collect();
        bias = f32_tensor(&name("bias"), &[cols], &tiled);
        tensors.push(i64_tensor(&name("row_shape"), &[-1, (hw * c) as i64]));
    }
    tensors.push(i64_tensor(
        &name("map_shape"),
        &[-1, h as i64, w as i64, oc as i64],
    ));
    nodes.extend([
        node_(
            "Reshape",
            &name("rows"),
            &[&rows, &name("row_shape")],
            vec![],
        ),
        node_(
            "MatMul",
            &name("product"),
            &[&name("rows"), &name("weight")],
            vec![],
        ),
        node_(
            "Add",
            &name("biased"),
            &[&name("product"), &name("bias")],
            vec![],
        ),
        node_(
            "Reshape",
            &name("map"),
            &[&name("biased"), &name("map_shape")],
            vec![],
        ),
        node(
            "Transpose",
            &name("nchw"),
            &[&name("map")],
            &conv.output[0],
            vec![attr_ints("perm", &[0, 3, 1, 2])],
        ),
    ]);
    tensors.push(matrix);
    tensors.push(bias);
    (nodes, tensors)
}

/// A node whose output tensor is named as the node.
pub fn node_(
    op: &str,
    name: &str,
    inputs: &[&str],
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    node(op, name, inputs, name, attribute)
}

/// `model` with `nodes`, `inputs` and `outputs` in its graph, and the initializers of `graph` that
/// the nodes use followed by `extra` (an input that names an initializer left out goes too). Only
/// what tract reads of a model is copied: the IR version, the opsets and the graph.
pub fn sub_model(
    model: &pb::ModelProto,
    graph: &pb::GraphProto,
    nodes: Vec<pb::NodeProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    extra: Vec<pb::TensorProto>,
) -> pb::ModelProto {
    let used: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let mut initializer: Vec<pb::TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| used.contains(t.name.as_str()))
        .cloned()
        .collect();
    initializer.extend(extra);
    let kept: HashSet<&str> = initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = inputs
        .into_iter()
        .filter(|i| {
            !graph.initializer.iter().any(|t| t.name == i.name) || kept.contains(i.name.as_str())
        })
        .collect();
    pb::ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        graph: Some(pb::GraphProto {
            name: graph.name.clone(),
            node: nodes,
            initializer,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::tract_backend::{winograd, winograd_tail, TractBackend};
    use crate::infer::Backend;
    use ndarray::{Array2, Array4};

    /// Channels of the input and of each convolution's output.
    const CHANNELS: [usize; 4] = [3, 8, 12, 16];

    /// Deterministic weights `[OC, C, 3, 3]` and bias `[OC]` of convolution `k`.
    fn weights(k: usize) -> (Vec<f32>, Vec<f32>) {
        let (c, oc) = (CHANNELS[k], CHANNELS[k + 1]);
        let w = (0..oc * c * 9)
            .map(|i| (((i * 29 + k * 7) % 19) as f32 - 9.0) / 40.0)
            .collect();
        let b = (0..oc).map(|o| ((o + k) % 5) as f32 * 0.1 - 0.2).collect();
        (w, b)
    }

    /// NHWC `[N, 8, 8, 3]` → Transpose → three blocks of (Conv 3x3 padding 1, Relu, MaxPool 2x2):
    /// the first on 8x8 maps, the second on 4x4 (im2col form in the tail), the third on 2x2 (dense
    /// form) → Flatten to `[N, 16]`. With `leak`, the first convolution's output (after its Relu) is a
    /// second graph output: used after the cut. With `mirror`, as test-time augmentation: the images
    /// and their mirrors (Slice with step -1 along W) are concatenated into a batch of `2N`, whose
    /// output is split in halves and averaged.
    fn model(leak: bool, mirror: bool) -> pb::ModelProto {
        let mut initializer = Vec::new();
        let mut nodes = Vec::new();
        let mut input = "x";
        if mirror {
            initializer.extend([
                i64_tensor("m.starts", &[-1]),
                i64_tensor("m.ends", &[i64::MIN]),
                i64_tensor("m.axes", &[2]),
                i64_tensor("m.steps", &[-1]),
                f32_tensor("half", &[], &[0.5]),
            ]);
            nodes.push(node(
                "Slice",
                "mirror",
                &["x", "m.starts", "m.ends", "m.axes", "m.steps"],
                "xm",
                vec![],
            ));
            nodes.push(node(
                "Concat",
                "both",
                &["x", "xm"],
                "xx",
                vec![attr_int("axis", 0)],
            ));
            input = "xx";
        }
        nodes.push(node(
            "Transpose",
            "t",
            &[input],
            "x0",
            vec![attr_ints("perm", &[0, 3, 1, 2])],
        ));
        for k in 0..3 {
            let (w, b) = weights(k);
            let (c, oc) = (CHANNELS[k], CHANNELS[k + 1]);
            initializer.push(f32_tensor(&format!("w{k}"), &[oc, c, 3, 3], &w));
            initializer.push(f32_tensor(&format!("b{k}"), &[oc], &b));
            nodes.push(node(
                "Conv",
                &format!("conv{k}"),
                &[&format!("x{k}"), &format!("w{k}"), &format!("b{k}")],
                &format!("c{k}"),
                vec![
                    attr_ints("kernel_shape", &[3, 3]),
                    attr_ints("pads", &[1, 1, 1, 1]),
                ],
            ));
            nodes.push(node(
                "Relu",
                &format!("relu{k}"),
                &[&format!("c{k}")],
                &format!("r{k}"),
                vec![],
            ));
            nodes.push(node(
                "MaxPool",
                &format!("pool{k}"),
                &[&format!("r{k}")],
                &format!("x{}", k + 1),
                vec![
                    attr_ints("kernel_shape", &[2, 2]),
                    attr_ints("strides", &[2, 2]),
                ],
            ));
        }
        if mirror {
            nodes.push(node("Flatten", "f", &["x3"], "yy", vec![]));
            let mut halves = node("Split", "halves", &["yy"], "y0", vec![attr_int("axis", 0)]);
            halves.output.push("y1".into());
            nodes.push(halves);
            nodes.push(node("Add", "sum", &["y0", "y1"], "sum", vec![]));
            nodes.push(node("Mul", "mean", &["sum", "half"], "y", vec![]));
        } else {
            nodes.push(node("Flatten", "f", &["x3"], "y", vec![]));
        }
        let mut output = vec![value_info("y", &[None, Some(16)], "")];
        if leak {
            output.push(value_info("r0", &[None, Some(8), Some(8), Some(8)], ""));
        }
        let graph = pb::GraphProto {
            name: "blocks".into(),
            node: nodes,
            initializer,
            input: vec![value_info("x", &[None, Some(8), Some(8), Some(3)], "")],
            output,
            ..Default::default()
        };
        crate::onnx::build::model(17, graph)
    }

    /// The three blocks by their definitions, in f64: `[N, 16]`.
    fn naive(x: &Array4<f32>) -> Array2<f32> {
        let n = x.shape()[0];
        let mut map =
            Array4::from_shape_fn((n, 3, 8, 8), |(b, c, y, xx)| f64::from(x[[b, y, xx, c]]));
        for k in 0..3 {
            let (w, bias) = weights(k);
            let (c, oc, side) = (CHANNELS[k], CHANNELS[k + 1], map.shape()[2]);
            let conv = Array4::from_shape_fn((n, oc, side, side), |(b, o, y, xx)| {
                let mut sum = f64::from(bias[o]);
                for i in 0..c {
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let (iy, ix) = (y + dy, xx + dx);
                            if (1..=side).contains(&iy) && (1..=side).contains(&ix) {
                                sum += f64::from(w[((o * c + i) * 3 + dy) * 3 + dx])
                                    * map[[b, i, iy - 1, ix - 1]];
                            }
                        }
                    }
                }
                sum.max(0.0)
            });
            map = Array4::from_shape_fn((n, oc, side / 2, side / 2), |(b, o, y, xx)| {
                let at = |dy: usize, dx: usize| conv[[b, o, 2 * y + dy, 2 * xx + dx]];
                at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1))
            });
        }
        Array2::from_shape_fn((n, 16), |(b, o)| map[[b, o, 0, 0]] as f32)
    }

    /// [`split`] of `proto`, parsed by tract.
    fn split_of(proto: &pb::ModelProto) -> TractResult<Option<Split>> {
        let parsed = tract_onnx::onnx().parse(proto, None)?;
        let shapes = one_image_shapes(proto, &parsed)?.expect("one-image shapes");
        Ok(split(proto, &shapes, &|_, _| None))
    }

    /// 70 deterministic images `[70, 8, 8, 3]` (NHWC) with values in [-1, 1].
    fn images() -> Array4<f32> {
        Array4::from_shape_fn((70, 8, 8, 3), |(n, y, x, c)| {
            ((n * 13 + y * 7 + x * 3 + c * 5) % 23) as f32 / 11.0 - 1.0
        })
    }

    /// The tract backend runs `proto` split, and gives `want` (`[70, 16]`) within 1e-4 on the 70
    /// images `x` on one thread (the tail's chunks of 64 and 6) and on the first 5 over 2 threads.
    fn assert_tail_matches(proto: &pb::ModelProto, x: &Array4<f32>, want: &Array2<f32>) {
        for (images, threads) in [(70, 1), (5, 2)] {
            let mut backend = TractBackend::open_proto(proto, "blocks", threads).unwrap();
            assert!(backend.tail.is_some(), "the backend runs the split model");
            let got = backend
                .run(x.slice(ndarray::s![..images, .., .., ..]))
                .unwrap();
            let want = want.slice(ndarray::s![..images, ..]);
            assert_eq!(got.dim(), want.dim());
            let worst = (&got - &want).iter().fold(0f32, |m, d| m.max(d.abs()));
            assert!(
                worst <= 1e-4,
                "{images} images on {threads} thread(s): off by {worst}"
            );
        }
    }

    /// The model splits before its 4x4 block, both small-map convolutions are rewritten, and the
    /// split backend gives the blocks' definition on 70 images (the tail's chunks of 64 and 6) and
    /// on 5 split over 2 threads; a tensor of the head used after the cut keeps the model whole.
    #[test]
    fn the_batched_tail_computes_the_convolutions() {
        let proto = model(false, false);
        let parts = split_of(&proto).unwrap().expect("a small map to batch");
        assert_eq!(parts.rows, 1);
        let ops = |m: &pb::ModelProto, op: &str| {
            let graph = m.graph.as_ref().unwrap();
            graph.node.iter().filter(|n| n.op_type == op).count()
        };
        assert_eq!(
            (ops(&parts.tail, "Conv"), ops(&parts.tail, "MatMul")),
            (0, 2),
            "both small-map convolutions as matrix products"
        );
        assert_eq!(ops(&parts.tail, "Gather"), 1, "one in im2col form");
        let head = parts.head.graph.as_ref().unwrap();
        assert_eq!(head.output[0].name, "x1");
        assert_eq!(head.node.len(), 4, "Transpose and the first block");
        assert!(split_of(&model(true, false)).unwrap().is_none());
        let x = images();
        assert_tail_matches(&proto, &x, &naive(&x));
    }

    /// `parts.head` and then `tail`, each planned by tract for any number of images, on all of `x`
    /// at once.
    fn run_parts(parts: &Split, tail: &pb::ModelProto, x: &Array4<f32>) -> Array2<f32> {
        let run = |m: &pb::ModelProto, input: Tensor| -> Tensor {
            let plan = tract_onnx::onnx()
                .model_for_proto_model(m)
                .unwrap()
                .into_optimized()
                .unwrap()
                .into_runnable()
                .unwrap();
            let mut out = plan.run(tvec!(input.into())).unwrap();
            out.remove(0).into_tensor()
        };
        let cut = run(&parts.head, x.clone().into_tensor());
        let y = run(tail, cut);
        y.to_plain_array_view::<f32>()
            .unwrap()
            .into_dimensionality::<ndarray::Ix2>()
            .unwrap()
            .to_owned()
    }

    /// With the Winograd threshold at one input channel, the tail computes its 4x4-map
    /// convolution by F(4x4, 3x3) (no im2col Gather; the 2x2 map keeps its dense form) and its
    /// narrow twin in im2col form, and head then either tail give the blocks' definition within
    /// 1e-4 on 70 images, and on a mirrored batch. At the default threshold there is no twin.
    #[test]
    fn the_batched_tail_computes_4x4_maps_by_winograd() {
        let x = images();
        let mut mirrored = x.clone();
        mirrored.invert_axis(ndarray::Axis(2));
        let mirrored = mirrored.as_standard_layout().to_owned();
        for mirror in [false, true] {
            let proto = model(false, mirror);
            let parsed = tract_onnx::onnx().parse(&proto, None).unwrap();
            let shapes = one_image_shapes(&proto, &parsed).unwrap().unwrap();
            let winograd = |n: &pb::NodeProto, k: &SameConv| {
                winograd::fits_small_map(k, 1).then(|| winograd::small_map(n, k))
            };
            let parts = split(&proto, &shapes, &winograd).expect("a small map to batch");
            let tail = parts.tail.graph.as_ref().unwrap();
            let count = |op: &str| tail.node.iter().filter(|n| n.op_type == op).count();
            assert_eq!((count("Conv"), count("Gather")), (0, 0));
            assert!(tail.node.iter().any(|n| n.name.contains("/winograd/")));
            let want = if mirror {
                (naive(&x) + naive(&mirrored)) / 2.0
            } else {
                naive(&x)
            };
            let narrow = parts.narrow_tail.as_ref().expect("a tail without Winograd");
            let narrow_graph = narrow.graph.as_ref().unwrap();
            assert!(narrow_graph
                .node
                .iter()
                .all(|n| !n.name.contains("/winograd/")));
            assert_eq!(
                narrow_graph
                    .node
                    .iter()
                    .filter(|n| n.op_type == "Gather")
                    .count(),
                1
            );
            for (which, tail) in [("winograd", &parts.tail), ("narrow", narrow)] {
                let got = run_parts(&parts, tail, &x);
                assert_eq!(got.dim(), want.dim());
                let worst = (&got - &want).iter().fold(0f32, |m, d| m.max(d.abs()));
                assert!(
                    worst <= 1e-4,
                    "{which} tail, mirror {mirror}: off by {worst}"
                );
            }
            let default = split(&proto, &shapes, &winograd_tail).unwrap();
            let graph = default.tail.graph.as_ref().unwrap();
            assert!(
                graph.node.iter().all(|n| !n.name.contains("/winograd/")),
                "8 input channels: below the default threshold"
            );
            assert!(default.narrow_tail.is_none());
        }
    }

    /// A test-time augmentation model (two rows per image into the tail, whose Split takes the
    /// halves) gives the mean of the blocks on the images and on their mirrors, on 70 images and on
    /// 5 over 2 threads.
    #[test]
    fn the_batched_tail_keeps_the_halves_of_a_mirrored_batch() {
        let proto = model(false, true);
        let parts = split_of(&proto).unwrap().expect("a small map to batch");
        assert_eq!(parts.rows, 2);
        let x = images();
        let mut mirrored = x.clone();
        mirrored.invert_axis(ndarray::Axis(2));
        let want = (naive(&x) + naive(&mirrored.as_standard_layout().to_owned())) / 2.0;
        assert_tail_matches(&proto, &x, &want);
    }
}
