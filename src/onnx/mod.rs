//! ONNX protobuf code in one place: builders of nodes, attributes, tensors and value infos
//! ([`build`]), reading and decoding model files ([`read`]), and [`ModelInfo`], what pipe needs to
//! know about an exported model. Uses tract's prost types (`tract_onnx::pb`); knows nothing of pipe's
//! network (that is `crate::export`), only of the model contract ([`crate::contract`]).

pub mod build;
pub mod info;
pub mod read;

pub use info::ModelInfo;
pub use read::read_onnx;
