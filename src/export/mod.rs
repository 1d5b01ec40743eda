//! Native ONNX export: the [`Arch`] description plus a run's weights become an ONNX model file with
//! the Keras "caffe" preprocessing inside the graph, keeping the contract of [`crate::contract`].
//!
//! - [`graph`]: the graph builder, one function per layer kind ([`build_model`]), float32 or int8;
//! - [`quantize`], [`calibrate`], [`int8`]: static int8 quantization in QDQ form, calibrated on the
//!   run's training images and verified on its test images;
//! - [`verify`]: the written file run with tract against the run's tch probabilities;
//! - [`triton`]: the Triton Inference Server repository layout and `config.pbtxt`;
//! - here: [`export_run`] (run folder → verified model file) and [`write_model`].

pub mod calibrate;
pub mod graph;
pub mod int8;
pub mod quantize;
pub mod triton;
pub mod verify;

pub use graph::{build_model, ExportOptions, DEFAULT_OPSET};
pub use triton::{write_triton_config, TritonLayout};
pub use verify::{verify_against_run, Verification, FP16_VERIFY_TOLERANCE, VERIFY_TOLERANCE};

use crate::arch::Arch;
use crate::config::TrainConfig;
use crate::contract::{Int8Quantization, ModelMetadata, Output};
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::weights::NamedTensor;
use int8::Int8Verification;
use prost::Message;
use quantize::{QuantPlan, QuantizeOptions};
use std::path::{Path, PathBuf};
use tract_onnx::pb;

/// Encodes `model` and writes it atomically to `path` (temporary file in the same folder, then rename),
/// creating the parent folder if needed.
///
/// # Errors
/// [`Error::Io`] naming `path`.
pub fn write_model(path: &Path, model: &pb::ModelProto) -> Result<()> {
    write_model_checked(path, model, |_| Ok(()))
}

/// As [`write_model`], calling `check` on the complete temporary file before it is renamed into
/// place; nothing is left at `path` when `check` fails.
///
/// # Errors
/// [`Error::Io`] naming `path`, or `check`'s error.
pub fn write_model_checked(
    path: &Path,
    model: &pb::ModelProto,
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let bytes = model.encode_to_vec();
    crate::util::write_atomic_checked(path, |w| w.write_all(&bytes), check)
}

/// Where an exported model goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// One ONNX file.
    File(PathBuf),
    /// A Triton model repository: the model file, `config.pbtxt` and `labels.txt`.
    Triton(TritonLayout),
}

impl Destination {
    /// The ONNX file written.
    pub fn model_file(&self) -> PathBuf {
        match self {
            Destination::File(path) => path.clone(),
            Destination::Triton(layout) => layout.model_file(),
        }
    }
}

/// Options of [`export_run`].
#[derive(Debug, Clone)]
pub struct RunExportOptions {
    /// ONNX opset of the default domain (13..=21).
    pub opset: i64,
    /// Probabilities or logits.
    pub output: Output,
    /// Test images to verify the written file on with tract (0 = no verification).
    pub verify_images: usize,
    /// Store the weights as float16 (verified with [`FP16_VERIFY_TOLERANCE`]).
    pub fp16_weights: bool,
    /// Quantize to int8 (calibrated on the run's training images, verified on all its test images).
    pub quantize: Option<QuantizeOptions>,
    /// Test-time augmentation by horizontal flip inside the graph ([`ExportOptions::tta_flip`]); the
    /// network is verified without it (the run's predictions are of single images), the wrapper by
    /// the tests. Float exports only.
    pub tta_flip: bool,
}

/// Summary of an export.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The name of the run exported (its folder's name).
    pub run: String,
    /// The ONNX file written: the file asked for, or `DIR/<name>/<version>/model.onnx` in a Triton
    /// repository.
    pub path: PathBuf,
    /// Verification against tch's test-set probabilities, when it ran (a float export with test
    /// images to verify on).
    pub verification: Option<Verification>,
    /// Verification of an int8 export on the run's test images.
    pub int8: Option<Int8Verification>,
    /// Size of the file in bytes (MB = 10⁶ bytes in the printed summary).
    pub bytes: u64,
    /// ONNX opset of the default domain (`ai.onnx`).
    pub opset: i64,
    /// For a Triton export: the model folder (`DIR/<name>`), and whether `config.pbtxt` and
    /// `labels.txt` were written (false: the folder had a `config.pbtxt`, kept as it was).
    pub triton_model_dir: Option<(PathBuf, bool)>,
    /// Whether the graph averages each image's output with its mirror's (`--tta flip`).
    pub tta_flip: bool,
}

impl std::fmt::Display for ExportSummary {
    /// What `pipe export` prints: the Triton folder and the verification when there are, then
    /// `exported run <run> to <path> (<MB> MB, opset <opset>)`, with `, test-time augmentation:
    /// flip` in the parentheses for a `--tta flip` export.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((dir, config_written)) = &self.triton_model_dir {
            let version = self
                .path
                .parent()
                .and_then(Path::file_name)
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default();
            if *config_written {
                writeln!(
                    f,
                    "Triton model repository: {} (config.pbtxt, labels.txt, {version}/model.onnx)",
                    dir.display()
                )?;
            } else {
                writeln!(
                    f,
                    "Triton model repository: {} (version {version}; its config.pbtxt and labels.txt kept as they were: delete them to have pipe write them anew)",
                    dir.display()
                )?;
            }
        }
        if let Some(v) = &self.verification {
            writeln!(f, "{v}")?;
        }
        if let Some(v) = &self.int8 {
            writeln!(f, "{v}")?;
        }
        write!(
            f,
            "exported run {} to {} ({:.1} MB, opset {}{})",
            self.run,
            self.path.display(),
            self.bytes as f64 / 1e6,
            self.opset,
            if self.tta_flip {
                ", test-time augmentation: flip"
            } else {
                ""
            }
        )
    }
}

/// Exports a training run folder (see [`crate::run`]) to `destination`: base weights from the run's
/// `weights` file (its fingerprint must equal the one the run trained with) or, for a fine-tuned run,
/// its `base.safetensors`; head from `head.safetensors`; metadata ([`ModelMetadata`]) from
/// `config.json` and `predictions.json`. A Triton destination also gets its `config.pbtxt` and
/// `labels.txt`, after the model file.
///
/// # Errors
/// A missing or incomplete run, base weights that changed since training, or an unwritable
/// destination; nothing is left at the model file on error.
/// With `verify_images > 0`, the written model is first checked with [`verify_against_run`] and only
/// renamed into place when it passes. An int8 export ([`RunExportOptions::quantize`]) is calibrated
/// on the run's training images ([`int8::calibrate`]) and verified on all its test images
/// ([`int8::verify_int8`]) instead; the progress of both goes to `events`.
pub fn export_run(
    run_dir: &Path,
    destination: &Destination,
    opts: &RunExportOptions,
    events: &dyn EventSink,
) -> Result<ExportSummary> {
    use crate::run::{Predictions, CONFIG_FILE, PREDICTIONS_FILE};
    let config: TrainConfig = crate::util::read_json(&run_dir.join(CONFIG_FILE))?;
    let arch = config.arch(config.classes.len());
    let (base, fp, head) = run_weights(run_dir, &config, &arch)?;
    // The final model's test accuracy, from tch's test predictions (the last epoch's validation
    // accuracy is another figure with --val-split or --restore-best).
    let predictions: Option<Predictions> =
        crate::util::read_json(&run_dir.join(PREDICTIONS_FILE)).ok();
    let metadata = ModelMetadata {
        classes: config.classes.clone(),
        input_size: config.input_size,
        resize: config.resize,
        pooling: config.pooling,
        output: opts.output,
        weights_fingerprint: fp,
        fine_tuned_conv_layers: config.unfreeze,
        run: config.name.clone(),
        fp16_weights: opts.fp16_weights,
        test_accuracy: predictions.as_ref().and_then(Predictions::accuracy),
        int8: opts.quantize.as_ref().map(|q| Int8Quantization {
            calibration: q.calibration.as_str().into(),
            images: q.images,
            seed: q.seed,
            reduce_range: q.reduce_range,
        }),
        tta_flip: opts.tta_flip,
    };
    if opts.tta_flip && opts.quantize.is_some() {
        return Err(Error::Usage(
            "--tta flip applies to float exports; it cannot be combined with --quantize int8 yet"
                .into(),
        ));
    }
    let mut export = ExportOptions {
        opset: opts.opset,
        output: opts.output,
        metadata: metadata.to_props(),
        fp16_weights: opts.fp16_weights,
        quantization: None,
        tta_flip: false,
    };
    let float = build_model(&arch, &base, &head, &export)?;
    let final_output = destination.model_file();
    // A Triton export is written into a hidden folder first and renamed into place once verified.
    let staging = match destination {
        Destination::Triton(layout) => TritonStaging::new(layout),
        Destination::File(_) => None,
    };
    let output = staging
        .as_ref()
        .map_or_else(|| final_output.clone(), |s| s.model_file.clone());
    let (verification, int8) = match &opts.quantize {
        None if opts.tta_flip => {
            let tta = build_model(
                &arch,
                &base,
                &head,
                &ExportOptions {
                    tta_flip: true,
                    ..export.clone()
                },
            )?;
            (
                write_verified_tta(&output, &tta, &float, run_dir, opts)?,
                None,
            )
        }
        None => (write_verified(&output, &float, run_dir, opts)?, None),
        Some(q) => {
            let spec = crate::data::ImageSpec::new(config.input_size, config.resize);
            let images = int8::calibration_images(run_dir, q.images, q.seed, &spec)?;
            if let Some(path) = &q.save_calibration {
                crate::util::write_atomic(path, |w| std::io::Write::write_all(w, &images.pixels))?;
            }
            let (points, stats) =
                int8::calibrate(&float, &arch, &images, q.calibration, q.backend, events)?;
            export.quantization = Some(QuantPlan::new(
                &points,
                &stats,
                q.calibration,
                q.reduce_range,
            )?);
            export.metadata = ModelMetadata {
                int8: metadata.int8.clone().map(|i| Int8Quantization {
                    images: images.len(),
                    ..i
                }),
                ..metadata
            }
            .to_props();
            let model = build_model(&arch, &base, &head, &export)?;
            let mut found = None;
            write_model_checked(&output, &model, |tmp| {
                if opts.verify_images > 0 {
                    found = Some(int8::verify_int8(
                        tmp,
                        &final_output,
                        run_dir,
                        q.max_accuracy_drop,
                        q.backend,
                        events,
                    )?);
                }
                Ok(())
            })?;
            (None, found)
        }
    };
    let bytes = std::fs::metadata(&output)
        .map_err(|e| Error::io(&output, e))?
        .len();
    let triton_model_dir = match destination {
        Destination::Triton(layout) => {
            // A model folder's config (its version policy, say) holds for every version: a new
            // version leaves an existing one as it is.
            let model_dir = staging
                .as_ref()
                .map_or_else(|| layout.model_dir(), |s| s.model_dir.clone());
            let write = !model_dir.join("config.pbtxt").exists();
            if write {
                let info = crate::onnx::ModelInfo::read(&output)?;
                write_triton_config(&model_dir, &layout.name, &info, layout.max_batch_size)?;
            }
            if let Some(staging) = staging {
                staging.go_live()?;
            }
            Some((layout.model_dir(), write))
        }
        Destination::File(_) => None,
    };
    Ok(ExportSummary {
        run: config.name,
        path: final_output,
        bytes,
        opset: opts.opset,
        verification,
        int8,
        triton_model_dir,
        tta_flip: opts.tta_flip,
    })
}

/// Where a Triton export is written before it goes live: a hidden folder (a name starting with a
/// dot, which repository scans pass over) renamed into place once the model file is written and
/// verified, so that a server polling the repository never sees a version folder without its
/// `model.onnx`, nor a new model without its `config.pbtxt`. Removed, with what it holds, when the
/// export fails.
struct TritonStaging {
    /// The hidden folder: `DIR/.<name>.<pid>.staging` holding the whole model folder for a new
    /// model, `DIR/<name>/.<version>.<pid>.staging` holding the version's files for a new version.
    root: PathBuf,
    /// What `root` becomes: `DIR/<name>` or `DIR/<name>/<version>`.
    target: PathBuf,
    /// Where the model file is written meanwhile.
    model_file: PathBuf,
    /// Where `config.pbtxt` and `labels.txt` are looked for and written meanwhile: inside `root`
    /// for a new model, the model's own folder for a new version.
    model_dir: PathBuf,
    /// Whether `root` has been renamed into place (then nothing is removed on drop).
    live: bool,
}

impl TritonStaging {
    /// The staging of `layout`'s export; `None` when its version folder already exists (its
    /// `model.onnx` is then replaced by a rename, as a plain file is).
    fn new(layout: &TritonLayout) -> Option<Self> {
        let (model_dir, version) = (layout.model_dir(), layout.version.to_string());
        let pid = std::process::id();
        if model_dir.join(&version).exists() {
            return None;
        }
        Some(if model_dir.exists() {
            let root = model_dir.join(format!(".{version}.{pid}.staging"));
            TritonStaging {
                model_file: root.join("model.onnx"),
                target: model_dir.join(&version),
                model_dir,
                root,
                live: false,
            }
        } else {
            let root = layout
                .repository
                .join(format!(".{}.{pid}.staging", layout.name));
            TritonStaging {
                model_file: root.join(&version).join("model.onnx"),
                target: model_dir,
                model_dir: root.clone(),
                root,
                live: false,
            }
        })
    }

    /// Renames the staged folder into place.
    ///
    /// # Errors
    /// The rename fails (for example, the target appeared meanwhile).
    fn go_live(mut self) -> Result<()> {
        std::fs::rename(&self.root, &self.target).map_err(|e| Error::io(&self.target, e))?;
        self.live = true;
        Ok(())
    }
}

impl Drop for TritonStaging {
    fn drop(&mut self) {
        if !self.live {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The weights of a run's model: base (and its fingerprint) and head.
///
/// # Errors
/// A fine-tuned run without its `base.safetensors`, a frozen-base run whose weights file changed
/// since training, or weights that cannot be read.
fn run_weights(
    run_dir: &Path,
    config: &TrainConfig,
    arch: &Arch,
) -> Result<(Vec<NamedTensor>, String, Vec<NamedTensor>)> {
    let base_path = crate::run::base_weights(run_dir, config);
    if config.unfreeze > 0 && base_path == config.weights {
        return Err(Error::invalid(
            run_dir,
            format!(
                "fine-tuned run without its {}; it did not finish (train it again or --resume it)",
                crate::run::BASE_FILE
            ),
        ));
    }
    let (base, fp) = crate::weights::load_base(&base_path, arch, true)?;
    // A fine-tuned run carries its own base; a frozen-base run must find the weights it trained with.
    if config.unfreeze == 0 && fp != config.weights_fingerprint {
        return Err(Error::invalid(
            &config.weights,
            format!(
                "base weights fingerprint {fp} differs from the one run {} trained with ({})",
                config.name, config.weights_fingerprint
            ),
        ));
    }
    let (head, _) = crate::weights::load_safetensors(
        &run_dir.join(crate::run::HEAD_FILE),
        &arch.head_params(),
    )?;
    Ok((base, fp, head))
}

/// Writes the test-time-augmented `tta` model to `output` once the same network without the
/// wrapper, `plain`, passed [`verify_against_run`] (written to a temporary file beside `output`,
/// removed after); returns the verification when it ran.
///
/// # Errors
/// As [`write_model_checked`] and [`verify_against_run`].
fn write_verified_tta(
    output: &Path,
    tta: &pb::ModelProto,
    plain: &pb::ModelProto,
    run_dir: &Path,
    opts: &RunExportOptions,
) -> Result<Option<Verification>> {
    let mut verification = None;
    write_model_checked(output, tta, |tmp| {
        if opts.verify_images > 0 {
            let dir = tmp.parent().unwrap_or(Path::new("."));
            let plain_file = tempfile::Builder::new()
                .prefix(".pipe-verify-")
                .suffix(".onnx")
                .tempfile_in(dir)
                .map_err(|e| Error::io(dir, e))?;
            write_model(plain_file.path(), plain)?;
            verification = Some(verify_file(plain_file.path(), run_dir, opts)?);
        }
        Ok(())
    })?;
    Ok(verification)
}

/// Writes `model` to `output`, verified first against the run when `opts.verify_images > 0`; returns
/// the verification when it ran.
///
/// # Errors
/// As [`write_model_checked`] and [`verify_against_run`].
fn write_verified(
    output: &Path,
    model: &pb::ModelProto,
    run_dir: &Path,
    opts: &RunExportOptions,
) -> Result<Option<Verification>> {
    let mut verification = None;
    write_model_checked(output, model, |tmp| {
        if opts.verify_images > 0 {
            verification = Some(verify_file(tmp, run_dir, opts)?);
        }
        Ok(())
    })?;
    Ok(verification)
}

/// [`verify_against_run`] of the model file `file` on `opts.verify_images` test images, at the
/// tolerance of its weights (float16: [`FP16_VERIFY_TOLERANCE`], else [`VERIFY_TOLERANCE`]).
///
/// # Errors
/// As [`verify_against_run`].
fn verify_file(file: &Path, run_dir: &Path, opts: &RunExportOptions) -> Result<Verification> {
    let tolerance = if opts.fp16_weights {
        FP16_VERIFY_TOLERANCE
    } else {
        VERIFY_TOLERANCE
    };
    verify_against_run(file, run_dir, opts.verify_images, opts.output, tolerance)
}
