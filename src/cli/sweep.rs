//! `pipe sweep`: head training over a grid of batch sizes and learning rates from one set of cached
//! features.

use super::{DataArgs, ExtractionArgs, SgdArgs};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Arguments of `pipe sweep`.
#[derive(clap::Args)]
#[command(mut_arg("test_limit", |a| a.help("Test images, the validation set (0 = all)")))]
#[command(mut_arg("seed", |a| a.help("Seed (the same for every setting)")))]
pub struct SweepArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Batch sizes to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "32,64,96,128,256")]
    batch_sizes: Vec<usize>,
    /// Learning rates to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1e-4")]
    lrs: Vec<f64>,
    /// Epochs per setting.
    #[arg(long, default_value_t = 15)]
    epochs: usize,
    #[command(flatten)]
    sgd: SgdArgs,
    /// Folder to write sweep.json and sweep.png into, replacing any there (default: a new
    /// models/sweeps/<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    common: ExtractionArgs,
}

impl SweepArgs {
    /// Runs the sweep, writes sweep.json and sweep.png, and prints one row per setting.
    ///
    /// # Errors
    /// As [`pipe::train::sweep`]; an unusable --out.
    pub fn run(self) -> Result<()> {
        let a = self;
        let config = a.config();
        let env = a.common.env();
        let t0 = std::time::Instant::now();
        pipe::train::validate_sweep(&config, &env, &a.batch_sizes, &a.lrs)?;
        // The output folder is made before the work, so that an unusable --out fails at once.
        let out_dir = a
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("models/sweeps").join(pipe::run::timestamp_name()));
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("cannot create {}", out_dir.display()))?;
        let (rows, extracted) = pipe::train::sweep(&config, &env, &a.batch_sizes, &a.lrs)?;
        let doc = serde_json::json!({
            "data": a.data.data, "train_limit": a.data.train_limit, "test_limit": a.data.test_limit,
            "epochs": a.epochs, "momentum": a.sgd.momentum, "weight_decay": a.sgd.weight_decay,
            "seed": a.sgd.seed,
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
        print_rows(&rows);
        println!(
            "sweep of {} settings in {:.1} s ({} images extracted); {} and sweep.png",
            rows.len(),
            t0.elapsed().as_secs_f64(),
            extracted,
            out_dir.join("sweep.json").display()
        );
        Ok(())
    }

    /// The configuration every setting starts from: the seed recipe with this sweep's data,
    /// epochs and SGD settings (batch size and learning rate are set per setting).
    fn config(&self) -> pipe::config::TrainConfig {
        pipe::config::TrainConfig {
            data: self.data.data.clone(),
            weights: self.data.weights.clone(),
            train_limit: self.data.train_limit,
            test_limit: self.data.test_limit,
            input_size: self.common.input_size,
            resize: self.common.resize,
            epochs: self.epochs,
            momentum: self.sgd.momentum,
            weight_decay: self.sgd.weight_decay,
            seed: self.sgd.seed,
            ..pipe::config::TrainConfig::seed_recipe()
        }
    }
}

/// The sweep table: one row per setting.
fn print_rows(rows: &[pipe::train::SweepRow]) {
    println!(
        "{:>10}  {:>8}  {:>9}  {:>8}  {:>10}  {:>7}",
        "batch_size", "lr", "final_acc", "best_acc", "best_epoch", "time_s"
    );
    for r in rows {
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
}
