//! `pipe serve` end to end: a small model trained on real CIFAR-10 images (made by `make setup`) and
//! exported, served on a free localhost port, checked with the official Triton client
//! (`tritonclient[http]` in `.venv`, via `tests/serve_client.py`) and with plain HTTP against
//! `pipe infer --format json` on the same files and backend; then faults (bad requests of every kind,
//! slow and aborted clients, a full queue) and SIGTERM during a burst of requests.
#![cfg(all(feature = "train", feature = "serve", feature = "ort"))]

mod common;

use common::{cifar10, cifar10_names, root, s, weights, Pipe};
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Largest |Δprobability| allowed between the server and `pipe infer` (same model and backend).
const TOLERANCE: f32 = 1e-5;
const MODEL: &str = "pipe_vgg16";

/// The model, the test images and `pipe infer`'s results on them, made once for all tests.
struct Fixture {
    _dir: tempfile::TempDir,
    model: PathBuf,
    files: Vec<PathBuf>,
    /// The images decoded as pipe decodes them, uint8 NHWC RGB 32x32.
    pixels: Vec<u8>,
    /// Per backend: (label index, probabilities) per file, from `pipe infer --format json`.
    infer: HashMap<&'static str, Vec<(usize, Vec<f32>)>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let data = cifar10();
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        // A small run (the network's output does not need to be good, only pipe's).
        Pipe::train()
            .data(&data)
            .weights(weights())
            .runs(&runs)
            .name("serve")
            .no_cache()
            .limits(300, 120)
            .epochs(2)
            .batch(16)
            .ok();
        let model = dir.path().join("model.onnx");
        Pipe::export(&model)
            .run("serve")
            .runs(&runs)
            .arg("--verify-images", "16")
            .ok();
        // Four test images per class.
        let mut files = Vec::new();
        for class in cifar10_names() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(data.join("test").join(class))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            files.extend(names.into_iter().take(4));
        }
        let squash = pipe::data::ImageSpec::new(32, pipe::data::ResizePolicy::Squash).full_decode();
        let pixels: Vec<u8> = files
            .iter()
            .flat_map(|f| pipe::data::load_image(f, &squash).unwrap())
            .collect();
        let infer = ["tract", "ort"]
            .into_iter()
            .map(|b| (b, infer_json(b, &model, &files)))
            .collect();
        Fixture {
            _dir: dir,
            model,
            files,
            pixels,
            infer,
        }
    })
}

/// `pipe infer --format json` on `files`: (label index, probabilities) per file, in order.
fn infer_json(backend: &str, model: &Path, files: &[PathBuf]) -> Vec<(usize, Vec<f32>)> {
    let out = Pipe::new("infer --format json")
        .arg("--model", model)
        .backend(backend)
        .paths(files)
        .ok();
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    let preds = doc["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), files.len());
    preds
        .iter()
        .zip(files)
        .map(|(p, f)| {
            assert_eq!(p["path"].as_str().unwrap(), s(f));
            (
                p["class_index"].as_u64().unwrap() as usize,
                floats(&p["probabilities"]),
            )
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Checks `rows` (one probability row per image) against `pipe infer`'s for `backend`.
fn assert_matches_infer(backend: &str, rows: &[Vec<f32>], what: &str) {
    assert_rows_match(
        &fixture().infer[backend],
        rows,
        &format!("{what} ({backend})"),
    );
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

/// A running `pipe serve` on a free port; stopped with SIGKILL if a test panics.
struct Server {
    child: Child,
    addr: String,
    /// The gRPC service's address, when started with --grpc-port.
    grpc: Option<String>,
    /// The line the server printed on stdout when it started listening.
    banner: String,
    /// Its stderr, line by line as it comes.
    log: Arc<LogLines>,
    /// The thread that reads the stderr into `log`; it ends when the server closes it.
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Lines a process wrote, shared with the thread that reads them, which wakes waiters at each line.
#[derive(Default)]
struct LogLines {
    /// The lines so far, and whether the writer closed its end.
    lines: Mutex<(Vec<String>, bool)>,
    grew: Condvar,
}

impl LogLines {
    /// Reads `from` line by line into `self` until it closes.
    fn follow(&self, from: impl Read) {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            self.lines.lock().unwrap().0.push(line);
            self.grew.notify_all();
        }
        self.lines.lock().unwrap().1 = true;
        self.grew.notify_all();
    }

    /// All lines so far, joined.
    fn text(&self) -> String {
        self.lines.lock().unwrap().0.join("\n")
    }

    /// Blocks until `seen` holds for the lines so far; panics with `what` after 120 s, or when the
    /// writer closed its end first.
    fn wait_for(&self, what: &str, seen: impl Fn(&[String]) -> bool) {
        let start = Instant::now();
        let mut guard = self.lines.lock().unwrap();
        while !seen(&guard.0) {
            let left = Duration::from_secs(120).saturating_sub(start.elapsed());
            if guard.1 || left.is_zero() {
                // Unlocked before the panic, which would otherwise poison the lock for the reader.
                let text = guard.0.join("\n");
                drop(guard);
                panic!("{what}: not seen in the log within 120 s or before it ended:\n{text}");
            }
            guard = self.grew.wait_timeout(guard, left).unwrap().0;
        }
    }
}

/// The value of the field `name` in a line of the server's text log (`... name=value ...`).
fn log_field(line: &str, name: &str) -> Option<i64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

impl Server {
    fn start(backend: &str, extra: &[&str]) -> Server {
        Server::start_model(&fixture().model, backend, extra)
    }

    /// `pipe serve` of `model` with `backend` and the `extra` arguments.
    fn start_model(model: &Path, backend: &str, extra: &[&str]) -> Server {
        Server::launch(
            Pipe::new("serve --port 0").arg("--model", model),
            backend,
            extra,
        )
    }

    /// `pipe serve` of the model repository `dir` with `backend` and the `extra` arguments.
    fn start_repository(dir: &Path, backend: &str, extra: &[&str]) -> Server {
        Server::launch(
            Pipe::new("serve --port 0").arg("--model-repository", dir),
            backend,
            extra,
        )
    }

    fn launch(serve: Pipe, backend: &str, extra: &[&str]) -> Server {
        let mut serve = serve.backend(backend);
        for word in extra {
            serve = serve.path(word);
        }
        let mut child = serve
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(LogLines::default());
        let reader = {
            let (log, stderr) = (log.clone(), child.stderr.take().unwrap());
            std::thread::spawn(move || log.follow(stderr))
        };
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        // With --grpc-port, a second line gives the gRPC address.
        let grpc = if extra.contains(&"--grpc-port") {
            let mut second = String::new();
            stdout.read_line(&mut second).unwrap();
            let addr = second
                .split("gRPC (KServe v2) on ")
                .nth(1)
                .unwrap_or_else(|| panic!("no gRPC address in {second:?}"))
                .trim()
                .to_string();
            Some(addr)
        } else {
            None
        };
        let addr = line
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                log.wait_for(&format!("an address in {line:?}"), |_| false);
                unreachable!("{line:?} holds no address")
            })
            .to_string();
        Server {
            child,
            addr,
            grpc,
            banner: line,
            log,
            reader: Some(reader),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) },
            0
        );
    }

    /// Sends `sig`, waits (at most 60 s) for the exit and returns its status and the log.
    fn stop_with(mut self, sig: libc::c_int) -> (ExitStatus, String) {
        self.signal(sig);
        let watchdog = common::Watchdog::new(self.child.id(), Duration::from_secs(60));
        let status = self.child.wait().unwrap();
        assert!(!watchdog.finish(), "server did not stop within 60 s");
        self.reader.take().unwrap().join().unwrap();
        (status, self.log.text())
    }

    fn stop(self) -> String {
        let (status, log) = self.stop_with(libc::SIGTERM);
        assert!(status.success(), "exit {status}: {log}");
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that opens a connection per request: the server closes a connection after refusing
/// a request whose body it did not read (413), and a pooled connection could be reused in that moment.
fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn pixels_f32(range: std::ops::Range<usize>) -> Vec<f32> {
    let per = 32 * 32 * 3;
    fixture().pixels[range.start * per..range.end * per]
        .iter()
        .map(|&v| f32::from(v))
        .collect()
}

fn binary_request(
    server: &Server,
    n_range: std::ops::Range<usize>,
    outputs: Value,
) -> reqwest::blocking::Response {
    let n = n_range.len();
    let mut header = json!({"inputs": [{"name": "images", "shape": [n, 32, 32, 3], "datatype": "FP32",
        "parameters": {"binary_data_size": n * 32 * 32 * 3 * 4}}]});
    if !outputs.is_null() {
        header["outputs"] = outputs;
    }
    let mut body = serde_json::to_vec(&header).unwrap();
    let json_len = body.len();
    body.extend(pixels_f32(n_range).iter().flat_map(|v| v.to_le_bytes()));
    client()
        .post(server.url(&format!("/v2/models/{MODEL}/infer")))
        .header("Inference-Header-Content-Length", json_len)
        .body(body)
        .send()
        .unwrap()
}

/// Splits a binary response into its JSON header and binary section.
fn split_binary(resp: reqwest::blocking::Response) -> (Value, Vec<u8>) {
    assert_eq!(resp.status(), StatusCode::OK);
    let len: usize = resp.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = resp.bytes().unwrap();
    (
        serde_json::from_slice(&body[..len]).unwrap(),
        body[len..].to_vec(),
    )
}

fn rows(flat: &[f32], classes: usize) -> Vec<Vec<f32>> {
    flat.chunks(classes).map(<[f32]>::to_vec).collect()
}

#[test]
fn tritonclient_gets_the_probabilities_of_pipe_infer() {
    for backend in ["tract", "ort"] {
        let server = Server::start(backend, &[]);
        let args = ["--url", &server.addr, "--model", MODEL];
        let results = client_results("tests/serve_client.py", &args);
        for key in [
            "json",
            "binary",
            "binary_in_json_out",
            "default_outputs",
            "single",
        ] {
            let got: Vec<Vec<f32>> = results[key]
                .as_array()
                .unwrap()
                .iter()
                .map(floats)
                .collect();
            assert_matches_infer(backend, &got, &format!("tritonclient {key}"));
        }
        check_classification(backend, &results["classification"]);
        check_classification(backend, &results["classification_json"]);
        server.stop();
    }
}

/// Triton classification strings `value:index:label`, top 3 per image, against `pipe infer`.
fn check_classification(backend: &str, labels: &Value) {
    for (row, (_, probs)) in labels
        .as_array()
        .unwrap()
        .iter()
        .zip(&fixture().infer[backend])
    {
        let top: Vec<(usize, f32)> = pipe::report::top_k(probs, 3);
        for (s, (c, p)) in row.as_array().unwrap().iter().zip(top) {
            let parts: Vec<&str> = s.as_str().unwrap().split(':').collect();
            assert_eq!(
                parts[1..],
                [c.to_string().as_str(), cifar10_names()[c]],
                "{s}"
            );
            assert!(
                (parts[0].parse::<f32>().unwrap() - p).abs() <= 1e-5,
                "{s} vs {p}"
            );
        }
    }
}

#[test]
fn plain_http_and_classify_match_pipe_infer() {
    let fx = fixture();
    let n = fx.files.len();
    for backend in ["tract", "ort"] {
        let server = Server::start(backend, &["--max-batch", "16"]);
        let http = client();
        for path in [
            "/v2/health/live",
            "/v2/health/ready",
            "/v2",
            "/v2/models/pipe_vgg16/ready",
            "/v2/models/pipe_vgg16/versions/1/ready",
            "/v2/models/pipe_vgg16/config",
        ] {
            assert_eq!(
                http.get(server.url(path)).send().unwrap().status(),
                StatusCode::OK,
                "{path}"
            );
        }
        let meta: Value = http
            .get(server.url("/v2/models/pipe_vgg16"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(meta["inputs"][0]["shape"], json!([-1, 32, 32, 3]));
        assert_eq!(
            meta["outputs"][0],
            json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]})
        );
        // JSON tensors, flat and nested, on the versioned path.
        let flat = pixels_f32(0..n);
        let nested: Vec<Vec<Vec<Vec<f32>>>> = flat
            .chunks(32 * 32 * 3)
            .map(|img| {
                img.chunks(32 * 3)
                    .map(|r| r.chunks(3).map(<[f32]>::to_vec).collect())
                    .collect()
            })
            .collect();
        for (what, data) in [("flat", json!(flat)), ("nested", json!(nested))] {
            let req = json!({"id": what, "inputs": [{"name": "images", "shape": [n, 32, 32, 3], "datatype": "FP32", "data": data}]});
            let resp = http
                .post(server.url("/v2/models/pipe_vgg16/versions/1/infer"))
                .json(&req)
                .send()
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let doc: Value = resp.json().unwrap();
            assert_eq!(
                (&doc["id"], &doc["model_name"]),
                (&json!(what), &json!(MODEL))
            );
            assert_eq!(doc["outputs"][0]["shape"], json!([n, 10]));
            assert_matches_infer(
                backend,
                &rows(&floats(&doc["outputs"][0]["data"]), 10),
                &format!("JSON {what}"),
            );
        }
        // Binary tensors both ways, with a classification output beside.
        let outputs = json!([{"name": "probabilities", "parameters": {"binary_data": true}},
            {"name": "probabilities", "parameters": {"classification": 2}}]);
        let (header, binary) = split_binary(binary_request(&server, 0..n, outputs));
        assert_eq!(
            header["outputs"][0]["parameters"]["binary_data_size"],
            json!(n * 40)
        );
        let probs: Vec<f32> = binary
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_matches_infer(backend, &rows(&probs, 10), "binary");
        let labels = &header["outputs"][1];
        assert_eq!(
            (&labels["datatype"], &labels["shape"]),
            (&json!("BYTES"), &json!([n, 2]))
        );
        for (i, (label, _)) in fx.infer[backend].iter().enumerate() {
            let first = labels["data"][2 * i].as_str().unwrap();
            assert!(
                first.ends_with(&format!(":{label}:{}", cifar10_names()[*label])),
                "{first}"
            );
        }
        check_classify(&server, backend);
        assert_metrics_contain(
            &server,
            &[
                "pipe_batch_size_count",
                "pipe_http_requests_total{endpoint=\"/v1/classify\",code=\"200\"}",
                "pipe_http_request_duration_seconds_bucket",
                "pipe_queue_depth 0",
                "pipe_inflight_images 0",
            ],
        );
        server.stop();
    }
}

/// An int8 export (`--quantize int8`) of the fixture's run, calibrated on 100 of its training images
/// and exported whatever its accuracy.
fn int8_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let fx = fixture();
        let model = fx._dir.path().join("int8.onnx");
        Pipe::export(&model)
            .run("serve")
            .runs(fx._dir.path().join("runs"))
            .arg("--quantize", "int8")
            .arg("--calibration-images", "100")
            // A small run's test split is 120 images, a point is less than two: the bound is not
            // what this model is for.
            .arg("--max-accuracy-drop", "100")
            .ok();
        model
    })
}

/// The server classifies with an int8 model exactly as `pipe infer` does with it, on each backend:
/// the same labels and probabilities within the float tolerance, through the binary tensor protocol
/// (all images in one request) and `/v1/classify` (one file per request).
#[test]
fn an_int8_model_serves_what_pipe_infer_gives_with_it() {
    let fx = fixture();
    let model = int8_model();
    let n = fx.files.len();
    for backend in ["tract", "ort"] {
        let expected = infer_json(backend, model, &fx.files);
        let float = &fx.infer[backend];
        let kept = expected
            .iter()
            .zip(float)
            .filter(|(q, f)| q.0 == f.0)
            .count();
        assert!(
            kept * 10 >= 8 * n,
            "{backend}: int8 keeps {kept} of {n} float labels"
        );
        let server = Server::start_model(model, backend, &["--max-batch", "16"]);
        let meta: Value = client()
            .get(server.url(&format!("/v2/models/{MODEL}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(meta["outputs"][0]["shape"], json!([-1, 10]), "{meta}");
        let outputs = json!([{"name": "probabilities", "parameters": {"binary_data": true}}]);
        let (_, binary) = split_binary(binary_request(&server, 0..n, outputs));
        let probs: Vec<f32> = binary
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_rows_match(
            &expected,
            &rows(&probs, 10),
            &format!("int8 binary ({backend})"),
        );
        let http = client();
        let classified: Vec<Vec<f32>> = fx
            .files
            .iter()
            .map(|f| {
                let resp = http
                    .post(server.url("/v1/classify"))
                    .body(std::fs::read(f).unwrap())
                    .send()
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "{}", s(f));
                let doc: Value = resp.json().unwrap();
                floats(&doc["predictions"][0]["probabilities"])
            })
            .collect();
        assert_rows_match(
            &expected,
            &classified,
            &format!("int8 /v1/classify ({backend})"),
        );
        let log = server.stop();
        let warned = log.contains("an int8 model on tract, which runs int8 files no faster");
        assert_eq!(warned, backend == "tract", "{backend}: {log}");
    }
}

/// A model repository in `dir/repo`: the fixture's float and int8 exports as versions 1 and 2 of
/// model `a` (`version_policy: { all: {} }`), and model `b` as `pipe export --triton --logits`
/// writes it (its own `config.pbtxt`, version 1, logits).
fn repository(dir: &Path) -> PathBuf {
    let fx = fixture();
    let repo = dir.join("repo");
    for (v, file) in [("1", fx.model.as_path()), ("2", int8_model())] {
        std::fs::create_dir_all(repo.join("a").join(v)).unwrap();
        std::fs::copy(file, repo.join("a").join(v).join("model.onnx")).unwrap();
    }
    std::fs::write(
        repo.join("a/config.pbtxt"),
        "name: \"a\"\nversion_policy: { all: {} }\n",
    )
    .unwrap();
    Pipe::new("export")
        .run("serve")
        .runs(fx._dir.path().join("runs"))
        .arg("--triton", &repo)
        .arg("--triton-name", "b")
        .flag("--logits")
        .arg("--verify-images", "16")
        .ok();
    repo
}

/// `pipe infer --format json` outputs (probabilities or logits) on the fixture's files.
fn infer_outputs(backend: &str, model: &Path) -> Vec<Vec<f32>> {
    let out = Pipe::new("infer --format json")
        .arg("--model", model)
        .backend(backend)
        .paths(&fixture().files)
        .ok();
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    doc["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| floats(p.get("probabilities").or(p.get("logits")).unwrap()))
        .collect()
}

/// Largest |a - b| over two sets of rows of the same shape.
fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// Runs the Triton client `script` (`tests/*_client.py`) on the fixture's images with `args` (the
/// server's addresses) and returns what it wrote, by key.
fn client_results(script: &str, args: &[&str]) -> HashMap<String, Value> {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let pixels = dir.path().join("pixels.u8");
    std::fs::write(&pixels, &fx.pixels).unwrap();
    let out = dir.path().join("outputs.json");
    let n = fx.files.len().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--pixels",
        s(&pixels),
        "--n",
        &n,
        "--size",
        "32",
        "--out",
        s(&out),
    ]);
    run_python(&root().join(".venv/bin/python"), script, &all);
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

/// [`client_results`] of a script that writes rows of probabilities under each key (a model
/// version).
fn client_outputs(script: &str, args: &[&str]) -> HashMap<String, Vec<Vec<f32>>> {
    client_results(script, args)
        .into_iter()
        .map(|(k, v)| (k, v.as_array().unwrap().iter().map(floats).collect()))
        .collect()
}

/// A repository with two models and two versions, in explicit mode, driven by the official client:
/// the index, readiness and metadata per version, routing (the highest version without one), load
/// and unload, refusals; every version answers what `pipe infer` gives with its own file.
#[test]
fn a_model_repository_serves_each_version_as_pipe_infer_does_and_loads_and_unloads() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let b_model = repo.join("b/1/model.onnx");
    let backend = "tract";
    // A model to load that the repository lacks stops the command before the server starts.
    let err = Pipe::new("serve --port 0 --model-control-mode explicit")
        .arg("--model-repository", &repo)
        .arg("--load-model", "nosuch")
        .fails_with(1);
    assert!(
        err.contains("--load-model nosuch: no model 'nosuch' in the repository")
            && err.contains("(its models: a, b)"),
        "{err}"
    );
    let server = Server::start_repository(
        &repo,
        backend,
        &["--model-control-mode", "explicit", "--load-model", "a"],
    );
    assert!(
        server.banner.contains("'a' version 1, 'a' version 2"),
        "{}",
        server.banner
    );
    let got = client_outputs("tests/repository_client.py", &["--url", &server.addr]);
    let float = infer_outputs(backend, &fx.model);
    let int8 = infer_outputs(backend, int8_model());
    let logits = infer_outputs(backend, &b_model);
    for (key, expected) in [("a", &int8), ("a1", &float), ("a2", &int8), ("b", &logits)] {
        let d = max_diff(&got[key], expected);
        assert!(d <= TOLERANCE, "{key}: max |Δ| {d:e} against pipe infer");
    }
    // The versions really differ, so the routing above is what the comparisons show.
    assert!(max_diff(&float, &int8) > 1e-3 && max_diff(&float, &logits) > 1e-1);
    let log = server.stop();
    assert!(log.contains("version 1 of 'b' is live"), "{log}");
}

/// KServe v2 over gRPC with the official gRPC client, on the repository of the test above: health,
/// metadata and configuration as over HTTP; answers (raw and typed contents, classification strings)
/// identical to HTTP's and equal to `pipe infer`'s per version; the repository calls; a message over
/// `--grpc-max-message-mb` refused with RESOURCE_EXHAUSTED while the server keeps serving.
#[test]
fn grpc_answers_as_http_does_and_refuses_an_oversized_message_cleanly() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let server = Server::start_repository(
        &repo,
        "tract",
        &[
            "--model-control-mode",
            "explicit",
            "--load-model",
            "*",
            "--grpc-port",
            "0",
            "--grpc-max-message-mb",
            "1",
        ],
    );
    let got = client_outputs(
        "tests/grpc_client.py",
        &[
            "--http",
            &server.addr,
            "--grpc",
            server.grpc.as_deref().unwrap(),
        ],
    );
    let int8 = infer_outputs("tract", int8_model());
    let float = infer_outputs("tract", &fx.model);
    let logits = infer_outputs("tract", &repo.join("b/1/model.onnx"));
    for (key, expected) in [("a", &int8), ("a1", &float), ("b", &logits)] {
        let d = max_diff(&got[key], expected);
        assert!(
            d <= TOLERANCE,
            "gRPC {key}: max |Δ| {d:e} against pipe infer"
        );
    }
    let log = server.stop();
    assert!(
        log.contains("path=\"ModelInfer\""),
        "gRPC requests are logged: {log}"
    );
}

/// The protocol pipe reads `config.pbtxt` with and serves gRPC from, `proto/triton.binpb`, is the one
/// compiled into the official tritonclient wheel.
#[test]
fn the_committed_protocol_is_tritonclient_s() {
    run_python(
        &root().join(".venv/bin/python"),
        "scripts/triton_descriptors.py",
        &["--check", s(&root().join("proto/triton.binpb"))],
    );
}

/// Poll mode: new versions dropped into the repository go live, a truncated one is refused (logged,
/// listed as unavailable) while the live version keeps answering and the server stays ready, and
/// requests sent all along by four clients across three version swaps all succeed, each answered by
/// a version with that version's own outputs.
#[test]
fn poll_mode_swaps_versions_under_load_without_a_failed_request() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let model = repo.join("p");
    let put = |version: u32, bytes: &[u8]| {
        // As a deployment should: write beside, then rename into place (a new version's folder
        // with its file in it, or the file of an existing one).
        let folder = model.join(version.to_string());
        let incoming = dir.path().join("incoming");
        std::fs::create_dir_all(&incoming).unwrap();
        std::fs::write(incoming.join("model.onnx"), bytes).unwrap();
        if folder.exists() {
            std::fs::rename(incoming.join("model.onnx"), folder.join("model.onnx")).unwrap();
        } else {
            std::fs::create_dir_all(&model).unwrap();
            std::fs::rename(&incoming, &folder).unwrap();
        }
    };
    let float_bytes = std::fs::read(&fx.model).unwrap();
    let int8_bytes = std::fs::read(int8_model()).unwrap();
    put(1, &float_bytes);
    let server = Server::start_repository(
        &repo,
        "tract",
        &[
            "--model-control-mode",
            "poll",
            "--repository-poll-secs",
            "1",
            "--log-level",
            "debug",
        ],
    );
    let versions = |server: &Server| -> Value {
        client()
            .get(server.url("/v2/models/p"))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()["versions"]
            .clone()
    };
    let polls = |server: &Server| -> i64 {
        metrics_text(server)
            .lines()
            .find_map(|l| l.strip_prefix("pipe_repository_polls_total "))
            .unwrap()
            .parse()
            .unwrap()
    };
    // Returns once a whole scan has run after the repository's last change: the scan after the one
    // that was under way (if any) when the count was read.
    let scanned = |server: &Server| {
        let after = polls(server) + 2;
        server.log.wait_for(&format!("scan {after}"), |lines| {
            lines
                .iter()
                .any(|l| l.contains("repository scanned") && log_field(l, "polls") >= Some(after))
        });
    };
    assert_eq!(versions(&server), json!(["1"]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Answers by version 1, and by version 4, the last one swapped in.
    let by_first = Arc::new(Tally::default());
    let by_last = Arc::new(Tally::default());
    let n = 4;
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, addr) = (stop.clone(), server.addr.clone());
            let (by_first, by_last) = (by_first.clone(), by_last.clone());
            std::thread::spawn(move || {
                let http = client();
                let mut answers: Vec<(String, Vec<f32>)> = Vec::new();
                let mut failures = Vec::new();
                let mut header = json!({"inputs": [{"name": "images", "shape": [n, 32, 32, 3],
                    "datatype": "FP32", "parameters": {"binary_data_size": n * 32 * 32 * 3 * 4}}],
                    "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]});
                header["id"] = json!(c.to_string());
                let mut body = serde_json::to_vec(&header).unwrap();
                let json_len = body.len();
                body.extend(pixels_f32(c..c + n).iter().flat_map(|v| v.to_le_bytes()));
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let resp = http
                        .post(format!("http://{addr}/v2/models/p/infer"))
                        .header("Inference-Header-Content-Length", json_len)
                        .body(body.clone())
                        .send();
                    match resp {
                        Ok(r) if r.status() == StatusCode::OK => {
                            let (head, bin) = split_binary(r);
                            let probs = bin
                                .chunks(4)
                                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                                .collect();
                            let version = head["model_version"].as_str().unwrap().to_string();
                            match version.as_str() {
                                "1" => by_first.add(),
                                "4" => by_last.add(),
                                _ => {}
                            }
                            answers.push((version, probs));
                        }
                        Ok(r) => failures.push(format!("{}: {}", r.status(), r.text().unwrap())),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (c, answers, failures)
            })
        })
        .collect();
    by_first.wait_for(4, "answers by version 1");
    // Swap 1: version 2 (int8) goes live, version 1 leaves (the default policy: the latest one).
    put(2, &int8_bytes);
    scanned(&server);
    assert_eq!(versions(&server), json!(["2"]));
    // A truncated version 3 is refused; version 2 keeps answering, the server stays ready.
    put(3, &float_bytes[..float_bytes.len() / 2]);
    let index = || -> Value {
        client()
            .post(server.url("/v2/repository/index"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    scanned(&server);
    let index_now = index();
    assert!(
        index_now
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["version"] == "3" && m["state"] == "UNAVAILABLE"),
        "version 3 refused: {index_now}"
    );
    // Two more scans later, the refused file has not been tried again, and version 2 still serves.
    scanned(&server);
    assert_eq!(versions(&server), json!(["2"]));
    let ready = client().get(server.url("/v2/health/ready")).send().unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    // Swap 2: the complete file replaces the truncated one and goes live; swap 3: version 4.
    put(3, &float_bytes);
    scanned(&server);
    assert_eq!(versions(&server), json!(["3"]));
    put(4, &int8_bytes);
    scanned(&server);
    assert_eq!(versions(&server), json!(["4"]));
    // A version folder without the model file is a version that fails, as in Triton: listed with
    // the reason, and version 4 keeps serving.
    std::fs::create_dir_all(model.join("5")).unwrap();
    let entry = |version: &str| -> Option<Value> {
        index()
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["version"] == version)
            .cloned()
    };
    scanned(&server);
    let five = entry("5");
    assert!(
        five.as_ref().is_some_and(|e| {
            e["state"] == "UNAVAILABLE"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("holds no model.onnx"))
        }),
        "empty version 5 listed: {five:?}"
    );
    // A broken config.pbtxt is not applied; version 4 keeps serving, its index entry says why,
    // and the error is logged once, not at every scan.
    std::fs::write(model.join("config.pbtxt"), "name: \"p\"\nmax_batch: 8\n").unwrap();
    scanned(&server);
    let four = entry("4");
    assert!(
        four.as_ref().is_some_and(|e| {
            e["state"] == "READY"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("max_batch"))
        }),
        "the config error in the index: {four:?}"
    );
    scanned(&server);
    assert_eq!(versions(&server), json!(["4"]));
    // A valid config that does not fit the live version (224-pixel dims) is not applied either.
    let fitting =
        "name: \"p\"\ninput [ { name: \"images\" data_type: TYPE_FP32 dims: [ 32, 32, 3 ] } ]\n";
    std::fs::write(
        model.join("config.pbtxt"),
        fitting.replace("32, 32", "224, 224"),
    )
    .unwrap();
    scanned(&server);
    let four = entry("4");
    assert!(
        four.as_ref().is_some_and(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("dims [224, 224, 3]"))
        }),
        "the unfit config in the index: {four:?}"
    );
    // One that fits is applied at the next scan without a new file: its policy (the latest two)
    // brings version 3 back, and the configuration reports it.
    std::fs::remove_dir(model.join("5")).unwrap();
    std::fs::write(
        model.join("config.pbtxt"),
        format!("{fitting}version_policy: {{ latest: {{ num_versions: 2 }} }}\n"),
    )
    .unwrap();
    scanned(&server);
    assert_eq!(versions(&server), json!(["3", "4"]));
    let config: Value = client()
        .get(server.url("/v2/models/p/config"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        config["version_policy"],
        json!({"latest": {"num_versions": 2}})
    );
    // Requests keep being answered by the last version before the clients stop.
    by_last.wait_for(8, "answers by version 4");
    stop.store(true, std::sync::atomic::Ordering::Release);
    let float = infer_outputs("tract", &fx.model);
    let int8 = infer_outputs("tract", int8_model());
    let mut seen = std::collections::BTreeSet::new();
    let mut answered = 0;
    for handle in clients {
        let (c, answers, failures) = handle.join().unwrap();
        assert!(
            failures.is_empty(),
            "client {c}: failed requests {failures:?}"
        );
        for (version, probs) in answers {
            let expected = if version == "1" || version == "3" {
                &float
            } else {
                &int8
            };
            let d = max_diff(&rows(&probs, 10), &expected[c..c + n]);
            assert!(
                d <= TOLERANCE,
                "client {c}, version {version}: max |Δp| {d:e}"
            );
            seen.insert(version);
            answered += 1;
        }
    }
    let log = server.stop();
    assert_eq!(
        log.matches("version 3 of 'p' refused (").count(),
        1,
        "a refused file is tried once until it changes: {log}"
    );
    assert!(log.contains("version(s) 2 keep serving"), "{log}");
    assert!(
        log.contains("version 5 of 'p' refused (") && log.contains("version(s) 4 keep serving"),
        "{log}"
    );
    assert_eq!(
        log.matches("model 'p' not synced: ").count(),
        2,
        "each config error is logged once: {log}"
    );
    eprintln!("{answered} requests answered across the swaps by versions {seen:?}, none failed");
    assert!(
        seen.contains("1") && seen.contains("4"),
        "versions seen: {seen:?}"
    );
}

/// A count that threads add to and a test waits on.
#[derive(Default)]
struct Tally {
    count: Mutex<usize>,
    grew: Condvar,
}

impl Tally {
    fn add(&self) {
        *self.count.lock().unwrap() += 1;
        self.grew.notify_all();
    }

    /// Blocks until the count reaches `at_least`; panics with `what` after 120 s.
    fn wait_for(&self, at_least: usize, what: &str) {
        let (guard, timeout) = self
            .grew
            .wait_timeout_while(
                self.count.lock().unwrap(),
                Duration::from_secs(120),
                |count| *count < at_least,
            )
            .unwrap();
        let count = *guard;
        // Unlocked before the panic, which would otherwise poison the lock for the clients.
        drop(guard);
        assert!(
            !timeout.timed_out(),
            "{what}: {count} of {at_least} within 120 s"
        );
    }
}

/// Checks `rows` against `expected` ((label, probabilities) per image from `pipe infer`): the same
/// labels and every probability within [`TOLERANCE`].
fn assert_rows_match(expected: &[(usize, Vec<f32>)], rows: &[Vec<f32>], what: &str) {
    assert_eq!(rows.len(), expected.len(), "{what}: number of images");
    let mut max = 0f32;
    for (i, (row, (label, probs))) in rows.iter().zip(expected).enumerate() {
        assert_eq!(row.len(), probs.len(), "{what}: image {i}");
        assert_eq!(argmax(row), *label, "{what}: label of image {i}");
        for (a, b) in row.iter().zip(probs) {
            max = max.max((a - b).abs());
        }
    }
    assert!(max <= TOLERANCE, "{what}: max |Δp| {max:e} > {TOLERANCE:e}");
    eprintln!("{what}: same labels as pipe infer, max |Δp| {max:.1e}");
}

/// The text of the server's `/metrics`.
fn metrics_text(server: &Server) -> String {
    client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// Fetches `/metrics` and checks that it holds every one of `needles`.
fn assert_metrics_contain(server: &Server, needles: &[&str]) {
    let metrics = metrics_text(server);
    for needle in needles {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
}

/// Fetches `/metrics` and checks that each of `lines` is one of its lines, exactly.
fn assert_metric_lines(server: &Server, lines: &[&str]) {
    let metrics = metrics_text(server);
    for line in lines {
        assert!(
            metrics.lines().any(|l| l == *line),
            "{line} missing:\n{metrics}"
        );
    }
}

/// Posts `form` with each of `files` added as an `image` part to `/v1/classify`, expects 200 and
/// returns the JSON answer.
fn classify_multipart(
    server: &Server,
    mut form: reqwest::blocking::multipart::Form,
    files: &[PathBuf],
) -> Value {
    for f in files {
        form = form.file("image", f).unwrap();
    }
    let resp = client()
        .post(server.url("/v1/classify"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().unwrap()
}

/// `/v1/classify` with raw bodies and a multipart form equals `pipe infer` on the same files.
fn check_classify(server: &Server, backend: &str) {
    let fx = fixture();
    let http = client();
    let mut got = Vec::new();
    for f in &fx.files[..5] {
        let resp = http
            .post(server.url("/v1/classify?top_k=3"))
            .body(std::fs::read(f).unwrap())
            .send()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let doc: Value = resp.json().unwrap();
        let p = &doc["predictions"][0];
        assert_eq!(p["top_k"].as_array().unwrap().len(), 3);
        assert_eq!(
            p["label"],
            json!(cifar10_names()[p["class_index"].as_u64().unwrap() as usize])
        );
        got.push(floats(&p["probabilities"]));
    }
    let form = reqwest::blocking::multipart::Form::new().text("note", "not a file");
    let doc = classify_multipart(server, form, &fx.files[5..]);
    for (p, f) in doc["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&fx.files[5..])
    {
        assert_eq!(
            p["file"].as_str().unwrap(),
            f.file_name().unwrap().to_str().unwrap()
        );
        got.push(floats(&p["probabilities"]));
    }
    assert_matches_infer(backend, &got, "/v1/classify");
}

/// A raw HTTP/1.1 request on its own connection, the body sent in `pieces` with `pause` between
/// them; returns the status code (0 when the server closed without answering).
fn raw_request(addr: &str, path: &str, body: &[u8], pieces: usize, pause: Duration) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    for piece in body.chunks(body.len().div_ceil(pieces).max(1)) {
        if stream.write_all(piece).is_err() {
            break;
        }
        std::thread::sleep(pause);
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A PNM header announcing 20000x20000 pixels (1.2 GB decoded) followed by a few bytes.
fn bomb_image() -> Vec<u8> {
    let mut b = b"P6\n20000 20000\n255\n".to_vec();
    b.extend([0u8; 64]);
    b
}

/// One bad request and the status it must get.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    status: u16,
}

impl Case {
    fn new(
        what: &'static str,
        method: &'static str,
        path: &str,
        body: impl Into<Vec<u8>>,
        status: u16,
    ) -> Case {
        Case {
            what,
            method,
            path: path.to_string(),
            body: body.into(),
            headers: vec![],
            status,
        }
    }

    fn header(mut self, name: &'static str, value: impl ToString) -> Case {
        self.headers.push((name, value.to_string()));
        self
    }

    /// Sends it; checks the status and the JSON error body, and returns the message.
    fn check(self, server: &Server, http: &Client) -> String {
        let mut req = http
            .request(self.method.parse().unwrap(), server.url(&self.path))
            .body(self.body);
        for (name, value) in self.headers {
            req = req.header(name, value);
        }
        let resp = req.send().unwrap();
        let what = self.what;
        assert_eq!(resp.status().as_u16(), self.status, "{what}");
        let doc: Value = resp
            .json()
            .unwrap_or_else(|e| panic!("{what}: body not JSON: {e}"));
        let message = doc["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error in {doc}"));
        eprintln!("{what}: {} {message}", self.status);
        message.to_string()
    }
}

#[test]
fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let fx = fixture();
    let server = Server::start(
        "tract",
        &[
            "--max-body-mb",
            "1",
            "--request-timeout-ms",
            "2500",
            "--log-level",
            "debug",
        ],
    );
    let http = client();
    let infer = format!("/v2/models/{MODEL}/infer");
    let one = json!(pixels_f32(0..1));
    let input = |name: &str, shape: Value, dt: &str, data: Value| {
        json!({"inputs": [{"name": name, "shape": shape, "datatype": dt, "data": data}]})
            .to_string()
    };
    let good = input("images", json!([1, 32, 32, 3]), "FP32", one.clone());
    let with_outputs = |o: Value| {
        let mut v: Value = serde_json::from_str(&good).unwrap();
        v["outputs"] = o;
        v.to_string()
    };
    let bin_header = |size: usize| {
        json!({"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "FP32", "parameters": {"binary_data_size": size}}]}).to_string()
    };
    let binary = |size: usize, data: usize| [bin_header(size).into_bytes(), vec![0; data]].concat();
    let jpeg = std::fs::read(&fx.files[0]).unwrap();
    let form = "multipart/form-data; boundary=XY";
    let header_len = "Inference-Header-Content-Length";
    #[rustfmt::skip]
    let cases = vec![
        Case::new("unknown model metadata", "GET", "/v2/models/resnet", "", 404),
        Case::new("unknown model infer", "POST", "/v2/models/resnet/infer", good.clone(), 404),
        Case::new("unknown version", "POST", &format!("/v2/models/{MODEL}/versions/2/infer"), good.clone(), 404),
        Case::new("unknown route", "GET", "/v3/nothing", "", 404),
        Case::new("wrong method", "DELETE", "/v2", "", 405),
        Case::new("empty body", "POST", &infer, "", 400),
        Case::new("malformed JSON", "POST", &infer, "{\"inputs\": [", 400),
        Case::new("JSON not an object", "POST", &infer, "[1, 2, 3]", 400),
        Case::new("no inputs", "POST", &infer, r#"{"inputs": []}"#, 400),
        Case::new("wrong tensor name", "POST", &infer, input("pixels", json!([1, 32, 32, 3]), "FP32", one.clone()), 400),
        Case::new("wrong datatype", "POST", &infer, input("images", json!([1, 32, 32, 3]), "UINT8", one.clone()), 400),
        Case::new("wrong shape", "POST", &infer, input("images", json!([1, 16, 16, 3]), "FP32", one.clone()), 400),
        Case::new("zero batch", "POST", &infer, input("images", json!([0, 32, 32, 3]), "FP32", json!([])), 400),
        Case::new("data length mismatch", "POST", &infer, input("images", json!([2, 32, 32, 3]), "FP32", one.clone()), 400),
        Case::new("strings as data", "POST", &infer, input("images", json!([1, 32, 32, 3]), "FP32", json!(["a"])), 400),
        Case::new("unknown output", "POST", &infer, with_outputs(json!([{"name": "logits"}])), 400),
        Case::new("classification 0", "POST", &infer, with_outputs(json!([{"name": "probabilities", "parameters": {"classification": 0}}])), 400),
        Case::new("binary_data not a bool", "POST", &infer, with_outputs(json!([{"name": "probabilities", "parameters": {"binary_data": "yes"}}])), 400),
        Case::new("header length over body", "POST", &infer, bin_header(12288), 400).header(header_len, 100_000),
        Case::new("header length not a number", "POST", &infer, binary(12288, 12288), 400).header(header_len, "many"),
        Case::new("binary size not the shape's", "POST", &infer, binary(400, 400), 400).header(header_len, bin_header(400).len()),
        Case::new("binary section short", "POST", &infer, binary(12288, 100), 400).header(header_len, bin_header(12288).len()),
        Case::new("undeclared binary data", "POST", &infer, [good.as_bytes(), &[0; 8]].concat(), 400).header(header_len, good.len()),
        Case::new("body over the limit", "POST", &infer, vec![b' '; 3 << 19], 413),
        Case::new("classify empty body", "POST", "/v1/classify", "", 400),
        Case::new("classify not an image", "POST", "/v1/classify", "hello, not an image", 400),
        Case::new("classify truncated JPEG", "POST", "/v1/classify", &jpeg[..jpeg.len() / 2], 400),
        Case::new("classify decompression bomb", "POST", "/v1/classify", bomb_image(), 400),
        Case::new("classify top_k 0", "POST", "/v1/classify?top_k=0", jpeg.clone(), 400),
        Case::new("classify top_k not a number", "POST", "/v1/classify?top_k=many", jpeg.clone(), 400),
        Case::new("classify unknown parameter", "POST", "/v1/classify?topk=2", jpeg.clone(), 400),
        Case::new("binary data without its header", "POST", &infer, binary(12288, 12288), 400),
        Case::new("classify form without file", "POST", "/v1/classify", "--XY\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XY--\r\n", 400).header("Content-Type", form),
        Case::new("classify broken form", "POST", "/v1/classify", "--XY\r\nnonsense", 400).header("Content-Type", form),
    ];
    assert!(cases.len() >= 25);
    for case in cases {
        let bomb = case.what.contains("bomb");
        let what = case.what;
        let message = case.check(&server, &http);
        if what == "classify unknown parameter" {
            assert!(
                message
                    .contains("unknown field `topk`, expected one of `top_k`, `model`, `version`"),
                "{message}"
            );
        }
        if what == "binary data without its header" {
            assert!(
                message.contains("needs the Inference-Header-Content-Length header"),
                "{message}"
            );
        }
        if bomb {
            assert!(
                message.contains("20000x20000") && message.contains("decompression bomb"),
                "{message}"
            );
        }
    }
    // Slow clients: one within the timeout is answered, one past it gets 408.
    let body = good.as_bytes();
    let path = format!("/v2/models/{MODEL}/infer");
    assert_eq!(
        raw_request(&server.addr, &path, body, 4, Duration::from_millis(200)),
        200
    );
    assert_eq!(
        raw_request(&server.addr, &path, body, 8, Duration::from_millis(500)),
        408
    );
    // Aborted clients: half a body, then a whole request whose answer is never read.
    for cut in [body.len() / 2, body.len()] {
        let mut stream = TcpStream::connect(&server.addr).unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(&body[..cut]).unwrap();
        drop(stream);
    }
    // Still serving, nothing left in flight, every error counted.
    let resp = http
        .post(server.url(&infer))
        .body(good.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        http.get(server.url("/v2/health/ready"))
            .send()
            .unwrap()
            .status(),
        StatusCode::OK
    );
    server
        .log
        .wait_for("every admitted image released", |lines| {
            let images = |event: &str| -> i64 {
                lines
                    .iter()
                    .filter(|l| l.contains(event))
                    .filter_map(|l| log_field(l, "images"))
                    .sum()
            };
            images("images admitted") == images("images released")
        });
    assert_metrics_contain(
        &server,
        &[
            "pipe_inflight_images 0",
            "pipe_errors_total{kind=\"shape\"} 2",
            "pipe_errors_total{kind=\"body_too_large\"} 1",
            "pipe_errors_total{kind=\"request_timeout\"} 1",
            "pipe_errors_total{kind=\"model_not_found\"} 3",
        ],
    );
    server.stop();
}

#[test]
fn max_batch_is_bounded_by_the_memory_bound_of_the_input_size() {
    // At 32 pixels pipe infer's batch is 256 images: --max-batch 300 is lowered to it, with a warning.
    let server = Server::start("tract", &["--max-batch", "300"]);
    assert!(
        server.banner.contains("max batch 256)"),
        "{}",
        server.banner
    );
    let config: Value = client()
        .get(server.url(&format!("/v2/models/{MODEL}/config")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(config["max_batch_size"], json!(256));
    assert_metric_lines(&server, &["pipe_batch_limit_images 256"]);
    let log = server.stop();
    assert!(
        log.contains("--max-batch 300 is over the memory bound of 256 images per batch at 32x32"),
        "{log}"
    );
    assert!(log.contains("at most 256 images per backend run"), "{log}");
    // Not given: 32, silently.
    let server = Server::start("tract", &[]);
    assert!(server.banner.contains("max batch 32)"), "{}", server.banner);
    assert!(!server.stop().contains("WARN"));
}

/// `--instances 3 --threads 1 --log-json`: three model threads (named `pipe-model-0` to `-2`, read
/// from `/proc`), the start-up log saying 3 instances of 1 thread, every stderr line a JSON object, and
/// one `request` line per answered request with its path and status.
/// A port in use stops `pipe serve` before any model is loaded, with the address and the reason once;
/// a folder given as --model is said to be one.
#[test]
fn a_port_in_use_a_folder_as_model_or_a_repository_option_stops_serve_before_any_work() {
    let fx = fixture();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = Pipe::new("serve --host 127.0.0.1")
        .arg("--port", &port)
        .arg("--model", &fx.model)
        .fails();
    let want = format!("cannot listen on 127.0.0.1:{port}: Address already in use");
    assert_eq!(err.matches(&want).count(), 1, "{err}");
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert!(!err.contains("loaded"), "a model was loaded first: {err}");
    let folder = tempfile::tempdir().unwrap();
    let err = Pipe::new("serve --port 0")
        .arg("--model", folder.path())
        .fails();
    assert!(err.contains("is a folder, not an ONNX model file"), "{err}");
    // The repository's options with one --model: refused, not ignored.
    for (option, value) in [
        ("--model-control-mode", "poll"),
        ("--repository-poll-secs", "1"),
        ("--load-model", "a"),
    ] {
        let err = Pipe::new("serve --port 0")
            .arg("--model", &fx.model)
            .arg(option, value)
            .fails();
        let want = format!("{option} applies to a --model-repository; with --model the one model");
        assert!(err.contains(&want), "{err}");
        assert!(!err.contains("loaded:"), "a model was loaded first: {err}");
    }
}

#[test]
fn instances_threads_and_json_logs_are_what_the_options_say() {
    let fx = fixture();
    let server = Server::start("ort", &["--instances", "3", "--threads", "1", "--log-json"]);
    // The distinct names: a thread that a model thread starts (ONNX Runtime's) inherits its name.
    let model_threads: std::collections::BTreeSet<String> =
        std::fs::read_dir(format!("/proc/{}/task", server.child.id()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .filter(|name| name.starts_with("pipe-model-"))
            .collect();
    assert_eq!(
        model_threads,
        ["pipe-model-0", "pipe-model-1", "pipe-model-2"]
            .map(String::from)
            .into()
    );
    for f in &fx.files[..2] {
        let resp = client()
            .post(server.url("/v1/classify"))
            .body(std::fs::read(f).unwrap())
            .send()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let log = server.stop();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let fields = |v: &Value| v.get("fields").cloned().unwrap_or(Value::Null);
    assert!(
        lines.iter().any(|v| {
            let f = fields(v);
            f["instances"] == 3 && f["threads"] == 1
        }),
        "no start-up line with 3 instances of 1 thread: {log}"
    );
    let requests = lines
        .iter()
        .filter(|v| fields(v)["message"] == "request" && fields(v)["path"] == "/v1/classify")
        .filter(|v| fields(v)["status"] == 200)
        .count();
    assert_eq!(requests, 2, "{log}");
}

#[test]
fn expired_requests_are_answered_and_never_run() {
    let fx = fixture();
    // One model instance; a batch of up to 2 images waits up to 10 minutes for its second image,
    // while requests time out after 2 s.
    let server = Server::start(
        "tract",
        &[
            "--instances",
            "1",
            "--max-batch",
            "2",
            "--max-delay-ms",
            "600000",
            "--request-timeout-ms",
            "2000",
        ],
    );
    let http = client();
    // One image: the worker takes it and waits for a second one until the request times out.
    let resp = http
        .post(server.url("/v1/classify"))
        .body(std::fs::read(&fx.files[0]).unwrap())
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    let doc: Value = resp.json().unwrap();
    assert!(
        doc["error"].as_str().unwrap().contains("request timeout"),
        "{doc}"
    );
    // Two images fill a batch: the expired image, still waiting in the batch being gathered, is
    // dropped, and the batch runs the two new images alone.
    let form = reqwest::blocking::multipart::Form::new();
    let doc = classify_multipart(&server, form, &fx.files[1..3]);
    let labels: Vec<u64> = doc["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["class_index"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = fx.infer["tract"][1..3]
        .iter()
        .map(|(l, _)| *l as u64)
        .collect();
    assert_eq!(labels, expected);
    // Counted once as a timeout, dropped unrun: one backend run of 2 images in all.
    assert_metric_lines(
        &server,
        &[
            "pipe_errors_total{kind=\"inference_timeout\"} 1",
            "pipe_requests_dropped_total{reason=\"deadline_passed\"} 1",
            "pipe_images_total 2",
            "pipe_batch_size_count 1",
            "pipe_batch_size_bucket{le=\"1\"} 0",
            "pipe_batch_size_bucket{le=\"2\"} 1",
            "pipe_queue_depth 0",
            "pipe_inflight_images 0",
        ],
    );
    server.stop();
}

#[test]
fn a_full_queue_answers_503_with_retry_after_at_once() {
    // One image waits for company (ten minutes at most: in this test, until a batch of 8 is
    // complete); the queue holds 8 images.
    let server = Server::start(
        "tract",
        &[
            "--max-batch",
            "8",
            "--max-delay-ms",
            "600000",
            "--request-timeout-ms",
            "600000",
            "--queue",
            "8",
            "--log-level",
            "debug",
        ],
    );
    let waiting = {
        let url = server.url(&format!("/v2/models/{MODEL}/infer"));
        let req = json!({"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "FP32", "data": pixels_f32(0..1)}]});
        std::thread::spawn(move || client().post(url).json(&req).send().unwrap().status())
    };
    // The waiting image is admitted (and gathering company) before the full request comes.
    server.log.wait_for("the waiting image admitted", |lines| {
        lines
            .iter()
            .any(|l| l.contains("images admitted") && log_field(l, "inflight") == Some(1))
    });
    let resp = binary_request(&server, 0..8, Value::Null);
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    // At once: the image admitted first is still waiting (nothing ran that could have freed room).
    assert!(!waiting.is_finished(), "the 503 waited for the queue");
    let doc: Value = resp.json().unwrap();
    assert!(doc["error"].as_str().unwrap().contains("queue"), "{doc}");
    // More images than the queue can ever hold: 413, not a retry.
    let mut header = json!({"inputs": [{"name": "images", "shape": [9, 32, 32, 3], "datatype": "FP32", "parameters": {"binary_data_size": 9 * 12288}}]}).to_string().into_bytes();
    let len = header.len();
    header.extend(vec![0u8; 9 * 12288]);
    let resp = client()
        .post(server.url(&format!("/v2/models/{MODEL}/infer")))
        .header("Inference-Header-Content-Length", len)
        .body(header)
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!waiting.is_finished());
    // Seven more images complete the batch of 8: it runs, and both requests are answered.
    assert_eq!(
        binary_request(&server, 1..8, Value::Null).status(),
        StatusCode::OK
    );
    assert_eq!(waiting.join().unwrap(), StatusCode::OK);
    // One backend run, of the 8 images together (counted before its answers were sent).
    assert_metric_lines(
        &server,
        &[
            "pipe_batch_size_count 1",
            "pipe_batch_size_bucket{le=\"4\"} 0",
            "pipe_batch_size_bucket{le=\"8\"} 1",
        ],
    );
    // Ctrl-C stops it as SIGTERM does.
    let (status, log) = server.stop_with(libc::SIGINT);
    assert!(status.success(), "{log}");
}

/// SIGTERM during a burst of requests: every request is answered (200) or refused (503 with
/// `Connection: close`), none dropped; readiness turns 503 while liveness stays 200 during the drain;
/// a second SIGTERM ends the drain and the server exits 0, its log counting what the clients got.
/// Synchronised on the clients' answers, not on time: the drain is long enough never to end by itself.
#[test]
fn sigterm_during_a_burst_answers_or_refuses_every_request() {
    let fx = fixture();
    let server = Server::start("tract", &["--drain-ms", "600000", "--log-level", "warn"]);
    let expected: Vec<usize> = fx.infer["tract"].iter().map(|(l, _)| *l).collect();
    // Each client says when its second answer came, so that SIGTERM falls in a burst under way, and
    // when it was refused.
    let (second_answer, second_answers) = std::sync::mpsc::channel::<usize>();
    let (refusal, refusals) = std::sync::mpsc::channel::<usize>();
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let url = server.url(&format!("/v2/models/{MODEL}/infer"));
            let expected = expected.clone();
            let (second_answer, refusal) = (second_answer.clone(), refusal.clone());
            std::thread::spawn(move || {
                let http = client();
                let (mut answered, mut refused) = (0usize, 0usize);
                for i in (c..).step_by(16) {
                    let k = i % expected.len();
                    let mut body = json!({"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "FP32",
                        "parameters": {"binary_data_size": 12288}}], "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}]})
                        .to_string()
                        .into_bytes();
                    let len = body.len();
                    body.extend(pixels_f32(k..k + 1).iter().flat_map(|v| v.to_le_bytes()));
                    let resp = http.post(&url).header("Inference-Header-Content-Length", len).body(body).send();
                    let resp = resp.unwrap_or_else(|e| panic!("client {c}: request {i} dropped: {e}"));
                    match resp.status() {
                        StatusCode::OK => {
                            let doc: Value = resp.json().unwrap();
                            let label = doc["outputs"][0]["data"][0].as_str().unwrap().to_string();
                            assert_eq!(label.split(':').nth(1).unwrap(), expected[k].to_string(), "{label}");
                            answered += 1;
                            if answered == 2 {
                                let _ = second_answer.send(c);
                            }
                        }
                        StatusCode::SERVICE_UNAVAILABLE => {
                            assert_eq!(resp.headers()["connection"], "close", "client {c}");
                            assert!(resp.headers().contains_key("retry-after"), "client {c}");
                            refused += 1;
                            let _ = refusal.send(c);
                            break;
                        }
                        other => panic!("client {c}: status {other}"),
                    }
                }
                (answered, refused)
            })
        })
        .collect();
    for _ in 0..16 {
        second_answers
            .recv_timeout(Duration::from_secs(120))
            .expect("every client gets two answers");
    }
    server.signal(libc::SIGTERM);
    for _ in 0..16 {
        refusals
            .recv_timeout(Duration::from_secs(120))
            .expect("every client is refused once the drain began");
    }
    // Still draining (the drain is ten minutes): not ready, but alive.
    let http = client();
    let ready = http.get(server.url("/v2/health/ready")).send().unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let live = http.get(server.url("/v2/health/live")).send().unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    // The second SIGTERM ends the drain.
    let (status, log) = server.stop_with(libc::SIGTERM);
    let (answered, refused) = clients
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(a, r), (x, y)| (a + x, r + y));
    assert!(status.success(), "exit {status}: {log}");
    assert_eq!(refused, 16, "every client ends on a 503");
    assert!(answered >= 32, "only {answered} answers before SIGTERM");
    let served: usize = log
        .split("answered ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of answered requests in the log: {log}"));
    assert_eq!(
        served, answered,
        "the server answered {served}, the clients got {answered}: {log}"
    );
    // The 16 refused requests, and not the readiness probe's 503 during the drain.
    assert!(log.contains("refused 16 with 503"), "{log}");
}

/// A gRPC client that opens an HTTP/2 connection and then stops reading never acknowledges the
/// server's close (the PING after its GOAWAY): after SIGTERM the server waits one request timeout
/// for it, says so, and exits 0, instead of waiting for ever.
#[test]
fn a_client_that_never_acknowledges_the_close_does_not_keep_the_server_up() {
    let server = Server::start(
        "tract",
        &["--grpc-port", "0", "--request-timeout-ms", "2000"],
    );
    let mut conn = TcpStream::connect(server.grpc.as_deref().unwrap()).unwrap();
    // The HTTP/2 client preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    conn.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    // The server's own SETTINGS frame header: the connection is accepted and served.
    let mut header = [0u8; 9];
    conn.read_exact(&mut header).unwrap();
    assert_eq!(
        header[3], 4,
        "the server's first frame is SETTINGS: {header:?}"
    );
    let (status, log) = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "exit {status}: {log}");
    assert!(
        log.contains("connections still open a request timeout after the drain")
            && log.contains("waited_ms=2000"),
        "the server says why it closed connections: {log}"
    );
    drop(conn);
}

/// A Python with PyYAML: the project's `.venv` (`make setup` installs it there), else a `python3` on
/// the PATH that has it.
fn python_with_yaml() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).map(|dir| dir.join("python3"));
    for python in std::iter::once(root().join(".venv/bin/python")).chain(on_path) {
        let has_yaml = std::process::Command::new(&python)
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if has_yaml {
            return python;
        }
    }
    panic!("no Python with PyYAML: run `make setup`");
}

/// The manifests in deploy/ pass deploy/check.py (the serving stack, and the Indexed Jobs of `pipe
/// infer --shard` and `pipe train --extract-shard` in deploy/jobs/); and the check refuses a Job
/// whose shards would not cover the data, would overwrite each other's output or not share a feature
/// cache, or that passes an option pipe lacks.
#[test]
fn deploy_manifests_fit_together() {
    let deploy = root().join("deploy");
    let python = python_with_yaml();
    run_python(
        &python,
        "deploy/check.py",
        &[s(&deploy), env!("CARGO_BIN_EXE_pipe")],
    );
    // Each case: a file of deploy/ changed from -> to, and the problem check.py must report.
    let measured_32 = "measured/ort-32.json";
    for (file, from, to, says) in [
        (
            "jobs/infer-shards.yaml",
            "completions: 8",
            "completions: 7",
            "infer-shards.yaml: --shard $(JOB_COMPLETION_INDEX)/8: N must equal completions (7)",
        ),
        (
            "jobs/infer-shards.yaml",
            "/data/out/shard-$(JOB_COMPLETION_INDEX).csv",
            "/data/out/shards.csv",
            "infer-shards.yaml: each shard needs its own --output",
        ),
        (
            "jobs/infer-shards.yaml",
            "- --threads",
            "- --thread",
            "infer-shards.yaml: pipe infer has no option --thread",
        ),
        (
            "jobs/extract-shards.yaml",
            "completions: 8",
            "completions: 7",
            "extract-shards.yaml: --extract-shard $(JOB_COMPLETION_INDEX)/8: N must equal completions (7)",
        ),
        (
            "jobs/extract-shards.yaml",
            "- /data/cache",
            "- /cache",
            "extract-shards.yaml: the shards need one --cache-dir on a mounted (shared) volume",
        ),
        // Memory: the Deployment's request below the peak the load test measured, or its limit
        // without the headroom; the photo overlay's too.
        (
            "deployment.yaml",
            "memory: 1Gi",
            "memory: 512Mi",
            "deploy: memory request 512Mi (512 MiB) is below the peak of",
        ),
        (
            "deployment.yaml",
            "memory: 1280Mi",
            "memory: 900Mi",
            "deploy: memory limit 900Mi (900 MiB) is below 1.25x the peak of",
        ),
        (
            "photos/memory.yaml",
            "memory: 4Gi",
            "memory: 2Gi",
            "photos: memory request 2Gi (2048 MiB) is below the peak of",
        ),
        // A measurement with other options than the Deployment's does not count.
        (
            measured_32,
            "\"serve_args\": []",
            "\"serve_args\": [\"--instances\", \"4\"]",
            "deploy: ort-32.json was measured with {'--instances': '4', '--max-batch': '32'}",
        ),
        (
            "deployment.yaml",
            "pipe/model-input-size: \"32\"",
            "pipe/model-input-size: \"\"",
            "deploy: the Deployment needs the annotation pipe/model-input-size",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&deploy, dir.path());
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file}: {from}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
        let run = std::process::Command::new(&python)
            .arg(root().join("deploy/check.py"))
            .args([dir.path().as_os_str(), env!("CARGO_BIN_EXE_pipe").as_ref()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && err.contains(says), "{to}: {err}");
    }
    // Without a binary named, the repository's built target/release/pipe checks the options (and
    // without one, the check says the options went unchecked).
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&deploy, dir.path());
    let path = dir.path().join("deployment.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let bogus = text.replacen("- --backend", "- --log-jsonx\n            - --backend", 1);
    assert_ne!(bogus, text);
    std::fs::write(&path, bogus).unwrap();
    let run = std::process::Command::new(&python)
        .arg(root().join("deploy/check.py"))
        .arg(dir.path())
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    if root().join("target/release/pipe").is_file() {
        assert!(
            !run.status.success() && err.contains("pipe serve has no option --log-jsonx"),
            "{out}{err}"
        );
    } else {
        assert!(out.contains("options NOT checked"), "{out}{err}");
    }
    // A fresh load test's summary (--measured) whose peak is over the request fails the check.
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy.join(measured_32)).unwrap()).unwrap();
    let mut over = summary.clone();
    over["rss_peak_mib"] = json!(2000.0);
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("summary-ort.json");
    std::fs::write(&fresh, over.to_string()).unwrap();
    let run = std::process::Command::new(&python)
        .arg(root().join("deploy/check.py"))
        .arg(&deploy)
        .arg("--measured")
        .arg(&fresh)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success()
            && err.contains("deploy: memory request 1Gi (1024 MiB) is below the peak of 2000 MiB that summary-ort.json measured for a 32-pixel model"),
        "{err}"
    );
}

/// Copies the folder `from` with its subfolders into `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs `script` (relative to the project root) with `args`; fails the test with its output unless
/// it succeeds.
fn run_python(python: &Path, script: &str, args: &[&str]) {
    let run = std::process::Command::new(python)
        .arg(root().join(script))
        .args(args)
        .output()
        .unwrap();
    let output = String::from_utf8_lossy(&run.stdout) + String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{script} failed: {output}");
    eprintln!("{output}");
}
