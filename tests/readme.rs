//! The README's own-photos session, run as written: the commands of the code block after
//! `<!-- own-photos-session -->` in README.md, from a temporary folder set up like the repository
//! root after `make setup` (`target/release/pipe` = this build, the VGG16 weights, `onnx/`), on
//! generated photos standing in for `my-photos/` (two classes, `train/` + `val/`) and `new-photos/`.
//!
//! The test understands the shell words the session may use: `export NAME=VALUE` (with `$PWD` and
//! `$NAME` expanded), `pipe ...` (found on the session's `PATH`, as a shell would), `pipe serve ... &`
//! (in the background: started with `--port 0` unless the session names a port, and waited for on its
//! `listening on http://ADDR` line; `localhost:PORT` in later commands then means ADDR), `curl ...`
//! and `kill %1` (SIGTERM to the background server). Anything else fails the test, so that the README
//! cannot show a command this test does not run.
//!
//! It checks that each step succeeds, that the model file the session exports exists, that the answer
//! of `/v1/classify` for the photo sent gives the label and probability `pipe infer` printed for that
//! photo (and `pipe infer --format json`'s, to 1e-5), and that the server exits 0 after SIGTERM.
#![cfg(all(feature = "train", feature = "serve"))]

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

const MARKER: &str = "<!-- own-photos-session -->";

/// The photo set the session runs on: `my-photos/{train,val}/<class>/`, `new-photos/` files.
const CLASSES: [&str; 2] = ["cats", "dogs"];
const TRAIN_PER_CLASS: usize = 4;
const VAL_PER_CLASS: usize = 2;
const NEW_PHOTOS: [&str; 2] = ["IMG_0001.jpg", "IMG_0002.jpg"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The session's command lines: the first fenced code block after [`MARKER`], with comments and
/// blank lines removed.
fn session_commands(readme: &str) -> Vec<String> {
    let after = readme
        .split_once(MARKER)
        .unwrap_or_else(|| panic!("README.md has no {MARKER} line"))
        .1;
    let mut lines = after.lines().skip_while(|l| l.trim().is_empty());
    let fence = lines.next().unwrap_or_default();
    assert!(
        fence.starts_with("```"),
        "{MARKER} must be followed by a fenced code block, not {fence:?}"
    );
    lines
        .take_while(|l| !l.starts_with("```"))
        .map(|l| match l.find('#') {
            Some(at) if at == 0 || l[..at].ends_with(' ') => &l[..at],
            _ => l,
        })
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A generated photo of class `class` (0 or 1), `w`x`h` pixels, variant `i`: warm stripes against
/// cool checks, so that the two classes look different to an ImageNet network.
fn photo(path: &Path, w: u32, h: u32, class: usize, i: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let i = i as u32;
    image::RgbImage::from_fn(w, h, |x, y| {
        if class == 0 {
            let stripe = ((x + 2 * y + 3 * i) / 9).is_multiple_of(2);
            let shade = (y * 60 / h) as u8;
            if stripe {
                image::Rgb([230 - shade, 140 - shade, 40])
            } else {
                image::Rgb([120 - shade, 60, 20])
            }
        } else {
            let check = ((x + i) / 14 + y / 14).is_multiple_of(2);
            let shade = (x * 50 / w) as u8;
            if check {
                image::Rgb([40, 90 + shade, 200])
            } else {
                image::Rgb([200, 220, 240 - shade])
            }
        }
    })
    .save(path)
    .unwrap();
}

/// The working folder: set up like the repository root after `make setup`, with the photo set.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let weights = repo().join("models/vgg16_imagenet.safetensors");
    assert!(
        weights.is_file(),
        "VGG16 weights missing: run `make setup` (make test does it)"
    );
    std::fs::create_dir_all(root.join("models")).unwrap();
    std::os::unix::fs::symlink(&weights, root.join("models/vgg16_imagenet.safetensors")).unwrap();
    std::fs::create_dir_all(root.join("onnx")).unwrap();
    std::fs::create_dir_all(root.join("target/release")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pipe"), root.join("target/release/pipe"))
        .unwrap();
    for (c, class) in CLASSES.iter().enumerate() {
        for (split, n) in [("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)] {
            for i in 0..n {
                let (w, h) = if i % 2 == 0 { (160, 120) } else { (120, 150) };
                let file = format!("my-photos/{split}/{class}/IMG_{c}{i:03}.jpg");
                photo(
                    &root.join(file),
                    w,
                    h,
                    c,
                    i + 10 * usize::from(split == "val"),
                );
            }
        }
    }
    for (c, name) in NEW_PHOTOS.iter().enumerate() {
        photo(&root.join("new-photos").join(name), 140, 110, c, 20 + c);
    }
    dir
}

/// `$PWD`, `$NAME` and `${NAME}` of `word`, from the session's variables.
fn expand(word: &str, pwd: &Path, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let (name, skip) = match tail.strip_prefix('{') {
            Some(t) => {
                let end = t.find('}').expect("unclosed ${");
                (&t[..end], end + 2)
            }
            None => {
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                (&tail[..end], end)
            }
        };
        if name == "PWD" {
            out.push_str(&pwd.display().to_string());
        } else {
            out.push_str(vars.get(name).map(String::as_str).unwrap_or_default());
        }
        rest = &tail[skip..];
    }
    out.push_str(rest);
    out
}

/// The executable `program` names on `path` (a `PATH` value), as a shell finds it.
fn on_path(program: &str, path: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// The background `pipe serve`: its process, the address it listens on and its stdout (kept open,
/// so that the server's later lines do not meet a closed pipe).
struct Server {
    child: Child,
    addr: String,
    _stdout: BufReader<ChildStdout>,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Sends SIGTERM and waits for the exit; returns whether it exited 0, and its log.
    fn stop(mut self) -> (bool, String) {
        // SAFETY: sending a signal to our own child process.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill -TERM {}", self.child.id());
        let status = self.child.wait().unwrap();
        (
            status.success(),
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }
}

/// The port `pipe serve` listens on when the session names none: the `[default: N]` of `--port` in
/// `pipe serve --help`.
fn default_port() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let from_port = &help[help.find("--port <").expect("serve --help lists --port")..];
    let default = &from_port[from_port.find("[default: ").expect("--port has a default") + 10..];
    default[..default.find(']').unwrap()].to_string()
}

/// `pipe infer`'s text lines (`path<TAB>label<TAB>probability`) as path → (label, probability).
fn infer_lines(stdout: &str) -> HashMap<PathBuf, (String, f64)> {
    stdout
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert!(
                fields.len() >= 3,
                "not a path/label/probability line: {line:?}"
            );
            (
                PathBuf::from(fields[0]),
                (fields[1].to_string(), fields[2].parse().unwrap()),
            )
        })
        .collect()
}

/// The value of option `name` among `words`.
fn option<'a>(words: &'a [String], name: &str) -> Option<&'a str> {
    let at = words.iter().position(|w| w == name)?;
    words.get(at + 1).map(String::as_str)
}

/// What a step printed: its words, stdout, stderr.
struct Printed {
    words: Vec<String>,
    stdout: String,
    stderr: String,
}

impl Printed {
    fn of(words: &[String], out: &Output) -> Self {
        Printed {
            words: words.to_vec(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn log(words: &[String], out: &Output) {
    eprintln!(
        "$ {}\n[{}]\n{}{}",
        words.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_readmes_own_photos_session_runs_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let commands = session_commands(&readme);
    let dir = workdir();
    let pwd = dir.path();
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    let mut server: Option<Server> = None;
    let mut serve_port = default_port();
    let mut stopped: Option<(bool, String)> = None;
    // What the steps printed, by step name (`train`, `export`, `infer`, `curl`).
    let mut printed: HashMap<String, Printed> = HashMap::new();

    for line in &commands {
        assert!(
            !line.contains(['"', '\'', '|', ';', '>', '<']),
            "the session's line {line:?} needs a shell; this test runs plain words only"
        );
        let (line, background) = match line.strip_suffix('&') {
            Some(l) => (l.trim_end(), true),
            None => (line.as_str(), false),
        };
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| expand(w, pwd, &vars))
            .collect();
        let program = words[0].as_str();
        match program {
            "export" => {
                for assignment in &words[1..] {
                    let (name, value) = assignment
                        .split_once('=')
                        .unwrap_or_else(|| panic!("export {assignment}: not NAME=VALUE"));
                    vars.insert(name.to_string(), value.to_string());
                }
            }
            "kill" => {
                assert_eq!(&words[1..], ["%1"], "the test runs `kill %1` only: {line}");
                let running = server
                    .take()
                    .expect("kill %1 with no job in the background");
                stopped = Some(running.stop());
            }
            "curl" => {
                let addr = &server.as_ref().expect("curl with no server running").addr;
                let args: Vec<String> = words[1..]
                    .iter()
                    .map(|w| {
                        w.replace(&format!("localhost:{serve_port}"), addr)
                            .replace(&format!("127.0.0.1:{serve_port}"), addr)
                    })
                    .collect();
                let out = Command::new("curl")
                    .args(&args)
                    .current_dir(pwd)
                    .output()
                    .expect("curl");
                log(&words, &out);
                assert!(out.status.success(), "{line}: {}", out.status);
                printed.insert("curl".into(), Printed::of(&words, &out));
            }
            _ => {
                let path = vars.get("PATH").cloned().unwrap_or_default();
                let exe = on_path(program, &path).unwrap_or_else(|| {
                    panic!("{program}: not found on the session's PATH {path:?} ({line})")
                });
                assert_eq!(
                    std::fs::canonicalize(&exe).unwrap(),
                    std::fs::canonicalize(env!("CARGO_BIN_EXE_pipe")).unwrap(),
                    "{program} is not pipe: the session may run pipe, curl, export and kill %1"
                );
                let mut args: Vec<OsString> = words[1..].iter().map(OsString::from).collect();
                let step = words[1].clone();
                let mut cmd = Command::new(&exe);
                cmd.current_dir(pwd).env_clear().envs(&vars);
                if background {
                    assert_eq!(
                        step, "serve",
                        "only pipe serve runs in the background: {line}"
                    );
                    assert!(server.is_none(), "a second background job: {line}");
                    match words.iter().position(|w| w == "--port") {
                        Some(i) => serve_port = words[i + 1].clone(),
                        None => args.extend(["--port".into(), "0".into()]),
                    }
                    let log = pwd.join("serve.log");
                    let mut child = cmd
                        .args(&args)
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(std::fs::File::create(&log).unwrap())
                        .spawn()
                        .unwrap();
                    let mut stdout = BufReader::new(child.stdout.take().unwrap());
                    let mut addr = None;
                    let mut first = String::new();
                    while addr.is_none() {
                        first.clear();
                        let n = stdout.read_line(&mut first).unwrap();
                        assert!(
                            n > 0,
                            "{line}: ended without a listening line: {}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        );
                        addr = first
                            .split("listening on http://")
                            .nth(1)
                            .and_then(|rest| rest.split_whitespace().next())
                            .map(str::to_string);
                    }
                    eprintln!("$ {line}\n{first}");
                    server = Some(Server {
                        child,
                        addr: addr.unwrap(),
                        _stdout: stdout,
                        log,
                    });
                } else {
                    assert_ne!(
                        step, "serve",
                        "pipe serve in the foreground would hold the session: end its line with &"
                    );
                    let out = cmd.args(&args).stdin(Stdio::null()).output().unwrap();
                    log(&words, &out);
                    assert!(
                        out.status.success(),
                        "{line}: {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    );
                    printed.insert(step, Printed::of(&words, &out));
                }
            }
        }
    }
    let stopped = match (stopped, server.take()) {
        (Some(s), None) => s,
        (None, Some(running)) => running.stop(),
        (_, _) => panic!("the session starts no pipe serve"),
    };

    for step in ["train", "export", "infer", "curl"] {
        assert!(
            printed.contains_key(step),
            "the README's own-photos session has no {step} step: {commands:#?}"
        );
    }
    let train = &printed["train"];
    assert!(
        train.stdout.contains("test loss") && train.stdout.contains("test accuracy"),
        "{}{}",
        train.stderr,
        train.stdout
    );
    // The model the session exported, and the one it classifies and serves.
    let model = printed["export"]
        .words
        .iter()
        .find(|w| w.ends_with(".onnx"))
        .expect("pipe export names its .onnx file");
    assert!(pwd.join(model).is_file(), "{model} was not written");
    let infer = &printed["infer"];
    assert_eq!(
        option(&infer.words, "--model").unwrap_or("onnx/model.onnx"),
        model,
        "pipe infer classifies another model than the one exported"
    );

    // The photo sent to /v1/classify, and what `pipe infer` printed for it.
    let curl = &printed["curl"];
    let sent = curl
        .words
        .iter()
        .find_map(|w| w.strip_prefix('@'))
        .expect("curl sends a photo as @FILE");
    let (label, probability) = infer_lines(&infer.stdout)
        .remove(Path::new(sent))
        .unwrap_or_else(|| panic!("pipe infer printed no line for {sent}: {}", infer.stdout));
    let answer: serde_json::Value = serde_json::from_str(&curl.stdout)
        .unwrap_or_else(|e| panic!("/v1/classify answered no JSON ({e}): {}", curl.stdout));
    let served = &answer["predictions"][0];
    assert_eq!(served["label"].as_str(), Some(label.as_str()), "{answer}");
    let served_p = served["probability"].as_f64().expect("a probability");
    // `pipe infer` prints four decimals.
    assert!(
        (served_p - probability).abs() <= 0.5e-4 + 1e-6,
        "served {served_p}, pipe infer printed {probability}"
    );
    // And to 1e-5 against `pipe infer --format json` with the same model and backend.
    let mut json_args = vec!["infer", "--model", model, "--format", "json", sent];
    if let Some(backend) = option(&infer.words, "--backend") {
        json_args.extend(["--backend", backend]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(&json_args)
        .current_dir(pwd)
        .output()
        .unwrap();
    assert!(out.status.success(), "pipe {json_args:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let record = &doc["predictions"][0];
    assert_eq!(record["label"], served["label"]);
    let row = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (a, b) = (row(&record["probabilities"]), row(&served["probabilities"]));
    assert_eq!(a.len(), CLASSES.len());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5, "pipe infer {a:?}, served {b:?}");
    }

    let (exited_0, log) = stopped;
    assert!(exited_0, "pipe serve did not exit 0 after SIGTERM: {log}");
}
