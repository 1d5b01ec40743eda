//! `pipe train`: its arguments (the run's settings, declared once in [`TrainConfig`], a preset, and
//! the invocation's [`TrainEnv`]), and the run's closing lines.

use super::render::Stderr;
use super::Outcome;
use anyhow::Result;
use clap::{parser::ValueSource, ArgMatches};
use pipe::config::{Preset, TrainConfig, TrainEnv};
use pipe::data::SkippedFile;
use pipe::events::{EventSink, Warning};

/// Arguments of `pipe train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// A named recipe; options given on the command line override its values. `finetune`: all 13 conv
    /// layers and the head after 5 head-only epochs (lr 1e-3), --augment, SGD peak lr 1e-3 momentum
    /// 0.9 weight decay 5e-4, one-cycle schedule over as many of 20 epochs as fit in --time-budget 70m
    /// (planned from the speed of the first batches), the full CIFAR-10 training and test sets, 10% of
    /// training held out for validation, early stopping (patience 4) and --restore-best; measured at
    /// 37 minutes on 2 CPU cores with AMX-BF16 (all 20 epochs fit; early stopping ended it after 17),
    /// 0.8558 in 64 minutes on a 2-core Zen 4 without AMX (bf16, 15 epochs fit), 0.8661 in 41 minutes
    /// on a 2-core Zen 5 without AMX (bf16, all 20 epochs fit).
    /// `photos`: for a few hundred photos of your
    /// own classes: --input-size 384, --resize crop, --pooling max, all images, the frozen base and
    /// the dense head (SGD lr 3e-3 momentum 0.9, batch 32, 10 epochs), --class-weights auto (classes
    /// weighted by inverse frequency); with --unfreeze N --augment, photo augmentation (random resized
    /// crops and flips).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    #[command(flatten)]
    config: TrainConfig,
    #[command(flatten)]
    env: TrainEnv,
}

impl TrainArgs {
    /// Trains (or resumes) a run and prints its test loss, accuracy and folder, and how many image
    /// files were skipped. `matches` are the command's parsed arguments: a preset leaves the options
    /// given on the command line alone.
    ///
    /// # Errors
    /// As [`pipe::train::train`].
    pub fn run(self, matches: Option<&ArgMatches>) -> Result<Outcome> {
        let config = self.config(matches)?;
        let events = Stderr::new();
        if config.unfreeze == 0 && config.budget().is_some() {
            events.warn(Warning::Other(
                "--time-budget plans the epochs of fine-tuning (--unfreeze N); this frozen-base \
                 run has no budget (its time is mostly feature extraction: --train-limit shortens it)"
                    .into(),
            ));
        }
        if let Some(shard) = self.env.extract_shard {
            let out = pipe::train::extract_feature_shard(&config, &self.env, shard, &events);
            events.clear();
            let (parts, skipped) = out?;
            for p in &parts {
                if p.rows.is_empty() {
                    println!(
                        "shard {shard}: {} images: none to extract (the {} images make fewer \
                         extraction batches than there are shards)",
                        p.split, p.of
                    );
                    continue;
                }
                let what = if p.extracted {
                    "extracted"
                } else {
                    "already in the feature cache"
                };
                println!(
                    "shard {shard}: {} images {} to {} of {}: {what}",
                    p.split,
                    p.rows.start + 1,
                    p.rows.end,
                    p.of
                );
            }
            println!("feature cache: {}", self.env.extract.cache_dir.display());
            if let Some(line) = SkippedFile::summary(&skipped) {
                println!("{line}");
                return Ok(Outcome::Skipped(skipped.len()));
            }
            return Ok(Outcome::Done);
        }
        let out = pipe::train::train(&config, &self.env, &events);
        events.clear();
        let out = out?;
        println!(
            "test loss {:.4}  test accuracy {:.4}",
            out.test_loss, out.test_accuracy
        );
        println!("{}", out.test_report.balanced_line());
        if let Some(advice) = out.chance_advice {
            events.warn(Warning::Other(advice));
        }
        println!(
            "run: {} ({} in all)",
            out.run_dir.display(),
            pipe::util::duration(out.seconds)
        );
        if let Some(line) = SkippedFile::summary(&out.skipped) {
            let list = out.run_dir.join(pipe::train::SKIPPED_FILE);
            println!("{line}; listed in {}", list.display());
            return Ok(Outcome::Skipped(out.skipped.len()));
        }
        Ok(Outcome::Done)
    }

    /// The run configuration: the preset's (or the seed recipe's) settings, with the options given
    /// on the command line (`matches`: the command's parsed arguments) laid over them.
    fn config(&self, matches: Option<&ArgMatches>) -> pipe::Result<TrainConfig> {
        recipe(self.preset, &self.config, matches)
    }
}

/// The settings of a command that takes `--preset` and the training options (train, lr-find,
/// review): `preset`'s (or the seed recipe's), with the options given on the command line (`options`,
/// of which `matches` says which were given) laid over them.
///
/// # Errors
/// As [`TrainConfig::with_given`].
pub fn recipe(
    preset: Option<Preset>,
    options: &TrainConfig,
    matches: Option<&ArgMatches>,
) -> pipe::Result<TrainConfig> {
    preset
        .map_or_else(TrainConfig::seed_recipe, Preset::config)
        .with_given(options, given_ids(matches))
}

/// The options of `not_taken` (clap ids) that were given (`given`), as typed (`--time-budget`), in
/// `not_taken`'s order; and the pronoun that stands for them (`it` or `them`). For commands that take
/// the training options but refuse some of them (lr-find, review).
pub fn given_of(given: &[&str], not_taken: &[&str]) -> (Vec<String>, &'static str) {
    let refused: Vec<String> = not_taken
        .iter()
        .filter(|id| given.contains(*id))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    let pronoun = if refused.len() == 1 { "it" } else { "them" };
    (refused, pronoun)
}

/// The ids of the options given on the command line (not defaults) in `matches`.
pub fn given_ids(matches: Option<&ArgMatches>) -> Vec<&str> {
    matches.map_or_else(Vec::new, |m| {
        m.ids()
            .map(|id| id.as_str())
            .filter(|id| m.value_source(id) == Some(ValueSource::CommandLine))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::{CommandFactory, FromArgMatches};
    use pipe::config::{Preset, Schedule, TrainConfig};

    /// `pipe train ARGS`' configuration, through clap as `main` parses it.
    fn config_of(args: &[&str]) -> TrainConfig {
        let m = Cli::command()
            .try_get_matches_from(["pipe", "train"].iter().chain(args))
            .unwrap();
        let Command::Train(a) = Cli::from_arg_matches(&m).unwrap().command else {
            panic!("not train");
        };
        a.config(m.subcommand_matches("train")).unwrap()
    }

    #[test]
    fn finetune_preset_fills_the_options_not_given_on_the_command_line() {
        assert_eq!(
            config_of(&["--preset", "finetune"]),
            Preset::Finetune.config()
        );
        let c = config_of(&[
            "--preset",
            "finetune",
            "--lr",
            "3e-4",
            "--test-limit",
            "500",
        ]);
        assert_eq!((c.unfreeze, c.augment, c.head_epochs), (13, true, 5));
        assert_eq!(
            (c.train_limit, c.test_limit, c.val_split),
            (0, 500, Some(0.1))
        );
        assert_eq!((c.lr, c.head_lr), (3e-4, 1e-3));
        assert_eq!((c.momentum, c.weight_decay), (0.9, 5e-4));
        assert_eq!(c.schedule, Schedule::OneCycle);
        assert_eq!((c.epochs, c.patience), (20, Some(4)));
        assert_eq!(c.time_budget, Some(70.0 * 60.0));
        assert!(c.restore_best);
        let c = config_of(&[
            "--preset",
            "finetune",
            "--epochs",
            "2",
            "--unfreeze",
            "2",
            "--input-size",
            "64",
            "--patience",
            "7",
        ]);
        assert_eq!((c.epochs, c.unfreeze, c.input_size), (2, 2, 64));
        assert_eq!(c.patience, Some(7));
        let off = config_of(&["--preset", "finetune", "--time-budget", "off"]);
        assert_eq!((off.time_budget, off.budget()), (Some(0.0), None));
        let c = config_of(&["--preset", "finetune", "--time-budget", "1h 5m"]);
        assert_eq!(c.budget(), Some(3900.0));
        // An option given with its default value still overrides the preset.
        assert_eq!(
            config_of(&["--preset", "finetune", "--train-limit", "5000"]).train_limit,
            5000
        );
    }

    #[test]
    fn without_a_preset_the_defaults_are_the_seed_recipe() {
        assert_eq!(config_of(&[]), TrainConfig::seed_recipe());
        let c = config_of(&["--weight-decay", "1e-5"]);
        assert_eq!((c.unfreeze, c.train_limit, c.test_limit), (0, 5000, 1000));
        assert_eq!((c.lr, c.weight_decay, c.seed), (1e-4, 1e-5, 42));
        assert_eq!((c.epochs, c.patience), (3, None));
    }
}
