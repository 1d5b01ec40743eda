//! Errors of the server: [`ServeError`] for starting and stopping it, [`ApiError`] for one request
//! (an HTTP status, a kind for the metrics and logs, and a message sent as `{"error": "..."}`, the
//! KServe v2 error body).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model could not be read or opened by the backend, or an option is invalid.
    #[error(transparent)]
    Pipe(#[from] crate::error::Error),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The operating-system error.
        error: std::io::Error,
    },
    /// The async runtime, a signal handler or the accept loop failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// The model repository folder could not be listed.
    #[error("model repository {}: {error}", dir.display())]
    Repository {
        /// The repository folder.
        dir: std::path::PathBuf,
        /// The operating-system error.
        error: std::io::Error,
    },
    /// A model worker thread could not be started or ended abnormally.
    #[error("model worker: {0}")]
    Worker(String),
}

/// The kind of a failed request, as counted in `pipe_errors_total{kind=...}` and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind(pub &'static str);

/// One failed request: status, kind and message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub status: StatusCode,
    /// Short machine-readable kind (`json`, `shape`, `queue_full`, ...).
    pub kind: &'static str,
    /// What is wrong, for the client.
    pub message: String,
    /// Seconds for a `Retry-After` header (503 answers).
    pub retry_after: Option<u32>,
    /// Ask the client to close the connection (sent while the server drains before shutdown).
    pub close: bool,
}

impl ApiError {
    /// A 400 Bad Request of `kind`.
    pub fn bad_request(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, message)
    }

    /// An error with any status.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            retry_after: None,
            close: false,
        }
    }

    /// A 503 with `Retry-After`: the queue cannot take the request now.
    pub fn queue_full(images: usize, capacity: usize) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                format!(
                    "server busy: the queue holds its limit of {capacity} images and cannot take {images} more; retry later"
                ),
            )
        }
    }

    /// A 503 with `Retry-After` and `Connection: close`: the server is shutting down.
    pub fn shutting_down() -> Self {
        ApiError {
            retry_after: Some(1),
            close: true,
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "server shutting down; retry on another replica",
            )
        }
    }

    /// A 503 with `Retry-After`: the request's images were not inferred within the request timeout
    /// (`timeout`), or were dropped unrun because they could not be (see [`super::bounds::verdict`]).
    pub fn inference_timeout(timeout: std::time::Duration) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "inference_timeout",
                format!(
                    "inference not finished within the request timeout of {:.1} s; the server is overloaded",
                    timeout.as_secs_f64()
                ),
            )
        }
    }

    /// A 503 without `Retry-After` for a request of `images` images that the backend is expected
    /// to take `expected` to run, longer than the whole request timeout (`timeout`): it could not
    /// finish on an idle server either, so retrying the same request cannot help.
    pub fn longer_than_timeout(
        images: usize,
        expected: std::time::Duration,
        timeout: std::time::Duration,
    ) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "inference_timeout",
            format!(
                "{} would take about {:.1} s on this server (its measured pace), longer than the \
                 request timeout of {:.1} s: send fewer images per request, or start the server \
                 with a longer --request-timeout-ms",
                if images == 1 {
                    "this image".to_string()
                } else {
                    format!("these {images} images")
                },
                expected.as_secs_f64(),
                timeout.as_secs_f64()
            ),
        )
    }

    /// A 500 for a backend failure.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "backend", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.kind, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp.extensions_mut().insert(ErrorKind(self.kind));
        resp
    }
}
