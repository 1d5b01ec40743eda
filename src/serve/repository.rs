//! A Triton model repository (`pipe serve --model-repository DIR`): the layout `pipe export --triton`
//! writes, `DIR/<model>/config.pbtxt` and `DIR/<model>/<version>/model.onnx`, with several models and
//! versions served at once.
//!
//! - [`ModelConfig::parse`] reads `config.pbtxt` (protobuf text format) against Triton's own
//!   `inference.ModelConfig` message, whose descriptor `proto/triton.binpb` is taken from the
//!   official `tritonclient` wheel (`scripts/triton_descriptors.py`): a field Triton does not know is
//!   an error, as in Triton.
//! - [`VersionPolicy`] is the config's `version_policy` (latest N, all, specific; Triton's default is
//!   the latest one).
//! - [`Models`] holds what is live: per model name, the loaded versions, each with its own batcher.
//!   A request holds its version (an `Arc`) until answered, so unloading or replacing a version never
//!   cuts a request short.
//! - [`Repository`] brings a model to what its folder says ([`Repository::sync_model`]): a new or
//!   changed version goes live only once it has loaded and passed the batcher's warm-up inference; a
//!   file that fails (truncated, half-written, not one of pipe's models) is refused and logged, the
//!   versions already live keep serving, and the same file is not retried until it changes.

use super::batcher::{BatchConfig, Batcher};
use super::bounds::MaxBatch;
use super::error::{ApiError, ServeError};
use super::metrics::Metrics;
use crate::infer::BackendOptions;
use crate::onnx::ModelInfo;
use axum::http::StatusCode;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// Triton's `inference.ModelConfig` protocol, as a serialized `FileDescriptorSet` taken from the
/// `tritonclient` wheel's compiled `model_config_pb2` (see `scripts/triton_descriptors.py`).
static MODEL_CONFIG_DESCRIPTORS: &[u8] = include_bytes!("../../proto/triton.binpb");

/// The file a version folder holds when `config.pbtxt` names none (Triton's default for ONNX).
pub const DEFAULT_MODEL_FILENAME: &str = "model.onnx";

/// How the server follows the repository: Triton's `--model-control-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ControlMode {
    /// Load every model at start; the repository API cannot load or unload.
    None,
    /// Load every model at start, then rescan the repository every `--repository-poll-secs` and
    /// load new or changed versions, unload removed ones.
    Poll,
    /// Load only the models named by `--load-model` at start; the repository API loads and unloads.
    Explicit,
}

/// Which versions of a model are served: Triton's `ModelVersionPolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The N highest version numbers present (Triton's default: 1).
    Latest(u32),
    /// Every version present.
    All,
    /// The listed versions, those of them that are present.
    Specific(Vec<u64>),
}

impl VersionPolicy {
    /// The policy in the JSON form of Triton's `ModelVersionPolicy` (`{"latest": {"num_versions":
    /// 1}}`, `{"all": {}}`, `{"specific": {"versions": [1, 3]}}`), as `/config` reports it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            VersionPolicy::Latest(n) => serde_json::json!({"latest": {"num_versions": n}}),
            VersionPolicy::All => serde_json::json!({"all": {}}),
            VersionPolicy::Specific(v) => serde_json::json!({"specific": {"versions": v}}),
        }
    }

    /// The versions of `present` (any order) that the policy serves, ascending.
    pub fn select(&self, present: &[u64]) -> Vec<u64> {
        let mut v: Vec<u64> = present.to_vec();
        v.sort_unstable();
        v.dedup();
        match self {
            VersionPolicy::All => v,
            VersionPolicy::Latest(n) => {
                let keep = (*n as usize).min(v.len());
                v.split_off(v.len() - keep)
            }
            VersionPolicy::Specific(list) => v.into_iter().filter(|x| list.contains(x)).collect(),
        }
    }
}

/// What pipe reads from a model's `config.pbtxt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// The `name` field, when given (it must equal the model's folder name).
    pub name: Option<String>,
    /// The `version_policy` field, or Triton's default (the latest version).
    pub policy: VersionPolicy,
    /// The `default_model_filename` field, or `model.onnx`.
    pub model_filename: String,
    /// The `backend` or `platform` field, when given (`backend: "onnxruntime"`).
    pub runtime: Option<(String, String)>,
    /// The `input` entries: name and `dims` (without the batch dimension; -1 any size).
    pub inputs: Vec<(String, Vec<i64>)>,
    /// The `output` entries: name and `dims`.
    pub outputs: Vec<(String, Vec<i64>)>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            name: None,
            policy: VersionPolicy::Latest(1),
            model_filename: DEFAULT_MODEL_FILENAME.into(),
            runtime: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }
}

/// Whether `declared` dims (empty: not given; -1: any size) fit `actual`.
fn dims_fit(declared: &[i64], actual: &[i64]) -> bool {
    declared.is_empty()
        || (declared.len() == actual.len()
            && declared.iter().zip(actual).all(|(d, a)| *d == -1 || d == a))
}

fn dims_text(dims: &[i64]) -> String {
    let d: Vec<String> = dims.iter().map(i64::to_string).collect();
    format!("[{}]", d.join(", "))
}

impl ModelConfig {
    /// Parses `config.pbtxt` text as Triton's `inference.ModelConfig`.
    ///
    /// # Errors
    /// A message naming what is wrong: not protobuf text format, a field `ModelConfig` lacks, a
    /// `latest` policy of 0 versions, a `specific` policy with no or negative versions.
    pub fn parse(text: &str) -> Result<Self, String> {
        use prost_reflect::{DescriptorPool, DynamicMessage, Value};
        let pool = DescriptorPool::decode(MODEL_CONFIG_DESCRIPTORS)
            .map_err(|e| format!("Triton's model_config descriptor: {e}"))?;
        let desc = pool
            .get_message_by_name("inference.ModelConfig")
            .ok_or("Triton's model_config descriptor lacks inference.ModelConfig")?;
        let msg = DynamicMessage::parse_text_format(desc, &colon_before_lists(text))
            .map_err(|e| e.to_string())?;
        let string = |m: &DynamicMessage, field: &str| -> Option<String> {
            m.has_field_by_name(field)
                .then(|| m.get_field_by_name(field))
                .flatten()
                .and_then(|v| v.as_str().map(str::to_string))
                .filter(|s| !s.is_empty())
        };
        let tensors = |field: &str| -> Vec<(String, Vec<i64>)> {
            let Some(list) = msg.get_field_by_name(field) else {
                return Vec::new();
            };
            let Value::List(list) = list.as_ref() else {
                return Vec::new();
            };
            list.iter()
                .filter_map(Value::as_message)
                .map(|t| {
                    let dims = match t.get_field_by_name("dims").as_deref() {
                        Some(Value::List(d)) => d.iter().filter_map(Value::as_i64).collect(),
                        _ => Vec::new(),
                    };
                    (string(t, "name").unwrap_or_default(), dims)
                })
                .collect()
        };
        let runtime = ["backend", "platform"]
            .into_iter()
            .find_map(|f| string(&msg, f).map(|v| (f.to_string(), v)));
        let mut cfg = ModelConfig {
            name: string(&msg, "name"),
            runtime,
            inputs: tensors("input"),
            outputs: tensors("output"),
            ..ModelConfig::default()
        };
        if let Some(file) = string(&msg, "default_model_filename") {
            cfg.model_filename = file;
        }
        if msg.has_field_by_name("version_policy") {
            let policy = msg
                .get_field_by_name("version_policy")
                .ok_or("version_policy is not a field of ModelConfig")?;
            let policy = policy
                .as_message()
                .ok_or("version_policy is not a message")?;
            let sub = |name: &str| {
                policy
                    .has_field_by_name(name)
                    .then(|| policy.get_field_by_name(name))
                    .flatten()
            };
            if let Some(latest) = sub("latest") {
                let n = latest
                    .as_message()
                    .and_then(|m| m.get_field_by_name("num_versions"))
                    .and_then(|v| v.as_u32())
                    .unwrap_or(0);
                if n == 0 {
                    return Err("version_policy latest: num_versions must be at least 1".into());
                }
                cfg.policy = VersionPolicy::Latest(n);
            } else if sub("all").is_some() {
                cfg.policy = VersionPolicy::All;
            } else if let Some(specific) = sub("specific") {
                let versions = specific
                    .as_message()
                    .and_then(|m| m.get_field_by_name("versions"))
                    .and_then(|v| match v.as_ref() {
                        Value::List(l) => Some(l.iter().filter_map(Value::as_i64).collect()),
                        _ => None,
                    })
                    .unwrap_or_else(Vec::new);
                if versions.is_empty() || versions.iter().any(|&v| v < 1) {
                    return Err(
                        "version_policy specific: versions must list at least one version, each at least 1"
                            .into(),
                    );
                }
                cfg.policy = VersionPolicy::Specific(versions.iter().map(|&v| v as u64).collect());
            }
        }
        Ok(cfg)
    }
}

impl ModelConfig {
    /// Checks what the config declares against the model file: the backend or platform is ONNX
    /// Runtime's (pipe serves ONNX files, with tract or ONNX Runtime), the inputs and outputs are the
    /// file's (`images` with dims `[S, S, 3]`, and its output with `[classes]`), as Triton refuses
    /// a config that does not fit its model.
    ///
    /// # Errors
    /// A message naming the field, what the config says and what the file has.
    pub fn check(&self, info: &ModelInfo) -> Result<(), String> {
        if let Some((field, value)) = &self.runtime {
            let fits = match field.as_str() {
                "backend" => value == "onnxruntime",
                _ => value == "onnxruntime_onnx",
            };
            if !fits {
                return Err(format!(
                    "config.pbtxt says {field} \"{value}\"; pipe serves ONNX files (backend \"onnxruntime\" or platform \"onnxruntime_onnx\")"
                ));
            }
        }
        let s = info.input_size as i64;
        let expected = [
            (
                "input",
                crate::contract::INPUT_NAME,
                vec![s, s, 3],
                &self.inputs,
            ),
            (
                "output",
                info.output_name.as_str(),
                vec![info.classes.len() as i64],
                &self.outputs,
            ),
        ];
        for (kind, name, dims, declared) in expected {
            for (n, d) in declared {
                if n != name {
                    return Err(format!(
                        "config.pbtxt declares {kind} '{n}'; the model's {kind} is '{name}'"
                    ));
                }
                if !dims_fit(d, &dims) {
                    return Err(format!(
                        "config.pbtxt gives {kind} '{n}' dims {}; the model's are {}",
                        dims_text(d),
                        dims_text(&dims)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `text` with a `:` put between a field name and a `[` that follows it without one.
///
/// The text format lets the colon go before a list of messages (`input [ { ... } ]`, the form
/// Triton's own examples and `pipe export --triton` use), and Triton's C++ parser accepts it, but
/// prost-reflect's parser requires it; `field: [ ... ]` means the same for every list. String
/// literals and `#` comments are copied unchanged.
fn colon_before_lists(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    // Whether the last token outside strings and comments was a field name (an identifier).
    let mut after_name = false;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                out.push(c);
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == '\\' {
                        if let Some(e) = chars.next() {
                            out.push(e);
                        }
                    } else if d == c {
                        break;
                    }
                }
                after_name = false;
            }
            '#' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '[' if after_name => {
                out.push_str(": [");
                after_name = false;
            }
            c if c.is_alphanumeric() || c == '_' => {
                out.push(c);
                while let Some(&d) = chars.peek() {
                    if d.is_alphanumeric() || d == '_' || d == '.' {
                        out.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                // Numbers and enum values are followed by ',' ']' or a field name, never '['.
                after_name = true;
            }
            c if c.is_whitespace() => out.push(c),
            c => {
                out.push(c);
                after_name = false;
            }
        }
    }
    out
}

/// A model's folder in the repository as found on disk.
#[derive(Debug)]
pub struct ModelDir {
    /// The folder's name: the model's name.
    pub name: String,
    /// Its `config.pbtxt` (absent: Triton's defaults), or why it cannot be used.
    pub config: Result<ModelConfig, String>,
    /// Numeric subfolders: version -> the model file it should hold (which may be missing: such a
    /// version is selected by the policy as Triton does, and refused).
    pub versions: BTreeMap<u64, PathBuf>,
}

/// The size and modification time of a model file: a version whose file's stamp changed is loaded
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Bytes.
    pub len: u64,
    /// Modification time.
    pub modified: Option<SystemTime>,
}

impl FileStamp {
    /// The stamp of `path` now.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

/// Reads one model's folder `dir/<name>`.
///
/// # Errors
/// When the folder cannot be listed.
pub fn read_model_dir(dir: &Path, name: &str) -> std::io::Result<ModelDir> {
    let folder = dir.join(name);
    let config_file = folder.join("config.pbtxt");
    let config = match std::fs::read_to_string(&config_file) {
        Ok(text) => ModelConfig::parse(&text)
            .map_err(|e| format!("{}: {e}", config_file.display()))
            .and_then(|c| match &c.name {
                Some(n) if n != name => Err(format!(
                    "{}: name \"{n}\" differs from the model's folder name \"{name}\"",
                    config_file.display()
                )),
                _ => Ok(c),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ModelConfig::default()),
        Err(e) => Err(format!("{}: {e}", config_file.display())),
    };
    let filename = config
        .as_ref()
        .map_or(DEFAULT_MODEL_FILENAME, |c| c.model_filename.as_str())
        .to_string();
    let mut versions = BTreeMap::new();
    for entry in std::fs::read_dir(&folder)? {
        let entry = entry?;
        let Some(v) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&v| v > 0)
        else {
            continue;
        };
        if entry.file_type()?.is_dir() {
            versions.insert(v, entry.path().join(&filename));
        }
    }
    Ok(ModelDir {
        name: name.to_string(),
        config,
        versions,
    })
}

/// The model folders of the repository `dir`: its subfolders, by name.
///
/// # Errors
/// When `dir` cannot be listed.
pub fn model_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            if let Some(name) = entry.file_name().to_str() {
                if !name.starts_with('.') {
                    names.push(name.to_string());
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

/// One loaded version of a model, with its own batching queue and model workers.
pub struct ServedModel {
    /// The model's name in URLs.
    pub name: String,
    /// Its version number (1 for `--model`).
    pub version: u64,
    /// The ONNX file it was loaded from.
    pub file: PathBuf,
    /// Input size, classes and output name.
    pub info: ModelInfo,
    /// The batching queue and model workers.
    pub batcher: Batcher,
    stamp: Option<FileStamp>,
}

impl ServedModel {
    /// The platform string of model metadata, as Triton names ONNX models (or tract's).
    pub fn platform(&self) -> &'static str {
        match self.batcher.backend_name() {
            "ort" => "onnxruntime_onnx",
            _ => "tract_onnx",
        }
    }
}

/// What loading a model version needs: the backend and the batching options of `pipe serve`.
#[derive(Debug, Clone)]
pub struct Loader {
    /// Engine, device, threads per instance, libonnxruntime.
    pub backend: BackendOptions,
    /// `--max-batch` as given.
    pub max_batch: Option<usize>,
    /// Longest wait for a batch to fill.
    pub max_delay: Duration,
    /// Most images admitted and not yet answered, per model version.
    pub queue: usize,
    /// Model instances per version.
    pub instances: usize,
    /// Longest time from a request's arrival to its response.
    pub request_timeout: Duration,
    /// Server metrics.
    pub metrics: Arc<Metrics>,
}

impl Loader {
    /// Opens `file` as version `version` of `name`: reads its metadata, starts its batcher's workers
    /// and runs their warm-up inference (blocking; seconds for a large model).
    ///
    /// # Errors
    /// [`ServeError`] when the file is not one of pipe's models, cannot be opened by the backend or
    /// fails its warm-up.
    pub fn load(&self, name: &str, version: u64, file: &Path) -> Result<ServedModel, ServeError> {
        self.load_checked(name, version, file, |_| Ok(()))
    }

    /// [`Loader::load`], with `check` run on the file's metadata before anything starts (a
    /// `config.pbtxt` that must fit it).
    ///
    /// # Errors
    /// As [`Loader::load`]; `check`'s message as an invalid file.
    pub fn load_checked(
        &self,
        name: &str,
        version: u64,
        file: &Path,
        check: impl Fn(&ModelInfo) -> Result<(), String>,
    ) -> Result<ServedModel, ServeError> {
        let stamp = FileStamp::of(file).ok();
        let info = ModelInfo::read(file)?;
        check(&info).map_err(|e| crate::error::Error::invalid(file, e))?;
        let max_batch = MaxBatch::new(self.max_batch, info.input_size);
        if max_batch.lowered_from_explicit() {
            tracing::warn!(
                model = name,
                version,
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
            max_delay: self.max_delay,
            queue: self.queue,
            instances: self.instances,
            input_size: info.input_size,
            classes: info.classes.len(),
            request_timeout: self.request_timeout,
        };
        let batcher = Batcher::start(file, &self.backend, cfg, self.metrics.clone())?;
        tracing::info!(
            model = name,
            version,
            file = %file.display(),
            backend = batcher.backend_name(),
            instances = self.instances,
            max_batch = max_batch.effective,
            memory_bound = max_batch.memory_bound,
            secs_per_image = batcher.pace().secs_per_image(),
            batch_limit = batcher.batch_limit(),
            "loaded: {} instance(s), at most {} images per backend run (--max-batch {}, memory bound {} at {s}x{s}); warm-up {:.4} s per image",
            self.instances,
            max_batch.effective,
            max_batch.requested,
            max_batch.memory_bound,
            batcher.pace().secs_per_image(),
            s = info.input_size
        );
        let precision = crate::contract::ModelMetadata::precision_from_props(&info.metadata);
        if precision == crate::contract::INT8 && batcher.backend_name() == "tract" {
            tracing::warn!(
                model = name,
                version,
                "an int8 model on tract, which {}",
                crate::infer::TRACT_INT8_HINT
            );
        }
        Ok(ServedModel {
            name: name.to_string(),
            version,
            file: file.to_path_buf(),
            info,
            batcher,
            stamp,
        })
    }
}

/// One model name's versions.
#[derive(Default)]
struct Slot {
    /// Live versions.
    live: BTreeMap<u64, Arc<ServedModel>>,
    /// Versions whose file failed to load, with the file's stamp then and why: not retried until
    /// the file changes.
    failed: BTreeMap<u64, (Option<FileStamp>, String)>,
    /// Why the model serves nothing (unloaded, a bad config), for the repository index.
    reason: Option<String>,
    /// Why the model's folder could not be read at the last sync (a bad `config.pbtxt`), while
    /// its live versions keep serving: logged once, shown in the index.
    sync_error: Option<String>,
    /// The `config.pbtxt` in force: the one the live versions were checked against and the policy
    /// chose them by.
    applied: Option<ModelConfig>,
}

/// One row of the repository index (`POST /v2/repository/index`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexEntry {
    /// The model's name.
    pub name: String,
    /// The version, absent for a model with none loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `READY` or `UNAVAILABLE`, Triton's states.
    pub state: &'static str,
    /// Why a model or version is unavailable.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The live models: name -> versions, each with its batcher.
#[derive(Default)]
pub struct Models {
    slots: RwLock<BTreeMap<String, Slot>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Models {
    /// A registry holding one model (`pipe serve --model`).
    pub fn single(model: ServedModel) -> Self {
        let models = Models::default();
        models.insert(model);
        models
    }

    /// Puts `model` live, replacing the same version of the same name (requests holding the old one
    /// finish on it).
    pub fn insert(&self, model: ServedModel) {
        let mut slots = write(&self.slots);
        let slot = slots.entry(model.name.clone()).or_default();
        slot.failed.remove(&model.version);
        slot.reason = None;
        slot.live.insert(model.version, Arc::new(model));
    }

    /// The version `version` of `name`, or its highest live version when `version` is `None` (as
    /// Triton routes `/v2/models/{name}`).
    ///
    /// # Errors
    /// 404 naming what is served when the model or version is not live.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<ServedModel>, ApiError> {
        let slots = read(&self.slots);
        let found = slots.get(name).and_then(|slot| match version {
            None => slot.live.values().next_back().cloned(),
            // A version that is not a number names no version.
            Some(v) => v
                .parse::<u64>()
                .ok()
                .and_then(|v| slot.live.get(&v).cloned()),
        });
        found.ok_or_else(|| {
            let served: Vec<String> = slots
                .iter()
                .flat_map(|(n, s)| s.live.keys().map(move |v| format!("'{n}' version {v}")))
                .collect();
            let what = match version {
                Some(v) => format!("model '{name}' version '{v}'"),
                None => format!("model '{name}'"),
            };
            let why = slots
                .get(name)
                .and_then(|s| s.reason.clone())
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!(
                    "{what} is not served here{why}; this server serves {}",
                    if served.is_empty() {
                        "no model".to_string()
                    } else {
                        served.join(", ")
                    }
                ),
            )
        })
    }

    /// The model `/v1/classify` uses when the request names none: the only model name served, at
    /// its highest version.
    ///
    /// # Errors
    /// 400 naming the models when several are served; 404 when none is.
    pub fn only(&self) -> Result<Arc<ServedModel>, ApiError> {
        let names: Vec<String> = read(&self.slots)
            .iter()
            .filter(|(_, s)| !s.live.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        match names.as_slice() {
            [one] => self.get(one, None),
            [] => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                "this server serves no model now",
            )),
            many => Err(ApiError::bad_request(
                "model",
                format!(
                    "this server serves several models ({}); name one with ?model=NAME",
                    many.join(", ")
                ),
            )),
        }
    }

    /// Every live version.
    pub fn all(&self) -> Vec<Arc<ServedModel>> {
        read(&self.slots)
            .values()
            .flat_map(|s| s.live.values().cloned())
            .collect()
    }

    /// The live version numbers of `name`, ascending.
    pub fn versions(&self, name: &str) -> Vec<u64> {
        read(&self.slots)
            .get(name)
            .map(|s| s.live.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The repository index: every live version (`READY`), every version that failed to load and
    /// every known model serving nothing (`UNAVAILABLE`, with the reason), by name and version.
    pub fn index(&self) -> Vec<IndexEntry> {
        let mut out = Vec::new();
        for (name, slot) in read(&self.slots).iter() {
            let mut versions: BTreeMap<u64, IndexEntry> = BTreeMap::new();
            for v in slot.live.keys() {
                versions.insert(
                    *v,
                    IndexEntry {
                        name: name.clone(),
                        version: Some(v.to_string()),
                        state: "READY",
                        reason: slot
                            .sync_error
                            .as_ref()
                            .map(|e| format!("serving, but the repository's latest change was not applied: {e}"))
                            .unwrap_or_default(),
                    },
                );
            }
            for (v, (_, why)) in &slot.failed {
                versions.entry(*v).or_insert_with(|| IndexEntry {
                    name: name.clone(),
                    version: Some(v.to_string()),
                    state: "UNAVAILABLE",
                    reason: why.clone(),
                });
            }
            if versions.is_empty() {
                out.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: "UNAVAILABLE",
                    reason: slot.reason.clone().unwrap_or_else(|| "unloaded".into()),
                });
            }
            out.extend(versions.into_values());
        }
        out
    }

    /// Takes every version of `name` out of service (requests holding one finish on it) and records
    /// `reason`; the name stays in the index.
    pub fn unload(&self, name: &str, reason: &str) {
        let mut slots = write(&self.slots);
        let slot = slots.entry(name.to_string()).or_default();
        slot.live.clear();
        slot.failed.clear();
        slot.reason = Some(reason.to_string());
    }

    /// What of `name` keeps serving after a refusal, for the log: "version(s) 1, 2 keep serving",
    /// or "no version of it is live".
    fn still_serving(&self, name: &str) -> String {
        let live: Vec<String> = self.versions(name).iter().map(u64::to_string).collect();
        if live.is_empty() {
            "no version of it is live".to_string()
        } else {
            format!("version(s) {} keep serving", live.join(", "))
        }
    }

    /// The version policy of `name`'s `config.pbtxt` in force; Triton's default (the latest
    /// version) for a model not from a repository (`--model`).
    pub fn policy(&self, name: &str) -> VersionPolicy {
        read(&self.slots)
            .get(name)
            .and_then(|s| s.applied.as_ref())
            .map_or(VersionPolicy::Latest(1), |c| c.policy.clone())
    }

    /// Records that syncing `name` failed with `error` (its live versions keep serving); whether
    /// this is news (the first such error, or a different one), to log it once.
    fn note_sync_error(&self, name: &str, error: &str) -> bool {
        let mut slots = write(&self.slots);
        let slot = slots.entry(name.to_string()).or_default();
        let news = slot.sync_error.as_deref() != Some(error);
        slot.sync_error = Some(error.to_string());
        news
    }

    /// Forgets `name` altogether (its folder left the repository).
    fn remove(&self, name: &str) {
        write(&self.slots).remove(name);
    }

    /// Names known (live or listed as unavailable).
    fn names(&self) -> Vec<String> {
        read(&self.slots).keys().cloned().collect()
    }
}

/// What [`Repository::sync_model`] did to one model.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Versions loaded (new, or their file changed).
    pub loaded: Vec<u64>,
    /// Versions taken out of service (no longer present or no longer selected by the policy).
    pub unloaded: Vec<u64>,
    /// Versions refused, with why (the live ones keep serving).
    pub refused: Vec<(u64, String)>,
}

/// The repository folder and how to load what it holds.
pub struct Repository {
    /// The repository folder (`--model-repository`).
    pub dir: PathBuf,
    /// How the server follows it.
    pub mode: ControlMode,
    loader: Loader,
    /// One load or unload at a time.
    busy: Mutex<()>,
}

impl Repository {
    /// A repository at `dir`, followed as `mode` says, whose models are loaded with `loader`.
    pub fn new(dir: PathBuf, mode: ControlMode, loader: Loader) -> Self {
        Repository {
            dir,
            mode,
            loader,
            busy: Mutex::new(()),
        }
    }

    /// Lists every model folder of the repository in `models` as unloaded (explicit mode's start).
    ///
    /// # Errors
    /// When the repository cannot be listed.
    pub fn list(&self, models: &Models) -> std::io::Result<()> {
        for name in model_names(&self.dir)? {
            if read(&models.slots).get(&name).is_none() {
                models.unload(&name, "unloaded");
            }
        }
        Ok(())
    }

    /// Brings model `name` to what its folder holds now (blocking): the versions its policy selects
    /// that are not live or whose file changed are loaded and, once warmed up, put live; versions no
    /// longer selected are unloaded; a version that fails to load is refused and logged while the
    /// live ones keep serving, and is not tried again until its file changes.
    ///
    /// # Errors
    /// When the model's folder is missing or its `config.pbtxt` is unusable (then nothing changes).
    pub fn sync_model(&self, models: &Models, name: &str) -> Result<SyncReport, String> {
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(format!("'{name}' is not a model name"));
        }
        let folder = self.dir.join(name);
        if !folder.is_dir() {
            return Err(format!(
                "no model '{name}' in the repository {}",
                self.dir.display()
            ));
        }
        let dir =
            read_model_dir(&self.dir, name).map_err(|e| format!("{}: {e}", folder.display()))?;
        let config = dir.config?;
        {
            let mut slots = write(&models.slots);
            let slot = slots.entry(name.to_string()).or_default();
            // A changed config must fit the live versions, or it is not applied (they keep serving
            // under the old one); once applied, versions refused before are tried again.
            if slot.applied.as_ref().is_some_and(|a| *a != config) {
                for m in slot.live.values() {
                    config.check(&m.info).map_err(|e| {
                        format!(
                            "{}/config.pbtxt: {e} (version {} is live; the changed config is not applied)",
                            folder.display(),
                            m.version
                        )
                    })?;
                }
                slot.failed.clear();
            }
            slot.applied = Some(config.clone());
            slot.sync_error = None;
        }
        let present: Vec<u64> = dir.versions.keys().copied().collect();
        let selected = config.policy.select(&present);
        let mut report = SyncReport::default();
        for &v in &selected {
            let file = &dir.versions[&v];
            let stamp = FileStamp::of(file).ok();
            let (live_stamp, failed_stamp) = {
                let slots = read(&models.slots);
                let slot = slots.get(name);
                (
                    slot.and_then(|s| s.live.get(&v)).map(|m| m.stamp),
                    slot.and_then(|s| s.failed.get(&v)).map(|f| f.0),
                )
            };
            if live_stamp.is_some_and(|s| s == stamp) || failed_stamp.is_some_and(|s| s == stamp) {
                continue;
            }
            let loaded = if stamp.is_none() {
                Err(format!(
                    "{}: the version folder holds no {} (config.pbtxt's default_model_filename, or model.onnx)",
                    file.display(),
                    config.model_filename
                ))
            } else {
                self.loader
                    .load_checked(name, v, file, |info| config.check(info))
                    .map_err(|e| {
                        // Most errors name the file already.
                        let e = e.to_string();
                        if e.contains(&file.display().to_string()) {
                            e
                        } else {
                            format!("{}: {e}", file.display())
                        }
                    })
            };
            match loaded {
                Ok(model) => {
                    models.insert(model);
                    tracing::info!(model = name, version = v, "version {v} of '{name}' is live");
                    report.loaded.push(v);
                }
                Err(why) => {
                    tracing::warn!(
                        model = name,
                        version = v,
                        error = %why,
                        "version {v} of '{name}' refused ({why}); {}",
                        models.still_serving(name)
                    );
                    write(&models.slots)
                        .entry(name.to_string())
                        .or_default()
                        .failed
                        .insert(v, (stamp, why.clone()));
                    report.refused.push((v, why));
                }
            }
        }
        let mut slots = write(&models.slots);
        let slot = slots.entry(name.to_string()).or_default();
        // A version no longer selected leaves once every selected version is live: while a
        // selected one is refused, the version it would replace keeps serving (unless its folder
        // is gone).
        let complete = selected.iter().all(|v| slot.live.contains_key(v));
        let gone: Vec<u64> = slot
            .live
            .keys()
            .copied()
            .filter(|v| !selected.contains(v) && (complete || !present.contains(v)))
            .collect();
        for v in gone {
            slot.live.remove(&v);
            tracing::info!(
                model = name,
                version = v,
                "version {v} of '{name}' unloaded (no longer in the repository or its version policy)"
            );
            report.unloaded.push(v);
        }
        slot.failed.retain(|v, _| selected.contains(v));
        if slot.live.is_empty() && slot.failed.is_empty() {
            slot.reason = Some(if present.is_empty() {
                "no version folder (a numeric subfolder holding the model file)".into()
            } else {
                "no version selected by its version policy".into()
            });
        } else {
            slot.reason = None;
        }
        Ok(report)
    }

    /// Loads every model of the repository (the start in none and poll modes, and each poll): see
    /// [`Repository::sync_model`]; models whose folder is gone are forgotten. Returns each model's
    /// report or why it could not be synced.
    ///
    /// # Errors
    /// When the repository folder cannot be listed (nothing changes).
    pub fn sync_all(
        &self,
        models: &Models,
    ) -> std::io::Result<Vec<(String, Result<SyncReport, String>)>> {
        let names = model_names(&self.dir)?;
        let mut out = Vec::new();
        for name in &names {
            let r = self.sync_model(models, name);
            if let Err(e) = &r {
                // Logged once per error, not at every poll; the index shows it.
                if models.note_sync_error(name, e) {
                    tracing::warn!(
                        model = %name,
                        error = %e,
                        "model '{name}' not synced: {e}; {}",
                        models.still_serving(name)
                    );
                }
                if models.versions(name).is_empty() {
                    models.unload(name, e);
                }
            }
            out.push((name.clone(), r));
        }
        for known in models.names() {
            if !names.contains(&known) {
                models.remove(&known);
                tracing::info!(model = %known, "model '{known}' left the repository: unloaded");
            }
        }
        Ok(out)
    }

    /// Takes `name` out of service (explicit mode's unload).
    ///
    /// # Errors
    /// When no such model is known.
    pub fn unload(&self, models: &Models, name: &str) -> Result<(), String> {
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !models.names().iter().any(|n| n == name) && !self.dir.join(name).is_dir() {
            return Err(format!(
                "no model '{name}' in the repository {}",
                self.dir.display()
            ));
        }
        models.unload(name, "unloaded");
        tracing::info!(model = name, "model '{name}' unloaded");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_pbtxt_gives_triton_s_version_policies() {
        let written = "name: \"m\"\nbackend: \"onnxruntime\"\nmax_batch_size: 8\n\
            input [ { name: \"x\" data_type: TYPE_FP32 dims: [ 32, 32, 3 ] } ]\n\
            dynamic_batching { max_queue_delay_microseconds: 1000 }\n";
        let c = ModelConfig::parse(written).unwrap();
        assert_eq!(c.name.as_deref(), Some("m"));
        assert_eq!(c.policy, VersionPolicy::Latest(1));
        assert_eq!(c.model_filename, "model.onnx");
        let c = ModelConfig::parse("version_policy: { latest: { num_versions: 2 } }").unwrap();
        assert_eq!(c.policy, VersionPolicy::Latest(2));
        let c = ModelConfig::parse("version_policy { all {} }").unwrap();
        assert_eq!(c.policy, VersionPolicy::All);
        let c = ModelConfig::parse("version_policy: { specific: { versions: [1, 3] } }").unwrap();
        assert_eq!(c.policy, VersionPolicy::Specific(vec![1, 3]));
        let c = ModelConfig::parse("default_model_filename: \"net.onnx\"").unwrap();
        assert_eq!(c.model_filename, "net.onnx");
        // The colon before a list is optional, also inside strings and comments nothing changes.
        let c = ModelConfig::parse(
            "# input [\nname: \"a [b\" version_policy { specific { versions [2, 5] } }",
        )
        .unwrap();
        assert_eq!(c.name.as_deref(), Some("a [b"));
        assert_eq!(c.policy, VersionPolicy::Specific(vec![2, 5]));
        // What `pipe export --triton` writes reads back.
        let info = crate::onnx::ModelInfo {
            input_size: 32,
            image: crate::data::ImageSpec::new(32, Default::default()),
            classes: vec!["a".into(), "b".into()],
            classes_from_metadata: true,
            output_name: "probabilities".into(),
            metadata: vec![],
            opset: 17,
            parameters: 0,
        };
        let dir = tempfile::tempdir().unwrap();
        crate::export::write_triton_config(dir.path(), "pipe_vgg16", &info, 64).unwrap();
        let text = std::fs::read_to_string(dir.path().join("config.pbtxt")).unwrap();
        let c = ModelConfig::parse(&text).unwrap();
        assert_eq!(c.name.as_deref(), Some("pipe_vgg16"));
        assert_eq!(c.policy, VersionPolicy::Latest(1));
        assert_eq!(c.inputs, vec![("images".to_string(), vec![32, 32, 3])]);
        assert_eq!(c.outputs, vec![("probabilities".to_string(), vec![2])]);
        assert_eq!(c.check(&info), Ok(()));
        // What does not fit the file is refused, naming what differs.
        let other = |from: &str, to: &str| {
            assert!(text.contains(from), "{from}");
            ModelConfig::parse(&text.replace(from, to))
                .unwrap()
                .check(&info)
                .unwrap_err()
        };
        let e = other("dims: [ 32, 32, 3 ]", "dims: [ 224, 224, 3 ]");
        assert!(
            e.contains("input 'images' dims [224, 224, 3]; the model's are [32, 32, 3]"),
            "{e}"
        );
        let e = other("dims: [ 2 ]", "dims: [ 10 ]");
        assert!(
            e.contains("output 'probabilities' dims [10]; the model's are [2]"),
            "{e}"
        );
        let e = other("name: \"probabilities\"", "name: \"logits\"");
        assert!(e.contains("declares output 'logits'"), "{e}");
        let e = other("backend: \"onnxruntime\"", "backend: \"pytorch\"");
        assert!(e.contains("backend \"pytorch\""), "{e}");
        let e = other("backend: \"onnxruntime\"", "platform: \"tensorrt_plan\"");
        assert!(e.contains("platform \"tensorrt_plan\""), "{e}");
        // -1 (any size) fits, and so does the platform name of ONNX Runtime.
        let any = text
            .replace("dims: [ 32, 32, 3 ]", "dims: [ -1, -1, 3 ]")
            .replace("backend: \"onnxruntime\"", "platform: \"onnxruntime_onnx\"");
        assert_eq!(ModelConfig::parse(&any).unwrap().check(&info), Ok(()));
        // Fields Triton does not know, and malformed text, are errors as in Triton.
        let e = ModelConfig::parse("name: \"m\"\nmax_batch: 8").unwrap_err();
        assert!(e.contains("max_batch"), "{e}");
        assert!(ModelConfig::parse("name: \"m\" {").is_err());
        assert!(ModelConfig::parse("version_policy: { latest: { num_versions: 0 } }").is_err());
    }

    #[test]
    fn version_policies_select_as_triton_documents() {
        let present = [3, 1, 10, 2];
        assert_eq!(VersionPolicy::Latest(1).select(&present), vec![10]);
        assert_eq!(VersionPolicy::Latest(2).select(&present), vec![3, 10]);
        assert_eq!(VersionPolicy::Latest(9).select(&present), vec![1, 2, 3, 10]);
        assert_eq!(VersionPolicy::All.select(&present), vec![1, 2, 3, 10]);
        assert_eq!(
            VersionPolicy::Specific(vec![2, 7, 10]).select(&present),
            vec![2, 10]
        );
        assert!(VersionPolicy::Latest(1).select(&[]).is_empty());
    }

    #[test]
    fn a_model_folder_lists_its_numeric_version_folders() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        for v in ["1", "2", "07", "x", "0"] {
            std::fs::create_dir_all(m.join(v)).unwrap();
        }
        for v in ["1", "07", "x", "0"] {
            std::fs::write(m.join(v).join("model.onnx"), b"x").unwrap();
        }
        std::fs::create_dir_all(dir.path().join(".hidden")).unwrap();
        let d = read_model_dir(dir.path(), "m").unwrap();
        // A numeric folder without the file is a version (refused when loaded, as in Triton).
        assert_eq!(
            d.versions.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 7]
        );
        assert_eq!(d.versions[&2], m.join("2").join("model.onnx"));
        assert_eq!(d.config.unwrap(), ModelConfig::default());
        assert_eq!(model_names(dir.path()).unwrap(), vec!["m".to_string()]);
        std::fs::write(m.join("config.pbtxt"), "name: \"other\"").unwrap();
        let e = read_model_dir(dir.path(), "m").unwrap().config.unwrap_err();
        assert!(e.contains("differs from the model's folder name"), "{e}");
    }
}
