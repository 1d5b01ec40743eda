//! `Pipe`: one `pipe` invocation built like a sentence (`Pipe::train().limits(300, 120).epochs(3)`),
//! run from the project root, logged on stderr (cargo test shows it when a test fails), with
//! `ok()`/`fails()` asserting the exit code, and `infer_json()` parsing `pipe infer --format json`.

use super::root;
use serde::Deserialize;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A `pipe` invocation: the binary (the crate's `pipe` unless [`Pipe::bin`] says otherwise), its
/// arguments in order and extra environment variables.
#[derive(Clone, Debug)]
pub struct Pipe {
    bin: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

/// What a successful `pipe` printed.
#[derive(Debug)]
pub struct Out {
    pub stdout: String,
    pub stderr: String,
}

impl Pipe {
    /// `pipe <words>`, e.g. `Pipe::new("summary")` or `Pipe::new("weights import")`.
    pub fn new(words: &str) -> Self {
        Self {
            bin: PathBuf::from(env!("CARGO_BIN_EXE_pipe")),
            args: words.split_whitespace().map(OsString::from).collect(),
            env: Vec::new(),
        }
    }

    /// `pipe train --device cpu` (the tests' runs are CPU runs unless a test sets `--device`).
    pub fn train() -> Self {
        Self::new("train").arg("--device", "cpu")
    }

    /// `pipe train --resume --device cpu`: continues the newest unfinished run unless `.name(..)`.
    pub fn resume() -> Self {
        Self::train().flag("--resume")
    }

    /// `pipe evaluate --device cpu`.
    pub fn evaluate() -> Self {
        Self::new("evaluate").arg("--device", "cpu")
    }

    /// `pipe export OUTPUT`.
    pub fn export(output: impl AsRef<OsStr>) -> Self {
        Self::new("export").path(output)
    }

    /// `pipe infer --model MODEL` (add the images with [`Pipe::path`] or [`Pipe::paths`]).
    pub fn infer(model: impl AsRef<OsStr>) -> Self {
        Self::new("infer").arg("--model", model)
    }

    /// `pipe inspect MODEL`.
    pub fn inspect(model: impl AsRef<OsStr>) -> Self {
        Self::new("inspect").path(model)
    }

    /// Runs another build of pipe (e.g. the libtorch-free `pipe-infer`) with the same arguments.
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = bin.into();
        self
    }

    /// Sets option `name` to `value`: replaces the value when the option is already there, else
    /// appends `name value`.
    pub fn arg(mut self, name: &str, value: impl AsRef<OsStr>) -> Self {
        let value = value.as_ref().to_os_string();
        match self.args.iter().position(|a| a == name) {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = value,
            _ => self.args.extend([OsString::from(name), value]),
        }
        self
    }

    /// Appends a flag (`--no-cache`, `--restore-best`, …) unless it is there already.
    pub fn flag(mut self, name: &str) -> Self {
        if !self.args.iter().any(|a| a == name) {
            self.args.push(name.into());
        }
        self
    }

    /// Removes option `name` (with its value, when `with_value`).
    pub fn without(mut self, name: &str, with_value: bool) -> Self {
        if let Some(i) = self.args.iter().position(|a| a == name) {
            self.args
                .drain(i..(i + 1 + usize::from(with_value)).min(self.args.len()));
        }
        self
    }

    /// Appends one positional argument (a path, or a raw argument such as `--val-split=-0.1`).
    pub fn path(mut self, p: impl AsRef<OsStr>) -> Self {
        self.args.push(p.as_ref().to_os_string());
        self
    }

    /// Appends positional arguments.
    pub fn paths<P: AsRef<OsStr>>(mut self, ps: impl IntoIterator<Item = P>) -> Self {
        self.args
            .extend(ps.into_iter().map(|p| p.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable for the process.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    // Options of several commands, named as the tests say them.

    /// `--data DIR`.
    pub fn data(self, dir: impl AsRef<OsStr>) -> Self {
        self.arg("--data", dir)
    }
    /// `--weights FILE`.
    pub fn weights(self, file: impl AsRef<OsStr>) -> Self {
        self.arg("--weights", file)
    }
    /// `--runs-dir DIR`.
    pub fn runs(self, dir: impl AsRef<OsStr>) -> Self {
        self.arg("--runs-dir", dir)
    }
    /// `--cache-dir DIR`.
    pub fn cache(self, dir: impl AsRef<OsStr>) -> Self {
        self.arg("--cache-dir", dir)
    }
    /// `--no-cache`.
    pub fn no_cache(self) -> Self {
        self.flag("--no-cache")
    }
    /// `--train-limit TRAIN --test-limit TEST` (0 = all).
    pub fn limits(self, train: usize, test: usize) -> Self {
        self.arg("--train-limit", train.to_string())
            .arg("--test-limit", test.to_string())
    }
    /// `--epochs N`.
    pub fn epochs(self, n: usize) -> Self {
        self.arg("--epochs", n.to_string())
    }
    /// `--batch-size N`.
    pub fn batch(self, n: usize) -> Self {
        self.arg("--batch-size", n.to_string())
    }
    /// `--lr RATE`.
    pub fn lr(self, rate: &str) -> Self {
        self.arg("--lr", rate)
    }
    /// `--seed N`.
    pub fn seed(self, n: u64) -> Self {
        self.arg("--seed", n.to_string())
    }
    /// `--name NAME` (train: the new run; train --resume: the run to continue).
    pub fn name(self, name: &str) -> Self {
        self.arg("--name", name)
    }
    /// `--run RUN` (export, evaluate).
    pub fn run(self, run: &str) -> Self {
        self.arg("--run", run)
    }
    /// `--backend tract|ort` (infer).
    pub fn backend(self, backend: &str) -> Self {
        self.arg("--backend", backend)
    }
    /// `--format text|csv|json`.
    pub fn format(self, format: &str) -> Self {
        self.arg("--format", format)
    }

    /// The arguments as one line, for messages.
    pub fn line(&self) -> String {
        let words: Vec<String> = self
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        format!("{} {}", self.bin.display(), words.join(" "))
    }

    /// The process, not started yet (run from the project root).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args).current_dir(root());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// The process, not started yet, with SIGINT and SIGQUIT at their default action (for tests
    /// that signal it): a test runner started as a background job without job control (`cmd &` in
    /// a script) ignores them, and its children would inherit that.
    fn signalable(&self) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.command();
        // SAFETY: signal() is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
                Ok(())
            });
        }
        cmd
    }

    /// Starts the process with stdout and stderr discarded (for tests that signal or kill it), with
    /// SIGINT and SIGQUIT at their default action ([`Pipe::signalable`]).
    pub fn spawn_quiet(&self) -> Child {
        self.signalable()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.line()))
    }

    /// Starts the process with the test hook `pipe::util::PAUSE_ENV` set to `point` and returns once
    /// it has stopped there: its stderr is read line by line until the hook's line
    /// (`pipe::util::paused_line`), then drained in the background so that later writes never
    /// block. SIGINT and SIGQUIT are at their default action ([`Pipe::signalable`]). Panics when
    /// the process ends before pausing, or when it has not paused within `limit` (it is killed).
    pub fn spawn_paused(&self, point: &str, limit: std::time::Duration) -> Child {
        use std::io::BufRead;
        let mut child = self
            .clone()
            .env(pipe::util::PAUSE_ENV, point)
            .signalable()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.line()));
        let watchdog = super::Watchdog::new(child.id(), limit);
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let wanted = pipe::util::paused_line(point);
        let mut seen = Vec::new();
        let paused = loop {
            match lines.next() {
                Some(Ok(line)) if line == wanted => break true,
                Some(Ok(line)) => seen.push(line),
                _ => break false,
            }
        };
        let fired = watchdog.finish();
        assert!(
            paused,
            "{} ended before `{wanted}`{}:\n{}",
            self.line(),
            if fired {
                " (killed after the time limit)"
            } else {
                ""
            },
            seen.join("\n")
        );
        std::thread::spawn(move || lines.for_each(drop));
        child
    }

    /// Runs it to the end and returns its output (logged).
    pub fn output(&self) -> Output {
        let out = self
            .command()
            .output()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.line()));
        self.log(&out);
        out
    }

    /// Logs a finished run of this invocation on stderr.
    pub fn log(&self, out: &Output) {
        eprintln!(
            "$ {}\n[{}]\n{}{}",
            self.line(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Runs it, asserts exit code 0, returns what it printed (both UTF-8).
    pub fn ok(&self) -> Out {
        let out = self.output();
        assert!(
            out.status.success(),
            "{} failed: {}",
            self.line(),
            String::from_utf8_lossy(&out.stderr)
        );
        Out {
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
        }
    }

    /// Runs it, asserts exit code 1 (an error pipe reports), returns stderr.
    pub fn fails(&self) -> String {
        self.fails_with(1)
    }

    /// Runs it, asserts exit code `code` (2: a usage error clap reports), returns stderr.
    pub fn fails_with(&self, code: i32) -> String {
        self.exits(code).stderr
    }

    /// Runs it, asserts exit code `code` (3: done, but files were skipped) and no panic, returns what
    /// it printed (lossy UTF-8).
    pub fn exits(&self, code: i32) -> Out {
        let out = self.output();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}: expected exit code {code}: {stderr}",
            self.line()
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        Out {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        }
    }

    /// `pipe infer … --format json`, run to success and parsed.
    pub fn infer_json(self) -> Inferred {
        self.infer_json_exits(0)
    }

    /// `pipe infer … --format json`, run to exit code `code` and its stdout parsed.
    pub fn infer_json_exits(self, code: i32) -> Inferred {
        let out = self.format("json").exits(code);
        let mut doc: Inferred = serde_json::from_str(&out.stdout).expect("infer --format json");
        doc.stderr = out.stderr;
        doc
    }
}

/// The document `pipe infer --format json` prints.
#[derive(Debug, Deserialize)]
pub struct Inferred {
    /// Class names, index = class index.
    pub classes: Vec<String>,
    /// One record per image, in the order pipe read them.
    pub predictions: Vec<Record>,
    /// Images in folders named after a class.
    pub labelled: usize,
    /// Of those, the ones classified as their folder.
    pub correct: usize,
    /// `correct / labelled`, when some image was labelled.
    pub accuracy: Option<f64>,
    /// Confusion matrix of the labelled images (rows = folder class), when some image was labelled.
    pub confusion: Option<Vec<Vec<u64>>>,
    /// What pipe printed on stderr.
    #[serde(skip)]
    pub stderr: String,
}

/// One file of [`Inferred`]: a classified image, or (`error` set, the other fields empty) a file
/// that could not be decoded.
#[derive(Debug, Deserialize)]
pub struct Record {
    /// The image path as printed (lossy UTF-8).
    pub path: String,
    /// Most probable class.
    #[serde(default)]
    pub class_index: usize,
    /// Its name.
    #[serde(default)]
    pub label: String,
    /// The model's whole output row.
    #[serde(default)]
    pub probabilities: Vec<f32>,
    /// Why the file was skipped (`truncated`, `not_an_image`, ...).
    pub error: Option<String>,
    /// What is wrong with it.
    pub message: Option<String>,
}

impl Inferred {
    /// (path, class index) of every record, sorted by path.
    pub fn labels(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .predictions
            .iter()
            .map(|r| (r.path.clone(), r.class_index))
            .collect();
        v.sort();
        v
    }
}

/// The path of `p` as a `&str` (test paths are UTF-8 unless a test says otherwise).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
