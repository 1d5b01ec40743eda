//! `pipe sweep`: head training over a grid of batch sizes and learning rates from one set of cached
//! features, with the training settings of `pipe train` (declared once in [`TrainConfig`]).

use super::render::Stderr;
use anyhow::{Context, Result};
use clap::{Arg, ArgMatches, Args, Command};
use pipe::config::{ExtractEnv, Preset, TrainConfig, FINE_TUNING};
use std::path::PathBuf;

/// Whether `a` is an option of [`TrainConfig`] that a sweep does not take: the batch size and rate,
/// which --batch-sizes and --lrs give per setting, and the fine-tuning settings (a sweep trains
/// heads on cached features). Hidden from `pipe sweep --help` and refused when given.
fn not_for_sweeps(a: &Arg) -> bool {
    matches!(a.get_id().as_str(), "batch_size" | "lr") || a.get_help_heading() == Some(FINE_TUNING)
}

/// Arguments of `pipe sweep`.
#[derive(clap::Args)]
#[command(mut_arg("test_limit", |a| a.help("Test images, class-balanced subset of this size (0 = all); the validation set unless --val-split is given")))]
#[command(mut_arg("seed", |a| a.help("Seed (the same for every setting)")))]
#[command(mut_arg("epochs", |a| a.help("Epochs per setting").default_value("15")))]
#[command(mut_args(|a| if not_for_sweeps(&a) { a.hide(true) } else { a }))]
pub struct SweepArgs {
    /// The recipe swept, as `pipe train --preset` (options given on the command line override it):
    /// its data settings, head and epochs; --batch-sizes and --lrs, when given, in place of its
    /// batch size and rate (else the preset's own). Only recipes that train the head on cached
    /// features (photos); without it, the seed recipe with the options given and 15 epochs per
    /// setting.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Batch sizes to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "32,64,96,128,256")]
    batch_sizes: Vec<usize>,
    /// Learning rates to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1e-4")]
    lrs: Vec<f64>,
    /// Folder to write sweep.json and sweep.png into, replacing any there (default: a new
    /// models/sweeps/<UTC time>).
    #[arg(short, long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    config: TrainConfig,
    #[command(flatten)]
    env: ExtractEnv,
}

impl SweepArgs {
    /// The batch sizes and rates swept, from the ids `given` on the command line: --batch-sizes and
    /// --lrs; with a preset, the `recipe`'s own batch size or rate for whichever is not given.
    fn grid(&self, recipe: &TrainConfig, given: &[&str]) -> (Vec<usize>, Vec<f64>) {
        let preset = |id: &str| self.preset.is_some() && !given.contains(&id);
        (
            if preset("batch_sizes") {
                vec![recipe.batch_size]
            } else {
                self.batch_sizes.clone()
            },
            if preset("lrs") {
                vec![recipe.lr]
            } else {
                self.lrs.clone()
            },
        )
    }

    /// The recipe swept: `--preset`'s with the options given on the command line (`matches`) over
    /// it, or the options as given (15 epochs by default).
    ///
    /// # Errors
    /// A preset that fine-tunes (finetune): a sweep trains heads on cached features.
    fn recipe(&self, matches: Option<&ArgMatches>) -> Result<TrainConfig> {
        let recipe = match self.preset {
            Some(preset) => super::train::recipe(Some(preset), &self.config, matches)?,
            None => self.config.clone(),
        };
        if recipe.unfreeze > 0 {
            anyhow::bail!(
                "pipe sweep trains the head on cached frozen-base features, and --preset finetune \
                 fine-tunes the base: use --preset photos, or no preset"
            );
        }
        Ok(recipe)
    }

    /// Runs the sweep, writes sweep.json and sweep.png, and prints one row per setting. `matches`
    /// are the command's parsed arguments (options a sweep does not take are refused).
    ///
    /// # Errors
    /// As [`pipe::train::sweep`]; an unusable --out; an option a sweep does not take.
    pub fn run(self, matches: Option<&ArgMatches>) -> Result<()> {
        let a = self;
        let given = super::train::given_ids(matches);
        let refused: Vec<String> = TrainConfig::augment_args(Command::new("sweep"))
            .get_arguments()
            .filter(|a| not_for_sweeps(a))
            .map(|a| a.get_id().to_string())
            .collect();
        if let Some(id) = given.iter().find(|id| refused.iter().any(|r| r == *id)) {
            anyhow::bail!(
                "pipe sweep does not take --{}: --batch-sizes and --lrs give each setting's batch \
                 size and rate, and a sweep trains the head on cached frozen-base features \
                 (fine-tuning is pipe train's)",
                id.replace('_', "-")
            );
        }
        let recipe = a.recipe(matches)?;
        let config = &recipe;
        let t0 = std::time::Instant::now();
        let (batch_sizes, lrs) = a.grid(config, &given);
        pipe::train::validate_sweep(config, &a.env, &batch_sizes, &lrs)?;
        // The output folder is made before the work, so that an unusable --out fails at once.
        let out_dir = a
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("models/sweeps").join(pipe::run::timestamp_name()));
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("cannot create {}", out_dir.display()))?;
        let events = Stderr::new();
        let swept = pipe::train::sweep(config, &a.env, (&batch_sizes, &lrs), &events);
        events.clear();
        let (rows, extracted) = swept?;
        let doc = serde_json::json!({
            "data": pipe::util::absolute(&config.data),
            "train_limit": config.train_limit,
            "test_limit": config.test_limit, "epochs": config.epochs,
            "momentum": config.momentum, "weight_decay": config.weight_decay, "seed": config.seed,
            "images_extracted": extracted, "seconds": t0.elapsed().as_secs_f64(), "settings": rows,
        });
        pipe::util::write_json_atomic(&out_dir.join("sweep.json"), &doc)?;
        let lines: Vec<pipe::plot::SweepLine> = rows
            .iter()
            .map(|r| pipe::plot::SweepLine {
                label: if lrs.len() > 1 {
                    format!("batch {}, lr {}", r.batch_size, pipe::util::rate(r.lr))
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
            pipe::util::rate(r.lr),
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

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::{CommandFactory, FromArgMatches};

    /// `pipe sweep ARGS` parsed as `main` parses it: the arguments and the sweep's matches.
    fn sweep(args: &[&str]) -> (super::SweepArgs, clap::ArgMatches) {
        let m = Cli::command()
            .try_get_matches_from(["pipe", "sweep"].iter().chain(args))
            .unwrap();
        let Command::Sweep(a) = Cli::from_arg_matches(&m).unwrap().command else {
            panic!("not sweep");
        };
        (a, m.subcommand_matches("sweep").unwrap().clone())
    }

    /// A sweep takes the head settings of `pipe train` (15 epochs by default), hides the batch size,
    /// the rate and the fine-tuning settings, and refuses them by name before any work.
    #[test]
    fn sweep_takes_the_head_settings_and_refuses_the_others() {
        let (a, _) = sweep(&["--pooling", "max", "--input-size", "64"]);
        assert_eq!(a.config.epochs, 15);
        assert_eq!(
            (a.config.pooling, a.config.input_size),
            (pipe::arch::Pooling::Max, 64)
        );
        assert_eq!(a.config.lr, pipe::config::TrainConfig::default().lr);
        let cmd = Cli::command();
        let help = cmd.find_subcommand("sweep").unwrap();
        let hidden = |id: &str| {
            help.get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap()
                .is_hide_set()
        };
        for id in [
            "batch_size",
            "lr",
            "unfreeze",
            "augment",
            "precision",
            "head_lr",
        ] {
            assert!(hidden(id), "{id} shown in sweep --help");
        }
        for id in ["pooling", "optimizer", "seed", "epochs", "batch_sizes"] {
            assert!(!hidden(id), "{id} hidden in sweep --help");
        }
        for (flag, value) in [("--unfreeze", "2"), ("--lr", "0.1"), ("--head-epochs", "1")] {
            let (a, m) = sweep(&[flag, value, "--out", "/nonexistent/sweep"]);
            let err = a.run(Some(&m)).unwrap_err().to_string();
            assert!(err.contains(&format!("does not take {flag}")), "{err}");
        }
    }

    /// `--preset photos` sweeps the photos recipe (its input size, pooling, class weights and 10
    /// epochs), options given on the command line win, and `--preset finetune` is refused before
    /// any work.
    #[test]
    fn a_sweep_takes_the_photos_preset_and_refuses_the_finetune_one() {
        let (a, m) = sweep(&["--preset", "photos"]);
        let c = a.recipe(Some(&m)).unwrap();
        let photos = pipe::config::TrainConfig::photos();
        assert_eq!((c.input_size, c.epochs), (384, 10));
        assert_eq!(
            (c.pooling, c.class_weights),
            (photos.pooling, photos.class_weights)
        );
        let given = |m: &clap::ArgMatches| super::super::train::given_ids(Some(m)).join(",");
        // The preset's batch size and rate unless given; the defaults without a preset.
        assert_eq!(a.grid(&c, &[]), (vec![32], vec![3e-3]));
        let (a, m) = sweep(&["--preset", "photos", "--epochs", "4", "--lrs", "1e-3,1e-2"]);
        let c = a.recipe(Some(&m)).unwrap();
        assert_eq!(c.epochs, 4);
        let ids = given(&m);
        let ids: Vec<&str> = ids.split(',').collect();
        assert_eq!(a.grid(&c, &ids), (vec![32], vec![1e-3, 1e-2]));
        let (a, m) = sweep(&[]);
        let c = a.recipe(Some(&m)).unwrap();
        assert_eq!(a.grid(&c, &[]), (vec![32, 64, 96, 128, 256], vec![1e-4]));
        let (a, m) = sweep(&["--preset", "finetune", "--out", "/nonexistent/sweep"]);
        let err = a.run(Some(&m)).unwrap_err().to_string();
        assert!(
            err.contains("--preset finetune fine-tunes the base"),
            "{err}"
        );
        assert!(!std::path::Path::new("/nonexistent/sweep").exists());
    }
}
