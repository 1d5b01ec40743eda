//! Verification of an exported model against the run that made it: the model file is run with tract
//! on the run's test images and its probabilities are compared with those tch computed at the end of
//! training (`predictions.json`).
use crate::contract::Output;
use crate::data::ImageSpec;
use crate::error::{Error, Result};
use crate::infer::Backend;
use crate::run::{PredictionItem, Predictions};
use std::path::Path;

/// Largest |Δprobability| an export may show against tch before it is refused.
pub const VERIFY_TOLERANCE: f32 = 1e-4;
/// Largest |Δprobability| of an export with float16 weights (`--fp16`): rounding every weight to 11
/// significant bits moved probabilities by up to 4.6e-3 on a seed-recipe run, so 1e-2 leaves margin
/// while still catching a wrong preprocessing or weight (those move them by 0.1 or more). With it, a
/// label may differ from tch's only on a near-tie: when tch's two most probable classes are within
/// this tolerance of each other.
pub const FP16_VERIFY_TOLERANCE: f32 = 1e-2;

/// Outcome of checking an exported model against the probabilities tch computed for the same images.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Images compared.
    pub images: usize,
    /// Largest |Δprobability| over all images and classes.
    pub max_abs_diff: f32,
    /// Engine that ran the exported model.
    pub backend: &'static str,
    /// The tolerance it was checked against.
    pub tolerance: f32,
}

impl std::fmt::Display for Verification {
    /// `verified with tract on 256 test images: same labels as tch, max |Δprobability| 7.2e-6 (tolerance 1e-4)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "verified with {} on {} test images: same labels as tch, max |Δprobability| {:.1e} (tolerance {:.0e})",
            self.backend, self.images, self.max_abs_diff, self.tolerance
        )
    }
}

/// Test images [`verify_against_run`] runs through tract at a time at input side `side`: as many as
/// keep one block-1 activation within 256 MiB ([`crate::infer::memory_bounded_batch`]), so that
/// verifying all 10,000 CIFAR-10 test images or a few hundred photos takes a bounded amount of memory.
pub(super) fn verify_batch(side: usize) -> usize {
    crate::infer::memory_bounded_batch(side, 256 << 20)
}

/// Runs the model file at `model` with tract on up to `n` of the run's test images (spread evenly over
/// `predictions.json`, so every class is covered), [`verify_batch`] images at a time, and compares its
/// probabilities (softmax of its output for a logits export) with those tch computed at the end of
/// training.
///
/// # Errors
/// [`Error::InvalidFile`] naming the model when an argmax differs or max |Δp| > `tolerance`;
/// the run's predictions or images cannot be read; tract fails.
pub fn verify_against_run(
    model: &Path,
    run_dir: &Path,
    n: usize,
    kind: Output,
    tolerance: f32,
) -> Result<Verification> {
    use crate::infer::tract_backend::TractBackend;
    let preds: Predictions = crate::util::read_json(&run_dir.join(crate::run::PREDICTIONS_FILE))?;
    let total = preds.items.len();
    let take = n.min(total);
    let picked: Vec<&PredictionItem> = (0..take)
        .map(|i| &preds.items[i * total / take.max(1)])
        .collect();
    let spec = crate::onnx::ModelInfo::read(model)?.image;
    let records = Records::read(&preds)?;
    let mut backend = TractBackend::open(model, 0)?;
    let mut worst = 0f32;
    run_test_images(
        &mut backend,
        &preds,
        &records,
        &picked,
        &spec,
        |row, it| {
            let mut p = row.to_vec();
            if kind == Output::Logits {
                softmax(&mut p);
            }
            worst = worst.max(compare(model, &p, it, tolerance)?);
            Ok(())
        },
        |_| {},
    )?;
    if worst > tolerance {
        return Err(Error::invalid(
            model,
            format!(
            "verification failed: max |Δprobability| {worst:e} against tch exceeds {tolerance:e}"
        ),
        ));
    }
    Ok(Verification {
        images: take,
        max_abs_diff: worst,
        tolerance,
        backend: "tract",
    })
}

/// The test records of a run trained on the CIFAR-10 binary release, by name (`test_batch.bin#17`);
/// empty for a run trained on image files.
pub(super) struct Records(std::collections::HashMap<String, crate::data::cifar::Record>);

impl Records {
    /// Reads the binary release's test records when `preds` names records.
    ///
    /// # Errors
    /// The release's class list or test batch cannot be read.
    pub(super) fn read(preds: &Predictions) -> Result<Self> {
        use crate::data::cifar;
        if !preds.items.iter().any(|it| it.file.contains(".bin#")) {
            return Ok(Records(Default::default()));
        }
        let classes = cifar::read_classes(&preds.data_root)?;
        let records = cifar::read_split(&preds.data_root, false, classes.len())?;
        Ok(Records(
            records.into_iter().map(|r| (r.name.clone(), r)).collect(),
        ))
    }
}

/// Runs `backend` on the `picked` test images, decoded as `spec` says ([`pixels`]), [`verify_batch`]
/// images at a time: `each` gets every image's output row (float32, the model's output) with its
/// item, in order, and `done` the count of images run after each batch.
///
/// # Errors
/// An image that cannot be read; the backend fails; the first error `each` returns.
pub(super) fn run_test_images(
    backend: &mut dyn Backend,
    preds: &Predictions,
    records: &Records,
    picked: &[&PredictionItem],
    spec: &ImageSpec,
    mut each: impl FnMut(&[f32], &PredictionItem) -> Result<()>,
    mut done: impl FnMut(usize),
) -> Result<()> {
    let s = spec.size;
    let mut count = 0;
    for chunk in picked.chunks(verify_batch(s)) {
        let input: Vec<f32> = pixels(preds, records, chunk, spec)?
            .iter()
            .map(|&v| f32::from(v))
            .collect();
        let view =
            ndarray::ArrayView4::from_shape((chunk.len(), s, s, 3), &input).map_err(|e| {
                Error::Backend {
                    backend: backend.name(),
                    message: e.to_string(),
                }
            })?;
        let out = backend.run(view)?;
        for (row, it) in out.rows().into_iter().zip(chunk) {
            each(&row.to_vec(), it)?;
        }
        count += chunk.len();
        done(count);
    }
    Ok(())
}

/// The pixels of the `picked` images as the model's `spec` ([`crate::onnx::ModelInfo::image`])
/// decodes them, the decoding `pipe infer` applies, RGB u8 NHWC: files under the run's data root, or
/// `records` of the CIFAR-10 binary release (squares of 32x32, fitted to the input size).
///
/// # Errors
/// An image or record that cannot be read.
pub(super) fn pixels(
    preds: &Predictions,
    records: &Records,
    picked: &[&PredictionItem],
    spec: &ImageSpec,
) -> Result<Vec<u8>> {
    let mut pixels = Vec::with_capacity(picked.len() * spec.image_bytes());
    for it in picked {
        if !it.file.contains(".bin#") {
            pixels.extend(crate::data::load_image(
                &preds.data_root.join(&it.file),
                spec,
            )?);
            continue;
        }
        let rec = records.0.get(&it.file).ok_or_else(|| {
            Error::invalid(
                &preds.data_root,
                format!("record {} of predictions.json not found", it.file),
            )
        })?;
        pixels.extend(rec.fitted(&preds.data_root, spec)?);
    }
    Ok(pixels)
}

/// Softmax of a row of logits, in place.
fn softmax(row: &mut [f32]) {
    let m = row.iter().cloned().fold(f32::MIN, f32::max);
    let z: f32 = row.iter().map(|v| (v - m).exp()).sum();
    row.iter_mut().for_each(|v| *v = (*v - m).exp() / z);
}

/// Compares the exported model's probabilities `p` of one image with tch's and returns their largest
/// |Δ|.
///
/// # Errors
/// [`Error::InvalidFile`] naming `model` when the labels differ, unless a tolerance looser than
/// [`VERIFY_TOLERANCE`] makes tch's two most probable classes a near-tie.
fn compare(model: &Path, p: &[f32], it: &PredictionItem, tolerance: f32) -> Result<f32> {
    use crate::report::argmax;
    let near_tie = || {
        let mut sorted = it.probabilities.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        tolerance > VERIFY_TOLERANCE && sorted.len() > 1 && sorted[0] - sorted[1] <= tolerance
    };
    if argmax(p) != argmax(&it.probabilities) && !near_tie() {
        return Err(Error::invalid(
            model,
            format!(
                "verification failed: {} is classified {} by the exported model but {} by tch; \
                 the export does not reproduce training (preprocessing or weights differ)",
                it.file,
                argmax(p),
                argmax(&it.probabilities)
            ),
        ));
    }
    Ok(p.iter()
        .zip(&it.probabilities)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max))
}

#[cfg(test)]
mod tests {
    use super::verify_batch;

    /// 256 MiB over one image's block-1 activation (64 x side x side float32): 1,024 at 32 (capped at
    /// 256), 268,435,456 / 12,845,056 = 20.9 at 224, 4.0 at 512; never 0.
    #[test]
    fn verify_batches_bound_the_block1_activation() {
        assert_eq!(verify_batch(32), 256);
        assert_eq!(verify_batch(64), 256);
        assert_eq!(verify_batch(224), 20);
        assert_eq!(verify_batch(512), 4);
        assert_eq!(verify_batch(100_000), 1);
    }
}
