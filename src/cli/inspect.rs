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
    /// Prints the model's input, output, opset, parameter count and metadata. For an ONNX file that
    /// pipe cannot run (not exported by `pipe export`), prints what it holds
    /// ([`pipe::onnx::info::outline`]), then fails with the reason.
    ///
    /// # Errors
    /// As [`ModelInfo::read`].
    pub fn run(self) -> Result<()> {
        match ModelInfo::read(&self.model) {
            Ok(info) => {
                print!("{}", info.describe(&self.model));
                Ok(())
            }
            Err(e) => {
                if let Ok(outline) = pipe::onnx::info::outline(&self.model) {
                    print!("{outline}");
                }
                Err(e.into())
            }
        }
    }
}
