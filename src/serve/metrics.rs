//! Server metrics in the Prometheus text exposition format (version 0.0.4): request counters by
//! endpoint and status, errors by kind, histograms of request latency and batch size, queue gauges and
//! the number of images inferred.
//!
//! The format is small enough to write by hand; what matters is the histogram semantics, which follow
//! Prometheus: `_bucket{le="x"}` counts observations `<= x` cumulatively, the last bucket is
//! `le="+Inf"` and equals `_count`, and `_sum` is the sum of all observed values.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the request-latency histogram, seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch-size histogram, images per backend run.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Upper bounds of the backend-time histogram, seconds per backend run.
pub const BATCH_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram with fixed upper bounds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for values above the last bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram with these (increasing) upper bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one value.
    pub fn observe(&mut self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the `_bucket` (cumulative), `_sum` and `_count` lines of `name` with extra `labels`
    /// (`key="value"` pairs, comma-separated, or empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            let le = match self.bounds.get(i) {
                Some(b) => format!("{b}"),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Labelled {
    /// (endpoint, status code) → requests.
    requests: BTreeMap<(String, u16), u64>,
    /// endpoint → latency histogram.
    latency: BTreeMap<String, Histogram>,
    /// error kind → count.
    errors: BTreeMap<&'static str, u64>,
    batch_size: Option<Histogram>,
    batch_seconds: Option<Histogram>,
    /// reason → requests taken off the queue and not run.
    dropped: BTreeMap<&'static str, u64>,
}

/// All metrics of one server. Cheap to update from many threads (one short lock per request).
#[derive(Debug, Default)]
pub struct Metrics {
    labelled: Mutex<Labelled>,
    /// Images admitted and waiting for a batch.
    queue_depth: AtomicI64,
    /// Images admitted and not yet answered (waiting or in a running batch).
    inflight: AtomicI64,
    /// Images run through the backend.
    images: AtomicU64,
    /// Successful inference requests (KServe and /v1/classify).
    answered: AtomicU64,
    /// The batcher's estimate of the backend's seconds per image, as `f64` bits.
    secs_per_image: AtomicU64,
    /// The most images the batcher gathers into one batch now, by memory and by time.
    batch_limit: AtomicI64,
    /// Completed scans of the model repository (poll mode).
    repository_polls: AtomicU64,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Labelled> {
        // A panic while holding the lock cannot leave the maps inconsistent: keep counting.
        self.labelled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a finished HTTP request: its endpoint (route template), status code, error kind (if it
    /// failed) and latency.
    pub fn record_request(
        &self,
        endpoint: &str,
        status: u16,
        error: Option<&'static str>,
        latency: Duration,
    ) {
        let mut m = self.lock();
        *m.requests
            .entry((endpoint.to_string(), status))
            .or_default() += 1;
        m.latency
            .entry(endpoint.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(latency.as_secs_f64());
        if let Some(kind) = error {
            *m.errors.entry(kind).or_default() += 1;
        }
    }

    /// Records one backend run of `images` images that took `elapsed`.
    pub fn record_batch(&self, images: usize, elapsed: Duration) {
        self.images.fetch_add(images as u64, Ordering::Relaxed);
        let mut m = self.lock();
        m.batch_size
            .get_or_insert_with(|| Histogram::new(BATCH_BUCKETS))
            .observe(images as f64);
        m.batch_seconds
            .get_or_insert_with(|| Histogram::new(BATCH_SECONDS_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one request taken off the queue and not run, for `reason` (`deadline_passed`,
    /// `cannot_finish`, `abandoned`).
    pub fn record_dropped(&self, reason: &'static str) {
        *self.lock().dropped.entry(reason).or_default() += 1;
    }

    /// Requests taken off the queue and not run for `reason` so far.
    pub fn dropped(&self, reason: &str) -> u64 {
        self.lock().dropped.get(reason).copied().unwrap_or(0)
    }

    /// Sets the gauges of the batcher's bounds: its estimate of the backend's seconds per image and
    /// the most images it gathers into a batch now.
    pub fn set_batch_bounds(&self, secs_per_image: f64, batch_limit: usize) {
        self.secs_per_image
            .store(secs_per_image.to_bits(), Ordering::Relaxed);
        self.batch_limit
            .store(batch_limit.min(i64::MAX as usize) as i64, Ordering::Relaxed);
    }

    /// Adds `delta` images to the queue-depth gauge (negative when a batch takes them).
    pub fn add_queued(&self, delta: i64) {
        self.queue_depth.fetch_add(delta, Ordering::Relaxed);
    }

    /// Images admitted and waiting for a batch now.
    pub fn queued(&self) -> i64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// Adds `delta` images to the in-flight gauge (negative when they are answered or abandoned)
    /// and returns the gauge's new value.
    pub fn add_inflight(&self, delta: i64) -> i64 {
        self.inflight.fetch_add(delta, Ordering::Relaxed) + delta
    }

    /// Counts one successful inference request.
    pub fn record_answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one completed scan of the model repository (poll mode) and returns the scans so far.
    pub fn record_repository_poll(&self) -> u64 {
        self.repository_polls.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Successful inference requests so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Images run through the backend so far.
    pub fn images(&self) -> u64 {
        self.images.load(Ordering::Relaxed)
    }

    /// Requests answered with `status` so far, over all endpoints.
    pub fn requests_with_status(&self, status: u16) -> u64 {
        self.lock()
            .requests
            .iter()
            .filter(|((_, s), _)| *s == status)
            .map(|(_, n)| n)
            .sum()
    }

    /// Inference requests (`.../infer`, `/v1/classify`, gRPC `ModelInfer`) answered with `status`
    /// so far: a readiness probe's 503 while draining is not a refused request.
    pub fn inference_requests_with_status(&self, status: u16) -> u64 {
        let inference = |endpoint: &str| {
            endpoint.ends_with("/infer")
                || endpoint == "/v1/classify"
                || endpoint == "grpc ModelInfer"
        };
        self.lock()
            .requests
            .iter()
            .filter(|((e, s), _)| *s == status && inference(e.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    /// The whole registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.lock().render(&mut out);
        let scalars = [
            (
                "pipe_queue_depth",
                "gauge",
                "Images admitted and waiting for a batch.",
                self.queue_depth.load(Ordering::Relaxed),
            ),
            (
                "pipe_inflight_images",
                "gauge",
                "Images admitted and not yet answered (waiting or running).",
                self.inflight.load(Ordering::Relaxed),
            ),
            (
                "pipe_images_total",
                "counter",
                "Images run through the backend.",
                self.images() as i64,
            ),
            (
                "pipe_inference_requests_answered_total",
                "counter",
                "Inference requests answered with results (KServe infer and /v1/classify).",
                self.answered() as i64,
            ),
            (
                "pipe_repository_polls_total",
                "counter",
                "Completed scans of the model repository (--model-control-mode poll).",
                self.repository_polls.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, kind, help, value) in scalars {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        let name = "pipe_batch_limit_images";
        family(
            &mut out,
            name,
            "gauge",
            "Most images the batcher gathers into one backend run now (--max-batch bounded by memory and by time).",
        );
        let _ = writeln!(out, "{name} {}", self.batch_limit.load(Ordering::Relaxed));
        let name = "pipe_backend_seconds_per_image";
        family(
            &mut out,
            name,
            "gauge",
            "The batcher's running estimate of the backend's seconds per image.",
        );
        let secs = f64::from_bits(self.secs_per_image.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name} {secs}");
        out
    }
}

impl Labelled {
    /// The labelled families and histograms.
    fn render(&self, out: &mut String) {
        let name = "pipe_http_requests_total";
        family(
            out,
            name,
            "counter",
            "HTTP requests by endpoint (route) and status code.",
        );
        for ((endpoint, code), n) in &self.requests {
            let _ = writeln!(
                out,
                "{name}{{endpoint=\"{}\",code=\"{code}\"}} {n}",
                escape(endpoint)
            );
        }
        let name = "pipe_http_request_duration_seconds";
        family(
            out,
            name,
            "histogram",
            "Time from a request's arrival to its response, seconds, by endpoint.",
        );
        for (endpoint, h) in &self.latency {
            h.render(out, name, &format!("endpoint=\"{}\"", escape(endpoint)));
        }
        let name = "pipe_errors_total";
        family(out, name, "counter", "Failed requests by kind of error.");
        for (kind, n) in &self.errors {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {n}");
        }
        let name = "pipe_requests_dropped_total";
        family(
            out,
            name,
            "counter",
            "Requests taken off the queue and not run, by reason (deadline_passed, cannot_finish: answered 503 inference_timeout; abandoned: the client had gone).",
        );
        for (reason, n) in &self.dropped {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
        }
        let histograms = [
            (
                "pipe_batch_size",
                "Images per backend run (dynamic batching).",
                &self.batch_size,
                BATCH_BUCKETS,
            ),
            (
                "pipe_batch_duration_seconds",
                "Backend time per batch, seconds.",
                &self.batch_seconds,
                BATCH_SECONDS_BUCKETS,
            ),
        ];
        for (name, help, h, bounds) in histograms {
            family(out, name, "histogram", help);
            match h {
                Some(h) => h.render(out, name, ""),
                None => Histogram::new(bounds).render(out, name, ""),
            }
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline) for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let mut h = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [0.5, 1.0, 3.0, 3.0, 9.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert_eq!(
            out,
            "x_bucket{a=\"b\",le=\"1\"} 2\nx_bucket{a=\"b\",le=\"2\"} 2\nx_bucket{a=\"b\",le=\"4\"} 4\n\
             x_bucket{a=\"b\",le=\"+Inf\"} 5\nx_sum{a=\"b\"} 16.5\nx_count{a=\"b\"} 5\n"
        );
        let mut bare = String::new();
        Histogram::new(&[1.0]).render(&mut bare, "y", "");
        assert_eq!(
            bare,
            "y_bucket{le=\"1\"} 0\ny_bucket{le=\"+Inf\"} 0\ny_sum 0\ny_count 0\n"
        );
    }

    /// Of 503 answers, only those of inference requests count as refused requests: not a
    /// readiness probe's while the server drains.
    #[test]
    fn only_inference_requests_count_as_refused() {
        let m = Metrics::default();
        for endpoint in [
            "/v2/health/ready",
            "/v2/models/{name}/ready",
            "/v2/models/{name}/infer",
            "/v2/models/{name}/versions/{version}/infer",
            "/v1/classify",
            "grpc ModelInfer",
        ] {
            m.record_request(endpoint, 503, None, Duration::from_millis(1));
        }
        m.record_request("/v1/classify", 200, None, Duration::from_millis(1));
        assert_eq!(
            (
                m.requests_with_status(503),
                m.inference_requests_with_status(503)
            ),
            (6, 4)
        );
    }

    #[test]
    fn registry_renders_every_family_once() {
        let m = Metrics::default();
        m.record_request("/v2/health/live", 200, None, Duration::from_millis(1));
        m.record_request(
            "/v2/models/{name}/infer",
            400,
            Some("shape"),
            Duration::from_millis(3),
        );
        m.record_batch(3, Duration::from_millis(20));
        m.add_inflight(2);
        m.record_dropped("deadline_passed");
        m.record_dropped("deadline_passed");
        m.set_batch_bounds(0.25, 7);
        let text = m.render();
        for line in [
            "pipe_http_requests_total{endpoint=\"/v2/health/live\",code=\"200\"} 1",
            "pipe_errors_total{kind=\"shape\"} 1",
            "pipe_batch_size_bucket{le=\"2\"} 0",
            "pipe_batch_size_bucket{le=\"4\"} 1",
            "pipe_batch_size_count 1",
            "pipe_inflight_images 2",
            "pipe_images_total 3",
            "pipe_requests_dropped_total{reason=\"deadline_passed\"} 2",
            "pipe_backend_seconds_per_image 0.25",
            "pipe_batch_limit_images 7",
            "pipe_http_request_duration_seconds_count{endpoint=\"/v2/models/{name}/infer\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert_eq!(text.matches("# TYPE pipe_batch_size histogram").count(), 1);
        assert_eq!(m.requests_with_status(400), 1);
        assert_eq!(
            (m.dropped("deadline_passed"), m.dropped("abandoned")),
            (2, 0)
        );
    }
}
