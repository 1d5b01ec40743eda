//! The tract backend: pure-Rust ONNX inference on the CPU.
//!
//! tract's own multithreaded executor parallelises inside each matrix product, which gains little on
//! this network's small late layers; splitting the batch across threads that each run the same
//! optimised plan (data parallelism) keeps every core busy instead.
//!
//! Each thread runs its images one at a time through a plan whose batch dimension is bound to 1.
//! With a concrete single-image shape tract computes each 3x3 convolution with its lazy im2col
//! (patches gathered as the matrix product reads them) instead of writing the whole im2col matrix
//! first; that matrix is most of the memory traffic at batch 256 (a third of the time at 32x32
//! pixels in `examples/tract_profile.rs`) and several GiB at 384x384. tract's direct spatial
//! convolution, which it would otherwise pick for the wide early layers of a single image, is turned
//! off: on the AVX-512 CPU where this was measured it did a 384x384 layer at 0.43x the rate of the
//! im2col path.
//!
//! Small late maps are the exception (`split`): from the first convolution on a map of at most 16
//! positions (VGG16's blocks 4 and 5 at 32x32 pixels), the model is cut, and each thread runs that
//! tail on its images together, each such convolution written as one matrix product over all of
//! them, so that a layer's weights are read once per [`TAIL_BATCH`] images instead of once per
//! image; there the wide 4x4-map convolutions (block 4) are computed by Winograd's F(4x4, 3x3),
//! except in chunks of fewer than [`split::WINOGRAD_MIN_ROWS`] rows. Wide layers on large maps are
//! the other exception (`winograd`): convolutions of at least 128 input channels on maps of at least
//! 16x16 positions (most of VGG16's at 128 pixels and more) are computed by Winograd's F(4x4, 3x3),
//! with 4 times fewer multiply-adds: at 384 pixels tract went from 0.54x ort's speed to 0.83x, and
//! at 32 pixels the tail's Winograd form took it from 0.53-0.55x to 0.63-0.66x on the Zen 5 EPYC.
//! docs/RESULTS.md has the figures.

use super::Backend;
use crate::error::{Error, Result};
use ndarray::{concatenate, Array2, ArrayD, ArrayView4, Axis, Ix2, Ix4};
use std::collections::HashMap;
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_data::knobs::KnobScope;

mod split;
mod winograd;

/// Images a thread runs together through a split model's batched tail ([`split`]).
const TAIL_BATCH: usize = 64;

/// A model loaded, optimised and planned by tract.
pub struct TractBackend {
    plan: Arc<TypedRunnableModel>,
    /// For a model split by [`split::split`]: `plan` is its single-image head and this its batched
    /// tail, which each thread runs on the head's outputs for its images, [`TAIL_BATCH`] at a time.
    tail: Option<Tail>,
    batch: BatchPlan,
    threads: usize,
}

/// The batched tail of a split model ([`split::Split`]), planned.
struct Tail {
    plan: Arc<TypedRunnableModel>,
    /// The tail without Winograd's form, for chunks of fewer than [`split::WINOGRAD_MIN_ROWS`]
    /// rows, when `plan` uses it.
    narrow: Option<Arc<TypedRunnableModel>>,
    /// Rows of the head's output per image.
    rows: usize,
}

/// How a plan takes a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BatchPlan {
    /// The model's batch dimension was symbolic and every other input dimension known: it is bound
    /// to 1 and batches run image by image, split over the threads.
    PerImage,
    /// The batch dimension is symbolic (other dimensions too): batches are split over the threads.
    Symbolic,
    /// The model was exported for one batch size (or has several inputs): batches run whole.
    Fixed,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "tract",
        message: format!("{e:#}"),
    }
}

/// Types, declutters and optimises `model`. When its only input is `[N, ...]` with a symbolic batch
/// `N` and every other dimension known, `N` is bound to 1 ([`BatchPlan::PerImage`]), unless the
/// model computes something that does not depend on its input at each run (an int8 QDQ file's weight
/// dequantisation, which tract does not fold): a single-image plan would repeat that for every image
/// (2.7x slower on the int8 seed model at 32x32 pixels).
fn plan(model: InferenceModel) -> TractResult<(Arc<TypedRunnableModel>, BatchPlan)> {
    let typed = model.into_typed()?.into_decluttered()?;
    let (typed, batch) = match typed.inputs.as_slice() {
        [input] => {
            let shape = typed.outlet_fact(*input)?.shape.clone();
            match shape.dims().split_first() {
                Some((TDim::Sym(n), rest))
                    if rest.iter().all(|d| d.to_i64().is_ok()) && !has_constant_work(&typed)? =>
                {
                    (
                        typed.set_symbols(&HashMap::from([(n.clone(), TDim::Val(1))]))?,
                        BatchPlan::PerImage,
                    )
                }
                Some((TDim::Sym(_), _)) => (typed, BatchPlan::Symbolic),
                _ => (typed, BatchPlan::Fixed),
            }
        }
        _ => (typed, BatchPlan::Fixed),
    };
    let scope = KnobScope::new([("TRACT_DISABLE_DIRECT_SPATIAL", "true")])?;
    let plan = scope.enter(|| typed.into_optimized())?.into_runnable()?;
    Ok((plan, batch))
}

/// A planned model: the plan, the batched tail of a split model, and how the plan takes a batch.
type Planned = (Arc<TypedRunnableModel>, Option<Tail>, BatchPlan);

/// Plans `proto`: split into a single-image head and a batched tail when [`split::split`] finds small
/// late maps and the head gets a single-image plan, else whole as [`plan`] does; in either, the wide
/// convolutions on large maps are rewritten by [`winograd::rewrite`]. The model is parsed once for
/// the analysis, and once more when the whole of it is rewritten.
fn plan_proto(proto: &pb::ModelProto) -> TractResult<Planned> {
    let onnx = tract_onnx::onnx();
    let parsed = onnx.parse(proto, None)?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(anyhow::anyhow!(
            "Could not resolve inputs at top-level: {:?}",
            parsed.unresolved_inputs
        ));
    }
    // Every tensor's shape with one image, where the model's input fixes them.
    let shapes = split::one_image_shapes(proto, &parsed).ok().flatten();
    let split_plan = || -> TractResult<Option<Planned>> {
        let Some(shapes) = &shapes else {
            return Ok(None);
        };
        let Some(parts) = split::split(proto, shapes, &winograd_tail) else {
            return Ok(None);
        };
        let split::Split {
            head,
            tail,
            narrow_tail,
            rows,
        } = parts;
        let head = winograd::rewrite(&head, shapes).unwrap_or(head);
        let (head, batch) = plan(onnx.model_for_proto_model(&head)?)?;
        if batch != BatchPlan::PerImage {
            return Ok(None);
        }
        // Each part's file goes once tract has it (the Winograd tail's weights are about 150 MB
        // with VGG16 at 32x32 pixels).
        let tail_plan = |m: pb::ModelProto| {
            let model = onnx.model_for_proto_model(&m);
            drop(m);
            model?.into_optimized()?.into_runnable()
        };
        let tail = Tail {
            plan: tail_plan(tail)?,
            narrow: narrow_tail.map(tail_plan).transpose()?,
            rows,
        };
        Ok(Some((head, Some(tail), batch)))
    };
    // A model that cannot be split is planned whole, which reports what is wrong with it, if
    // anything.
    if let Ok(Some(planned)) = split_plan() {
        return Ok(planned);
    }
    if let Some(fast) = shapes.as_ref().and_then(|s| winograd::rewrite(proto, s)) {
        // Neither the original's parse nor the rewritten file is kept while the rewritten model
        // is planned (at 384 pixels the transformed weights alone are about 230 MB); the original
        // is parsed again only if that plan fails.
        drop(parsed);
        let model = onnx.model_for_proto_model(&fast);
        drop(fast);
        if let Ok((plan, batch)) = model.and_then(plan) {
            return Ok((plan, None, batch));
        }
        let (plan, batch) = plan(onnx.model_for_proto_model(proto)?)?;
        return Ok((plan, None, batch));
    }
    let (plan, batch) = plan(parsed.model)?;
    Ok((plan, None, batch))
}

/// Winograd's form ([`winograd::small_map`]) for a batched tail's 3x3 convolutions on 4x4 maps of
/// at least [`winograd::MIN_CHANNELS`] input channels, the faster form [`split::split`] takes.
fn winograd_tail(
    conv: &pb::NodeProto,
    k: &split::SameConv,
) -> Option<(Vec<pb::NodeProto>, Vec<pb::TensorProto>)> {
    winograd::fits_small_map(k, winograd::MIN_CHANNELS).then(|| winograd::small_map(conv, k))
}

/// Whether `model` has operators other than constants whose inputs do not depend on the model's
/// inputs: work each run repeats whatever the images.
fn has_constant_work(model: &TypedModel) -> TractResult<bool> {
    use tract_onnx::tract_core::ops::konst::Const;
    let mut depends = vec![false; model.nodes().len()];
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        depends[id] = model.inputs.iter().any(|i| i.node == id)
            || node.inputs.iter().any(|i| depends[i.node]);
        if !depends[id] && !node.op_is::<Const>() {
            return Ok(true);
        }
    }
    Ok(false)
}

impl TractBackend {
    /// Loads `model`, optimises it and plans it (for one image at a time when its batch dimension
    /// is symbolic); batches are split over `threads` threads (0 = all cores).
    ///
    /// # Errors
    /// [`Error::InvalidFile`] naming the model when tract cannot load or optimise it.
    pub fn open(model: &Path, threads: usize) -> Result<Self> {
        let (plan, tail, batch) = tract_onnx::onnx()
            .proto_model_for_path(model)
            .and_then(|proto| plan_proto(&proto))
            .map_err(|e| Error::invalid(model, format!("tract cannot load the model: {e:#}")))?;
        Ok(Self::with_plan(plan, tail, batch, threads))
    }

    /// As [`TractBackend::open`], for a model in memory (`name` names it in errors), whose outputs may
    /// be several ([`TractBackend::run_outputs`]).
    ///
    /// # Errors
    /// [`Error::Backend`] when tract cannot load or optimise it.
    pub fn open_proto(
        model: &tract_onnx::pb::ModelProto,
        name: &str,
        threads: usize,
    ) -> Result<Self> {
        let (plan, tail, batch) =
            plan_proto(model).map_err(|e| err(format!("cannot load {name}: {e:#}")))?;
        Ok(Self::with_plan(plan, tail, batch, threads))
    }

    fn with_plan(
        plan: Arc<TypedRunnableModel>,
        tail: Option<Tail>,
        batch: BatchPlan,
        threads: usize,
    ) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        TractBackend {
            plan,
            tail,
            batch,
            threads,
        }
    }

    /// Every output of the model for `images` (float32 NHWC), in the model's output order, each with
    /// the batch as its first dimension; the batch is split over the threads as [`Backend::run`]
    /// does.
    ///
    /// # Errors
    /// [`Error::Backend`] when tract fails or an output is not float32.
    pub fn run_outputs(&self, images: ArrayView4<'_, f32>) -> Result<Vec<ArrayD<f32>>> {
        let n = images.shape()[0];
        let parts = self.threads.min(n).max(1);
        if parts == 1 || self.batch == BatchPlan::Fixed {
            return self.run_chunk(images);
        }
        let per = n.div_ceil(parts);
        let results: Vec<Result<Vec<ArrayD<f32>>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .step_by(per)
                .map(|start| {
                    let chunk = images
                        .slice_axis(Axis(0), ndarray::Slice::from(start..(start + per).min(n)));
                    scope.spawn(move || self.run_chunk(chunk))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(err("a tract worker thread panicked")))
                })
                .collect()
        });
        let parts = results.into_iter().collect::<Result<Vec<_>>>()?;
        concat_outputs(&parts)
    }

    /// Runs `images` on the calling thread: at once, or image by image for a single-image plan.
    fn run_chunk(&self, images: ArrayView4<'_, f32>) -> Result<Vec<ArrayD<f32>>> {
        if let Some(Tail { plan, narrow, rows }) = &self.tail {
            return images
                .axis_chunks_iter(Axis(0), TAIL_BATCH)
                .map(|chunk| {
                    let maps = chunk
                        .axis_chunks_iter(Axis(0), 1)
                        .map(|image| {
                            let out = Self::run_one(&self.plan, image)?.into_iter().next();
                            out.filter(|m| m.ndim() == 4 && m.shape()[0] == *rows)
                                .ok_or_else(|| err("the head of the split model gave no map"))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    // Row r of every image, for r = 0, 1, ...: the order the whole model has.
                    let views: Vec<_> = (0..*rows)
                        .flat_map(|r| {
                            maps.iter()
                                .map(move |m| m.slice_axis(Axis(0), (r..=r).into()))
                        })
                        .collect();
                    let input = concatenate(Axis(0), &views)
                        .map_err(err)?
                        .into_dimensionality::<Ix4>()
                        .map_err(err)?;
                    let tail = match narrow {
                        Some(narrow) if input.shape()[0] < split::WINOGRAD_MIN_ROWS => narrow,
                        _ => plan,
                    };
                    Self::run_one(tail, input.view())
                })
                .collect::<Result<Vec<_>>>()
                .and_then(|parts| concat_outputs(&parts));
        }
        if self.batch != BatchPlan::PerImage || images.shape()[0] == 1 {
            return Self::run_one(&self.plan, images);
        }
        let parts = images
            .axis_chunks_iter(Axis(0), 1)
            .map(|image| Self::run_one(&self.plan, image))
            .collect::<Result<Vec<_>>>()?;
        concat_outputs(&parts)
    }

    fn run_one(
        plan: &Arc<TypedRunnableModel>,
        images: ArrayView4<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>> {
        let shape = images.shape().to_vec();
        let data: Vec<f32> = images.iter().copied().collect();
        let input = Tensor::from_shape(&shape, &data).map_err(err)?;
        let out = plan.run(tvec!(input.into())).map_err(err)?;
        out.iter()
            .map(|t| Ok(t.to_plain_array_view::<f32>().map_err(err)?.to_owned()))
            .collect()
    }
}

/// Joins the outputs of consecutive parts of a batch: output `k` of the result is output `k` of
/// every part, concatenated along the batch (first) axis.
fn concat_outputs(parts: &[Vec<ArrayD<f32>>]) -> Result<Vec<ArrayD<f32>>> {
    let outputs = parts.first().map_or(0, Vec::len);
    (0..outputs)
        .map(|k| {
            let views: Vec<_> = parts.iter().map(|p| p[k].view()).collect();
            concatenate(Axis(0), &views).map_err(err)
        })
        .collect()
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, images: ArrayView4<'_, f32>) -> Result<Array2<f32>> {
        let first = self
            .run_outputs(images)?
            .into_iter()
            .next()
            .ok_or_else(|| err("model produced no output"))?;
        first.into_dimensionality::<Ix2>().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::build::{attr_ints, f32_tensor, i8_tensor, model, node, value_info};
    use ndarray::Array4;
    use tract_onnx::pb;

    const SIDE: usize = 6;
    /// Channels in and out: the weights, 4.7 MB as float32, are above the 4 MiB up to which tract
    /// folds constant computations, so their int8 form is dequantized at each run.
    const CIN: usize = 512;
    const COUT: usize = 256;

    /// NHWC `[batch, 6, 6, 512]` → Transpose to NCHW → Conv 3x3, padding 1, 512 → 256 channels →
    /// Flatten to `[batch, 9216]`; `batch` None makes the batch dimension symbolic. With `int8`, the weights are
    /// stored as `round(w * 7)` in int8 and a DequantizeLinear (scale 1/7 per output channel) gives them
    /// back.
    fn conv_model(batch: Option<i64>, weight: &[f32], bias: &[f32], int8: bool) -> pb::ModelProto {
        let side = SIDE as i64;
        let shape = [COUT, CIN, 3, 3];
        let mut initializer = vec![f32_tensor("b", &[COUT], bias)];
        let mut nodes = Vec::new();
        if int8 {
            let q: Vec<i8> = weight.iter().map(|w| (w * 7.0).round() as i8).collect();
            initializer.push(i8_tensor("wq", &shape, &q));
            initializer.push(f32_tensor("scale", &[], &[1.0 / 7.0]));
            nodes.push(node(
                "DequantizeLinear",
                "dq",
                &["wq", "scale"],
                "w",
                vec![],
            ));
        } else {
            initializer.push(f32_tensor("w", &shape, weight));
        }
        nodes.extend([
            node(
                "Transpose",
                "t",
                &["x"],
                "nchw",
                vec![attr_ints("perm", &[0, 3, 1, 2])],
            ),
            node(
                "Conv",
                "c",
                &["nchw", "w", "b"],
                "conv",
                vec![
                    attr_ints("kernel_shape", &[3, 3]),
                    attr_ints("pads", &[1, 1, 1, 1]),
                ],
            ),
            node("Flatten", "f", &["conv"], "y", vec![]),
        ]);
        let graph = pb::GraphProto {
            name: "conv".into(),
            node: nodes,
            initializer,
            input: vec![value_info(
                "x",
                &[batch, Some(side), Some(side), Some(CIN as i64)],
                "",
            )],
            output: vec![value_info(
                "y",
                &[batch, Some((COUT * SIDE * SIDE) as i64)],
                "",
            )],
            ..Default::default()
        };
        model(17, graph)
    }

    /// The convolution by its definition, summed in f64: output `[n, o*36 + y*6 + x]`.
    fn naive(x: &Array4<f32>, weight: &[f32], bias: &[f32]) -> Array2<f32> {
        let n = x.shape()[0];
        Array2::from_shape_fn((n, COUT * SIDE * SIDE), |(b, j)| {
            let (o, y, xx) = (j / (SIDE * SIDE), j / SIDE % SIDE, j % SIDE);
            let mut sum = f64::from(bias[o]);
            for c in 0..CIN {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (iy, ix) =
                            (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                        if (0..SIDE as isize).contains(&iy) && (0..SIDE as isize).contains(&ix) {
                            let w = weight[((o * CIN + c) * 3 + ky) * 3 + kx];
                            sum += f64::from(w) * f64::from(x[[b, iy as usize, ix as usize, c]]);
                        }
                    }
                }
            }
            sum as f32
        })
    }

    /// A symbolic batch is bound to 1 and run image by image on 2 threads (3 + 2 images), a fixed
    /// batch of 5 is run whole, and a symbolic batch stays symbolic when the weights are dequantized
    /// at each run; all give the convolution's definition.
    #[test]
    fn single_image_plans_and_fixed_batches_compute_the_convolution() {
        let weight: Vec<f32> = (0..COUT * CIN * 9)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let bias: Vec<f32> = (0..COUT).map(|o| (o % 5) as f32 * 0.5 - 1.0).collect();
        let x = Array4::from_shape_fn((5, SIDE, SIDE, CIN), |(n, y, x, c)| {
            ((n * 31 + y * 7 + x * 3 + c * 11) % 17) as f32 / 8.0 - 1.0
        });
        let want = naive(&x, &weight, &bias);
        let cases = [
            (None, false, BatchPlan::PerImage),
            (Some(5), false, BatchPlan::Fixed),
            (None, true, BatchPlan::Symbolic),
        ];
        for (batch, int8, plan) in cases {
            let model = conv_model(batch, &weight, &bias, int8);
            let mut backend = TractBackend::open_proto(&model, "conv", 2).unwrap();
            assert_eq!(backend.batch, plan, "batch {batch:?}");
            let got = backend.run(x.view()).unwrap();
            assert_eq!(got.dim(), want.dim());
            let worst = (&got - &want).iter().fold(0f32, |m, d| m.max(d.abs()));
            assert!(worst <= 1e-4, "batch {batch:?}: off by {worst}");
        }
    }
}
