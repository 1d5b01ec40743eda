//! Reading ONNX files: decoding a model, its constant tensors and their float32 values.

use crate::error::{Error, Result};
use prost::Message;
use std::collections::HashMap;
use std::path::Path;
use tract_onnx::pb;

/// The error for a model path that names a folder: [`Error::InvalidFile`] saying so, and pointing to
/// `--model-repository` when the folder (or a folder in it) holds a Triton `config.pbtxt`; `None`
/// when `path` is not a folder.
pub fn folder_error(path: &Path) -> Option<Error> {
    if !path.is_dir() {
        return None;
    }
    let repository = path.join("config.pbtxt").is_file()
        || std::fs::read_dir(path)
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().join("config.pbtxt").is_file())));
    let hint = if repository {
        "a model repository, which `pipe serve --model-repository` serves"
    } else {
        "name the .onnx file, e.g. onnx/model.onnx"
    };
    Some(Error::invalid(
        path,
        format!("is a folder, not an ONNX model file ({hint})"),
    ))
}

/// Reads and decodes an ONNX model file.
///
/// # Errors
/// [`Error::Io`] when unreadable, [`Error::InvalidFile`] when it is a folder ([`folder_error`]) or
/// not an ONNX protobuf.
pub fn read_onnx(path: &Path) -> Result<pb::ModelProto> {
    if let Some(e) = folder_error(path) {
        return Err(e);
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    pb::ModelProto::decode(bytes.as_slice()).map_err(|e| {
        Error::invalid(
            path,
            format!("not a valid ONNX model (protobuf decode failed: {e})"),
        )
    })
}

/// The graph of `model`.
///
/// # Errors
/// [`Error::InvalidFile`] naming `path` when the model has none.
pub fn graph<'m>(path: &Path, model: &'m pb::ModelProto) -> Result<&'m pb::GraphProto> {
    model
        .graph
        .as_ref()
        .ok_or_else(|| Error::invalid(path, "ONNX model has no graph"))
}

/// The constant tensors of a graph by value name: its initializers and the `value` of its
/// `Constant` nodes (a `Constant` node's output wins over an initializer of the same name).
pub fn constant_tensors(graph: &pb::GraphProto) -> HashMap<&str, &pb::TensorProto> {
    let mut consts: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for node in graph.node.iter().filter(|n| n.op_type == "Constant") {
        let value = node
            .attribute
            .iter()
            .find(|a| a.name == "value")
            .and_then(|a| a.t.as_ref());
        if let (Some(out), Some(t)) = (node.output.first(), value) {
            consts.insert(out.as_str(), t);
        }
    }
    consts
}

/// Reads the values of an ONNX float32 tensor (`raw_data` little-endian or `float_data`), row-major.
///
/// # Errors
/// [`Error::InvalidFile`] naming `path` when the tensor is not float32, uses external data, or holds
/// a number of values other than its dimensions need.
pub fn tensor_f32(path: &Path, t: &pb::TensorProto) -> Result<Vec<f32>> {
    if t.data_type != pb::tensor_proto::DataType::Float as i32 {
        return Err(Error::invalid(
            path,
            format!(
                "tensor {:?} is not float32 (data_type {})",
                t.name, t.data_type
            ),
        ));
    }
    if !t.external_data.is_empty() {
        return Err(Error::invalid(
            path,
            format!(
                "tensor {:?} uses external data, which is not supported",
                t.name
            ),
        ));
    }
    let n: usize = t.dims.iter().map(|&d| d.max(0) as usize).product();
    let data: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if data.len() != n {
        return Err(Error::invalid(
            path,
            format!(
                "tensor {:?} holds {} values, its dims {:?} need {n}",
                t.name,
                data.len(),
                t.dims
            ),
        ));
    }
    Ok(data)
}
