//! Winograd's minimal filtering for the 3x3 convolutions of wide layers on large maps.
//!
//! tract computes a 3x3 convolution as one matrix product of `9 * C` multiply-adds per output
//! value. Winograd's F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural
//! Networks", 2016) computes each 4x4 tile of outputs from the 6x6 tile of inputs around it with 36
//! products per channel pair instead of 144: the convolution becomes 36 matrix products of
//! `[OC, C] x [C, tiles]`, 4 times fewer multiply-adds, plus an input and an output transform that
//! cost in proportion to `C + OC` rather than `C * OC`. [`rewrite`] writes that with standard
//! operators, for the tract backend's plans only (the exported file does not change):
//!
//! 1. `Pad` by one on every side, then `Reshape` to `[R * C, 1, H + 2, W + 2]`;
//! 2. the input transform `Bᵀ d B` of every 6x6 tile `d` (stride 4) as a `Conv` with 36 fixed 6x6
//!    kernels: `[R * C, 36, H / 4, W / 4]`, then `Reshape` and `Transpose` to `[R, 36, C, tiles]`;
//! 3. `MatMul` by the transformed weights `G g Gᵀ` (`[36, OC, C]`, computed here in f64);
//! 4. the output transform `Aᵀ m A` as a `MatMul` by `[16, 36]`, then `Reshape`, `Transpose` and
//!    `DepthToSpace` (CRD) back to `[R, OC, H, W]`, and the bias added.
//!
//! The transforms are memory-bound, so the rewrite pays on layers with many channels only. On the
//! AVX-512 VNNI EPYC, one thread (`examples/tract_profile.rs` on VGG16's base), the base with every
//! convolution of at least 128 input channels on a map of at least 16x16 rewritten took 0.66-0.72x
//! the time of the plain base at 384 pixels and at 224, 0.75-0.78x at 128, about 0.95x at 64 and
//! the same at 32; with block 1's 64-channel layers rewritten too it was slower, and F(2x2, 3x3)
//! gained about half as much (docs/RESULTS.md, 2026-12-05 20:05 entry). The sums come in another
//! order and the transforms' entries reach 8 and 1/24: the outputs agree with the plain
//! convolution's to about 2e-6 of their largest value.
//!
//! [`small_map`] is the second form, for the batched tail of [`super::split`]: on a 4x4 map (one
//! tile) the per-image form would multiply each image's single tile by the layer's 36 transformed
//! weight matrices; there the tiles of all the chunk's images are the columns of one product per
//! point, and the transforms are plain matrix products over the map's positions.

use super::split::{initializers, node_, rewrite_prefix, same_conv, sub_model, SameConv, Shapes};
use crate::onnx::build::{attr_int, attr_ints, attr_string, f32_tensor, i64_tensor, node};
use tract_onnx::pb;

/// Fewest input channels of a convolution [`rewrite`] rewrites (VGG16's from `block2_conv2` on).
pub const MIN_CHANNELS: usize = 128;

/// Fewest map positions (height x width) of a convolution [`rewrite`] rewrites: 16x16, VGG16's
/// block-4 maps at 128 pixels.
pub const MIN_MAP: usize = 256;

/// Outputs per tile side (`m` of F(m x m, 3x3)).
const M: usize = 4;

/// Inputs per tile side: `m + 2`.
const TILE: usize = M + 2;

/// Points of a tile's transform, one matrix product each: `(m + 2)²`.
const POINTS: usize = TILE * TILE;

/// `Bᵀ`, the input transform of F(4x4, 3x3) (interpolation points 0, ±1, ±2 and infinity; Lavin
/// and Gray, section 5.2).
const BT: [[f64; TILE]; TILE] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];

/// `G`, the weight transform of F(4x4, 3x3).
const G: [[f64; 3]; TILE] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `Aᵀ`, the output transform of F(4x4, 3x3).
const AT: [[f64; TILE]; M] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// `model` with every convolution that has at least [`MIN_CHANNELS`] input channels on a map of
/// at least [`MIN_MAP`] positions, a 3x3 kernel (group 1, stride 1, dilation 1, padding 1), map
/// sides that are multiples of 4 and float32 weights in the file, computed by Winograd's
/// F(4x4, 3x3); `None` when no convolution qualifies. `shapes` are the model's tensor shapes with
/// one image ([`super::split::one_image_shapes`]); the rewritten graph takes any number of rows.
pub fn rewrite(model: &pb::ModelProto, shapes: &Shapes) -> Option<pb::ModelProto> {
    rewrite_with(model, shapes, MIN_CHANNELS, MIN_MAP)
}

/// [`rewrite`] with the thresholds given.
fn rewrite_with(
    model: &pb::ModelProto,
    shapes: &Shapes,
    min_channels: usize,
    min_map: usize,
) -> Option<pb::ModelProto> {
    let keep = |k: &SameConv| {
        (k.kh, k.kw) == (3, 3)
            && k.c >= min_channels
            && k.h * k.w >= min_map
            && k.h.is_multiple_of(M)
            && k.w.is_multiple_of(M)
    };
    rewrite_convs(model, shapes, keep, winograd)
}

/// Nodes and initializers that compute a convolution ([`winograd`] or [`small_map`]).
type Form = fn(&pb::NodeProto, &SameConv) -> (Vec<pb::NodeProto>, Vec<pb::TensorProto>);

/// `model` with every convolution that `keep` accepts ([`same_conv`], with `shapes` as in
/// [`rewrite`]) computed by `form`; `None` when there is none.
fn rewrite_convs(
    model: &pb::ModelProto,
    shapes: &Shapes,
    keep: impl Fn(&SameConv) -> bool,
    form: Form,
) -> Option<pb::ModelProto> {
    let graph = model.graph.as_ref()?;
    let initializers = initializers(graph);
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut extra = Vec::new();
    for n in &graph.node {
        let input = n.input.first().and_then(|i| shapes.get(i)).cloned();
        match same_conv(n, &initializers, input, &keep) {
            Some(k) => {
                let (more, tensors) = form(n, &k);
                nodes.extend(more);
                extra.extend(tensors);
            }
            None => nodes.push(n.clone()),
        }
    }
    if extra.is_empty() {
        return None;
    }
    // The replaced convolutions' weights and biases go: only what the nodes use is kept.
    Some(sub_model(
        model,
        graph,
        nodes,
        graph.input.clone(),
        graph.output.clone(),
        extra,
    ))
}

/// The nodes and initializers that compute `conv`'s output `[R, OC, H, W]` from its input
/// `[R, C, H, W]` by F(4x4, 3x3).
fn winograd(conv: &pb::NodeProto, k: &SameConv) -> (Vec<pb::NodeProto>, Vec<pb::TensorProto>) {
    let p = rewrite_prefix(conv, "winograd");
    let name = |suffix: &str| format!("{p}{suffix}");
    let (c, oc, h, w) = (k.c, k.oc, k.h, k.w);
    let (th, tw) = (h / M, w / M);
    let tiles = th * tw;
    // Kernel a * TILE + b of the input transform: Bᵀ[a][u] * Bᵀ[b][v] at (u, v).
    let input_kernels: Vec<f32> = (0..POINTS)
        .flat_map(|ab| (0..POINTS).map(move |uv| (ab, uv)))
        .map(|(ab, uv)| (BT[ab / TILE][uv / TILE] * BT[ab % TILE][uv % TILE]) as f32)
        .collect();
    let u = transformed_weights(k);
    // Row p * M + q of the output transform: Aᵀ[p][a] * Aᵀ[q][b] in column a * TILE + b.
    let output_matrix: Vec<f32> = (0..M * M)
        .flat_map(|pq| (0..POINTS).map(move |ab| (pq, ab)))
        .map(|(pq, ab)| (AT[pq / M][ab / TILE] * AT[pq % M][ab % TILE]) as f32)
        .collect();
    // A shape whose first dimension (rows) is left to the data.
    let dims = |d: &[usize]| -> Vec<i64> {
        std::iter::once(-1)
            .chain(d.iter().map(|&v| v as i64))
            .collect()
    };
    let tensors = vec![
        i64_tensor(&name("pads"), &[0, 0, 1, 1, 0, 0, 1, 1]),
        i64_tensor(&name("planes_shape"), &dims(&[1, h + 2, w + 2])),
        f32_tensor(
            &name("input_transform"),
            &[POINTS, 1, TILE, TILE],
            &input_kernels,
        ),
        i64_tensor(&name("tiles_shape"), &dims(&[c, POINTS, tiles])),
        f32_tensor(&name("weight"), &[POINTS, oc, c], &u),
        i64_tensor(&name("flat_shape"), &dims(&[POINTS, oc * tiles])),
        f32_tensor(&name("output_transform"), &[M * M, POINTS], &output_matrix),
        i64_tensor(&name("blocks_shape"), &dims(&[M * M, oc, tiles])),
        i64_tensor(&name("depth_shape"), &dims(&[oc * M * M, th, tw])),
        f32_tensor(&name("bias"), &[oc, 1, 1], &k.bias),
    ];
    let swap = || vec![attr_ints("perm", &[0, 2, 1, 3])];
    let (tile, m) = (TILE as i64, M as i64);
    let chain: Vec<Step> = vec![
        ("Reshape", "planes", vec!["padded", "planes_shape"], vec![]),
        (
            "Conv",
            "transformed",
            vec!["planes", "input_transform"],
            vec![
                attr_ints("kernel_shape", &[tile, tile]),
                attr_ints("strides", &[m, m]),
            ],
        ),
        (
            "Reshape",
            "tiles",
            vec!["transformed", "tiles_shape"],
            vec![],
        ),
        ("Transpose", "by_point", vec!["tiles"], swap()),
        ("MatMul", "products", vec!["weight", "by_point"], vec![]),
        ("Reshape", "flat", vec!["products", "flat_shape"], vec![]),
        (
            "MatMul",
            "outputs",
            vec!["output_transform", "flat"],
            vec![],
        ),
        ("Reshape", "blocks", vec!["outputs", "blocks_shape"], vec![]),
        ("Transpose", "by_channel", vec!["blocks"], swap()),
        (
            "Reshape",
            "depth",
            vec!["by_channel", "depth_shape"],
            vec![],
        ),
        (
            "DepthToSpace",
            "map",
            vec!["depth"],
            vec![attr_int("blocksize", m), attr_string("mode", "CRD")],
        ),
    ];
    let mut nodes = vec![node_(
        "Pad",
        &name("padded"),
        &[&conv.input[0], &name("pads")],
        vec![],
    )];
    nodes.extend(chain_nodes(&p, chain));
    nodes.push(node(
        "Add",
        &name("biased"),
        &[&name("map"), &name("bias")],
        &conv.output[0],
        vec![],
    ));
    (nodes, tensors)
}

/// One node of a rewrite: operator, output, inputs, attributes, every name but the prefix.
type Step<'a> = (&'a str, &'a str, Vec<&'a str>, Vec<pb::AttributeProto>);

/// The nodes of `chain`, with `prefix` before every name: each output is named as its node, and
/// every input is one of the rewrite's tensors.
fn chain_nodes(prefix: &str, chain: Vec<Step>) -> Vec<pb::NodeProto> {
    let name = |suffix: &str| format!("{prefix}{suffix}");
    chain
        .into_iter()
        .map(|(op, out, inputs, attributes)| {
            let inputs: Vec<String> = inputs.into_iter().map(name).collect();
            let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            node_(op, &name(out), &inputs, attributes)
        })
        .collect()
}

/// `U[a * TILE + b][o][i] = (G g Gᵀ)[a][b]` for the 3x3 kernel `g` of output `o` and input `i`:
/// the weights of the 36 products, `[36, OC, C]`, computed in f64.
fn transformed_weights(k: &SameConv) -> Vec<f32> {
    let (c, oc) = (k.c, k.oc);
    let mut u = vec![0f32; POINTS * oc * c];
    for o in 0..oc {
        for i in 0..c {
            let g = |y: usize, x: usize| f64::from(k.weight[((o * c + i) * 3 + y) * 3 + x]);
            for ab in 0..POINTS {
                let (ga, gb) = (G[ab / TILE], G[ab % TILE]);
                let sum: f64 = (0..9)
                    .map(|t| ga[t / 3] * g(t / 3, t % 3) * gb[t % 3])
                    .sum();
                u[(ab * oc + o) * c + i] = sum as f32;
            }
        }
    }
    u
}

/// Largest map (positions) whose convolutions the batched tail computes by [`small_map`]: one
/// 4x4 tile (VGG16's block-4 maps at 32x32 pixels). [`small_map`] takes maps of several tiles
/// too, but its transforms are matrices of `36 * tiles x positions` entries, which grow with the
/// square of the map, and on the Zen 5 EPYC a tail that began at VGG16's 8x8 block-3 maps (four
/// tiles) ran 238 images/s on one thread against 271 with block 3 left in the single-image head
/// (docs/RESULTS.md).
pub const MAX_SMALL_MAP: usize = M * M;

/// Whether the batched tail computes `k` by [`small_map`]: a 3x3 kernel on a map of at most
/// [`MAX_SMALL_MAP`] positions whose sides are multiples of 4, with at least `min_channels` input
/// channels ([`MIN_CHANNELS`] in `pipe`'s plans).
pub fn fits_small_map(k: &SameConv, min_channels: usize) -> bool {
    (k.kh, k.kw) == (3, 3)
        && k.c >= min_channels
        && k.h * k.w <= MAX_SMALL_MAP
        && k.h.is_multiple_of(M)
        && k.w.is_multiple_of(M)
}

/// The nodes and initializers that compute `conv`'s output `[N, OC, H, W]` from its input
/// `[N, C, H, W]` by F(4x4, 3x3), in the form for a batched tail's small maps
/// ([`super::split`]), where the images of a batch share every matrix product:
///
/// 1. the map's `H * W` positions become the rows (`[H * W, C * N]`, one `Transpose`), and the
///    input transform of every tile is one `MatMul` by `[36 * tiles, H * W]` (each row is a
///    point of a tile, its padding's taps left out): `[36, tiles, C, N]`;
/// 2. one product per point and tile over all images: `[OC, C] x [C, N]`, the weights
///    `[36, 1, OC, C]` broadcast over the tiles;
/// 3. the bias added at point (1, 1) of every tile (column 1 of `Aᵀ` is all ones, so it reaches
///    each output once), and the output transform as one `MatMul` by `[H * W, 36 * tiles]`,
///    then back to `[N, OC, H, W]`.
///
/// The per-row form [`rewrite`] writes reads each layer's transformed weights once per image
/// for a product a few columns wide (one tile on a 4x4 map); here they are read once per batch.
pub fn small_map(conv: &pb::NodeProto, k: &SameConv) -> (Vec<pb::NodeProto>, Vec<pb::TensorProto>) {
    let p = rewrite_prefix(conv, "winograd");
    let name = |suffix: &str| format!("{p}{suffix}");
    let (c, oc, h, w) = (k.c, k.oc, k.h, k.w);
    let (tw, positions) = (w / M, h * w);
    let tiles = (h / M) * tw;
    // Where position (y, x) of the map falls in the window of inputs of tile t (6x6, from one row
    // and one column before the tile's 4x4 outputs), if it does.
    let window = |t: usize, y: usize, x: usize| -> Option<(usize, usize)> {
        let (y0, x0) = (M * (t / tw), M * (t % tw));
        let (u, v) = ((y + 1).checked_sub(y0)?, (x + 1).checked_sub(x0)?);
        (u < TILE && v < TILE).then_some((u, v))
    };
    // Row ab * tiles + t, column y * W + x: Bᵀ[a][u] * Bᵀ[b][v] for the position's place (u, v)
    // in tile t's window.
    let mut input_matrix = vec![0f32; POINTS * tiles * positions];
    // Row y * W + x, column ab * tiles + t: Aᵀ[p][a] * Aᵀ[q][b] for the position's place (p, q)
    // in its own tile t.
    let mut output_matrix = vec![0f32; positions * POINTS * tiles];
    for ab in 0..POINTS {
        let (a, b) = (ab / TILE, ab % TILE);
        for t in 0..tiles {
            for (y, x) in (0..h).flat_map(|y| (0..w).map(move |x| (y, x))) {
                let pos = y * w + x;
                if let Some((u, v)) = window(t, y, x) {
                    input_matrix[(ab * tiles + t) * positions + pos] = (BT[a][u] * BT[b][v]) as f32;
                }
                let (ty, tx) = (y / M, x / M);
                if ty * tw + tx == t {
                    let (pp, q) = (y % M, x % M);
                    output_matrix[pos * POINTS * tiles + ab * tiles + t] =
                        (AT[pp][a] * AT[q][b]) as f32;
                }
            }
        }
    }
    let mut bias = vec![0f32; POINTS * tiles * oc];
    let at_ones = TILE + 1;
    for t in 0..tiles {
        let row = (at_ones * tiles + t) * oc;
        bias[row..row + oc].copy_from_slice(&k.bias);
    }
    let [c_, oc_, h_, w_, n_pos, n_points, n_tiles] =
        [c, oc, h, w, positions, POINTS, tiles].map(|v| v as i64);
    let tensors = vec![
        i64_tensor(&name("flat_in_shape"), &[-1, c_, n_pos]),
        i64_tensor(&name("rows_shape"), &[n_pos, -1]),
        f32_tensor(
            &name("input_transform"),
            &[POINTS * tiles, positions],
            &input_matrix,
        ),
        i64_tensor(&name("columns_shape"), &[n_points, n_tiles, c_, -1]),
        f32_tensor(
            &name("weight"),
            &[POINTS, 1, oc, c],
            &transformed_weights(k),
        ),
        f32_tensor(&name("bias"), &[POINTS, tiles, oc, 1], &bias),
        i64_tensor(&name("flat_shape"), &[n_points * n_tiles, -1]),
        f32_tensor(
            &name("output_transform"),
            &[positions, POINTS * tiles],
            &output_matrix,
        ),
        i64_tensor(&name("grouped_shape"), &[n_pos, oc_, -1]),
        i64_tensor(&name("map_shape"), &[-1, oc_, h_, w_]),
    ];
    // [N, C, H * W] <-> [H * W, C, N].
    let swap = || vec![attr_ints("perm", &[2, 1, 0])];
    let chain: Vec<Step> = vec![
        ("Transpose", "by_position", vec!["flat_in"], swap()),
        ("Reshape", "rows", vec!["by_position", "rows_shape"], vec![]),
        (
            "MatMul",
            "transformed",
            vec!["input_transform", "rows"],
            vec![],
        ),
        (
            "Reshape",
            "columns",
            vec!["transformed", "columns_shape"],
            vec![],
        ),
        ("MatMul", "products", vec!["weight", "columns"], vec![]),
        ("Add", "biased", vec!["products", "bias"], vec![]),
        ("Reshape", "flat", vec!["biased", "flat_shape"], vec![]),
        (
            "MatMul",
            "outputs",
            vec!["output_transform", "flat"],
            vec![],
        ),
        (
            "Reshape",
            "grouped",
            vec!["outputs", "grouped_shape"],
            vec![],
        ),
        ("Transpose", "by_image", vec!["grouped"], swap()),
    ];
    let mut nodes = vec![node_(
        "Reshape",
        &name("flat_in"),
        &[&conv.input[0], &name("flat_in_shape")],
        vec![],
    )];
    nodes.extend(chain_nodes(&p, chain));
    nodes.push(node(
        "Reshape",
        &name("map"),
        &[&name("by_image"), &name("map_shape")],
        &conv.output[0],
        vec![],
    ));
    (nodes, tensors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::tract_backend::split::one_image_shapes;
    use ndarray::Array4;
    use tract_onnx::prelude::*;

    /// Channels of the input and of each convolution's output.
    const CHANNELS: [usize; 3] = [4, 5, 3];

    /// Deterministic weights `[OC, C, 3, 3]` and bias `[OC]` of convolution `k`.
    fn weights(k: usize) -> (Vec<f32>, Vec<f32>) {
        let (c, oc) = (CHANNELS[k], CHANNELS[k + 1]);
        let w = (0..oc * c * 9)
            .map(|i| (((i * 31 + k * 5) % 17) as f32 - 8.0) / 20.0)
            .collect();
        let b = (0..oc)
            .map(|o| ((o + 2 * k) % 4) as f32 * 0.25 - 0.3)
            .collect();
        (w, b)
    }

    /// `[N, 4, h, w]` → Conv 3x3 (padding 1) → Relu → Conv 3x3 (padding 1) → `[N, 3, h, w]`.
    fn model(h: usize, w: usize) -> pb::ModelProto {
        let mut initializer = Vec::new();
        let mut nodes = Vec::new();
        for k in 0..2 {
            let (wk, bk) = weights(k);
            initializer.push(f32_tensor(
                &format!("w{k}"),
                &[CHANNELS[k + 1], CHANNELS[k], 3, 3],
                &wk,
            ));
            initializer.push(f32_tensor(&format!("b{k}"), &[CHANNELS[k + 1]], &bk));
            let input = if k == 0 {
                "x".to_string()
            } else {
                "r0".to_string()
            };
            nodes.push(node(
                "Conv",
                &format!("conv{k}"),
                &[&input, &format!("w{k}"), &format!("b{k}")],
                &format!("c{k}"),
                vec![
                    attr_ints("kernel_shape", &[3, 3]),
                    attr_ints("pads", &[1, 1, 1, 1]),
                ],
            ));
        }
        nodes.insert(1, node("Relu", "relu0", &["c0"], "r0", vec![]));
        let dims = |c: usize| [None, Some(c as i64), Some(h as i64), Some(w as i64)];
        let graph = pb::GraphProto {
            name: "convs".into(),
            node: nodes,
            initializer,
            input: vec![crate::onnx::build::value_info("x", &dims(4), "")],
            output: vec![crate::onnx::build::value_info("c1", &dims(3), "")],
            ..Default::default()
        };
        crate::onnx::build::model(17, graph)
    }

    /// The two convolutions by their definition, in f64.
    fn naive(x: &Array4<f32>) -> Array4<f32> {
        let (n, _, h, w) = x.dim();
        let mut map = x.mapv(f64::from);
        for k in 0..2 {
            let (wk, bk) = weights(k);
            let (c, oc) = (CHANNELS[k], CHANNELS[k + 1]);
            map = Array4::from_shape_fn((n, oc, h, w), |(b, o, y, xx)| {
                let mut sum = f64::from(bk[o]);
                for i in 0..c {
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let (iy, ix) = (y + dy, xx + dx);
                            if (1..=h).contains(&iy) && (1..=w).contains(&ix) {
                                sum += f64::from(wk[((o * c + i) * 3 + dy) * 3 + dx])
                                    * map[[b, i, iy - 1, ix - 1]];
                            }
                        }
                    }
                }
                if k == 0 {
                    sum.max(0.0)
                } else {
                    sum
                }
            });
        }
        map.mapv(|v| v as f32)
    }

    fn shapes(proto: &pb::ModelProto) -> Shapes {
        let parsed = tract_onnx::onnx().parse(proto, None).unwrap();
        one_image_shapes(proto, &parsed)
            .unwrap()
            .expect("one-image shapes")
    }

    /// [`small_map`] in place of both convolutions, on maps of one tile (4x4), two (4x8) and four
    /// (8x8): no 3x3 kernel is left, and tract runs the graph, planned for any number of images, on
    /// 1 and on 70 images to the convolutions' definition within 1e-4.
    #[test]
    fn small_map_computes_the_convolutions_over_a_batch() {
        for (h, w) in [(4, 4), (4, 8), (8, 8)] {
            let proto = model(h, w);
            // Every map of whole tiles, past [`MAX_SMALL_MAP`] too: the form takes any number.
            let whole_tiles = |k: &SameConv| k.h.is_multiple_of(M) && k.w.is_multiple_of(M);
            let fast = rewrite_convs(&proto, &shapes(&proto), whole_tiles, small_map)
                .expect("both convolutions qualify");
            let graph = fast.graph.as_ref().unwrap();
            assert_eq!(graph.node.iter().filter(|n| n.op_type == "Conv").count(), 0);
            let plan = tract_onnx::onnx()
                .model_for_proto_model(&fast)
                .unwrap()
                .into_optimized()
                .unwrap()
                .into_runnable()
                .unwrap();
            for n in [1, 70] {
                let x = Array4::from_shape_fn((n, 4, h, w), |(b, c, y, xx)| {
                    ((b * 11 + c * 7 + y * 5 + xx * 3) % 19) as f32 / 9.0 - 1.0
                });
                let got = plan.run(tvec!(x.clone().into_tensor().into())).unwrap();
                let got = got[0]
                    .to_plain_array_view::<f32>()
                    .unwrap()
                    .into_dimensionality::<ndarray::Ix4>()
                    .unwrap();
                let want = naive(&x);
                assert_eq!(got.dim(), want.dim());
                let worst = (&got - &want).iter().fold(0f32, |m, d| m.max(d.abs()));
                assert!(worst <= 1e-4, "{h}x{w}, {n} image(s): off by {worst}");
            }
        }
        let odd = model(8, 8);
        let s = shapes(&odd);
        let inits = initializers(odd.graph.as_ref().unwrap());
        let first = &odd.graph.as_ref().unwrap().node[0];
        let input = s.get(&first.input[0]).cloned();
        assert!(
            same_conv(first, &inits, input, |k| fits_small_map(k, 1)).is_none(),
            "64 positions: more than one tile"
        );
    }

    /// Both convolutions of an 8x12 map are rewritten (no 3x3 kernel and no original weight is
    /// left), and tract runs the rewritten graph on 3 images to the convolutions' definition within
    /// 1e-4; the thresholds, a map side that is not a multiple of 4 and a single-row batch are
    /// honoured.
    #[test]
    fn winograd_computes_the_convolutions() {
        let proto = model(8, 12);
        let s = shapes(&proto);
        let fast = rewrite_with(&proto, &s, 4, 96).expect("both convolutions qualify");
        let graph = fast.graph.as_ref().unwrap();
        let three_by_three = graph
            .node
            .iter()
            .filter(|n| n.op_type == "Conv")
            .filter(|n| {
                n.attribute
                    .iter()
                    .any(|a| a.name == "kernel_shape" && a.ints == [3, 3])
            })
            .count();
        assert_eq!(three_by_three, 0);
        assert!(graph
            .initializer
            .iter()
            .all(|t| !["w0", "w1", "b0", "b1"].contains(&t.name.as_str())));
        assert!(
            rewrite_with(&proto, &s, 6, 96).is_none(),
            "4 and 5 input channels"
        );
        assert!(rewrite_with(&proto, &s, 4, 97).is_none(), "96 positions");
        let odd = model(10, 12);
        assert!(
            rewrite_with(&odd, &shapes(&odd), 1, 1).is_none(),
            "10 rows: no whole tiles"
        );
        assert!(
            rewrite(&proto, &s).is_none(),
            "below the default thresholds"
        );
        for n in [1, 3] {
            let x = Array4::from_shape_fn((n, 4, 8, 12), |(b, c, y, xx)| {
                ((b * 11 + c * 7 + y * 5 + xx * 3) % 19) as f32 / 9.0 - 1.0
            });
            let plan = tract_onnx::onnx()
                .model_for_proto_model(&fast)
                .unwrap()
                .with_input_fact(0, f32::fact([n, 4, 8, 12]).into())
                .unwrap()
                .into_optimized()
                .unwrap()
                .into_runnable()
                .unwrap();
            let got = plan.run(tvec!(x.clone().into_tensor().into())).unwrap();
            let got = got[0]
                .to_plain_array_view::<f32>()
                .unwrap()
                .into_dimensionality::<ndarray::Ix4>()
                .unwrap();
            let want = naive(&x);
            assert_eq!(got.dim(), want.dim());
            let worst = (&got - &want).iter().fold(0f32, |m, d| m.max(d.abs()));
            assert!(worst <= 1e-4, "{n} image(s): off by {worst}");
        }
    }
}
