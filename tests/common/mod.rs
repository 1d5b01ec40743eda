//! Helpers shared by the integration tests, so that a test reads like the specification it checks:
//!
//! - [`pipe`]: `Pipe`, one invocation of the binary built option by option
//!   (`Pipe::train().data(..).limits(300, 120).epochs(3).batch(16).name("e2e").ok()`), and the parsed
//!   output of `pipe infer --format json`;
//! - [`run`]: `Workdir` (a test's temporary `data/`, `runs/`, `cache/`, with `train`/`export`/
//!   `evaluate` invocations preset to them) and `Run` (a run folder's `config.json`, `history.json`,
//!   `predictions.json` and safetensors files, parsed);
//! - [`data`]: a generated CIFAR-10 binary release, image folders, PNGs;
//! - [`onnx`]: the reference `onnx.checker` and `onnx` reader (Python, project virtualenv) and Triton's
//!   `config.pbtxt`.
#![allow(dead_code, unused_imports)] // each test crate uses its own subset

pub mod data;
pub mod onnx;
pub mod pipe;
pub mod run;

pub use data::{cifar10_names, image_folders, png, write_binary_release};
pub use pipe::{s, Inferred, Out, Pipe, Record};
pub use run::{
    argmax, assert_verified, read_json, safetensors_metadata, tensors, Epoch, Predictions, Run,
    Workdir,
};

use std::path::{Path, PathBuf};

/// The project root (where `make setup` puts `.venv`, `data/` and `models/`); pipe runs from there.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ImageNet VGG16 weights made by `make setup`.
pub fn weights() -> PathBuf {
    let w = root().join("models/vgg16_imagenet.safetensors");
    assert!(
        w.is_file(),
        "VGG16 weights missing: run `make setup` (make test does it)"
    );
    w
}

/// CIFAR-10 as image folders (`data/cifar10/{train,test}/<class>/`), made by `make setup`.
pub fn cifar10() -> PathBuf {
    let data = root().join("data/cifar10");
    assert!(
        data.join("test").is_dir(),
        "CIFAR-10 images missing: run `make setup` (make test does it)"
    );
    data
}

/// Asserts that `text` contains every one of `parts`, naming the first missing one.
pub fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "lacks {part:?}: {text}");
    }
}

/// Files in `dir` (not recursive) whose names end with `.tmp` (left-over temporary files).
pub fn tmp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// A `--precision` for fine-tuning runs that a test compares byte for byte: what `--precision auto`
/// picks without timing anything, bf16 mixed precision where the CPU has AMX and float32 elsewhere.
/// On a CPU with AVX512_BF16 but no AMX, auto times both precisions and either may win, run by run,
/// so two runs left to auto need not train alike there.
pub fn comparable_precision() -> &'static str {
    if ::pipe::cpu::CpuFeatures::detect().amx_bf16 {
        "bf16"
    } else {
        "fp32"
    }
}

/// Whether an NVIDIA GPU is visible (`nvidia-smi` runs and succeeds).
pub fn nvidia_gpu() -> bool {
    std::process::Command::new("nvidia-smi")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Kills a child process (SIGKILL) that runs past a time limit, so that a test can block on the
/// child's exit itself (`wait`, `wait_with_output`) instead of polling it: a thread waits on a
/// channel for [`Watchdog::finish`] with the limit as timeout.
pub struct Watchdog {
    done: std::sync::mpsc::Sender<()>,
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Watches the process `pid` for `limit`.
    pub fn new(pid: u32, limit: std::time::Duration) -> Watchdog {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let fired = std::sync::Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let thread = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
                flag.store(true, Ordering::SeqCst);
                // SAFETY: sending a signal to the test's own child process.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        });
        Watchdog {
            done,
            fired,
            thread: Some(thread),
        }
    }

    /// Stops watching (call it once the child has exited); true when the limit passed and the
    /// child was killed.
    pub fn finish(mut self) -> bool {
        let _ = self.done.send(());
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}
