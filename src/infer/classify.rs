//! Batched classification of image files: decode a batch, run it through a [`Backend`], hand each
//! image's [`Prediction`] to a sink as soon as its batch is done (memory does not grow with the number
//! of files).

use super::Backend;
use crate::data::load_batch;
use crate::error::{Error, Result};
use crate::onnx::ModelInfo;
use ndarray::ArrayView4;
use std::path::{Path, PathBuf};

/// One classified image: an infer record.
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

/// The `k` largest values of a row as `(index, value)`, largest first (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, row[i])).collect()
}

/// Decodes `files` (resized to the model's input size, float32 NHWC RGB 0..255) and runs them through
/// `backend` in batches of `batch_size`. After each batch, `sink` receives its predictions in file
/// order and `progress` the number of images done. Returns the number of images classified.
///
/// # Errors
/// The first image that cannot be decoded (named), a backend failure or an output that is not
/// `[batch, classes]`, or the first error of `sink` (classification stops there).
pub fn classify(
    backend: &mut dyn Backend,
    info: &ModelInfo,
    files: &[PathBuf],
    batch_size: usize,
    mut sink: impl FnMut(Prediction) -> Result<()>,
    mut progress: impl FnMut(usize),
) -> Result<usize> {
    let s = info.input_size;
    let mut done = 0;
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
            sink(Prediction {
                path: path.clone(),
                class_index: k,
                label: info.classes[k].clone(),
                probability: row[k],
                probabilities: row,
            })?;
        }
        done += chunk.len();
        progress(done);
    }
    Ok(done)
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
}
