//! `make loadtest`: `pipe serve` under load on localhost, against `pipe infer` offline with the same
//! model and backend, in the same run.
//!
//! 1. `pipe infer` classifies the image folder offline (decode + its default batches) and reports its
//!    images and seconds.
//! 2. `pipe serve` starts on a free port; a warm-up; the server's RSS is read.
//! 3. Concurrent clients send single-image requests; per-request latency, statuses and errors are kept.
//! 4. The server's RSS again, its CPU seconds over the timed requests (from `/proc/<pid>/stat`,
//!    against `pipe infer`'s own per image), the batch-size histogram from `/metrics`.
//! 5. With tensors, the same requests again over KServe v2 gRPC (`ModelInfer` with
//!    `raw_input_contents`, tonic's client, one connection per client as over HTTP), after the
//!    same warm-up: throughput, CPU seconds and latencies beside HTTP's, on the same server.
//! 6. The server's peak RSS, then SIGTERM (exit code checked).
//!
//! Exits 1 when a row misses its target.
//!
//! Two kinds of load:
//! - tensors (default): 64 clients send 10,000 KServe requests with binary tensors (the images of the
//!   folder, decoded as pipe decodes them), after 1,000 warm-up requests;
//! - photos (`LOADTEST_PHOTOS=1`): 32 clients post the photo files themselves to `/v1/classify`, one
//!   photo per request (the server decodes them, as `pipe infer` does), each photo of the folder once
//!   after a warm-up pass over every photo; files that pipe cannot decode are left out (and counted),
//!   as `pipe infer` skips them. Meant for the ants-and-bees photos and a `--preset photos` model
//!   (384 pixels).
//!
//! Prints one table and writes `target/loadtest/summary-<backend>[-photos].json`. Settings from the
//! environment: `LOADTEST_PHOTOS` (0), `LOADTEST_BACKEND` (ort), `LOADTEST_MODEL` (onnx/model.onnx;
//! with photos onnx/photos.onnx), `LOADTEST_DATA` (data/cifar10/test; with photos
//! data/hymenoptera/val), `LOADTEST_REQUESTS` (10000; with photos the number of photos),
//! `LOADTEST_CLIENTS` (64; with photos 32), `LOADTEST_SERVE_ARGS` (extra `pipe serve` options,
//! space-separated). Every request goes to 127.0.0.1; the run is bounded by its request count.

use pipe::serve::grpc::proto::{
    grpc_inference_service_client::GrpcInferenceServiceClient, model_infer_request,
    ModelInferRequest,
};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Settings {
    /// Photo files to `/v1/classify` rather than tensors to the KServe route.
    photos: bool,
    backend: String,
    model: PathBuf,
    data: PathBuf,
    /// Timed requests (`None`: 10,000 tensors, or each photo once).
    requests: Option<usize>,
    clients: usize,
    serve_args: Vec<String>,
    /// The model's input side, pixels (read from the model).
    input_size: usize,
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn settings() -> Settings {
    let num = |key: &str, default: &str| -> usize {
        env_or(key, default)
            .parse()
            .unwrap_or_else(|_| panic!("{key} must be a number"))
    };
    let photos = !matches!(
        env_or("LOADTEST_PHOTOS", "0").as_str(),
        "0" | "false" | "no"
    );
    let (model, data, clients) = if photos {
        ("onnx/photos.onnx", "data/hymenoptera/val", "32")
    } else {
        ("onnx/model.onnx", "data/cifar10/test", "64")
    };
    Settings {
        photos,
        backend: env_or("LOADTEST_BACKEND", "ort"),
        model: env_or("LOADTEST_MODEL", model).into(),
        data: env_or("LOADTEST_DATA", data).into(),
        requests: std::env::var("LOADTEST_REQUESTS")
            .ok()
            .filter(|v| !v.is_empty())
            .map(|_| num("LOADTEST_REQUESTS", "")),
        clients: num("LOADTEST_CLIENTS", clients),
        serve_args: env_or("LOADTEST_SERVE_ARGS", "")
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        input_size: 0,
    }
}

/// CPU seconds (user + system) used so far by this process's waited-for children.
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_CHILDREN)");
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/<pid>/stat`.
fn process_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the command name (which may hold spaces) start at field 3 (state); utime and
    // stime are fields 14 and 15, in clock ticks.
    let after = &stat[stat.rfind(')').expect("')' in /proc/<pid>/stat") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// What `pipe infer` on the folder, offline, measured: its images/s (from the images and seconds it
/// reports), and its CPU seconds per image (the whole process: start, model load, decoding and
/// inference, over the images it classified).
struct Offline {
    rate: f64,
    cpu_per_image: f64,
}

fn offline_rate(pipe: &Path, s: &Settings, out: &Path) -> Offline {
    let cpu_before = children_cpu_s();
    let run = Command::new(pipe)
        .args(["infer", "--backend", &s.backend, "--model"])
        .arg(&s.model)
        .arg(&s.data)
        .arg("-o")
        .arg(out)
        .output()
        .expect("run pipe infer");
    let stderr = String::from_utf8_lossy(&run.stderr);
    // Exit code 3: some files were skipped (named on stderr), the others classified.
    assert!(
        run.status.success() || run.status.code() == Some(3),
        "pipe infer failed: {stderr}"
    );
    let cpu = children_cpu_s() - cpu_before;
    // "<backend>: N images in X s (R images/s; ...)": N / X, as R is rounded to whole images.
    let (images, secs) = stderr
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(": ")?;
            let (images, rest) = rest.split_once(" images in ")?;
            let (secs, _) = rest.split_once(" s (")?;
            Some((images.parse::<f64>().ok()?, secs.parse::<f64>().ok()?))
        })
        .next_back()
        .unwrap_or_else(|| panic!("no \"N images in X s\" in: {stderr}"));
    Offline {
        rate: images / secs,
        cpu_per_image: cpu / images,
    }
}

/// Starts `pipe serve` on free ports: its HTTP address, and with tensors its gRPC one.
fn start_server(pipe: &Path, s: &Settings) -> (Child, String, Option<String>) {
    let grpc = if s.photos {
        &[][..]
    } else {
        &["--grpc-port", "0"][..]
    };
    let mut child = Command::new(pipe)
        .args([
            "serve",
            "--port",
            "0",
            "--log-level",
            "warn",
            "--backend",
            &s.backend,
            "--model",
        ])
        .arg(&s.model)
        .args(grpc)
        .args(&s.serve_args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start pipe serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    // The address after `marker` on the next line of the server's stdout.
    let mut next_addr = |marker: &str| {
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the server's address");
        line.split(marker)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"))
            .to_string()
    };
    let addr = next_addr("listening on http://");
    let grpc = (!s.photos).then(|| next_addr("gRPC (KServe v2) on "));
    (child, addr, grpc)
}

/// The resident memory of process `pid` now, MiB.
fn rss_mib(pid: u32) -> f64 {
    proc_status_mib(pid, "VmRSS:")
}

/// The peak resident memory of process `pid` so far, MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    proc_status_mib(pid, "VmHWM:")
}

/// A `kB` line of `/proc/<pid>/status`, MiB (0 when missing).
fn proc_status_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Cumulative `pipe_batch_size_bucket` counts from `/metrics`, by upper bound.
fn batch_buckets(metrics: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("pipe_batch_size_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.to_string(), count.trim().parse().ok()?))
        })
        .collect()
}

/// Outcome of a run of requests: latencies of the answered ones, and the failures by kind.
#[derive(Default)]
struct Outcome {
    latencies: Vec<Duration>,
    errors: std::collections::BTreeMap<String, usize>,
}

/// One request's body: a KServe binary request (with the length of its JSON header), or a photo file.
struct Body {
    /// `Inference-Header-Content-Length` (binary tensors), or `None` for a file to `/v1/classify`.
    header_len: Option<usize>,
    bytes: Vec<u8>,
}

/// The outcomes of the client tasks, merged.
async fn gather(tasks: Vec<tokio::task::JoinHandle<Outcome>>) -> Outcome {
    let mut all = Outcome::default();
    for t in tasks {
        let o = t.await.expect("client task");
        all.latencies.extend(o.latencies);
        for (k, v) in o.errors {
            *all.errors.entry(k).or_default() += v;
        }
    }
    all
}

/// Sends `total` single-image requests from `clients` concurrent tasks, cycling through `bodies`.
async fn hammer(url: String, bodies: Arc<Vec<Body>>, total: usize, clients: usize) -> Outcome {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, bodies, next) =
                (http.clone(), url.clone(), bodies.clone(), next.clone());
            tokio::spawn(async move {
                let mut out = Outcome::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return out;
                    }
                    let body = &bodies[i % bodies.len()];
                    let start = Instant::now();
                    let mut req = http.post(&url).body(body.bytes.clone());
                    if let Some(len) = body.header_len {
                        req = req.header("Inference-Header-Content-Length", len);
                    }
                    let sent = req.send().await;
                    let result = match sent {
                        Ok(r) if r.status().is_success() => {
                            r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                        }
                        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                        Err(e) => Err(e.to_string()),
                    };
                    match result {
                        Ok(()) => out.latencies.push(start.elapsed()),
                        Err(e) => *out.errors.entry(e).or_default() += 1,
                    }
                }
            })
        })
        .collect();
    gather(tasks).await
}

/// Sends `total` single-image `ModelInfer` calls from `clients` concurrent tasks, each over its own
/// connection (as the HTTP clients each hold one), cycling through `requests`.
async fn hammer_grpc(
    addr: String,
    requests: Arc<Vec<ModelInferRequest>>,
    total: usize,
    clients: usize,
) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("gRPC address")
            .connect()
            .await
            .expect("connect to the gRPC port");
        let client = GrpcInferenceServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let (requests, next) = (requests.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut out = Outcome::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return out;
                }
                let request = requests[i % requests.len()].clone();
                let start = Instant::now();
                let answer =
                    tokio::time::timeout(Duration::from_secs(60), client.model_infer(request));
                match answer.await {
                    Ok(Ok(r)) if r.get_ref().raw_output_contents.len() == 1 => {
                        out.latencies.push(start.elapsed())
                    }
                    Ok(Ok(_)) => *out.errors.entry("no raw output".into()).or_default() += 1,
                    Ok(Err(e)) => {
                        *out.errors
                            .entry(format!("gRPC {:?}", e.code()))
                            .or_default() += 1
                    }
                    Err(_) => *out.errors.entry("timed out".into()).or_default() += 1,
                }
            }
        }));
    }
    gather(tasks).await
}

/// The `ModelInfer` requests: the image as `raw_input_contents` (little-endian FP32), one per image,
/// asking for the probabilities (as the HTTP bodies do).
fn grpc_requests(pixels: &[u8], size: usize) -> Vec<ModelInferRequest> {
    pixels
        .chunks(size * size * 3)
        .map(|img| ModelInferRequest {
            model_name: "pipe_vgg16".into(),
            inputs: vec![model_infer_request::InferInputTensor {
                name: "images".into(),
                datatype: "FP32".into(),
                shape: vec![1, size as i64, size as i64, 3],
                ..Default::default()
            }],
            outputs: vec![model_infer_request::InferRequestedOutputTensor {
                name: "probabilities".into(),
                ..Default::default()
            }],
            raw_input_contents: vec![img
                .iter()
                .flat_map(|&v| f32::from(v).to_le_bytes())
                .collect()],
            ..Default::default()
        })
        .collect()
}

/// The request bodies: JSON header + the image as little-endian FP32, one per image.
fn tensor_bodies(pixels: &[u8], size: usize) -> Vec<Body> {
    let per = size * size * 3;
    pixels
        .chunks(per)
        .map(|img| {
            let header = json!({"inputs": [{"name": "images", "shape": [1, size, size, 3], "datatype": "FP32",
                "parameters": {"binary_data_size": per * 4}}],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]});
            let mut bytes = serde_json::to_vec(&header).expect("json");
            let len = bytes.len();
            bytes.extend(img.iter().flat_map(|&v| f32::from(v).to_le_bytes()));
            Body {
                header_len: Some(len),
                bytes,
            }
        })
        .collect()
}

/// The photo files of the folder that pipe decodes for the model, each a `/v1/classify` body; and
/// the number of image files left out because they cannot be decoded (`pipe infer` skips them too).
fn photo_bodies(files: &[PathBuf], info: &pipe::onnx::ModelInfo) -> (Vec<Body>, usize) {
    let mut bodies = Vec::new();
    let mut skipped = 0;
    for f in files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        match pipe::infer::decode_image(info, f, &bytes) {
            Ok(_) => bodies.push(Body {
                header_len: None,
                bytes,
            }),
            Err(e) => {
                eprintln!("loadtest: left out {}: {e}", f.display());
                skipped += 1;
            }
        }
    }
    (bodies, skipped)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Everything one load test measured.
struct Measured {
    /// Timed requests sent.
    requests: usize,
    offline: Offline,
    wall: f64,
    /// The server's CPU seconds (user + system) over the timed requests.
    server_cpu: f64,
    /// Latencies of the answered requests, sorted.
    latencies: Vec<Duration>,
    errors: std::collections::BTreeMap<String, usize>,
    rss_before: f64,
    rss_after: f64,
    /// The server's peak resident memory over the whole run (warm-up included), MiB.
    rss_peak: f64,
    /// (upper bound, backend runs) of the batch sizes during the timed run.
    batches: Vec<(String, u64)>,
    /// The same requests over gRPC (tensors only).
    grpc: Option<GrpcRun>,
    exit_code: Option<i32>,
}

/// The timed gRPC requests, on the same server after the HTTP ones.
struct GrpcRun {
    wall: f64,
    /// The server's CPU seconds (user + system) over them.
    server_cpu: f64,
    /// Latencies of the answered calls, sorted.
    latencies: Vec<Duration>,
    errors: std::collections::BTreeMap<String, usize>,
}

/// Runs `pipe infer` offline, then the server: warm-up, `requests` timed requests over HTTP, then
/// (with `grpc_requests`) a warm-up and as many over gRPC, SIGTERM.
fn measure(
    s: &Settings,
    pipe: &Path,
    bodies: Arc<Vec<Body>>,
    grpc_requests: Option<Arc<Vec<ModelInferRequest>>>,
    requests: usize,
    out_dir: &Path,
) -> Measured {
    let t = Instant::now();
    let offline = offline_rate(pipe, s, &out_dir.join(format!("infer-{}.tsv", label(s))));
    eprintln!(
        "pipe infer offline: {:.1} images/s, {:.1} CPU ms per image ({:.1} s)",
        offline.rate,
        offline.cpu_per_image * 1e3,
        t.elapsed().as_secs_f64()
    );
    let (mut server, addr, grpc_addr) = start_server(pipe, s);
    let url = if s.photos {
        format!("http://{addr}/v1/classify")
    } else {
        format!("http://{addr}/v2/models/pipe_vgg16/infer")
    };
    // Warm-up: every photo once (so that the allocator has met every batch shape before the RSS
    // is read: a later growth is then a leak, not a first use); 1,000 tensors.
    let warm_up = if s.photos { bodies.len() } else { 1000 };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let warm = runtime.block_on(hammer(
        url.clone(),
        bodies.clone(),
        warm_up.min(requests),
        s.clients,
    ));
    assert!(warm.errors.is_empty(), "warm-up errors: {:?}", warm.errors);
    let metrics_url = format!("http://{addr}/metrics");
    let scrape = || {
        let text = runtime.block_on(async { reqwest::get(&metrics_url).await?.text().await });
        batch_buckets(&text.expect("GET /metrics"))
    };
    let before = scrape();
    let rss_before = rss_mib(server.id());
    let cpu_before = process_cpu_s(server.id());
    let t = Instant::now();
    let mut run = runtime.block_on(hammer(url, bodies, requests, s.clients));
    let wall = t.elapsed().as_secs_f64();
    let server_cpu = process_cpu_s(server.id()) - cpu_before;
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_mib(server.id());
    let after = scrape();
    let grpc = grpc_addr.zip(grpc_requests).map(|(addr, calls)| {
        let warm = runtime.block_on(hammer_grpc(
            addr.clone(),
            calls.clone(),
            warm_up.min(requests),
            s.clients,
        ));
        assert!(
            warm.errors.is_empty(),
            "gRPC warm-up errors: {:?}",
            warm.errors
        );
        let cpu_before = process_cpu_s(server.id());
        let t = Instant::now();
        let mut run = runtime.block_on(hammer_grpc(addr, calls, requests, s.clients));
        let wall = t.elapsed().as_secs_f64();
        run.latencies.sort();
        GrpcRun {
            wall,
            server_cpu: process_cpu_s(server.id()) - cpu_before,
            latencies: run.latencies,
            errors: run.errors,
        }
    });
    let rss_peak = peak_rss_mib(server.id());
    // The clients' connections close with their runtime, as a client's do when it ends, so that the
    // server's shutdown does not wait for them.
    drop(runtime);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGTERM) };
    let exit = server.wait().expect("wait for the server");
    run.latencies.sort();
    let mut batches = Vec::new();
    let mut prev = 0;
    for ((le, a), (_, b)) in after.iter().zip(&before) {
        let cumulative = a - b;
        if cumulative > prev {
            batches.push((le.clone(), cumulative - prev));
        }
        prev = cumulative;
    }
    Measured {
        requests,
        offline,
        wall,
        server_cpu,
        latencies: run.latencies,
        errors: run.errors,
        rss_before,
        rss_after,
        rss_peak,
        batches,
        grpc,
        exit_code: exit.code(),
    }
}

/// Prints the table and writes the summary JSON; whether every target passed.
fn report(s: &Settings, m: &Measured, out_dir: &Path) -> bool {
    let ok = m.latencies.len();
    let errors: usize = m.errors.values().sum();
    let throughput = ok as f64 / m.wall;
    let ratio = throughput / m.offline.rate;
    // CPU per image: offline's over the server's (1.0: the server spends what pipe infer does).
    let serve_cpu_per_image = m.server_cpu / ok.max(1) as f64;
    let cpu_ratio = m.offline.cpu_per_image / serve_cpu_per_image;
    let rss_change = (m.rss_after - m.rss_before) / m.rss_before;
    let (p50, p99) = (
        percentile(&m.latencies, 0.5),
        percentile(&m.latencies, 0.99),
    );
    let kind = if s.photos {
        "requests (1 photo file each, /v1/classify)"
    } else {
        "requests (1 image each, binary FP32)"
    };
    let mut rows = vec![
        (kind, m.requests.to_string(), String::new()),
        ("concurrent clients", s.clients.to_string(), String::new()),
        (
            "answered / errors",
            format!("{ok} / {errors}"),
            pass(errors == 0, "zero errors"),
        ),
        (
            "pipe serve throughput (images/s)",
            format!("{throughput:.1}"),
            String::new(),
        ),
        (
            "pipe infer offline, same backend (images/s)",
            format!("{:.1}", m.offline.rate),
            String::new(),
        ),
        (
            "serve / offline",
            format!("{ratio:.2}x"),
            pass(ratio >= 0.9, ">= 0.9x"),
        ),
        (
            "CPU ms per image: serve / pipe infer",
            format!(
                "{:.1} / {:.1}",
                serve_cpu_per_image * 1e3,
                m.offline.cpu_per_image * 1e3
            ),
            String::new(),
        ),
        (
            "CPU efficiency (infer's CPU/image over serve's)",
            format!("{cpu_ratio:.2}x"),
            pass(cpu_ratio >= 0.95, ">= 0.95x"),
        ),
        (
            "latency p50 / p99 (ms)",
            format!("{p50:.1} / {p99:.1}"),
            String::new(),
        ),
        (
            "server RSS before / after (MiB)",
            format!(
                "{:.1} / {:.1} ({:+.1}%)",
                m.rss_before,
                m.rss_after,
                rss_change * 100.0
            ),
            pass(rss_change.abs() <= 0.10, "within 10%"),
        ),
        (
            "server peak RSS (MiB)",
            format!("{:.1}", m.rss_peak),
            String::new(),
        ),
        (
            "exit code after SIGTERM",
            format!("{:?}", m.exit_code),
            pass(m.exit_code == Some(0), "0"),
        ),
    ];
    let mut grpc_stats = serde_json::Value::Null;
    if let Some(g) = &m.grpc {
        let answered = g.latencies.len();
        let errors: usize = g.errors.values().sum();
        let grpc_throughput = answered as f64 / g.wall;
        let vs_http = grpc_throughput / throughput;
        let cpu_per_image = g.server_cpu / answered.max(1) as f64;
        let (p50, p99) = (
            percentile(&g.latencies, 0.5),
            percentile(&g.latencies, 0.99),
        );
        rows.extend([
            (
                "gRPC: answered / errors (same requests)",
                format!("{answered} / {errors}"),
                pass(errors == 0, "zero errors"),
            ),
            (
                "gRPC throughput (images/s)",
                format!("{grpc_throughput:.1}"),
                String::new(),
            ),
            (
                "gRPC / HTTP throughput",
                format!("{vs_http:.2}x"),
                // At least HTTP's, less the run-to-run noise of a throughput (a few per cent).
                pass(vs_http >= 0.97, ">= 0.97x"),
            ),
            (
                "gRPC CPU ms per image / HTTP's",
                format!(
                    "{:.1} / {:.1}",
                    cpu_per_image * 1e3,
                    serve_cpu_per_image * 1e3
                ),
                String::new(),
            ),
            (
                "gRPC latency p50 / p99 (ms)",
                format!("{p50:.1} / {p99:.1}"),
                String::new(),
            ),
        ]);
        grpc_stats = json!({"answered": answered, "errors": g.errors, "wall_s": g.wall,
            "throughput": grpc_throughput, "vs_http": vs_http, "p50_ms": p50, "p99_ms": p99,
            "server_cpu_s": g.server_cpu, "serve_cpu_ms_per_image": cpu_per_image * 1e3});
    }
    println!(
        "\nload test{}: backend {}, model {}, wall {:.1} s",
        if s.photos { " (photos)" } else { "" },
        s.backend,
        s.model.display(),
        m.wall
    );
    println!("{:<46} {:>28}  target", "measure", "value");
    println!("{}", "-".repeat(96));
    for (what, value, target) in &rows {
        println!("{what:<46} {value:>28}  {target}");
    }
    println!("batch sizes (images per backend run <= bound: runs)");
    for (le, n) in &m.batches {
        println!("  <= {le:>4}: {n}");
    }
    if !m.errors.is_empty() {
        println!("errors: {:?}", m.errors);
    }
    let stats = json!({"answered": ok, "throughput": throughput, "ratio": ratio, "p50_ms": p50, "p99_ms": p99,
        "serve_cpu_ms_per_image": serve_cpu_per_image * 1e3,
        "offline_cpu_ms_per_image": m.offline.cpu_per_image * 1e3, "cpu_ratio": cpu_ratio,
        "grpc": grpc_stats});
    write_summary(s, m, stats, out_dir);
    let failed: Vec<&str> = rows
        .iter()
        .filter(|(_, _, target)| target.ends_with("FAIL"))
        .map(|(what, _, _)| *what)
        .collect();
    if !failed.is_empty() {
        println!("FAILED: {}", failed.join("; "));
    }
    failed.is_empty()
}

/// `<backend>`, or `<backend>-photos`: names the run's files.
fn label(s: &Settings) -> String {
    if s.photos {
        format!("{}-photos", s.backend)
    } else {
        s.backend.clone()
    }
}

/// Writes `target/loadtest/summary-<label>.json`: the settings, `stats` and the raw measures.
fn write_summary(s: &Settings, m: &Measured, stats: serde_json::Value, out_dir: &Path) {
    let summary = json!({
        "photos": s.photos, "data": s.data,
        "backend": s.backend, "model": s.model, "input_size": s.input_size, "requests": m.requests, "clients": s.clients,
        "serve_args": s.serve_args, "stats": stats, "errors": m.errors, "wall_s": m.wall,
        "offline_images_per_s": m.offline.rate, "server_cpu_s": m.server_cpu, "rss_before_mib": m.rss_before,
        "rss_after_mib": m.rss_after, "rss_peak_mib": m.rss_peak, "batch_sizes": m.batches,
        "exit_code": m.exit_code, "cpu": cpu_model(), "cores": std::thread::available_parallelism().map_or(0, usize::from),
    });
    let path = out_dir.join(format!("summary-{}.json", label(s)));
    std::fs::write(&path, serde_json::to_vec_pretty(&summary).expect("json"))
        .expect("write summary");
    println!("written to {}", path.display());
}

/// The CPU's model name, from `/proc/cpuinfo` (where the figures were measured).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn pass(ok: bool, target: &str) -> String {
    format!("{target}: {}", if ok { "pass" } else { "FAIL" })
}

fn main() {
    let mut s = settings();
    let pipe = PathBuf::from(env!("CARGO_BIN_EXE_pipe"));
    let out_dir = PathBuf::from("target/loadtest");
    std::fs::create_dir_all(&out_dir).expect("create target/loadtest");
    let info = pipe::onnx::ModelInfo::read(&s.model).expect("read the model (LOADTEST_MODEL)");
    s.input_size = info.input_size;
    let files =
        pipe::data::collect_image_files(std::slice::from_ref(&s.data)).expect("image folder");
    let (bodies, grpc, skipped) = if s.photos {
        let (bodies, skipped) = photo_bodies(&files, &info);
        (bodies, None, skipped)
    } else {
        let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let squash = pipe::data::ImageSpec::new(info.input_size, pipe::data::ResizePolicy::Squash);
        let pixels =
            pipe::data::load_images(&paths, &squash.full_decode(), pipe::data::OnError::Stop)
                .expect("decode images")
                .pixels;
        let grpc = Arc::new(grpc_requests(&pixels, info.input_size));
        (tensor_bodies(&pixels, info.input_size), Some(grpc), 0)
    };
    assert!(!bodies.is_empty(), "no images in {}", s.data.display());
    let requests = s
        .requests
        .unwrap_or(if s.photos { bodies.len() } else { 10_000 });
    eprintln!(
        "loadtest: {} images ({skipped} files left out that pipe cannot decode), input {side}x{side}, backend {}, model {}",
        bodies.len(),
        s.backend,
        s.model.display(),
        side = info.input_size
    );
    let m = measure(&s, &pipe, Arc::new(bodies), grpc, requests, &out_dir);
    if !report(&s, &m, &out_dir) {
        std::process::exit(1);
    }
}
