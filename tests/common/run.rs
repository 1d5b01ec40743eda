//! `Workdir` (a temporary folder with the usual `data/`, `runs/` and `cache/` of a test) and `Run` (a
//! run folder's files, parsed): the files pipe writes, read the way a user of the files would.

use super::data::write_binary_release;
use super::pipe::Pipe;
use super::weights;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A temporary folder for one test: `data` (a dataset, when the test makes one), `runs` and `cache`
/// (not created: pipe makes them). Removed when dropped.
pub struct Workdir {
    tmp: tempfile::TempDir,
    /// `--data` of [`Workdir::train`].
    pub data: PathBuf,
    /// `--runs-dir`.
    pub runs: PathBuf,
    /// `--cache-dir`.
    pub cache: PathBuf,
}

impl Workdir {
    /// An empty temporary folder; `data` is `<tmp>/data`, not created.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temporary folder");
        let p = tmp.path().to_path_buf();
        Self {
            data: p.join("data"),
            runs: p.join("runs"),
            cache: p.join("cache"),
            tmp,
        }
    }

    /// With a generated CIFAR-10 binary release of `per_file` records per batch file as `data`
    /// (5 training files and the test file: `5 * per_file` training and `per_file` test images).
    pub fn binary_release(per_file: usize) -> Self {
        let mut w = Self::new();
        w.data = w.join("cifar-10-batches-bin");
        write_binary_release(&w.data, per_file);
        w
    }

    /// With CIFAR-10 as image folders (made by `make setup`) as `data`.
    pub fn cifar10() -> Self {
        Self {
            data: super::cifar10(),
            ..Self::new()
        }
    }

    /// The temporary folder.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// A path inside the temporary folder.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// Makes the folder `name` in the temporary folder (and its parents); returns its path.
    pub fn dir(&self, name: impl AsRef<Path>) -> PathBuf {
        let p = self.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Writes `bytes` to `name` in the temporary folder (making its parent folders); returns the path.
    pub fn write(&self, name: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Writes an 8-bit RGB PNG of `w`x`h` pixels with colour `f(x, y)` to `name` in the temporary
    /// folder (making its parent folders); returns the path.
    pub fn png(
        &self,
        name: impl AsRef<Path>,
        w: u32,
        h: u32,
        f: impl Fn(u32, u32) -> [u8; 3],
    ) -> PathBuf {
        let p = self.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        super::data::png(&p, w, h, f);
        p
    }

    /// `pipe train` of run `name` on `data` with the ImageNet weights, into `runs`, caching features
    /// in `cache` (on the CPU; add limits, epochs and the rest).
    pub fn train(&self, name: &str) -> Pipe {
        Pipe::train()
            .data(&self.data)
            .weights(weights())
            .runs(&self.runs)
            .cache(&self.cache)
            .name(name)
    }

    /// `pipe train --resume` in `runs` with `cache`: the newest unfinished run, or `.name(..)`'s.
    pub fn resume(&self) -> Pipe {
        Pipe::resume().runs(&self.runs).cache(&self.cache)
    }

    /// `pipe sweep` on `data` with the ImageNet weights, caching features in `cache` (on the CPU).
    pub fn sweep(&self) -> Pipe {
        Pipe::new("sweep")
            .arg("--device", "cpu")
            .data(&self.data)
            .weights(weights())
            .cache(&self.cache)
    }

    /// `pipe export OUTPUT --run RUN` from `runs`.
    pub fn export(&self, run: &str, output: impl AsRef<Path>) -> Pipe {
        Pipe::export(output.as_ref()).run(run).runs(&self.runs)
    }

    /// `pipe export OUTPUT --run RUN` from `runs`, run to success; asserts that the model was verified
    /// with tract against tch on `images` of the run's test images, and returns stdout.
    pub fn export_verified(&self, run: &str, output: impl AsRef<Path>, images: usize) -> String {
        let out = self.export(run, output).ok().stdout;
        assert_verified(&out, images);
        out
    }

    /// `pipe evaluate --run RUN` from `runs` with `cache`.
    pub fn evaluate(&self, run: &str) -> Pipe {
        Pipe::evaluate()
            .run(run)
            .runs(&self.runs)
            .cache(&self.cache)
    }

    /// Run `name` in `runs`.
    pub fn run(&self, name: &str) -> Run {
        Run::open(self.runs.join(name))
    }
}

/// A run folder (`config.json`, `history.json`, `predictions.json`, safetensors files, figures).
pub struct Run {
    pub dir: PathBuf,
}

impl Run {
    /// The run folder `dir` (it must exist).
    pub fn open(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        assert!(dir.is_dir(), "no run folder {}", dir.display());
        Self { dir }
    }

    /// A file of the run.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The bytes of a file of the run.
    pub fn bytes(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.file(name)).unwrap_or_else(|e| panic!("{}: {e}", name))
    }

    /// Asserts that the head's first dense layer takes `features` inputs: its weight is `[256,
    /// features]` in the header of `head.safetensors`.
    pub fn assert_head_takes(&self, features: usize) {
        let head = self.bytes("head.safetensors");
        let header = String::from_utf8_lossy(&head[..400.min(head.len())]).into_owned();
        let shape = format!("[256,{features}]");
        assert!(
            header.contains(&shape),
            "dense1 should take {features} features: {header}"
        );
    }

    /// `config.json`.
    pub fn config(&self) -> Value {
        read_json(&self.file("config.json"))
    }

    /// `history.json`.
    pub fn history(&self) -> Vec<Epoch> {
        serde_json::from_slice(&self.bytes("history.json")).expect("history.json")
    }

    /// `predictions.json`.
    pub fn predictions(&self) -> Predictions {
        serde_json::from_slice(&self.bytes("predictions.json")).expect("predictions.json")
    }

    /// Replaces `predictions.json` with `preds` (for tests that make the run disagree with a model).
    pub fn write_predictions(&self, preds: &Value) {
        std::fs::write(
            self.file("predictions.json"),
            serde_json::to_vec(preds).unwrap(),
        )
        .unwrap();
    }

    /// The tensors of a safetensors file of the run (see [`tensors`]).
    pub fn tensors(&self, name: &str) -> Vec<(String, Vec<u8>)> {
        tensors(&self.file(name))
    }
}

/// `predictions.json`: tch's probabilities for the run's test images, whose `file` names are relative
/// to `data_root` (or, for the CIFAR-10 binary release, `file#record` in the release folder).
#[derive(Debug, Deserialize)]
pub struct Predictions {
    pub data_root: PathBuf,
    pub classes: Vec<String>,
    pub items: Vec<Item>,
}

impl Predictions {
    /// The share of items whose most probable class is their label.
    pub fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.items.len() as f64
    }

    /// How many items' most probable class is their label.
    pub fn correct(&self) -> usize {
        self.items
            .iter()
            .filter(|i| argmax(&i.probabilities) == i.label)
            .count()
    }

    /// The items' image files (image folders: `data_root/file`).
    pub fn paths(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|i| self.data_root.join(&i.file).to_string_lossy().into_owned())
            .collect()
    }

    /// Probabilities by image file.
    pub fn by_path(&self) -> HashMap<String, &[f32]> {
        self.paths()
            .into_iter()
            .zip(&self.items)
            .map(|(p, i)| (p, i.probabilities.as_slice()))
            .collect()
    }
}

/// One test image of [`Predictions`].
#[derive(Debug, Deserialize)]
pub struct Item {
    pub file: String,
    pub label: usize,
    pub probabilities: Vec<f32>,
}

/// Asserts that export's report `stdout` says the model was verified with tract against tch on
/// `images` test images.
pub fn assert_verified(stdout: &str, images: usize) {
    let line = format!("verified with tract on {images} test images: same labels as tch");
    assert!(stdout.contains(&line), "{line}: {stdout}");
}

/// Index of the maximum (the first on ties), as pipe's argmax.
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

/// One epoch of `history.json` (training loss and accuracy with dropout active; validation after
/// the epoch).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Epoch {
    pub epoch: usize,
    pub loss: f64,
    pub accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

/// A JSON file.
pub fn read_json(p: &Path) -> Value {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Tensors of a safetensors file as (name, little-endian bytes), sorted by name.
pub fn tensors(p: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

/// The `__metadata__` of a safetensors file.
pub fn safetensors_metadata(p: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("safetensors header");
    meta.metadata().clone().unwrap_or_default()
}
