//! `pipe evaluate` and `pipe sweep`: metrics of a trained run, and many head trainings from one set of
//! cached features.

use super::features::{prepare_features, split_features, FeatureOptions};
use super::fit::{evaluate, fit_head, HeadHyper};
use super::model::Head;
use crate::arch::Arch;
use crate::data::{DataSource, Split};
use crate::error::{Error, Result};
use crate::report::ClassReport;
use crate::run::{self, EpochMetrics, RunConfig};
use crate::weights::load_safetensors;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Tensor};

/// Result of [`evaluate_run`].
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// The run evaluated.
    pub run: String,
    /// The data evaluated on.
    pub data: PathBuf,
    /// Mean categorical cross-entropy.
    pub loss: f64,
    /// Accuracy, precision, recall, confusion matrix.
    pub report: ClassReport,
}

/// Evaluates a run's head on the test split of `data` (default: the run's own data and test subset),
/// with features from the cache when present.
///
/// # Errors
/// Missing or unfinished run, data whose classes differ from the run's, libtorch errors.
pub fn evaluate_run(
    run_dir: &Path,
    data: Option<&Path>,
    test_limit: Option<usize>,
    device: Device,
    cache_dir: Option<&Path>,
    progress: bool,
) -> Result<Evaluation> {
    let config: RunConfig = crate::util::read_json(&run_dir.join(run::CONFIG_FILE))?;
    let data = data
        .map(Path::to_path_buf)
        .unwrap_or_else(|| config.data.clone());
    let split = DataSource::detect(&data)?.load(
        Split::Test,
        test_limit.unwrap_or(config.test_limit),
        config.input_size,
    )?;
    if split.classes != config.classes {
        return Err(Error::invalid(
            &data,
            format!(
                "classes {:?} differ from the run's {:?}",
                split.classes, config.classes
            ),
        ));
    }
    let arch = Arch::vgg16_transfer(config.input_size, config.classes.len());
    let x = split_features(
        &split,
        &run::base_weights(run_dir, &config),
        &arch,
        cache_dir,
        device,
        128,
        progress,
    )?
    .f_to_device(device)?;
    let (params, _) = load_safetensors(&run_dir.join(run::HEAD_FILE), &arch.head_params())?;
    let vs = nn::VarStore::new(device);
    let head = Head::new(&vs.root(), &arch);
    head.load(&params)?;
    let y = Tensor::from_slice(&split.labels.iter().map(|&l| l as i64).collect::<Vec<_>>())
        .f_to_device(device)?;
    let (loss, _, logits) = evaluate(&head, &x, &y)?;
    let pred: Vec<i64> =
        Vec::<i64>::try_from(&logits.f_argmax(-1, false)?.f_to_device(Device::Cpu)?)?;
    let pred: Vec<usize> = pred.into_iter().map(|p| p as usize).collect();
    Ok(Evaluation {
        run: config.name,
        data,
        loss,
        report: ClassReport::new(&config.classes, &split.labels, &pred),
    })
}

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

/// Checks every (batch size, learning rate) setting of a sweep, before any work.
///
/// # Errors
/// [`Error::Usage`] for an empty list or an invalid setting.
pub fn validate_sweep(hyper: &HeadHyper, batch_sizes: &[usize], lrs: &[f64]) -> Result<()> {
    if batch_sizes.is_empty() || lrs.is_empty() {
        return Err(Error::Usage(
            "--batch-sizes and --lrs need at least one value each".into(),
        ));
    }
    for &lr in lrs {
        for &bs in batch_sizes {
            super::validate_hyper(&HeadHyper {
                batch_size: bs,
                lr,
                ..hyper.clone()
            })?;
        }
    }
    Ok(())
}

/// Trains the head once per (batch size, learning rate) combination on the same features (extracted
/// once, or taken from the cache), `hyper` giving the other settings.
///
/// # Errors
/// Data, weights or libtorch errors (a diverging setting is reported in its row, not as an error).
pub fn sweep(
    features: &FeatureOptions,
    hyper: &HeadHyper,
    batch_sizes: &[usize],
    lrs: &[f64],
    device: Device,
) -> Result<(Vec<SweepRow>, usize)> {
    validate_sweep(hyper, batch_sizes, lrs)?;
    let f = prepare_features(features, device)?;
    let arch = Arch::vgg16_transfer(features.input_size, f.classes.len());
    let mut rows = Vec::new();
    for &lr in lrs {
        for &bs in batch_sizes {
            let hp = HeadHyper {
                batch_size: bs,
                lr,
                ..hyper.clone()
            };
            let t0 = Instant::now();
            let mut history = Vec::new();
            let res = fit_head(&f, &arch, &hp, device, None, None, |ck| {
                history = ck.history.clone();
                Ok(())
            });
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
            let (best_epoch, best) = history
                .iter()
                .map(|m| (m.epoch, m.val_accuracy))
                .fold((0, f64::MIN), |b, x| if x.1 > b.1 { x } else { b });
            let row = SweepRow {
                batch_size: bs,
                lr,
                final_val_accuracy: history.last().map(|m| m.val_accuracy).unwrap_or(0.0),
                best_val_accuracy: best.max(0.0),
                best_epoch,
                seconds: t0.elapsed().as_secs_f64(),
                history,
                diverged,
            };
            eprintln!(
                "batch {:>4}  lr {:<8}  final val_accuracy {:.4}  best {:.4} (epoch {:>2})  {:.1} s{}",
                row.batch_size,
                row.lr,
                row.final_val_accuracy,
                row.best_val_accuracy,
                row.best_epoch,
                row.seconds,
                row.diverged.as_ref().map(|d| format!("  DIVERGED: {d}")).unwrap_or_default()
            );
            rows.push(row);
        }
    }
    Ok((rows, f.extracted))
}
