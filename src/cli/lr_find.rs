//! `pipe lr-find`: the learning-rate range test of a recipe: its head on cached features, or its
//! fine-tuning with `--unfreeze`.

use super::render::Stderr;
use anyhow::{Context, Result};
use clap::ArgMatches;
use pipe::config::{ExtractEnv, Preset, TrainConfig};
use pipe::train::LrFindOptions;
use std::path::PathBuf;

/// Arguments of `pipe lr-find`.
#[derive(clap::Args)]
pub struct LrFindArgs {
    /// The recipe tested, as `pipe train --preset` (options given on the command line override it);
    /// without it, the seed recipe with the options given. A recipe with --unfreeze (the finetune
    /// preset) is tested on its fine-tuning, after its head warm-up; others on the head alone.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// The first learning rate of the sweep.
    #[arg(long, default_value_t = 1e-7, value_name = "LR")]
    start_lr: f64,
    /// The last learning rate of the sweep (the test stops earlier when the loss diverges).
    #[arg(long, default_value_t = 10.0, value_name = "LR")]
    end_lr: f64,
    /// Mini-batches of the sweep, the rate growing exponentially from --start-lr to --end-lr; the
    /// training split is gone through as many times as they need.
    #[arg(long, default_value_t = 100, value_name = "N")]
    steps: usize,
    /// Folder to write lr_find.png and lr_find.json into (default: a new models/lr-find/<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    config: TrainConfig,
    #[command(flatten)]
    env: ExtractEnv,
}

impl LrFindArgs {
    /// Runs the test, writes lr_find.png and lr_find.json, and prints the suggestion with its rule.
    /// `matches` are the command's parsed arguments (options given override the preset).
    ///
    /// # Errors
    /// As [`pipe::train::lr_find`]; an unusable --out.
    pub fn run(self, matches: Option<&ArgMatches>) -> Result<()> {
        let config = super::train::recipe(self.preset, &self.config, matches)?;
        let opts = LrFindOptions {
            start_lr: self.start_lr,
            end_lr: self.end_lr,
            steps: self.steps,
            ..LrFindOptions::default()
        };
        pipe::train::validate_lr_find(&config, &self.env, &opts)?;
        let out_dir = self
            .out
            .unwrap_or_else(|| PathBuf::from("models/lr-find").join(pipe::run::timestamp_name()));
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("cannot create {}", out_dir.display()))?;
        let events = Stderr::new();
        let found = pipe::train::lr_find(&config, &self.env, &opts, &events);
        events.clear();
        let found = found?;
        pipe::util::write_json_atomic(
            &out_dir.join("lr_find.json"),
            &serde_json::json!({
                "data": config.data, "batch_size": config.batch_size, "optimizer": config.optimizer,
                "momentum": config.momentum, "seed": config.seed, "recipe_lr": config.lr,
                "unfreeze": config.unfreeze, "head_epochs": if config.unfreeze > 0 { config.head_epochs } else { 0 },
                "start_lr": opts.start_lr, "end_lr": opts.end_lr, "steps": opts.steps,
                "rule": "steepest descent of the smoothed loss against log10(lr)",
                "suggestion": found.suggestion, "stopped": found.stopped,
                "images_extracted": found.extracted, "points": found.points,
            }),
        )?;
        let points: Vec<(f64, f64)> = found.points.iter().map(|p| (p.lr, p.smoothed)).collect();
        pipe::plot::lr_find(&points, found.suggestion, &out_dir.join("lr_find.png"))?;
        let last = found.points.last().map_or(0.0, |p| p.lr);
        println!(
            "lr-find: {} steps, learning rate {:.1e} to {last:.1e} ({})",
            found.points.len(),
            opts.start_lr,
            if found.stopped == "diverged" {
                "stopped: the loss diverged"
            } else {
                "the whole sweep"
            }
        );
        match found.suggestion {
            Some(lr) => println!(
                "suggested learning rate {lr:.1e} (steepest descent of the smoothed loss); the \
                 recipe's --lr is {:.1e}",
                config.lr
            ),
            None => println!(
                "no suggestion: too few steps before the loss diverged (lower --start-lr or raise --steps)"
            ),
        }
        println!("lr_find.png and lr_find.json in {}", out_dir.display());
        Ok(())
    }
}
