//! `pipe sweep`: the head trained once per (batch size, learning rate) setting from one set of
//! cached features.

use super::device::resolve_device;
use super::features::{prepare_features, Features};
use super::head::HeadModel;
use super::images::{build_list, run_spec, RunImages};
use super::learner::Learner;
use crate::config::{ExtractEnv, TrainConfig};
use crate::data::{DataLayout, OnError};
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::run::EpochMetrics;
use serde::Serialize;
use std::time::Instant;

/// One setting of a sweep and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    /// Mini-batch size.
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// Validation accuracy after the last epoch.
    pub final_val_accuracy: f64,
    /// Best validation accuracy over the epochs.
    pub best_val_accuracy: f64,
    /// Epoch (from 1) of the best validation accuracy.
    pub best_epoch: usize,
    /// Training wall time, seconds.
    pub seconds: f64,
    /// Per-epoch metrics.
    pub history: Vec<EpochMetrics>,
    /// Set when the setting diverged (non-finite loss); the metrics then cover the epochs before.
    pub diverged: Option<String>,
}

/// Checks a sweep before any work: the device, the extraction batch, a frozen base (a sweep trains
/// heads on cached features), and `config` with every (batch size, learning rate) setting
/// ([`TrainConfig::validate`]).
///
/// # Errors
/// [`Error::Usage`] for an unavailable device, an empty list or an invalid setting.
pub fn validate_sweep(
    config: &TrainConfig,
    env: &ExtractEnv,
    batch_sizes: &[usize],
    lrs: &[f64],
) -> Result<()> {
    resolve_device(env.device)?;
    env.validate()?;
    if config.unfreeze > 0 {
        return Err(Error::Usage(
            "pipe sweep trains the head on cached frozen-base features; fine-tuning (--unfreeze) \
             is pipe train's"
                .into(),
        ));
    }
    if batch_sizes.is_empty() || lrs.is_empty() {
        return Err(Error::Usage(
            "--batch-sizes and --lrs need at least one value each".into(),
        ));
    }
    for &lr in lrs {
        for &batch_size in batch_sizes {
            setting(config, batch_size, lr).validate()?;
        }
    }
    Ok(())
}

/// What a head trained on cached features needs of `config`'s data, for a sweep or a range test:
/// `config` with the split shares of its data's layout and its class names, and the frozen-base
/// features of its splits (from `env`'s cache, or extracted on `device`; progress to `events`).
///
/// # Errors
/// Data, weights or libtorch errors.
pub(crate) fn head_features(
    config: &TrainConfig,
    env: &ExtractEnv,
    device: tch::Device,
    events: &dyn EventSink,
) -> Result<(TrainConfig, Features)> {
    let (config, _, f) = head_data(config, env, device, events)?;
    Ok((config, f))
}

/// As [`head_features`], with the decoded images the features come from.
///
/// # Errors
/// Data, weights or libtorch errors.
pub(crate) fn head_data(
    config: &TrainConfig,
    env: &ExtractEnv,
    device: tch::Device,
    events: &dyn EventSink,
) -> Result<(TrainConfig, RunImages, Features)> {
    let layout = DataLayout::detect(&config.data)?;
    let shares = config.split_options().shares(layout.kind)?;
    let config = config.clone().with_shares(layout.kind, shares);
    let list = build_list(&layout, &config, events)?;
    let images = RunImages::load(list, run_spec(&config), OnError::Skip, events)?;
    let f = prepare_features(&images, &config, env, device, events)?;
    events.info(super::lifecycle::extraction_line(&f));
    let config = TrainConfig {
        classes: images.list.classes.clone(),
        ..config
    };
    Ok((config, images, f))
}

/// `config` with one sweep setting.
fn setting(config: &TrainConfig, batch_size: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        batch_size,
        lr,
        ..config.clone()
    }
}

/// Trains the head once per (batch size, learning rate) combination on the same features (extracted
/// once, or taken from `env`'s cache), `config` giving the data and the other settings. Each setting's
/// row is reported to `events` as a line when it ends.
///
/// # Errors
/// Data, weights or libtorch errors (a diverging setting is reported in its row, not as an error).
pub fn sweep(
    config: &TrainConfig,
    env: &ExtractEnv,
    (batch_sizes, lrs): (&[usize], &[f64]),
    events: &dyn EventSink,
) -> Result<(Vec<SweepRow>, usize)> {
    validate_sweep(config, env, batch_sizes, lrs)?;
    let device = resolve_device(env.device)?;
    let (config, f) = head_features(config, env, device, events)?;
    let config = &config;
    let arch = config.arch(f.classes.len());
    let mut rows = Vec::new();
    for &lr in lrs {
        for &bs in batch_sizes {
            let c = setting(config, bs, lr);
            let t0 = Instant::now();
            let mut history = Vec::new();
            let mut model = HeadModel::new(&f, &arch, c.seed, device)?;
            let res = Learner::new(&c).fit(&mut model, None, |ck| {
                history = ck.history.clone();
                Ok(())
            });
            drop(model);
            let diverged = match res {
                Ok(r) => {
                    history = r.history;
                    None
                }
                Err(Error::Diverged { epoch, loss, .. }) => {
                    Some(format!("loss {loss} at epoch {epoch}"))
                }
                Err(e) => return Err(e),
            };
            let row = sweep_row(bs, lr, t0, history, diverged);
            events.info(row.to_string());
            rows.push(row);
        }
    }
    Ok((rows, f.extracted))
}

/// The row of one sweep setting.
fn sweep_row(
    batch_size: usize,
    lr: f64,
    t0: Instant,
    history: Vec<EpochMetrics>,
    diverged: Option<String>,
) -> SweepRow {
    let (best_epoch, best) = history
        .iter()
        .map(|m| (m.epoch, m.val_accuracy))
        .fold((0, f64::MIN), |b, x| if x.1 > b.1 { x } else { b });
    SweepRow {
        batch_size,
        lr,
        final_val_accuracy: history.last().map(|m| m.val_accuracy).unwrap_or(0.0),
        best_val_accuracy: best.max(0.0),
        best_epoch,
        seconds: t0.elapsed().as_secs_f64(),
        history,
        diverged,
    }
}

impl std::fmt::Display for SweepRow {
    /// The line of the setting: batch size, rate, final and best validation accuracy, time, and
    /// `DIVERGED` with the loss when it diverged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch {:>4}  lr {:<8}  final val_accuracy {:.4}  best {:.4} (epoch {:>2})  {:.1} s{}",
            self.batch_size,
            crate::util::rate(self.lr),
            self.final_val_accuracy,
            self.best_val_accuracy,
            self.best_epoch,
            self.seconds,
            self.diverged
                .as_ref()
                .map(|d| format!("  DIVERGED: {d}"))
                .unwrap_or_default()
        )
    }
}
