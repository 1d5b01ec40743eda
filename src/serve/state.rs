//! What the handlers share: the server's state, the request deadline, and the two steps every
//! inference route takes (reading the body, running images through the batcher).

use super::error::ApiError;
use super::metrics::Metrics;
use super::repository::{Models, Repository, ServedModel};
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use ndarray::Array2;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything the handlers share.
pub struct AppState {
    /// The live models and versions, each with its batching queue and model workers.
    pub models: Models,
    /// The model repository followed (`--model-repository`), or `None` for `--model`.
    pub repository: Option<Repository>,
    /// Server metrics.
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM/SIGINT: readiness turns false and new inference requests get 503.
    pub draining: AtomicBool,
    /// Longest time a request may take, from its arrival to its response.
    pub request_timeout: Duration,
    /// Largest request body, bytes.
    pub max_body: usize,
}

/// Shared handle to the state.
pub type Shared = Arc<AppState>;

/// When the request must be answered: its arrival plus the request timeout.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

/// Maps a body that could not be read (too large, aborted) to a JSON error.
pub fn body_error(r: BytesRejection, max_body: usize) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body over the server's limit of {max_body} bytes (--max-body-mb)"),
        )
    } else {
        ApiError::new(
            r.status(),
            "body",
            format!("cannot read the request body: {}", r.body_text()),
        )
    }
}

/// Queues `n` images for `model` with the request's `deadline` and waits for their output rows, at
/// most until the deadline.
///
/// # Errors
/// 503 while shutting down, when the queue is full, when the deadline passes or when the batcher
/// drops the images unrun because they cannot be inferred by then; 500 when the backend fails.
pub async fn run_images(
    st: &AppState,
    model: &ServedModel,
    pixels: Vec<f32>,
    n: usize,
    deadline: Instant,
) -> Result<Array2<f32>, ApiError> {
    if st.draining.load(Ordering::Acquire) {
        return Err(ApiError::shutting_down());
    }
    let rx = model.batcher.submit(pixels, n, deadline)?;
    match tokio::time::timeout_at(deadline.into(), rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ApiError::backend("the model worker stopped")),
        Err(_) => Err(ApiError::inference_timeout(st.request_timeout)),
    }
}
