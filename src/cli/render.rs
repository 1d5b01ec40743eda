//! How the command line shows the library's events on stderr: one progress bar at a time (the one
//! style of every bar, made in [`bar`]), and every other event as its line, printed above the bar.

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use pipe::events::{Event, EventSink, Task};
use std::io::IsTerminal;
use std::sync::Mutex;

/// Classifications of at most this many images show no progress bar (they end in moments).
const INFER_BAR_MIN_IMAGES: u64 = 256;

/// The stderr renderer of [`Event`]s.
#[derive(Default)]
pub struct Stderr {
    /// The task whose bar is shown, and the bar.
    bar: Mutex<Option<(Task, ProgressBar)>>,
}

impl Stderr {
    /// A renderer with no bar shown yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prints `line` on stderr, above the progress bar when one is shown.
    pub fn line(&self, line: &str) {
        let bar = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        match bar.as_ref() {
            Some((_, pb)) => pb.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Clears the progress bar, if any.
    pub fn clear(&self) {
        let mut bar = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, pb)) = bar.take() {
            pb.finish_and_clear();
        }
    }
}

impl EventSink for Stderr {
    fn emit(&self, event: Event) {
        match event {
            Event::Progress { task, done, total } => {
                let mut bar = self.bar.lock().unwrap_or_else(|p| p.into_inner());
                if bar.as_ref().is_none_or(|(t, _)| *t != task) {
                    if let Some((_, old)) = bar.take() {
                        old.finish_and_clear();
                    }
                    // Without a terminal the bar is hidden; the long phases that print nothing
                    // else until they end (feature extraction, an export's calibration and
                    // verification) get a line as they start.
                    if matches!(task, Task::Extract | Task::Calibrate | Task::Verify)
                        && !std::io::stderr().is_terminal()
                    {
                        eprintln!("{task}: {total} images ...");
                    }
                    *bar = Some((task.clone(), self::bar(&task, total)));
                }
                if let Some((_, pb)) = bar.as_ref() {
                    pb.set_length(total);
                    pb.set_position(done);
                }
            }
            Event::ProgressDone(task) => {
                let mut bar = self.bar.lock().unwrap_or_else(|p| p.into_inner());
                if bar.as_ref().is_some_and(|(t, _)| *t == task) {
                    if let Some((_, pb)) = bar.take() {
                        pb.finish_and_clear();
                    }
                }
            }
            other => self.line(&other.to_string()),
        }
    }
}

/// The progress bar of `task` with `total` images: `<task> [====>   ] 120/5000 images  300
/// images/s  eta 16s`; hidden for a classification of few images (and by indicatif when stderr is
/// not a terminal).
fn bar(task: &Task, total: u64) -> ProgressBar {
    if matches!(task, Task::Infer { .. }) && total <= INFER_BAR_MIN_IMAGES {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:32}] {pos}/{len} images{rate}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&rate(s.pos(), s.per_sec()));
            })
            .progress_chars("=> "),
    );
    pb.set_message(task.to_string());
    pb
}

/// The bar's rate after `done` images at `per_second`: `  300 images/s`, whole images from 10 on and
/// one decimal below ([`pipe::util::images_per_s`]; indicatif's own `{per_sec}` shows four decimals);
/// nothing before the first image is done, when no rate is known yet.
fn rate(done: u64, per_second: f64) -> String {
    if done == 0 || !per_second.is_finite() {
        return String::new();
    }
    format!("  {} images/s", pipe::util::images_per_s(per_second))
}

#[cfg(test)]
mod tests {
    /// The rate once images are done (whole images from 10 on, one decimal below); nothing before.
    #[test]
    fn the_rate_shows_once_images_are_done() {
        assert_eq!(super::rate(0, 0.0), "");
        assert_eq!(super::rate(0, 12.5), "");
        assert_eq!(super::rate(120, 299.6251), "  300 images/s");
        assert_eq!(super::rate(3, 0.8149), "  0.8 images/s");
        assert_eq!(super::rate(5, f64::NAN), "");
    }
}
