//! `pipe lr-find`: the learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural
//! Networks", 2017; fastai's `lr_find`). The run's recipe trains for a few hundred mini-batches
//! while the learning rate grows exponentially; the training loss, smoothed, falls and then rises
//! when the rate becomes too large. A frozen-base recipe trains its head on the cached frozen-base
//! features; a fine-tuning one (`--unfreeze N`) warms its head up as `pipe train` does, then trains
//! the last N convs and the head on the decoded, augmented images, in the recipe's precision. The
//! run it would precede is untouched: the test trains its own networks, in its own process, and
//! writes nothing a later `pipe train` reads except the feature cache, which holds the same features
//! either way.

use super::device::resolve_device;
use super::finetune::{time_precisions, FineTuneModel, PixelSplits};
use super::head::HeadModel;
use super::learner::{class_weight_tensor, Model};
use super::lifecycle::{head_warm_up, photo_set, started};
use super::optim::{optimise_step, OptState};
use super::sweep::head_data;
use crate::config::{ExtractEnv, Precision, Schedule, TrainConfig};
use crate::error::{Error, Result};
use crate::events::EventSink;
use serde::Serialize;

/// The sweep of a range test.
#[derive(Debug, Clone, Copy)]
pub struct LrFindOptions {
    /// First learning rate.
    pub start_lr: f64,
    /// Last learning rate (reached at the last step if the loss has not diverged by then).
    pub end_lr: f64,
    /// Mini-batches (steps) of the sweep, across as many epochs of the training split as they need.
    pub steps: usize,
    /// Stop once the smoothed loss exceeds this multiple of its lowest value (fastai: 4).
    pub diverge_factor: f64,
    /// How the suggestion is picked from the smoothed losses.
    pub rule: SuggestRule,
}

impl Default for LrFindOptions {
    /// fastai's `lr_find` defaults: 1e-7 to 10 in 100 steps, stop at 4x the best loss.
    fn default() -> Self {
        LrFindOptions {
            start_lr: 1e-7,
            end_lr: 10.0,
            steps: 100,
            diverge_factor: 4.0,
            rule: SuggestRule::Valley,
        }
    }
}

/// One step of the test.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LrPoint {
    /// The step's learning rate.
    pub lr: f64,
    /// The mini-batch's training loss (cross-entropy, class-weighted as the recipe says).
    pub loss: f64,
    /// The exponential moving average of the losses (β from [`smoothing_beta`]), bias-corrected as
    /// fastai's.
    pub smoothed: f64,
}

/// The outcome of a range test.
#[derive(Debug, Clone, Serialize)]
pub struct LrFind {
    /// Every step run, in order.
    pub points: Vec<LrPoint>,
    /// The suggested rate by [`LrFindOptions::rule`], `None` when too few steps ran.
    pub suggestion: Option<f64>,
    /// The rate each rule suggests (`valley`, `steepest`), for the record.
    pub suggestions: Vec<(SuggestRule, Option<f64>)>,
    /// Why the test stopped: `end` (the last step), `diverged` (the smoothed loss passed
    /// [`LrFindOptions::diverge_factor`] times its minimum, or a loss was not finite).
    pub stopped: &'static str,
    /// Images whose features were extracted (not in the cache).
    pub extracted: usize,
}

/// The learning rate of step `i` of `steps`: `start · (end / start)^(i / (steps - 1))`.
pub fn lr_at(opts: &LrFindOptions, i: usize) -> f64 {
    let t = i as f64 / (opts.steps.max(2) - 1) as f64;
    opts.start_lr * (opts.end_lr / opts.start_lr).powf(t)
}

/// The β of the loss's moving average in a sweep of `steps` steps: fastai's 0.98 for 100 steps or
/// more, `1 - 2 / steps` for shorter sweeps. An average with β 0.98 spans about 50 steps
/// (`1 / (1 - β)`), which over a 20-step sweep would trail the loss by most of the sweep and move
/// the steepest descent to higher rates; `1 - 2 / steps` keeps the span at half the sweep.
pub fn smoothing_beta(steps: usize) -> f64 {
    (1.0 - 2.0 / steps.max(4) as f64).min(0.98)
}

/// The suggestion rule: the rate where the smoothed loss falls fastest against log10 of the rate
/// (the most negative central difference), leaving out the first tenth of the steps (the average is
/// still forming) and the last five (the loss is already rising): pytorch-lr-finder's and fastai's
/// "steepest" rule. `None` with fewer than 10 points in that range.
pub fn steepest_descent(points: &[LrPoint]) -> Option<f64> {
    let (skip_start, skip_end) = (points.len() / 10, 5);
    let range = points.get(skip_start..points.len().saturating_sub(skip_end))?;
    if range.len() < 10 {
        return None;
    }
    (1..range.len() - 1)
        .map(|i| {
            let slope = (range[i + 1].smoothed - range[i - 1].smoothed)
                / (range[i + 1].lr.log10() - range[i - 1].lr.log10());
            (slope, range[i].lr)
        })
        .filter(|(slope, _)| slope.is_finite())
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, lr)| lr)
}

/// How a range test picks the learning rate it suggests from its smoothed losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SuggestRule {
    /// fastai's default since 2.5 ([`valley`]): halfway along the longest fall of the smoothed loss.
    #[default]
    Valley,
    /// The rate where the smoothed loss falls fastest ([`steepest_descent`]).
    Steepest,
}

impl SuggestRule {
    /// The rule's name, as `--suggest` takes it.
    pub fn name(self) -> &'static str {
        match self {
            SuggestRule::Valley => "valley",
            SuggestRule::Steepest => "steepest",
        }
    }

    /// The rule in words, as `pipe lr-find` prints it and `lr_find.json` records it.
    pub fn describe(self) -> &'static str {
        match self {
            SuggestRule::Valley => "valley: halfway along the longest fall of the smoothed loss",
            SuggestRule::Steepest => "steepest descent of the smoothed loss against log10(lr)",
        }
    }

    /// The rate this rule suggests for `points` (`None` when too few steps ran).
    pub fn suggest(self, points: &[LrPoint]) -> Option<f64> {
        match self {
            SuggestRule::Valley => valley(points),
            SuggestRule::Steepest => steepest_descent(points),
        }
    }
}

/// fastai's "valley" rule (its default suggestion since fastai 2.5): the longest valley of the
/// smoothed loss is the longest strictly decreasing subsequence of the smoothed losses; with `end`
/// the step where the longest one ends and `len` its length, the valley is taken to span the steps
/// from `start = end - len` to `end`, and the suggestion is the rate about halfway along it, at step
/// `start + ⌊L/3⌋ + ⌊L/6⌋` for `L = end - start` (fastai's index; the rate grows exponentially with
/// the step, so halfway in steps is the geometric middle of the valley's rates). Of several longest
/// subsequences, the one ending first counts. Less eager than [`steepest_descent`], whose steepest
/// point often sits near the end of the fall, just before the loss turns. `None` with fewer than 10
/// points.
pub fn valley(points: &[LrPoint]) -> Option<f64> {
    if points.len() < 10 {
        return None;
    }
    let loss: Vec<f64> = points.iter().map(|p| p.smoothed).collect();
    // longest[i]: the length of the longest strictly decreasing subsequence ending at step i.
    let mut longest = vec![1usize; loss.len()];
    let mut end = 0;
    for i in 1..loss.len() {
        for j in 0..i {
            if loss[i] < loss[j] {
                longest[i] = longest[i].max(longest[j] + 1);
            }
        }
        if longest[i] > longest[end] {
            end = i;
        }
    }
    let start = end.saturating_sub(longest[end]);
    let span = end - start;
    Some(points[start + span / 3 + span / 6].lr)
}

/// How far the smoothed loss fell over a sweep: `(first - lowest) / first` of the points' smoothed
/// losses (0..1; 0 for no points or a first loss that is not positive). A curve that hardly falls
/// (a few percent) has no steep descent worth following, whatever [`steepest_descent`] picks.
pub fn fall(points: &[LrPoint]) -> f64 {
    let Some(first) = points.first().map(|p| p.smoothed).filter(|&l| l > 0.0) else {
        return 0.0;
    };
    let lowest = points.iter().map(|p| p.smoothed).fold(first, f64::min);
    (first - lowest) / first
}

/// Checks a range test before any work: the device, the extraction batch, the recipe and the sweep.
///
/// # Errors
/// [`Error::Usage`] naming what is wrong.
pub fn validate_lr_find(
    config: &TrainConfig,
    env: &ExtractEnv,
    opts: &LrFindOptions,
) -> Result<()> {
    resolve_device(env.device)?;
    env.validate()?;
    config.validate()?;
    let ok = opts.start_lr > 0.0 && opts.start_lr.is_finite() && opts.end_lr.is_finite();
    if !ok || opts.end_lr <= opts.start_lr {
        return Err(Error::Usage(format!(
            "--start-lr {} and --end-lr {}: both positive, the start below the end",
            opts.start_lr, opts.end_lr
        )));
    }
    if opts.steps < 20 {
        return Err(Error::Usage(format!(
            "--steps {}: at least 20 (the suggestion leaves out the first tenth and the last five)",
            opts.steps
        )));
    }
    Ok(())
}

/// Runs the range test for `config`'s recipe (its data, optimizer, momentum, weight decay, batch
/// size, class weights and seed; its learning rate and schedule replaced by the sweep). A frozen-base
/// recipe trains its head on the frozen-base features, extracted once or taken from `env`'s cache; a
/// fine-tuning recipe (`config.unfreeze > 0`) first warms its head up on them for
/// `config.head_epochs` epochs, as `pipe train` does, then sweeps the rate of the fine-tuning itself
/// (the last `unfreeze` convs and the head, on decoded images with the recipe's augmentation and
/// `--precision`).
///
/// # Errors
/// As [`validate_lr_find`]; data, weights or libtorch errors.
pub fn lr_find(
    config: &TrainConfig,
    env: &ExtractEnv,
    opts: &LrFindOptions,
    events: &dyn EventSink,
) -> Result<LrFind> {
    validate_lr_find(config, env, opts)?;
    let device = resolve_device(env.device)?;
    let (config, images, f) = head_data(config, env, device, events)?;
    let arch = config.arch(f.classes.len());
    let (points, stopped) = if config.unfreeze == 0 {
        let mut model = HeadModel::new(&f, &arch, config.seed, device)?;
        range_test(&mut model, &config, opts, device)?
    } else {
        // As a new `pipe train` run would: the precision and augmentation style resolved for this
        // device and CPU, the base from the recipe's weights, the head warmed up.
        let (config, why) = started(&config, "lr-find", device);
        let precision = config.precision.unwrap_or_default();
        events.info(format!(
            "fine-tuning the last {} conv layers and the head in {} ({why})",
            config.unfreeze,
            precision.label()
        ));
        let (weights, _) = crate::weights::load_base(&config.weights, &arch, env.allow_unverified)?;
        let (head, _) = head_warm_up(&config, &f, device, events)?;
        let photos = photo_set(&config, &images, events)?;
        let splits = PixelSplits {
            train: (&images.train).into(),
            val: (&images.test).into(),
            test: (&images.test).into(),
            photos: photos.as_ref(),
        };
        let mut model = FineTuneModel::new(splits, &arch, &weights, &config, Some(&head), device)?;
        if precision == Precision::Auto {
            events.info(time_precisions(&mut model, &config)?.line());
        }
        range_test(&mut model, &config, opts, device)?
    };
    Ok(LrFind {
        suggestion: opts.rule.suggest(&points),
        suggestions: [SuggestRule::Valley, SuggestRule::Steepest]
            .map(|r| (r, r.suggest(&points)))
            .to_vec(),
        points,
        stopped,
        extracted: f.extracted,
    })
}

/// The sweep itself on any [`Model`]: `opts.steps` mini-batches of `config`'s batch size, epoch
/// after epoch of the model's training order, each at the rate [`lr_at`] gives, until the end or
/// the divergence. Returns the points and why it stopped (`end` or `diverged`).
///
/// # Errors
/// A training split without images; libtorch errors.
fn range_test<M: Model>(
    model: &mut M,
    config: &TrainConfig,
    opts: &LrFindOptions,
    device: tch::Device,
) -> Result<(Vec<LrPoint>, &'static str)> {
    let params = model.parameters();
    let mut opt = OptState::new(config.optimizer, &params)?;
    let weights = class_weight_tensor(config, model, device)?.map(|(_, t)| t);
    let (beta, mut average, mut best) = (smoothing_beta(opts.steps), 0.0f64, f64::MAX);
    let mut points = Vec::with_capacity(opts.steps);
    let (mut epoch, mut batches) = (0, Vec::new().into_iter());
    for i in 0..opts.steps {
        let batch: Vec<usize> = match batches.next() {
            Some(b) => b,
            None => {
                epoch += 1;
                let order = model.epoch_order(epoch);
                batches = order
                    .chunks(config.batch_size)
                    .map(<[usize]>::to_vec)
                    .collect::<Vec<_>>()
                    .into_iter();
                match batches.next() {
                    Some(b) => b,
                    None => return Err(Error::Usage("no training images".into())),
                }
            }
        };
        let lr = lr_at(opts, i);
        let step = TrainConfig {
            lr,
            schedule: Schedule::Constant,
            ..config.clone()
        };
        let (logits, y) = model.train_batch(&batch)?;
        let loss = match optimise_step(
            &logits,
            &y,
            &params,
            &mut opt,
            &step,
            weights.as_ref(),
            (1, 0, 1),
        ) {
            Ok((loss, _)) => loss,
            Err(Error::Diverged { .. }) => return Ok((points, "diverged")),
            Err(e) => return Err(e),
        };
        average = beta * average + (1.0 - beta) * loss;
        let smoothed = average / (1.0 - beta.powi(i as i32 + 1));
        points.push(LrPoint { lr, loss, smoothed });
        best = best.min(smoothed);
        if i > 0 && smoothed > opts.diverge_factor * best {
            return Ok((points, "diverged"));
        }
    }
    Ok((points, "end"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fall is measured from the first smoothed loss to the lowest, not to the last.
    #[test]
    fn fall_is_the_share_below_the_first_smoothed_loss() {
        let points = |smoothed: &[f64]| -> Vec<LrPoint> {
            smoothed
                .iter()
                .map(|&s| LrPoint {
                    lr: 1e-3,
                    loss: s,
                    smoothed: s,
                })
                .collect()
        };
        assert!((fall(&points(&[2.0, 1.5, 0.5, 8.0])) - 0.75).abs() < 1e-12);
        assert!((fall(&points(&[0.70, 0.69, 0.68, 0.72])) - 0.02 / 0.70).abs() < 1e-12);
        assert_eq!(fall(&points(&[1.0, 1.2, 3.0])), 0.0);
        assert_eq!(fall(&[]), 0.0);
    }

    /// The rates grow exponentially from start to end: 1e-7, 1e-6, ..., 10 in 9 steps.
    #[test]
    fn rates_grow_exponentially_from_start_to_end() {
        let opts = LrFindOptions {
            steps: 9,
            ..LrFindOptions::default()
        };
        for i in 0..9 {
            let want = 10f64.powi(i as i32 - 7);
            assert!((lr_at(&opts, i) / want - 1.0).abs() < 1e-9, "{i}");
        }
    }

    /// fastai's β 0.98 from 100 steps on; shorter sweeps average over half their steps.
    #[test]
    fn shorter_sweeps_smooth_over_fewer_steps() {
        for (steps, beta) in [(100, 0.98), (400, 0.98), (50, 0.96), (20, 0.9)] {
            assert!((smoothing_beta(steps) - beta).abs() < 1e-12, "{steps}");
        }
    }

    /// On a loss that is flat, then falls fastest around 1e-3 (a tanh in log10 of the rate), then
    /// rises, the rule picks the rate of the steepest fall, and not the minimum.
    #[test]
    fn the_suggestion_is_the_steepest_fall() {
        let opts = LrFindOptions {
            steps: 100,
            ..LrFindOptions::default()
        };
        let points: Vec<LrPoint> = (0..100)
            .map(|i| {
                let lr = lr_at(&opts, i);
                let x = lr.log10();
                let smoothed = 2.0 - (x + 3.0).tanh() + if x > 0.0 { 3.0 * x * x } else { 0.0 };
                LrPoint {
                    lr,
                    loss: smoothed,
                    smoothed,
                }
            })
            .collect();
        let lr = steepest_descent(&points).unwrap();
        assert!((lr.log10() + 3.0).abs() < 0.1, "{lr}");
        assert!(steepest_descent(&points[..12]).is_none());
    }

    /// A hand-worked case of the valley rule: the longest strictly decreasing run of the smoothed
    /// losses below is 3.1, 2.9, 2.5, 2.0, 1.5, 1.0, 0.8 (7 steps, ending at step 8), so the valley
    /// is taken as steps 1..8 (8 - 7 = 1), L = 7, and the suggestion is step 1 + 2 + 1 = 4. The
    /// other candidate of 7 (ending at 0.9, step 9) ends later and loses the tie.
    #[test]
    fn the_valley_rule_takes_the_middle_of_the_longest_fall() {
        let losses = [3.0, 3.1, 2.9, 3.0, 2.5, 2.0, 1.5, 1.0, 0.8, 0.9, 2.0, 5.0];
        let points: Vec<LrPoint> = losses
            .iter()
            .enumerate()
            .map(|(i, &l)| LrPoint {
                lr: 10f64.powi(i as i32 - 7),
                loss: l,
                smoothed: l,
            })
            .collect();
        assert_eq!(valley(&points), Some(points[4].lr));
        assert!((points[4].lr / 1e-3 - 1.0).abs() < 1e-12);
        assert_eq!(SuggestRule::Valley.suggest(&points), Some(points[4].lr));
        assert!(valley(&points[..9]).is_none());
    }
}
