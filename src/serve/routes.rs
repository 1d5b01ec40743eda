//! The HTTP routes: KServe v2 health, metadata and inference (with versioned paths), `/v1/classify`,
//! `/metrics`, and the middleware that times, logs, counts and bounds every request.

use super::classify::classify;
use super::error::{ApiError, ErrorKind};
use super::kserve::{self, HEADER_LENGTH};
use super::repository::{ControlMode, IndexEntry, Repository, ServedModel};
use super::state::{body_error, run_images, AppState, Deadline, Shared};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The model name and optional version of a `/v2/models/...` path.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    name: String,
    version: Option<String>,
}

/// Builds the router with all routes, the body limit and the observing middleware.
pub fn router(state: Shared) -> Router {
    let max_body = state.max_body;
    let model_routes = |suffix: &str| -> [String; 2] {
        [
            format!("/v2/models/{{name}}{suffix}"),
            format!("/v2/models/{{name}}/versions/{{version}}{suffix}"),
        ]
    };
    let mut app = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v1/classify", post(classify))
        .route("/metrics", get(metrics))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{name}/load", post(repository_load))
        .route(
            "/v2/repository/models/{name}/unload",
            post(repository_unload),
        );
    for path in model_routes("") {
        app = app.route(&path, get(model_metadata));
    }
    for path in model_routes("/ready") {
        app = app.route(&path, get(model_ready));
    }
    for path in model_routes("/config") {
        app = app.route(&path, get(model_config));
    }
    for path in model_routes("/infer") {
        app = app.route(&path, post(infer));
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Times the request, bounds it by the request timeout (408 past it), counts it in the metrics and
/// logs one structured line.
async fn observe(State(st): State<Shared>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let deadline = start + st.request_timeout;
    req.extensions_mut().insert(Deadline(deadline));
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    // The handler answers 503 itself when inference outlasts the deadline; this bound catches the
    // rest (a body that arrives too slowly), a moment later.
    let grace = Duration::from_millis(100);
    let resp = match tokio::time::timeout_at((deadline + grace).into(), next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "request not completed within {:.1} s (a body sent too slowly?)",
                st.request_timeout.as_secs_f64()
            ),
        )
        .into_response(),
    };
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    let kind = resp.extensions().get::<ErrorKind>().map(|k| k.0);
    st.metrics.record_request(&endpoint, status, kind, elapsed);
    tracing::info!(
        %method,
        path,
        status,
        ms = (elapsed.as_secs_f64() * 1e3 * 100.0).round() / 100.0,
        error = kind,
        "request"
    );
    resp
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no such endpoint: {} {}; see GET /v2, /v2/models/<name>, POST /v2/models/<name>/infer, POST /v2/repository/index, POST /v1/classify, GET /metrics",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": "pipe",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "classification", "model_configuration", "model_repository"],
    }))
}

fn readiness(st: &AppState) -> StatusCode {
    if st.draining.load(Ordering::Acquire) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn server_ready(State(st): State<Shared>) -> StatusCode {
    readiness(&st)
}

/// The live model version a `/v2/models/...` path names.
fn model_of(st: &AppState, p: &ModelPath) -> Result<Arc<ServedModel>, ApiError> {
    st.models.get(&p.name, p.version.as_deref())
}

async fn model_metadata(
    State(st): State<Shared>,
    Path(p): Path<ModelPath>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = model_of(&st, &p)?;
    let versions: Vec<String> = match p.version {
        Some(_) => vec![m.version.to_string()],
        None => st
            .models
            .versions(&m.name)
            .iter()
            .map(u64::to_string)
            .collect(),
    };
    Ok(Json(kserve::model_metadata(
        &m.name,
        &versions,
        &m.info,
        m.platform(),
    )))
}

async fn model_ready(
    State(st): State<Shared>,
    Path(p): Path<ModelPath>,
) -> Result<StatusCode, ApiError> {
    model_of(&st, &p)?;
    Ok(readiness(&st))
}

async fn model_config(
    State(st): State<Shared>,
    Path(p): Path<ModelPath>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = model_of(&st, &p)?;
    let cfg = m.batcher.config();
    Ok(Json(kserve::model_config(
        &m.name,
        &m.info,
        m.platform(),
        st.models.policy(&m.name).to_json(),
        (cfg.max_batch, cfg.max_delay.as_micros()),
        (
            cfg.instances,
            m.batcher.device() == crate::infer::InferDevice::Cuda,
        ),
    )))
}

/// Body of `POST /v2/repository/index`.
#[derive(Debug, Default, Deserialize)]
struct IndexRequest {
    /// Only the versions ready for inference.
    #[serde(default)]
    ready: bool,
}

/// `POST /v2/repository/index`: every model of the repository with its versions and states.
async fn repository_index(
    State(st): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<IndexEntry>>, ApiError> {
    let body = body.map_err(|r| body_error(r, st.max_body))?;
    let req: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("json", format!("bad index request: {e}")))?
    };
    Ok(Json(index(&st, req.ready)))
}

/// The repository index (HTTP and gRPC): every model and version with its state, only the `READY`
/// ones when `ready`. In explicit mode, model folders added since the start are listed as unloaded,
/// as in Triton.
pub fn index(st: &AppState, ready: bool) -> Vec<IndexEntry> {
    if let Some(repo) = &st.repository {
        if repo.mode == ControlMode::Explicit {
            let _ = repo.list(&st.models);
        }
    }
    let mut index = st.models.index();
    if ready {
        index.retain(|e| e.state == "READY");
    }
    index
}

/// The repository of a server in explicit mode, or the 400 Triton gives otherwise.
fn explicit(st: &AppState) -> Result<&Repository, ApiError> {
    match &st.repository {
        Some(repo) if repo.mode == ControlMode::Explicit => Ok(repo),
        Some(repo) => Err(ApiError::bad_request(
            "model_control",
            format!(
                "explicit model load / unload is not allowed with --model-control-mode {}; start the server with --model-control-mode explicit",
                match repo.mode {
                    ControlMode::Poll => "poll",
                    _ => "none",
                }
            ),
        )),
        None => Err(ApiError::bad_request(
            "model_control",
            "this server serves one --model; load and unload need --model-repository DIR --model-control-mode explicit",
        )),
    }
}

/// Loads (or reloads) the versions the policy of model `name` selects, answering once they are live
/// (explicit mode; HTTP and gRPC).
///
/// # Errors
/// 400 outside explicit mode, for a model not in the repository, or when no version could be
/// loaded (with why).
pub async fn load_model(st: &Shared, name: &str) -> Result<(), ApiError> {
    explicit(st)?;
    let state = st.clone();
    let target = name.to_string();
    let report = tokio::task::spawn_blocking(move || match state.repository.as_ref() {
        Some(repo) => repo.sync_model(&state.models, &target),
        None => Err("this server serves no model repository".into()),
    })
    .await
    .map_err(|e| ApiError::backend(format!("model loading task failed: {e}")))?
    .map_err(|e| ApiError::bad_request("load", format!("failed to load '{name}': {e}")))?;
    if st.models.versions(name).is_empty() {
        let why: Vec<String> = report.refused.iter().map(|(_, w)| w.clone()).collect();
        return Err(ApiError::bad_request(
            "load",
            format!(
                "failed to load '{name}': {}",
                if why.is_empty() {
                    "no version to serve".to_string()
                } else {
                    why.join("; ")
                }
            ),
        ));
    }
    Ok(())
}

/// Takes every version of model `name` out of service; requests already queued for it are
/// answered (explicit mode; HTTP and gRPC).
///
/// # Errors
/// 400 outside explicit mode or for an unknown model.
pub fn unload_model(st: &AppState, name: &str) -> Result<(), ApiError> {
    let repo = explicit(st)?;
    repo.unload(&st.models, name)
        .map_err(|e| ApiError::bad_request("unload", format!("failed to unload '{name}': {e}")))
}

/// `POST /v2/repository/models/{name}/load`: [`load_model`]; Triton's `config` and `file:`
/// overrides are refused.
async fn repository_load(
    State(st): State<Shared>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    explicit(&st)?;
    let body = body.map_err(|r| body_error(r, st.max_body))?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let req: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("json", format!("bad load request: {e}")))?;
        if let Some(params) = req.get("parameters").and_then(|p| p.as_object()) {
            if let Some(key) = params
                .keys()
                .find(|k| *k == "config" || k.starts_with("file:"))
            {
                return Err(ApiError::bad_request(
                    "load",
                    format!(
                        "load parameter '{key}' is not supported: pipe serve loads a model's config.pbtxt and files from the repository folder"
                    ),
                ));
            }
        }
    }
    load_model(&st, &name).await?;
    Ok(Json(serde_json::json!({})))
}

/// `POST /v2/repository/models/{name}/unload`: [`unload_model`].
async fn repository_unload(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    unload_model(&st, &name)?;
    Ok(Json(serde_json::json!({})))
}

async fn metrics(State(st): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
}

async fn infer(
    State(st): State<Shared>,
    Path(p): Path<ModelPath>,
    Extension(Deadline(deadline)): Extension<Deadline>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let m = model_of(&st, &p)?;
    let body = body.map_err(|r| body_error(r, st.max_body))?;
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::bad_request("binary", "Inference-Header-Content-Length is not a number")
        })?),
    };
    let (json, binary) = kserve::split_body(&body, header_len)?;
    let mut req = kserve::parse_infer(json, binary, &m.info)?;
    let pixels = std::mem::take(&mut req.pixels);
    let out = run_images(&st, &m, pixels, req.n, deadline).await?;
    let resp = kserve::build_response(&m.name, m.version, &req, &out, &m.info);
    st.metrics.record_answered();
    let any_binary = req.outputs.iter().any(|o| o.binary);
    Ok(infer_response(resp, any_binary))
}

/// The HTTP response: JSON alone, or the JSON header then the binary section, with
/// `Inference-Header-Content-Length` giving the header's length.
fn infer_response(resp: kserve::InferResponse, binary: bool) -> Response {
    let json_len = resp.json.len();
    let (content_type, body) = if binary {
        let mut body = resp.json;
        body.extend_from_slice(&resp.binary);
        ("application/octet-stream", body)
    } else {
        ("application/json", resp.json)
    };
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    if binary {
        r.headers_mut()
            .insert(HEADER_LENGTH, HeaderValue::from(json_len));
    }
    r
}
