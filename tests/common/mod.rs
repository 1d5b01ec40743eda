//! Helpers shared by the integration tests (`tests/e2e.rs`, `tests/train.rs`, `tests/errors.rs`): run the
//! `pipe` binary, locate the files `make setup` makes, and generate a CIFAR-10 binary release.
#![allow(dead_code)] // each test crate uses its own subset

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The project root (where `make setup` puts `.venv`, `data/` and `models/`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `pipe` command run from the project root (not started yet), for tests that set the environment.
pub fn pipe_command<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipe"));
    cmd.args(args).current_dir(root());
    cmd
}

/// Logs a finished command and its output on stderr (shown by cargo test when a test fails).
pub fn log<S: AsRef<OsStr>>(args: &[S], out: &Output) {
    let line: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    eprintln!(
        "$ pipe {}\n[{}]\n{}{}",
        line.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Runs `pipe` with `args` from the project root and returns its output (logged on stderr).
pub fn pipe<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let out = pipe_command(args).output().expect("run pipe");
    log(args, &out);
    out
}

/// Runs `pipe`, asserts success, returns (stdout, stderr).
pub fn ok<S: AsRef<OsStr>>(args: &[S]) -> (String, String) {
    let out = pipe(args);
    assert!(
        out.status.success(),
        "pipe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

/// Runs `pipe`, asserts exit code 1, returns stderr.
pub fn fails<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = pipe(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit code 1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A path as `&str` (test paths are UTF-8 unless a test says otherwise).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The ImageNet VGG16 weights made by `make setup`.
pub fn weights() -> String {
    let w = root().join("models/vgg16_imagenet.safetensors");
    assert!(
        w.is_file(),
        "VGG16 weights missing: run `make setup` (make test does it)"
    );
    s(&w).to_string()
}

/// CIFAR-10 (image folders) and the VGG16 weights, made by `make setup`.
pub fn require_setup() -> (PathBuf, PathBuf) {
    let data = root().join("data/cifar10");
    let weights = root().join("models/vgg16_imagenet.safetensors");
    assert!(
        data.join("test").is_dir() && weights.is_file(),
        "CIFAR-10 images or VGG16 weights missing: run `make setup` (make test does it)"
    );
    (data, weights)
}

/// The CIFAR-10 class names in label order.
pub const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// A CIFAR-10 binary release with `per_file` records per batch file: label i % 10, pixels a
/// class-dependent colour pattern plus per-record variation, so that classes are learnable.
pub fn write_binary_release(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let files = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for (fi, f) in files.iter().enumerate() {
        let mut bytes = Vec::new();
        for i in 0..per_file {
            let label = (i % 10) as u8;
            bytes.push(label);
            for c in 0..3u32 {
                for p in 0..1024u32 {
                    let (y, x) = (p / 32, p % 32);
                    let stripe = ((x + y * u32::from(label)) / (2 + u32::from(label) % 4)) % 2;
                    let v = 40
                        + 25 * u32::from(label) * (c + 1) % 200
                        + 60 * stripe
                        + ((i as u32 * 7 + fi as u32 * 3 + p) % 13);
                    bytes.push(v.min(255) as u8);
                }
            }
        }
        std::fs::write(dir.join(f), bytes).unwrap();
    }
    std::fs::write(
        dir.join("batches.meta.txt"),
        CIFAR10_NAMES.join("\n") + "\n",
    )
    .unwrap();
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
