//! The command line of `pipe`: the clap structs, one module per command, each with its arguments
//! and a `run` that calls the library and prints what it returns. The argument groups several
//! commands share are here, flattened into them with `#[command(flatten)]`.

#[cfg(feature = "train")]
mod evaluate;
#[cfg(feature = "train")]
mod explain;
mod export;
mod infer;
mod inspect;
#[cfg(feature = "train")]
mod lr_find;
mod render;
#[cfg(feature = "train")]
mod review;
#[cfg(feature = "serve")]
mod serve;
mod summary;
#[cfg(feature = "train")]
mod sweep;
#[cfg(feature = "train")]
mod train;
mod weights;

use clap::{ArgMatches, Parser, Subcommand};
use pipe::infer::{BackendKind, BackendOptions, InferDevice};
use std::path::PathBuf;

/// The exit codes, as `pipe --help` and each command's help list them (`main.rs` maps a command's
/// [`Outcome`] to them).
pub const EXIT_CODES: &str = "Exit codes:
  0  done, every input used
  1  error: bad option or data, unusable model, I/O failure, an input path that does not exist
     (before any work); for infer and explain also an image file named on the command line that
     cannot be decoded (reported after every other input was done)
  2  command-line usage error
  3  done, but some files inside folders could not be decoded and were skipped (each named on
     stderr and counted; infer lists them as error records in --format json/csv)";

/// Test-time augmentation (`pipe export --tta`, `pipe evaluate --tta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tta {
    /// The mean of the outputs on the image and on its horizontal mirror.
    Flip,
}

/// What a command that finished without error did: the exit code's input (0 for [`Outcome::Done`]
/// and `Skipped(0)`, 3 for `Skipped(n > 0)`, see [`EXIT_CODES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every input was used.
    Done,
    /// Done, but this many files inside folders could not be decoded and were skipped.
    Skipped(usize),
}

impl From<()> for Outcome {
    /// A command with nothing to report beyond success.
    fn from((): ()) -> Self {
        Outcome::Done
    }
}

/// The error for the files named on the command line that could not be decoded, if any.
///
/// # Errors
/// Each such file, named with what is wrong.
pub fn refuse_named(failed: &[impl std::fmt::Display]) -> anyhow::Result<()> {
    match failed {
        [] => Ok(()),
        [one] => Err(anyhow::anyhow!("{one}")),
        many => {
            let each: Vec<String> = many.iter().map(ToString::to_string).collect();
            anyhow::bail!(
                "{} named on the command line could not be decoded: {}",
                pipe::util::plural(many.len(), "file"),
                each.join("; ")
            )
        }
    }
}

/// The paths in `paths` that are not folders: the files named on the command line, whose failure
/// stops infer and explain with exit code 1 where a file found inside a folder is only skipped.
pub fn named_files(paths: &[PathBuf]) -> std::collections::HashSet<&std::path::Path> {
    paths
        .iter()
        .filter(|p| !p.is_dir())
        .map(PathBuf::as_path)
        .collect()
}

/// The image files under `paths` (files and folders, as infer and explain take them), after
/// printing a warning for each kind of skipped entry.
///
/// # Errors
/// No image files at all (with the reasons entries were skipped), or an unreadable input.
pub fn scan_inputs(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let (files, skipped) = pipe::data::scan_image_files(paths)?;
    let warnings = skipped.warnings();
    if files.is_empty() {
        let inputs: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
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
    Ok(files)
}

/// Transfer learning for image classifiers: fine-tune ImageNet VGG16 with libtorch, export ONNX natively
/// from Rust, classify with tract or ONNX Runtime.
///
/// Typical session: `pipe train` → `pipe export onnx/model.onnx` → `pipe infer --backend tract images/`.
#[derive(Parser)]
#[command(name = "pipe", version, about, long_about, after_help = EXIT_CODES)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `pipe`.
#[derive(Subcommand)]
pub enum Command {
    /// Train the dense head on the frozen ImageNet VGG16 base (the Keras transfer-learning recipe), or
    /// fine-tune the last conv layers with it (--unfreeze).
    ///
    /// Features of the frozen base are extracted once (and cached), then the head (Flatten → Dense 256
    /// ReLU → Dropout 0.5 → Dense classes) is trained on them with SGD or Adam; with --unfreeze N the
    /// last N conv layers train too, on decoded images. Writes models/runs/<name>/: config.json,
    /// checkpoint.safetensors (every epoch), head.safetensors, best.safetensors, base.safetensors (with
    /// --unfreeze), history.json, predictions.json and the figures accuracy.png, loss.png,
    /// predictions.png, confusion.png; then points models/runs/latest at it.
    #[cfg(feature = "train")]
    #[command(after_help = EXIT_CODES)]
    Train(train::TrainArgs),
    /// Evaluate a trained run on its test split: loss, accuracy, per-class precision and recall,
    /// confusion matrix.
    #[cfg(feature = "train")]
    #[command(after_help = EXIT_CODES)]
    Evaluate(evaluate::EvaluateArgs),
    /// Train the head for every combination of batch sizes and learning rates from one set of cached
    /// features, and compare validation accuracy per epoch.
    #[cfg(feature = "train")]
    #[command(after_help = EXIT_CODES)]
    Sweep(sweep::SweepArgs),
    /// Find a learning rate: the learning-rate range test of a recipe (its head on cached features, or
    /// its fine-tuning with --unfreeze).
    ///
    /// The recipe trains for --steps mini-batches while the rate grows exponentially from --start-lr
    /// to --end-lr, stopping when the smoothed loss passes 4 times its lowest value: the head alone
    /// on the frozen base's cached features, or, for a recipe with --unfreeze (the finetune preset),
    /// the last conv layers and the head on the images after the head's warm-up. Prints the rate
    /// --suggest picks (by default fastai's valley rule, about halfway along the longest fall of the
    /// smoothed loss; also the steepest descent's) beside the recipe's --lr (with a caution when the
    /// loss hardly fell), and draws lr_find.png: the loss of each step and its smoothed curve against
    /// the rate (log axis), both rates marked. Options that set a run's length or schedule
    /// (--epochs, --time-budget, --schedule, --lr-step-epochs, --patience, --restore-best) have no
    /// meaning here (the range test sets both) and are refused. Nothing a later pipe train reads is
    /// changed (the feature cache holds the same features).
    #[cfg(feature = "train")]
    #[command(name = "lr-find", after_help = EXIT_CODES)]
    LrFind(lr_find::LrFindArgs),
    /// Find suspected label errors: the training images the rest of the data disagrees with.
    ///
    /// The training split is cut into --folds folds (stratified by class); for each, a head trained
    /// with the recipe on the cached features of the other folds predicts the fold's images. Images
    /// are ranked by the out-of-fold probability of their given label, lowest first: review.json
    /// lists them all (path, given label, suggested label, score), review.png shows the first --show.
    /// Nothing a later pipe train reads is changed.
    #[cfg(feature = "train")]
    #[command(after_help = EXIT_CODES)]
    Review(review::ReviewArgs),
    /// Show where the model looks: a Grad-CAM heatmap over each image, for its predicted class.
    ///
    /// The gradient of the class's score with respect to the last conv block's output weights that
    /// block's channels; their weighted sum, through a ReLU and scaled to 0..1, is the heatmap
    /// (Selvaraju et al. 2017), drawn over the image as the model sees it (<image name>.cam.png,
    /// hot = red) and listed in explain.json.
    #[cfg(feature = "train")]
    #[command(after_help = EXIT_CODES)]
    Explain(explain::ExplainArgs),
    /// Print the layer table (name, output shape, parameters, trainable), like Keras' model.summary().
    #[command(after_help = EXIT_CODES)]
    Summary(summary::SummaryArgs),
    /// Export a training run as a self-contained ONNX model (preprocessing inside the graph).
    ///
    /// Input `images`: float32 [N,S,S,3] RGB pixels 0..255 (NHWC, N dynamic, S the run's input size).
    /// Output `probabilities`: float32 [N,classes] (softmax). Class names, preprocessing and how images
    /// are resized to S (the run's --resize policy and the filter) are in metadata_props.
    #[command(after_help = EXIT_CODES)]
    Export(export::ExportArgs),
    /// Classify image files or folders (recursively) with an exported ONNX model.
    ///
    /// Images are decoded (any format the image crate reads), converted to RGB and resized to the
    /// model's input size as its metadata says (squash or crop, bilinear). When images sit in folders
    /// named after classes, accuracy is printed too. A file inside a folder that cannot be decoded
    /// (unreadable, empty, truncated, not an image, oversized) is skipped: named on stderr, counted in
    /// the summary, an error record in --format json/csv, no line in text output (exit code 3).
    /// A file named on the command line that cannot be decoded is an error (exit code 1), reported
    /// after every other input was classified and written; a path that does not exist stops infer
    /// before any work. --strict stops at the first bad file instead.
    #[command(after_help = EXIT_CODES)]
    Infer(infer::InferArgs),
    /// Serve an exported model, or a Triton model repository, over HTTP (and gRPC with --grpc-port):
    /// the KServe v2 / Triton inference protocol (JSON and binary tensors, classification), POST
    /// /v1/classify for image files, dynamic batching, /metrics.
    ///
    /// Endpoints: GET /v2/health/live, /v2/health/ready, /v2, /v2/models/<name>[/versions/<v>][/ready|/config];
    /// POST /v2/models/<name>[/versions/<v>]/infer; POST /v1/classify[?top_k=K][&model=<name>][&version=<v>]
    /// (an image as the body, or multipart form files); POST /v2/repository/index and
    /// /v2/repository/models/<name>/load|unload (--model-repository); GET /metrics (Prometheus). Stops
    /// on SIGTERM or Ctrl-C after answering the requests in flight.
    #[cfg(feature = "serve")]
    #[command(after_help = EXIT_CODES)]
    Serve(serve::ServeArgs),
    /// Print an exported model's inputs, outputs, opset, metadata and parameter count.
    ///
    /// For an ONNX file that pipe did not export, prints what it holds (producer, opsets, inputs and
    /// outputs with their types and shapes, node and parameter counts), then why pipe cannot run it
    /// (exit code 1).
    #[command(after_help = EXIT_CODES)]
    Inspect(inspect::InspectArgs),
    /// Manage the ImageNet VGG16 conv-base weights.
    #[command(after_help = EXIT_CODES)]
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
}

impl Command {
    /// Runs the command; `matches` are the parsed arguments of the whole command line (for options
    /// whose source matters, such as those a preset must not override).
    ///
    /// # Errors
    /// Whatever the command's library calls return.
    #[cfg_attr(not(feature = "train"), allow(unused_variables))]
    pub fn run(self, matches: &ArgMatches) -> anyhow::Result<Outcome> {
        match self {
            #[cfg(feature = "train")]
            Command::Train(a) => a.run(matches.subcommand_matches("train")),
            #[cfg(feature = "train")]
            Command::Evaluate(a) => a.run().map(Outcome::from),
            #[cfg(feature = "train")]
            Command::Sweep(a) => a
                .run(matches.subcommand_matches("sweep"))
                .map(Outcome::from),
            #[cfg(feature = "train")]
            Command::LrFind(a) => a
                .run(matches.subcommand_matches("lr-find"))
                .map(Outcome::from),
            #[cfg(feature = "train")]
            Command::Explain(a) => a.run(),
            #[cfg(feature = "train")]
            Command::Review(a) => a
                .run(matches.subcommand_matches("review"))
                .map(Outcome::from),
            Command::Summary(a) => a.run().map(Outcome::from),
            Command::Export(a) => a.run().map(Outcome::from),
            Command::Infer(a) => a.run(),
            #[cfg(feature = "serve")]
            Command::Serve(a) => a
                .run(matches.subcommand_matches("serve"))
                .map(Outcome::from),
            Command::Inspect(a) => a.run().map(Outcome::from),
            Command::Weights(c) => c.run().map(Outcome::from),
        }
    }
}

/// Which training run a command reads (evaluate, export). Commands name what they do with it in
/// the help of `--run` (`mut_arg`).
#[derive(clap::Args)]
pub struct RunSelection {
    /// The run: `latest`, a run name in --runs-dir, or a run folder.
    #[arg(long, default_value = "latest")]
    pub run: String,
    /// Folder of training runs.
    #[arg(long, default_value = pipe::config::DEFAULT_RUNS_DIR)]
    pub runs_dir: PathBuf,
}

impl RunSelection {
    /// The run's folder.
    ///
    /// # Errors
    /// As [`pipe::run::resolve_run`].
    pub fn resolve(&self) -> pipe::Result<PathBuf> {
        pipe::run::resolve_run(&self.runs_dir, &self.run)
    }
}

/// The inference engine and where it runs (infer).
#[derive(clap::Args)]
pub struct BackendArgs {
    /// Inference engine.
    #[arg(long, value_enum, default_value_t = BackendKind::Tract)]
    pub backend: BackendKind,
    /// Device (cuda needs --backend ort and the onnxruntime-gpu wheel).
    #[arg(long, value_enum, default_value_t = InferDevice::Cpu)]
    pub device: InferDevice,
    /// Engine threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Path of libonnxruntime.so for --backend ort (default: ORT_DYLIB_PATH, then the project's .venv).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
}

impl BackendArgs {
    /// The library's options to open the backend.
    pub fn options(&self) -> BackendOptions {
        BackendOptions {
            kind: self.backend,
            device: self.device,
            threads: self.threads,
            ort_lib: self.ort_lib.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// clap's own consistency checks of the whole command line (ids, flattened groups, `mut_arg`s).
    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
