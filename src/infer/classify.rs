//! Batched classification of image files, pipelined: a decoding thread reads and decodes the next
//! batch (as the model's [`ModelInfo::image`] says) while the backend runs the current one, and each
//! file's [`Record`] goes to the caller as soon as its batch is done, so that the backend never waits for
//! the decoder on a large folder and memory does not grow with the number of files (at most three
//! batches exist at a time: one being decoded, one waiting, one running).

use super::Backend;
use crate::data::{FileOutcome, OnError, SkippedFile};
use crate::error::{Error, Result};
use crate::events::{Event, EventSink, Task};
use crate::onnx::ModelInfo;
use crate::report::argmax;
use ndarray::{Array2, ArrayView4};
use std::path::{Path, PathBuf};

/// One classified image: an infer record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    /// The image file (serialised as lossy UTF-8: a name that is not UTF-8 shows U+FFFD).
    #[serde(serialize_with = "crate::util::serialize_lossy_path")]
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

/// What became of one input file: its prediction, or why it could not be decoded.
#[derive(Debug, Clone)]
pub enum Record {
    /// Decoded and classified.
    Classified(Prediction),
    /// Not decoded (unreadable, empty, truncated, not an image, oversized, ...).
    Skipped(SkippedFile),
}

impl Record {
    /// The input file.
    pub fn path(&self) -> &Path {
        match self {
            Record::Classified(p) => &p.path,
            Record::Skipped(s) => &s.path,
        }
    }
}

/// How [`classify`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassifyOptions {
    /// Images per backend run (at least 1).
    pub batch_size: usize,
    /// [`OnError::Skip`]: a file that cannot be decoded becomes a [`Record::Skipped`];
    /// [`OnError::Stop`] (`--strict`): its error ends the classification, before its batch's records.
    pub on_error: OnError,
}

/// Decodes the bytes of one image file for `info`'s model: the pixels its input takes, HWC RGB `u8`,
/// `input_size * input_size * 3` bytes, resized by the model's policy and filter
/// ([`ModelInfo::image`]). `pipe infer` and every other client of an exported model decode through
/// this function or [`decode_files`], so that a model always sees the pixels it was trained on.
///
/// # Errors
/// As [`crate::data::decode_image`]: `path` named, with what is wrong (empty, not an image,
/// unsupported, truncated, corrupt, oversized).
pub fn decode_image(info: &ModelInfo, path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    crate::data::decode_image(path, bytes, &info.image)
}

/// Reads and decodes image files for `info`'s model as [`decode_image`] does, in parallel (rayon's
/// current pool): one outcome per file, in order; a bad file never stops the others.
///
/// # Errors
/// [`Error::Usage`] for a model of input size 0 (no file is read).
pub fn decode_files(info: &ModelInfo, paths: &[&Path]) -> Result<Vec<FileOutcome>> {
    crate::data::decode_files(paths, &info.image)
}

/// A batch of files decoded ahead of the backend.
struct DecodedBatch<'f> {
    files: &'f [PathBuf],
    /// Per file: `None` when decoded, else why not.
    failed: Vec<Option<SkippedFile>>,
    /// Float32 NHWC RGB 0..255 of the decoded files, in file order.
    input: Vec<f32>,
}

/// Decodes `files` for `info`'s model into the backend's input.
fn decode_batch<'f>(info: &ModelInfo, files: &'f [PathBuf]) -> Result<DecodedBatch<'f>> {
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let mut input = Vec::with_capacity(files.len() * info.image.image_bytes());
    let failed = decode_files(info, &paths)?
        .into_iter()
        .map(|outcome| match outcome {
            Ok(px) => {
                input.extend(px.iter().map(|&v| f32::from(v)));
                None
            }
            Err(skipped) => Some(skipped),
        })
        .collect();
    Ok(DecodedBatch {
        files,
        failed,
        input,
    })
}

/// What [`classify`] did: the files done and the time the backend spent on them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Classified {
    /// Files done (classified or skipped).
    pub files: usize,
    /// Wall-clock seconds spent inside [`Backend::run`], summed over the batches. Divided by the
    /// whole classification's seconds, it is the share of time the backend was busy: near 1 when
    /// decoding keeps up with the backend, lower when the backend waits for the decoder.
    pub backend_seconds: f64,
}

/// Classifies `files` with `backend` in batches of `opts.batch_size`, decoding each next batch on a
/// second thread (whose parallel decoding runs on rayon's pool) while the backend runs the current
/// one. After each batch, `record` receives one [`Record`] per file, in file order, and `events` the
/// progress ([`Task::Infer`], files done of all). Returns the files done and the backend's busy time.
///
/// # Errors
/// With [`OnError::Stop`], the first file of the first batch holding one that cannot be decoded
/// (named, as [`crate::data::load_image`] says it); a backend failure or an output that is not
/// `[batch, classes]`; the first error of `record`. Classification stops there; the decoding thread
/// stops after the batch it is decoding.
pub fn classify(
    backend: &mut dyn Backend,
    info: &ModelInfo,
    files: &[PathBuf],
    opts: &ClassifyOptions,
    mut record: impl FnMut(Record) -> Result<()>,
    events: &dyn EventSink,
) -> Result<Classified> {
    let task = Task::Infer {
        backend: backend.name(),
    };
    let progress = |done: usize| {
        events.emit(Event::Progress {
            task: task.clone(),
            done: done as u64,
            total: files.len() as u64,
        })
    };
    progress(0);
    let done = classify_batches(backend, info, files, opts, &mut record, progress);
    events.emit(Event::ProgressDone(task.clone()));
    done
}

/// The batches of [`classify`], `progress` receiving the files done after each.
fn classify_batches(
    backend: &mut dyn Backend,
    info: &ModelInfo,
    files: &[PathBuf],
    opts: &ClassifyOptions,
    record: &mut impl FnMut(Record) -> Result<()>,
    progress: impl Fn(usize),
) -> Result<Classified> {
    let batches = files.chunks(opts.batch_size.max(1));
    std::thread::scope(|scope| {
        // One batch waits in the channel while the next is decoded and the current one runs.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for chunk in batches {
                let batch = decode_batch(info, chunk);
                let failed = batch.is_err();
                // A send fails once the classifying side has stopped (an error): stop too.
                if tx.send(batch).is_err() || failed {
                    break;
                }
            }
        });
        let mut done = Classified {
            files: 0,
            backend_seconds: 0.0,
        };
        for batch in rx {
            let (files, seconds) = run_batch(backend, info, batch?, opts.on_error, record)?;
            done.files += files;
            done.backend_seconds += seconds;
            progress(done.files);
        }
        Ok(done)
    })
}

/// Runs the decoded files of `batch` through `backend` and hands every file's record to `record`, in
/// file order; returns the number of files and the seconds the backend took.
fn run_batch(
    backend: &mut dyn Backend,
    info: &ModelInfo,
    batch: DecodedBatch<'_>,
    on_error: OnError,
    record: &mut impl FnMut(Record) -> Result<()>,
) -> Result<(usize, f64)> {
    if on_error == OnError::Stop {
        if let Some(s) = batch.failed.iter().flatten().next() {
            return Err(Error::invalid(&s.path, s.message.clone()));
        }
    }
    let decoded = batch.failed.iter().filter(|f| f.is_none()).count();
    let t = std::time::Instant::now();
    let probs = if decoded == 0 {
        Array2::zeros((0, info.classes.len()))
    } else {
        run_checked(backend, info, &batch.input, decoded)?
    };
    let seconds = t.elapsed().as_secs_f64();
    // Output row `row` is the `row`-th decoded file's (run_checked made sure there is one each).
    let mut row = 0;
    for (path, failed) in batch.files.iter().zip(batch.failed) {
        let rec = match failed {
            Some(skipped) => Record::Skipped(skipped),
            None => {
                row += 1;
                Record::Classified(prediction(path, probs.row(row - 1).to_vec(), info))
            }
        };
        record(rec)?;
    }
    Ok((batch.files.len(), seconds))
}

/// Runs `n` images (`input`: float32 NHWC) through `backend`, checking that the output is
/// `[n, classes]`.
fn run_checked(
    backend: &mut dyn Backend,
    info: &ModelInfo,
    input: &[f32],
    n: usize,
) -> Result<Array2<f32>> {
    let s = info.input_size;
    let name = backend.name();
    let err = |message: String| Error::Backend {
        backend: name,
        message,
    };
    let view = ArrayView4::from_shape((n, s, s, 3), input).map_err(|e| err(e.to_string()))?;
    let probs = backend.run(view)?;
    if probs.shape() != [n, info.classes.len()] {
        return Err(err(format!(
            "output shape {:?}, expected [{n}, {}]",
            probs.shape(),
            info.classes.len()
        )));
    }
    Ok(probs)
}

/// The record of an image whose output row is `row`.
fn prediction(path: &Path, row: Vec<f32>, info: &ModelInfo) -> Prediction {
    let k = argmax(&row);
    Prediction {
        path: path.to_path_buf(),
        class_index: k,
        label: info.classes[k].clone(),
        probability: row[k],
        probabilities: row,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model of input side 4 decoding as `resize` says.
    fn model(resize: crate::data::ResizePolicy) -> ModelInfo {
        ModelInfo {
            input_size: 4,
            image: crate::data::ImageSpec::new(4, resize),
            classes: vec!["a".into()],
            classes_from_metadata: true,
            output_name: crate::contract::PROBABILITIES.into(),
            metadata: Vec::new(),
            opset: 17,
            parameters: 0,
        }
    }

    /// A 12x4 PNG in red, green and blue vertical thirds: crop keeps the green centre square,
    /// squash keeps all three, a column of 4 pixels each squeezed to 1 and a third.
    #[test]
    fn decode_image_squashes_or_crops_as_the_model_says() {
        use crate::data::ResizePolicy;
        const THIRDS: [[u8; 3]; 3] = [[255, 0, 0], [0, 255, 0], [0, 0, 255]];
        let img = image::RgbImage::from_fn(12, 4, |x, _| image::Rgb(THIRDS[x as usize / 4]));
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let png = png.into_inner();
        let path = Path::new("thirds.png");
        let crop = decode_image(&model(ResizePolicy::Crop), path, &png).unwrap();
        assert_eq!(crop, [0, 255, 0].repeat(16));
        let squash = decode_image(&model(ResizePolicy::Squash), path, &png).unwrap();
        assert_eq!(squash.len(), 48);
        for row in squash.chunks(12) {
            assert_eq!(&row[..3], &[255, 0, 0], "{squash:?}");
            assert_eq!(&row[9..], &[0, 0, 255], "{squash:?}");
            assert!(row[4] > 0 && row[7] > 0, "green in the middle: {squash:?}");
        }
        let err = decode_image(&model(ResizePolicy::Crop), path, b"").unwrap_err();
        assert!(err.to_string().contains("thirds.png"), "{err}");
    }

    /// A backend that takes 30 ms per batch and gives every image probability 1 for class 0.
    struct Slow {
        runs: usize,
    }

    impl Backend for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn run(&mut self, images: ndarray::ArrayView4<'_, f32>) -> Result<Array2<f32>> {
            self.runs += 1;
            // 30 ms of work: the clock spun on, as a real backend computes.
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(30) {
                std::hint::spin_loop();
            }
            Ok(Array2::ones((images.shape()[0], 1)))
        }
    }

    /// Five 4x4 PNGs and an empty file, in batches of 2: three backend runs (the empty file is
    /// skipped, not run), whose 30 ms each the busy time counts, and no more than the wall time.
    #[test]
    fn classify_counts_files_and_the_backend_busy_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for i in 0..6 {
            let path = dir.path().join(format!("{i}.png"));
            if i == 3 {
                std::fs::write(&path, b"").unwrap();
            } else {
                image::RgbImage::new(4, 4).save(&path).unwrap();
            }
            files.push(path);
        }
        let info = model(crate::data::ResizePolicy::Squash);
        let opts = ClassifyOptions {
            batch_size: 2,
            on_error: OnError::Skip,
        };
        let (mut backend, mut records) = (Slow { runs: 0 }, Vec::new());
        let events = crate::events::Collected::default();
        let t = std::time::Instant::now();
        let done = classify(
            &mut backend,
            &info,
            &files,
            &opts,
            |r| {
                records.push(r);
                Ok(())
            },
            &events,
        )
        .unwrap();
        // Progress after each batch of 2, of the 6 files, then the end of the task.
        let task = Task::Infer { backend: "slow" };
        let progress: Vec<Event> = [0, 2, 4, 6]
            .map(|done| Event::Progress {
                task: task.clone(),
                done,
                total: 6,
            })
            .into_iter()
            .chain([Event::ProgressDone(task)])
            .collect();
        assert_eq!(events.events(), progress);
        let wall = t.elapsed().as_secs_f64();
        assert_eq!(done.files, 6);
        assert_eq!(backend.runs, 3);
        assert!(matches!(records[3], Record::Skipped(_)), "{:?}", records[3]);
        assert!(done.backend_seconds >= 0.09, "{done:?}");
        assert!(done.backend_seconds <= wall, "{done:?} in {wall} s");
    }
}
