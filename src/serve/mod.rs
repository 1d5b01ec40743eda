//! `pipe serve`: an HTTP inference server for an exported model that speaks the KServe v2 / Triton
//! protocol (health, metadata, JSON and binary tensors, classification), offers `POST /v1/classify`
//! for image files, batches concurrent requests dynamically, and exports Prometheus metrics.
//!
//! Layout: [`repository`] (the models and versions served, a Triton model repository and its
//! control modes), [`batcher`] (bounded queue, model workers), [`bounds`] (the batch limit by memory and by
//! time, the estimate of seconds per image, which queued requests are still run), [`kserve`]
//! (protocol messages), [`routes`] (HTTP routes and middleware), [`classify`] (`/v1/classify`),
//! [`metrics`], [`error`], [`cli`] (the command-line options). [`serve`] runs it all until SIGTERM or SIGINT, then drains: readiness turns
//! false, new requests get 503, requests in flight are answered, and it returns.

pub mod batcher;
pub mod bounds;
pub mod classify;
pub mod error;
pub mod grpc;
pub mod kserve;
pub mod metrics;
pub mod repository;
pub mod routes;
pub mod state;

pub use error::{ApiError, ServeError};

use crate::infer::BackendOptions;
use metrics::Metrics;
use repository::{ControlMode, Loader, Models, Repository};
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

/// What [`serve`] serves.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// One exported model, served as version 1 of `name` (`--model`, `--model-name`).
    File {
        /// The exported ONNX model.
        model: PathBuf,
        /// The model's name in URLs.
        name: String,
    },
    /// A Triton model repository (`--model-repository`).
    Repository {
        /// The repository folder: `<model>/config.pbtxt`, `<model>/<version>/model.onnx`.
        dir: PathBuf,
        /// How the server follows it (`--model-control-mode`).
        mode: ControlMode,
        /// Poll mode's interval between scans (`--repository-poll-secs`).
        poll: Duration,
        /// Explicit mode: the models to load at start (`--load-model`; `*` for all).
        load: Vec<String>,
    },
}

/// Everything [`serve`] needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model file or repository served.
    pub source: ModelSource,
    /// Engine, device, threads per instance (0 = the cores shared among instances), libonnxruntime.
    pub backend: BackendOptions,
    /// Address to listen on.
    pub host: String,
    /// Port (0 = any free port; the bound address is passed to `on_listening`).
    pub port: u16,
    /// Port of the KServe v2 gRPC service (`None`: HTTP only; 0 = any free port).
    pub grpc_port: Option<u16>,
    /// Largest gRPC message either way, bytes (larger: `RESOURCE_EXHAUSTED`).
    pub grpc_max_message: usize,
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
    /// The bound address of the gRPC service, if any.
    pub grpc_addr: Option<SocketAddr>,
    /// The model versions live at the start, by name and version.
    pub models: Vec<ListeningModel>,
}

/// One model version live when the server starts listening.
#[derive(Debug, Clone)]
pub struct ListeningModel {
    /// The model's name in URLs.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// The file it was loaded from.
    pub file: PathBuf,
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

/// Loads the model (or the repository's models) into `opts.instances` workers per version,
/// listens, calls `on_listening` with the bound address, and serves until SIGTERM or SIGINT (in
/// poll mode rescanning the repository meanwhile); then drains and returns what it did.
///
/// # Errors
/// [`ServeError`] when the model cannot be loaded (with `--model`; a repository's bad models are
/// logged and skipped), the repository cannot be read, the address cannot be bound or the runtime
/// fails.
pub fn serve(
    opts: &ServeOptions,
    on_listening: impl FnOnce(&Listening),
) -> Result<ServeSummary, ServeError> {
    init_logging(opts.log_level, opts.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pipe-http")
        .build()?;
    // The ports first: one in use stops the server before any model is loaded.
    let listeners = runtime.block_on(bind_listeners(opts))?;
    let metrics = Arc::new(Metrics::default());
    let mut backend = opts.backend.clone();
    if opts.instances > 1 && backend.threads == 0 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        backend.threads = (cores / opts.instances).max(1);
    }
    let loader = Loader {
        backend: backend.clone(),
        max_batch: opts.max_batch,
        max_delay: opts.max_delay,
        queue: opts.queue,
        instances: opts.instances,
        request_timeout: opts.request_timeout,
        metrics: metrics.clone(),
    };
    tracing::info!(
        instances = opts.instances,
        threads = backend.threads,
        "{} model instance(s) per model version, {} each",
        opts.instances,
        match backend.threads {
            0 => "on the backend's default threads".to_string(),
            t => format!("{t} thread(s)"),
        }
    );
    let (models, repository) = match &opts.source {
        ModelSource::File { model, name } => (Models::single(loader.load(name, 1, model)?), None),
        ModelSource::Repository {
            dir, mode, load, ..
        } => {
            let repo = Repository::new(dir.clone(), *mode, loader);
            let models = Models::default();
            let listing = |error: std::io::Error| ServeError::Repository {
                dir: dir.clone(),
                error,
            };
            match mode {
                ControlMode::None | ControlMode::Poll => {
                    repo.sync_all(&models).map_err(listing)?;
                }
                ControlMode::Explicit => {
                    repo.list(&models).map_err(listing)?;
                    let all = load.iter().any(|n| n == "*");
                    let names = if all {
                        repository::model_names(dir).map_err(listing)?
                    } else {
                        load.clone()
                    };
                    for name in names {
                        if let Err(e) = repo.sync_model(&models, &name) {
                            tracing::warn!(model = %name, error = %e, "--load-model {name}: {e}");
                            models.unload(&name, &e);
                        }
                    }
                }
            }
            (models, Some(repo))
        }
    };
    let state = Arc::new(AppState {
        models,
        repository,
        metrics: metrics.clone(),
        draining: AtomicBool::new(false),
        request_timeout: opts.request_timeout,
        max_body: opts.max_body,
    });
    let served = runtime.block_on(serve_http(state.clone(), opts, listeners, on_listening));
    // Every connection is closed: what was queued has been answered; let the workers end.
    for m in state.models.all() {
        m.batcher.shutdown()?;
    }
    served?;
    Ok(ServeSummary {
        answered: metrics.answered(),
        images: metrics.images(),
        refused: metrics.inference_requests_with_status(503),
    })
}

/// Poll mode: rescans the repository every `every`, off the async threads, until the server stops.
async fn poll_repository(state: Arc<AppState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let st = state.clone();
        let polled = tokio::task::spawn_blocking(move || {
            st.repository.as_ref().map(|repo| repo.sync_all(&st.models))
        })
        .await;
        match polled {
            Ok(Some(Ok(_))) => {
                let polls = state.metrics.record_repository_poll();
                tracing::debug!(polls, "repository scanned");
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "repository poll failed; the live models keep serving: {e}")
            }
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, "repository poll task failed: {e}"),
        }
    }
}

/// The HTTP listener on `--port` and, with `--grpc-port`, the gRPC one.
type Listeners = (tokio::net::TcpListener, Option<tokio::net::TcpListener>);

/// Binds the HTTP port and, with `--grpc-port`, the gRPC port of `opts`.
///
/// # Errors
/// [`ServeError::Bind`] naming the address that cannot be bound (in use, not local, no permission).
async fn bind_listeners(opts: &ServeOptions) -> Result<Listeners, ServeError> {
    let bind = |port: u16| async move {
        let addr = format!("{}:{}", opts.host, port);
        tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|error| ServeError::Bind { addr, error })
    };
    let http = bind(opts.port).await?;
    let grpc = match opts.grpc_port {
        None => None,
        Some(port) => Some(bind(port).await?),
    };
    Ok((http, grpc))
}

async fn serve_http(
    state: Arc<AppState>,
    opts: &ServeOptions,
    (listener, grpc_listener): Listeners,
    on_listening: impl FnOnce(&Listening),
) -> Result<(), ServeError> {
    // Signal handlers first: a SIGTERM right after the address is printed must drain, not kill.
    let signals = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let listening = Listening {
        addr: listener.local_addr()?,
        grpc_addr: match &grpc_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        },
        models: state
            .models
            .all()
            .iter()
            .map(|m| ListeningModel {
                name: m.name.clone(),
                version: m.version,
                file: m.file.clone(),
                backend: m.batcher.backend_name(),
                classes: m.info.classes.len(),
                input_size: m.info.input_size,
                max_batch: m.batcher.config().max_batch,
            })
            .collect(),
    };
    tracing::info!(addr = %listening.addr, models = listening.models.len(), "listening");
    on_listening(&listening);
    let poller = match &opts.source {
        ModelSource::Repository {
            mode: ControlMode::Poll,
            poll,
            ..
        } => Some(tokio::spawn(poll_repository(state.clone(), *poll))),
        _ => None,
    };
    let app = routes::router(state.clone());
    // The drain ends both servers: HTTP through axum's graceful shutdown, gRPC when told so.
    let (stopped, stop) = tokio::sync::watch::channel(false);
    let drain_time = opts.drain;
    let drain = {
        let state = state.clone();
        async move {
            drain_on_signal(state, signals, drain_time).await;
            let _ = stopped.send(true);
        }
    };
    let http = async {
        axum::serve(listener, app)
            .with_graceful_shutdown(drain)
            .await
    };
    let mut closing = stop.clone();
    let servers = async {
        match grpc_listener {
            None => http.await?,
            Some(l) => {
                let mut stop = stop.clone();
                let grpc = tonic::transport::Server::builder()
                    .layer(tower::util::MapResponseLayer::new(grpc::resource_exhausted))
                    .add_service(grpc::Service::server(state.clone(), opts.grpc_max_message))
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(l),
                        async move {
                            let _ = stop.wait_for(|s| *s).await;
                        },
                    );
                let (h, g) = tokio::join!(http, grpc);
                h?;
                g.map_err(|e| ServeError::Worker(format!("gRPC server: {e}")))?;
            }
        }
        Ok::<(), ServeError>(())
    };
    // After the drain, open connections get one request timeout to close: every request in flight
    // is answered within it, and a client that never acknowledges the close (an HTTP/2 client that
    // stops reading never answers the PING that follows the GOAWAY) cannot keep the server up.
    let close_bound = opts.request_timeout;
    let closed = async move {
        let _ = closing.wait_for(|s| *s).await;
        tokio::time::sleep(close_bound).await;
    };
    tokio::select! {
        served = servers => served?,
        () = closed => tracing::warn!(
            waited_ms = close_bound.as_millis() as u64,
            "connections still open a request timeout after the drain (clients that did not \
             acknowledge the close): ending them"
        ),
    }
    if let Some(p) = poller {
        p.abort();
    }
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
