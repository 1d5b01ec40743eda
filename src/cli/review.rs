//! `pipe review`: suspected label errors among the training images (out-of-fold predictions).

use super::render::Stderr;
use anyhow::{Context, Result};
use clap::ArgMatches;
use pipe::config::{ExtractEnv, Preset, TrainConfig};
use pipe::train::ReviewOptions;
use std::path::PathBuf;

/// Arguments of `pipe review`.
#[derive(clap::Args)]
pub struct ReviewArgs {
    /// The recipe of the heads, as `pipe train --preset` (options given on the command line override
    /// it); without it, the seed recipe with the options given.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Folds: each training image is predicted by a head trained on the other folds, (K-1)/K of
    /// the training images.
    #[arg(long, default_value_t = 5, value_name = "K")]
    folds: usize,
    /// Images shown in review.png, the most suspect first (review.json lists them all).
    #[arg(long, default_value_t = 16, value_name = "N")]
    show: usize,
    /// Folder to write review.json and review.png into (default: a new models/review/<UTC time>).
    #[arg(short, long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    config: TrainConfig,
    #[command(flatten)]
    env: ExtractEnv,
}

impl ReviewArgs {
    /// Runs the review, writes review.json and review.png, and prints the most suspect images.
    /// `matches` are the command's parsed arguments (options given override the preset).
    ///
    /// # Errors
    /// As [`pipe::train::review`]; an unusable --out.
    pub fn run(self, matches: Option<&ArgMatches>) -> Result<()> {
        let config = super::train::recipe(self.preset, &self.config, matches)?;
        let opts = ReviewOptions {
            folds: self.folds,
            show: self.show,
        };
        pipe::train::validate_review(&config, &self.env, &opts)?;
        let out_dir = self
            .out
            .unwrap_or_else(|| PathBuf::from("models/review").join(pipe::run::timestamp_name()));
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("cannot create {}", out_dir.display()))?;
        let events = Stderr::new();
        let review = pipe::train::review(&config, &self.env, &opts, &events);
        events.clear();
        let review = review?;
        let disagree = review
            .rows
            .iter()
            .filter(|r| r.given != r.suggested)
            .count();
        pipe::util::write_json_atomic(
            &out_dir.join("review.json"),
            &serde_json::json!({
                "data": config.data, "folds": opts.folds, "seed": config.seed,
                "epochs": config.epochs, "lr": config.lr, "classes": review.classes,
                "rule": "out-of-fold softmax probability of the given label, lowest first",
                "out_of_fold_accuracy": review.accuracy,
                "images": review.rows.len(), "suggested_differs": disagree,
                "images_extracted": review.extracted, "rows": review.rows,
            }),
        )?;
        if !review.tiles.is_empty() {
            pipe::plot::review_grid(&review.tiles, &review.classes, &out_dir.join("review.png"))?;
        }
        println!(
            "review: {} training images in {} folds, out-of-fold accuracy {:.4}; {disagree} whose \
             suggested class differs from their label",
            review.rows.len(),
            opts.folds,
            review.accuracy
        );
        println!("most suspect (out-of-fold probability of the given label):");
        for r in review.rows.iter().take(10) {
            println!(
                "  {:.3}  {}  given {}, suggested {} ({:.3})",
                r.score, r.path, r.given, r.suggested, r.suggested_probability
            );
        }
        println!("review.json and review.png in {}", out_dir.display());
        Ok(())
    }
}
