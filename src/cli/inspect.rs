//! `pipe inspect`: what an exported model holds.

use anyhow::Result;
use pipe::onnx::ModelInfo;
use std::path::PathBuf;

/// Arguments of `pipe inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// The ONNX model.
    #[arg(default_value = "onnx/model.onnx")]
    model: PathBuf,
}

impl InspectArgs {
    /// Prints the model's input, output, opset, parameter count and metadata.
    ///
    /// # Errors
    /// As [`ModelInfo::read`].
    pub fn run(self) -> Result<()> {
        print!("{}", ModelInfo::read(&self.model)?.describe(&self.model));
        Ok(())
    }
}
