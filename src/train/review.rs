//! `pipe review`: suspected label errors among the training images, from out-of-fold predictions.
//!
//! The training split is cut into K folds, stratified by class; for each fold a head is trained with
//! the run's recipe on the cached frozen-base features of the other folds and predicts the fold's
//! images, so every image gets probabilities from a model that never saw it (cross-validated
//! predicted probabilities, as cleanlab computes them). An image whose out-of-fold probability for
//! its own label is low is one the rest of the data disagrees with: a wrong label, a junk file or an
//! unusual photo, worth a look.

use super::device::resolve_device;
use super::features::Features;
use super::head::HeadModel;
use super::images::SplitInfo;
use super::learner::{EvalSplit, Learner, Model};
use super::sweep::head_data;
use crate::config::{ExtractEnv, TrainConfig};
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::plot::PredictionTile;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use tch::{Kind, Tensor};

/// Options of a review.
#[derive(Debug, Clone)]
pub struct ReviewOptions {
    /// Folds K (at least 2): each head trains on (K-1)/K of the training images.
    pub folds: usize,
    /// Images shown in `review.png` (the lowest scores first).
    pub show: usize,
}

impl Default for ReviewOptions {
    /// 5 folds, 16 images shown.
    fn default() -> Self {
        ReviewOptions { folds: 5, show: 16 }
    }
}

/// One training image of a review.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewRow {
    /// The file (the split's root joined with its name) or `<batch file>#<record>`.
    pub path: String,
    /// Its label in the data.
    pub given: String,
    /// The class the out-of-fold model gives the highest probability.
    pub suggested: String,
    /// Out-of-fold probability of the given label, 0..1: the lower, the more suspect.
    pub score: f64,
    /// Out-of-fold probability of the suggested class, 0..1.
    pub suggested_probability: f64,
    /// Fold (from 0) the image was predicted in.
    pub fold: usize,
}

/// The outcome of a review.
pub struct Review {
    /// Every training image, the lowest score first (ties by path).
    pub rows: Vec<ReviewRow>,
    /// Class names.
    pub classes: Vec<String>,
    /// The first [`ReviewOptions::show`] rows as tiles for `review.png` (label = given, predicted =
    /// suggested).
    pub tiles: Vec<PredictionTile>,
    /// Out-of-fold accuracy: the share of training images whose suggested class is their label.
    pub accuracy: f64,
    /// Images that went through the base (0 when every feature came from the cache).
    pub extracted: usize,
}

/// Checks a review before any work: the device, the extraction batch, a frozen base (the heads train
/// on cached features), the recipe and the options.
///
/// # Errors
/// [`Error::Usage`] naming what is wrong.
pub fn validate_review(config: &TrainConfig, env: &ExtractEnv, opts: &ReviewOptions) -> Result<()> {
    resolve_device(env.device)?;
    env.validate()?;
    config.validate()?;
    if config.unfreeze > 0 {
        return Err(Error::Usage(
            "pipe review trains heads on cached frozen-base features; fine-tuning (--unfreeze) is \
             not supported by it"
                .into(),
        ));
    }
    if opts.folds < 2 {
        return Err(Error::Usage(format!(
            "--folds {}: at least 2 (each image is predicted by a head trained without it)",
            opts.folds
        )));
    }
    Ok(())
}

/// The fold (0..`folds`) of each image: per class, the images shuffled with `seed` and dealt to the
/// folds in turn, so every fold holds each class in proportion (counts differ by at most one).
pub fn fold_assignment(labels: &[usize], folds: usize, seed: u64) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut fold = vec![0; labels.len()];
    let mut next = 0;
    for c in 0..classes {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        members.shuffle(&mut rng);
        for i in members {
            fold[i] = next % folds;
            next += 1;
        }
    }
    fold
}

/// The training images `train` of `f` as a training split and `held` as its test split.
fn fold_features(f: &Features, train: &[usize], held: &[usize]) -> Result<Features> {
    let pick = |idx: &[usize]| -> Result<(SplitInfo, Tensor)> {
        let index = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let info = SplitInfo {
            root: f.train.root.clone(),
            names: idx.iter().map(|&i| f.train.names[i].clone()).collect(),
            labels: idx.iter().map(|&i| f.train.labels[i]).collect(),
        };
        Ok((info, f.train_x.f_index_select(0, &index)?))
    };
    let ((train, train_x), (test, test_x)) = (pick(train)?, pick(held)?);
    Ok(Features {
        classes: f.classes.clone(),
        train,
        test,
        train_x,
        test_x,
        val: None,
        val_x: None,
        fingerprint: f.fingerprint.clone(),
        extracted: 0,
        extract_seconds: 0.0,
    })
}

/// Reviews `config`'s training images: K heads trained with its recipe (its epochs, optimizer, class
/// weights and seed; early stopping and restore-best off, since the held-out fold must not choose the
/// epoch) on the features of the other folds, each predicting its fold. Progress to `events`.
///
/// # Errors
/// As [`validate_review`]; [`Error::Usage`] when there are fewer training images than folds or a
/// head diverges; data, weights or libtorch errors.
pub fn review(
    config: &TrainConfig,
    env: &ExtractEnv,
    opts: &ReviewOptions,
    events: &dyn EventSink,
) -> Result<Review> {
    validate_review(config, env, opts)?;
    let device = resolve_device(env.device)?;
    let (config, images, f) = head_data(config, env, device, events)?;
    let n = f.train.labels.len();
    if n < opts.folds {
        return Err(Error::Usage(format!(
            "{n} training images, fewer than --folds {}",
            opts.folds
        )));
    }
    let classes = f.classes.len();
    let fold_of = fold_assignment(&f.train.labels, opts.folds, config.seed);
    let fold_config = TrainConfig {
        patience: None,
        restore_best: false,
        ..config.clone()
    };
    let arch = config.arch(classes);
    let mut probabilities = vec![Vec::new(); n];
    for k in 0..opts.folds {
        let (held, rest): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| fold_of[i] == k);
        events.info(format!(
            "fold {}/{}: a head trained on {} images predicts the other {}",
            k + 1,
            opts.folds,
            rest.len(),
            held.len()
        ));
        let sub = fold_features(&f, &rest, &held)?;
        let mut model = HeadModel::new(&sub, &arch, config.seed.wrapping_add(k as u64), device)?;
        match Learner::new(&fold_config).fit(&mut model, None, |_| Ok(())) {
            Ok(_) => {}
            Err(Error::Diverged { epoch, loss, .. }) => {
                return Err(Error::Usage(format!(
                    "the head of fold {} diverged (loss {loss} at epoch {epoch}): lower --lr",
                    k + 1
                )))
            }
            Err(e) => return Err(e),
        }
        let logits = model.evaluate(EvalSplit::Test)?.logits;
        let p = logits
            .f_softmax(-1, Kind::Float)?
            .f_to_device(tch::Device::Cpu)?
            .f_flatten(0, -1)?;
        let p = Vec::<f32>::try_from(&p)?;
        for (j, &i) in held.iter().enumerate() {
            probabilities[i] = p[j * classes..(j + 1) * classes].to_vec();
        }
    }
    let argmax = |p: &[f32]| {
        (0..p.len())
            .max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a)))
            .unwrap_or(0)
    };
    let mut order: Vec<usize> = (0..n).collect();
    let path = |i: usize| f.train.root.join(&f.train.names[i]).display().to_string();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (
            probabilities[a][f.train.labels[a]],
            probabilities[b][f.train.labels[b]],
        );
        pa.total_cmp(&pb).then_with(|| path(a).cmp(&path(b)))
    });
    let right = (0..n)
        .filter(|&i| argmax(&probabilities[i]) == f.train.labels[i])
        .count();
    let rows: Vec<ReviewRow> = order
        .iter()
        .map(|&i| {
            let p = &probabilities[i];
            let suggested = argmax(p);
            ReviewRow {
                path: path(i),
                given: f.classes[f.train.labels[i]].clone(),
                suggested: f.classes[suggested].clone(),
                score: f64::from(p[f.train.labels[i]]),
                suggested_probability: f64::from(p[suggested]),
                fold: fold_of[i],
            }
        })
        .collect();
    let (train, side) = (&images.train, images.train.size);
    let bytes = side * side * 3;
    // The features' training split is the loaded one, image for image (prepare_features keeps the
    // order), so row i of the features is image i of the pixels.
    let tiles = order
        .iter()
        .take(opts.show)
        .filter_map(|&i| {
            let pixels = train.pixels.get(i * bytes..(i + 1) * bytes)?.to_vec();
            Some(PredictionTile {
                pixels,
                size: side,
                label: f.train.labels[i],
                predicted: argmax(&probabilities[i]),
                probability: probabilities[i][argmax(&probabilities[i])],
            })
        })
        .collect();
    Ok(Review {
        rows,
        classes: f.classes.clone(),
        tiles,
        accuracy: right as f64 / n as f64,
        extracted: f.extracted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Folds are stratified and balanced: 10 images of class 0 and 5 of class 1 in 5 folds give each
    /// fold 2 of class 0 and 1 of class 1; the same seed deals the same folds.
    #[test]
    fn folds_are_stratified_and_deterministic() {
        let labels: Vec<usize> = (0..15).map(|i| usize::from(i >= 10)).collect();
        let fold = fold_assignment(&labels, 5, 7);
        for k in 0..5 {
            let count = |c: usize| (0..15).filter(|&i| fold[i] == k && labels[i] == c).count();
            assert_eq!((count(0), count(1)), (2, 1), "fold {k}: {fold:?}");
        }
        assert_eq!(fold, fold_assignment(&labels, 5, 7));
        assert_ne!(fold, fold_assignment(&labels, 5, 8));
    }
}
