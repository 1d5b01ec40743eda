//! The dense head trained on cached frozen-base features: the [`Model`] of a frozen-base run, of the
//! head warm-up before fine-tuning, and of every `pipe sweep` setting. The same mathematics as running
//! the frozen base in every step, far less work.
//!
//! Randomness is seeded once, as in a plain PyTorch script: libtorch's generator (the head's
//! initialisation, then the dropout masks) and one ChaCha8 stream for the per-epoch shuffles. A
//! resumed run replays the completed epochs' draws (the shuffles, and one dropout mask per step, whose
//! draws depend only on its shape).

use super::features::Features;
use super::learner::{label_tensor, EvalSplit, Model, Scores};
use super::model::{Head, IntraOpThreads};
use crate::arch::Arch;
use crate::error::Result;
use crate::weights::NamedTensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{nn, Device, Tensor};

/// Scores of `head` (evaluation mode, no gradient) on features `x` `[n, feature_dim]` with int64
/// labels `y` `[n]` (same device).
///
/// # Errors
/// [`crate::Error::Torch`] on a libtorch failure.
pub fn evaluate_head(head: &Head, x: &Tensor, y: &Tensor) -> Result<Scores> {
    let _guard = tch::no_grad_guard();
    Scores::of(head.forward(x, false)?, y)
}

/// The head of `arch` on a [`Features`] set: training, validation (the held-out split, else the test
/// split) and test features on one device.
pub struct HeadModel {
    head: Head,
    _vs: nn::VarStore,
    train: (Tensor, Tensor),
    val: Option<(Tensor, Tensor)>,
    test: (Tensor, Tensor),
    /// The running order of the training examples, shuffled again at every epoch.
    order: Vec<usize>,
    rng: rand_chacha::ChaCha8Rng,
    /// One libtorch thread while the model lives (see [`HeadModel::new`]).
    _threads: IntraOpThreads,
}

impl HeadModel {
    /// Puts the features of `f` on `device` and initialises the head of `arch` from libtorch's
    /// generator seeded with `seed` (which also seeds the shuffles).
    ///
    /// libtorch runs on one thread while the model lives: the head's matrices are small, so a second
    /// thread gains little, and on a busy machine OpenMP threads wait for each other at every tiny op
    /// (here, with other work on the 2 cores, an epoch took 0.15 s on one thread against 0.75-4 s on
    /// two, `cargo bench --bench head`). The previous count is restored when the model is dropped.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on a libtorch failure.
    pub fn new(f: &Features, arch: &Arch, seed: u64, device: Device) -> Result<Self> {
        let threads = IntraOpThreads::set(1);
        let on_device = |x: &Tensor, labels: &[usize]| -> Result<(Tensor, Tensor)> {
            Ok((x.f_to_device(device)?, label_tensor(labels, device)?))
        };
        let train = on_device(&f.train_x, &f.train.labels)?;
        let test = on_device(&f.test_x, &f.test.labels)?;
        let val = match (&f.val_x, &f.val) {
            (Some(x), Some(info)) => Some(on_device(x, &info.labels)?),
            _ => None,
        };
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let head = Head::new(&vs.root(), arch);
        Ok(HeadModel {
            head,
            _vs: vs,
            train,
            val,
            test,
            order: (0..f.train.labels.len()).collect(),
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            _threads: threads,
        })
    }
}

impl Model for HeadModel {
    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.head.parameters()
    }

    fn load(&self, values: &[NamedTensor]) -> Result<()> {
        self.head.load(values)
    }

    fn train_len(&self) -> usize {
        self.order.len()
    }

    fn train_labels(&self) -> Result<Vec<usize>> {
        let labels = Vec::<i64>::try_from(&self.train.1.f_to_device(tch::Device::Cpu)?)?;
        Ok(labels.into_iter().map(|l| l as usize).collect())
    }

    fn epoch_order(&mut self, _epoch: usize) -> Vec<usize> {
        self.order.shuffle(&mut self.rng);
        self.order.clone()
    }

    fn skip_batch(&mut self, batch: &[usize]) -> Result<()> {
        self.head.replay_dropout(batch.len())
    }

    fn train_batch(&mut self, batch: &[usize]) -> Result<(Tensor, Tensor)> {
        let idx: Vec<i64> = batch.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_slice(&idx).f_to_device(self.train.0.device())?;
        let x = self.train.0.f_index_select(0, &idx)?;
        let y = self.train.1.f_index_select(0, &idx)?;
        Ok((self.head.forward(&x, true)?, y))
    }

    fn evaluate(&self, split: EvalSplit) -> Result<Scores> {
        let (x, y) = match (split, &self.val) {
            (EvalSplit::Validation, Some(val)) => val,
            _ => &self.test,
        };
        evaluate_head(&self.head, x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::super::checkpoint::Checkpoint;
    use super::super::images::SplitInfo;
    use super::super::learner::Learner;
    use super::*;
    use crate::config::{Optimizer, TrainConfig};
    use crate::Error;

    /// Synthetic features of 3 classes whose class shows in the first 3 of 16 feature values.
    fn features(n_train: usize) -> Features {
        let split = |n: usize| SplitInfo {
            root: "synthetic".into(),
            names: (0..n).map(|i| i.to_string()).collect(),
            labels: (0..n).map(|i| i % 3).collect(),
        };
        let x = |n: usize, seed: i64| {
            tch::manual_seed(seed);
            let noise = Tensor::rand([n as i64, 16], (tch::Kind::Float, Device::Cpu));
            let labels: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
            let hot = Tensor::from_slice(&labels)
                .one_hot(16)
                .to_kind(tch::Kind::Float);
            noise + hot * 2.0
        };
        Features {
            classes: vec!["a".into(), "b".into(), "c".into()],
            train: split(n_train),
            test: split(30),
            train_x: x(n_train, 5),
            test_x: x(30, 6),
            val: None,
            val_x: None,
            fingerprint: "synthetic".into(),
            extracted: 0,
            extract_seconds: 0.0,
        }
    }

    /// The seed architecture with 3 classes and a head that reads 16 features instead of 512.
    fn arch() -> Arch {
        let mut a = Arch::vgg16_transfer(32, 3);
        if let Some(crate::arch::HeadLayer::Linear { in_features, .. }) = a.head.first_mut() {
            *in_features = 16;
        }
        a
    }

    /// Trains on [`features`] with `c` from `resume`, failing after epoch `stop_after` as an
    /// interrupted run; returns the result and every epoch's checkpoint.
    fn fit(
        c: &TrainConfig,
        resume: Option<Checkpoint>,
        stop_after: usize,
    ) -> (Result<super::super::learner::Fitted>, Vec<Checkpoint>) {
        // Each call seeds libtorch's generator and draws everything it uses.
        let _rng = crate::train::global_rng_lock();
        let f = features(100);
        let mut model = HeadModel::new(&f, &arch(), c.seed, Device::Cpu).unwrap();
        let mut kept = Vec::new();
        let r = Learner::new(c).fit(&mut model, resume, |ck| {
            kept.push(ck.clone());
            if ck.epoch >= stop_after {
                return Err(Error::Usage("interrupted".into()));
            }
            Ok(())
        });
        (r, kept)
    }

    /// A run interrupted after epoch 2 and resumed from its checkpoint ends exactly like the
    /// uninterrupted run (the earlier epochs' shuffles and dropout masks are replayed), with Adam and
    /// a schedule; and it learns the synthetic task.
    #[test]
    fn resumed_head_training_ends_like_an_uninterrupted_one() {
        let c = TrainConfig {
            epochs: 4,
            batch_size: 16,
            lr: 1e-2,
            optimizer: Optimizer::Adam,
            schedule: crate::config::Schedule::Cosine,
            ..TrainConfig::default()
        };
        let (whole, _) = fit(&c, None, usize::MAX);
        let whole = whole.unwrap();
        let (stopped, kept) = fit(&c, None, 2);
        assert!(stopped.is_err());
        let (resumed, _) = fit(&c, kept.last().cloned(), usize::MAX);
        let resumed = resumed.unwrap();
        // As history.json holds them (wall times are not stored).
        let json = |h: &[crate::run::EpochMetrics]| serde_json::to_string(h).unwrap();
        assert_eq!(json(&resumed.history), json(&whole.history));
        assert_eq!(resumed.history.len(), 4);
        assert_eq!(resumed.params, whole.params);
        assert!(whole.test_accuracy > 0.9, "{}", whole.test_accuracy);
    }

    /// A learning rate far too high makes the loss non-finite: training stops with `Diverged`.
    #[test]
    fn non_finite_loss_is_divergence() {
        let c = TrainConfig {
            lr: 1e30,
            batch_size: 16,
            ..TrainConfig::default()
        };
        let (r, kept) = fit(&c, None, usize::MAX);
        assert!(matches!(r, Err(Error::Diverged { .. })), "{:?}", r.err());
        assert!(kept.len() < 3);
    }
}
