//! `pipe evaluate`: a trained run on its test split.

use super::render::Stderr;
use super::RunSelection;
use anyhow::Result;
use clap::ValueEnum;
use std::path::PathBuf;

/// Output format of `pipe evaluate`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Human-readable text.
    Text,
    /// One JSON document.
    Json,
}

/// Arguments of `pipe evaluate`.
#[derive(clap::Args)]
#[command(mut_arg("run", |a| a.help("Run to evaluate: `latest`, a run name in --runs-dir, or a run folder")))]
pub struct EvaluateArgs {
    #[command(flatten)]
    run: RunSelection,
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
    env: pipe::config::ExtractEnv,
}

impl EvaluateArgs {
    /// Evaluates the run, draws its confusion matrix and prints the evaluation.
    ///
    /// # Errors
    /// As [`pipe::train::evaluate_run`]; an unusable --confusion-png.
    pub fn run(self) -> Result<()> {
        let run_dir = self.run.resolve()?;
        if let Some(png) = &self.confusion_png {
            pipe::util::check_output_path(png, false)?;
        }
        let events = Stderr::new();
        let ev = pipe::train::evaluate_run(
            &run_dir,
            self.data.as_deref(),
            self.test_limit,
            &self.env,
            &events,
        );
        events.clear();
        let ev = ev?;
        let png = self
            .confusion_png
            .unwrap_or_else(|| run_dir.join(pipe::run::CONFUSION_PNG));
        pipe::plot::confusion_matrix(&ev.report, &png)?;
        eprintln!("confusion matrix drawn in {}", png.display());
        match self.format {
            ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&ev)?),
            ReportFormat::Text => {
                println!(
                    "run {} on {} ({} test images)",
                    ev.run,
                    ev.data.display(),
                    ev.report.images
                );
                println!(
                    "test loss {:.4}  test accuracy {:.4}\n{}\n",
                    ev.loss,
                    ev.report.accuracy,
                    ev.report.balanced_line()
                );
                print!("{}", ev.report.table());
            }
        }
        Ok(())
    }
}
