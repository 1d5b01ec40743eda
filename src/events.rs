//! What the library reports while it works, as data: training, feature extraction and inference emit
//! [`Event`]s to an [`EventSink`] that the caller provides, and never print. The command line renders
//! them on stderr (progress bars and lines, `src/cli/render.rs`); a test collects them
//! ([`Collected`]); a caller that wants nothing passes [`Silent`].
//!
//! Each event's `Display` is the line `pipe` prints for it, so that every front end words an event the
//! same way.

use crate::data::SkippedFile;
use crate::run::EpochMetrics;
use crate::util::{duration, plural, rate};
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

/// A counted piece of work whose progress is reported, in images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Feature extraction through the frozen base.
    Extract,
    /// Training epoch `epoch` (from 1) of `epochs`.
    Epoch {
        /// The epoch, from 1.
        epoch: usize,
        /// Epochs of the run.
        epochs: usize,
    },
    /// Classification of image files with the inference backend `backend` (`tract`, `ort`).
    Infer {
        /// The backend's short name.
        backend: &'static str,
    },
    /// Calibration of an int8 export: the float model run on the calibration images.
    Calibrate,
    /// Verification of an exported model on the run's test images.
    Verify,
}

impl fmt::Display for Task {
    /// The label of the task's progress bar: `extracting features`, `epoch 2/3`, `infer (tract)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Task::Extract => f.write_str("extracting features"),
            Task::Epoch { epoch, epochs } => write!(f, "epoch {epoch}/{epochs}"),
            Task::Infer { backend } => write!(f, "infer ({backend})"),
            Task::Calibrate => f.write_str("calibrating"),
            Task::Verify => f.write_str("verifying"),
        }
    }
}

/// Something the user should know that does not stop the work.
#[derive(Debug, Clone, PartialEq)]
pub enum Warning {
    /// An image file that could not be decoded and was left out.
    Skipped(SkippedFile),
    /// Entries of a data folder that were passed over (not images, symlink loops), counted.
    Folder {
        /// The folder.
        dir: PathBuf,
        /// What was passed over, e.g. `2 files without an image extension skipped`.
        message: String,
    },
    /// Any other warning, worded for people.
    Other(String),
}

impl fmt::Display for Warning {
    /// `warning: ...`, one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Skipped(s) => write!(
                f,
                "warning: skipped {} ({}): {}",
                s.path.display(),
                s.reason.as_str(),
                s.message
            ),
            Warning::Folder { dir, message } => {
                write!(f, "warning: {}: {message}", dir.display())
            }
            Warning::Other(message) => write!(f, "warning: {message}"),
        }
    }
}

/// A finished training epoch, for the Keras-style epoch line.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// What the line calls the epoch: `Epoch`, `Warm-up epoch`.
    pub label: String,
    /// The epoch's metrics (`seconds` is its wall time).
    pub metrics: EpochMetrics,
    /// Epochs of the phase.
    pub epochs: usize,
    /// Training images of the epoch.
    pub images: usize,
    /// The learning rate under a per-epoch schedule, when `metrics` carries no per-step rates.
    pub scheduled_lr: Option<f64>,
    /// Seconds the rest of the run is expected to take, when known (fine-tuning).
    pub left_seconds: Option<f64>,
}

impl fmt::Display for EpochReport {
    /// `<label> <epoch>/<epochs>  loss ... accuracy ...  val_loss ...  val_accuracy ...`, the epoch's
    /// learning rate (the first and last step's with per-step rates), the wall time and rate, and
    /// the time left when known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.metrics;
        let lr_note = match (m.lr, m.lr_end, self.scheduled_lr) {
            (Some(a), Some(b), _) if a != b => format!("  lr {} -> {}", rate(a), rate(b)),
            (Some(a), _, _) => format!("  lr {}", rate(a)),
            (None, _, Some(lr)) => format!("  lr {}", rate(lr)),
            (None, _, None) => String::new(),
        };
        // Under half a second left (a last epoch before a small test) reads as nothing, not "0 s";
        // after the last epoch what is left is the test images' evaluation, and the line says so.
        let what = if m.epoch >= self.epochs {
            " for the test images"
        } else {
            ""
        };
        let left = self
            .left_seconds
            .filter(|&s| s >= 0.5)
            .map(|s| format!("; about {} left{what}", duration(s)))
            .unwrap_or_default();
        write!(
            f,
            "{} {}/{}  loss {:.4}  accuracy {:.4}  val_loss {:.4}  val_accuracy {:.4}{lr_note}  ({:.2} s, {} images/s{left})",
            self.label,
            m.epoch,
            self.epochs,
            m.loss,
            m.accuracy,
            m.val_loss,
            m.val_accuracy,
            m.seconds,
            crate::util::images_per_s(self.images as f64 / m.seconds.max(1e-9))
        )
    }
}

/// The expected duration of a fine-tuning run, measured over its first batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Expected seconds for the epochs left, validation and the final test included.
    pub seconds: f64,
    /// Epochs the estimate covers.
    pub epochs: usize,
    /// Training rate measured, images per second.
    pub images_per_second: f64,
    /// Batches the rate was measured over.
    pub batches: usize,
}

impl fmt::Display for Estimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expected: about {} for {} at {} images/s (from the first {} batches; validation and \
             the final test included)",
            duration(self.seconds),
            plural(self.epochs, "epoch"),
            crate::util::images_per_s(self.images_per_second),
            self.batches
        )
    }
}

/// What the library reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A line of information for people: the data layout, the settings, where the features came
    /// from, what a phase does, where the run was written.
    Info(String),
    /// Something that did not stop the work.
    Warning(Warning),
    /// `done` of `total` images of `task` (`total` may grow as more work is found).
    Progress {
        /// The task.
        task: Task,
        /// Images done.
        done: u64,
        /// Images in all.
        total: u64,
    },
    /// `task` has ended (or stopped): its progress display goes away.
    ProgressDone(Task),
    /// A finished epoch.
    Epoch(EpochReport),
    /// The expected duration of a run.
    Estimate(Estimate),
}

impl fmt::Display for Event {
    /// The line `pipe` prints for the event (progress as `<task>: <done>/<total>`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Info(line) => f.write_str(line),
            Event::Warning(w) => w.fmt(f),
            Event::Progress { task, done, total } => write!(f, "{task}: {done}/{total}"),
            Event::ProgressDone(task) => write!(f, "{task}: done"),
            Event::Epoch(e) => e.fmt(f),
            Event::Estimate(e) => e.fmt(f),
        }
    }
}

/// Where events go. Implemented by the command line's renderer, by [`Collected`], by [`Silent`], and
/// by any `Fn(Event)`.
pub trait EventSink: Sync {
    /// Receives one event.
    fn emit(&self, event: Event);

    /// Emits [`Event::Info`].
    fn info(&self, line: String) {
        self.emit(Event::Info(line));
    }

    /// Emits [`Event::Warning`].
    fn warn(&self, warning: Warning) {
        self.emit(Event::Warning(warning));
    }

    /// Emits [`Event::Progress`]: `done` of `total` items of `task`.
    fn progress(&self, task: Task, done: usize, total: usize) {
        self.emit(Event::Progress {
            task,
            done: done as u64,
            total: total as u64,
        });
    }
}

impl<F: Fn(Event) + Sync> EventSink for F {
    fn emit(&self, event: Event) {
        self(event)
    }
}

/// A sink that drops every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl EventSink for Silent {
    fn emit(&self, _event: Event) {}
}

/// A sink that keeps every event, in order (for tests and for callers that report later).
#[derive(Debug, Default)]
pub struct Collected(Mutex<Vec<Event>>);

impl Collected {
    /// The events so far.
    pub fn events(&self) -> Vec<Event> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The lines of the events so far that a terminal would keep (progress left out).
    pub fn lines(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| !matches!(e, Event::Progress { .. } | Event::ProgressDone(_)))
            .map(ToString::to_string)
            .collect()
    }
}

impl EventSink for Collected {
    fn emit(&self, event: Event) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SkipReason;
    use crate::run::Phase;

    fn metrics() -> EpochMetrics {
        EpochMetrics {
            epoch: 2,
            loss: 3.07123,
            accuracy: 0.2666,
            val_loss: 1.86744,
            val_accuracy: 0.422,
            seconds: 0.5,
            ..EpochMetrics::default()
        }
    }

    /// The epoch line of each kind of run, as `pipe train` prints it.
    #[test]
    fn epoch_lines_read_as_keras_prints_them() {
        let report = EpochReport {
            label: "Epoch".into(),
            metrics: metrics(),
            epochs: 3,
            images: 5000,
            scheduled_lr: None,
            left_seconds: None,
        };
        assert_eq!(
            report.to_string(),
            "Epoch 2/3  loss 3.0712  accuracy 0.2666  val_loss 1.8674  val_accuracy 0.4220  \
             (0.50 s, 10000 images/s)"
        );
        let cosine = EpochReport {
            scheduled_lr: Some(5e-5),
            ..report.clone()
        };
        assert!(cosine
            .to_string()
            .contains("val_accuracy 0.4220  lr 5e-5  (0.50 s"));
        let tuned = EpochReport {
            label: "Epoch".into(),
            metrics: EpochMetrics {
                phase: Some(Phase::FineTune),
                lr: Some(4e-5),
                lr_end: Some(1e-3),
                ..metrics()
            },
            left_seconds: Some(600.0),
            ..report
        };
        assert!(
            tuned
                .to_string()
                .ends_with("lr 4e-5 -> 1e-3  (0.50 s, 10000 images/s; about 10 min left)"),
            "{tuned}"
        );
        let last = EpochReport {
            left_seconds: Some(0.3),
            ..tuned
        };
        assert!(
            last.to_string().ends_with("(0.50 s, 10000 images/s)"),
            "{last}"
        );
        let final_epoch = EpochReport {
            epochs: 2,
            left_seconds: Some(12.0),
            ..last
        };
        assert!(
            final_epoch
                .to_string()
                .ends_with("10000 images/s; about 12 s left for the test images)"),
            "{final_epoch}"
        );
    }

    #[test]
    fn warnings_and_estimates_read_as_lines() {
        let skipped = Warning::Skipped(SkippedFile {
            path: "train/ants/x.jpg".into(),
            reason: SkipReason::Truncated,
            message: "truncated JPEG".into(),
        });
        assert_eq!(
            skipped.to_string(),
            "warning: skipped train/ants/x.jpg (truncated): truncated JPEG"
        );
        let folder = Warning::Folder {
            dir: "data/train".into(),
            message: "1 file skipped".into(),
        };
        assert_eq!(folder.to_string(), "warning: data/train: 1 file skipped");
        let e = Estimate {
            seconds: 12_720.0,
            epochs: 20,
            images_per_second: 76.4,
            batches: 6,
        };
        assert_eq!(
            e.to_string(),
            "expected: about 3 h 32 min for 20 epochs at 76 images/s (from the first 6 batches; \
             validation and the final test included)"
        );
        assert_eq!(Task::Infer { backend: "ort" }.to_string(), "infer (ort)");
        assert_eq!(
            Task::Epoch {
                epoch: 1,
                epochs: 3
            }
            .to_string(),
            "epoch 1/3"
        );
    }

    #[test]
    fn collected_keeps_events_in_order_and_lines_without_progress() {
        let c = Collected::default();
        c.info("first".into());
        c.emit(Event::Progress {
            task: Task::Extract,
            done: 1,
            total: 2,
        });
        c.warn(Warning::Other("second".into()));
        c.emit(Event::ProgressDone(Task::Extract));
        assert_eq!(c.events().len(), 4);
        assert_eq!(c.lines(), ["first", "warning: second"]);
        // A closure is a sink too.
        let n = std::sync::atomic::AtomicUsize::new(0);
        let count = |_e: Event| {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        count.info("x".into());
        assert_eq!(n.into_inner(), 1);
    }
}
