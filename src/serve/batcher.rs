//! Dynamic batching: requests (each with one or more images) enter a bounded queue; model workers
//! gather up to `max_batch` images, waiting at most `max_delay` after the oldest one was queued, run
//! the backend once on the whole batch and hand each requester its rows.
//!
//! Each worker is an OS thread that owns one backend instance (the backends are synchronous and
//! CPU-bound, and a `Box<dyn Backend>` stays on the thread that opened it). Workers share the queue:
//! one gathers while the others run, so with two instances a batch forms while the previous one runs.
//! The bound counts images admitted and not yet answered; a request that does not fit is refused at
//! once (the HTTP layer answers 503 with `Retry-After`) instead of waiting without limit.

use super::error::{ApiError, ServeError};
use super::metrics::Metrics;
use crate::infer::{open_backend, Backend, BackendOptions};
use axum::http::StatusCode;
use ndarray::{Array2, ArrayView4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How batches are formed.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Largest number of images per backend run; a request with more runs alone, in chunks of this size.
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
        self.metrics.add_inflight(-(self.n as i64));
    }
}

struct Job {
    /// `n` images, NHWC RGB 0..255 as float32.
    pixels: Vec<f32>,
    n: usize,
    queued_at: Instant,
    reply: oneshot::Sender<BatchResult>,
    ticket: Ticket,
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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Workers catch backend panics, so a poisoned lock only means a panic elsewhere; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Batcher {
    /// Starts `cfg.instances` workers, each opening `model` with `opts`, and waits until all have
    /// loaded it.
    ///
    /// # Errors
    /// [`ServeError::Pipe`] when a backend cannot open the model; [`ServeError::Worker`] when a thread
    /// cannot be started.
    pub fn start(
        model: &Path,
        opts: &BackendOptions,
        cfg: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServeError> {
        let (tx, rx) = mpsc::channel();
        let queue = Arc::new(Mutex::new(Queue { rx, held: None }));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut workers = Vec::new();
        for i in 0..cfg.instances.max(1) {
            let (queue, metrics, ready) = (queue.clone(), metrics.clone(), ready_tx.clone());
            let (model, opts, cfg): (PathBuf, _, _) = (model.into(), opts.clone(), cfg.clone());
            let handle = std::thread::Builder::new()
                .name(format!("pipe-model-{i}"))
                .spawn(move || match open_backend(&model, &opts) {
                    Ok(mut backend) => {
                        let _ = ready.send(Ok(backend.name()));
                        drop(ready);
                        worker_loop(backend.as_mut(), &queue, &cfg, &metrics);
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
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
        Ok(Batcher {
            tx: Mutex::new(Some(tx)),
            admitted: Arc::new(AtomicUsize::new(0)),
            cfg,
            metrics,
            workers: Mutex::new(workers),
            backend_name,
        })
    }

    /// The backend's name (`tract` or `ort`).
    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    /// The batching configuration.
    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// Queues `n` images (`pixels`: `n * S * S * 3` floats, NHWC RGB 0..255) and returns where their
    /// output rows will arrive.
    ///
    /// # Errors
    /// 413 when the request alone exceeds the queue's capacity; 503 with `Retry-After` when the queue
    /// is full now or the server is shutting down.
    pub fn submit(
        &self,
        pixels: Vec<f32>,
        n: usize,
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
        self.metrics.add_inflight(n as i64);
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

fn worker_loop(
    backend: &mut dyn Backend,
    queue: &Mutex<Queue>,
    cfg: &BatchConfig,
    metrics: &Metrics,
) {
    loop {
        // Only one worker gathers at a time; it lets go of the queue before running the batch.
        let jobs = match gather(&mut lock(queue), cfg, metrics) {
            Some(jobs) => jobs,
            None => return,
        };
        if !jobs.is_empty() {
            run_batch(backend, jobs, cfg, metrics);
        }
    }
}

/// Takes `job` out of the queue's count; false when its requester has gone (timed out, disconnected),
/// in which case it is dropped unrun.
fn accept(job: &Job, metrics: &Metrics) -> bool {
    metrics.add_queued(-(job.n as i64));
    !job.reply.is_closed()
}

/// Waits for a first job, then gathers more until the batch is full or the oldest job has waited
/// `max_delay`. `None` when the queue is closed and empty.
fn gather(q: &mut Queue, cfg: &BatchConfig, metrics: &Metrics) -> Option<Vec<Job>> {
    let first = loop {
        let job = match q.held.take() {
            Some(job) => job,
            None => q.rx.recv().ok()?,
        };
        if accept(&job, metrics) {
            break job;
        }
    };
    let deadline = first.queued_at + cfg.max_delay;
    let mut n = first.n;
    let mut jobs = vec![first];
    while n < cfg.max_batch {
        let wait = deadline.saturating_duration_since(Instant::now());
        let next = if wait.is_zero() {
            q.rx.try_recv().ok()
        } else {
            q.rx.recv_timeout(wait).ok()
        };
        let Some(job) = next else { break };
        if n + job.n > cfg.max_batch {
            q.held = Some(job);
            break;
        }
        if accept(&job, metrics) {
            n += job.n;
            jobs.push(job);
        }
    }
    Some(jobs)
}

fn run_batch(backend: &mut dyn Backend, jobs: Vec<Job>, cfg: &BatchConfig, metrics: &Metrics) {
    let total: usize = jobs.iter().map(|j| j.n).sum();
    let result = if let [one] = jobs.as_slice() {
        infer_chunks(backend, &one.pixels, total, cfg, metrics)
    } else {
        let mut input = Vec::with_capacity(total * cfg.image_len());
        for j in &jobs {
            input.extend_from_slice(&j.pixels);
        }
        infer_chunks(backend, &input, total, cfg, metrics)
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

/// Runs `total` images through the backend in runs of at most `max_batch`, checking each output's shape.
fn infer_chunks(
    backend: &mut dyn Backend,
    input: &[f32],
    total: usize,
    cfg: &BatchConfig,
    metrics: &Metrics,
) -> Result<Array2<f32>, ApiError> {
    let (s, per, classes) = (cfg.input_size, cfg.image_len(), cfg.classes);
    let mut rows = Vec::with_capacity(total * classes);
    for chunk in input.chunks(cfg.max_batch.max(1) * per) {
        let m = chunk.len() / per;
        let view = ArrayView4::from_shape((m, s, s, 3), chunk)
            .map_err(|e| ApiError::backend(e.to_string()))?;
        let started = Instant::now();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.run(view)));
        metrics.record_batch(m, started.elapsed());
        let out = match run {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(ApiError::backend(e.to_string())),
            Err(_) => return Err(ApiError::backend("the inference backend panicked")),
        };
        if out.shape() != [m, classes] {
            return Err(ApiError::backend(format!(
                "backend output shape {:?}, expected [{m}, {classes}]",
                out.shape()
            )));
        }
        rows.extend(out.iter().copied());
    }
    Array2::from_shape_vec((total, classes), rows).map_err(|e| ApiError::backend(e.to_string()))
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
        }
    }

    /// A batcher around the echo backend, with its worker.
    fn echo_batcher(cfg: BatchConfig) -> (Arc<Batcher>, Arc<Mutex<Vec<usize>>>) {
        let (tx, rx) = mpsc::channel();
        let queue = Arc::new(Mutex::new(Queue { rx, held: None }));
        let metrics = Arc::new(Metrics::default());
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (q, m, c, b) = (queue, metrics.clone(), cfg.clone(), batches.clone());
        let handle = std::thread::spawn(move || {
            let mut echo = Echo { batches: b };
            worker_loop(&mut echo, &q, &c, &m);
        });
        let batcher = Batcher {
            tx: Mutex::new(Some(tx)),
            admitted: Arc::new(AtomicUsize::new(0)),
            cfg,
            metrics,
            workers: Mutex::new(vec![handle]),
            backend_name: "echo",
        };
        (Arc::new(batcher), batches)
    }

    #[test]
    fn concurrent_requests_share_batches_and_get_their_own_rows() {
        let (b, batches) = echo_batcher(cfg(8, 200, 64));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let rxs: Vec<_> = [1usize, 3, 2, 4]
            .iter()
            .enumerate()
            .map(|(k, &n)| b.submit(images(&vec![k as f32; n]), n).unwrap())
            .collect();
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
        assert_eq!(*batches.lock().unwrap(), vec![6, 4]);
        assert_eq!(b.admitted.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn full_queue_refuses_at_once_and_oversized_requests_are_413() {
        let (b, _) = echo_batcher(cfg(4, 300, 4));
        let first = b.submit(images(&[0.0; 3]), 3).unwrap();
        let full = b.submit(images(&[0.0; 2]), 2).unwrap_err();
        assert_eq!(
            (full.status, full.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, Some(1))
        );
        assert_eq!(
            b.submit(images(&[0.0; 5]), 5).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(first).unwrap().unwrap().nrows(), 3);
        b.shutdown().unwrap();
        assert_eq!(
            b.submit(images(&[0.0; 1]), 1).unwrap_err().kind,
            "shutting_down"
        );
    }

    #[test]
    fn large_requests_run_in_chunks_and_abandoned_ones_are_skipped() {
        let (b, batches) = echo_batcher(cfg(4, 0, 64));
        let gone = b.submit(images(&[7.0; 2]), 2).unwrap();
        drop(gone);
        let rx = b
            .submit(images(&(0..10).map(|i| i as f32).collect::<Vec<_>>()), 10)
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let out = rt.block_on(rx).unwrap().unwrap();
        assert_eq!(
            out.column(0).to_vec(),
            (0..10).map(|i| i as f32).collect::<Vec<_>>()
        );
        b.shutdown().unwrap();
        let runs = batches.lock().unwrap().clone();
        assert!(
            runs == vec![4, 4, 2] || runs == vec![2, 4, 4, 2],
            "{runs:?}"
        );
        assert_eq!(b.admitted.load(Ordering::SeqCst), 0);
    }
}
