//! `pipe evaluate` and `pipe sweep`: metrics of a trained run, and many head trainings from one set of
//! cached features.

use super::features::{prepare_features, split_features};
use super::head::{evaluate_head, HeadModel};
use super::images::{build_list, read_list, report_skipped, run_spec, RunImages};
use super::learner::{label_tensor, Learner};
use super::model::Head;
use super::resolve_device;
use crate::config::{TrainConfig, TrainEnv};
use crate::data::{DataLayout, OnError, SplitList, SplitPart};
use crate::error::{Error, Result};
use crate::report::ClassReport;
use crate::run::{self, EpochMetrics};
use crate::weights::load_safetensors;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device};

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

/// Evaluates a run's head on its test split, on `env`'s device, with features from `env`'s cache
/// when present. The test split is the run's own (its `split.json`: exactly the images the run was
/// tested on, decoded as in training), unless `data` or `test_limit` asks for another (the held-out
/// split of `data`, or of the run's data with another limit).
///
/// # Errors
/// Missing or unfinished run, data whose classes differ from the run's, an unavailable device,
/// libtorch errors.
pub fn evaluate_run(
    run_dir: &Path,
    data: Option<&Path>,
    test_limit: Option<usize>,
    env: &TrainEnv,
) -> Result<Evaluation> {
    let device = resolve_device(env.device)?;
    let config: TrainConfig = crate::util::read_json(&run_dir.join(run::CONFIG_FILE))?;
    let list = match read_list(run_dir)? {
        Some(list) if data.is_none() && test_limit.is_none() => list,
        _ => other_test_split(&config, data, test_limit)?,
    };
    let data = data
        .map(Path::to_path_buf)
        .unwrap_or_else(|| config.data.clone());
    if list.classes != config.classes {
        return Err(Error::invalid(
            &data,
            format!(
                "classes {:?} differ from the run's {:?}",
                list.classes, config.classes
            ),
        ));
    }
    let spec = run_spec(&config);
    let loaded = list.load(SplitPart::Test, &spec, OnError::Skip)?;
    report_skipped(&loaded.skipped);
    let split = loaded.split;
    let arch = config.arch(config.classes.len());
    let x = split_features(
        &split,
        &spec,
        &run::base_weights(run_dir, &config),
        &arch,
        env,
        device,
    )?
    .f_to_device(device)?;
    let (params, _) = load_safetensors(&run_dir.join(run::HEAD_FILE), &arch.head_params())?;
    let vs = nn::VarStore::new(device);
    let head = Head::new(&vs.root(), &arch);
    head.load(&params)?;
    let y = label_tensor(&split.labels, device)?;
    let scores = evaluate_head(&head, &x, &y)?;
    let pred: Vec<i64> = Vec::<i64>::try_from(
        &scores
            .logits
            .f_argmax(-1, false)?
            .f_to_device(Device::Cpu)?,
    )?;
    let pred: Vec<usize> = pred.into_iter().map(|p| p as usize).collect();
    Ok(Evaluation {
        run: config.name,
        data,
        loss: scores.loss,
        report: ClassReport::new(&config.classes, &split.labels, &pred),
    })
}

/// The split list of the test split `evaluate` asks for instead of the run's own: `data` (default:
/// the run's) with `test_limit` (default: the run's), all training images, the run's shares when
/// the layout is the run's (else the layout's defaults).
///
/// # Errors
/// As [`DataLayout::detect`] and [`SplitList::build`].
fn other_test_split(
    config: &TrainConfig,
    data: Option<&Path>,
    test_limit: Option<usize>,
) -> Result<SplitList> {
    let data = data.map_or_else(|| config.data.clone(), Path::to_path_buf);
    let layout = DataLayout::detect(&data)?;
    let same = config.layout.is_none_or(|k| k == layout.kind);
    let c = TrainConfig {
        data,
        train_limit: 0,
        test_limit: test_limit.unwrap_or(config.test_limit),
        val_split: config.val_split.filter(|_| same),
        test_split: config.test_split.filter(|_| same),
        ..config.clone()
    };
    build_list(&layout, &c)
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

/// Checks a sweep before any work: the device, the input size, and `config` with every (batch size,
/// learning rate) setting ([`TrainConfig::validate`]).
///
/// # Errors
/// [`Error::Usage`] for an unavailable device, an empty list or an invalid setting.
pub fn validate_sweep(
    config: &TrainConfig,
    env: &TrainEnv,
    batch_sizes: &[usize],
    lrs: &[f64],
) -> Result<()> {
    resolve_device(env.device)?;
    crate::config::validate_input_size(config.input_size)?;
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

/// `config` with one sweep setting.
fn setting(config: &TrainConfig, batch_size: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        batch_size,
        lr,
        ..config.clone()
    }
}

/// Trains the head once per (batch size, learning rate) combination on the same features (extracted
/// once, or taken from `env`'s cache), `config` giving the data and the other settings.
///
/// # Errors
/// Data, weights or libtorch errors (a diverging setting is reported in its row, not as an error).
pub fn sweep(
    config: &TrainConfig,
    env: &TrainEnv,
    batch_sizes: &[usize],
    lrs: &[f64],
) -> Result<(Vec<SweepRow>, usize)> {
    validate_sweep(config, env, batch_sizes, lrs)?;
    let device = resolve_device(env.device)?;
    let layout = DataLayout::detect(&config.data)?;
    let shares = config.split_options().shares(layout.kind)?;
    let config = &config.clone().with_shares(layout.kind, shares);
    let list = build_list(&layout, config)?;
    let images = RunImages::load(list, run_spec(config), OnError::Skip)?;
    let f = prepare_features(&images, config, env, device)?;
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
            rows.push(sweep_row(bs, lr, t0, history, diverged));
        }
    }
    Ok((rows, f.extracted))
}

/// The row of one sweep setting, also printed on stderr.
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
    let row = SweepRow {
        batch_size,
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
        row.diverged
            .as_ref()
            .map(|d| format!("  DIVERGED: {d}"))
            .unwrap_or_default()
    );
    row
}
