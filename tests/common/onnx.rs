//! Reading exported models the way other tools do: the reference `onnx` package (checker, opset,
//! inputs and outputs, `metadata_props`) from the project's virtualenv, and Triton's `config.pbtxt`.

use super::root;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// What the reference `onnx` package reads in a model that passed
/// `onnx.checker.check_model(model, full_check=True)`.
#[derive(Debug, Deserialize)]
pub struct OnnxModel {
    /// The ONNX IR version of the file.
    pub ir_version: i64,
    /// Opset version per domain (`ai.onnx` for the default domain).
    pub opset: BTreeMap<String, i64>,
    /// Graph inputs that are not initializers.
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    /// `metadata_props` as key → value.
    pub metadata: BTreeMap<String, String>,
    /// Elements of the initializers per element type (`FLOAT`, `FLOAT16`, `INT64`, …).
    pub initializer_elements: BTreeMap<String, u64>,
    /// The operator types of the graph's nodes, sorted, each once.
    pub op_types: Vec<String>,
}

/// A graph input or output.
#[derive(Debug, Deserialize)]
pub struct ValueInfo {
    pub name: String,
    /// `FLOAT`, `FLOAT16`, …
    pub elem_type: String,
    /// Each dimension: its value, or its symbolic name (`N`).
    pub dims: Vec<String>,
}

const CHECK_AND_DESCRIBE: &str = r#"
import json, sys, onnx
name = onnx.TensorProto.DataType.Name
def info(v):
    t = v.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else str(d.dim_value) for d in t.shape.dim]
    return {"name": v.name, "elem_type": name(t.elem_type), "dims": dims}
def elements(inits):
    count = {}
    for t in inits:
        n = 1
        for d in t.dims:
            n *= d
        count[name(t.data_type)] = count.get(name(t.data_type), 0) + n
    return count
out = []
for path in sys.argv[1:]:
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    inits = {t.name for t in m.graph.initializer}
    out.append({
        "ir_version": m.ir_version,
        "opset": {o.domain or "ai.onnx": o.version for o in m.opset_import},
        "inputs": [info(v) for v in m.graph.input if v.name not in inits],
        "outputs": [info(v) for v in m.graph.output],
        "metadata": {p.key: p.value for p in m.metadata_props},
        "initializer_elements": elements(m.graph.initializer),
        "op_types": sorted({n.op_type for n in m.graph.node}),
    })
print(json.dumps(out))
"#;

/// Runs `onnx.checker.check_model(full_check=True)` of the `onnx` package in the project's virtualenv
/// (installed by `make setup`) on each model, asserting that it passes, and returns what `onnx` reads
/// in each, in order.
pub fn onnx_check(models: &[&Path]) -> Vec<OnnxModel> {
    let python = root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run `make setup`",
        python.display()
    );
    let out = Command::new(&python)
        .arg("-c")
        .arg(CHECK_AND_DESCRIBE)
        .args(models)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "onnx.checker refused one of {models:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Vec<OnnxModel> = serde_json::from_slice(&out.stdout).expect("json from python");
    assert_eq!(read.len(), models.len());
    read
}

/// A Triton `config.pbtxt` (protobuf text format) as (field path, value) pairs in file order:
/// `name` → `"pipe_vgg16"`, `input.dims` → `[32, 32, 3]`, `dynamic_batching.max_queue_delay_microseconds`
/// → `1000`. Messages in a list (`input [ { … } ]`) add their fields under the list's name.
pub fn pbtxt_fields(text: &str) -> Vec<(String, String)> {
    let tokens = pbtxt_tokens(text);
    let mut out = Vec::new();
    let mut i = 0;
    pbtxt_message(&tokens, &mut i, "", &mut out);
    assert_eq!(i, tokens.len(), "unbalanced config.pbtxt: {text}");
    out
}

fn pbtxt_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    for line in text.lines() {
        let mut rest = line.trim_start();
        while !rest.is_empty() {
            let c = rest.chars().next().unwrap_or(' ');
            let len = match c {
                '#' => break,
                '{' | '}' | '[' | ']' | ':' | ',' => 1,
                '"' => rest[1..].find('"').map_or(rest.len(), |j| j + 2),
                _ => rest
                    .find(|c: char| c.is_whitespace() || "{}[]:,#".contains(c))
                    .unwrap_or(rest.len()),
            };
            tokens.push(rest[..len].to_string());
            rest = rest[len..].trim_start();
        }
    }
    tokens
}

fn pbtxt_message(t: &[String], i: &mut usize, prefix: &str, out: &mut Vec<(String, String)>) {
    while *i < t.len() && t[*i] != "}" {
        let path = format!("{prefix}{}", t[*i]);
        *i += 1;
        if t.get(*i).is_some_and(|x| x == ":") {
            *i += 1;
        }
        match t.get(*i).map(String::as_str) {
            Some("{") => pbtxt_block(t, i, &path, out),
            Some("[") if t.get(*i + 1).is_some_and(|x| x == "{") => {
                *i += 1;
                while t.get(*i).is_some_and(|x| x == "{") {
                    pbtxt_block(t, i, &path, out);
                    if t.get(*i).is_some_and(|x| x == ",") {
                        *i += 1;
                    }
                }
                assert_eq!(t.get(*i).map(String::as_str), Some("]"), "{path}");
                *i += 1;
            }
            Some("[") => {
                let end = *i + t[*i..].iter().position(|x| x == "]").expect("]");
                let items: Vec<&str> = t[*i + 1..end]
                    .iter()
                    .map(String::as_str)
                    .filter(|x| *x != ",")
                    .collect();
                out.push((path, format!("[{}]", items.join(", "))));
                *i = end + 1;
            }
            Some(v) => {
                out.push((path, v.to_string()));
                *i += 1;
            }
            None => panic!("{path} has no value"),
        }
    }
}

fn pbtxt_block(t: &[String], i: &mut usize, path: &str, out: &mut Vec<(String, String)>) {
    *i += 1; // {
    pbtxt_message(t, i, &format!("{path}."), out);
    assert_eq!(t.get(*i).map(String::as_str), Some("}"), "{path}");
    *i += 1;
}
