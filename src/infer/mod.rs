//! Inference on exported ONNX models, without libtorch: a [`Backend`] trait with tract (pure Rust, CPU)
//! and ONNX Runtime (`ort`, CPU or CUDA) implementations, model metadata, and batched classification of
//! image files.

use crate::data::load_batch;
use crate::error::{Error, Result};
use crate::export::INPUT_NAME;
use crate::weights::read_onnx;
use ndarray::{Array2, ArrayView4};
use std::path::{Path, PathBuf};

#[cfg(feature = "ort")]
pub mod ort_backend;
#[cfg(feature = "tract")]
pub mod tract_backend;

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
            #[cfg(feature = "tract")]
            {
                Ok(Box::new(tract_backend::TractBackend::open(model, threads)?))
            }
            #[cfg(not(feature = "tract"))]
            {
                Err(Error::Usage(
                    "this pipe was built without the `tract` feature".into(),
                ))
            }
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

/// What pipe needs to know about an exported model, read from its ONNX file.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Height and width of the input images, in pixels.
    pub input_size: usize,
    /// Class names, index = output column. Falls back to `"0"`, `"1"`, ... when the metadata has none.
    pub classes: Vec<String>,
    /// Whether [`ModelInfo::classes`] came from the model's metadata.
    pub classes_from_metadata: bool,
    /// Name of the (single) output.
    pub output_name: String,
    /// The model's `metadata_props`, in file order.
    pub metadata: Vec<(String, String)>,
    /// ONNX opset of the default domain.
    pub opset: i64,
    /// Number of parameters (elements of all initializers).
    pub parameters: usize,
}

impl ModelInfo {
    /// Reads and checks the model: one float input named `images` of shape `[N, S, S, 3]`, one output
    /// of shape `[N, classes]`.
    ///
    /// # Errors
    /// [`Error::InvalidFile`] naming the model when it is not ONNX or not an image classifier in pipe's layout.
    pub fn read(path: &Path) -> Result<Self> {
        use tract_onnx::pb::tensor_shape_proto::dimension::Value;
        use tract_onnx::pb::type_proto;
        let model = read_onnx(path)?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| Error::invalid(path, "ONNX model has no graph"))?;
        let inits: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
            .collect();
        let foreign = |what: String| {
            Error::invalid(
                path,
                format!("{what}; pipe expects a model exported by `pipe export` (input `images`: float32 [N,S,S,3] RGB 0..255)"),
            )
        };
        let input = match inputs.as_slice() {
            [one] if one.name == INPUT_NAME => *one,
            _ => {
                let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(foreign(format!(
                    "model inputs are {names:?}, not a single `images` input"
                )));
            }
        };
        let dims = |vi: &tract_onnx::pb::ValueInfoProto| -> Option<Vec<Option<i64>>> {
            match vi.r#type.as_ref()?.value.as_ref()? {
                type_proto::Value::TensorType(t) if t.elem_type == 1 => Some(
                    t.shape
                        .as_ref()?
                        .dim
                        .iter()
                        .map(|d| match d.value {
                            Some(Value::DimValue(v)) => Some(v),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => None,
            }
        };
        let in_dims = dims(input).ok_or_else(|| {
            foreign("input `images` is not a float32 tensor with a known shape".into())
        })?;
        let input_size = match in_dims.as_slice() {
            [_, Some(h), Some(w), Some(3)] if h == w && *h > 0 => *h as usize,
            _ => {
                return Err(foreign(format!(
                    "input `images` has shape {in_dims:?}, expected [N,S,S,3]"
                )))
            }
        };
        let output = match graph.output.as_slice() {
            [one] => one,
            outs => {
                return Err(foreign(format!(
                    "model has {} outputs, expected 1",
                    outs.len()
                )))
            }
        };
        let out_dims = dims(output)
            .ok_or_else(|| foreign("output is not a float32 tensor with a known shape".into()))?;
        let n_classes = match out_dims.as_slice() {
            [_, Some(c)] if *c > 0 => *c as usize,
            _ => {
                return Err(foreign(format!(
                    "output has shape {out_dims:?}, expected [N,classes]"
                )))
            }
        };
        let metadata: Vec<(String, String)> = model
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        let from_meta = metadata
            .iter()
            .find(|(k, _)| k == "classes")
            .and_then(|(_, v)| serde_json::from_str::<Vec<String>>(v).ok())
            .filter(|c| c.len() == n_classes);
        let classes_from_metadata = from_meta.is_some();
        let classes = from_meta.unwrap_or_else(|| (0..n_classes).map(|i| i.to_string()).collect());
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(0);
        let parameters = graph
            .initializer
            .iter()
            .map(|t| t.dims.iter().product::<i64>().max(0) as usize)
            .sum();
        Ok(ModelInfo {
            input_size,
            classes,
            classes_from_metadata,
            output_name: output.name.clone(),
            metadata,
            opset,
            parameters,
        })
    }
}

/// One classified image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    /// The image file (serialised as lossy UTF-8: a name that is not UTF-8 shows U+FFFD).
    #[serde(serialize_with = "serialize_lossy_path")]
    pub path: PathBuf,
    /// Index of the most probable class.
    pub class_index: usize,
    /// Name of the most probable class.
    pub label: String,
    /// Its output value (probability, or logit for a logits export).
    pub probability: f32,
    /// The full output row, `[classes]`.
    pub probabilities: Vec<f32>,
}

fn serialize_lossy_path<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// Index of the maximum (first on ties) of a row.
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// Decodes `files` (resized to the model's input size) and runs them through `backend` in batches of
/// `batch_size`, calling `progress` with the number of images done after each batch.
///
/// # Errors
/// The first image that cannot be decoded (named), or a backend failure.
pub fn classify(
    backend: &mut dyn Backend,
    info: &ModelInfo,
    files: &[PathBuf],
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Prediction>> {
    let s = info.input_size;
    let mut out = Vec::with_capacity(files.len());
    for chunk in files.chunks(batch_size.max(1)) {
        let paths: Vec<&Path> = chunk.iter().map(PathBuf::as_path).collect();
        let pixels = load_batch(&paths, s)?;
        let input: Vec<f32> = pixels.iter().map(|&v| f32::from(v)).collect();
        let view =
            ArrayView4::from_shape((chunk.len(), s, s, 3), &input).map_err(|e| Error::Backend {
                backend: backend.name(),
                message: e.to_string(),
            })?;
        let probs = backend.run(view)?;
        if probs.shape() != [chunk.len(), info.classes.len()] {
            return Err(Error::Backend {
                backend: backend.name(),
                message: format!(
                    "output shape {:?}, expected [{}, {}]",
                    probs.shape(),
                    chunk.len(),
                    info.classes.len()
                ),
            });
        }
        for (path, row) in chunk.iter().zip(probs.rows()) {
            let row = row.to_vec();
            let k = argmax(&row);
            out.push(Prediction {
                path: path.clone(),
                class_index: k,
                label: info.classes[k].clone(),
                probability: row[k],
                probabilities: row,
            });
        }
        progress(out.len());
    }
    Ok(out)
}

/// The `k` largest values of a row as `(index, value)`, largest first (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, row[i])).collect()
}

/// The class an image's path claims: the name of its parent folder, when that is one of `classes`.
pub fn folder_label(path: &Path, classes: &[String]) -> Option<usize> {
    let parent = path.parent()?.file_name()?.to_str()?;
    classes.iter().position(|c| c == parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[3.0]), 0);
    }

    #[test]
    fn top_k_orders_by_value() {
        assert_eq!(
            top_k(&[0.1, 0.5, 0.2, 0.5], 3),
            vec![(1, 0.5), (3, 0.5), (2, 0.2)]
        );
        assert_eq!(top_k(&[0.3], 5), vec![(0, 0.3)]);
    }

    #[test]
    fn folder_label_uses_parent_folder() {
        let classes = vec!["cat".to_string(), "dog".to_string()];
        assert_eq!(
            folder_label(Path::new("data/test/dog/0001.jpg"), &classes),
            Some(1)
        );
        assert_eq!(
            folder_label(Path::new("data/test/0001.jpg"), &classes),
            None
        );
    }
}
