//! Builders of ONNX protobuf messages (tract's prost types): nodes, attributes, tensors, value infos.
//! One small function per message kind, like tract's `pb_helpers.rs`; the graph itself is assembled
//! in `crate::export::graph`.

use crate::contract::BATCH_DIM;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;

/// IR version matching an opset (ONNX's versioning table: opset 13-14 → IR 7, 15-18 → IR 8,
/// 19-20 → IR 9, 21 → IR 10).
pub fn ir_version_for(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// A model of `graph` that imports the default ONNX domain at `opset`, with the IR version that
/// opset needs ([`ir_version_for`]); other fields (producer, metadata) are left empty.
pub fn model(opset: i64, graph: pb::GraphProto) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: ir_version_for(opset),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// An `INTS` attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// An `INT` attribute.
pub fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

/// A `STRING` attribute.
pub fn attr_string(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A node of the default domain with one output.
pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

/// A tensor of `shape` whose `raw_data` holds the given little-endian bytes.
fn raw_tensor(name: &str, shape: &[usize], data_type: DataType, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        raw_data: raw,
        ..Default::default()
    }
}

/// A float32 tensor (`raw_data`, little-endian), `data` row-major of `shape`.
pub fn f32_tensor(name: &str, shape: &[usize], data: &[f32]) -> pb::TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name, shape, DataType::Float, raw)
}

/// A float16 tensor (`raw_data`, little-endian) holding `data` rounded to the nearest float16.
pub fn f16_tensor(name: &str, shape: &[usize], data: &[f32]) -> pb::TensorProto {
    let raw = data
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    raw_tensor(name, shape, DataType::Float16, raw)
}

/// An int8 tensor (`raw_data`), `data` row-major of `shape` (the quantized weights of an int8 export).
pub fn i8_tensor(name: &str, shape: &[usize], data: &[i8]) -> pb::TensorProto {
    let raw = data.iter().map(|&v| v as u8).collect();
    raw_tensor(name, shape, DataType::Int8, raw)
}

/// A uint8 tensor (`raw_data`), `data` row-major of `shape` (`[]` for a scalar): the zero points of
/// uint8 activations.
pub fn u8_tensor(name: &str, shape: &[usize], data: &[u8]) -> pb::TensorProto {
    raw_tensor(name, shape, DataType::Uint8, data.to_vec())
}

/// An int32 tensor (`raw_data`, little-endian), `data` row-major of `shape` (quantized biases).
pub fn i32_tensor(name: &str, shape: &[usize], data: &[i32]) -> pb::TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name, shape, DataType::Int32, raw)
}

/// A one-dimensional int64 tensor (`int64_data`).
pub fn i64_tensor(name: &str, data: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![data.len() as i64],
        data_type: DataType::Int64 as i32,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

/// A float32 graph input or output of dimensions `dims` (`None` = the symbolic batch dimension
/// [`BATCH_DIM`]), with a doc string.
pub fn value_info(name: &str, dims: &[Option<i64>], doc: &str) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v),
                None => Value::DimParam(BATCH_DIM.into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        doc_string: doc.into(),
    }
}

/// `metadata_props` entries from `(key, value)` pairs, in order.
pub fn metadata_props(pairs: &[(String, String)]) -> Vec<pb::StringStringEntryProto> {
    pairs
        .iter()
        .map(|(k, v)| pb::StringStringEntryProto {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}
