//! Training runs on disk: `models/runs/<name>/` with `config.json` (a [`TrainConfig`]),
//! `history.json`, `predictions.json` and `head.safetensors`, and the `latest` link to the newest run.
//! No libtorch needed to read them.

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Head weights file of a run (safetensors, F32, names `head.<linear>.weight|bias`).
pub const HEAD_FILE: &str = "head.safetensors";
/// Run configuration file (a [`TrainConfig`] as JSON).
pub const CONFIG_FILE: &str = "config.json";
/// Per-epoch metrics file.
pub const HISTORY_FILE: &str = "history.json";
/// Test-set probabilities computed by tch at the end of training.
pub const PREDICTIONS_FILE: &str = "predictions.json";
/// Parameters of the epoch with the lowest validation loss (safetensors, as `head.safetensors`, with
/// `epoch` and `val_loss` in the metadata).
pub const BEST_FILE: &str = "best.safetensors";
/// The whole conv base of a fine-tuned run (`--unfreeze`), as `models/vgg16_imagenet.safetensors`;
/// absent for frozen-base runs.
pub const BASE_FILE: &str = "base.safetensors";
/// Training and validation accuracy per epoch.
pub const ACCURACY_PNG: &str = "accuracy.png";
/// Training and validation loss per epoch.
pub const LOSS_PNG: &str = "loss.png";
/// Learning rate over the epochs of a fine-tuning run (its head warm-up, then every step).
pub const LR_PNG: &str = "lr.png";
/// Grid of test images titled with their predicted labels.
pub const PREDICTIONS_PNG: &str = "predictions.png";
/// Test confusion matrix.
pub const CONFUSION_PNG: &str = "confusion.png";
/// The test images with the highest loss, with their true and predicted labels.
pub const TOP_LOSSES_PNG: &str = "top_losses.png";
/// Name of the link to the newest run inside the runs folder.
pub const LATEST: &str = "latest";

/// One line of `history.json`. A fine-tuning run's history holds its head warm-up epochs, then its
/// fine-tuning epochs, each marked with its [`Phase`] and learning rates; a frozen-base run's lines
/// have neither field (and read back with `None`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch number, from 1 (within its phase).
    pub epoch: usize,
    /// Phase of a fine-tuning run the epoch belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Mean training loss over the epoch's batches (dropout active), categorical cross-entropy.
    pub loss: f64,
    /// Training accuracy over the epoch (dropout active), 0..1.
    pub accuracy: f64,
    /// Validation loss after the epoch.
    pub val_loss: f64,
    /// Validation accuracy after the epoch, 0..1.
    pub val_accuracy: f64,
    /// Learning rate of the epoch's first step (with a phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Learning rate of the epoch's last step (with a phase; differs from `lr` under one-cycle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_end: Option<f64>,
    /// Wall time of the epoch, seconds (printed, not stored: history.json is identical for identical runs).
    #[serde(skip)]
    pub seconds: f64,
    /// The part of `seconds` spent training (before validation); not stored either.
    #[serde(skip)]
    pub train_seconds: f64,
}

/// The phases of a fine-tuning run, as `history.json` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The head alone on frozen-base features (`--head-epochs`), before fine-tuning.
    #[serde(rename = "warm-up")]
    WarmUp,
    /// The unfrozen conv layers and the head on images.
    #[serde(rename = "fine-tune")]
    FineTune,
}

/// `predictions.json`: the test images and tch's softmax probabilities for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predictions {
    /// Folder the `file` names are relative to.
    pub data_root: PathBuf,
    /// Class names, index = column of `probabilities`.
    pub classes: Vec<String>,
    /// One entry per test image.
    pub items: Vec<PredictionItem>,
}

impl Predictions {
    /// Share of the items whose most probable class (first on ties) is their label, 0..1; `None`
    /// without items.
    pub fn accuracy(&self) -> Option<f64> {
        let correct = self
            .items
            .iter()
            .filter(|it| crate::report::argmax(&it.probabilities) == it.label)
            .count();
        (!self.items.is_empty()).then(|| correct as f64 / self.items.len() as f64)
    }

    /// The classification report of the items (label against the most probable class).
    pub fn class_report(&self) -> crate::report::ClassReport {
        let truth: Vec<usize> = self.items.iter().map(|it| it.label).collect();
        let predicted: Vec<usize> = self
            .items
            .iter()
            .map(|it| crate::report::argmax(&it.probabilities))
            .collect();
        crate::report::ClassReport::new(&self.classes, &truth, &predicted)
    }
}

/// One test image's prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionItem {
    /// Path relative to `data_root`, `/`-separated (e.g. `cat/0001.jpg`).
    pub file: String,
    /// True label index.
    pub label: usize,
    /// Softmax probabilities `[classes]`, float32.
    pub probabilities: Vec<f32>,
}

/// The conv-base weights a run's model uses: `base.safetensors` in the run folder for a fine-tuned
/// run, else the run's `weights` file.
pub fn base_weights(run_dir: &Path, config: &TrainConfig) -> PathBuf {
    let own = run_dir.join(BASE_FILE);
    if config.unfreeze > 0 && own.is_file() {
        own
    } else {
        config.weights.clone()
    }
}

/// A default run name: the UTC time, `YYYYMMDD-HHMMSS`.
pub fn timestamp_name() -> String {
    let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    time::OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_else(|_| "run".into())
}

/// Checkpoint file of a run, rewritten atomically after every epoch (head parameters, momentum
/// buffers, and the epoch and history in its metadata).
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == LATEST || name.starts_with('.') || name.contains(['/', '\\']) {
        return Err(Error::Usage(format!(
            "invalid run name {name:?}: use a plain folder name other than `latest`"
        )));
    }
    Ok(())
}

/// Creates the folder of a new run, `runs_dir/<name>`.
///
/// # Errors
/// [`Error::Usage`] when the name is not a plain folder name or the run exists (resume it with
/// `--resume`, or pick another `--name`); [`Error::Io`] when it cannot be created.
pub fn new_run_dir(runs_dir: &Path, name: &str) -> Result<PathBuf> {
    check_new_run(runs_dir, name)?;
    let dir = runs_dir.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// Checks, without creating anything, that a new run `name` can be started in `runs_dir`.
///
/// # Errors
/// As [`new_run_dir`].
pub fn check_new_run(runs_dir: &Path, name: &str) -> Result<()> {
    check_name(name)?;
    // A runs folder under a regular file is refused before any work.
    crate::util::check_output_path(&runs_dir.join(name).join(CONFIG_FILE), true)?;
    let dir = runs_dir.join(name);
    if dir.exists() {
        let what = if is_complete(&dir) {
            "pick another --name".to_string()
        } else {
            format!(
                "continue it with `{}` or pick another --name",
                resume_command(runs_dir, name)
            )
        };
        return Err(Error::Usage(format!(
            "run {} already exists; {what}",
            dir.display()
        )));
    }
    Ok(())
}

/// The command that resumes run `name` of `runs_dir` (with `--runs-dir` when it is not the default).
pub fn resume_command(runs_dir: &Path, name: &str) -> String {
    if runs_dir == Path::new("models/runs") {
        format!("pipe train --resume --name {name}")
    } else {
        format!(
            "pipe train --resume --runs-dir {} --name {name}",
            runs_dir.display()
        )
    }
}

/// Whether a run folder holds a finished run (its head weights are written last but one, before
/// `predictions.json`).
pub fn is_complete(dir: &Path) -> bool {
    dir.join(HEAD_FILE).is_file() && dir.join(PREDICTIONS_FILE).is_file()
}

/// The run `--resume` continues: `name` when given, else the most recently modified unfinished run
/// (one with `config.json` but not finished) in `runs_dir`.
///
/// # Errors
/// [`Error::Usage`] when there is no such run or it is already finished.
pub fn find_resumable(runs_dir: &Path, name: Option<&str>) -> Result<PathBuf> {
    if let Some(n) = name {
        check_name(n)?;
        let dir = runs_dir.join(n);
        if !dir.join(CONFIG_FILE).is_file() {
            return Err(Error::Usage(format!(
                "--resume: {} is not a run folder (no {CONFIG_FILE})",
                dir.display()
            )));
        }
        if is_complete(&dir) {
            return Err(Error::Usage(format!(
                "--resume: run {} is already finished",
                dir.display()
            )));
        }
        return Ok(dir);
    }
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(runs_dir)
        .map_err(|e| Error::io(runs_dir, e))?
        .flatten()
    {
        let dir = entry.path();
        if entry.file_name() == LATEST || !dir.join(CONFIG_FILE).is_file() || is_complete(&dir) {
            continue;
        }
        let t = std::fs::metadata(dir.join(CONFIG_FILE))
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
            best = Some((t, dir));
        }
    }
    best.map(|(_, d)| d).ok_or_else(|| {
        Error::Usage(format!(
            "--resume: no unfinished run in {}",
            runs_dir.display()
        ))
    })
}

/// Points `runs_dir/latest` at run `name` (a relative symlink, replaced atomically).
///
/// # Errors
/// [`Error::Io`] when the link cannot be written.
pub fn set_latest(runs_dir: &Path, name: &str) -> Result<()> {
    let link = runs_dir.join(LATEST);
    let tmp = runs_dir.join(format!(".{LATEST}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &link).map_err(|e| Error::io(&link, e))
}

/// Resolves `--run`: a path to a run folder, a run name inside `runs_dir`, or `latest`. The folder
/// must hold `config.json` and `head.safetensors`.
///
/// # Errors
/// [`Error::InvalidFile`] naming the folder when the run is missing or incomplete, with what to do.
pub fn resolve_run(runs_dir: &Path, run: &str) -> Result<PathBuf> {
    let as_path = PathBuf::from(run);
    let dir = if as_path.is_dir() && as_path.join(CONFIG_FILE).exists() {
        as_path
    } else {
        runs_dir.join(run)
    };
    if !dir.exists() {
        let hint = if run == LATEST {
            "no training run yet; run `pipe train` first"
        } else {
            "no such run; see the folders in the runs directory"
        };
        return Err(Error::invalid(&dir, hint));
    }
    for f in [CONFIG_FILE, HEAD_FILE] {
        if !dir.join(f).is_file() {
            return Err(Error::invalid(
                &dir,
                if dir.join(CONFIG_FILE).is_file() {
                    let name = dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    format!(
                        "unfinished run: {f} is missing; finish it with `{}` or train again",
                        resume_command(runs_dir, &name)
                    )
                } else {
                    format!("not a run folder: {f} is missing (runs are made by `pipe train`)")
                },
            ));
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_folders_latest_and_resume_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        assert!(new_run_dir(&runs, "../x").is_err());
        assert!(new_run_dir(&runs, "latest").is_err());
        let a = new_run_dir(&runs, "a").unwrap();
        assert!(
            new_run_dir(&runs, "a")
                .unwrap_err()
                .to_string()
                .contains("--resume"),
            "existing run is not overwritten"
        );
        std::fs::write(a.join(CONFIG_FILE), "{}").unwrap();
        assert_eq!(find_resumable(&runs, None).unwrap(), a);
        let err = resolve_run(&runs, "a").unwrap_err().to_string();
        assert!(
            err.contains("unfinished run") && err.contains("head.safetensors is missing"),
            "{err}"
        );
        std::fs::write(a.join(HEAD_FILE), "x").unwrap();
        std::fs::write(a.join(PREDICTIONS_FILE), "x").unwrap();
        assert!(is_complete(&a));
        assert!(find_resumable(&runs, None).is_err());
        assert!(find_resumable(&runs, Some("a"))
            .unwrap_err()
            .to_string()
            .contains("already finished"));
        set_latest(&runs, "a").unwrap();
        set_latest(&runs, "a").unwrap();
        assert_eq!(
            std::fs::read_link(runs.join(LATEST)).unwrap(),
            PathBuf::from("a")
        );
        assert_eq!(resolve_run(&runs, "latest").unwrap(), runs.join("latest"));
        let empty = dir.path().join("none");
        assert!(resolve_run(&empty, "latest")
            .unwrap_err()
            .to_string()
            .contains("pipe train"));
    }
}
