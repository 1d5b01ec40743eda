//! `pipe train`: its arguments, the `finetune` preset, and their conversion into the training
//! library's options.

use super::{DataArgs, ExtractionArgs, SgdArgs};
use anyhow::Result;
use clap::{parser::ValueSource, ArgMatches, ValueEnum};
use std::path::PathBuf;

/// Named training recipes (`pipe train --preset`).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// Fine-tune the whole VGG16 with augmentation (see `pipe train --help`).
    Finetune,
}

/// Arguments of `pipe train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Passes over the training set.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Mini-batch size for head training.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Learning rate (of SGD or Adam; the peak rate with --schedule onecycle).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[command(flatten)]
    sgd: SgdArgs,
    /// Optimizer: sgd (with --momentum) or adam (PyTorch defaults: betas 0.9/0.999, eps 1e-8).
    #[arg(long, value_enum, default_value_t = pipe::train::Optimizer::Sgd)]
    optimizer: pipe::train::Optimizer,
    /// Learning-rate schedule: constant, cosine (anneals to near 0 by the last epoch), step (divides
    /// the rate by 10 every --lr-step-epochs) or onecycle (per batch: warm-up from lr/25 to lr over 30%
    /// of the steps, then down to lr/250,000).
    #[arg(long, value_enum, default_value_t = pipe::train::Schedule::Constant)]
    schedule: pipe::train::Schedule,
    /// Epochs between two divisions of the rate by 10 with --schedule step.
    #[arg(long, default_value_t = 5)]
    lr_step_epochs: usize,
    /// Hold out this fraction of the training images (class-stratified, seeded) as the validation set;
    /// 0 validates on the test split as the Keras seed does.
    #[arg(long, default_value_t = 0.0)]
    val_split: f64,
    /// Early stopping: end training when the validation loss has not improved for N epochs.
    #[arg(long, value_name = "N")]
    patience: Option<usize>,
    /// Finish with the parameters of the epoch with the lowest validation loss (they are always kept
    /// in best.safetensors) instead of the last epoch's.
    #[arg(long)]
    restore_best: bool,
    /// Fine-tune the last N conv layers of VGG16 with the head (1..13; 0 = frozen base with cached
    /// features). Trains on decoded images every epoch: far slower than the frozen base on a CPU.
    #[arg(long, default_value_t = 0, value_name = "N")]
    unfreeze: usize,
    /// Augment training images: random horizontal flip and 4-pixel pad-and-crop (needs --unfreeze).
    #[arg(long)]
    augment: bool,
    /// With --unfreeze: first train the head alone for N epochs on the cached frozen-base features
    /// (seconds), as Keras' fine-tuning guide advises: a random head's large early gradients would
    /// otherwise wreck the pre-trained conv layers. 0 fine-tunes from a random head.
    #[arg(long, default_value_t = 3, value_name = "N")]
    head_epochs: usize,
    /// Learning rate of the head warm-up (--head-epochs); the frozen-base recipe's rate for the full
    /// training set.
    #[arg(long, default_value_t = 1e-3)]
    head_lr: f64,
    /// A named recipe; options given on the command line override its values. `finetune`: all 13 conv
    /// layers and the head after 5 head-only epochs (lr 1e-3), --augment, SGD lr 1e-4 momentum 0.9
    /// weight decay 5e-4, one-cycle schedule, 15 epochs, the full CIFAR-10 training and test sets, 10% of training held out for validation,
    /// early stopping (patience 4) and --restore-best. Aimed at >= 0.90 test accuracy; needs a GPU to
    /// be quick (about 10 min per epoch on 2 CPU cores).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    #[command(flatten)]
    common: ExtractionArgs,
    /// Folder of training runs.
    #[arg(long, default_value = "models/runs")]
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
    /// Trains (or resumes) a run and prints its test loss, accuracy and folder. `matches` are the
    /// command's parsed arguments: a preset leaves the options given on the command line alone.
    ///
    /// # Errors
    /// As [`pipe::train::train`].
    pub fn run(self, matches: Option<&ArgMatches>) -> Result<()> {
        let out = pipe::train::train(&self.with_preset(matches).options())?;
        println!(
            "test loss {:.4}  test accuracy {:.4}",
            out.test_loss, out.test_accuracy
        );
        println!("run: {}", out.run_dir.display());
        Ok(())
    }

    /// The arguments with the preset's values, if any, on the options not given on the command line
    /// (`matches`: the command's parsed arguments).
    fn with_preset(mut self, matches: Option<&ArgMatches>) -> Self {
        if self.preset == Some(Preset::Finetune) {
            self.apply_finetune_preset(|id| {
                matches.and_then(|m| m.value_source(id)) == Some(ValueSource::CommandLine)
            });
        }
        self
    }

    /// Sets the `finetune` recipe's values on every option for which `given` (by argument id) is false.
    fn apply_finetune_preset(&mut self, given: impl Fn(&str) -> bool) {
        macro_rules! preset {
            ($($id:ident $(in $group:ident)? = $value:expr),* $(,)?) => {
                $(if !given(stringify!($id)) { self $(.$group)? .$id = $value; })*
            };
        }
        preset!(
            unfreeze = 13,
            augment = true,
            head_epochs = 5,
            optimizer = pipe::train::Optimizer::Sgd,
            lr = 1e-4,
            head_lr = 1e-3,
            momentum in sgd = 0.9,
            weight_decay in sgd = 5e-4,
            schedule = pipe::train::Schedule::OneCycle,
            epochs = 15,
            batch_size = 128,
            train_limit in data = 0,
            test_limit in data = 0,
            val_split = 0.1,
            patience = Some(4),
            restore_best = true,
        );
    }

    /// The training library's options: the arguments, field by field.
    fn options(self) -> pipe::train::TrainOptions {
        pipe::train::TrainOptions {
            data: self.data.data,
            weights: self.data.weights,
            train_limit: self.data.train_limit,
            test_limit: self.data.test_limit,
            hyper: pipe::train::HeadHyper {
                epochs: self.epochs,
                batch_size: self.batch_size,
                lr: self.lr,
                momentum: self.sgd.momentum,
                weight_decay: self.sgd.weight_decay,
                seed: self.sgd.seed,
                optimizer: self.optimizer,
                schedule: self.schedule,
                lr_step_epochs: self.lr_step_epochs,
                patience: self.patience,
                restore_best: self.restore_best,
            },
            val_split: self.val_split,
            unfreeze: self.unfreeze,
            augment: self.augment,
            head_epochs: self.head_epochs,
            head_lr: self.head_lr,
            device: self.common.device,
            extract_batch_size: self.common.extract_batch_size,
            input_size: self.common.input_size,
            runs_dir: self.runs_dir,
            name: self.name,
            resume: self.resume,
            cache_dir: self.common.cache(),
            allow_unverified: self.common.allow_unverified,
            progress: true,
            interrupt_after: self.interrupt_after_epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::{CommandFactory, FromArgMatches};

    fn options(args: &[&str]) -> pipe::train::TrainOptions {
        let m = Cli::command()
            .try_get_matches_from(["pipe", "train"].iter().chain(args))
            .unwrap();
        let Command::Train(a) = Cli::from_arg_matches(&m).unwrap().command else {
            panic!("not train");
        };
        a.with_preset(m.subcommand_matches("train")).options()
    }

    #[test]
    fn finetune_preset_fills_the_options_not_given_on_the_command_line() {
        let o = options(&[
            "--preset",
            "finetune",
            "--lr",
            "1e-3",
            "--test-limit",
            "500",
        ]);
        assert_eq!((o.unfreeze, o.augment, o.head_epochs), (13, true, 5));
        assert_eq!((o.train_limit, o.test_limit, o.val_split), (0, 500, 0.1));
        assert_eq!((o.hyper.lr, o.head_lr), (1e-3, 1e-3));
        assert_eq!((o.hyper.momentum, o.hyper.weight_decay), (0.9, 5e-4));
        assert_eq!(o.hyper.schedule, pipe::train::Schedule::OneCycle);
        assert_eq!((o.hyper.epochs, o.hyper.patience), (15, Some(4)));
        assert!(o.hyper.restore_best);
    }

    #[test]
    fn without_a_preset_the_defaults_are_the_seed_recipe() {
        let o = options(&["--weight-decay", "1e-5"]);
        assert_eq!((o.unfreeze, o.train_limit, o.test_limit), (0, 5000, 1000));
        assert_eq!(
            (o.hyper.lr, o.hyper.weight_decay, o.hyper.seed),
            (1e-4, 1e-5, 42)
        );
        assert_eq!((o.hyper.epochs, o.hyper.patience), (3, None));
    }
}
