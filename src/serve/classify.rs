//! `POST /v1/classify`: image files in, labels out, for clients without a tensor library. The body is
//! one image (any format pipe reads) or a `multipart/form-data` form whose file parts are images;
//! each is decoded and resized by the same library function `pipe infer` uses, then classified
//! through the batching queue.

use super::error::ApiError;
use super::state::{body_error, run_images, Deadline, Shared};
use crate::onnx::ModelInfo;
use crate::report::{argmax, top_k};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::{Extension, Json};
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;

/// Query parameters of `/v1/classify`; any other name is refused (400), so that a misspelt
/// `topk=2` is not silently answered with the default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyQuery {
    /// How many of the most probable classes to list per image (default 1, like `pipe infer`).
    top_k: Option<usize>,
    /// The model to classify with (default: the only model served).
    model: Option<String>,
    /// Its version (default: the highest live one).
    version: Option<String>,
}

/// Decodes one uploaded image for the model, through the function `pipe infer` decodes image files
/// with ([`crate::infer::decode_image`]: the model's input size, resize policy and filter), so that
/// both see the same pixels (`name` only names it in errors): HWC RGB `u8`, `S * S * 3` bytes.
///
/// # Errors
/// As [`crate::infer::decode_image`]: empty, not an image, truncated, unsupported, over the decoding
/// limits.
pub fn decode_for_model(name: &str, bytes: &[u8], info: &ModelInfo) -> crate::Result<Vec<u8>> {
    crate::infer::decode_image(info, Path::new(name), bytes)
}

/// What `/v1/classify` writes for an output value: `probability`, or `logit` for a logits export.
fn score_name(info: &ModelInfo) -> &'static str {
    if info.output_name == crate::contract::LOGITS {
        "logit"
    } else {
        "probability"
    }
}

/// The uploaded images as (name, bytes): the file parts of a multipart form, or the whole body.
async fn read_images(st: &Shared, req: Request) -> Result<Vec<(String, Bytes)>, ApiError> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !multipart {
        let body = Bytes::from_request(req, &())
            .await
            .map_err(|r| body_error(r, st.max_body))?;
        if body.is_empty() {
            return Err(ApiError::bad_request(
                "empty_body",
                "empty request body; send an image file as the body, or multipart form files",
            ));
        }
        return Ok(vec![("body".to_string(), body)]);
    }
    let form_error = |e: axum::extract::multipart::MultipartError| {
        let kind = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "multipart"
        };
        ApiError::new(
            e.status(),
            kind,
            format!("multipart form: {}", e.body_text()),
        )
    };
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|r| ApiError::new(r.status(), "multipart", r.body_text()))?;
    let mut files = Vec::new();
    while let Some(field) = form.next_field().await.map_err(form_error)? {
        let Some(name) = field.file_name().map(str::to_owned) else {
            continue; // a plain form value, not a file
        };
        files.push((name, field.bytes().await.map_err(form_error)?));
    }
    if files.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the multipart form holds no file; send e.g. curl -F image=@cat.jpg",
        ));
    }
    Ok(files)
}

/// `POST /v1/classify[?top_k=K][&model=NAME[&version=V]]`.
pub async fn classify(
    State(st): State<Shared>,
    Extension(Deadline(deadline)): Extension<Deadline>,
    query: Result<Query<ClassifyQuery>, QueryRejection>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::bad_request("query", format!("bad query: {}", e.body_text())))?;
    let m = match &q.model {
        Some(name) => st.models.get(name, q.version.as_deref())?,
        None if q.version.is_some() => {
            return Err(ApiError::bad_request(
                "query",
                "version needs model: ?model=NAME&version=V",
            ))
        }
        None => st.models.only()?,
    };
    let k = match q.top_k {
        Some(0) => return Err(ApiError::bad_request("query", "top_k must be at least 1")),
        Some(k) => k.min(m.info.classes.len()),
        None => 1,
    };
    let files = read_images(&st, req).await?;
    let n = files.len();
    let model = m.clone();
    // Decoding is CPU work: off the async threads, images in parallel.
    let decoded = tokio::task::spawn_blocking(move || {
        files
            .par_iter()
            .map(|(name, bytes)| decode_for_model(name, bytes, &model.info))
            .collect::<crate::Result<Vec<Vec<u8>>>>()
            .map(|px| {
                (
                    files.into_iter().map(|(name, _)| name).collect::<Vec<_>>(),
                    px,
                )
            })
    })
    .await
    .map_err(|e| ApiError::backend(format!("image decoding task failed: {e}")))?;
    let (names, pixels) = decoded.map_err(|e| ApiError::bad_request("image", e.to_string()))?;
    let pixels: Vec<f32> = pixels.iter().flatten().map(|&v| f32::from(v)).collect();
    let out = run_images(&st, &m, pixels, n, deadline).await?;
    let score = score_name(&m.info);
    let predictions: Vec<Value> = names
        .iter()
        .zip(out.rows())
        .map(|(name, row)| {
            let row = row.to_vec();
            let c = argmax(&row);
            let top: Vec<Value> = top_k(&row, k)
                .into_iter()
                .map(|(i, v)| json!({"class_index": i, "label": m.info.classes[i], score: v}))
                .collect();
            json!({
                "file": name,
                "class_index": c,
                "label": m.info.classes[c],
                "probability": row[c],
                "probabilities": row,
                "top_k": top,
            })
        })
        .collect();
    st.metrics.record_answered();
    Ok(Json(json!({
        "model": m.name,
        "model_version": m.version.to_string(),
        "backend": m.batcher.backend_name(),
        "output": m.info.output_name,
        "predictions": predictions,
    })))
}
