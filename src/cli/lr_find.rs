//! `pipe lr-find`: the learning-rate range test of a recipe: its head on cached features, or its
//! fine-tuning with `--unfreeze`.

use super::render::Stderr;
use anyhow::{Context, Result};
use clap::ArgMatches;
use pipe::config::{ExtractEnv, Optimizer, Preset, TrainConfig};
use pipe::train::{LrFindOptions, SuggestRule};
use pipe::util::rate;
use std::path::PathBuf;

/// Arguments of `pipe lr-find`. The recipe's options that set a run's length or schedule
/// ([`RUN_LENGTH_OPTIONS`]) are hidden from its help: given, they are refused with a message.
#[derive(clap::Args)]
#[command(mut_args(|a| if RUN_LENGTH_OPTIONS.contains(&a.get_id().as_str()) { a.hide(true) } else { a }))]
pub struct LrFindArgs {
    /// The recipe tested, as `pipe train --preset` (options given on the command line override it);
    /// without it, the seed recipe with the options given. A recipe with --unfreeze (the finetune
    /// preset) is tested on its fine-tuning, after its head warm-up; others on the head alone.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// The first learning rate of the sweep.
    #[arg(long, default_value = "1e-7", value_name = "LR")]
    start_lr: f64,
    /// The last learning rate of the sweep (the test stops earlier when the loss diverges).
    #[arg(long, default_value_t = 10.0, value_name = "LR")]
    end_lr: f64,
    /// Mini-batches of the sweep (at least 20), the rate growing exponentially from --start-lr to
    /// --end-lr; the training split is gone through as many times as they need. Fewer steps smooth
    /// the loss over fewer batches (see lr_find.json's `smoothing`).
    #[arg(long, default_value_t = 100, value_name = "N")]
    steps: usize,
    /// How the suggested rate is picked from the smoothed loss: valley (fastai's default: about
    /// halfway along the longest fall) or steepest (where it falls fastest, often near the end of
    /// the fall, a larger rate). Both are printed and recorded in lr_find.json.
    #[arg(long, value_enum, default_value_t = SuggestRule::Valley, value_name = "RULE")]
    suggest: SuggestRule,
    /// Folder to write lr_find.png and lr_find.json into (default: a new models/lr-find/<UTC time>).
    #[arg(short, long, value_name = "DIR")]
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
        refuse_run_length_options(&super::train::given_ids(matches))?;
        let config = super::train::recipe(self.preset, &self.config, matches)?;
        let opts = LrFindOptions {
            start_lr: self.start_lr,
            end_lr: self.end_lr,
            steps: self.steps,
            rule: self.suggest,
            ..LrFindOptions::default()
        };
        pipe::train::validate_lr_find(&config, &self.env, &opts)?;
        let out_dir = self
            .out
            .unwrap_or_else(|| PathBuf::from("models/lr-find").join(pipe::run::timestamp_name()));
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("cannot create {}", out_dir.display()))?;
        let data = pipe::util::absolute(&config.data);
        eprintln!(
            "pipe lr-find: data {}, {} train images; {}; {} weight decay {}, batch {}, seed {}; \
             learning rate {} to {} over {} steps",
            data.display(),
            pipe::util::limit(config.train_limit),
            if config.unfreeze > 0 {
                format!(
                    "fine-tuning the last {} conv layers and the head after {} of the head",
                    config.unfreeze,
                    pipe::util::plural(config.head_epochs, "warm-up epoch")
                )
            } else {
                "the dense head on the frozen base's features".to_string()
            },
            match config.optimizer {
                Optimizer::Sgd => format!("SGD momentum {}", config.momentum),
                Optimizer::Adam => "Adam".to_string(),
            },
            rate(config.weight_decay),
            config.batch_size,
            config.seed,
            rate(opts.start_lr),
            rate(opts.end_lr),
            opts.steps
        );
        let events = Stderr::new();
        let found = pipe::train::lr_find(&config, &self.env, &opts, &events);
        events.clear();
        let found = found?;
        pipe::util::write_json_atomic(
            &out_dir.join("lr_find.json"),
            &serde_json::json!({
                "data": data, "batch_size": config.batch_size, "optimizer": config.optimizer,
                "momentum": config.momentum, "weight_decay": config.weight_decay,
                "train_limit": config.train_limit, "input_size": config.input_size,
                "resize": config.resize, "pooling": config.pooling,
                "class_weights": config.class_weights, "label_smoothing": config.label_smoothing,
                "augment": config.augment, "seed": config.seed, "recipe_lr": config.lr,
                "unfreeze": config.unfreeze, "head_epochs": if config.unfreeze > 0 { config.head_epochs } else { 0 },
                "start_lr": opts.start_lr, "end_lr": opts.end_lr, "steps": opts.steps,
                "suggest": opts.rule, "rule": opts.rule.describe(),
                "suggestions": found.suggestions.iter().map(|(r, lr)| (r.name(), *lr)).collect::<std::collections::BTreeMap<_, _>>(),
                "smoothing": pipe::train::smoothing_beta(opts.steps),
                "suggestion": found.suggestion, "stopped": found.stopped,
                "images_extracted": found.extracted, "points": found.points,
            }),
        )?;
        let smoothed: Vec<(f64, f64)> = found.points.iter().map(|p| (p.lr, p.smoothed)).collect();
        let losses: Vec<(f64, f64)> = found.points.iter().map(|p| (p.lr, p.loss)).collect();
        pipe::plot::lr_find(
            &smoothed,
            &losses,
            found.suggestion,
            Some(config.lr),
            &out_dir.join("lr_find.png"),
        )?;
        let last = found.points.last().map_or(0.0, |p| p.lr);
        println!(
            "lr-find: {} steps, learning rate {} to {} ({})",
            found.points.len(),
            rate(opts.start_lr),
            rate(last),
            if found.stopped == "diverged" {
                "stopped: the loss diverged"
            } else {
                "the whole sweep"
            }
        );
        let others: Vec<String> = found
            .suggestions
            .iter()
            .filter(|(r, _)| *r != opts.rule)
            .filter_map(|(r, lr)| Some(format!("--suggest {}: {}", r.name(), rate((*lr)?))))
            .collect();
        match found.suggestion {
            Some(lr) => println!(
                "suggested learning rate {} ({}{}); the recipe's --lr is {}",
                rate(lr),
                opts.rule.describe(),
                if others.is_empty() {
                    String::new()
                } else {
                    format!("; {}", others.join("; "))
                },
                rate(config.lr)
            ),
            None => println!(
                "no suggestion: too few steps before the loss diverged (lower --start-lr or raise --steps)"
            ),
        }
        let fall = pipe::train::fall(&found.points);
        if found.suggestion.is_some() && fall < FLAT_FALL {
            println!(
                "caution: the smoothed loss fell only {:.1}% below its first value over the range \
                 test, so no rule's suggestion means much; look at lr_find.png",
                100.0 * fall
            );
        }
        println!("lr_find.png and lr_find.json in {}", out_dir.display());
        Ok(())
    }
}

/// Under this fall of the smoothed loss ([`pipe::train::fall`]) a suggestion is printed with a
/// caution: a curve that drops less than a tenth has no descent worth following.
const FLAT_FALL: f64 = 0.1;

/// The training options that set a run's length or schedule, which a range test replaces with its
/// rates and steps (clap ids of [`TrainConfig`]'s fields).
const RUN_LENGTH_OPTIONS: [&str; 6] = [
    "epochs",
    "time_budget",
    "schedule",
    "lr_step_epochs",
    "patience",
    "restore_best",
];

/// Refuses, before any work, the options of `given` (clap ids given on the command line) that set a
/// run's length or schedule: a range test would silently ignore them.
///
/// # Errors
/// [`pipe::Error::Usage`] naming them.
fn refuse_run_length_options(given: &[&str]) -> pipe::Result<()> {
    let (refused, pronoun) = super::train::given_of(given, &RUN_LENGTH_OPTIONS);
    if refused.is_empty() {
        return Ok(());
    }
    let verb = if refused.len() == 1 { "sets" } else { "set" };
    Err(pipe::Error::Usage(format!(
        "{} {verb} a training run's length or schedule, which lr-find replaces with its range \
         test (--start-lr, --end-lr, --steps); leave {pronoun} out",
        refused.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use crate::cli::Cli;
    use clap::CommandFactory;

    /// `pipe lr-find ARGS`' check of the options given.
    fn check(args: &[&str]) -> Result<(), String> {
        let m = Cli::command()
            .try_get_matches_from(["pipe", "lr-find"].iter().chain(args))
            .unwrap();
        let ids = super::super::train::given_ids(m.subcommand_matches("lr-find"));
        super::refuse_run_length_options(&ids).map_err(|e| e.to_string())
    }

    /// The options that set a run's length or schedule are refused, named as typed; the recipe's
    /// other options, the sweep's own and a preset (which sets epochs and a budget) pass.
    #[test]
    fn options_of_a_run_length_are_refused() {
        assert_eq!(
            check(&["--preset", "finetune", "--lr", "1e-3", "--steps", "30"]),
            Ok(())
        );
        let err = check(&["--time-budget", "10m", "--restore-best"]).unwrap_err();
        assert!(
            err.contains("--time-budget, --restore-best set a training run's length"),
            "{err}"
        );
        assert!(err.contains("leave them out"), "{err}");
        for option in [
            ["--epochs", "3"],
            ["--patience", "2"],
            ["--schedule", "onecycle"],
        ] {
            let err = check(&option).unwrap_err();
            assert!(err.starts_with(&format!("{} sets a", option[0])), "{err}");
            assert!(err.contains("leave it out"), "{err}");
        }
    }

    /// `pipe lr-find --help` leaves out exactly the refused options (which `pipe train --help`
    /// shows) and still lists the recipe's others.
    #[test]
    fn the_help_hides_exactly_the_refused_options() {
        // Whether the help lists `flag` as an option (an indented line starting with it, as
        // `  -s, --flag <V>`; the command's description also names the refused options).
        let lists = |help: &str, flag: &str| {
            help.lines()
                .filter(|l| l.starts_with("  "))
                .map(str::trim_start)
                .filter(|l| l.starts_with('-'))
                .any(|l| l.split([' ', ',', '=', '[', '<']).any(|w| w == flag))
        };
        let mut cli = Cli::command();
        let lr_find = cli.find_subcommand_mut("lr-find").unwrap();
        let help = lr_find.render_long_help().to_string();
        for arg in lr_find.get_arguments() {
            let id = arg.get_id().as_str();
            let refused = super::RUN_LENGTH_OPTIONS.contains(&id);
            assert_eq!(arg.is_hide_set(), refused, "{id}");
            if let Some(long) = arg.get_long() {
                assert_eq!(
                    lists(&help, &format!("--{long}")),
                    !refused,
                    "--{long} in\n{help}"
                );
            }
        }
        for flag in [
            "--lr",
            "--optimizer",
            "--unfreeze",
            "--steps",
            "--weight-decay",
        ] {
            assert!(lists(&help, flag), "{flag}");
        }
        let train = Cli::command()
            .find_subcommand_mut("train")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(lists(&train, "--epochs") && lists(&train, "--restore-best"));
    }
}
