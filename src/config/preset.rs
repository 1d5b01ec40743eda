//! Named training recipes (`pipe train --preset`), and how the options given on a command line go
//! over them ([`TrainConfig::with_given`]).

use super::{Optimizer, Schedule, TrainConfig, VGG16_CONVS};
use crate::arch::Pooling;
use crate::data::ResizePolicy;
use crate::error::{Error, Result};

/// Named training recipes (`pipe train --preset`); [`Preset::config`] gives each one's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Fine-tune the whole VGG16 with augmentation (see [`TrainConfig::finetune`]).
    #[value(help = "Fine-tune the whole VGG16 on CIFAR-10 with augmentation (settings above)")]
    Finetune,
    /// A few hundred photos of one's own classes (see [`TrainConfig::photos`]).
    #[value(help = "A few hundred photos of your own classes at 384 pixels (settings above)")]
    Photos,
}

impl Preset {
    /// The recipe's settings (before the options given on the command line are laid over them with
    /// [`TrainConfig::with_given`]).
    pub fn config(self) -> TrainConfig {
        match self {
            Preset::Finetune => TrainConfig::finetune(),
            Preset::Photos => TrainConfig::photos(),
        }
    }
}

/// The `finetune` preset's `--time-budget`, 70 minutes: on a 2-core CPU with AMX-BF16 all 20 epochs
/// fit (the run took 37 minutes); on one without, the epochs that fit (docs/RESULTS.md).
pub const FINETUNE_BUDGET_SECONDS: f64 = 70.0 * 60.0;

impl TrainConfig {
    /// The `finetune` recipe: all 13 convs and the head after 5 head-only epochs at lr 1e-3, with
    /// augmentation; SGD peak lr 1e-3 momentum 0.9 weight decay 5e-4, one-cycle, as many of 20 epochs
    /// as fit in a time budget of [`FINETUNE_BUDGET_SECONDS`] (planned from the first batches' speed),
    /// batch 128;
    /// the full training and test sets, 10% of training held out for validation, patience 4, restore
    /// best. Chosen by measurement on the full CIFAR-10 (docs/RESULTS.md): a peak rate of 1e-3 beat
    /// 1e-4 by 8 points after 3 epochs, and fine-tuning all 13 convs beat leaving blocks 1-2 frozen at
    /// equal epochs; the full-data run took 37 minutes on a 2-core CPU with AMX-BF16 (early stopping
    /// ended it after 17 of the 20 epochs; the run estimated 43 minutes for all 20).
    pub fn finetune() -> Self {
        TrainConfig {
            unfreeze: VGG16_CONVS,
            augment: true,
            head_epochs: 5,
            optimizer: Optimizer::Sgd,
            lr: 1e-3,
            head_lr: 1e-3,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: Schedule::OneCycle,
            epochs: 20,
            time_budget: Some(FINETUNE_BUDGET_SECONDS),
            batch_size: 128,
            train_limit: 0,
            test_limit: 0,
            val_split: Some(0.1),
            patience: Some(4),
            restore_best: true,
            ..Self::default()
        }
    }

    /// The `photos` recipe, for a few hundred photos of one's own classes: input 384 (above VGG16's
    /// own 224), shorter side + centre crop, all images, the frozen base, global max pooling with L2
    /// normalisation ([`Pooling::Max`]) and the dense head (SGD lr 3e-3 momentum 0.9, batch 32, 10
    /// epochs). On the ants-and-bees photos it measured best of the variations in docs/RESULTS.md
    /// (0.953 mean over 10 seeds, against 0.922 for the flattened head at 224). Classes weighted by
    /// inverse frequency (`--class-weights auto`): with the ants of its training photos cut to a
    /// tenth, balanced accuracy 0.889 against 0.517 unweighted (seeds 1-3, `benches/imbalance.py`),
    /// and the same 0.9542 on the balanced photos. With `unfreeze` and
    /// `augment`, photo augmentation ([`super::AugmentStyle::Photo`], which `auto` resolves to above
    /// 64 pixels).
    pub fn photos() -> Self {
        TrainConfig {
            input_size: 384,
            resize: ResizePolicy::Crop,
            pooling: Pooling::Max,
            train_limit: 0,
            test_limit: 0,
            epochs: 10,
            batch_size: 32,
            lr: 3e-3,
            class_weights: crate::config::ClassWeights::Auto,
            ..Self::default()
        }
    }

    /// This configuration (a preset, or the seed recipe) with the settings named by `ids` taken from
    /// `given` instead: the options given explicitly on a command line go over the preset, whatever
    /// their value (an option given with its default value still overrides). `ids` are the clap ids
    /// of the given options, which are the fields' names; other ids are ignored.
    ///
    /// # Errors
    /// [`Error::Usage`] when a value cannot be carried over (a path that is not UTF-8).
    pub fn with_given<'a>(
        self,
        given: &TrainConfig,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<TrainConfig> {
        let fields = |c: &TrainConfig| match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(_) => Err(Error::Usage("the settings are not a JSON object".into())),
            Err(e) => Err(Error::Usage(format!("a setting cannot be read: {e}"))),
        };
        let (mut base, given) = (fields(&self)?, fields(given)?);
        // Every settings field is in the JSON form but those skipped when empty (label smoothing of
        // 0, no precision), which then read back as their serde default.
        let settings = settings_ids();
        for id in ids
            .into_iter()
            .filter(|id| settings.iter().any(|s| s == id))
        {
            match given.get(id) {
                Some(v) => base.insert(id.to_string(), v.clone()),
                None => base.remove(id),
            };
        }
        serde_json::from_value(serde_json::Value::Object(base))
            .map_err(|e| Error::Usage(format!("the settings cannot be combined: {e}")))
    }
}

/// The clap ids (= field names) of [`TrainConfig`]'s command-line options.
fn settings_ids() -> Vec<String> {
    use clap::Args;
    TrainConfig::augment_args(clap::Command::new("train"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AugmentStyle;

    #[test]
    fn finetune_preset_expands_to_the_documented_recipe() {
        let c = Preset::Finetune.config();
        // All 13 convs after 5 head-only epochs at lr 1e-3, with augmentation.
        assert_eq!((c.unfreeze, c.augment), (13, true));
        assert_eq!((c.head_epochs, c.head_lr), (5, 1e-3));
        // SGD peak lr 1e-3 momentum 0.9 weight decay 5e-4, one-cycle, 20 epochs of batch 128.
        assert_eq!((c.optimizer, c.lr, c.momentum), (Optimizer::Sgd, 1e-3, 0.9));
        assert_eq!((c.weight_decay, c.schedule), (5e-4, Schedule::OneCycle));
        assert_eq!((c.epochs, c.batch_size), (20, 128));
        // The full data, 10% held out, patience 4, restore best.
        assert_eq!(
            (c.train_limit, c.test_limit, c.val_split),
            (0, 0, Some(0.1))
        );
        assert_eq!((c.patience, c.restore_best), (Some(4), true));
        // Everything else is the seed recipe's.
        let seed = TrainConfig::seed_recipe();
        let rest = |c: &TrainConfig| {
            (
                c.seed,
                c.input_size,
                c.lr_step_epochs,
                c.data.clone(),
                c.weights.clone(),
            )
        };
        assert_eq!(rest(&c), rest(&seed));
        assert_eq!((rest(&seed).0, rest(&seed).1), (42, 32));
        c.validate().unwrap();
    }

    #[test]
    fn explicit_options_override_the_preset() {
        let given = TrainConfig {
            epochs: 2,
            lr: 3e-4,
            unfreeze: 2,
            patience: None,
            train_limit: 300,
            input_size: 64,
            label_smoothing: 0.0,
            ..TrainConfig::default()
        };
        let ids = [
            "epochs",
            "lr",
            "unfreeze",
            "patience",
            "train_limit",
            "input_size",
            "label_smoothing",
        ];
        let preset = TrainConfig {
            label_smoothing: 0.1,
            ..Preset::Finetune.config()
        };
        let c = preset.clone().with_given(&given, ids).unwrap();
        assert_eq!((c.epochs, c.lr, c.unfreeze), (2, 3e-4, 2));
        assert_eq!((c.patience, c.train_limit, c.input_size), (None, 300, 64));
        // A setting given as 0 (absent from the JSON form) replaces the preset's value too.
        assert_eq!(c.label_smoothing, 0.0);
        // What was not given keeps the preset's value.
        assert_eq!((c.weight_decay, c.schedule), (5e-4, Schedule::OneCycle));
        assert!(c.augment && c.restore_best);
        assert_eq!(
            (c.head_epochs, c.test_limit, c.val_split),
            (5, 0, Some(0.1))
        );
        // Ids that are not settings (other options, argument groups) are ignored.
        let c = preset
            .clone()
            .with_given(&given, ["preset", "TrainConfig", "runs_dir"])
            .unwrap();
        assert_eq!(c, preset);
        // Nothing given: the preset unchanged; on the seed recipe, the seed recipe.
        let seed = TrainConfig::seed_recipe().with_given(&given, []).unwrap();
        assert_eq!(seed, TrainConfig::default());
    }

    /// Every option of the settings is a field of `config.json` under the same name, so that
    /// [`TrainConfig::with_given`] can carry it over by name.
    #[test]
    fn every_option_is_a_config_json_field_of_the_same_name() {
        let c = TrainConfig {
            label_smoothing: 0.1,
            class_weights: crate::config::ClassWeights::Auto,
            precision: Some(crate::config::Precision::Fp32),
            patience: Some(1),
            time_budget: Some(60.0),
            val_split: Some(0.1),
            test_split: Some(0.1),
            ..TrainConfig::default()
        };
        let json = serde_json::to_value(&c).unwrap();
        let ids = settings_ids();
        assert!(ids.len() >= 27, "{ids:?}");
        for id in ids {
            assert!(
                json.get(&id).is_some(),
                "option {id} is not a config.json field"
            );
        }
    }

    /// The photos preset is 384 with crop and max pooling, on all images.
    #[test]
    fn photos_preset_is_384_crop_max() {
        let p = Preset::Photos.config();
        assert_eq!(
            (p.input_size, p.resize, p.pooling),
            (384, ResizePolicy::Crop, Pooling::Max)
        );
        assert_eq!(p.arch(2).feature_dim(), 512);
        assert_eq!((p.train_limit, p.test_limit), (0, 0));
        assert_eq!(p.class_weights, crate::config::ClassWeights::Auto);
        p.validate().unwrap();
        let started = p.started("r", "cpu", crate::config::Precision::Fp32);
        assert_ne!(started.augment_style, AugmentStyle::Auto);
    }
}
