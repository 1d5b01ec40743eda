//! Weights: import of the ImageNet VGG16 conv base from an ONNX file (read with [`crate::onnx`]),
//! safetensors I/O and the fingerprint that identifies the base weights.
//!
//! Tensors are plain `f32` buffers with a shape ([`NamedTensor`]), so that export and inference never
//! need libtorch.

use crate::arch::{numel, Arch, VGG16_IMAGENET_FINGERPRINT};
use crate::error::{Error, Result};
use crate::onnx::{self, read_onnx};
use crate::util::write_atomic;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use tract_onnx::pb;

/// A named `f32` tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Parameter name, e.g. `base.block1_conv1.weight`.
    pub name: String,
    /// Shape, e.g. `[64, 3, 3, 3]` (OIHW) for a conv weight.
    pub shape: Vec<usize>,
    /// `numel(shape)` values, row-major.
    pub data: Vec<f32>,
}

/// Safetensors metadata key holding the base-weights fingerprint.
pub const FINGERPRINT_KEY: &str = "fingerprint";

/// SHA-256 (lower-case hex) over the tensors' values as little-endian `f32`, in the given order.
/// For the VGG16 base in [`Arch::base_params`] order this is [`VGG16_IMAGENET_FINGERPRINT`].
pub fn fingerprint(tensors: &[NamedTensor]) -> String {
    let mut h = Sha256::new();
    for t in tensors {
        for v in &t.data {
            h.update(v.to_le_bytes());
        }
    }
    hex(&h.finalize())
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of the base weights `tensors` read from `path`.
///
/// # Errors
/// [`Error::Fingerprint`] when it is not [`VGG16_IMAGENET_FINGERPRINT`] and `allow_unverified` is false.
fn checked_fingerprint(
    path: &Path,
    tensors: &[NamedTensor],
    allow_unverified: bool,
) -> Result<String> {
    let fp = fingerprint(tensors);
    if fp != VGG16_IMAGENET_FINGERPRINT && !allow_unverified {
        return Err(Error::Fingerprint {
            path: path.to_path_buf(),
            expected: VGG16_IMAGENET_FINGERPRINT.into(),
            actual: fp,
        });
    }
    Ok(fp)
}

/// Imports the conv-base weights from an ONNX model whose first 13 `Conv` nodes (graph order) are the
/// VGG16 convolutions: input 1 is the OIHW float32 weight, input 2 the bias, each an initializer or a
/// `Constant` node. Shapes are checked against `arch`; the fingerprint must equal
/// [`VGG16_IMAGENET_FINGERPRINT`] unless `allow_unverified`.
///
/// Returns the tensors named as in [`Arch::base_params`] and their fingerprint.
///
/// # Errors
/// [`Error::InvalidFile`] for a wrong Conv count, a missing tensor or a shape mismatch;
/// [`Error::Fingerprint`] when the values are not the expected ImageNet weights.
pub fn import_base_from_onnx(
    path: &Path,
    arch: &Arch,
    allow_unverified: bool,
) -> Result<(Vec<NamedTensor>, String)> {
    let model = read_onnx(path)?;
    let graph = onnx::read::graph(path, &model)?;
    let consts = onnx::read::constant_tensors(graph);
    let convs: Vec<&pb::NodeProto> = graph.node.iter().filter(|n| n.op_type == "Conv").collect();
    let expected = arch.base_params();
    let needed = expected.len() / 2;
    if convs.len() < needed {
        return Err(Error::invalid(
            path,
            format!(
                "has {} Conv nodes, VGG16's base needs {needed}",
                convs.len()
            ),
        ));
    }
    let mut tensors = Vec::with_capacity(expected.len());
    for (i, node) in convs.iter().take(needed).enumerate() {
        for (slot, (name, shape)) in [1usize, 2].iter().zip(&expected[2 * i..2 * i + 2]) {
            let input = node.input.get(*slot).ok_or_else(|| {
                Error::invalid(
                    path,
                    format!("Conv node {i} ({:?}) has no input {slot}", node.name),
                )
            })?;
            let t = consts.get(input.as_str()).ok_or_else(|| {
                Error::invalid(
                    path,
                    format!(
                        "Conv node {i} ({:?}): input {input:?} is not a constant tensor",
                        node.name
                    ),
                )
            })?;
            let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
            if &dims != shape {
                return Err(Error::invalid(
                    path,
                    format!("Conv node {i} ({:?}): {input:?} has shape {dims:?}, VGG16 {name} needs {shape:?}", node.name),
                ));
            }
            tensors.push(NamedTensor {
                name: name.clone(),
                shape: dims,
                data: onnx::read::tensor_f32(path, t)?,
            });
        }
    }
    let fp = checked_fingerprint(path, &tensors, allow_unverified)?;
    Ok((tensors, fp))
}

/// Writes tensors as a safetensors file (`F32`), atomically, with string metadata.
///
/// # Errors
/// [`Error::Io`] naming `path` when it cannot be written.
pub fn save_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, &[usize])> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.as_slice(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, b, s)| TensorView::new(Dtype::F32, s.to_vec(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(path, format!("cannot build safetensors: {e}")))?;
    let buf = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::invalid(path, format!("cannot serialise safetensors: {e}")))?;
    write_atomic(path, |w| w.write_all(&buf))
}

/// Reads a safetensors file holding exactly the `expected` `F32` tensors (names and shapes), returned in
/// `expected` order, with the file's metadata.
///
/// # Errors
/// [`Error::Io`] when unreadable; [`Error::InvalidFile`] when it is not safetensors, or a tensor is
/// missing, has another dtype or shape.
pub fn load_safetensors(
    path: &Path,
    expected: &[(String, Vec<usize>)],
) -> Result<(Vec<NamedTensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::invalid(path, format!("not a valid safetensors file: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::invalid(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = Vec::with_capacity(expected.len());
    for (name, shape) in expected {
        let view = st
            .tensor(name)
            .map_err(|_| Error::invalid(path, format!("tensor {name:?} is missing")))?;
        if view.dtype() != Dtype::F32 {
            return Err(Error::invalid(
                path,
                format!("tensor {name:?} has dtype {:?}, expected F32", view.dtype()),
            ));
        }
        if view.shape() != shape.as_slice() {
            return Err(Error::invalid(
                path,
                format!(
                    "tensor {name:?} has shape {:?}, expected {shape:?}",
                    view.shape()
                ),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        debug_assert_eq!(data.len(), numel(shape));
        out.push(NamedTensor {
            name: name.clone(),
            shape: shape.clone(),
            data,
        });
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Loads the conv-base weights written by `pipe weights import`, recomputing the fingerprint.
/// Returns the tensors in [`Arch::base_params`] order and the fingerprint.
///
/// # Errors
/// As [`load_safetensors`]; [`Error::Fingerprint`] when the values are not the ImageNet VGG16 weights
/// and `allow_unverified` is false. A missing file gets a message saying how `make setup` makes it.
pub fn load_base(
    path: &Path,
    arch: &Arch,
    allow_unverified: bool,
) -> Result<(Vec<NamedTensor>, String)> {
    if !path.exists() {
        return Err(Error::invalid(
            path,
            "weights file not found; run `make setup` (downloads the ImageNet VGG16 weights and runs `pipe weights import`)",
        ));
    }
    let (tensors, _) = load_safetensors(path, &arch.base_params())?;
    let fp = checked_fingerprint(path, &tensors, allow_unverified)?;
    Ok((tensors, fp))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prost::Message;

    /// A small ONNX model with 13 Conv nodes carrying VGG16-shaped weights filled with `fill`
    /// (plus a Constant-node bias for the first conv), for import tests.
    pub(crate) fn synthetic_vgg_onnx(arch: &Arch, fill: f32) -> pb::ModelProto {
        let mut graph = pb::GraphProto {
            name: "g".into(),
            ..Default::default()
        };
        let mut x = "x".to_string();
        for (i, pair) in arch.base_params().chunks(2).enumerate() {
            let mk = |name: &str, shape: &[usize], v: f32| pb::TensorProto {
                name: name.into(),
                dims: shape.iter().map(|&d| d as i64).collect(),
                data_type: 1,
                raw_data: std::iter::repeat_n(v, numel(shape))
                    .flat_map(|f| f.to_le_bytes())
                    .collect(),
                ..Default::default()
            };
            let (w, b) = (format!("w{i}"), format!("b{i}"));
            graph.initializer.push(mk(&w, &pair[0].1, fill + i as f32));
            if i == 0 {
                let t = mk("unused", &pair[1].1, -1.0);
                graph.node.push(pb::NodeProto {
                    op_type: "Constant".into(),
                    output: vec![b.clone()],
                    attribute: vec![pb::AttributeProto {
                        name: "value".into(),
                        r#type: 4,
                        t: Some(t),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            } else {
                graph.initializer.push(mk(&b, &pair[1].1, 0.5));
            }
            let y = format!("y{i}");
            graph.node.push(pb::NodeProto {
                op_type: "Conv".into(),
                input: vec![x, w, b],
                output: vec![y.clone()],
                ..Default::default()
            });
            x = y;
        }
        pb::ModelProto {
            ir_version: 8,
            graph: Some(graph),
            ..Default::default()
        }
    }

    #[test]
    fn fingerprint_is_sha256_of_le_f32_in_order() {
        let t = |v: Vec<f32>| NamedTensor {
            name: "t".into(),
            shape: vec![v.len()],
            data: v,
        };
        // sha256 of the 8 bytes 00 00 80 3f 00 00 00 40 (1.0f32, 2.0f32 little-endian), computed independently.
        let mut h = Sha256::new();
        h.update([0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40]);
        assert_eq!(
            fingerprint(&[t(vec![1.0]), t(vec![2.0])]),
            hex(&h.finalize())
        );
        assert_ne!(
            fingerprint(&[t(vec![2.0]), t(vec![1.0])]),
            fingerprint(&[t(vec![1.0]), t(vec![2.0])])
        );
    }

    #[test]
    fn import_maps_conv_nodes_in_order_and_refuses_unknown_fingerprint() {
        let arch = Arch::vgg16_transfer(32, 10);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fake.onnx");
        std::fs::write(&p, synthetic_vgg_onnx(&arch, 0.25).encode_to_vec()).unwrap();
        let err = import_base_from_onnx(&p, &arch, false).unwrap_err();
        assert!(matches!(err, Error::Fingerprint { .. }), "{err}");
        assert!(
            err.to_string().contains("fake.onnx") && err.to_string().contains("--allow-unverified")
        );
        let (ts, fp) = import_base_from_onnx(&p, &arch, true).unwrap();
        assert_eq!(ts.len(), 26);
        assert_eq!(ts[0].name, "base.block1_conv1.weight");
        assert_eq!(ts[0].shape, vec![64, 3, 3, 3]);
        assert!(ts[0].data.iter().all(|&v| v == 0.25));
        assert!(
            ts[1].data.iter().all(|&v| v == -1.0),
            "bias 0 comes from the Constant node"
        );
        assert!(ts[24].data.iter().all(|&v| v == 12.25), "13th conv weight");
        assert_eq!(fp, fingerprint(&ts));
    }

    #[test]
    fn import_refuses_wrong_shapes_and_non_onnx() {
        let arch = Arch::vgg16_transfer(32, 10);
        let dir = tempfile::tempdir().unwrap();
        let mut m = synthetic_vgg_onnx(&arch, 0.0);
        let g = m.graph.as_mut().unwrap();
        let w = g.initializer.iter_mut().find(|t| t.name == "w3").unwrap();
        w.dims = vec![128, 64, 3, 3, 1];
        let p = dir.path().join("bad.onnx");
        std::fs::write(&p, m.encode_to_vec()).unwrap();
        let err = import_base_from_onnx(&p, &arch, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.onnx") && err.contains("shape"), "{err}");
        let q = dir.path().join("text.onnx");
        std::fs::write(&q, "definitely not protobuf \u{1}\u{2}").unwrap();
        assert!(import_base_from_onnx(&q, &arch, true).is_err());
    }

    #[test]
    fn safetensors_round_trip_checks_names_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        let ts = vec![
            NamedTensor {
                name: "a".into(),
                shape: vec![2, 3],
                data: (0..6).map(|v| v as f32 * 0.5).collect(),
            },
            NamedTensor {
                name: "b".into(),
                shape: vec![1],
                data: vec![-3.0],
            },
        ];
        save_safetensors(
            &p,
            &ts,
            HashMap::from([(FINGERPRINT_KEY.to_string(), "x".to_string())]),
        )
        .unwrap();
        let spec = vec![("a".to_string(), vec![2, 3]), ("b".to_string(), vec![1])];
        let (back, meta) = load_safetensors(&p, &spec).unwrap();
        assert_eq!(back, ts);
        assert_eq!(meta.get(FINGERPRINT_KEY).map(String::as_str), Some("x"));
        let err = load_safetensors(&p, &[("a".to_string(), vec![3, 2])])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("w.safetensors") && err.contains("shape [2, 3]"),
            "{err}"
        );
        let err = load_safetensors(&p, &[("c".to_string(), vec![1])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"c\" is missing"), "{err}");
    }

    #[test]
    fn load_base_refuses_wrong_fingerprint_and_explains_missing_file() {
        let arch = Arch::vgg16_transfer(32, 10);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.safetensors");
        let err = load_base(&missing, &arch, false).unwrap_err().to_string();
        assert!(err.contains("make setup"), "{err}");
        let ts: Vec<NamedTensor> = arch
            .base_params()
            .into_iter()
            .map(|(name, shape)| NamedTensor {
                data: vec![0.1; numel(&shape)],
                name,
                shape,
            })
            .collect();
        let p = dir.path().join("base.safetensors");
        save_safetensors(&p, &ts, HashMap::new()).unwrap();
        assert!(matches!(
            load_base(&p, &arch, false),
            Err(Error::Fingerprint { .. })
        ));
        assert_eq!(load_base(&p, &arch, true).unwrap().1, fingerprint(&ts));
    }
}
