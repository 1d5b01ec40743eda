//! `pipe serve`: an HTTP inference server for an exported model that speaks the KServe v2 / Triton
//! protocol (health, metadata, JSON and binary tensors, classification), offers `POST /v1/classify`
//! for image files, batches concurrent requests dynamically, and exports Prometheus metrics.
//!
//! Layout: [`batcher`] (bounded queue, model workers), [`bounds`] (the batch limit by memory and by
//! time, the estimate of seconds per image, which queued requests are still run), [`kserve`]
//! (protocol messages), [`routes`] (HTTP routes and middleware), [`classify`] (`/v1/classify`),
//! [`metrics`], [`error`], [`cli`] (the command-line options). [`serve`] runs it all until SIGTERM or SIGINT, then drains: readiness turns
//! false, new requests get 503, requests in flight are answered, and it returns.

pub mod batcher;
pub mod bounds;
pub mod classify;
pub mod error;
pub mod kserve;
pub mod metrics;
pub mod routes;
pub mod state;

pub use error::{ApiError, ServeError};

use crate::infer::BackendOptions;
use crate::onnx::ModelInfo;
use batcher::{BatchConfig, Batcher};
use bounds::MaxBatch;
use metrics::Metrics;
use state::AppState;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The model name clients use by default: the one `pipe export --triton` gives the model, so that
/// one client works against pipe and against Triton.
pub const DEFAULT_MODEL_NAME: &str = "pipe_vgg16";

/// Everything [`serve`] needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The exported ONNX model.
    pub model: PathBuf,
    /// Engine, device, threads per instance (0 = the cores shared among instances), libonnxruntime.
    pub backend: BackendOptions,
    /// Address to listen on.
    pub host: String,
    /// Port (0 = any free port; the bound address is passed to `on_listening`).
    pub port: u16,
    /// The model's name in URLs.
    pub model_name: String,
    /// Largest batch per backend run, images, as given by `--max-batch` (`None`: not given,
    /// [`bounds::DEFAULT_MAX_BATCH`]); the server lowers it to the memory bound of the model's input
    /// size ([`MaxBatch`]) and, batch by batch, to what runs in half the request timeout.
    pub max_batch: Option<usize>,
    /// Longest wait for a batch to fill after its oldest image was queued.
    pub max_delay: Duration,
    /// Most images admitted and not yet answered.
    pub queue: usize,
    /// Model instances (worker threads with a backend each).
    pub instances: usize,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Longest time from a request's arrival to its response.
    pub request_timeout: Duration,
    /// After SIGTERM/SIGINT: how long to keep answering (503 to new requests, readiness false) before
    /// closing the listener, so that load balancers stop sending.
    pub drain: Duration,
    /// Log level of the structured logs on stderr.
    pub log_level: tracing::Level,
    /// Logs as JSON lines instead of text.
    pub log_json: bool,
}

/// What a server did, returned when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeSummary {
    /// Inference requests answered with results.
    pub answered: u64,
    /// Images run through the backend.
    pub images: u64,
    /// Requests refused with 503 (queue full, shutting down, inference timeout).
    pub refused: u64,
}

/// How the bound server describes itself once listening.
#[derive(Debug, Clone)]
pub struct Listening {
    /// The bound address.
    pub addr: SocketAddr,
    /// The backend's name.
    pub backend: &'static str,
    /// The model's classes.
    pub classes: usize,
    /// The model's input side, pixels.
    pub input_size: usize,
    /// Most images per backend run: `--max-batch` lowered to the memory bound of the input size.
    pub max_batch: usize,
}

fn init_logging(level: tracing::Level, json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    // A second server in the same process (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}

/// Loads the model into `opts.instances` workers, listens, calls `on_listening` with the bound
/// address, and serves until SIGTERM or SIGINT; then drains and returns what it did.
///
/// # Errors
/// [`ServeError`] when the model cannot be loaded, the address cannot be bound or the runtime fails.
pub fn serve(
    opts: &ServeOptions,
    on_listening: impl FnOnce(&Listening),
) -> Result<ServeSummary, ServeError> {
    init_logging(opts.log_level, opts.log_json);
    let info = ModelInfo::read(&opts.model)?;
    let metrics = Arc::new(Metrics::default());
    let mut backend = opts.backend.clone();
    if opts.instances > 1 && backend.threads == 0 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        backend.threads = (cores / opts.instances).max(1);
    }
    let max_batch = MaxBatch::new(opts.max_batch, info.input_size);
    if max_batch.lowered_from_explicit() {
        tracing::warn!(
            max_batch = max_batch.requested,
            memory_bound = max_batch.memory_bound,
            input_size = info.input_size,
            "--max-batch {} is over the memory bound of {} images per batch at {s}x{s} pixels (the batch of pipe infer); batches hold at most {}",
            max_batch.requested,
            max_batch.memory_bound,
            max_batch.effective,
            s = info.input_size
        );
    }
    let cfg = BatchConfig {
        max_batch: max_batch.effective,
        max_delay: opts.max_delay,
        queue: opts.queue,
        instances: opts.instances,
        input_size: info.input_size,
        classes: info.classes.len(),
        request_timeout: opts.request_timeout,
    };
    let batcher = Batcher::start(&opts.model, &backend, cfg, metrics.clone())?;
    tracing::info!(
        instances = opts.instances,
        threads = backend.threads,
        backend = batcher.backend_name(),
        "{} model instance(s), {} each",
        opts.instances,
        match backend.threads {
            0 => "on the backend's default threads".to_string(),
            t => format!("{t} thread(s)"),
        }
    );
    tracing::info!(
        max_batch = max_batch.effective,
        requested = max_batch.requested,
        memory_bound = max_batch.memory_bound,
        secs_per_image = batcher.pace().secs_per_image(),
        batch_limit = batcher.batch_limit(),
        "batching: at most {} images per backend run (--max-batch {}, memory bound {} at {s}x{s}); by the warm-up's {:.4} s per image, {} fit in half the request timeout of {:.1} s",
        max_batch.effective,
        max_batch.requested,
        max_batch.memory_bound,
        batcher.pace().secs_per_image(),
        bounds::batch_cap(usize::MAX, opts.request_timeout, &batcher.pace()),
        opts.request_timeout.as_secs_f64(),
        s = info.input_size
    );
    let state = Arc::new(AppState {
        model_name: opts.model_name.clone(),
        info,
        batcher,
        metrics: metrics.clone(),
        draining: AtomicBool::new(false),
        request_timeout: opts.request_timeout,
        max_body: opts.max_body,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pipe-http")
        .build()?;
    let served = runtime.block_on(serve_http(state.clone(), opts, on_listening));
    // Every connection is closed: what was queued has been answered; let the workers end.
    state.batcher.shutdown()?;
    served?;
    Ok(ServeSummary {
        answered: metrics.answered(),
        images: metrics.images(),
        refused: metrics.requests_with_status(503),
    })
}

async fn serve_http(
    state: Arc<AppState>,
    opts: &ServeOptions,
    on_listening: impl FnOnce(&Listening),
) -> Result<(), ServeError> {
    // Signal handlers first: a SIGTERM right after the address is printed must drain, not kill.
    let signals = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let listening = Listening {
        addr: listener.local_addr()?,
        backend: state.batcher.backend_name(),
        classes: state.info.classes.len(),
        input_size: state.info.input_size,
        max_batch: state.batcher.config().max_batch,
    };
    tracing::info!(addr = %listening.addr, model = %opts.model.display(), backend = listening.backend, max_batch = listening.max_batch, "listening");
    on_listening(&listening);
    let app = routes::router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(drain_on_signal(state, signals, opts.drain))
        .await?;
    Ok(())
}

/// Resolves after SIGTERM or SIGINT plus the drain time, during which readiness is false and new
/// inference requests are refused with 503. A second SIGTERM or SIGINT during the drain ends it at
/// once (requests in flight are still answered).
async fn drain_on_signal(
    state: Arc<AppState>,
    (mut term, mut int): (Signal, Signal),
    drain: Duration,
) {
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    state.draining.store(true, Ordering::Release);
    tracing::info!(
        signal = name,
        drain_ms = drain.as_millis() as u64,
        "shutting down: refusing new requests, finishing those in flight"
    );
    let second = tokio::select! {
        _ = tokio::time::sleep(drain) => None,
        _ = term.recv() => Some("SIGTERM"),
        _ = int.recv() => Some("SIGINT"),
    };
    if let Some(signal) = second {
        tracing::info!(signal, "second signal: ending the drain early");
    }
}
