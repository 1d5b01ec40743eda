//! `pipe serve`: its arguments, and the server run until SIGTERM or Ctrl-C.

use super::BackendArgs;
use anyhow::Result;
use pipe::serve::repository::ControlMode;
use pipe::serve::{ModelSource, ServeOptions, DEFAULT_MODEL_NAME};
use pipe::Error;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Log verbosity of `pipe serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Also one line per request and the server's start and stop.
    Info,
    /// Also the queue's admissions and releases (images, and the in-flight count after) and each
    /// scan of the model repository in poll mode.
    Debug,
}

/// Arguments of `pipe serve`.
#[derive(clap::Args)]
#[command(mut_arg("threads", |a| a.help("Engine threads per instance (0 = the cores divided among the instances)")))]
#[command(mut_arg("backend", |a| a.help("Inference engine: tract (pure Rust) or ort (ONNX Runtime, usually faster on CPU; CUDA with --device cuda)")))]
pub struct ServeArgs {
    /// Exported model to serve, as version 1 of --model-name.
    #[arg(
        long,
        default_value = "onnx/model.onnx",
        conflicts_with = "model_repository"
    )]
    pub model: PathBuf,
    /// Serve a Triton model repository instead of one --model: DIR/<model>/config.pbtxt and
    /// DIR/<model>/<version>/model.onnx, as `pipe export --triton DIR` writes (several models and
    /// versions; each config's version_policy says which versions: latest N, all or specific, by
    /// default the latest). URLs name the model by its folder, /v2/models/<model>[/versions/<v>]/...
    /// (without a version: the highest live one); POST /v2/repository/index lists them.
    #[arg(long, value_name = "DIR")]
    pub model_repository: Option<PathBuf>,
    /// With --model-repository, Triton's control modes: none (load every model at start), poll (also
    /// rescan the repository every --repository-poll-secs: a new or changed version goes live once it
    /// loaded and passed a warm-up inference; a file that fails is refused and logged and the live
    /// versions keep serving; removed versions are unloaded), explicit (load only --load-model at
    /// start; POST /v2/repository/models/<model>/load and /unload do the rest).
    #[arg(long, value_enum, default_value_t = ControlMode::None, requires = "model_repository")]
    pub model_control_mode: ControlMode,
    /// Poll mode's interval between scans of the repository, seconds.
    #[arg(long, default_value_t = 15, value_name = "SECS")]
    pub repository_poll_secs: u64,
    /// Explicit mode: a model to load at start (repeatable; * for all). A name with no folder in the
    /// repository stops the command before the server starts, as in Triton; a model whose versions
    /// fail to load is listed UNAVAILABLE with the reason, and the others are served.
    #[arg(long, value_name = "MODEL", requires = "model_repository")]
    pub load_model: Vec<String>,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Address to listen on (0.0.0.0 for all interfaces, e.g. in a container).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (Triton's name: --http-port); 0 picks a free port. The bound address is
    /// printed on stdout.
    #[arg(long, visible_alias = "http-port", default_value_t = 8000)]
    pub port: u16,
    /// Also serve KServe v2 over gRPC (Triton's `GRPCInferenceService`, as tritonclient.grpc speaks it)
    /// on this port (0: a free port; Triton's default is 8001), through the same batching as HTTP.
    #[arg(long, value_name = "PORT")]
    pub grpc_port: Option<u16>,
    /// Largest gRPC message either way, MiB (larger: RESOURCE_EXHAUSTED); the default holds a batch
    /// of 36 photos at 384 pixels as FP32.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub grpc_max_message_mb: usize,
    /// The model's name in /v2/models/<name>/... URLs (the name `pipe export --triton` gives it).
    #[arg(long, default_value = DEFAULT_MODEL_NAME, conflicts_with = "model_repository")]
    pub model_name: String,
    /// Most images per backend run (default 32): concurrent requests are gathered into batches up to
    /// this size, lowered to the memory bound of the model's input size (pipe infer's batch: 256 up to
    /// 64 pixels, 20 at 224, 7 at 384; a larger value given is lowered with a warning) and, batch by
    /// batch, to the images the backend is expected to run in half of --request-timeout-ms (by a
    /// warm-up at start, then the real batches). The startup log says the values.
    #[arg(long, value_name = "N")]
    pub max_batch: Option<usize>,
    /// Longest time a batch waits for more requests after its oldest image arrived, milliseconds.
    #[arg(long, default_value_t = 5, value_name = "MS")]
    pub max_delay_ms: u64,
    /// Most images admitted and not yet answered (queued or running); beyond it requests get 503 with
    /// Retry-After at once. A request with more images than this gets 413.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub queue: usize,
    /// Model instances, each on its own thread with its own copy of the model: one gathers a batch
    /// while another runs (on 2 busy cores, 2 instances of 1 thread served 1.44x the images/s of
    /// one instance of 2 threads with ort: 101.4 against 70.3, docs/RESULTS.md).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub instances: usize,
    /// Largest request body, MiB (larger: 413).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub max_body_mb: usize,
    /// Longest time from a request's arrival to its answer, milliseconds (a body sent more slowly:
    /// 408; inference not done in time: 503).
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub request_timeout_ms: u64,
    /// On SIGTERM or Ctrl-C, keep answering this long (readiness false, 503 with Connection: close to
    /// new requests) before closing the listener, so that load balancers stop routing; requests in
    /// flight are always finished. A second SIGTERM or Ctrl-C ends the drain at once. Connections
    /// still open one --request-timeout-ms after the drain are ended.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub drain_ms: u64,
    /// Log level of the structured logs on stderr (info: one line per request).
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// Write the logs as JSON lines (every line on stderr, the closing summary included).
    #[arg(long)]
    pub log_json: bool,
}

impl ServeArgs {
    /// Serves the model until SIGTERM or Ctrl-C, printing the bound address on stdout when it
    /// listens and a summary on stderr when it stops.
    ///
    /// # Errors
    /// Bad options, an unusable model, a port that cannot be bound; as [`pipe::serve::serve`].
    pub fn run(self, matches: Option<&clap::ArgMatches>) -> Result<()> {
        if self.model_repository.is_none() {
            let given = |id: &str| {
                matches.is_some_and(|m| {
                    m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
                })
            };
            let repository_only = [
                ("model_control_mode", "--model-control-mode"),
                ("repository_poll_secs", "--repository-poll-secs"),
                ("load_model", "--load-model"),
            ];
            if let Some((_, option)) = repository_only.iter().find(|(id, _)| given(id)) {
                return Err(Error::Usage(format!(
                    "{option} applies to a --model-repository; with --model the one model is \
                     loaded at start and served until the server stops"
                ))
                .into());
            }
        }
        let log_json = self.log_json;
        let opts = self.into_options()?;
        let summary = pipe::serve::serve(&opts, |l| {
            match (&opts.source, l.models.as_slice()) {
                (ModelSource::File { .. }, [m]) => println!(
                    "pipe serve: listening on http://{} (model '{}' from {}, backend {}, input {s}x{s}, {} classes, max batch {})",
                    l.addr,
                    m.name,
                    m.file.display(),
                    m.backend,
                    m.classes,
                    m.max_batch,
                    s = m.input_size
                ),
                _ => {
                    let live: Vec<String> = l
                        .models
                        .iter()
                        .map(|m| format!("'{}' version {}", m.name, m.version))
                        .collect();
                    let dir = match &opts.source {
                        ModelSource::Repository { dir, .. } => dir.display().to_string(),
                        ModelSource::File { model, .. } => model.display().to_string(),
                    };
                    println!(
                        "pipe serve: listening on http://{} (model repository {dir}: {})",
                        l.addr,
                        if live.is_empty() {
                            "no model live".to_string()
                        } else {
                            live.join(", ")
                        }
                    );
                }
            }
            if let Some(grpc) = l.grpc_addr {
                println!("pipe serve: gRPC (KServe v2) on {grpc}");
            }
            let _ = std::io::stdout().flush();
        })?;
        let message = format!(
            "pipe serve: stopped; answered {} ({}), refused {} with 503",
            pipe::util::plural(summary.answered as usize, "inference request"),
            pipe::util::plural(summary.images as usize, "image"),
            summary.refused
        );
        if log_json {
            // With --log-json every stderr line is a JSON object, this one too (whatever the level).
            let line = serde_json::json!({
                "level": "INFO",
                "fields": {
                    "message": message,
                    "answered": summary.answered,
                    "images": summary.images,
                    "refused": summary.refused,
                }
            });
            eprintln!("{line}");
        } else {
            eprintln!("{message}");
        }
        Ok(())
    }

    /// Checks the options and turns them into the library's [`ServeOptions`].
    ///
    /// # Errors
    /// [`Error::Usage`] for a zero size or count, a missing model file or repository, or a
    /// `--load-model` name with no folder in the repository.
    fn into_options(self) -> pipe::Result<ServeOptions> {
        for (option, value) in [
            ("--max-batch", self.max_batch.unwrap_or(1) as u64),
            ("--queue", self.queue as u64),
            ("--instances", self.instances as u64),
            ("--max-body-mb", self.max_body_mb as u64),
            ("--grpc-max-message-mb", self.grpc_max_message_mb as u64),
            ("--request-timeout-ms", self.request_timeout_ms),
        ] {
            if value == 0 {
                return Err(Error::Usage(format!("{option} must be at least 1")));
            }
        }
        let source = match self.model_repository {
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(Error::Usage(format!(
                        "{}: model repository not found (a folder of <model>/config.pbtxt and <model>/<version>/model.onnx, as `pipe export --triton DIR` writes)",
                        dir.display()
                    )));
                }
                if self.repository_poll_secs == 0 {
                    return Err(Error::Usage(
                        "--repository-poll-secs must be at least 1".into(),
                    ));
                }
                if !self.load_model.is_empty() && self.model_control_mode != ControlMode::Explicit {
                    return Err(Error::Usage(
                        "--load-model needs --model-control-mode explicit (the other modes load every model)".into(),
                    ));
                }
                // As Triton refuses to start when a model to load is not in the repository.
                let unknown: Vec<&String> = self
                    .load_model
                    .iter()
                    .filter(|n| n.as_str() != "*" && !dir.join(n).is_dir())
                    .collect();
                if let Some(name) = unknown.first() {
                    let names = pipe::serve::repository::model_names(&dir).unwrap_or_default();
                    return Err(Error::Usage(format!(
                        "--load-model {name}: no model '{name}' in the repository {} (its models: {})",
                        dir.display(),
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    )));
                }
                ModelSource::Repository {
                    dir,
                    mode: self.model_control_mode,
                    poll: Duration::from_secs(self.repository_poll_secs),
                    load: self.load_model,
                }
            }
            None => {
                if let Some(e) = pipe::onnx::read::folder_error(&self.model) {
                    return Err(e);
                }
                if !self.model.is_file() {
                    return Err(Error::Usage(format!(
                        "{}: model not found; export one with `pipe export {}` (after `pipe train`; `make demo` does both)",
                        self.model.display(),
                        self.model.display()
                    )));
                }
                ModelSource::File {
                    model: self.model,
                    name: self.model_name,
                }
            }
        };
        Ok(ServeOptions {
            backend: self.backend.options(),
            source,
            host: self.host,
            port: self.port,
            grpc_port: self.grpc_port,
            grpc_max_message: self.grpc_max_message_mb.saturating_mul(1 << 20),
            max_batch: self.max_batch,
            max_delay: Duration::from_millis(self.max_delay_ms),
            queue: self.queue,
            instances: self.instances,
            max_body: self.max_body_mb.saturating_mul(1 << 20),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            drain: Duration::from_millis(self.drain_ms),
            log_level: match self.log_level {
                LogLevel::Error => tracing::Level::ERROR,
                LogLevel::Warn => tracing::Level::WARN,
                LogLevel::Info => tracing::Level::INFO,
                LogLevel::Debug => tracing::Level::DEBUG,
            },
            log_json: self.log_json,
        })
    }
}
