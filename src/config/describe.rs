//! The settings line that `pipe train` prints first.

use super::{AugmentStyle, Optimizer, Schedule, TrainConfig};
use crate::arch::Pooling;
use crate::data::LayoutKind;
use crate::util::rate;

impl TrainConfig {
    /// One line echoing the configuration at the start of training, on `device` (`cpu`, `cuda:0`);
    /// a fine-tuning run also names its precision and `why` it was chosen.
    pub fn describe(&self, device: &str, why: &str) -> String {
        let opt = match self.optimizer {
            Optimizer::Sgd => format!("SGD lr {} momentum {}", rate(self.lr), self.momentum),
            Optimizer::Adam => format!("Adam lr {}", rate(self.lr)),
        };
        let schedule = match self.schedule {
            Schedule::Constant => String::new(),
            Schedule::Cosine => ", cosine schedule".into(),
            Schedule::Step => format!(
                ", lr /10 every {}",
                crate::util::plural(self.lr_step_epochs, "epoch")
            ),
            Schedule::OneCycle => ", one-cycle schedule".into(),
        };
        let val = match self.val_share() {
            v if v > 0.0 => format!("validation {:.0}% of train", v * 100.0),
            _ if self.layout == Some(LayoutKind::TrainValTest) => "validation = val/".into(),
            // With train/ + val/, val/ is the test split: say so where the layout line named it.
            _ if self.layout == Some(LayoutKind::TrainVal) => {
                "validation = test split (val/)".into()
            }
            _ => "validation = test split".into(),
        };
        let test = match self.test_split {
            Some(t) if t > 0.0 => format!(", test {:.0}% of each class", t * 100.0),
            _ => String::new(),
        };
        let stop = self
            .patience
            .map(|p| format!(", early stopping (patience {p})"))
            .unwrap_or_default();
        let best = if self.restore_best {
            ", restore best"
        } else {
            ""
        };
        let smoothing = if self.label_smoothing > 0.0 {
            format!(", label smoothing {}", self.label_smoothing)
        } else {
            String::new()
        };
        let head = match self.pooling {
            Pooling::Flatten => "dense head",
            Pooling::Max => "global max pooling (L2-normalised) + dense head",
        };
        let model = if self.unfreeze > 0 {
            format!(
                "VGG16 with its last {} conv layers fine-tuned + {head}{}, {} ({why})",
                self.unfreeze,
                match (self.augment, self.augment_style.resolve(self.input_size)) {
                    (false, _) => "",
                    (true, AugmentStyle::Photo) =>
                        ", photo augmentation (random resized crops, flips)",
                    (true, _) => ", augmented images",
                },
                self.precision.unwrap_or_default().label()
            )
        } else {
            format!("VGG16 frozen base + {head}")
        };
        format!(
            "pipe train: data {}, {} train / {} test images, {val}{test}, input {}x{} \
             ({}); {model} on {device}; {opt} weight decay {}{smoothing}{schedule}, batch {}, \
             {}{stop}{best}, seed {}",
            self.data.display(),
            crate::util::limit(self.train_limit),
            crate::util::limit(self.test_limit),
            self.input_size,
            self.input_size,
            self.resize,
            rate(self.weight_decay),
            self.batch_size,
            match self.budget() {
                Some(t) => format!(
                    "as many of {} as fit in {} (--time-budget)",
                    crate::util::plural(self.epochs, "epoch"),
                    crate::util::duration(t)
                ),
                None => crate::util::plural(self.epochs, "epoch"),
            },
            self.seed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limit of 0 reads `all`, any other its count.
    #[test]
    fn the_settings_line_says_all_for_a_limit_of_zero() {
        let c = TrainConfig {
            train_limit: 0,
            ..TrainConfig::seed_recipe()
        };
        let line = c.describe("cpu", "");
        assert!(line.contains(", all train / 1000 test images, "), "{line}");
    }

    /// What validates, by layout: train/ + val/ names val/ as the test split it is.
    #[test]
    fn the_settings_line_names_what_validates() {
        let with = |layout| {
            TrainConfig {
                layout: Some(layout),
                ..TrainConfig::seed_recipe()
            }
            .describe("cpu", "")
        };
        assert!(with(LayoutKind::TrainVal).contains("validation = test split (val/), "));
        assert!(with(LayoutKind::TrainTest).contains("validation = test split, "));
        assert!(with(LayoutKind::TrainValTest).contains("validation = val/, "));
    }
}
