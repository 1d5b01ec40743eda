//! `pipe infer`: classify image files with an exported model, writing one record per image as
//! batches finish, then the accuracy summary on stderr.

use super::BackendArgs;
use anyhow::Result;
use pipe::contract::Output;
use pipe::infer::{InferReport, OutputFormat, ReportStream, WriterContext};
use pipe::onnx::ModelInfo;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `pipe infer`.
#[derive(clap::Args)]
pub struct InferArgs {
    /// Image files and/or folders (searched recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    engine: BackendArgs,
    /// Exported model.
    #[arg(long, default_value = "onnx/model.onnx")]
    model: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Output format: text (path, then label and probability tab-separated), csv (with a header) or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// Report the K most probable classes per image (ordered, most probable first).
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Write the results to this file (atomically: temporary file, then rename) instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

impl InferArgs {
    /// Classifies the images, writes the records to stdout or --output, and prints the accuracy
    /// summary (images in class folders) and the throughput on stderr.
    ///
    /// # Errors
    /// Invalid options, a missing or foreign model, no images, an image that cannot be decoded, a
    /// backend failure, or an unwritable output.
    pub fn run(self) -> Result<()> {
        let info = self.check_model()?;
        if let Some(path) = &self.output {
            pipe::util::check_output_path(path, false)?;
        }
        let files = scan(&self.paths)?;
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
        let pb = progress_bar(files.len(), backend.name());
        let ctx = WriterContext::new(&self.model, self.engine.backend, &info, self.top_k);
        let t0 = Instant::now();
        let write_records = |out: &mut dyn Write, sink: &Path| -> pipe::Result<InferReport> {
            let mut stream = ReportStream::new(self.format, out, sink, ctx)?;
            pipe::infer::classify(
                backend.as_mut(),
                &info,
                &files,
                self.batch_size,
                |p| stream.push(&p),
                |done| pb.set_position(done as u64),
            )?;
            stream.finish(t0.elapsed().as_secs_f64())
        };
        let report = match &self.output {
            Some(path) => {
                pipe::util::write_atomic_with(path, |w| write_records(w, path), |_| Ok(()))?
            }
            None => {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                write_records(&mut out, Path::new("stdout"))?
            }
        };
        let secs = t0.elapsed().as_secs_f64();
        pb.finish_and_clear();
        if let Some(summary) = report.summary() {
            // On stderr, so that stdout stays one record per image.
            eprintln!("{summary}");
        }
        eprintln!(
            "{}: {} images in {:.2} s ({:.0} images/s; model load {:.2} s)",
            backend.name(),
            report.images,
            secs,
            report.images as f64 / secs.max(1e-9),
            load_s
        );
        Ok(())
    }

    /// Checks the options and reads the model, warning when it has no class names.
    fn check_model(&self) -> Result<ModelInfo> {
        if self.top_k == 0 || self.batch_size == 0 {
            anyhow::bail!("--top-k and --batch-size must be at least 1");
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

/// The image files under `paths`, after printing a warning for each kind of skipped entry.
///
/// # Errors
/// No image files at all (with the reasons entries were skipped), or an unreadable input.
fn scan(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
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

/// A progress bar on stderr for more than 256 images (hidden otherwise, and when stderr is not a
/// terminal).
fn progress_bar(images: usize, backend: &str) -> indicatif::ProgressBar {
    if images <= 256 {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(images as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:32}] {pos}/{len} images  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(format!("infer ({})", backend));
    pb
}
