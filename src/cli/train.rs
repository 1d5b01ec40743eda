//! `pipe train`: its arguments, the `finetune` preset, and their conversion into the training
//! library's options.

use super::{DataArgs, ExtractionArgs, Outcome, SgdArgs, SEED};
use anyhow::Result;
use clap::{parser::ValueSource, ArgMatches};
use pipe::config::{AugmentStyle, Overrides, Preset, TrainConfig, TrainEnv};
use pipe::data::SkippedFile;
use std::path::PathBuf;

/// Arguments of `pipe train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Passes over the training set.
    #[arg(long, default_value_t = SEED.epochs)]
    epochs: usize,
    /// Mini-batch size for head training.
    #[arg(long, default_value_t = SEED.batch_size)]
    batch_size: usize,
    /// Learning rate (of SGD or Adam; the peak rate with --schedule onecycle).
    #[arg(long, default_value_t = SEED.lr)]
    lr: f64,
    #[command(flatten)]
    sgd: SgdArgs,
    /// Optimizer: sgd (with --momentum) or adam (PyTorch defaults: betas 0.9/0.999, eps 1e-8).
    #[arg(long, value_enum, default_value_t = SEED.optimizer)]
    optimizer: pipe::config::Optimizer,
    /// Learning-rate schedule: constant, cosine (anneals to near 0 by the last epoch), step (divides
    /// the rate by 10 every --lr-step-epochs) or onecycle (per batch: warm-up from lr/25 to lr over 30%
    /// of the steps, then down to lr/250,000).
    #[arg(long, value_enum, default_value_t = SEED.schedule)]
    schedule: pipe::config::Schedule,
    /// Label smoothing of the training loss, in [0, 1): the target puts 1 - S on the label and spreads
    /// S over all classes (PyTorch's CrossEntropyLoss(label_smoothing=S)); validation and test losses
    /// stay the plain cross-entropy.
    #[arg(long, value_name = "S", default_value_t = SEED.label_smoothing)]
    label_smoothing: f64,
    /// Epochs between two divisions of the rate by 10 with --schedule step.
    #[arg(long, default_value_t = SEED.lr_step_epochs)]
    lr_step_epochs: usize,
    /// Hold out this share of each training class (seeded) as the validation set; 0 validates on the
    /// held-out split as the Keras seed does. Default: 0, or 0.15 for a single folder of class folders.
    #[arg(long, value_name = "SHARE")]
    val_split: Option<f64>,
    /// For a single folder of class folders: hold out this share of each class (seeded) as the test
    /// split of the closing test accuracy (default 0.15). Every class needs an image in each split;
    /// a class too small is named.
    #[arg(long, value_name = "SHARE")]
    test_split: Option<f64>,
    /// Early stopping: end training when the validation loss has not improved for N epochs.
    #[arg(long, value_name = "N")]
    patience: Option<usize>,
    /// Finish with the parameters of the epoch with the lowest validation loss (they are always kept
    /// in best.safetensors) instead of the last epoch's.
    #[arg(long)]
    restore_best: bool,
    /// Fine-tune the last N conv layers of VGG16 with the head (1..13; 0 = frozen base with cached
    /// features). Trains on decoded images every epoch: far slower than the frozen base on a CPU.
    #[arg(long, default_value_t = SEED.unfreeze, value_name = "N")]
    unfreeze: usize,
    /// How the base's last feature map becomes the head's input: flatten (the Keras recipe: every
    /// position of the map, 512·(S/32)² features, 25,088 at 224) or max (global max pooling, then
    /// L2 normalisation: 512 features at any --input-size, each the strongest response of one
    /// channel anywhere in the image; better on photos at 224 and above, and what --preset photos
    /// uses). Built into the exported model.
    #[arg(long, value_enum, default_value_t = SEED.pooling, value_name = "flatten|max")]
    pooling: pipe::arch::Pooling,
    /// Augment training images every epoch (needs --unfreeze), as --augment-style says.
    #[arg(long)]
    augment: bool,
    /// How --augment changes training images: cifar (random flip and a shift of up to 4 pixels per
    /// 32, for small tiles), photo (random resized crop: a random part of 8% to 100% of the photo's
    /// area, aspect 3/4 to 4/3, resized to the input size; and a random flip), or auto (photo for
    /// --input-size above 64, else cifar).
    #[arg(long, value_enum, default_value_t = SEED.augment_style)]
    augment_style: AugmentStyle,
    /// With --unfreeze: arithmetic of the conv layers while fine-tuning. auto = bf16 mixed precision on
    /// a CPU with AVX512_BF16 or AMX, float32 elsewhere and on CUDA. The
    /// weights, optimizer, head, loss, validation, final test predictions and the exported model stay
    /// float32 in every case. The choice is recorded in config.json. [default: auto]
    #[arg(long, value_enum, value_name = "P")]
    precision: Option<pipe::config::Precision>,
    /// With --unfreeze: first train the head alone for N epochs on the cached frozen-base features
    /// (seconds), as Keras' fine-tuning guide advises: a random head's large early gradients would
    /// otherwise wreck the pre-trained conv layers. 0 fine-tunes from a random head.
    #[arg(long, default_value_t = SEED.head_epochs, value_name = "N")]
    head_epochs: usize,
    /// Learning rate of the head warm-up (--head-epochs); the frozen-base recipe's rate for the full
    /// training set.
    #[arg(long, default_value_t = SEED.head_lr)]
    head_lr: f64,
    /// A named recipe; options given on the command line override its values. `finetune`: all 13 conv
    /// layers and the head after 5 head-only epochs (lr 1e-3), --augment, SGD peak lr 1e-3 momentum
    /// 0.9 weight decay 5e-4, one-cycle schedule, 20 epochs, the full CIFAR-10 training and test sets,
    /// 10% of training held out for validation, early stopping (patience 4) and --restore-best;
    /// measured at 37 minutes on 2 CPU cores with AMX-BF16 (bf16; early stopping ended it after 17
    /// epochs), hours on CPUs without bf16 (estimated). `photos`: for a few hundred photos of your
    /// own classes: --input-size 384, --resize crop, --pooling max, all images, the frozen base and
    /// the dense head (SGD lr 3e-3 momentum 0.9, batch 32, 10 epochs); with --unfreeze N --augment,
    /// photo augmentation (random resized crops and flips).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Stop at the first image file that cannot be decoded (exit code 1) instead of skipping it.
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    common: ExtractionArgs,
    /// Folder of training runs.
    #[arg(long, default_value = pipe::config::DEFAULT_RUNS_DIR)]
    runs_dir: PathBuf,
    /// Run name (default: the UTC time, YYYYMMDD-HHMMSS). With --resume: the run to continue.
    #[arg(long)]
    name: Option<String>,
    /// Continue an unfinished run (killed or interrupted) from its last epoch checkpoint; the run's
    /// config.json decides data and hyper-parameters. Without --name: the most recent unfinished run.
    #[arg(long)]
    resume: bool,
    /// Stop after N epochs as if interrupted (leaves an unfinished run; for testing --resume).
    #[arg(long, hide = true)]
    interrupt_after_epoch: Option<usize>,
}

impl TrainArgs {
    /// Trains (or resumes) a run and prints its test loss, accuracy and folder, and how many image
    /// files were skipped. `matches` are the command's parsed arguments: a preset leaves the options
    /// given on the command line alone.
    ///
    /// # Errors
    /// As [`pipe::train::train`].
    pub fn run(self, matches: Option<&ArgMatches>) -> Result<Outcome> {
        let config = self.config(matches);
        let env = TrainEnv {
            runs_dir: self.runs_dir,
            name: self.name,
            resume: self.resume,
            interrupt_after: self.interrupt_after_epoch,
            strict: self.strict,
            ..self.common.env()
        };
        let out = pipe::train::train(&config, &env)?;
        println!(
            "test loss {:.4}  test accuracy {:.4}",
            out.test_loss, out.test_accuracy
        );
        println!("run: {}", out.run_dir.display());
        if let Some(line) = SkippedFile::summary(&out.skipped) {
            let list = out.run_dir.join(pipe::train::SKIPPED_FILE);
            println!("{line}; listed in {}", list.display());
            return Ok(Outcome::Skipped(out.skipped.len()));
        }
        Ok(Outcome::Done)
    }

    /// The run configuration: the preset's (or the seed recipe's) settings, with the options given
    /// on the command line (`matches`: the command's parsed arguments) applied over them.
    fn config(&self, matches: Option<&ArgMatches>) -> TrainConfig {
        let given =
            |id: &str| matches.and_then(|m| m.value_source(id)) == Some(ValueSource::CommandLine);
        macro_rules! overrides {
            ($($field:ident $(in $group:ident)?),* $(,)?) => {
                Overrides {
                    $($field: given(stringify!($field)).then(|| self $(.$group)? .$field.clone()),)*
                }
            };
        }
        let overrides = overrides!(
            data in data,
            weights in data,
            train_limit in data,
            test_limit in data,
            epochs,
            batch_size,
            optimizer,
            lr,
            momentum in sgd,
            weight_decay in sgd,
            label_smoothing,
            schedule,
            lr_step_epochs,
            val_split,
            test_split,
            patience,
            restore_best,
            unfreeze,
            augment,
            augment_style,
            precision,
            head_epochs,
            head_lr,
            seed in sgd,
            input_size in common,
            resize in common,
            pooling,
        );
        overrides.apply(
            self.preset
                .map_or_else(TrainConfig::seed_recipe, Preset::config),
        )
    }
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
        a.config(m.subcommand_matches("train"))
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
