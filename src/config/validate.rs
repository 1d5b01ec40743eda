//! The checks of a run's settings, made once before any work: each names the command-line option.

use super::{TrainConfig, VGG16_CONVS};
use crate::error::{Error, Result};

impl TrainConfig {
    /// Checks every setting before any work: epochs and batch size at least 1, a positive finite
    /// learning rate (and head warm-up rate when a warm-up runs), momentum in [0, 1), patience and
    /// step epochs at least 1, a non-negative weight decay, the input size, `unfreeze` at most 13,
    /// `augment` only with `unfreeze`, `val_split` and `test_split` in [0, 1).
    ///
    /// # Errors
    /// [`Error::Usage`] naming the command-line option.
    pub fn validate(&self) -> Result<()> {
        self.validate_optimisation()?;
        validate_input_size(self.input_size)?;
        if self.unfreeze > VGG16_CONVS {
            return Err(Error::Usage(format!(
                "--unfreeze must be between 0 and {VGG16_CONVS} (conv layers of VGG16), got {}",
                self.unfreeze
            )));
        }
        if self.augment && self.unfreeze == 0 {
            return Err(Error::Usage(
                "--augment needs --unfreeze N: with a frozen base the features are extracted once and \
                 cached, so augmented images would never be seen"
                    .into(),
            ));
        }
        for (flag, share) in [
            ("--val-split", self.val_split),
            ("--test-split", self.test_split),
        ] {
            if share.is_some_and(|v| !(0.0..1.0).contains(&v)) {
                return Err(Error::Usage(format!(
                    "{flag} must be between 0 and 1 (0 included, 1 excluded), got {}",
                    share.unwrap_or_default()
                )));
            }
        }
        if self.unfreeze > 0 && self.head_epochs > 0 && !positive(self.head_lr) {
            return Err(Error::Usage(format!(
                "--head-lr must be a positive number, got {}",
                self.head_lr
            )));
        }
        Ok(())
    }

    /// The optimisation checks of [`TrainConfig::validate`].
    fn validate_optimisation(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::Usage(
                "--epochs and --batch-size must be at least 1".into(),
            ));
        }
        if !positive(self.lr) {
            return Err(Error::Usage(format!(
                "--lr must be a positive number, got {}",
                self.lr
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::Usage(format!(
                "--momentum must be in [0, 1), got {}",
                self.momentum
            )));
        }
        if self.patience == Some(0) {
            return Err(Error::Usage(
                "--patience must be at least 1 (epochs without improvement before stopping)".into(),
            ));
        }
        if let Some(t) = self.time_budget {
            if !(t.is_finite() && t >= 0.0) {
                return Err(Error::Usage(format!(
                    "--time-budget must be a duration or off, got {t} seconds"
                )));
            }
        }
        if self.lr_step_epochs == 0 {
            return Err(Error::Usage("--lr-step-epochs must be at least 1".into()));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::Usage(format!(
                "--weight-decay must be zero or positive, got {}",
                self.weight_decay
            )));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::Usage(format!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            )));
        }
        Ok(())
    }
}

fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// Checks `--input-size`: a positive multiple of 32 (VGG16's five 2x2 poolings), at most 512.
///
/// # Errors
/// [`Error::Usage`].
pub fn validate_input_size(size: usize) -> Result<()> {
    if size == 0 || !size.is_multiple_of(32) || size > 512 {
        return Err(Error::Usage(format!(
            "--input-size must be a multiple of 32 between 32 and 512, got {size}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_option() {
        let err = |c: TrainConfig| c.validate().unwrap_err().to_string();
        type Spoil = fn(&mut TrainConfig);
        let cases: [(Spoil, &str); 11] = [
            (
                |c| c.epochs = 0,
                "--epochs and --batch-size must be at least 1",
            ),
            (|c| c.lr = f64::NAN, "--lr must be a positive number"),
            (|c| c.momentum = 1.0, "--momentum must be in [0, 1)"),
            (|c| c.patience = Some(0), "--patience must be at least 1"),
            (
                |c| c.lr_step_epochs = 0,
                "--lr-step-epochs must be at least 1",
            ),
            (
                |c| c.weight_decay = -1.0,
                "--weight-decay must be zero or positive",
            ),
            (
                |c| c.input_size = 48,
                "--input-size must be a multiple of 32",
            ),
            (|c| c.unfreeze = 14, "--unfreeze must be between 0 and 13"),
            (|c| c.augment = true, "--augment needs --unfreeze N"),
            (
                |c| c.test_split = Some(-0.1),
                "--test-split must be between 0 and 1",
            ),
            (
                |c| c.val_split = Some(1.0),
                "--val-split must be between 0 and 1",
            ),
        ];
        for (spoil, message) in cases {
            let mut c = TrainConfig::default();
            spoil(&mut c);
            assert!(err(c).contains(message), "{message}");
        }
        let ft = TrainConfig {
            head_lr: 0.0,
            ..TrainConfig::finetune()
        };
        assert!(err(ft.clone()).contains("--head-lr"));
        // Without warm-up epochs the warm-up rate is not used.
        TrainConfig {
            head_epochs: 0,
            ..ft
        }
        .validate()
        .unwrap();
    }
}
