//! `pipe infer`: classify image files with an exported model, writing one record per file as
//! batches finish, then the accuracy summary on stderr. Files inside folders that cannot be decoded
//! are skipped (named, counted, error records; exit code 3); a file named on the command line that
//! cannot be decoded is an error (exit code 1) once every other file was written.

use super::render::Stderr;
use super::{named_files, refuse_named, scan_inputs, BackendArgs, Outcome};
use anyhow::Result;
use pipe::contract::Output;
use pipe::data::{OnError, SkippedFile};
use pipe::infer::{
    Backend, Classified, ClassifyOptions, InferReport, OutputFormat, Record, ReportStream,
    WriterContext,
};
use pipe::onnx::ModelInfo;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `pipe infer`.
#[derive(clap::Args)]
pub struct InferArgs {
    /// Image files and/or folders (searched recursively; hidden entries such as .DS_Store or
    /// __MACOSX/ are ignored).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    engine: BackendArgs,
    /// Exported model.
    #[arg(long, default_value = "onnx/model.onnx")]
    model: PathBuf,
    /// Images per batch. [default: from the model's input size, so that a batch's memory stays
    /// bounded: 256 up to 64 pixels, 20 at 224, 7 at 384]
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Output format: text (path, then label and probability tab-separated; one line per classified
    /// image), csv (with a header; files that could not be decoded have their reason in the `error`
    /// column) or json (such files are records with `error` and `message`).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// Report the K most probable classes per image (ordered, most probable first).
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Write the results to this file (atomically: temporary file, then rename) instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Stop at the first file that cannot be decoded (exit code 1, no --output file) instead of
    /// skipping it.
    #[arg(long)]
    strict: bool,
    /// Classify only shard K of N (from 0) of the input list: its K-th of N contiguous parts, in the
    /// order the files are classified (paths as given, each folder's files sorted). N processes with
    /// 0/N .. N-1/N classify every file once (the input must not change meanwhile); their text or
    /// CSV outputs concatenated in shard order are the unsharded output (keep the first CSV header
    /// only; a JSON output is one document per shard). For Kubernetes Indexed Jobs:
    /// --shard $(JOB_COMPLETION_INDEX)/N.
    #[arg(long, value_name = "K/N")]
    shard: Option<pipe::shard::Shard>,
}

impl InferArgs {
    /// Classifies the images, writes the records to stdout or --output, and prints the accuracy
    /// summary (images in class folders), the skipped files and the throughput on stderr.
    ///
    /// # Errors
    /// Invalid options, a missing or foreign model, no images, a backend failure, an unwritable
    /// output; with --strict, the first file that cannot be decoded; else, after everything was
    /// written, the files named on the command line that could not be decoded.
    pub fn run(self) -> Result<Outcome> {
        let info = self.check_model()?;
        if let Some(path) = &self.output {
            pipe::util::check_output_path(path, false)?;
        }
        let mut files = scan_inputs(&self.paths)?;
        if let Some(shard) = self.shard {
            let part = shard.range(files.len());
            if part.is_empty() {
                eprintln!(
                    "shard {shard}: no files (the input list has {} for {} shards)",
                    files.len(),
                    shard.count
                );
            } else {
                eprintln!(
                    "shard {shard}: files {} to {} of {}",
                    part.start + 1,
                    part.end,
                    files.len()
                );
            }
            files = files[part].to_vec();
        }
        if let Some(folders) = pipe::infer::report::foreign_class_folders(&files, &info.classes) {
            let mut classes = info
                .classes
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if info.classes.len() > 10 {
                classes.push_str(", ...");
            }
            eprintln!(
                "warning: the images are in folders named {}, none of them a class of {} ({classes}): \
                 no accuracy can be computed. Is --model the model trained on these classes?",
                folders.join(", "),
                self.model.display()
            );
        }
        let t_load = Instant::now();
        let mut backend = pipe::infer::open_backend(&self.model, &self.engine.options())?;
        let load_s = t_load.elapsed().as_secs_f64();
        if self.format == OutputFormat::Text && info.output_kind() == Output::Logits {
            eprintln!(
                "note: {} outputs logits (exported with --logits): the numbers after each label are \
                 logits, not probabilities",
                self.model.display()
            );
        }
        let job = Job {
            args: &self,
            info: &info,
            files: &files,
            named: named_files(&self.paths),
            events: Stderr::new(),
            t0: Instant::now(),
        };
        let mut named_failed = Vec::new();
        let mut write = |out: &mut dyn Write, sink: &Path| {
            job.write(backend.as_mut(), out, sink, &mut named_failed)
        };
        let (report, classified) = match &self.output {
            Some(path) => pipe::util::write_atomic_with(path, |w| write(w, path), |_| Ok(()))?,
            None => {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                write(&mut out, Path::new("stdout"))?
            }
        };
        let secs = job.t0.elapsed().as_secs_f64();
        job.events.clear();
        // On stderr, so that stdout stays one record per file.
        for line in [report.summary(), report.skipped.summary()]
            .into_iter()
            .flatten()
        {
            eprintln!("{line}");
        }
        let rate = report.images as f64 / secs.max(1e-9);
        eprintln!(
            "{}: {} in {:.2} s ({} images/s; backend busy {:.1}%; model load {:.2} s; {})",
            backend.name(),
            pipe::util::plural(report.images, "image"),
            secs,
            pipe::util::images_per_s(rate),
            100.0 * classified.backend_seconds / secs.max(1e-9),
            load_s,
            precision_note(&info, backend.name())
        );
        refuse_named(&named_failed)?;
        Ok(Outcome::Skipped(report.skipped.total()))
    }

    /// Checks the options and reads the model, warning when it has no class names.
    fn check_model(&self) -> Result<ModelInfo> {
        if self.top_k == 0 {
            anyhow::bail!("--top-k must be at least 1");
        }
        if self.batch_size == Some(0) {
            anyhow::bail!("--batch-size must be at least 1");
        }
        if !self.model.exists() {
            anyhow::bail!(
                "{}: model not found; export one with `pipe export {}` (after `pipe train`; `make demo` does both)",
                self.model.display(),
                self.model.display()
            );
        }
        let info = ModelInfo::read(&self.model)?;
        if !info.classes_from_metadata {
            eprintln!(
                "warning: {} has no class names in its metadata; labels are class indices",
                self.model.display()
            );
        }
        Ok(info)
    }
}

/// One classification of `pipe infer`: what it reads and how it reports progress.
struct Job<'a> {
    args: &'a InferArgs,
    info: &'a ModelInfo,
    files: &'a [PathBuf],
    /// The files named on the command line.
    named: HashSet<&'a Path>,
    /// Where the progress and the skipped files are shown.
    events: Stderr,
    /// Start of the classification.
    t0: Instant,
}

impl Job<'_> {
    /// Classifies the files with `backend`, writing every record to `out` (named `sink` in errors)
    /// in the chosen format; a skipped file inside a folder is named on stderr, one named on the
    /// command line is added to `named_failed` instead. Returns the report, and the files done with
    /// the backend's busy time.
    ///
    /// # Errors
    /// As [`pipe::infer::classify`] and [`ReportStream`].
    fn write(
        &self,
        backend: &mut dyn Backend,
        out: &mut dyn Write,
        sink: &Path,
        named_failed: &mut Vec<SkippedFile>,
    ) -> pipe::Result<(InferReport, Classified)> {
        let a = self.args;
        let ctx = WriterContext::new(&a.model, a.engine.backend, self.info, a.top_k);
        let mut stream = ReportStream::new(a.format, out, sink, ctx)?;
        let opts = ClassifyOptions {
            batch_size: a.batch_size.unwrap_or_else(|| {
                pipe::infer::memory_bounded_batch(
                    self.info.input_size,
                    pipe::infer::INFER_BATCH_BUDGET,
                )
            }),
            on_error: OnError::strict(a.strict),
        };
        let record = |r: Record| {
            if let Record::Skipped(s) = &r {
                if self.named.contains(s.path.as_path()) {
                    named_failed.push(s.clone());
                } else {
                    self.events.line(&format!("warning: skipped {s}"));
                }
            }
            stream.push(&r)
        };
        let classified =
            pipe::infer::classify(backend, self.info, self.files, &opts, record, &self.events)?;
        Ok((stream.finish(self.t0.elapsed().as_secs_f64())?, classified))
    }
}

/// What the closing line says of the model's arithmetic: `float32 model`, or for an int8 model
/// whether this CPU has int8 dot-product instructions (where int8 runs several times faster than
/// float32 in ONNX Runtime) or not (where it gains little).
fn precision_note(info: &ModelInfo, backend: &str) -> String {
    let precision = pipe::contract::ModelMetadata::precision_from_props(&info.metadata);
    if precision != pipe::contract::INT8 {
        return format!("{precision} model");
    }
    let cpu = match pipe::cpu::CpuFeatures::detect().int8_dot_product() {
        Some(isa) => format!("int8 model; this CPU has int8 dot products ({isa})"),
        None => {
            "int8 model; this CPU has no int8 dot-product instructions (no VNNI), so int8 gains \
                 little speed here"
                .to_string()
        }
    };
    if backend == "tract" {
        format!("{cpu}; tract {}", pipe::infer::TRACT_INT8_HINT)
    } else {
        cpu
    }
}
