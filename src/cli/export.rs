//! `pipe export`: a training run as a verified ONNX model file, or a Triton model repository.

use super::render::Stderr;
use super::RunSelection;
use anyhow::Result;
use pipe::contract::Output;
use pipe::export::calibrate::Calibration;
use pipe::export::quantize::{
    QuantizeOptions, ReduceRange, DEFAULT_CALIBRATION_IMAGES, DEFAULT_INT8_BACKEND,
    DEFAULT_MAX_ACCURACY_DROP,
};
use pipe::export::{Destination, RunExportOptions, TritonLayout};
use pipe::infer::BackendKind;
use std::path::PathBuf;

/// The arithmetic of an exported model (`--quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Quantize {
    /// Static int8 quantization (QDQ): int8 weights per output channel, uint8 activations.
    Int8,
}

/// Where `pipe export` writes the model when no output is named.
const DEFAULT_OUTPUT: &str = "onnx/model.onnx";

/// Arguments of `pipe export`.
#[derive(clap::Args)]
#[command(mut_arg("run", |a| a.help("Run to export: `latest`, a run name in --runs-dir, or a run folder")))]
pub struct ExportArgs {
    /// The ONNX file to write (written to a temporary file, then renamed) [default: onnx/model.onnx].
    /// Not with --triton, which writes the model inside the repository instead.
    #[arg(conflicts_with = "triton")]
    output: Option<PathBuf>,
    #[command(flatten)]
    run: RunSelection,
    /// ONNX opset (13..21).
    #[arg(long, default_value_t = pipe::export::DEFAULT_OPSET)]
    opset: i64,
    /// Output logits instead of softmax probabilities.
    #[arg(long)]
    logits: bool,
    /// Store the weights as float16 (about half the file size; computation stays float32). The
    /// verification tolerance becomes |Δp| <= 1e-2, and a label may differ from the training run's only
    /// where its two most probable classes are within 1e-2 (a near-tie).
    #[arg(long)]
    fp16: bool,
    /// Before the file is put in place, run it with tract on this many of the run's test images and
    /// compare with the probabilities the training run computed with libtorch (0 = skip). A mismatch
    /// (an argmax differs or |Δp| > 1e-4) fails the export and leaves no file. With --quantize int8,
    /// every test image is run instead, and any value but 0 verifies.
    #[arg(long, default_value_t = 256)]
    verify_images: usize,
    /// Quantize the model: int8 = static quantization in QDQ form (standard ONNX QuantizeLinear and
    /// DequantizeLinear around the float operators): int8 weights, symmetric per output channel, for
    /// every conv and dense layer; uint8 activations with ranges calibrated on the run's training
    /// images. Input and output stay float (the same pixels in, probabilities or logits out), so
    /// every client and server works unchanged. The file is about a quarter of the float one and runs
    /// several times faster in ONNX Runtime on CPUs with int8 dot-product instructions (AVX-512 VNNI,
    /// AVX-VNNI). It is verified on every test image of the run: its accuracy and the share of labels
    /// it keeps are printed, and the export is refused (no file) when the accuracy drops by more than
    /// --max-accuracy-drop.
    #[arg(long, value_enum, value_name = "int8")]
    quantize: Option<Quantize>,
    /// Test-time augmentation inside the graph: flip = the model runs on each image and on its
    /// horizontal mirror and outputs the mean of the two (probabilities, or logits with --logits),
    /// so every backend, server and client gets it; twice the compute per image. The network is
    /// verified as without it; recorded as `tta: flip` in the metadata. Float exports only.
    #[arg(long, value_enum, value_name = "flip", conflicts_with = "quantize")]
    tta: Option<super::Tta>,
    /// With --quantize: how the activation ranges are calibrated: minmax (the largest value seen),
    /// percentile (the 99.999th percentile, clipping rare outliers) or entropy (the range whose
    /// quantized histogram is closest to the float one, TensorRT's method).
    #[arg(long, value_enum, default_value_t = Calibration::Percentile, requires = "quantize")]
    calibration: Calibration,
    /// With --quantize: training images of the run to calibrate on (class-balanced, chosen with
    /// --calibration-seed; all of them when the run has fewer).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CALIBRATION_IMAGES, requires = "quantize")]
    calibration_images: usize,
    /// With --quantize: seed of the choice of calibration images.
    #[arg(long, value_name = "SEED", default_value_t = 0, requires = "quantize")]
    calibration_seed: u64,
    /// With --quantize: int8 weights in 7 bits instead of 8 (on), in 8 (off), or as the CPU needs
    /// (auto). On CPUs without int8 dot-product instructions (x86-64 without AVX512_VNNI or AVX-VNNI) ONNX
    /// Runtime's int8 convolutions add pairs of products in int16 and saturate with 8-bit weights;
    /// auto chooses 7 bits on such a CPU, where the export is verified, and 8 elsewhere.
    #[arg(long, value_enum, value_name = "auto|on|off", default_value_t = ReduceRange::Auto,
          requires = "quantize")]
    reduce_range: ReduceRange,
    /// With --quantize: refuse the export when the int8 model's test accuracy is more than this many
    /// points (percentage points) below the float model's (a negative bound asks int8 to be that much
    /// more accurate).
    #[arg(long, value_name = "POINTS", default_value_t = DEFAULT_MAX_ACCURACY_DROP, requires = "quantize", allow_negative_numbers = true)]
    max_accuracy_drop: f64,
    /// With --quantize: also write the calibration images' pixels to this file (raw uint8, NHWC RGB,
    /// N x size x size x 3 bytes, in the order calibrated), to calibrate another quantizer on the
    /// very same pixels.
    #[arg(long, value_name = "FILE", requires = "quantize")]
    save_calibration: Option<PathBuf>,
    /// With --quantize: the engine that runs the float model on the calibration images and the int8
    /// model on the test images: ort (ONNX Runtime, the default where this pipe has it; several times
    /// faster at large input sizes) or tract.
    #[arg(long, value_enum, value_name = "ENGINE", default_value_t = DEFAULT_INT8_BACKEND, requires = "quantize")]
    calibration_backend: BackendKind,
    /// Write into a Triton Inference Server model repository in this folder instead of a single
    /// file: DIR/<triton-name>/<version>/model.onnx, and config.pbtxt (dynamic batching) and
    /// labels.txt when the model's folder has no config.pbtxt yet (an existing one is kept). The ONNX
    /// file is written only there (naming an output file as well is refused).
    #[arg(long, value_name = "DIR")]
    triton: Option<PathBuf>,
    /// Model name inside the Triton repository.
    #[arg(long, default_value = "pipe_vgg16")]
    triton_name: String,
    /// Largest batch Triton may form (max_batch_size in config.pbtxt).
    #[arg(long, default_value_t = 256)]
    triton_max_batch: usize,
    /// The version folder inside the Triton model's folder [default: one above its highest
    /// version, 1 for a new model]; an existing version's model.onnx is replaced.
    #[arg(long, value_name = "N", requires = "triton")]
    triton_version: Option<u64>,
}

impl ExportArgs {
    /// Exports the run and prints the export's summary.
    ///
    /// # Errors
    /// As [`pipe::export::export_run`]; an output path under a regular file.
    pub fn run(self) -> Result<()> {
        let run_dir = self.run.resolve()?;
        let destination = match self.triton {
            Some(repository) => {
                if self.triton_version == Some(0) {
                    anyhow::bail!("--triton-version must be at least 1 (Triton's version folders are 1, 2, ...)");
                }
                let version = self
                    .triton_version
                    .unwrap_or_else(|| TritonLayout::next_version(&repository, &self.triton_name));
                Destination::Triton(TritonLayout {
                    repository,
                    name: self.triton_name,
                    max_batch_size: self.triton_max_batch,
                    version,
                })
            }
            None => Destination::File(self.output.unwrap_or_else(|| PathBuf::from(DEFAULT_OUTPUT))),
        };
        pipe::util::check_output_path(&destination.model_file(), true)?;
        if self.quantize.is_some() {
            if self.fp16 {
                anyhow::bail!("--fp16 and --quantize int8 exclude each other: an int8 model stores int8 weights");
            }
            if self.calibration_images == 0 {
                anyhow::bail!("--calibration-images must be at least 1");
            }
            if !self.max_accuracy_drop.is_finite() {
                anyhow::bail!(
                    "--max-accuracy-drop must be a number of points, got {}",
                    self.max_accuracy_drop
                );
            }
        }
        let opts = RunExportOptions {
            tta_flip: self.tta == Some(super::Tta::Flip),
            opset: self.opset,
            output: Output::logits(self.logits),
            verify_images: self.verify_images,
            fp16_weights: self.fp16,
            quantize: self.quantize.map(|Quantize::Int8| QuantizeOptions {
                calibration: self.calibration,
                images: self.calibration_images,
                seed: self.calibration_seed,
                reduce_range: {
                    let choice = self.reduce_range;
                    let cpu = pipe::cpu::CpuFeatures::detect();
                    eprintln!("{}", choice.explain(&cpu));
                    choice.resolve(&cpu)
                },
                max_accuracy_drop: self.max_accuracy_drop,
                save_calibration: self.save_calibration,
                backend: self.calibration_backend,
            }),
        };
        if self.verify_images == 0 {
            eprintln!(
                "warning: --verify-images 0: the model is written unverified{}",
                if self.quantize.is_some() {
                    " (int8 accuracy not measured, --max-accuracy-drop not applied)"
                } else {
                    ""
                }
            );
        }
        let events = Stderr::new();
        let summary = pipe::export::export_run(&run_dir, &destination, &opts, &events);
        events.clear();
        println!("{}", summary?);
        Ok(())
    }
}
