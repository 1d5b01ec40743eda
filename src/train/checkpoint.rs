//! The training state kept after every epoch (`checkpoint.safetensors` in the run folder), from which
//! `--resume` continues: trainable parameters, optimizer state, the best epoch's parameters, and the
//! epoch number and history in the file's metadata.

use super::optim::optimizer_state_spec;
use crate::arch::Arch;
use crate::config::Optimizer;
use crate::error::{Error, Result};
use crate::run::{self, EpochMetrics};
use crate::weights::{load_safetensors, save_safetensors, NamedTensor, FINGERPRINT_KEY};
use std::collections::HashMap;
use std::path::Path;

/// The parameters of the epoch with the lowest validation loss so far.
#[derive(Debug, Clone)]
pub struct Best {
    /// Epoch (from 1).
    pub epoch: usize,
    /// Its validation loss (mean categorical cross-entropy).
    pub val_loss: f64,
    /// Trainable parameters after that epoch, [`trainable_params`] names.
    pub params: Vec<NamedTensor>,
}

/// Training state at the end of an epoch.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Epochs completed.
    pub epoch: usize,
    /// Trainable parameters, [`trainable_params`] names and order.
    pub params: Vec<NamedTensor>,
    /// Optimizer state, same order: SGD momentum buffers named `momentum.<param>`, or Adam's moments
    /// `adam.exp_avg.<param>` then `adam.exp_avg_sq.<param>` (see [`optimizer_state_spec`]).
    pub momentum: Vec<NamedTensor>,
    /// Metrics of the completed epochs.
    pub history: Vec<EpochMetrics>,
    /// The best epoch so far by validation loss.
    pub best: Option<Best>,
}

/// Names and shapes of the parameters a run trains: the last `unfreeze` conv layers of the base
/// (`base.<conv>.weight|bias`, none for a frozen base), then the head's ([`Arch::head_params`]).
pub fn trainable_params(arch: &Arch, unfreeze: usize) -> Vec<(String, Vec<usize>)> {
    let mut base = arch.base_params();
    let mut out = base.split_off(base.len().saturating_sub(2 * unfreeze));
    out.extend(arch.head_params());
    out
}

/// Writes a checkpoint atomically into the run folder `dir`: parameters, optimizer state and the best
/// epoch's parameters (`best.<param>`) as tensors; epoch, history (JSON), the base-weights
/// `fingerprint`, and the best epoch and its validation loss in the metadata.
///
/// # Errors
/// [`Error::Io`] when the file cannot be written.
pub fn save_checkpoint(dir: &Path, ck: &Checkpoint, fingerprint: &str) -> Result<()> {
    let mut tensors: Vec<NamedTensor> = ck.params.iter().chain(&ck.momentum).cloned().collect();
    let history = serde_json::to_string(&ck.history).map_err(|e| Error::Usage(e.to_string()))?;
    let mut meta = HashMap::from([
        ("epoch".to_string(), ck.epoch.to_string()),
        ("history".to_string(), history),
        (FINGERPRINT_KEY.to_string(), fingerprint.to_string()),
    ]);
    if let Some(b) = &ck.best {
        meta.insert("best_epoch".into(), b.epoch.to_string());
        // JSON keeps the f64 exactly (serde_json float_roundtrip), so a resumed run compares alike.
        meta.insert(
            "best_val_loss".into(),
            serde_json::to_string(&b.val_loss).map_err(|e| Error::Usage(e.to_string()))?,
        );
        tensors.extend(b.params.iter().map(|t| NamedTensor {
            name: format!("best.{}", t.name),
            ..t.clone()
        }));
    }
    save_safetensors(&dir.join(run::CHECKPOINT_FILE), &tensors, meta)?;
    crate::util::pause_point("after-checkpoint");
    Ok(())
}

/// Reads the checkpoint of the run folder `dir` (`None` when there is none yet) for the parameters
/// `trainable` (names and shapes, see [`trainable_params`]) trained with `optimizer`.
///
/// # Errors
/// [`Error::InvalidFile`] naming the file when it does not match or lacks its metadata.
pub fn load_checkpoint(
    dir: &Path,
    trainable: &[(String, Vec<usize>)],
    optimizer: Optimizer,
) -> Result<Option<Checkpoint>> {
    let path = dir.join(run::CHECKPOINT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let n_params = trainable.len();
    let mut spec = trainable.to_vec();
    spec.extend(optimizer_state_spec(optimizer, trainable));
    let n_state = spec.len() - n_params;
    // The best epoch's parameters are present from the first finished epoch on.
    let best_spec = trainable
        .iter()
        .map(|(n, s)| (format!("best.{n}"), s.clone()));
    let with_best: Vec<_> = spec.iter().cloned().chain(best_spec).collect();
    let (mut tensors, meta) = match load_safetensors(&path, &with_best) {
        Ok(x) => x,
        Err(_) => load_safetensors(&path, &spec)?,
    };
    let num = |key: &str| -> Option<String> { meta.get(key).cloned() };
    let epoch = num("epoch")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| Error::invalid(&path, "no epoch in metadata"))?;
    let history: Vec<EpochMetrics> = num("history")
        .and_then(|h| serde_json::from_str(&h).ok())
        .ok_or_else(|| Error::invalid(&path, "no history in metadata"))?;
    let best_params: Vec<NamedTensor> = if tensors.len() > n_params + n_state {
        tensors
            .split_off(n_params + n_state)
            .into_iter()
            .map(|t| NamedTensor {
                name: t.name.trim_start_matches("best.").to_string(),
                ..t
            })
            .collect()
    } else {
        Vec::new()
    };
    let momentum = tensors.split_off(n_params);
    let best = match (
        num("best_epoch").and_then(|e| e.parse().ok()),
        num("best_val_loss").and_then(|v| serde_json::from_str(&v).ok()),
    ) {
        (Some(epoch), Some(val_loss)) if !best_params.is_empty() => Some(Best {
            epoch,
            val_loss,
            params: best_params,
        }),
        _ => None,
    };
    Ok(Some(Checkpoint {
        epoch,
        params: tensors,
        momentum,
        history,
        best,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: &[usize], v: f32) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            shape: shape.to_vec(),
            data: vec![v; shape.iter().product()],
        }
    }

    /// A checkpoint reads back as written: parameters, optimizer state, best epoch, history.
    #[test]
    fn checkpoint_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let arch = Arch::vgg16_transfer(32, 10);
        let spec = trainable_params(&arch, 0);
        assert_eq!(spec, arch.head_params());
        assert_eq!(trainable_params(&arch, 1).len(), spec.len() + 2);
        let params: Vec<NamedTensor> = spec.iter().map(|(n, s)| tensor(n, s, 0.5)).collect();
        let state: Vec<NamedTensor> = optimizer_state_spec(Optimizer::Adam, &spec)
            .iter()
            .map(|(n, s)| tensor(n, s, 0.25))
            .collect();
        let history = vec![EpochMetrics {
            epoch: 1,
            loss: 1.5,
            accuracy: 0.25,
            val_loss: 0.1 + 0.2,
            val_accuracy: 0.5,
            ..EpochMetrics::default()
        }];
        let ck = Checkpoint {
            epoch: 1,
            params: params.clone(),
            momentum: state.clone(),
            history: history.clone(),
            best: Some(Best {
                epoch: 1,
                val_loss: 0.1 + 0.2,
                params: params.clone(),
            }),
        };
        assert!(load_checkpoint(dir.path(), &spec, Optimizer::Adam)
            .unwrap()
            .is_none());
        save_checkpoint(dir.path(), &ck, "fp").unwrap();
        let back = load_checkpoint(dir.path(), &spec, Optimizer::Adam)
            .unwrap()
            .unwrap();
        assert_eq!((back.epoch, back.history), (1, history));
        assert_eq!((back.params, back.momentum), (params, state));
        let best = back.best.unwrap();
        assert_eq!((best.epoch, best.val_loss), (1, 0.1 + 0.2));
        // A checkpoint of another optimizer does not match.
        assert!(load_checkpoint(dir.path(), &spec, Optimizer::Sgd).is_err());
    }
}
