//! The tract backend: pure-Rust ONNX inference on the CPU with tract's multithreaded executor.

use super::Backend;
use crate::error::{Error, Result};
use ndarray::{Array2, ArrayView4, Ix2};
use std::path::Path;
use tract_onnx::prelude::*;

/// A model loaded, optimised and planned by tract, with a symbolic batch dimension.
pub struct TractBackend {
    plan: Arc<TypedRunnableModel>,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "tract",
        message: format!("{e:#}"),
    }
}

impl TractBackend {
    /// Loads `model`, optimises it for any batch size and plans it to run on `threads` threads
    /// (1 = tract's single-threaded executor).
    ///
    /// # Errors
    /// [`Error::Backend`] naming the model when tract cannot load or optimise it.
    pub fn open(model: &Path, threads: usize) -> Result<Self> {
        let load = || -> TractResult<Arc<TypedRunnableModel>> {
            let typed = tract_onnx::onnx().model_for_path(model)?.into_optimized()?;
            let executor = if threads > 1 {
                Some(multithread::Executor::multithread(threads))
            } else {
                None
            };
            typed.into_runnable_with_options(&RunOptions {
                executor,
                ..Default::default()
            })
        };
        let plan = load()
            .map_err(|e| Error::invalid(model, format!("tract cannot load the model: {e:#}")))?;
        Ok(TractBackend { plan })
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, images: ArrayView4<'_, f32>) -> Result<Array2<f32>> {
        let shape = images.shape().to_vec();
        let data: Vec<f32> = images.iter().copied().collect();
        let input = Tensor::from_shape(&shape, &data).map_err(err)?;
        let out = self.plan.run(tvec!(input.into())).map_err(err)?;
        let first = out.first().ok_or_else(|| err("model produced no output"))?;
        let view = first.to_plain_array_view::<f32>().map_err(err)?;
        view.to_owned().into_dimensionality::<Ix2>().map_err(err)
    }
}
