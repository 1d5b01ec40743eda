//! The bounds of a batch, as plain policy without threads or clocks of its own (the caller passes
//! `now`), so that every rule is tested with hand-computed values:
//!
//! - **memory**: at most the batch `pipe infer` uses for the model's input size
//!   ([`crate::infer::memory_bounded_batch`]: 256 images up to 64 pixels, 20 at 224, 7 at 384), however
//!   large `--max-batch` is;
//! - **time**: at most the images the backend is expected to run in [`BATCH_TIME_SHARE`] of the request
//!   timeout, by a running estimate of its seconds per image ([`Pace`]: measured by a warm-up at
//!   start, then an exponential moving average over the real batches);
//! - **deadlines**: a request taken off the queue is not run when its deadline has passed or when it
//!   cannot finish before it by the estimate ([`verdict`]), and a batch takes no request that would
//!   make it end after the earliest deadline among its requests ([`fits`]).

use crate::infer::{memory_bounded_batch, INFER_BATCH_BUDGET};
use std::time::{Duration, Instant};

/// `--max-batch` when not given, images.
pub const DEFAULT_MAX_BATCH: usize = 32;

/// Share of the request timeout that one batch may take by the estimate: a batch gathers at most
/// the images the backend is expected to run in this share of `--request-timeout-ms` (half), which
/// leaves the other half for the wait in the queue and for the estimate's error.
pub const BATCH_TIME_SHARE: f64 = 0.5;

/// Weight of the newest backend run in the moving average of seconds per image (the older ones
/// weigh `1 - PACE_WEIGHT` together).
pub const PACE_WEIGHT: f64 = 0.2;

/// The largest batch of a server, images: `--max-batch` lowered to the memory bound of the model's
/// input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxBatch {
    /// Images per backend run the server uses: the smaller of `requested` and `memory_bound`.
    pub effective: usize,
    /// Images per backend run that `pipe infer` uses at this input size (its memory bound).
    pub memory_bound: usize,
    /// `--max-batch`, images ([`DEFAULT_MAX_BATCH`] when not given).
    pub requested: usize,
    /// Whether `--max-batch` was given on the command line.
    pub explicit: bool,
}

impl MaxBatch {
    /// The largest batch for a model of input side `side` (pixels) when `--max-batch` is `given`
    /// (images; `None`: not given, [`DEFAULT_MAX_BATCH`]).
    pub fn new(given: Option<usize>, side: usize) -> Self {
        let requested = given.unwrap_or(DEFAULT_MAX_BATCH).max(1);
        let memory_bound = memory_bounded_batch(side, INFER_BATCH_BUDGET);
        MaxBatch {
            effective: requested.min(memory_bound),
            memory_bound,
            requested,
            explicit: given.is_some(),
        }
    }

    /// True when the user asked for more images per batch than the memory bound allows (worth a
    /// warning; the default lowered silently is not).
    pub fn lowered_from_explicit(&self) -> bool {
        self.explicit && self.requested > self.effective
    }
}

/// The running estimate of the backend's seconds per image in one model instance's batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    secs_per_image: f64,
}

impl Pace {
    /// An estimate of `secs_per_image` seconds per image (a negative or non-finite value counts as 0).
    pub fn new(secs_per_image: f64) -> Self {
        Pace {
            secs_per_image: if secs_per_image.is_finite() {
                secs_per_image.max(0.0)
            } else {
                0.0
            },
        }
    }

    /// The estimate from one backend run of `images` images that took `elapsed`.
    pub fn measured(images: usize, elapsed: Duration) -> Self {
        Pace::new(elapsed.as_secs_f64() / images.max(1) as f64)
    }

    /// The estimate, seconds per image.
    pub fn secs_per_image(&self) -> f64 {
        self.secs_per_image
    }

    /// Takes a backend run of `images` images that took `elapsed` into the estimate: the moving
    /// average `(1 - PACE_WEIGHT) * old + PACE_WEIGHT * elapsed / images`.
    pub fn observe(&mut self, images: usize, elapsed: Duration) {
        if images == 0 {
            return;
        }
        let now = Pace::measured(images, elapsed).secs_per_image;
        self.secs_per_image = (1.0 - PACE_WEIGHT) * self.secs_per_image + PACE_WEIGHT * now;
    }

    /// The expected backend time of `images` images (saturating at [`Duration::MAX`]).
    pub fn estimate(&self, images: usize) -> Duration {
        Duration::try_from_secs_f64(self.secs_per_image * images as f64).unwrap_or(Duration::MAX)
    }

    /// The most images the backend is expected to run within `budget`, at least 1 (one image is
    /// always allowed, so that a slow estimate can still be corrected by real runs).
    pub fn images_within(&self, budget: Duration) -> usize {
        if self.secs_per_image <= 0.0 {
            return usize::MAX;
        }
        let n = (budget.as_secs_f64() / self.secs_per_image).floor();
        if n >= usize::MAX as f64 {
            usize::MAX
        } else {
            (n as usize).max(1)
        }
    }
}

/// The most images one batch gathers now, by memory and by time: `max_batch` (images, already
/// bounded by memory, see [`MaxBatch`]) lowered to what `pace` runs in [`BATCH_TIME_SHARE`] of
/// `request_timeout`; at least 1.
pub fn batch_cap(max_batch: usize, request_timeout: Duration, pace: &Pace) -> usize {
    let budget = request_timeout.mul_f64(BATCH_TIME_SHARE);
    max_batch.min(pace.images_within(budget)).max(1)
}

/// Whether a backend run of `images` images started at `now` is expected to end by `deadline`.
pub fn fits(pace: &Pace, images: usize, deadline: Instant, now: Instant) -> bool {
    now.checked_add(pace.estimate(images))
        .is_some_and(|end| end <= deadline)
}

/// What becomes of a request of `images` images with this `deadline`, taken off the queue at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It can be run.
    Run,
    /// Its deadline has passed: its client has already been told so.
    DeadlinePassed,
    /// By the estimate, its images alone would end after its deadline.
    CannotFinish,
}

impl Verdict {
    /// The `reason` label of `pipe_requests_dropped_total` for a request not run (`run` for [`Verdict::Run`]).
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Run => "run",
            Verdict::DeadlinePassed => "deadline_passed",
            Verdict::CannotFinish => "cannot_finish",
        }
    }
}

/// Whether a request of `images` images with this `deadline`, taken off the queue at `now`, is run.
pub fn verdict(pace: &Pace, images: usize, deadline: Instant, now: Instant) -> Verdict {
    if now >= deadline {
        Verdict::DeadlinePassed
    } else if !fits(pace, images, deadline, now) {
        Verdict::CannotFinish
    } else {
        Verdict::Run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn the_batch_is_bounded_by_the_memory_bound_of_the_input_size() {
        // 256 MiB / (64 * S * S * 4 bytes): 7 at 384 (256 MiB / 36 MiB = 7.1), 20 at 224, 256 at 32.
        let photos = MaxBatch::new(None, 384);
        assert_eq!((photos.effective, photos.memory_bound), (7, 7));
        assert_eq!((photos.requested, photos.explicit), (32, false));
        assert!(
            !photos.lowered_from_explicit(),
            "the default is lowered silently"
        );
        let asked = MaxBatch::new(Some(64), 384);
        assert_eq!(asked.effective, 7);
        assert!(asked.lowered_from_explicit());
        assert_eq!(MaxBatch::new(Some(5), 384).effective, 5);
        assert!(!MaxBatch::new(Some(7), 384).lowered_from_explicit());
        assert_eq!(MaxBatch::new(None, 224).effective, 20);
        assert_eq!(MaxBatch::new(None, 32).effective, 32);
        let big = MaxBatch::new(Some(300), 32);
        assert_eq!((big.effective, big.memory_bound), (256, 256));
        assert!(big.lowered_from_explicit());
        assert_eq!(MaxBatch::new(Some(0), 32).effective, 1);
    }

    #[test]
    fn the_batch_is_bounded_by_the_time_it_takes() {
        // 0.25 s per image, 10 s timeout: half of it holds 5 / 0.25 = 20 images.
        let pace = Pace::new(0.25);
        assert_eq!(batch_cap(32, ms(10_000), &pace), 20);
        assert_eq!(batch_cap(7, ms(10_000), &pace), 7, "memory bound lower");
        // 0.75 s per image (a 384-pixel photo on one ort thread), 30 s: 15 / 0.75 = 20.
        assert_eq!(batch_cap(32, ms(30_000), &Pace::new(0.75)), 20);
        // 2 s per image, 1 s timeout: 0.5 / 2 = 0.25 images, but one image is always allowed.
        assert_eq!(batch_cap(32, ms(1_000), &Pace::new(2.0)), 1);
        // No estimate (0 s per image): memory alone.
        assert_eq!(batch_cap(32, ms(1_000), &Pace::new(0.0)), 32);
        assert_eq!(Pace::new(f64::NAN), Pace::new(0.0));
        assert_eq!(Pace::new(-1.0), Pace::new(0.0));
        assert_eq!(Pace::new(0.25).estimate(6), ms(1_500));
        assert_eq!(Pace::new(f64::MAX).estimate(2), Duration::MAX);
    }

    #[test]
    fn the_estimate_is_a_moving_average_of_real_batches() {
        // Warm-up: 2 images in 0.5 s = 0.25 s per image.
        let mut pace = Pace::measured(2, ms(500));
        assert_eq!(pace.secs_per_image(), 0.25);
        // A batch of 4 images in 2 s (0.5 s each): 0.8 * 0.25 + 0.2 * 0.5 = 0.3.
        pace.observe(4, ms(2_000));
        assert!((pace.secs_per_image() - 0.3).abs() < 1e-12, "{pace:?}");
        // 10 s timeout: 5 / 0.3 = 16.7 -> 16 images.
        assert_eq!(batch_cap(32, ms(10_000), &pace), 16);
        // One image in 0.05 s: 0.8 * 0.3 + 0.2 * 0.05 = 0.25.
        pace.observe(1, ms(50));
        assert!((pace.secs_per_image() - 0.25).abs() < 1e-12, "{pace:?}");
        pace.observe(0, ms(50));
        assert!(
            (pace.secs_per_image() - 0.25).abs() < 1e-12,
            "no images: unchanged"
        );
    }

    #[test]
    fn expired_work_and_work_that_cannot_finish_is_not_run() {
        let now = Instant::now();
        let pace = Pace::new(0.25);
        // Deadline passed, or reached exactly.
        assert_eq!(verdict(&pace, 1, now - ms(1), now), Verdict::DeadlinePassed);
        assert_eq!(verdict(&pace, 1, now, now), Verdict::DeadlinePassed);
        // 1 s left: 4 images take 1 s (ends on the deadline: runs), 5 take 1.25 s (cannot finish).
        assert_eq!(verdict(&pace, 4, now + ms(1_000), now), Verdict::Run);
        assert_eq!(
            verdict(&pace, 5, now + ms(1_000), now),
            Verdict::CannotFinish
        );
        assert_eq!(
            [Verdict::DeadlinePassed, Verdict::CannotFinish].map(Verdict::label),
            ["deadline_passed", "cannot_finish"]
        );
        // A batch of 3 images joined by 2 more: 1.25 s, after a deadline 1 s away, before one 2 s away.
        assert!(!fits(&pace, 5, now + ms(1_000), now));
        assert!(fits(&pace, 5, now + ms(2_000), now));
        assert!(!fits(&Pace::new(f64::MAX), 2, now + ms(2_000), now));
    }
}
