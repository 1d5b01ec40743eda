//! `pipe export`: a training run as a verified ONNX model file, or a Triton model repository.

use super::RunSelection;
use anyhow::Result;
use pipe::contract::Output;
use pipe::export::{Destination, RunExportOptions, TritonLayout};
use std::path::PathBuf;

/// Where `pipe export` writes the model when no output is named.
const DEFAULT_OUTPUT: &str = "onnx/model.onnx";

/// Arguments of `pipe export`.
#[derive(clap::Args)]
#[command(mut_arg("run", |a| a.help("Run to export: `latest`, a run name in --runs-dir, or a run folder")))]
pub struct ExportArgs {
    /// The ONNX file to write (written to a temporary file, then renamed) [default: onnx/model.onnx].
    /// Not with --triton, which writes the model inside the repository instead.
    #[arg(conflicts_with = "triton")]
    output: Option<PathBuf>,
    #[command(flatten)]
    run: RunSelection,
    /// ONNX opset (13..21).
    #[arg(long, default_value_t = pipe::export::DEFAULT_OPSET)]
    opset: i64,
    /// Output logits instead of softmax probabilities.
    #[arg(long)]
    logits: bool,
    /// Store the weights as float16 (about half the file size; computation stays float32). The
    /// verification tolerance becomes |Δp| <= 1e-2, and a label may differ from the training run's only
    /// where its two most probable classes are within 1e-2 (a near-tie).
    #[arg(long)]
    fp16: bool,
    /// Before the file is put in place, run it with tract on this many of the run's test images and
    /// compare with the probabilities the training run computed with libtorch (0 = skip). A mismatch
    /// (an argmax differs or |Δp| > 1e-4) fails the export and leaves no file.
    #[arg(long, default_value_t = 256)]
    verify_images: usize,
    /// Also lay the model out as a Triton Inference Server model repository in this folder:
    /// DIR/<triton-name>/1/model.onnx, config.pbtxt (dynamic batching) and labels.txt, instead of the
    /// ONNX file (naming both is refused).
    #[arg(long, value_name = "DIR")]
    triton: Option<PathBuf>,
    /// Model name inside the Triton repository.
    #[arg(long, default_value = "pipe_vgg16")]
    triton_name: String,
    /// Largest batch Triton may form (max_batch_size in config.pbtxt).
    #[arg(long, default_value_t = 256)]
    triton_max_batch: usize,
}

impl ExportArgs {
    /// Exports the run and prints the export's summary.
    ///
    /// # Errors
    /// As [`pipe::export::export_run`]; an output path under a regular file.
    pub fn run(self) -> Result<()> {
        let run_dir = self.run.resolve()?;
        let destination = match self.triton {
            Some(repository) => Destination::Triton(TritonLayout {
                repository,
                name: self.triton_name,
                max_batch_size: self.triton_max_batch,
            }),
            None => Destination::File(self.output.unwrap_or_else(|| PathBuf::from(DEFAULT_OUTPUT))),
        };
        pipe::util::check_output_path(&destination.model_file(), true)?;
        let opts = RunExportOptions {
            opset: self.opset,
            output: Output::logits(self.logits),
            verify_images: self.verify_images,
            fp16_weights: self.fp16,
        };
        let summary = pipe::export::export_run(&run_dir, &destination, &opts)?;
        println!("{summary}");
        Ok(())
    }
}
