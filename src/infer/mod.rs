//! Inference on exported ONNX models, without libtorch:
//! - here: the [`Backend`] trait and [`open_backend`], with tract (pure Rust, CPU; `tract_backend`) and
//!   ONNX Runtime (`ort`, CPU or CUDA; `ort_backend`) implementations;
//! - [`classify`]: pipelined, batched classification of image files (the next batch decoded while the
//!   backend runs the current one), one [`Record`] per file: a [`Prediction`], or the
//!   [`crate::data::SkippedFile`] of a file that could not be decoded; [`decode_image`] and
//!   [`decode_files`], the one decoding for a model's input (its [`crate::onnx::ModelInfo::image`]);
//! - [`report`]: [`InferReport`] (accuracy and confusion over the images in class folders);
//! - [`writer`]: [`ReportStream`], which writes records as they come in the chosen [`OutputFormat`]
//!   (text, CSV, JSON) and accumulates the report.
//!
//! Models are read as [`crate::onnx::ModelInfo`] and fed as [`crate::contract`] says.

use crate::error::{Error, Result};
use ndarray::{Array2, ArrayView4};
use std::path::{Path, PathBuf};

pub mod classify;
#[cfg(feature = "ort")]
pub mod ort_backend;
pub mod report;
pub mod tract_backend;
pub mod writer;

pub use classify::{
    classify, decode_files, decode_image, Classified, ClassifyOptions, Prediction, Record,
};
pub use report::{folder_label, InferReport};
pub use writer::{OutputFormat, RecordWriter, ReportStream, WriterContext};

/// What to tell a user who runs an int8 model on tract, after "tract": it runs int8 files no faster
/// than their float32 twins (0.47-0.99x in `make bench-int8`'s runs, docs/RESULTS.md), where ONNX
/// Runtime runs them 3.5-3.9x as fast on CPUs with int8 dot products. Shared by `pipe infer`'s
/// closing line and `pipe serve`'s warning when it loads such a model.
pub const TRACT_INT8_HINT: &str =
    "runs int8 files no faster than float32: --backend ort for int8's speed";

/// Images per backend run at input side `side` that keep one block-1 activation (64 float32 channels
/// of `side` x `side`: 256 KiB per 32x32 image, 12.25 MiB per 224x224 one, 36 MiB per 384x384 one)
/// within `budget` bytes, between 1 and 256. A backend holds several buffers of that order per image
/// (tract's im2col of block 1 is 9 times larger), so this bounds a batch's memory at large inputs.
pub fn memory_bounded_batch(side: usize, budget: usize) -> usize {
    (budget / (64 * side * side * 4).max(1)).clamp(1, 256)
}

/// The block-1 activation budget of `pipe infer`'s default batch ([`memory_bounded_batch`]): 256
/// MiB, which gives 256 images at 32 and 64 pixels, 20 at 224 and 7 at 384. Measured at 384 pixels
/// with tract on 153 photos: one batch of all 153 went past 23 GiB and was killed; batches of 14
/// peaked at 5.8 GiB, of 7 at 3.2 GiB.
pub const INFER_BATCH_BUDGET: usize = 256 << 20;

/// An inference engine holding one loaded model.
pub trait Backend {
    /// Short name: `tract` or `ort`.
    fn name(&self) -> &'static str;
    /// Runs the model on a batch of images, float32 NHWC RGB `[n, S, S, 3]` with values 0..255, and
    /// returns the model's output, float32 `[n, classes]` (probabilities, or logits for a `--logits` export).
    ///
    /// # Errors
    /// [`Error::Backend`] when the engine fails.
    fn run(&mut self, images: ArrayView4<'_, f32>) -> Result<Array2<f32>>;
}

/// Which inference engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract-onnx: pure Rust, CPU, no native library needed.
    Tract,
    /// ONNX Runtime through `ort`, loaded from libonnxruntime at run time.
    Ort,
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InferDevice {
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU through ONNX Runtime's CUDA execution provider (ort backend only).
    Cuda,
}

/// Options to open a backend.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Engine.
    pub kind: BackendKind,
    /// Device.
    pub device: InferDevice,
    /// Worker threads for the engine (intra-op threads for ort, executor threads for tract); 0 = all cores.
    pub threads: usize,
    /// Explicit path of libonnxruntime (`--ort-lib`), else `ORT_DYLIB_PATH`, else the project's `.venv`.
    pub ort_lib: Option<PathBuf>,
}

/// Opens `model` with the engine of `opts`.
///
/// # Errors
/// [`Error::Usage`] when the engine was not compiled in or the device is not supported by it;
/// [`Error::Backend`] / [`Error::InvalidFile`] when the model cannot be loaded.
pub fn open_backend(model: &Path, opts: &BackendOptions) -> Result<Box<dyn Backend>> {
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.threads
    };
    match opts.kind {
        BackendKind::Tract => {
            if opts.device == InferDevice::Cuda {
                return Err(Error::Usage(
                    "the tract backend runs on the CPU only; use --backend ort for --device cuda"
                        .into(),
                ));
            }
            Ok(Box::new(tract_backend::TractBackend::open(model, threads)?))
        }
        BackendKind::Ort => {
            #[cfg(feature = "ort")]
            {
                Ok(Box::new(ort_backend::OrtBackend::open(
                    model,
                    opts.device,
                    threads,
                    opts.ort_lib.as_deref(),
                )?))
            }
            #[cfg(not(feature = "ort"))]
            {
                let _ = (model, threads);
                Err(Error::Usage(
                    "this pipe was built without the `ort` feature".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default batches `pipe infer --help` states: 256 up to 64 pixels, 20 at 224, 7 at 384.
    #[test]
    fn default_batches_shrink_with_the_input_size() {
        let batch = |side| memory_bounded_batch(side, INFER_BATCH_BUDGET);
        assert_eq!(
            [batch(32), batch(64), batch(224), batch(384)],
            [256, 256, 20, 7]
        );
        assert_eq!(batch(100_000), 1);
    }
}
