//! Dynamic batching: requests (each with one or more images) enter a bounded queue; model workers
//! gather up to the batch limit, waiting at most `max_delay` after the oldest image was queued, run
//! the backend once on the whole batch and hand each requester its rows.
//!
//! Each worker is an OS thread that owns one backend instance (the backends are synchronous and
//! CPU-bound, and a `Box<dyn Backend>` stays on the thread that opened it). Workers share the queue:
//! one gathers while the others run, so with two instances a batch forms while the previous one runs.
//! The bound counts images admitted and not yet answered; a request that does not fit is refused at
//! once (the HTTP layer answers 503 with `Retry-After`) instead of waiting without limit.
//!
//! The batch limit and the requests run follow [`super::bounds`]: each worker warms its backend up at
//! start (one image, then a small batch, on zeros), which gives the first estimate of seconds per
//! image; every backend run updates it. A batch gathers at most `max_batch` images (already bounded
//! by the memory bound of the input size) and at most what the estimate runs in half the request
//! timeout; a request taken off the queue whose deadline has passed, that cannot finish before it, or
//! whose client has gone is dropped unrun (answered 503 `inference_timeout`, counted in
//! `pipe_requests_dropped_total`), and a request joins a batch only when the batch is still expected
//! to end before every deadline in it. A batch whose requests have all gone is not run.

use super::bounds::{batch_cap, fits, verdict, Pace, Verdict};
use super::error::{ApiError, ServeError};
use super::metrics::Metrics;
use crate::infer::{open_backend, Backend, BackendOptions, InferDevice};
use axum::http::StatusCode;
use ndarray::{Array2, ArrayView4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Images of the warm-up's timed batch (fewer when `max_batch` is smaller).
pub const WARM_UP_BATCH: usize = 2;

/// How batches are formed.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Largest number of images per backend run, already bounded by the memory bound of the input
    /// size ([`super::bounds::MaxBatch`]); a request with more runs alone, in chunks of this size.
    pub max_batch: usize,
    /// Longest time a batch waits for more images after its oldest image was queued.
    pub max_delay: Duration,
    /// Most images admitted and not yet answered (waiting or running); more are refused.
    pub queue: usize,
    /// Model instances (worker threads, each with its own backend).
    pub instances: usize,
    /// Input side of the model, pixels.
    pub input_size: usize,
    /// Output columns of the model.
    pub classes: usize,
    /// Longest time from a request's arrival to its answer: bounds a batch by time
    /// ([`super::bounds::batch_cap`]) and is named in the answer to a request dropped unrun.
    pub request_timeout: Duration,
}

impl BatchConfig {
    fn image_len(&self) -> usize {
        self.input_size * self.input_size * 3
    }
}

/// What a requester gets back: the model's output rows for its images, `[n, classes]`.
pub type BatchResult = Result<Array2<f32>, ApiError>;

/// Holds `n` images of the queue's capacity until dropped (answered, failed or abandoned).
struct Ticket {
    n: usize,
    admitted: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admitted.fetch_sub(self.n, Ordering::AcqRel);
        let inflight = self.metrics.add_inflight(-(self.n as i64));
        tracing::debug!(images = self.n, inflight, "images released");
    }
}

struct Job {
    /// `n` images, NHWC RGB 0..255 as float32.
    pixels: Vec<f32>,
    n: usize,
    queued_at: Instant,
    /// When the request must be answered: its arrival plus the request timeout.
    deadline: Instant,
    reply: oneshot::Sender<BatchResult>,
    ticket: Ticket,
}

impl Job {
    /// Why this job, taken off the queue at `now`, is not to be run, if it is not: its deadline has
    /// passed, it cannot finish before it by `pace`, or its requester has gone.
    fn unrunnable(&self, pace: &Pace, now: Instant) -> Option<&'static str> {
        match verdict(pace, self.n, self.deadline, now) {
            Verdict::Run if self.reply.is_closed() => Some("abandoned"),
            Verdict::Run => None,
            other => Some(other.label()),
        }
    }

    /// Whether its requester still waits for it at `now`.
    fn live(&self, now: Instant) -> bool {
        now < self.deadline && !self.reply.is_closed()
    }
}

struct Queue {
    rx: mpsc::Receiver<Job>,
    /// A job taken from the channel that did not fit in the last batch: it starts the next one.
    held: Option<Job>,
}

/// The queue and its model workers.
pub struct Batcher {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    admitted: Arc<AtomicUsize>,
    cfg: BatchConfig,
    metrics: Arc<Metrics>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    backend_name: &'static str,
    /// Where the backends run.
    device: InferDevice,
    /// The estimate of seconds per image that the workers share and update.
    pace: Arc<Mutex<Pace>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Workers catch backend panics, so a poisoned lock only means a panic elsewhere; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Batcher {
    /// Starts `cfg.instances` workers, each opening `model` with `opts` and warming it up, and waits
    /// until all have; the slowest warm-up gives the first estimate of seconds per image.
    ///
    /// # Errors
    /// [`ServeError::Pipe`] when a backend cannot open the model or fails on the warm-up;
    /// [`ServeError::Worker`] when a thread cannot be started.
    pub fn start(
        model: &Path,
        opts: &BackendOptions,
        cfg: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServeError> {
        let (tx, rx) = mpsc::channel();
        let queue = Arc::new(Mutex::new(Queue { rx, held: None }));
        let pace = Arc::new(Mutex::new(Pace::new(0.0)));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut workers = Vec::new();
        for i in 0..cfg.instances.max(1) {
            let (queue, metrics, ready) = (queue.clone(), metrics.clone(), ready_tx.clone());
            let pace = pace.clone();
            let (model, opts, cfg): (PathBuf, _, _) = (model.into(), opts.clone(), cfg.clone());
            let handle = std::thread::Builder::new()
                .name(format!("pipe-model-{i}"))
                .spawn(move || {
                    let warm = open_backend(&model, &opts).and_then(|mut backend| {
                        let measured = warm_up(backend.as_mut(), &cfg)?;
                        Ok((backend, measured))
                    });
                    match warm {
                        Ok((mut backend, measured)) => {
                            {
                                // The slowest instance's warm-up: the batches of every instance
                                // must end in time.
                                let mut p = lock(&pace);
                                let slowest = p.secs_per_image().max(measured.secs_per_image());
                                *p = Pace::new(slowest);
                            }
                            let _ = ready.send(Ok(backend.name()));
                            drop(ready);
                            worker_loop(backend.as_mut(), &queue, &cfg, &pace, &metrics);
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                })
                .map_err(|e| ServeError::Worker(format!("cannot start a thread: {e}")))?;
            workers.push(handle);
        }
        drop(ready_tx);
        let mut backend_name = "";
        for _ in 0..workers.len() {
            match ready_rx.recv() {
                Ok(Ok(name)) => backend_name = name,
                // Returning drops `tx`: the workers that did load see the queue closed and end.
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(ServeError::Worker(
                        "a model worker ended before loading the model".into(),
                    ))
                }
            }
        }
        let first = *lock(&pace);
        metrics.set_batch_bounds(
            first.secs_per_image(),
            batch_cap(cfg.max_batch, cfg.request_timeout, &first),
        );
        Ok(Batcher {
            tx: Mutex::new(Some(tx)),
            admitted: Arc::new(AtomicUsize::new(0)),
            cfg,
            metrics,
            workers: Mutex::new(workers),
            backend_name,
            device: opts.device,
            pace,
        })
    }

    /// The backend's name (`tract` or `ort`).
    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    /// Where the backends run (the CPU, or a GPU through CUDA).
    pub fn device(&self) -> InferDevice {
        self.device
    }

    /// The batching configuration.
    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// The current estimate of the backend's seconds per image.
    pub fn pace(&self) -> Pace {
        *lock(&self.pace)
    }

    /// The most images a batch gathers now: `max_batch` bounded by time by the current estimate.
    pub fn batch_limit(&self) -> usize {
        batch_cap(self.cfg.max_batch, self.cfg.request_timeout, &self.pace())
    }

    /// Queues `n` images (`pixels`: `n * S * S * 3` floats, NHWC RGB 0..255) that must be answered
    /// by `deadline`, and returns where their output rows will arrive.
    ///
    /// # Errors
    /// 413 when the request alone exceeds the queue's capacity; 503 with `Retry-After` when the queue
    /// is full now or the server is shutting down.
    pub fn submit(
        &self,
        pixels: Vec<f32>,
        n: usize,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<BatchResult>, ApiError> {
        if pixels.len() != n * self.cfg.image_len() {
            return Err(ApiError::backend(format!(
                "{} values for {n} images of {} values",
                pixels.len(),
                self.cfg.image_len()
            )));
        }
        let cap = self.cfg.queue;
        if n > cap {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_images",
                format!("request holds {n} images, more than the server's queue of {cap}; send at most {cap} per request"),
            ));
        }
        let admitted = self
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur + n <= cap).then_some(cur + n)
            });
        if admitted.is_err() {
            return Err(ApiError::queue_full(n, cap));
        }
        let inflight = self.metrics.add_inflight(n as i64);
        tracing::debug!(images = n, inflight, "images admitted");
        let ticket = Ticket {
            n,
            admitted: self.admitted.clone(),
            metrics: self.metrics.clone(),
        };
        let (reply, rx) = oneshot::channel();
        let job = Job {
            pixels,
            n,
            queued_at: Instant::now(),
            deadline,
            reply,
            ticket,
        };
        self.metrics.add_queued(n as i64);
        let sent = match lock(&self.tx).as_ref() {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        };
        if !sent {
            self.metrics.add_queued(-(n as i64));
            return Err(ApiError::shutting_down());
        }
        Ok(rx)
    }

    /// Closes the queue: requests already in it are still run, new ones are refused.
    pub fn close(&self) {
        lock(&self.tx).take();
    }

    /// Closes the queue and waits until the workers have answered everything queued and ended.
    ///
    /// # Errors
    /// [`ServeError::Worker`] when a worker thread panicked.
    pub fn shutdown(&self) -> Result<(), ServeError> {
        self.close();
        let workers = std::mem::take(&mut *lock(&self.workers));
        for w in workers {
            w.join()
                .map_err(|_| ServeError::Worker("a model worker panicked".into()))?;
        }
        Ok(())
    }
}

/// Runs the backend on zeros, one image and then [`WARM_UP_BATCH`] images (at most `max_batch`), so
/// that the engine has allocated and prepared what it needs before the first request; the timed
/// second run gives the first estimate of seconds per image.
///
/// # Errors
/// [`crate::Error::Backend`] when the backend fails, panics or returns another shape than
/// `[n, classes]`.
fn warm_up(backend: &mut dyn Backend, cfg: &BatchConfig) -> crate::Result<Pace> {
    let (s, per) = (cfg.input_size, cfg.image_len());
    let k = cfg.max_batch.clamp(1, WARM_UP_BATCH);
    let zeros = vec![0f32; k * per];
    let name = backend.name();
    let failed = |message: String| crate::Error::Backend {
        backend: name,
        message: format!("warm-up on zeros: {message}"),
    };
    let mut pace = Pace::new(0.0);
    for n in [1, k] {
        let view = ArrayView4::from_shape((n, s, s, 3), &zeros[..n * per])
            .map_err(|e| failed(e.to_string()))?;
        let started = Instant::now();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.run(view)))
            .map_err(|_| failed("the inference backend panicked".into()))??;
        pace = Pace::measured(n, started.elapsed());
        if out.shape() != [n, cfg.classes] {
            return Err(failed(format!(
                "backend output shape {:?}, expected [{n}, {}]",
                out.shape(),
                cfg.classes
            )));
        }
    }
    Ok(pace)
}

fn worker_loop(
    backend: &mut dyn Backend,
    queue: &Mutex<Queue>,
    cfg: &BatchConfig,
    pace: &Mutex<Pace>,
    metrics: &Metrics,
) {
    loop {
        // Only one worker gathers at a time; it lets go of the queue before running the batch.
        let jobs = match gather(&mut lock(queue), cfg, pace, metrics) {
            Some(jobs) => jobs,
            None => return,
        };
        if !jobs.is_empty() {
            run_batch(backend, jobs, cfg, pace, metrics);
        }
    }
}

/// Answers a job that is not run with the request-timeout error (its requester has usually gone
/// already) and counts it for `reason`.
fn drop_job(job: Job, reason: &'static str, cfg: &BatchConfig, metrics: &Metrics) {
    answer_unrun(
        job,
        reason,
        ApiError::inference_timeout(cfg.request_timeout),
        metrics,
    );
}

/// Answers a job that is not run with `error` and counts it for `reason`.
fn answer_unrun(job: Job, reason: &'static str, error: ApiError, metrics: &Metrics) {
    metrics.record_dropped(reason);
    let Job { reply, ticket, .. } = job;
    drop(ticket);
    let _ = reply.send(Err(error));
}

/// Drops the jobs of a batch whose requesters no longer wait for them at `now` (deadline passed or
/// gone); returns the images left.
fn prune(jobs: &mut Vec<Job>, now: Instant, cfg: &BatchConfig, metrics: &Metrics) -> usize {
    let mut kept = Vec::with_capacity(jobs.len());
    for job in jobs.drain(..) {
        if job.live(now) {
            kept.push(job);
        } else {
            let reason = if now >= job.deadline {
                "deadline_passed"
            } else {
                "abandoned"
            };
            drop_job(job, reason, cfg, metrics);
        }
    }
    *jobs = kept;
    jobs.iter().map(|j| j.n).sum()
}

/// Waits for a first job that can be run, then gathers more until the batch limit, until the oldest
/// job has waited `max_delay`, or until the next job would make the batch end after a deadline in
/// it (that job then starts the next batch). Jobs that cannot be run are answered and dropped as
/// they are taken; jobs whose requesters have gone while the batch gathered are dropped before it is
/// returned, so the batch may be empty. `None` when the queue is closed and empty.
fn gather(
    q: &mut Queue,
    cfg: &BatchConfig,
    pace: &Mutex<Pace>,
    metrics: &Metrics,
) -> Option<Vec<Job>> {
    let mut jobs: Vec<Job> = Vec::new();
    let (mut n, mut cap) = (0, 1);
    let mut estimate = Pace::new(0.0);
    let mut until = Instant::now();
    loop {
        let job = if jobs.is_empty() {
            match q.held.take() {
                Some(job) => job,
                None => q.rx.recv().ok()?,
            }
        } else {
            if n >= cap {
                break;
            }
            let wait = until.saturating_duration_since(Instant::now());
            let next = if wait.is_zero() {
                q.rx.try_recv().ok()
            } else {
                q.rx.recv_timeout(wait).ok()
            };
            match next {
                Some(job) => job,
                None => break,
            }
        };
        let now = Instant::now();
        if jobs.is_empty() {
            // The latest estimate, when a batch starts.
            estimate = *lock(pace);
            cap = batch_cap(cfg.max_batch, cfg.request_timeout, &estimate);
        }
        if let Some(reason) = job.unrunnable(&estimate, now) {
            metrics.add_queued(-(job.n as i64));
            // A request whose images alone take longer than the whole request timeout would fail
            // on an idle server too: its answer says so, and that retrying cannot help.
            let expected = estimate.estimate(job.n);
            if reason == Verdict::CannotFinish.label() && expected > cfg.request_timeout {
                let error = ApiError::longer_than_timeout(job.n, expected, cfg.request_timeout);
                answer_unrun(job, reason, error, metrics);
            } else {
                drop_job(job, reason, cfg, metrics);
            }
            continue;
        }
        if !jobs.is_empty() {
            n = prune(&mut jobs, now, cfg, metrics);
        }
        if !jobs.is_empty() {
            let earliest = jobs
                .iter()
                .map(|j| j.deadline)
                .fold(job.deadline, Instant::min);
            if n + job.n > cap || !fits(&estimate, n + job.n, earliest, now) {
                q.held = Some(job);
                break;
            }
        } else {
            until = job.queued_at + cfg.max_delay;
        }
        metrics.add_queued(-(job.n as i64));
        n += job.n;
        jobs.push(job);
    }
    // The wait may have outlasted some requests: a batch runs only for requesters still waiting.
    prune(&mut jobs, Instant::now(), cfg, metrics);
    Some(jobs)
}

fn run_batch(
    backend: &mut dyn Backend,
    jobs: Vec<Job>,
    cfg: &BatchConfig,
    pace: &Mutex<Pace>,
    metrics: &Metrics,
) {
    let total: usize = jobs.iter().map(|j| j.n).sum();
    let live = || {
        let now = Instant::now();
        jobs.iter().any(|j| j.live(now))
    };
    let result = if let [one] = jobs.as_slice() {
        infer_chunks(backend, &one.pixels, total, cfg, pace, metrics, &live)
    } else {
        let mut input = Vec::with_capacity(total * cfg.image_len());
        for j in &jobs {
            input.extend_from_slice(&j.pixels);
        }
        infer_chunks(backend, &input, total, cfg, pace, metrics, &live)
    };
    let result = match result {
        Some(result) => result,
        None => {
            // Stopped between chunks: no requester waits any more.
            let now = Instant::now();
            for job in jobs {
                let reason = if now >= job.deadline {
                    "deadline_passed"
                } else {
                    "abandoned"
                };
                drop_job(job, reason, cfg, metrics);
            }
            return;
        }
    };
    let mut row = 0;
    for Job {
        n, reply, ticket, ..
    } in jobs
    {
        // Free the capacity first, so that a requester that sends its next request as soon as it has
        // this answer finds room.
        drop(ticket);
        let part = match &result {
            Ok(out) => Ok(out.slice(ndarray::s![row..row + n, ..]).to_owned()),
            Err(e) => Err(e.clone()),
        };
        row += n;
        let _ = reply.send(part);
    }
}

/// Runs `total` images through the backend in runs of at most `max_batch`, checking each output's
/// shape and taking each run's time into the estimate. Before every run after the first, stops
/// (`None`) when `live` says that no requester waits any more.
fn infer_chunks(
    backend: &mut dyn Backend,
    input: &[f32],
    total: usize,
    cfg: &BatchConfig,
    pace: &Mutex<Pace>,
    metrics: &Metrics,
    live: &dyn Fn() -> bool,
) -> Option<Result<Array2<f32>, ApiError>> {
    let (s, per, classes) = (cfg.input_size, cfg.image_len(), cfg.classes);
    let mut rows = Vec::with_capacity(total * classes);
    for (i, chunk) in input.chunks(cfg.max_batch.max(1) * per).enumerate() {
        if i > 0 && !live() {
            return None;
        }
        let m = chunk.len() / per;
        let view = match ArrayView4::from_shape((m, s, s, 3), chunk) {
            Ok(view) => view,
            Err(e) => return Some(Err(ApiError::backend(e.to_string()))),
        };
        let started = Instant::now();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.run(view)));
        let elapsed = started.elapsed();
        metrics.record_batch(m, elapsed);
        let out = match run {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Some(Err(ApiError::backend(e.to_string()))),
            Err(_) => return Some(Err(ApiError::backend("the inference backend panicked"))),
        };
        if out.shape() != [m, classes] {
            return Some(Err(ApiError::backend(format!(
                "backend output shape {:?}, expected [{m}, {classes}]",
                out.shape()
            ))));
        }
        let latest = {
            let mut p = lock(pace);
            p.observe(m, elapsed);
            *p
        };
        metrics.set_batch_bounds(
            latest.secs_per_image(),
            batch_cap(cfg.max_batch, cfg.request_timeout, &latest),
        );
        rows.extend(out.iter().copied());
    }
    Some(
        Array2::from_shape_vec((total, classes), rows)
            .map_err(|e| ApiError::backend(e.to_string())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that returns, per image, its first pixel value and the batch size.
    struct Echo {
        batches: Arc<Mutex<Vec<usize>>>,
    }

    impl Backend for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn run(&mut self, images: ArrayView4<'_, f32>) -> crate::error::Result<Array2<f32>> {
            let n = images.shape()[0];
            self.batches.lock().unwrap().push(n);
            Ok(Array2::from_shape_fn((n, 2), |(i, j)| {
                if j == 0 {
                    images[[i, 0, 0, 0]]
                } else {
                    n as f32
                }
            }))
        }
    }

    /// Images of 1x1 pixel whose three channels hold `values[i]`.
    fn images(values: &[f32]) -> Vec<f32> {
        values.iter().flat_map(|&v| [v; 3]).collect()
    }

    fn cfg(max_batch: usize, delay_ms: u64, queue: usize) -> BatchConfig {
        BatchConfig {
            max_batch,
            max_delay: Duration::from_millis(delay_ms),
            queue,
            instances: 1,
            input_size: 1,
            classes: 2,
            request_timeout: Duration::from_secs(1000),
        }
    }

    /// A deadline no test reaches.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(1000)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    /// A batcher around the echo backend whose worker starts on [`EchoBatcher::start`], so that what
    /// was queued before is all in the queue when it first gathers.
    struct EchoBatcher {
        batcher: Arc<Batcher>,
        batches: Arc<Mutex<Vec<usize>>>,
        queue: Arc<Mutex<Queue>>,
    }

    impl EchoBatcher {
        fn idle(cfg: BatchConfig, pace: Pace) -> Self {
            let (tx, rx) = mpsc::channel();
            let batcher = Batcher {
                tx: Mutex::new(Some(tx)),
                admitted: Arc::new(AtomicUsize::new(0)),
                cfg,
                metrics: Arc::new(Metrics::default()),
                workers: Mutex::new(vec![]),
                backend_name: "echo",
                device: InferDevice::Cpu,
                pace: Arc::new(Mutex::new(pace)),
            };
            EchoBatcher {
                batcher: Arc::new(batcher),
                batches: Arc::new(Mutex::new(Vec::new())),
                queue: Arc::new(Mutex::new(Queue { rx, held: None })),
            }
        }

        fn start(&self) {
            let b = &self.batcher;
            let (q, m, c, p) = (
                self.queue.clone(),
                b.metrics.clone(),
                b.cfg.clone(),
                b.pace.clone(),
            );
            let batches = self.batches.clone();
            let handle = std::thread::spawn(move || {
                let mut echo = Echo { batches };
                worker_loop(&mut echo, &q, &c, &p, &m);
            });
            lock(&b.workers).push(handle);
        }

        fn batches(&self) -> Vec<usize> {
            self.batches.lock().unwrap().clone()
        }
    }

    #[test]
    fn concurrent_requests_share_batches_and_get_their_own_rows() {
        let e = EchoBatcher::idle(cfg(8, 200, 64), Pace::new(0.0));
        let b = &e.batcher;
        let rxs: Vec<_> = [1usize, 3, 2, 4]
            .iter()
            .enumerate()
            .map(|(k, &n)| b.submit(images(&vec![k as f32; n]), n, far()).unwrap())
            .collect();
        e.start();
        let rt = runtime();
        let outs: Vec<Array2<f32>> = rxs
            .into_iter()
            .map(|rx| rt.block_on(rx).unwrap().unwrap())
            .collect();
        for (k, out) in outs.iter().enumerate() {
            assert!(out.column(0).iter().all(|&v| v == k as f32), "{out:?}");
        }
        // 1+3+2 = 6 fit in 8; the 4 did not and started the next batch.
        assert_eq!(outs[0][[0, 1]], 6.0);
        assert_eq!(outs[3][[0, 1]], 4.0);
        b.shutdown().unwrap();
        assert_eq!(e.batches(), vec![6, 4]);
        assert_eq!(b.admitted.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn full_queue_refuses_at_once_and_oversized_requests_are_413() {
        // The worker starts only after the refusals: nothing can run and free room before them.
        let e = EchoBatcher::idle(cfg(4, 300, 4), Pace::new(0.0));
        let b = &e.batcher;
        let first = b.submit(images(&[0.0; 3]), 3, far()).unwrap();
        let full = b.submit(images(&[0.0; 2]), 2, far()).unwrap_err();
        assert_eq!(
            (full.status, full.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, Some(1))
        );
        assert_eq!(
            b.submit(images(&[0.0; 5]), 5, far()).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        e.start();
        assert_eq!(runtime().block_on(first).unwrap().unwrap().nrows(), 3);
        b.shutdown().unwrap();
        assert_eq!(
            b.submit(images(&[0.0; 1]), 1, far()).unwrap_err().kind,
            "shutting_down"
        );
    }

    #[test]
    fn large_requests_run_in_chunks_and_abandoned_ones_are_skipped() {
        let e = EchoBatcher::idle(cfg(4, 0, 64), Pace::new(0.0));
        let b = &e.batcher;
        let gone = b.submit(images(&[7.0; 2]), 2, far()).unwrap();
        drop(gone);
        let rx = b
            .submit(
                images(&(0..10).map(|i| i as f32).collect::<Vec<_>>()),
                10,
                far(),
            )
            .unwrap();
        e.start();
        let out = runtime().block_on(rx).unwrap().unwrap();
        assert_eq!(
            out.column(0).to_vec(),
            (0..10).map(|i| i as f32).collect::<Vec<_>>()
        );
        b.shutdown().unwrap();
        assert_eq!(e.batches(), vec![4, 4, 2]);
        assert_eq!(b.metrics.dropped("abandoned"), 1);
        assert_eq!(b.admitted.load(Ordering::SeqCst), 0);
    }

    /// The answer of a request dropped unrun: the request timeout's 503.
    fn assert_timed_out(result: BatchResult) {
        let e = result.unwrap_err();
        assert_eq!(
            (e.status, e.kind, e.retry_after),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "inference_timeout",
                Some(1)
            ),
            "{e}"
        );
    }

    #[test]
    fn expired_requests_and_those_that_cannot_finish_are_answered_unrun() {
        // 10 s per image; a 1000 s timeout does not bound the batch (500 / 10 = 50 > 8).
        let e = EchoBatcher::idle(cfg(8, 0, 256), Pace::new(10.0));
        let b = &e.batcher;
        let now = Instant::now();
        let expired = b
            .submit(images(&[1.0; 2]), 2, now - Duration::from_millis(1))
            .unwrap();
        // 3 images take 30 s by the estimate; 20 s are left.
        let late = b
            .submit(images(&[2.0; 3]), 3, now + Duration::from_secs(20))
            .unwrap();
        let fine = b.submit(images(&[3.0]), 1, far()).unwrap();
        // 60 images take 600 s by the estimate, less than the 1000 s timeout: late only because
        // 700 s of it are gone; 101 images (1010 s) could not finish even on an idle server.
        let queued_long = b
            .submit(images(&[4.0; 60]), 60, now + Duration::from_secs(300))
            .unwrap();
        let too_long = b.submit(images(&[5.0; 101]), 101, far()).unwrap();
        e.start();
        let rt = runtime();
        assert_timed_out(rt.block_on(expired).unwrap());
        assert_timed_out(rt.block_on(late).unwrap());
        assert_timed_out(rt.block_on(queued_long).unwrap());
        let never = rt.block_on(too_long).unwrap().unwrap_err();
        assert_eq!(
            (never.status, never.kind, never.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, "inference_timeout", None),
            "{never}"
        );
        assert!(
            never.message.starts_with(
                "these 101 images would take about 1010.0 s on this server (its measured pace), \
                 longer than the request timeout of 1000.0 s"
            ),
            "{never}"
        );
        assert_eq!(
            rt.block_on(fine).unwrap().unwrap().column(0).to_vec(),
            [3.0]
        );
        b.shutdown().unwrap();
        assert_eq!(
            e.batches(),
            vec![1],
            "only the request that could finish ran"
        );
        let m = &b.metrics;
        assert_eq!(
            (m.dropped("deadline_passed"), m.dropped("cannot_finish")),
            (1, 3)
        );
        assert_eq!((m.queued(), m.images()), (0, 1));
        assert_eq!(b.admitted.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_batch_gathers_no_more_images_than_it_runs_in_half_the_timeout() {
        // 1 s per image, 10 s timeout: 5 images per batch, though 8 are queued and allowed.
        let mut c = cfg(8, 0, 64);
        c.request_timeout = Duration::from_secs(10);
        let e = EchoBatcher::idle(c, Pace::new(1.0));
        let b = &e.batcher;
        assert_eq!(b.batch_limit(), 5);
        let rxs: Vec<_> = (0..8)
            .map(|i| b.submit(images(&[i as f32]), 1, far()).unwrap())
            .collect();
        e.start();
        let rt = runtime();
        for rx in rxs {
            rt.block_on(rx).unwrap().unwrap();
        }
        b.shutdown().unwrap();
        // The first batch's real time (microseconds) lowers the estimate to about 0.8 s: 6 images.
        assert_eq!(e.batches(), vec![5, 3]);
        assert!(
            (b.pace().secs_per_image() - 0.64).abs() < 0.01,
            "{:?}",
            b.pace()
        );
        assert_eq!(b.batch_limit(), 7, "5 / 0.64 = 7.8");
    }

    #[test]
    fn a_request_joins_a_batch_only_if_the_batch_still_ends_before_every_deadline() {
        // 10 s per image. The first request has 25 s left: with a second image the batch takes 20 s,
        // with a third 30 s, so the third request starts the next batch.
        let e = EchoBatcher::idle(cfg(8, 0, 64), Pace::new(10.0));
        let b = &e.batcher;
        let soon = Instant::now() + Duration::from_secs(25);
        let rxs = [
            b.submit(images(&[0.0]), 1, soon).unwrap(),
            b.submit(images(&[1.0]), 1, far()).unwrap(),
            b.submit(images(&[2.0]), 1, far()).unwrap(),
        ];
        e.start();
        let rt = runtime();
        for (k, rx) in rxs.into_iter().enumerate() {
            assert_eq!(rt.block_on(rx).unwrap().unwrap()[[0, 0]], k as f32);
        }
        b.shutdown().unwrap();
        assert_eq!(e.batches(), vec![2, 1]);
    }

    #[test]
    fn a_batch_whose_requesters_have_all_gone_is_not_run() {
        // The batch waits up to a minute for company; its only requester leaves meanwhile.
        let e = EchoBatcher::idle(cfg(8, 60_000, 64), Pace::new(0.0));
        let b = &e.batcher;
        let rx = b.submit(images(&[1.0]), 1, far()).unwrap();
        e.start();
        // Taken into the batch: no longer counted as queued.
        let limit = Instant::now() + Duration::from_secs(60);
        while b.metrics.queued() != 0 {
            assert!(Instant::now() < limit, "the worker never took the request");
            std::thread::yield_now();
        }
        drop(rx);
        // Closing the queue ends the wait; the batch is checked before it runs.
        b.shutdown().unwrap();
        assert_eq!(e.batches(), Vec::<usize>::new());
        assert_eq!(b.metrics.dropped("abandoned"), 1);
        assert_eq!(b.admitted.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_warm_up_runs_one_image_then_a_small_batch_and_checks_the_output() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let mut echo = Echo {
            batches: batches.clone(),
        };
        let pace = warm_up(&mut echo, &cfg(8, 0, 64)).unwrap();
        assert_eq!(*batches.lock().unwrap(), vec![1, WARM_UP_BATCH]);
        assert!(pace.secs_per_image() >= 0.0);
        warm_up(&mut echo, &cfg(1, 0, 64)).unwrap();
        assert_eq!(
            batches.lock().unwrap()[2..],
            [1, 1],
            "max_batch 1: one image twice"
        );
        let mut three = cfg(8, 0, 64);
        three.classes = 3;
        let err = warm_up(&mut echo, &three).unwrap_err().to_string();
        assert!(
            err.contains("warm-up") && err.contains("expected [1, 3]"),
            "{err}"
        );
    }
}
