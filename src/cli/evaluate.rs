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
    /// Test-time augmentation: flip = each image's probabilities are the mean of the model's on the
    /// image and on its horizontal mirror (what a model exported with --tta flip outputs); twice the
    /// work. The report says so, and the JSON has "tta": "flip".
    #[arg(long, value_enum, value_name = "flip")]
    tta: Option<super::Tta>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// Where to draw the confusion matrix as a PNG (default: confusion.png in the run folder;
    /// confusion-tta.png with --tta flip, so that the run's own is kept).
    #[arg(long, value_name = "PNG")]
    confusion_png: Option<PathBuf>,
    /// Where to draw the 10 test images with the highest loss, with their true and predicted labels
    /// (default: top_losses.png in the run folder; top_losses-tta.png with --tta flip).
    #[arg(long, value_name = "PNG")]
    top_losses_png: Option<PathBuf>,
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
        for png in [&self.confusion_png, &self.top_losses_png]
            .into_iter()
            .flatten()
        {
            pipe::util::check_output_path(png, false)?;
        }
        let events = Stderr::new();
        let ev = pipe::train::evaluate_run(
            &run_dir,
            self.data.as_deref(),
            self.test_limit,
            self.tta == Some(super::Tta::Flip),
            &self.env,
            &events,
        );
        events.clear();
        let ev = ev?;
        // The run's own figures are the plain model's; with --tta the defaults are beside them.
        let in_run = |name: &str| match self.tta {
            Some(super::Tta::Flip) => run_dir.join(name.replace(".png", "-tta.png")),
            None => run_dir.join(name),
        };
        let png = self
            .confusion_png
            .unwrap_or_else(|| in_run(pipe::run::CONFUSION_PNG));
        pipe::plot::confusion_matrix(&ev.report, &png)?;
        eprintln!("confusion matrix drawn in {}", png.display());
        if !ev.top_loss_tiles.is_empty() {
            let png = self
                .top_losses_png
                .unwrap_or_else(|| in_run(pipe::run::TOP_LOSSES_PNG));
            pipe::plot::top_losses_grid(&ev.top_loss_tiles, &ev.report.classes, &png)?;
            eprintln!("top losses drawn in {}", png.display());
        }
        match self.format {
            ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&ev)?),
            ReportFormat::Text => {
                println!(
                    "run {} on {} ({} test images{})",
                    ev.run,
                    ev.data.display(),
                    ev.report.images,
                    if ev.tta.is_some() {
                        ", test-time augmentation: mean of each image and its mirror"
                    } else {
                        ""
                    }
                );
                println!(
                    "test loss {:.4}  test accuracy {:.4}\n{}\n",
                    ev.loss,
                    ev.report.accuracy,
                    ev.report.balanced_line()
                );
                print!("{}", ev.report.table());
                if !ev.top_losses.is_empty() {
                    println!("\nhighest losses (-ln p of the true class):");
                    for t in ev.top_losses.iter().take(5) {
                        println!(
                            "  {:7.3}  {}  true {}, predicted {} ({:.3})",
                            t.loss, t.file, t.label, t.predicted, t.probability
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
