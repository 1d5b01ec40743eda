//! The tract backend: pure-Rust ONNX inference on the CPU.
//!
//! tract's own multithreaded executor parallelises inside each matrix product, which gains little on
//! this network's small late layers; splitting the batch across threads that each run the same
//! optimised plan (data parallelism) keeps every core busy instead.

use super::Backend;
use crate::error::{Error, Result};
use ndarray::{concatenate, Array2, ArrayD, ArrayView4, Axis, Ix2};
use std::path::Path;
use tract_onnx::prelude::*;

/// A model loaded, optimised and planned by tract, with a symbolic batch dimension.
pub struct TractBackend {
    plan: Arc<TypedRunnableModel>,
    threads: usize,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "tract",
        message: format!("{e:#}"),
    }
}

impl TractBackend {
    /// Loads `model`, optimises it for any batch size and plans it; batches are split over `threads`
    /// threads (0 = all cores).
    ///
    /// # Errors
    /// [`Error::InvalidFile`] naming the model when tract cannot load or optimise it.
    pub fn open(model: &Path, threads: usize) -> Result<Self> {
        let load = || -> TractResult<Arc<TypedRunnableModel>> {
            tract_onnx::onnx()
                .model_for_path(model)?
                .into_optimized()?
                .into_runnable()
        };
        let plan = load()
            .map_err(|e| Error::invalid(model, format!("tract cannot load the model: {e:#}")))?;
        Ok(Self::with_plan(plan, threads))
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
        let plan = tract_onnx::onnx()
            .model_for_proto_model(model)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| err(format!("cannot load {name}: {e:#}")))?;
        Ok(Self::with_plan(plan, threads))
    }

    fn with_plan(plan: Arc<TypedRunnableModel>, threads: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        TractBackend { plan, threads }
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
        if parts == 1 {
            return Self::run_one(&self.plan, images);
        }
        let per = n.div_ceil(parts);
        let plan = &self.plan;
        let results: Vec<Result<Vec<ArrayD<f32>>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .step_by(per)
                .map(|start| {
                    let chunk = images
                        .slice_axis(Axis(0), ndarray::Slice::from(start..(start + per).min(n)));
                    scope.spawn(move || Self::run_one(plan, chunk))
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
        let outputs = parts.first().map_or(0, Vec::len);
        (0..outputs)
            .map(|k| {
                let views: Vec<_> = parts.iter().map(|p| p[k].view()).collect();
                concatenate(Axis(0), &views).map_err(err)
            })
            .collect()
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
