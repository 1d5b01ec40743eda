//! `pipe evaluate`: the metrics of a trained run on its test split (or another).

use super::augment::flip_horizontally;
use super::device::resolve_device;
use super::features::split_features;
use super::head::evaluate_head;
use super::images::{build_list, read_list, report_skipped, run_spec};
use super::learner::label_tensor;
use super::model::Head;
use crate::config::{ExtractEnv, TrainConfig};
use crate::data::{DataLayout, LoadedSplit, OnError, SplitList, SplitPart};
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::plot::PredictionTile;
use crate::report::ClassReport;
use crate::run::{self, PredictionItem, Predictions};
use crate::weights::load_safetensors;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// A test image among the highest losses of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct TopLoss {
    /// The file, relative to the evaluated data's folder (or `<batch file>#<record>`).
    pub file: String,
    /// True class name.
    pub label: String,
    /// Predicted class name.
    pub predicted: String,
    /// Probability of the predicted class, 0..1.
    pub probability: f32,
    /// Cross-entropy of the image, -ln p(true class).
    pub loss: f64,
}

/// Result of [`evaluate_run`].
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// The run evaluated.
    pub run: String,
    /// The data evaluated on.
    pub data: PathBuf,
    /// Test-time augmentation of the evaluation: `flip` (the mean of the probabilities on each
    /// image and its horizontal mirror), absent without.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tta: Option<&'static str>,
    /// Mean categorical cross-entropy (with `tta`, of the mean probabilities).
    pub loss: f64,
    /// Accuracy, precision, recall, confusion matrix.
    pub report: ClassReport,
    /// The 10 test images with the highest loss, highest first.
    pub top_losses: Vec<TopLoss>,
    /// The same images as tiles for `top_losses.png` ([`crate::plot::top_losses_grid`]).
    #[serde(skip)]
    pub top_loss_tiles: Vec<PredictionTile>,
}

/// Evaluates a run's head on its test split, on `env`'s device, with features from `env`'s cache
/// when present. The test split is the run's own (its `split.json`: exactly the images the run was
/// tested on, decoded as in training), unless `data` or `test_limit` asks for another (the held-out
/// split of `data`, or of the run's data with another limit). Skipped files and the extraction's
/// progress go to `events`. With `tta_flip`, each image's probabilities are the mean of the head's
/// on the image and on its horizontal mirror (the mirrored split's features extracted or cached
/// like the split's), as a model exported with `--tta flip` computes them.
///
/// # Errors
/// Missing or unfinished run, data whose classes differ from the run's, an unavailable device,
/// libtorch errors.
pub fn evaluate_run(
    run_dir: &Path,
    data: Option<&Path>,
    test_limit: Option<usize>,
    tta_flip: bool,
    env: &ExtractEnv,
    events: &dyn EventSink,
) -> Result<Evaluation> {
    let device = resolve_device(env.device)?;
    let config: TrainConfig = crate::util::read_json(&run_dir.join(run::CONFIG_FILE))?;
    let list = match read_list(run_dir)? {
        Some(list) if data.is_none() && test_limit.is_none() => list,
        _ => other_test_split(&config, data, test_limit, events)?,
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
    report_skipped(&loaded.skipped, events);
    let split = loaded.split;
    let arch = config.arch(config.classes.len());
    let base = run::base_weights(run_dir, &config);
    let features = |s: &LoadedSplit| -> Result<tch::Tensor> {
        Ok(split_features(s, &spec, &base, &arch, env, (device, events))?.f_to_device(device)?)
    };
    let (params, _) = load_safetensors(&run_dir.join(run::HEAD_FILE), &arch.head_params())?;
    let vs = nn::VarStore::new(device);
    let head = Head::new(&vs.root(), &arch);
    head.load(&params)?;
    let y = label_tensor(&split.labels, device)?;
    let scores = evaluate_head(&head, &features(&split)?, &y)?;
    let mut probs = scores.logits.f_softmax(-1, tch::Kind::Float)?;
    if tta_flip {
        let mut mirrored = split.clone();
        for img in mirrored
            .pixels
            .chunks_exact_mut(split.size * split.size * 3)
        {
            flip_horizontally(img, split.size);
        }
        let flipped = evaluate_head(&head, &features(&mirrored)?, &y)?;
        probs = (probs + flipped.logits.f_softmax(-1, tch::Kind::Float)?) * 0.5;
    }
    let probs = probs.f_to_device(Device::Cpu)?;
    let pred: Vec<i64> = Vec::<i64>::try_from(&probs.f_argmax(-1, false)?)?;
    let pred: Vec<usize> = pred.into_iter().map(|p| p as usize).collect();
    let probs = Vec::<f32>::try_from(&probs.f_flatten(0, -1)?)?;
    let classes = config.classes.len();
    // Without TTA, libtorch's cross-entropy of the logits; with it, that of the mean probabilities.
    let loss = if tta_flip {
        let n = split.labels.len().max(1) as f64;
        probs
            .chunks_exact(classes)
            .zip(&split.labels)
            .map(|(p, &l)| -f64::from(p[l]).max(f64::MIN_POSITIVE).ln())
            .sum::<f64>()
            / n
    } else {
        scores.loss
    };
    let predictions = Predictions {
        data_root: split.root.clone(),
        classes: config.classes.clone(),
        items: split
            .names
            .iter()
            .zip(&split.labels)
            .zip(probs.chunks_exact(classes))
            .map(|((file, &label), p)| PredictionItem {
                file: file.clone(),
                label,
                probabilities: p.to_vec(),
            })
            .collect(),
    };
    let bytes = split.size * split.size * 3;
    let (mut top_losses, mut top_loss_tiles) = (Vec::new(), Vec::new());
    for (i, loss) in super::outputs::top_losses(&predictions, 10) {
        let item = &predictions.items[i];
        let p = pred[i];
        let probability = item.probabilities.get(p).copied().unwrap_or(0.0);
        top_losses.push(TopLoss {
            file: item.file.clone(),
            label: config.classes[item.label].clone(),
            predicted: config.classes[p].clone(),
            probability,
            loss,
        });
        if let Some(pixels) = split.pixels.get(i * bytes..(i + 1) * bytes) {
            top_loss_tiles.push(PredictionTile {
                pixels: pixels.to_vec(),
                size: split.size,
                label: item.label,
                predicted: p,
                probability,
            });
        }
    }
    Ok(Evaluation {
        run: config.name,
        data,
        tta: tta_flip.then_some("flip"),
        loss,
        report: ClassReport::new(&config.classes, &split.labels, &pred),
        top_losses,
        top_loss_tiles,
    })
}

/// The split list of the test split `evaluate` asks for instead of the run's own: `data` (default:
/// the run's) with `test_limit` (default: the run's), all training images, the run's shares when
/// the layout is the run's (else the layout's defaults); scan warnings go to `events`.
///
/// # Errors
/// As [`DataLayout::detect`] and [`SplitList::build`].
fn other_test_split(
    config: &TrainConfig,
    data: Option<&Path>,
    test_limit: Option<usize>,
    events: &dyn EventSink,
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
    build_list(&layout, &c, events)
}
