//! The ONNX Runtime backend through `ort`, with libonnxruntime loaded at run time (`load-dynamic`):
//! CPU, or NVIDIA GPUs through the CUDA execution provider.

use super::{Backend, InferDevice};
use crate::error::{Error, Result};
use ndarray::{Array2, ArrayD, ArrayView4, Ix2};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A model loaded into an ONNX Runtime session.
pub struct OrtBackend {
    session: Session,
    output: String,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "ort",
        message: e.to_string(),
    }
}

/// Where pipe looks for libonnxruntime, in order: `explicit` (`--ort-lib`), `ORT_DYLIB_PATH`, then
/// `onnxruntime/capi/libonnxruntime.so*` of the onnxruntime wheel in `.venv` under the current folder,
/// beside the executable's project (`target/<profile>/pipe` → project root) and under the folder pipe
/// was built from.
pub fn ort_library_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let mut out = Vec::new();
    for root in roots {
        let lib = root.join(".venv/lib");
        let Ok(pythons) = std::fs::read_dir(&lib) else {
            continue;
        };
        for py in pythons.flatten() {
            let capi = py.path().join("site-packages/onnxruntime/capi");
            let Ok(files) = std::fs::read_dir(&capi) else {
                continue;
            };
            let mut libs: Vec<PathBuf> = files
                .flatten()
                .map(|f| f.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                })
                .collect();
            libs.sort();
            out.extend(libs);
        }
    }
    out.dedup();
    out
}

static ENVIRONMENT: OnceLock<
    std::result::Result<(PathBuf, ort::environment::Environment), String>,
> = OnceLock::new();

/// Loads libonnxruntime (once per process) and returns the ONNX Runtime environment.
///
/// # Errors
/// [`Error::Backend`] saying where pipe looked and how to fix it, when no library can be loaded.
pub fn environment(explicit: Option<&Path>) -> Result<&'static ort::environment::Environment> {
    let r = ENVIRONMENT.get_or_init(|| {
        let candidates = ort_library_candidates(explicit);
        let mut tried = Vec::new();
        for c in &candidates {
            if !c.exists() {
                tried.push(format!("{} (not found)", c.display()));
                continue;
            }
            match ort::init_from(c).map_err(|e| e.to_string()).and_then(|b| b.with_name("pipe").build().map_err(|e| e.to_string())) {
                Ok(env) => return Ok((c.clone(), env)),
                Err(e) => tried.push(format!("{} ({e})", c.display())),
            }
        }
        if tried.is_empty() {
            tried.push("no .venv with the onnxruntime wheel under the current folder or the pipe executable's project".into());
        }
        Err(format!(
            "cannot load libonnxruntime; looked at: {}. Run `make setup` (installs the onnxruntime wheel into .venv), \
             or pass --ort-lib /path/to/libonnxruntime.so (or set ORT_DYLIB_PATH)",
            tried.join("; ")
        ))
    });
    match r {
        Ok((_, env)) => Ok(env),
        Err(msg) => Err(Error::Backend {
            backend: "ort",
            message: msg.clone(),
        }),
    }
}

/// A session builder on the environment of `ort_lib` (see [`environment`]) with full graph
/// optimisation and `threads` intra-op threads (0 = ONNX Runtime's default, all cores).
fn builder(
    ort_lib: Option<&Path>,
    threads: usize,
) -> Result<ort::session::builder::SessionBuilder> {
    Session::builder(environment(ort_lib)?)
        .map_err(err)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(err)?
        .with_intra_threads(threads)
        .map_err(err)
}

impl OrtBackend {
    /// Opens `model` in a session with full graph optimisation and `threads` intra-op threads, on the
    /// CPU or with the CUDA execution provider (an error, not a silent CPU fallback, when CUDA cannot be used).
    ///
    /// # Errors
    /// [`Error::Backend`] when libonnxruntime cannot be loaded, the CUDA execution provider is not
    /// available, or the model is refused.
    pub fn open(
        model: &Path,
        device: InferDevice,
        threads: usize,
        ort_lib: Option<&Path>,
    ) -> Result<Self> {
        let mut builder = builder(ort_lib, threads)?;
        if device == InferDevice::Cuda {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
                .map_err(|e| {
                    err(format!(
                        "the CUDA execution provider is not available ({e}); it needs an NVIDIA GPU with its driver and \
                         the onnxruntime-gpu wheel (make setup installs it when nvidia-smi works); use --device cpu"
                    ))
                })?;
        }
        let session = builder.commit_from_file(model).map_err(|e| {
            Error::invalid(model, format!("ONNX Runtime cannot load the model: {e}"))
        })?;
        OrtBackend::with_session(session)
    }
}

impl OrtBackend {
    /// The backend of `session`, whose first output [`Backend::run`] returns.
    fn with_session(session: Session) -> Result<Self> {
        let output = session
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| err("model has no output"))?;
        Ok(OrtBackend { session, output })
    }

    /// As [`OrtBackend::open`] on the CPU, for a model in memory (`name` names it in errors), whose
    /// outputs may be several ([`OrtBackend::run_outputs`]).
    ///
    /// # Errors
    /// [`Error::Backend`] when libonnxruntime cannot be loaded or refuses the model.
    pub fn open_bytes(bytes: &[u8], name: &str, threads: usize) -> Result<Self> {
        let session = builder(None, threads)?
            .commit_from_memory(bytes)
            .map_err(|e| err(format!("cannot load {name}: {e}")))?;
        OrtBackend::with_session(session)
    }

    /// Every output of the model for `images` (float32 NHWC `[n, S, S, 3]`), in the model's output
    /// order, each float32 with the batch as its first dimension.
    ///
    /// # Errors
    /// [`Error::Backend`] when ONNX Runtime fails or an output is not float32.
    pub fn run_outputs(&mut self, images: ArrayView4<'_, f32>) -> Result<Vec<ArrayD<f32>>> {
        let names: Vec<String> = self
            .session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let input = TensorRef::from_array_view(images).map_err(err)?;
        let outputs = self
            .session
            .run(ort::inputs![crate::contract::INPUT_NAME => input])
            .map_err(err)?;
        names
            .iter()
            .map(|name| {
                let value = outputs
                    .get(name.as_str())
                    .ok_or_else(|| err(format!("output {name} missing")))?;
                Ok(value.try_extract_array::<f32>().map_err(err)?.to_owned())
            })
            .collect()
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn run(&mut self, images: ArrayView4<'_, f32>) -> Result<Array2<f32>> {
        let input = TensorRef::from_array_view(images).map_err(err)?;
        let outputs = self
            .session
            .run(ort::inputs![crate::contract::INPUT_NAME => input])
            .map_err(err)?;
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| err("output missing"))?;
        let arr = value.try_extract_array::<f32>().map_err(err)?;
        arr.to_owned().into_dimensionality::<Ix2>().map_err(err)
    }
}
