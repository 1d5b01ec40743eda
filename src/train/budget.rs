//! Time budgets of fine-tuning runs (`--time-budget`): how many epochs fit, planned once from the
//! speed of a few training batches measured after the head warm-up ([`plan`]), and whether another
//! epoch still fits once epochs have been timed ([`next_epoch_fits`]).
//!
//! All times are wall seconds counted from the start of `pipe train`, so that what came before the
//! plan (decoding, feature extraction for the warm-up, the warm-up itself) is spent budget.

/// How much faster evaluation (float32, forward only, batches of 256) goes through images than a
/// training step (forward and backward) at the training precision: the estimate of validation and
/// test time before an epoch's validation has been timed. Forward-only is about 3x a training step
/// in arithmetic; 1.5 keeps the estimate on the safe side.
pub const EVAL_SPEEDUP: f64 = 1.5;

/// The part of a budget kept for what follows the final test (writing the run's files and figures,
/// `base.safetensors` among them): 2% of it, at least 5 s.
pub fn reserve(budget: f64) -> f64 {
    (0.02 * budget).max(5.0)
}

/// Examples per split of a run, for a plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes {
    /// Training images per epoch.
    pub train: usize,
    /// Validation images evaluated after every epoch.
    pub val: usize,
    /// Test images evaluated once at the end.
    pub test: usize,
}

/// What a budget allows, from [`plan`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Epochs to train: as many as fit, at least 1, at most the run's `--epochs`.
    pub epochs: usize,
    /// Expected seconds per epoch, validation included.
    pub epoch_seconds: f64,
    /// Expected seconds of the final test.
    pub test_seconds: f64,
    /// Expected wall seconds of the whole run from its start, the reserve included.
    pub expected_seconds: f64,
    /// Whether `epochs` fit in the budget (false only when not even one epoch does).
    pub fits: bool,
    /// Whether `epochs` was capped by `--epochs` (more would have fit).
    pub capped: bool,
}

/// Plans the epochs of a run with `budget` seconds of which `spent` are gone, training at
/// `train_rate` images per second (measured) and evaluating at [`EVAL_SPEEDUP`] times that, on
/// splits of `sizes`, with at most `max_epochs` epochs.
///
/// An epoch costs its training images at `train_rate` plus the validation images at the
/// evaluation rate; the run ends with the test images at the evaluation rate and the [`reserve`].
pub fn plan(budget: f64, spent: f64, train_rate: f64, sizes: Sizes, max_epochs: usize) -> Plan {
    let eval_rate = train_rate * EVAL_SPEEDUP;
    let epoch_seconds = sizes.train as f64 / train_rate + sizes.val as f64 / eval_rate;
    let test_seconds = sizes.test as f64 / eval_rate;
    let left = budget - spent - test_seconds - reserve(budget);
    let fit = if left > 0.0 && epoch_seconds > 0.0 {
        (left / epoch_seconds).floor() as usize
    } else {
        0
    };
    let epochs = fit.clamp(1, max_epochs.max(1));
    Plan {
        epochs,
        epoch_seconds,
        test_seconds,
        expected_seconds: spent + epochs as f64 * epoch_seconds + test_seconds + reserve(budget),
        fits: fit >= 1,
        capped: fit > max_epochs,
    }
}

/// Whether another epoch of `epoch_seconds` (the mean of the epochs timed), then the final test of
/// `test_seconds` and the [`reserve`], still end within `budget` when `spent` seconds are gone.
pub fn next_epoch_fits(budget: f64, spent: f64, epoch_seconds: f64, test_seconds: f64) -> bool {
    spent + epoch_seconds + test_seconds + reserve(budget) <= budget
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full CIFAR-10 of `--preset finetune`: 45,000 training, 5,000 validation and 10,000
    /// test images.
    const CIFAR: Sizes = Sizes {
        train: 45_000,
        val: 5_000,
        test: 10_000,
    };

    #[test]
    fn a_cpu_without_amx_fits_the_epochs_its_speed_allows() {
        // The preset on a 2-core Xeon without AMX: float32 fine-tuning at 102 images/s, 70 minutes,
        // 4 of them gone to extraction and the warm-up. By hand: evaluation 153 images/s; an epoch
        // 45000/102 + 5000/153 = 441.18 + 32.68 = 473.86 s; the test 65.36 s; the reserve 84 s;
        // (4200 - 240 - 65.36 - 84) / 473.86 = 8.04, so 8 epochs, ending at about
        // 240 + 3790.9 + 65.4 + 84 = 4180 s.
        let p = plan(4200.0, 240.0, 102.0, CIFAR, 20);
        assert_eq!(p.epochs, 8);
        assert!((p.epoch_seconds - 473.86).abs() < 0.01, "{p:?}");
        assert!((p.test_seconds - 65.36).abs() < 0.01, "{p:?}");
        assert!((p.expected_seconds - 4180.2).abs() < 0.1, "{p:?}");
        assert!(p.fits && !p.capped);
        // Twice as much budget left, twice as many epochs (to the floor).
        let p = plan(8400.0 - 1.0, 240.0, 102.0, CIFAR, 20);
        assert_eq!(p.epochs, 16);
    }

    #[test]
    fn a_fast_device_is_capped_by_epochs() {
        // The AMX machine's 370 images/s: an epoch 121.6 + 9.0 s; 20 epochs need 2613 s of 4200.
        let p = plan(4200.0, 120.0, 370.0, CIFAR, 20);
        assert_eq!(p.epochs, 20);
        assert!(p.fits && p.capped);
        assert!(p.expected_seconds < 4200.0 - 1000.0, "{p:?}");
    }

    #[test]
    fn a_spent_budget_still_trains_one_epoch_and_says_it_does_not_fit() {
        let p = plan(600.0, 590.0, 102.0, CIFAR, 20);
        assert_eq!(p.epochs, 1);
        assert!(!p.fits && !p.capped);
        assert!(p.expected_seconds > 600.0);
        // Exactly one epoch's worth left after the test and the reserve fits one: an epoch of
        // 1000/10 = 100 s, the test 150/15 = 10 s, the reserve 5 s, 1 s spent.
        let s = Sizes {
            train: 1000,
            val: 0,
            test: 150,
        };
        let p = plan(116.0, 1.0, 10.0, s, 20);
        assert_eq!((p.epochs, p.fits), (1, true));
        let p = plan(115.9, 1.0, 10.0, s, 20);
        assert_eq!((p.epochs, p.fits), (1, false));
    }

    #[test]
    fn another_epoch_fits_only_with_the_test_and_the_reserve_after_it() {
        // Budget 1000 s: reserve 20 s.
        assert!(next_epoch_fits(1000.0, 500.0, 400.0, 80.0));
        assert!(!next_epoch_fits(1000.0, 500.0, 400.0, 80.1));
        assert!(!next_epoch_fits(1000.0, 900.0, 50.0, 60.0));
        // A small budget keeps 5 s.
        assert!(next_epoch_fits(100.0, 0.0, 90.0, 5.0));
        assert!(!next_epoch_fits(100.0, 0.1, 90.0, 5.0));
    }
}
