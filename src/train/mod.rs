//! Training with libtorch (tch). A run is the frozen VGG16 base plus the dense head trained on cached
//! base features, or (`--unfreeze N`) the last N conv layers fine-tuned with the head on decoded images
//! after a head warm-up on the cached features. Nothing here prints: what a run does goes to the
//! caller's [`crate::events::EventSink`].
//!
//! - `lifecycle.rs`: [`train`], the life of a run: settings checked (or the run to resume found),
//!   data, features or images, the model, the learner, `config.json`, `split.json` and a checkpoint
//!   after every epoch; `--resume` continues an unfinished run from its last checkpoint and ends
//!   exactly as an uninterrupted run would. `outputs.rs`: what a finished run writes (`skipped.json`,
//!   `head.safetensors`, `best.safetensors`, `history.json`, `predictions.json`, the figures) and
//!   `models/runs/latest`. `device.rs`: the libtorch device.
//! - `learner.rs`: the one epoch loop ([`learner::Learner`]) over a [`learner::Model`]; `head.rs`
//!   ([`head::HeadModel`]) and `finetune.rs` ([`finetune::FineTuneModel`]) are the two models.
//! - `optim.rs`: SGD, Adam and the learning-rate schedules; `checkpoint.rs`: the per-epoch state.
//! - `images.rs`: the run's images: layout, split list (`split.json`), decoding with the run's
//!   [`crate::data::ImageSpec`], skipped files (`skipped.json`); `augment.rs`: augmentation of
//!   fine-tuning (CIFAR-style flips and shifts, photo-style random resized crops).
//! - `features.rs`: feature extraction through the frozen base and the feature cache; `model.rs`:
//!   the tch base and head built from [`crate::arch`].
//! - `eval.rs`: `pipe evaluate`; `sweep.rs`: `pipe sweep`; `lr_find.rs`: `pipe lr-find`; `review.rs`:
//!   `pipe review` (suspected label errors from out-of-fold predictions); `explain.rs`: `pipe explain`
//!   (Grad-CAM heatmaps).

pub mod augment;
pub mod budget;
pub mod checkpoint;
pub mod device;
pub mod eval;
pub mod explain;
pub mod features;
pub mod finetune;
pub mod head;
pub mod images;
pub mod learner;
mod lifecycle;
pub mod lr_find;
pub mod model;
pub mod optim;
mod outputs;
pub mod review;
pub mod sweep;

pub use eval::{evaluate_run, Evaluation};
pub use explain::{overlay, Explainer, Explanation};
pub use features::ShardPart;
pub use images::SKIPPED_FILE;
pub use lifecycle::{extract_feature_shard, train};
pub use lr_find::{
    fall, lr_find, smoothing_beta, validate_lr_find, valley, LrFind, LrFindOptions, LrPoint,
    SuggestRule,
};
pub use outputs::TrainOutcome;
pub use review::{review, validate_review, Review, ReviewOptions, ReviewRow};
pub use sweep::{sweep, validate_sweep, SweepRow};

/// Serialises the unit tests that seed or draw from libtorch's process-wide RNG (`tch::manual_seed`,
/// random initialisation, `Tensor::randn`): cargo runs tests on parallel threads, and one test's draws
/// between another's `manual_seed` and its own draws would change that test's numbers.
#[cfg(test)]
pub(crate) fn global_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
