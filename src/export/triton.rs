//! Triton Inference Server model repository layout of an exported model:
//! `DIR/<name>/<version>/model.onnx`, `DIR/<name>/config.pbtxt` and `DIR/<name>/labels.txt`.

use crate::contract::INPUT_NAME;
use crate::error::Result;
use crate::onnx::ModelInfo;
use std::path::{Path, PathBuf};

/// Where a Triton model repository keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TritonLayout {
    /// The model repository folder (`DIR`).
    pub repository: PathBuf,
    /// The model's name, its folder inside the repository.
    pub name: String,
    /// Largest batch Triton may form (`max_batch_size` in `config.pbtxt`).
    pub max_batch_size: usize,
    /// The version folder the model goes into (at least 1).
    pub version: u64,
}

impl TritonLayout {
    /// The model's folder, `DIR/<name>`.
    pub fn model_dir(&self) -> PathBuf {
        self.repository.join(&self.name)
    }

    /// The ONNX file, `DIR/<name>/<version>/model.onnx`.
    pub fn model_file(&self) -> PathBuf {
        self.model_dir()
            .join(self.version.to_string())
            .join("model.onnx")
    }

    /// The version after the highest numeric folder of `DIR/<name>` (1 when there is none, or no
    /// such folder yet): where a new export goes by default.
    pub fn next_version(repository: &Path, name: &str) -> u64 {
        let highest = std::fs::read_dir(repository.join(name))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        highest + 1
    }
}

/// Writes the Triton Inference Server files beside a model exported into `DIR/<name>/1/model.onnx`:
/// `DIR/<name>/config.pbtxt` (ONNX Runtime backend, dynamic batching up to `max_batch_size`, batch
/// dimension implicit as Triton requires with `max_batch_size > 0`) and `DIR/<name>/labels.txt` (class
/// names, one per line, referenced as the output's `label_filename`). Field names follow Triton's
/// `model_config.proto`.
///
/// # Errors
/// [`crate::Error::Io`] when the files cannot be written.
pub fn write_triton_config(
    model_dir: &Path,
    name: &str,
    info: &ModelInfo,
    max_batch_size: usize,
) -> Result<()> {
    let s = info.input_size;
    let config = format!(
        r#"# Triton Inference Server model configuration, written by pipe {version}.
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{input}"
    data_type: TYPE_FP32
    format: FORMAT_NHWC
    dims: [ {s}, {s}, 3 ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 1000
}}
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
"#,
        version = env!("CARGO_PKG_VERSION"),
        input = INPUT_NAME,
        output = info.output_name,
        classes = info.classes.len(),
    );
    let labels = info.classes.join("\n") + "\n";
    crate::util::write_atomic(&model_dir.join("config.pbtxt"), |w| {
        w.write_all(config.as_bytes())
    })?;
    crate::util::write_atomic(&model_dir.join("labels.txt"), |w| {
        w.write_all(labels.as_bytes())
    })
}
