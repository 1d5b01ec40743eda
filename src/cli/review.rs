//! `pipe review`: suspected label errors among the training images (out-of-fold predictions).

use super::render::Stderr;
use anyhow::{Context, Result};
use clap::ArgMatches;
use pipe::config::{ExtractEnv, Preset, TrainConfig};
use pipe::train::ReviewOptions;
use std::path::PathBuf;

/// The training options a review's fold heads do without (clap ids of [`TrainConfig`]'s fields):
/// they train for the recipe's epochs on fixed folds, with no validation split to stop early or
/// restore from, and no time budget. Hidden from `pipe review --help`; given, they are refused.
const NOT_FOR_REVIEW: [&str; 3] = ["time_budget", "patience", "restore_best"];

/// Arguments of `pipe review`.
#[derive(clap::Args)]
#[command(mut_args(|a| if NOT_FOR_REVIEW.contains(&a.get_id().as_str()) { a.hide(true) } else { a }))]
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
        refuse_options(&super::train::given_ids(matches))?;
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
            let verdict = if r.given == r.suggested {
                format!("given {}, kept (its own label is the likeliest)", r.given)
            } else {
                format!(
                    "given {}, suggested {} ({:.3})",
                    r.given, r.suggested, r.suggested_probability
                )
            };
            println!("  {:.3}  {}  {verdict}", r.score, r.path);
        }
        println!("review.json and review.png in {}", out_dir.display());
        Ok(())
    }
}

/// Refuses, before any work, the options of `given` (clap ids given on the command line) that a
/// review would silently ignore ([`NOT_FOR_REVIEW`]).
///
/// # Errors
/// [`pipe::Error::Usage`] naming them as typed.
fn refuse_options(given: &[&str]) -> pipe::Result<()> {
    let (refused, pronoun) = super::train::given_of(given, &NOT_FOR_REVIEW);
    if refused.is_empty() {
        return Ok(());
    }
    Err(pipe::Error::Usage(format!(
        "{}: pipe review's fold heads train for --epochs on fixed folds, with no validation split \
         and no time budget; leave {pronoun} out",
        refused.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use crate::cli::Cli;
    use clap::CommandFactory;

    /// `pipe review ARGS`' check of the options given.
    fn check(args: &[&str]) -> Result<(), String> {
        let m = Cli::command()
            .try_get_matches_from(["pipe", "review"].iter().chain(args))
            .unwrap();
        let ids = super::super::train::given_ids(m.subcommand_matches("review"));
        super::refuse_options(&ids).map_err(|e| e.to_string())
    }

    /// The options a review ignores are refused, named as typed, and hidden from its help; the
    /// recipe's own options are taken.
    #[test]
    fn options_a_review_ignores_are_refused_and_hidden() {
        let err = check(&["--patience", "2", "--time-budget", "10m"]).unwrap_err();
        assert!(
            err.starts_with("--time-budget, --patience: pipe review's fold heads")
                && err.ends_with("leave them out"),
            "{err}"
        );
        assert!(check(&["--restore-best"])
            .unwrap_err()
            .ends_with("leave it out"));
        check(&["--epochs", "3", "--lr", "1e-3", "--preset", "photos"]).unwrap();
        let mut cmd = Cli::command();
        let review = cmd.find_subcommand_mut("review").unwrap();
        for arg in review.get_arguments() {
            let id = arg.get_id().as_str();
            assert_eq!(
                arg.is_hide_set(),
                super::NOT_FOR_REVIEW.contains(&id),
                "{id}"
            );
        }
    }
}
