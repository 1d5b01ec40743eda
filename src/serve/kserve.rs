//! The KServe v2 ("Open Inference Protocol") REST messages and Triton's extensions to them: binary
//! tensor data (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`,
//! `binary_data_output`) and classification (`classification` output parameter, BYTES strings
//! `"<value>:<index>[:<label>]"`).
//!
//! Parsing checks everything a client can get wrong against the model (input name, datatype, shape,
//! data length, binary section) and answers with a 400 that says what is wrong.

use super::error::ApiError;
use crate::onnx::ModelInfo;
use crate::report::top_k;
use ndarray::Array2;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

/// The HTTP header that gives the length of the JSON part of a body with binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct RequestInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Deserialize)]
struct InferRequest<'a> {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow)]
    inputs: Vec<RequestInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RequestOutput>>,
}

/// One output the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// Return it as binary data after the JSON header.
    pub binary: bool,
    /// Return the top `k` classes as BYTES strings instead of the raw tensor.
    pub classification: Option<usize>,
}

/// A checked inference request.
#[derive(Debug)]
pub struct ParsedInfer {
    /// The request's `id`, echoed in the response.
    pub id: Option<Value>,
    /// Number of images.
    pub n: usize,
    /// `n * S * S * 3` floats, NHWC RGB.
    pub pixels: Vec<f32>,
    /// The outputs to return, in order.
    pub outputs: Vec<OutputSpec>,
}

/// Collects the numbers of a JSON `data` array, flat (row-major) or nested, into one vector.
struct Flatten<'v>(&'v mut Vec<f32>);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("numbers, in a flat or nested array")
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// Splits a request body into its JSON header and binary section, from the
/// `Inference-Header-Content-Length` header's value (absent: all JSON).
///
/// # Errors
/// 400 when the header is not a number or exceeds the body.
pub fn split_body<'b>(
    body: &'b [u8],
    header: Option<&str>,
) -> Result<(&'b [u8], &'b [u8]), ApiError> {
    let Some(h) = header else {
        return Ok((body, &[]));
    };
    let len: usize = h.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "binary",
            format!("Inference-Header-Content-Length '{h}' is not a byte count"),
        )
    })?;
    if len > body.len() {
        return Err(ApiError::bad_request(
            "binary",
            format!(
                "Inference-Header-Content-Length {len} exceeds the body's {} bytes",
                body.len()
            ),
        ));
    }
    Ok(body.split_at(len))
}

/// Parses and checks an inference request for `info`'s model.
///
/// # Errors
/// 400 with a kind (`empty_body`, `json`, `tensor_name`, `datatype`, `shape`, `data_length`,
/// `binary`, `parameters`) and a message naming what is wrong.
pub fn parse_infer(json: &[u8], binary: &[u8], info: &ModelInfo) -> Result<ParsedInfer, ApiError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "empty_body",
            "empty request body; send a JSON inference request",
        ));
    }
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "json",
            "malformed inference request: expected a JSON object {\"inputs\": [...]}",
        ));
    }
    let req: InferRequest<'_> = serde_json::from_slice(json).map_err(|e| {
        // Bytes after a complete JSON object: most often binary tensor data sent without the
        // header that says where the JSON ends.
        let hint = if e.to_string().starts_with("trailing characters") && binary.is_empty() {
            " (binary tensor data after the JSON needs the Inference-Header-Content-Length header: \
             the JSON's length in bytes)"
        } else {
            ""
        };
        ApiError::bad_request("json", format!("malformed inference request: {e}{hint}"))
    })?;
    let input = match req.inputs.as_slice() {
        [one] => one,
        [] => {
            return Err(ApiError::bad_request(
                "tensor_name",
                "request has no inputs; the model takes one input 'images'",
            ))
        }
        many => {
            let names: Vec<&str> = many.iter().map(|i| i.name.as_str()).collect();
            return Err(ApiError::bad_request(
                "tensor_name",
                format!("request has inputs {names:?}; the model takes one input 'images'"),
            ));
        }
    };
    let (n, count) = check_input(input, info)?;
    let pixels = input_data(input, count, binary)?;
    let default_binary = flag(&req.parameters, "binary_data_output", "request")?.unwrap_or(false);
    let outputs = match &req.outputs {
        None => vec![OutputSpec {
            binary: default_binary,
            classification: None,
        }],
        Some(outs) if outs.is_empty() => {
            return Err(ApiError::bad_request(
                "tensor_name",
                format!(
                    "'outputs' is empty; the model's output is '{}'",
                    info.output_name
                ),
            ))
        }
        Some(outs) => outs
            .iter()
            .map(|o| output_spec(o, info, default_binary))
            .collect::<Result<_, _>>()?,
    };
    Ok(ParsedInfer {
        id: req.id,
        n,
        pixels,
        outputs,
    })
}

/// Checks the input's name, datatype and shape; returns (images, values).
fn check_input(input: &RequestInput<'_>, info: &ModelInfo) -> Result<(usize, usize), ApiError> {
    check_images(&input.name, &input.datatype, &input.shape, info)
}

/// Checks that a request's input tensor is the model's `images` (`name`), FP32 (`datatype`), of
/// shape `[N, S, S, 3]` with N >= 1 and S the model's input size; returns (N, values). The same
/// rules for HTTP and gRPC requests.
///
/// # Errors
/// 400 naming what is wrong.
pub fn check_images(
    name: &str,
    datatype: &str,
    shape: &[i64],
    info: &ModelInfo,
) -> Result<(usize, usize), ApiError> {
    let s = info.input_size as i64;
    if name != crate::contract::INPUT_NAME {
        return Err(ApiError::bad_request(
            "tensor_name",
            format!("unknown input '{name}'; the model's input is 'images'"),
        ));
    }
    if datatype != "FP32" {
        return Err(ApiError::bad_request(
            "datatype",
            format!("input 'images' has datatype '{datatype}'; the model takes FP32"),
        ));
    }
    match shape {
        [n, h, w, 3] if *n >= 1 && *h == s && *w == s => {
            let n = usize::try_from(*n).map_err(|_| ApiError::bad_request("shape", "batch size too large"))?;
            let count = n
                .checked_mul(info.input_size * info.input_size * 3)
                .ok_or_else(|| ApiError::bad_request("shape", "batch size too large"))?;
            Ok((n, count))
        }
        other => Err(ApiError::bad_request(
            "shape",
            format!("input 'images' has shape {other:?}; the model takes [N, {s}, {s}, 3] with N >= 1 (NHWC RGB 0..255)"),
        )),
    }
}

/// The input's values, from its binary section or its JSON `data`.
fn input_data(input: &RequestInput<'_>, count: usize, binary: &[u8]) -> Result<Vec<f32>, ApiError> {
    let binary_size = match input.parameters.get("binary_data_size") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::bad_request(
                "parameters",
                format!("binary_data_size {v} is not a byte count"),
            )
        })?),
    };
    let values = match (binary_size, input.data) {
        (Some(size), _) => {
            let want = count as u64 * 4;
            if size != want {
                return Err(ApiError::bad_request(
                    "data_length",
                    format!("input 'images' has binary_data_size {size}; its shape needs {want} bytes ({count} FP32 values)"),
                ));
            }
            if binary.len() as u64 != size {
                return Err(ApiError::bad_request(
                    "binary",
                    format!("the body holds {} bytes of binary data after the JSON header; input 'images' declares {size}", binary.len()),
                ));
            }
            binary
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        (None, Some(raw)) => {
            if !binary.is_empty() {
                return Err(ApiError::bad_request(
                    "binary",
                    format!("{} bytes of binary data follow the JSON header but no input declares binary_data_size", binary.len()),
                ));
            }
            let mut values = Vec::with_capacity(count);
            let mut de = serde_json::Deserializer::from_str(raw.get());
            Flatten(&mut values).deserialize(&mut de).map_err(|e| {
                ApiError::bad_request(
                    "datatype",
                    format!("input 'images' data must hold numbers: {e}"),
                )
            })?;
            if values.len() != count {
                return Err(ApiError::bad_request(
                    "data_length",
                    format!(
                        "input 'images' holds {} values; its shape needs {count}",
                        values.len()
                    ),
                ));
            }
            values
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "data_length",
                "input 'images' has neither 'data' nor the binary_data_size parameter",
            ))
        }
    };
    Ok(values)
}

/// A boolean parameter, if present.
fn flag(params: &Map<String, Value>, key: &str, owner: &str) -> Result<Option<bool>, ApiError> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::bad_request(
            "parameters",
            format!("{owner} parameter {key} must be true or false, not {v}"),
        )),
    }
}

fn output_spec(
    o: &RequestOutput,
    info: &ModelInfo,
    default_binary: bool,
) -> Result<OutputSpec, ApiError> {
    if o.name != info.output_name {
        return Err(ApiError::bad_request(
            "tensor_name",
            format!(
                "unknown output '{}'; the model's output is '{}'",
                o.name, info.output_name
            ),
        ));
    }
    let binary = flag(&o.parameters, "binary_data", "output")?.unwrap_or(default_binary);
    let classification = match o.parameters.get("classification") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(k) if k >= 1 => Some((k as usize).min(info.classes.len())),
            _ => {
                return Err(ApiError::bad_request(
                    "parameters",
                    format!("output parameter classification must be a count >= 1, not {v}"),
                ))
            }
        },
    };
    Ok(OutputSpec {
        binary,
        classification,
    })
}

/// A built response: the JSON header, the binary section (empty when no output is binary).
#[derive(Debug)]
pub struct InferResponse {
    /// The JSON document.
    pub json: Vec<u8>,
    /// Binary tensor data, in output order.
    pub binary: Vec<u8>,
}

/// Triton's classification string of one class: `"<value>:<index>[:<label>]"` (value as C's `%f`).
pub fn classification_string(value: f32, index: usize, label: Option<&str>) -> String {
    match label {
        Some(l) => format!("{value:.6}:{index}:{l}"),
        None => format!("{value:.6}:{index}"),
    }
}

/// Triton's classification strings of the top `k` classes of every row, row by row.
pub fn classifications(out: &Array2<f32>, k: usize, info: &ModelInfo) -> Vec<String> {
    let mut strings = Vec::with_capacity(out.nrows() * k);
    for row in out.rows() {
        let row = row.to_vec();
        for (c, v) in top_k(&row, k) {
            let label = info.classes_from_metadata.then(|| info.classes[c].as_str());
            strings.push(classification_string(v, c, label));
        }
    }
    strings
}

/// One response output: its JSON object, with the data inline or appended to `binary`.
fn output_json(
    spec: &OutputSpec,
    out: &Array2<f32>,
    info: &ModelInfo,
    binary: &mut Vec<u8>,
) -> Value {
    let start = binary.len();
    let (datatype, shape, data) = match spec.classification {
        Some(k) => {
            let strings = classifications(out, k, info);
            if spec.binary {
                // BYTES elements: a 4-byte little-endian length, then the bytes.
                for s in &strings {
                    binary.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    binary.extend_from_slice(s.as_bytes());
                }
            }
            ("BYTES", [out.nrows(), k], json!(strings))
        }
        None => {
            if spec.binary {
                binary.extend(out.iter().flat_map(|v| v.to_le_bytes()));
            }
            let flat: Vec<f32> = if spec.binary {
                Vec::new()
            } else {
                out.iter().copied().collect()
            };
            ("FP32", [out.nrows(), out.ncols()], json!(flat))
        }
    };
    let mut o = json!({"name": info.output_name, "datatype": datatype, "shape": shape});
    if spec.binary {
        o["parameters"] = json!({ "binary_data_size": binary.len() - start });
    } else {
        o["data"] = data;
    }
    o
}

/// Builds the response to `req` from the output `out` (`[n, classes]`) of version `version` of
/// the model `model_name`.
pub fn build_response(
    model_name: &str,
    version: u64,
    req: &ParsedInfer,
    out: &Array2<f32>,
    info: &ModelInfo,
) -> InferResponse {
    let mut binary = Vec::new();
    let outputs: Vec<Value> = req
        .outputs
        .iter()
        .map(|spec| output_json(spec, out, info, &mut binary))
        .collect();
    let mut doc =
        json!({"model_name": model_name, "model_version": version.to_string(), "outputs": outputs});
    if let Some(id) = &req.id {
        doc["id"] = id.clone();
    }
    InferResponse {
        json: serde_json::to_vec(&doc).unwrap_or_default(),
        binary,
    }
}

/// The model metadata document (`GET /v2/models/{name}`).
pub fn model_metadata(
    model_name: &str,
    versions: &[String],
    info: &ModelInfo,
    platform: &str,
) -> Value {
    let s = info.input_size as i64;
    json!({
        "name": model_name,
        "versions": versions,
        "platform": platform,
        "inputs": [{"name": crate::contract::INPUT_NAME, "datatype": "FP32", "shape": [-1, s, s, 3]}],
        "outputs": [{"name": info.output_name, "datatype": "FP32", "shape": [-1, info.classes.len() as i64]}],
    })
}

/// The model configuration document (`GET /v2/models/{name}/config`), in the JSON form of Triton's
/// `model_config.proto`, as `pipe export --triton` writes it in `config.pbtxt`; `version_policy` is
/// the JSON form of the config's `ModelVersionPolicy` ([`super::repository::VersionPolicy::to_json`]);
/// `instance_group` gives the model instances (`--instances`) and their kind (`KIND_CPU` or
/// `KIND_GPU`, from `gpu`).
pub fn model_config(
    model_name: &str,
    info: &ModelInfo,
    platform: &str,
    version_policy: Value,
    (max_batch, max_delay_us): (usize, u128),
    (instances, gpu): (usize, bool),
) -> Value {
    let s = info.input_size;
    json!({
        "name": model_name,
        "platform": platform,
        "version_policy": version_policy,
        "max_batch_size": max_batch,
        "instance_group": [{"count": instances, "kind": if gpu { "KIND_GPU" } else { "KIND_CPU" }}],
        "input": [{"name": crate::contract::INPUT_NAME, "data_type": "TYPE_FP32", "format": "FORMAT_NHWC", "dims": [s, s, 3]}],
        "output": [{"name": info.output_name, "data_type": "TYPE_FP32", "dims": [info.classes.len()], "label_filename": "labels.txt"}],
        "dynamic_batching": {"max_queue_delay_microseconds": max_delay_us},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ModelInfo {
        ModelInfo {
            input_size: 2,
            image: crate::data::ImageSpec::new(2, crate::data::ResizePolicy::Squash),
            classes: vec!["cat".into(), "dog".into(), "emu".into()],
            classes_from_metadata: true,
            output_name: "probabilities".into(),
            metadata: vec![],
            opset: 17,
            parameters: 0,
        }
    }

    fn err(json: &str, binary: &[u8]) -> (u16, &'static str, String) {
        let e = parse_infer(json.as_bytes(), binary, &info()).unwrap_err();
        (e.status.as_u16(), e.kind, e.message)
    }

    #[test]
    fn json_data_flat_or_nested_and_binary_give_the_same_pixels() {
        let flat: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let r = format!(
            r#"{{"id":"a","inputs":[{{"name":"images","shape":[1,2,2,3],"datatype":"FP32","data":{flat:?}}}]}}"#
        );
        let p = parse_infer(r.as_bytes(), &[], &info()).unwrap();
        assert_eq!((p.n, &p.pixels), (1, &flat));
        assert_eq!(
            p.outputs,
            vec![OutputSpec {
                binary: false,
                classification: None
            }]
        );
        let nested = r#"{"inputs":[{"name":"images","shape":[1,2,2,3],"datatype":"FP32",
            "data":[[[[0,1,2],[3,4,5]],[[6,7,8],[9,10,11]]]]}]}"#;
        assert_eq!(
            parse_infer(nested.as_bytes(), &[], &info()).unwrap().pixels,
            flat
        );
        let bin: Vec<u8> = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
        let r = r#"{"inputs":[{"name":"images","shape":[1,2,2,3],"datatype":"FP32","parameters":{"binary_data_size":48}}],
            "parameters":{"binary_data_output":true},"outputs":[{"name":"probabilities","parameters":{"classification":9}}]}"#;
        let p = parse_infer(r.as_bytes(), &bin, &info()).unwrap();
        assert_eq!(p.pixels, flat);
        assert_eq!(
            p.outputs,
            vec![OutputSpec {
                binary: true,
                classification: Some(3)
            }]
        );
    }

    #[test]
    fn every_client_mistake_is_a_400_of_its_kind() {
        let input = |name: &str, shape: &str, dt: &str, data: &str| {
            format!(
                r#"{{"inputs":[{{"name":"{name}","shape":{shape},"datatype":"{dt}","data":{data}}}]}}"#
            )
        };
        let twelve = format!("{:?}", vec![0.5f32; 12]);
        let cases = [
            (String::new(), "empty_body"),
            ("{\"inputs\": [".into(), "json"),
            ("[1,2]".into(), "json"),
            (r#"{"inputs":[]}"#.into(), "tensor_name"),
            (input("pixels", "[1,2,2,3]", "FP32", &twelve), "tensor_name"),
            (input("images", "[1,2,2,3]", "UINT8", &twelve), "datatype"),
            (input("images", "[1,2,2,3]", "FP32", r#"["a"]"#), "datatype"),
            (input("images", "[1,3,3,3]", "FP32", &twelve), "shape"),
            (input("images", "[0,2,2,3]", "FP32", "[]"), "shape"),
            (input("images", "[2,2,2,3]", "FP32", &twelve), "data_length"),
            (input("images", "[1,2,2,3]", "FP32", "[1,2]"), "data_length"),
        ];
        for (json, kind) in cases {
            let (status, k, msg) = err(&json, &[]);
            assert_eq!((status, k), (400, kind), "{json}: {msg}");
        }
        let bin_req = |size: usize| {
            format!(
                r#"{{"inputs":[{{"name":"images","shape":[1,2,2,3],"datatype":"FP32","parameters":{{"binary_data_size":{size}}}}}]}}"#
            )
        };
        assert_eq!(err(&bin_req(40), &[0; 40]).1, "data_length");
        assert_eq!(err(&bin_req(48), &[0; 40]).1, "binary");
        assert_eq!(
            err(&input("images", "[1,2,2,3]", "FP32", &twelve), &[0; 4]).1,
            "binary"
        );
        let bad_out = format!(
            r#"{{"inputs":[{{"name":"images","shape":[1,2,2,3],"datatype":"FP32","data":{twelve}}}],"outputs":[{{"name":"logits"}}]}}"#
        );
        assert_eq!(err(&bad_out, &[]).1, "tensor_name");
        let bad_class = bad_out.replace(
            r#"{"name":"logits"}"#,
            r#"{"name":"probabilities","parameters":{"classification":0}}"#,
        );
        assert_eq!(err(&bad_class, &[]).1, "parameters");
        assert_eq!(split_body(b"{}", Some("9")).unwrap_err().kind, "binary");
        assert_eq!(split_body(b"{}", Some("x")).unwrap_err().kind, "binary");
        assert_eq!(
            split_body(b"{}xy", Some("2")).unwrap(),
            (&b"{}"[..], &b"xy"[..])
        );
    }

    #[test]
    fn responses_carry_json_binary_and_classification_outputs() {
        let out = Array2::from_shape_vec((2, 3), vec![0.1, 0.7, 0.2, 0.5, 0.25, 0.25]).unwrap();
        let req = ParsedInfer {
            id: Some(json!("r1")),
            n: 2,
            pixels: vec![],
            outputs: vec![
                OutputSpec {
                    binary: false,
                    classification: Some(2),
                },
                OutputSpec {
                    binary: true,
                    classification: None,
                },
            ],
        };
        let r = build_response("m", 1, &req, &out, &info());
        let doc: Value = serde_json::from_slice(&r.json).unwrap();
        assert_eq!(doc["id"], "r1");
        assert_eq!(doc["outputs"][0]["datatype"], "BYTES");
        assert_eq!(doc["outputs"][0]["shape"], json!([2, 2]));
        assert_eq!(
            doc["outputs"][0]["data"],
            json!([
                "0.700000:1:dog",
                "0.200000:2:emu",
                "0.500000:0:cat",
                "0.250000:1:dog"
            ])
        );
        assert_eq!(doc["outputs"][1]["parameters"]["binary_data_size"], 24);
        let back: Vec<f32> = r
            .binary
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(back, out.iter().copied().collect::<Vec<_>>());
        assert_eq!(classification_string(0.5, 3, None), "0.500000:3");
    }
}
