//! Training runs on disk: `models/runs/<name>/` with `config.json`, `history.json`, `predictions.json`
//! and `head.safetensors`, and the `latest` link to the newest run. No libtorch needed to read them.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Head weights file of a run (safetensors, F32, names `head.<linear>.weight|bias`).
pub const HEAD_FILE: &str = "head.safetensors";
/// Run configuration file.
pub const CONFIG_FILE: &str = "config.json";
/// Per-epoch metrics file.
pub const HISTORY_FILE: &str = "history.json";
/// Test-set probabilities computed by tch at the end of training.
pub const PREDICTIONS_FILE: &str = "predictions.json";
/// Name of the link to the newest run inside the runs folder.
pub const LATEST: &str = "latest";
/// Description of the preprocessing, as stored in `config.json` and the ONNX metadata.
pub const CAFFE_PREPROCESSING: &str =
    "caffe: RGB->BGR, subtract ImageNet BGR means [103.939, 116.779, 123.68], no scaling";

/// `config.json`: everything needed to reproduce and export a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Run name (folder name).
    pub name: String,
    /// Version of pipe that trained it.
    pub pipe_version: String,
    /// Dataset root (with `train/` and `test/`).
    pub data: PathBuf,
    /// Conv-base weights file.
    pub weights: PathBuf,
    /// SHA-256 fingerprint of the base weights.
    pub weights_fingerprint: String,
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// Input height and width, pixels.
    pub input_size: usize,
    /// Preprocessing description.
    pub preprocessing: String,
    /// Number of training images used.
    pub train_images: usize,
    /// Number of test images used.
    pub test_images: usize,
    /// `--train-limit` (0 = all).
    pub train_limit: usize,
    /// `--test-limit` (0 = all).
    pub test_limit: usize,
    /// Epochs.
    pub epochs: usize,
    /// Head-training batch size.
    pub batch_size: usize,
    /// Optimizer name.
    pub optimizer: String,
    /// Learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Seed.
    pub seed: u64,
    /// Device the run trained on (`cpu`, `cuda:0`).
    pub device: String,
}

/// One line of `history.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (dropout active), categorical cross-entropy.
    pub loss: f64,
    /// Training accuracy over the epoch (dropout active), 0..1.
    pub accuracy: f64,
    /// Validation loss after the epoch.
    pub val_loss: f64,
    /// Validation accuracy after the epoch, 0..1.
    pub val_accuracy: f64,
    /// Wall time of the epoch, seconds.
    pub seconds: f64,
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

/// A default run name: the UTC time, `YYYYMMDD-HHMMSS`.
pub fn timestamp_name() -> String {
    let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    time::OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_else(|_| "run".into())
}

/// Creates `runs_dir/<name>` atomically: `fill` writes into a hidden staging folder, which is renamed
/// into place only when it succeeded; then `runs_dir/latest` is pointed at it. Returns the run folder.
///
/// # Errors
/// [`Error::Usage`] when the run already exists or the name is not a plain folder name; [`Error::Io`]
/// when the folder cannot be written; whatever `fill` returns (the staging folder is then removed).
pub fn create_run(
    runs_dir: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    if name.is_empty() || name == LATEST || name.starts_with('.') || name.contains(['/', '\\']) {
        return Err(Error::Usage(format!(
            "invalid run name {name:?}: use a plain folder name other than `latest`"
        )));
    }
    std::fs::create_dir_all(runs_dir).map_err(|e| Error::io(runs_dir, e))?;
    let dir = runs_dir.join(name);
    if dir.exists() {
        return Err(Error::Usage(format!(
            "run {} already exists; pick another --name",
            dir.display()
        )));
    }
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempdir_in(runs_dir)
        .map_err(|e| Error::io(runs_dir, e))?;
    crate::util::set_mode(staging.path(), 0o777).map_err(|e| Error::io(staging.path(), e))?;
    fill(staging.path())?;
    let staged = staging.keep();
    std::fs::rename(&staged, &dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        Error::io(&dir, e)
    })?;
    set_latest(runs_dir, name)?;
    Ok(dir)
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
                format!("incomplete run: {f} is missing; train again"),
            ));
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_run_is_atomic_and_updates_latest() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let err = create_run(&runs, "a", |_| Err(Error::Usage("boom".into()))).unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(
            std::fs::read_dir(&runs).unwrap().count(),
            0,
            "failed run leaves nothing behind"
        );
        for name in ["a", "b"] {
            create_run(&runs, name, |d| {
                std::fs::write(d.join(CONFIG_FILE), "{}").unwrap();
                std::fs::write(d.join(HEAD_FILE), "x").unwrap();
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(
            std::fs::read_link(runs.join(LATEST)).unwrap(),
            PathBuf::from("b")
        );
        assert_eq!(resolve_run(&runs, "latest").unwrap(), runs.join("latest"));
        assert!(resolve_run(&runs, "a").is_ok());
        assert!(
            create_run(&runs, "a", |_| Ok(())).is_err(),
            "existing run is not overwritten"
        );
        assert!(create_run(&runs, "../x", |_| Ok(())).is_err());
        std::fs::remove_file(runs.join("a").join(HEAD_FILE)).unwrap();
        let err = resolve_run(&runs, "a").unwrap_err().to_string();
        assert!(err.contains("head.safetensors is missing"), "{err}");
        let empty = dir.path().join("none");
        assert!(resolve_run(&empty, "latest")
            .unwrap_err()
            .to_string()
            .contains("pipe train"));
    }
}
