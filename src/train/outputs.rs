//! What a finished run writes into its folder: `skipped.json`, `head.safetensors` (and
//! `best.safetensors`), `history.json`, `predictions.json` (tch's test-set probabilities) and the
//! figures (`accuracy.png`, `loss.png`, `lr.png` when fine-tuned, `predictions.png`,
//! `confusion.png`); then `models/runs/latest` points at the run.

use super::features::{preview_indices, PREVIEW_IMAGES};
use super::images::SplitInfo;
use super::images::SKIPPED_FILE;
use super::learner::Fitted;
use super::model::from_tch;
use super::optim::lr_at_step;
use crate::config::TrainConfig;
use crate::data::{LoadedSplit, SkippedFile};
use crate::error::Result;
use crate::run::{self, EpochMetrics, Phase, PredictionItem, Predictions};
use crate::util::write_json_atomic;
use crate::weights::{save_safetensors, NamedTensor, FINGERPRINT_KEY};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Kind;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Per-epoch metrics.
    pub history: Vec<EpochMetrics>,
    /// Test-set loss (mean categorical cross-entropy) at the end of training.
    pub test_loss: f64,
    /// Test-set accuracy in 0..1 at the end of training.
    pub test_accuracy: f64,
    /// The test set's classification report (tch's predictions): per-class precision and recall,
    /// balanced accuracy, macro-F1, confusion.
    pub test_report: crate::report::ClassReport,
    /// Image files left out because they could not be decoded (also in the run's `skipped.json`).
    pub skipped: Vec<SkippedFile>,
    /// Wall-clock seconds from the run's start to its last file written.
    pub seconds: f64,
    /// Advice for a run whose test accuracy is at chance level ([`chance_level_advice`]), for the
    /// caller to show after the test figures it refers to; `None` otherwise.
    pub chance_advice: Option<String>,
}

/// A run whose training has ended: its folder, configuration, folder of runs and start time.
pub struct FinishedRun<'a> {
    /// The run folder.
    pub dir: PathBuf,
    /// The run's configuration (as in its `config.json`).
    pub config: &'a TrainConfig,
    /// The folder of runs, whose `latest` link is updated.
    pub runs_dir: &'a Path,
    /// When the run (this invocation) started.
    pub t0: Instant,
}

/// The metadata of a run's safetensors files: the base-weights fingerprint of `config`.
pub fn fingerprint_meta(config: &TrainConfig) -> HashMap<String, String> {
    HashMap::from([(
        FINGERPRINT_KEY.to_string(),
        config.weights_fingerprint.clone(),
    )])
}

/// The warning for a run whose `test_accuracy` (0..1) is at most 1.5 times chance (1 / `classes`),
/// with what its `history` says of the learning rate `lr`: too high when the training loss rose
/// over the run or reached 100 times a uniform guess's (ln `classes`), too low when the
/// validation loss moved by under 1% between the first and the last epoch; `None` above chance.
pub fn chance_level_advice(
    history: &[EpochMetrics],
    test_accuracy: f64,
    classes: usize,
    lr: f64,
) -> Option<String> {
    let chance = 1.0 / classes.max(1) as f64;
    if test_accuracy > 1.5 * chance {
        return None;
    }
    let lr = crate::util::rate(lr);
    let uniform = (classes.max(2) as f64).ln();
    let peak = history.iter().map(|m| m.loss).fold(0.0, f64::max);
    let why = match (history.first(), history.last()) {
        (Some(a), Some(b)) if b.loss > a.loss || peak > 100.0 * uniform => format!(
            "the training loss went from {:.4} to {:.4} (a uniform guess's is {uniform:.4}): \
             --lr {lr} is too high",
            a.loss, b.loss
        ),
        (Some(a), Some(b))
            if history.len() > 1 && (a.val_loss - b.val_loss).abs() < 0.01 * a.val_loss =>
        {
            format!(
                "the validation loss hardly moved ({:.4} to {:.4}): --lr {lr} is too low, or \
                 the run too short",
                a.val_loss, b.val_loss
            )
        }
        _ => format!("--lr {lr} may be too high or too low"),
    };
    Some(format!(
        "test accuracy {test_accuracy:.4} is at chance level ({chance:.4}); the run has not \
         learned: {why}. `pipe lr-find` with the same data and training options suggests a rate"
    ))
}

/// Writes the outputs of a finished run: the `skipped` image files, head (and best epoch) weights,
/// history, tch's predictions on the `test` images, figures (with pixels from `test_images`, the same
/// images in the same order); then points `latest` at the run. A test accuracy at chance level comes
/// back as [`TrainOutcome::chance_advice`].
///
/// # Errors
/// Unwritable run folder; libtorch errors.
pub fn finish(
    run: FinishedRun,
    fitted: Fitted,
    test: &SplitInfo,
    test_images: &LoadedSplit,
    skipped: &[SkippedFile],
) -> Result<TrainOutcome> {
    let c = run.config;
    let dir = &run.dir;
    SkippedFile::write_list(&dir.join(SKIPPED_FILE), skipped)?;
    let chance_advice =
        chance_level_advice(&fitted.history, fitted.test_accuracy, c.classes.len(), c.lr);
    let predictions = predictions(test, &fitted, &c.classes)?;
    let head_names: Vec<String> = c
        .arch(c.classes.len())
        .head_params()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let head: Vec<NamedTensor> = fitted
        .params
        .iter()
        .filter(|t| head_names.contains(&t.name))
        .cloned()
        .collect();
    save_safetensors(&dir.join(run::HEAD_FILE), &head, fingerprint_meta(c))?;
    if let Some(b) = &fitted.best {
        let mut meta = fingerprint_meta(c);
        meta.insert("epoch".to_string(), b.epoch.to_string());
        meta.insert("val_loss".to_string(), b.val_loss.to_string());
        save_safetensors(&dir.join(run::BEST_FILE), &b.params, meta)?;
    }
    write_json_atomic(&dir.join(run::HISTORY_FILE), &fitted.history)?;
    write_json_atomic(&dir.join(run::PREDICTIONS_FILE), &predictions)?;
    write_figures(dir, c, test_images, &fitted.history, &predictions)?;
    run::set_latest(run.runs_dir, &c.name)?;
    let test_report = predictions.class_report();
    Ok(TrainOutcome {
        test_report,
        run_dir: run.dir,
        history: fitted.history,
        test_loss: fitted.test_loss,
        test_accuracy: fitted.test_accuracy,
        skipped: skipped.to_vec(),
        seconds: run.t0.elapsed().as_secs_f64(),
        chance_advice,
    })
}

/// `predictions.json`: tch's softmax probabilities of the `test` images from the final test logits.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
fn predictions(test: &SplitInfo, fitted: &Fitted, classes: &[String]) -> Result<Predictions> {
    let probs = fitted.test_logits.f_softmax(-1, Kind::Float)?;
    let probs = from_tch("probabilities", &probs)?.data;
    let items = test
        .names
        .iter()
        .zip(&test.labels)
        .zip(probs.chunks_exact(classes.len()))
        .map(|((file, &label), p)| PredictionItem {
            file: file.clone(),
            label,
            probabilities: p.to_vec(),
        })
        .collect();
    Ok(Predictions {
        data_root: test.root.clone(),
        classes: classes.to_vec(),
        items,
    })
}

/// Writes the run's figures: `accuracy.png` and `loss.png` (training and validation per epoch),
/// `predictions.png` (a grid of test images with tch's predicted labels, wrong ones in red),
/// `top_losses.png` (the test images with the highest loss, [`top_losses`]) and `confusion.png`
/// (test confusion matrix).
///
/// # Errors
/// [`Error::Io`] naming the figure when it cannot be drawn or written.
fn write_figures(
    run_dir: &Path,
    config: &TrainConfig,
    test_images: &LoadedSplit,
    history: &[EpochMetrics],
    predictions: &Predictions,
) -> Result<()> {
    use crate::plot;
    let val_name = if config.holds_out_validation() {
        "validation"
    } else {
        "validation (test split)"
    };
    for (curve, file) in [
        (plot::Curve::Accuracy, run::ACCURACY_PNG),
        (plot::Curve::Loss, run::LOSS_PNG),
    ] {
        plot::training_curves(history, curve, val_name, &run_dir.join(file))?;
    }
    if config.unfreeze > 0 {
        let (warm_up, fine_tune) = lr_curve(config, history);
        plot::learning_rate(warm_up, fine_tune, &run_dir.join(run::LR_PNG))?;
    }
    let predicted: Vec<usize> = predictions
        .items
        .iter()
        .map(|it| crate::report::argmax(&it.probabilities))
        .collect();
    // Test image `i` titled with its predicted label and that label's probability.
    let size = test_images.size;
    let tile = |i: usize| -> Option<plot::PredictionTile> {
        let item = predictions.items.get(i)?;
        let p = *predicted.get(i)?;
        let bytes = size * size * 3;
        Some(plot::PredictionTile {
            pixels: test_images.pixels.get(i * bytes..(i + 1) * bytes)?.to_vec(),
            size,
            label: item.label,
            predicted: p,
            probability: item.probabilities.get(p).copied().unwrap_or(0.0),
        })
    };
    let shown = preview_indices(
        &test_images.labels,
        test_images.classes.len(),
        PREVIEW_IMAGES,
    );
    let tiles: Vec<plot::PredictionTile> = shown.into_iter().filter_map(tile).collect();
    if !tiles.is_empty() {
        plot::prediction_grid(&tiles, &config.classes, &run_dir.join(run::PREDICTIONS_PNG))?;
    }
    let worst: Vec<plot::PredictionTile> = top_losses(predictions, TOP_LOSSES)
        .into_iter()
        .filter_map(|(i, _)| tile(i))
        .collect();
    if !worst.is_empty() {
        plot::top_losses_grid(&worst, &config.classes, &run_dir.join(run::TOP_LOSSES_PNG))?;
    }
    let truth: Vec<usize> = predictions.items.iter().map(|it| it.label).collect();
    let report = crate::report::ClassReport::new(&config.classes, &truth, &predicted);
    plot::confusion_matrix(&report, &run_dir.join(run::CONFUSION_PNG))
}

/// Test images in `top_losses.png`.
const TOP_LOSSES: usize = 10;

/// The `n` items of `predictions` with the highest loss, the cross-entropy -ln p(label) of their
/// probabilities, as (index, loss), highest first (ties: the earlier item first). An item whose label
/// has no probability is left out.
pub fn top_losses(predictions: &Predictions, n: usize) -> Vec<(usize, f64)> {
    let mut losses: Vec<(usize, f64)> = predictions
        .items
        .iter()
        .enumerate()
        .filter_map(|(i, it)| {
            let p = f64::from(*it.probabilities.get(it.label)?);
            Some((i, -p.max(f64::MIN_POSITIVE).ln()))
        })
        .collect();
    losses.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    losses.truncate(n);
    losses
}

/// Points (x, y) of a plotted line.
type Curve = Vec<(f64, f64)>;

/// The learning rate of a fine-tuning run with `history` as (epoch, rate) points, x from the start of
/// the head warm-up: the warm-up's constant rate, then the rate of every fine-tuning step (the
/// schedule's, as [`optimise_step`] used it) up to the last epoch run.
fn lr_curve(c: &TrainConfig, history: &[EpochMetrics]) -> (Curve, Curve) {
    let warm = history
        .iter()
        .filter(|m| m.phase == Some(Phase::WarmUp))
        .count() as f64;
    let warm_up = if warm > 0.0 {
        vec![(0.0, c.head_lr), (warm, c.head_lr)]
    } else {
        Vec::new()
    };
    let epochs = history
        .iter()
        .filter(|m| m.phase == Some(Phase::FineTune))
        .count();
    let steps = c.train_images.div_ceil(c.batch_size).max(1);
    let fine_tune = (1..=epochs)
        .flat_map(|e| (0..steps).map(move |s| (e, s)))
        .map(|(e, s)| {
            let x = warm + (e - 1) as f64 + s as f64 / steps as f64;
            (x, lr_at_step(c, e, s, steps))
        })
        .collect();
    (warm_up, fine_tune)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advice follows the history: a rising or huge training loss says too high, a validation
    /// loss that hardly moved says too low, above chance nothing (10 classes: chance 0.1, a
    /// uniform guess's loss ln 10 = 2.3026).
    #[test]
    fn chance_level_advice_reads_the_history() {
        let epoch = |loss: f64, val_loss: f64| EpochMetrics {
            loss,
            val_loss,
            ..EpochMetrics::default()
        };
        assert_eq!(
            chance_level_advice(&[epoch(2.0, 1.9)], 0.151, 10, 1e-4),
            None
        );
        let rose = chance_level_advice(&[epoch(2.3, 2.3), epoch(9.5, 40.0)], 0.1, 10, 0.5).unwrap();
        assert_eq!(
            rose,
            "test accuracy 0.1000 is at chance level (0.1000); the run has not learned: the \
             training loss went from 2.3000 to 9.5000 (a uniform guess's is 2.3026): --lr 0.5 is \
             too high. `pipe lr-find` with the same data and training options suggests a rate"
        );
        // Falling, but from far above a uniform guess (240 > 100 x 2.3026 = 230.26).
        let huge = chance_level_advice(&[epoch(240.0, 1e29), epoch(231.0, 1e20)], 0.1, 10, 1000.0);
        assert!(huge.unwrap().contains("--lr 1e3 is too high"));
        let flat = chance_level_advice(&[epoch(2.31, 4.4247), epoch(2.30, 4.4246)], 0.12, 10, 1e-9)
            .unwrap();
        assert!(
            flat.contains(
                "the validation loss hardly moved (4.4247 to 4.4246): --lr 1e-9 is too low"
            ),
            "{flat}"
        );
        // Falling losses that moved: no diagnosis, the doubt.
        let moved = chance_level_advice(&[epoch(2.3, 2.3), epoch(2.0, 2.2)], 0.1, 10, 1e-4);
        assert!(moved
            .unwrap()
            .contains("learned: --lr 1e-4 may be too high or too low. `pipe lr-find`"));
        // One epoch cannot show a trend.
        let one = chance_level_advice(&[epoch(2.3, 2.3)], 0.1, 10, 1e-4);
        assert!(one.unwrap().contains("may be too high or too low."));
    }

    /// Losses are -ln p(label): items with p(label) 0.5, 0.1, 0.9 and 0.1 rank 0.1 (the earlier
    /// first), 0.1, 0.5; an item whose label has no probability is left out.
    #[test]
    fn top_losses_rank_by_cross_entropy() {
        let item = |label: usize, p: &[f32]| PredictionItem {
            file: String::new(),
            label,
            probabilities: p.to_vec(),
        };
        let predictions = Predictions {
            data_root: PathBuf::new(),
            classes: vec!["a".into(), "b".into()],
            items: vec![
                item(0, &[0.5, 0.5]),
                item(1, &[0.9, 0.1]),
                item(0, &[0.9, 0.1]),
                item(0, &[0.1, 0.9]),
                item(5, &[0.5, 0.5]),
            ],
        };
        let top = top_losses(&predictions, 3);
        let index: Vec<usize> = top.iter().map(|t| t.0).collect();
        assert_eq!(index, [1, 3, 0]);
        assert!((top[0].1 - 10f64.ln()).abs() < 1e-6);
        assert!((top[2].1 - 2f64.ln()).abs() < 1e-6);
        assert_eq!(top_losses(&predictions, 10).len(), 4);
    }
}
