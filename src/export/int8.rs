//! The int8 export of a run: the calibration images (a class-balanced, seeded choice of the run's
//! training images, decoded as the model decodes), the calibration itself (the float model run with
//! ONNX Runtime or tract, its calibration points as extra outputs, their values summarised), and the
//! verification
//! that fits int8: the quantized model run on every test image of the run, its accuracy against the
//! float model's (tch's `predictions.json`) and the share of labels it keeps, refused when the
//! accuracy drops by more than allowed.

use super::calibrate::{calibration_points, Calibration, CalibrationPoint, Stats};
use super::verify::{run_test_images, Records};
use crate::arch::Arch;
use crate::data::{ImageSpec, LoadedSplit, OnError, SplitList, SplitPart, SPLIT_FILE};
use crate::error::{Error, Result};
use crate::events::{Event, EventSink, Task};
use crate::infer::tract_backend::TractBackend;
use crate::infer::{BackendKind, BackendOptions, InferDevice};
use crate::report::argmax;
use crate::run::{PredictionItem, Predictions};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;
use tract_onnx::pb;

/// What the verification of an int8 export found on the run's test images.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Verification {
    /// The engine that ran the int8 model: `ort` or `tract`.
    pub backend: &'static str,
    /// Test images run.
    pub images: usize,
    /// Accuracy of the float model (tch's predictions), 0..1.
    pub float_accuracy: f64,
    /// Accuracy of the int8 model, 0..1.
    pub int8_accuracy: f64,
    /// Share of the images whose int8 label is the float model's, 0..1.
    pub agreement: f64,
    /// The largest drop allowed, in points (`--max-accuracy-drop`).
    pub max_drop: f64,
}

impl Int8Verification {
    /// Accuracy lost to int8, in points (percentage points: 0.5 = half a point); negative when int8
    /// is more accurate.
    pub fn drop_points(&self) -> f64 {
        (self.float_accuracy - self.int8_accuracy) * 100.0
    }
}

/// The accuracy bound `--max-accuracy-drop` sets, in words: `a loss of at most 0.50 allowed`, or for
/// a negative bound `a gain of at least 1.00 required`.
fn bound_words(max_drop: f64) -> String {
    if max_drop >= 0.0 {
        format!("a loss of at most {max_drop:.2} allowed")
    } else {
        format!("a gain of at least {:.2} required", -max_drop)
    }
}

impl std::fmt::Display for Int8Verification {
    /// `int8 verified with ort on 1000 test images: accuracy 0.4550 against float 0.4560 (-0.10
    /// points; a loss of at most 0.50 allowed), the float model's label on 96.5% of them`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "int8 verified with {} on {} test images: accuracy {:.4} against float {:.4} ({:+.2} \
             points; {}), the float model's label on {:.1}% of them",
            self.backend,
            self.images,
            self.int8_accuracy,
            self.float_accuracy,
            0.0 - self.drop_points(),
            bound_words(self.max_drop),
            self.agreement * 100.0
        )
    }
}

/// Up to `n` of the run's training images (from its `split.json`), class-balanced and chosen with
/// `seed` (each class's images shuffled with the seed, then taken in turn from each class), decoded
/// with `spec`. Images that cannot be decoded any more are left out.
///
/// # Errors
/// A run without `split.json` (trained by an earlier pipe), or one whose training images cannot be
/// read at all.
pub fn calibration_images(
    run_dir: &Path,
    n: usize,
    seed: u64,
    spec: &ImageSpec,
) -> Result<LoadedSplit> {
    let path = run_dir.join(SPLIT_FILE);
    if !path.is_file() {
        return Err(Error::invalid(
            run_dir,
            format!(
                "no {SPLIT_FILE}: the run was trained by an earlier pipe, and an int8 export \
                 calibrates on its training images; train it again"
            ),
        ));
    }
    let list = SplitList::read(&path)?;
    let classes = list.classes.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, e) in list.train.iter().enumerate() {
        if let Some(c) = by_class.get_mut(e.label) {
            c.push(i);
        }
    }
    for c in &mut by_class {
        c.shuffle(&mut rng);
    }
    let mut picked = Vec::with_capacity(n);
    for round in 0.. {
        let before = picked.len();
        for c in &by_class {
            if picked.len() < n {
                picked.extend(c.get(round).copied());
            }
        }
        if picked.len() == n || picked.len() == before {
            break;
        }
    }
    let sub = SplitList {
        train: picked.iter().map(|&i| list.train[i].clone()).collect(),
        val: Vec::new(),
        test: Vec::new(),
        ..list
    };
    let loaded = sub.load(SplitPart::Train, spec, OnError::Skip)?;
    if loaded.split.is_empty() {
        return Err(Error::invalid(
            &sub.root,
            "none of the calibration images (the run's training images) could be decoded",
        ));
    }
    Ok(loaded.split)
}

/// `float` with the calibration `points` added as graph outputs (after its own output), so that a
/// run of it gives their values.
fn with_point_outputs(float: &pb::ModelProto, points: &[CalibrationPoint]) -> pb::ModelProto {
    let mut model = float.clone();
    if let Some(graph) = model.graph.as_mut() {
        graph
            .output
            .extend(points.iter().map(|p| pb::ValueInfoProto {
                name: p.name.clone(),
                r#type: Some(pb::TypeProto {
                    value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                        elem_type: pb::tensor_proto::DataType::Float as i32,
                        shape: None,
                    })),
                    ..Default::default()
                }),
                doc_string: String::new(),
            }));
    }
    model
}

/// Runs `float` (the float export of `arch`) with `engine` on `images`, in batches that bound the
/// memory of the intermediate tensors, and summarises the values of each calibration point of `arch`
/// with `method`; progress goes to `events`. Returns the points and their summaries, in order.
///
/// # Errors
/// The engine cannot be opened (ONNX Runtime's library missing) or fails; a value that is not finite.
pub fn calibrate(
    float: &pb::ModelProto,
    arch: &Arch,
    images: &LoadedSplit,
    method: Calibration,
    engine: BackendKind,
    events: &dyn EventSink,
) -> Result<(Vec<CalibrationPoint>, Vec<Stats>)> {
    let points = calibration_points(arch);
    let model = with_point_outputs(float, &points);
    let mut backend = Runner::open(&model, engine)?;
    let engine = backend.name();
    let s = images.size;
    let per = s * s * 3;
    let n = images.len();
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    // Every intermediate tensor of an image is kept for its statistics: about 4.5 times the block-1
    // activation per image, so half the inference budget per batch, but one image per thread.
    let batch = crate::infer::memory_bounded_batch(s, 128 << 20).max(threads);
    let mut stats: Vec<Stats> = points.iter().map(|_| Stats::new(method)).collect();
    let progress = |done: usize| events.progress(Task::Calibrate, done, n);
    progress(0);
    let mut run = || -> Result<()> {
        for start in (0..n).step_by(batch) {
            let m = batch.min(n - start);
            let input: Vec<f32> = images.pixels[start * per..(start + m) * per]
                .iter()
                .map(|&v| f32::from(v))
                .collect();
            let view = ndarray::ArrayView4::from_shape((m, s, s, 3), &input).map_err(|e| {
                Error::Backend {
                    backend: engine,
                    message: e.to_string(),
                }
            })?;
            let outputs = backend.run_outputs(view)?;
            for (st, out) in stats.iter_mut().zip(outputs.iter().skip(1)) {
                let values = out.as_slice().ok_or_else(|| Error::Backend {
                    backend: engine,
                    message: "a calibration output is not contiguous".into(),
                })?;
                st.add(values)?;
            }
            progress(start + m);
        }
        Ok(())
    };
    let done = run();
    events.emit(Event::ProgressDone(Task::Calibrate));
    done?;
    Ok((points, stats))
}

/// The engine that runs the calibration model: every output of a model held in memory.
enum Runner {
    Tract(TractBackend),
    #[cfg(feature = "ort")]
    Ort(crate::infer::ort_backend::OrtBackend),
}

impl Runner {
    /// Opens the calibration model `model` with `engine` on all cores.
    fn open(model: &pb::ModelProto, engine: BackendKind) -> Result<Self> {
        const NAME: &str = "the calibration model";
        match engine {
            BackendKind::Tract => Ok(Runner::Tract(TractBackend::open_proto(model, NAME, 0)?)),
            #[cfg(feature = "ort")]
            BackendKind::Ort => {
                use prost::Message;
                Ok(Runner::Ort(
                    crate::infer::ort_backend::OrtBackend::open_bytes(
                        &model.encode_to_vec(),
                        NAME,
                        0,
                    )?,
                ))
            }
            #[cfg(not(feature = "ort"))]
            BackendKind::Ort => Err(Error::Usage(
                "this pipe was built without the `ort` feature; use --calibration-backend tract"
                    .into(),
            )),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Runner::Tract(_) => "tract",
            #[cfg(feature = "ort")]
            Runner::Ort(_) => "ort",
        }
    }

    fn run_outputs(
        &mut self,
        images: ndarray::ArrayView4<'_, f32>,
    ) -> Result<Vec<ndarray::ArrayD<f32>>> {
        match self {
            Runner::Tract(b) => b.run_outputs(images),
            #[cfg(feature = "ort")]
            Runner::Ort(b) => b.run_outputs(images),
        }
    }
}

/// Runs the int8 model at `model` with `engine` on every test image of the run (its
/// `predictions.json`), in bounded batches, and compares its labels with the true labels and with
/// the float model's (tch's probabilities); progress goes to `events`.
///
/// # Errors
/// [`Error::InvalidFile`] naming `destination` (the path the model will have once verified) when
/// its accuracy is more than `max_drop` points below the float model's, saying by how much and what
/// to try (`--reduce-range` too when the weights have 8 bits on a CPU without int8 dot products);
/// the run's predictions or images cannot be read; the engine cannot be opened or fails.
pub fn verify_int8(
    model: &Path,
    destination: &Path,
    run_dir: &Path,
    max_drop: f64,
    engine: BackendKind,
    events: &dyn EventSink,
) -> Result<Int8Verification> {
    let preds: Predictions = crate::util::read_json(&run_dir.join(crate::run::PREDICTIONS_FILE))?;
    let spec = crate::onnx::ModelInfo::read(model)?.image;
    let records = Records::read(&preds)?;
    let mut backend = crate::infer::open_backend(
        model,
        &BackendOptions {
            kind: engine,
            device: InferDevice::Cpu,
            threads: 0,
            ort_lib: None,
        },
    )?;
    let engine = backend.name();
    let items: Vec<&PredictionItem> = preds.items.iter().collect();
    let n = items.len();
    let (mut right, mut float_right, mut same) = (0usize, 0usize, 0usize);
    let progress = |done: usize| events.progress(Task::Verify, done, n);
    progress(0);
    let done = run_test_images(
        backend.as_mut(),
        &preds,
        &records,
        &items,
        &spec,
        |row, it| {
            let label = argmax(row);
            let float = argmax(&it.probabilities);
            right += usize::from(label == it.label);
            float_right += usize::from(float == it.label);
            same += usize::from(label == float);
            Ok(())
        },
        progress,
    );
    events.emit(Event::ProgressDone(Task::Verify));
    done?;
    let share = |k: usize| k as f64 / n.max(1) as f64;
    let v = Int8Verification {
        backend: engine,
        images: n,
        float_accuracy: share(float_right),
        int8_accuracy: share(right),
        agreement: share(same),
        max_drop,
    };
    if v.drop_points() > max_drop {
        let seven_bits = crate::onnx::ModelInfo::read(model)?
            .metadata
            .iter()
            .any(|(k, v)| k == crate::contract::keys::WEIGHT_BITS && v == "7");
        let reduce = if !seven_bits
            && cfg!(target_arch = "x86_64")
            && crate::cpu::CpuFeatures::detect()
                .int8_dot_product()
                .is_none()
        {
            "--reduce-range on (this CPU has no int8 dot-product instructions), "
        } else {
            ""
        };
        return Err(Error::invalid(
            destination,
            format!(
                "int8 verification failed: test accuracy {:.4} against the float model's {:.4} \
                 ({:+.2} points; {}, --max-accuracy-drop), on {} test images; \
                 try {reduce}another --calibration (minmax, percentile, entropy) or more \
                 --calibration-images, or export float32; nothing was written",
                v.int8_accuracy,
                v.float_accuracy,
                0.0 - v.drop_points(),
                bound_words(max_drop),
                n
            ),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verification_line_gives_both_accuracies_and_the_agreement() {
        let v = Int8Verification {
            backend: "ort",
            images: 1000,
            float_accuracy: 0.456,
            int8_accuracy: 0.455,
            agreement: 0.965,
            max_drop: 0.5,
        };
        assert!((v.drop_points() - 0.1).abs() < 1e-9);
        assert_eq!(
            v.to_string(),
            "int8 verified with ort on 1000 test images: accuracy 0.4550 against float 0.4560 \
             (-0.10 points; a loss of at most 0.50 allowed), the float model's label on 96.5% of them"
        );
        assert_eq!(bound_words(-1.0), "a gain of at least 1.00 required");
        assert_eq!(bound_words(0.0), "a loss of at most 0.00 allowed");
    }
}
