//! Native ONNX export: the [`Arch`] description plus weights become an ONNX `ModelProto` (built with
//! tract's prost types), with the Keras "caffe" preprocessing inside the graph.
//!
//! Graph (opset 17 by default):
//! ```text
//! images f32 [N,S,S,3] RGB 0..255
//!   → Transpose(0,3,1,2)          NHWC → NCHW
//!   → Gather(axis 1, [2,1,0])     RGB → BGR
//!   → Sub(ImageNet BGR means)     caffe preprocessing, no scaling
//!   → 13 × (Conv 3x3 pad 1 → Relu), 5 × MaxPool 2x2/2     VGG16 base
//!   → Flatten(axis 1)             [N, 512·(S/32)²]
//!   → Gemm(transB) → Relu → Gemm  dense head (Dropout is absent: inference graph)
//!   → Softmax(axis 1)             probabilities f32 [N, classes]   (or logits with `Output::Logits`)
//! ```

use crate::arch::{Arch, BaseLayer, HeadLayer, IMAGENET_BGR_MEANS};
use crate::error::{Error, Result};
use crate::weights::NamedTensor;
use prost::Message;
use std::collections::HashMap;
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;

/// Name of the graph input: decoded RGB pixels, float32 `[N, S, S, 3]`, values 0..255.
pub const INPUT_NAME: &str = "images";
/// Name of the graph output when it carries softmax probabilities, float32 `[N, classes]`.
pub const PROBABILITIES: &str = "probabilities";
/// Name of the graph output when it carries logits, float32 `[N, classes]`.
pub const LOGITS: &str = "logits";
/// Symbolic batch dimension of input and output.
pub const BATCH_DIM: &str = "N";
/// Default ONNX opset.
pub const DEFAULT_OPSET: i64 = 17;

/// What the exported graph outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Softmax probabilities, output named [`PROBABILITIES`].
    Probabilities,
    /// Pre-softmax scores, output named [`LOGITS`].
    Logits,
}

/// Options of [`build_model`].
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// ONNX opset of the default domain (13..=21 supported by the ops used).
    pub opset: i64,
    /// Output kind.
    pub output: Output,
    /// Extra `metadata_props` (class names, fingerprint, run id, ...), written in this order.
    pub metadata: Vec<(String, String)>,
    /// Store the conv and dense weights as float16 (half the file size); a `Cast` node turns each back
    /// into float32, so the computation stays float32.
    pub fp16_weights: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            opset: DEFAULT_OPSET,
            output: Output::Probabilities,
            metadata: Vec::new(),
            fp16_weights: false,
        }
    }
}

/// IR version matching an opset (ONNX's versioning table: opset 13-14 → IR 7, 15-18 → IR 8,
/// 19-20 → IR 9, 21 → IR 10).
fn ir_version_for(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn node(
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

fn f32_tensor(name: &str, shape: &[usize], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn f16_tensor(name: &str, shape: &[usize], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float16 as i32,
        raw_data: data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<i64>], doc: &str) -> pb::ValueInfoProto {
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

/// Builds the inference graph of `arch` with the given base (in [`Arch::base_params`] order) and head
/// (in [`Arch::head_params`] order) weights.
///
/// # Errors
/// [`Error::Usage`] when a tensor is missing or has the wrong shape, or the opset is outside 13..=21.
pub fn build_model(
    arch: &Arch,
    base: &[NamedTensor],
    head: &[NamedTensor],
    opts: &ExportOptions,
) -> Result<pb::ModelProto> {
    if !(13..=21).contains(&opts.opset) {
        return Err(Error::Usage(format!(
            "opset {} is not supported (13..=21)",
            opts.opset
        )));
    }
    let mut params: HashMap<&str, &NamedTensor> = HashMap::new();
    for t in base.iter().chain(head) {
        params.insert(t.name.as_str(), t);
    }
    let mut initializer = Vec::new();
    let mut casts = Vec::new();
    for (name, shape) in arch.base_params().into_iter().chain(arch.head_params()) {
        let t = params
            .get(name.as_str())
            .ok_or_else(|| Error::Usage(format!("export: weight {name} is missing")))?;
        if t.shape != shape {
            return Err(Error::Usage(format!(
                "export: weight {name} has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        if opts.fp16_weights {
            let half = format!("{name}.float16");
            initializer.push(f16_tensor(&half, &shape, &t.data));
            casts.push(node(
                "Cast",
                &format!("weights/{name}/to_float32"),
                &[&half],
                &name,
                vec![attr_int("to", DataType::Float as i64)],
            ));
        } else {
            initializer.push(f32_tensor(&name, &shape, &t.data));
        }
    }
    initializer.push(f32_tensor(
        "preprocess.imagenet_bgr_mean",
        &[1, 3, 1, 1],
        &IMAGENET_BGR_MEANS,
    ));
    initializer.push(pb::TensorProto {
        name: "preprocess.bgr_order".into(),
        dims: vec![3],
        data_type: DataType::Int64 as i32,
        int64_data: vec![2, 1, 0],
        ..Default::default()
    });

    let mut nodes = casts;
    nodes.extend([
        node(
            "Transpose",
            "preprocess/nhwc_to_nchw",
            &[INPUT_NAME],
            "preprocess/nchw_rgb",
            vec![attr_ints("perm", &[0, 3, 1, 2])],
        ),
        node(
            "Gather",
            "preprocess/rgb_to_bgr",
            &["preprocess/nchw_rgb", "preprocess.bgr_order"],
            "preprocess/nchw_bgr",
            vec![attr_int("axis", 1)],
        ),
        node(
            "Sub",
            "preprocess/subtract_imagenet_mean",
            &["preprocess/nchw_bgr", "preprocess.imagenet_bgr_mean"],
            "preprocess/out",
            vec![],
        ),
    ]);
    let mut x = "preprocess/out".to_string();
    for layer in &arch.base {
        match layer {
            BaseLayer::Conv { name, .. } => {
                let (w, b) = (format!("base.{name}.weight"), format!("base.{name}.bias"));
                let conv_out = format!("base/{name}/conv");
                nodes.push(node(
                    "Conv",
                    &format!("base/{name}"),
                    &[&x, &w, &b],
                    &conv_out,
                    vec![
                        attr_ints("kernel_shape", &[3, 3]),
                        attr_ints("pads", &[1, 1, 1, 1]),
                        attr_ints("strides", &[1, 1]),
                    ],
                ));
                let out = format!("base/{name}/relu");
                nodes.push(node(
                    "Relu",
                    &format!("base/{name}_relu"),
                    &[&conv_out],
                    &out,
                    vec![],
                ));
                x = out;
            }
            BaseLayer::MaxPool { name } => {
                let out = format!("base/{name}");
                nodes.push(node(
                    "MaxPool",
                    &out,
                    &[&x],
                    &out,
                    vec![
                        attr_ints("kernel_shape", &[2, 2]),
                        attr_ints("strides", &[2, 2]),
                    ],
                ));
                x = out;
            }
        }
    }
    nodes.push(node(
        "Flatten",
        "head/flatten",
        &[&x],
        "head/flatten",
        vec![attr_int("axis", 1)],
    ));
    x = "head/flatten".into();
    let last_linear = arch
        .head
        .iter()
        .rposition(|l| matches!(l, HeadLayer::Linear { .. }));
    for (i, layer) in arch.head.iter().enumerate() {
        match layer {
            HeadLayer::Linear { name, .. } => {
                let out = if Some(i) == last_linear {
                    LOGITS.to_string()
                } else {
                    format!("head/{name}")
                };
                let (w, b) = (format!("head.{name}.weight"), format!("head.{name}.bias"));
                nodes.push(node(
                    "Gemm",
                    &format!("head/{name}"),
                    &[&x, &w, &b],
                    &out,
                    vec![attr_int("transB", 1)],
                ));
                x = out;
            }
            HeadLayer::Relu => {
                let out = format!("{x}_relu");
                nodes.push(node("Relu", &out, &[&x], &out, vec![]));
                x = out;
            }
            HeadLayer::Dropout { .. } => {} // identity at inference
        }
    }
    let output_name = match opts.output {
        Output::Probabilities => {
            nodes.push(node(
                "Softmax",
                "head/softmax",
                &[&x],
                PROBABILITIES,
                vec![attr_int("axis", 1)],
            ));
            PROBABILITIES
        }
        Output::Logits => LOGITS,
    };
    let s = arch.input_size as i64;
    let graph = pb::GraphProto {
        name: "pipe_vgg16_transfer".into(),
        node: nodes,
        initializer,
        doc_string: "ImageNet VGG16 conv base (frozen) + dense head fine-tuned by pipe; caffe preprocessing inside".into(),
        input: vec![value_info(INPUT_NAME, &[None, Some(s), Some(s), Some(3)], "RGB pixels, NHWC, float32 in 0..255")],
        output: vec![value_info(
            output_name,
            &[None, Some(arch.num_classes as i64)],
            if output_name == PROBABILITIES { "softmax probabilities per class" } else { "logits per class" },
        )],
        ..Default::default()
    };
    Ok(pb::ModelProto {
        ir_version: ir_version_for(opts.opset),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: opts.opset,
        }],
        producer_name: "pipe".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "Exported by pipe (Rust, native ONNX writer)".into(),
        graph: Some(graph),
        metadata_props: opts
            .metadata
            .iter()
            .map(|(k, v)| pb::StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    })
}

/// Encodes `model` and writes it atomically to `path` (temporary file in the same folder, then rename),
/// creating the parent folder if needed.
///
/// # Errors
/// [`Error::Io`] naming `path`.
pub fn write_model(path: &Path, model: &pb::ModelProto) -> Result<()> {
    write_model_checked(path, model, |_| Ok(()))
}

/// As [`write_model`], calling `check` on the complete temporary file before it is renamed into
/// place; nothing is left at `path` when `check` fails.
///
/// # Errors
/// [`Error::Io`] naming `path`, or `check`'s error.
pub fn write_model_checked(
    path: &Path,
    model: &pb::ModelProto,
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let bytes = model.encode_to_vec();
    crate::util::write_atomic_checked(path, |w| w.write_all(&bytes), check)
}

/// Summary of an export.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The ONNX file written.
    pub path: std::path::PathBuf,
    /// Size of the file, bytes.
    pub bytes: u64,
    /// The run exported.
    pub run: String,
    /// Verification against tch's test-set probabilities, when it ran.
    pub verification: Option<Verification>,
}

/// Outcome of checking an exported model against the probabilities tch computed for the same images.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Images compared.
    pub images: usize,
    /// Largest |Δprobability| over all images and classes.
    pub max_abs_diff: f32,
    /// Engine that ran the exported model.
    pub backend: &'static str,
    /// The tolerance it was checked against.
    pub tolerance: f32,
}

/// Largest |Δprobability| an export may show against tch before it is refused.
pub const VERIFY_TOLERANCE: f32 = 1e-4;
/// Largest |Δprobability| of an export with float16 weights (`--fp16`): rounding every weight to 11
/// significant bits moved probabilities by up to 4.6e-3 on a seed-recipe run, so 1e-2 leaves margin
/// while still catching a wrong preprocessing or weight (those move them by 0.1 or more). With it, a
/// label may differ from tch's only on a near-tie: when tch's two most probable classes are within
/// this tolerance of each other.
pub const FP16_VERIFY_TOLERANCE: f32 = 1e-2;

/// Runs the model file at `model` with tract on up to `n` of the run's test images (spread evenly over
/// `predictions.json`, so every class is covered) and compares its probabilities (softmax of its
/// output for a logits export) with those tch computed at the end of training.
///
/// # Errors
/// [`Error::InvalidFile`] naming the model when an argmax differs or max |Δp| > [`VERIFY_TOLERANCE`];
/// the run's predictions or images cannot be read; tract fails.
#[cfg(feature = "tract")]
pub fn verify_against_run(
    model: &Path,
    run_dir: &Path,
    n: usize,
    kind: Output,
    tolerance: f32,
) -> Result<Verification> {
    use crate::infer::{argmax, tract_backend::TractBackend, Backend};
    use crate::run::{Predictions, PREDICTIONS_FILE};
    let preds: Predictions = crate::util::read_json(&run_dir.join(PREDICTIONS_FILE))?;
    let total = preds.items.len();
    let take = n.min(total);
    let picked: Vec<_> = (0..take)
        .map(|i| &preds.items[i * total / take.max(1)])
        .collect();
    let info = crate::infer::ModelInfo::read(model)?;
    let s = info.input_size;
    // Pixels of the picked images: files under data_root, or records of the CIFAR-10 binary release.
    let mut pixels = Vec::with_capacity(take * s * s * 3);
    let binary = picked.iter().any(|it| it.file.contains(".bin#"));
    let records = if binary {
        let classes = crate::data::cifar::read_classes(&preds.data_root)?;
        Some(crate::data::cifar::read_split(
            &preds.data_root,
            false,
            classes.len(),
        )?)
    } else {
        None
    };
    for it in &picked {
        match &records {
            Some(r) => {
                let rec = r.iter().find(|x| x.name == it.file).ok_or_else(|| {
                    Error::invalid(
                        &preds.data_root,
                        format!("record {} of predictions.json not found", it.file),
                    )
                })?;
                pixels.extend(crate::data::resize_rgb(
                    &rec.pixels,
                    crate::data::cifar::CIFAR_SIZE,
                    s,
                ));
            }
            None => pixels.extend(crate::data::load_rgb(&preds.data_root.join(&it.file), s)?),
        }
    }
    let input: Vec<f32> = pixels.iter().map(|&v| f32::from(v)).collect();
    let view =
        ndarray::ArrayView4::from_shape((take, s, s, 3), &input).map_err(|e| Error::Backend {
            backend: "tract",
            message: e.to_string(),
        })?;
    let mut backend = TractBackend::open(model, 0)?;
    let out = backend.run(view)?;
    let mut worst = 0f32;
    for (row, it) in out.rows().into_iter().zip(&picked) {
        let mut p = row.to_vec();
        if kind == Output::Logits {
            let m = p.iter().cloned().fold(f32::MIN, f32::max);
            let z: f32 = p.iter().map(|v| (v - m).exp()).sum();
            p.iter_mut().for_each(|v| *v = (*v - m).exp() / z);
        }
        let near_tie = || {
            let mut sorted = it.probabilities.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            tolerance > VERIFY_TOLERANCE && sorted.len() > 1 && sorted[0] - sorted[1] <= tolerance
        };
        if argmax(&p) != argmax(&it.probabilities) && !near_tie() {
            return Err(Error::invalid(
                model,
                format!(
                "verification failed: {} is classified {} by the exported model but {} by tch; \
                 the export does not reproduce training (preprocessing or weights differ)",
                it.file, argmax(&p), argmax(&it.probabilities)
            ),
            ));
        }
        for (a, b) in p.iter().zip(&it.probabilities) {
            worst = worst.max((a - b).abs());
        }
    }
    if worst > tolerance {
        return Err(Error::invalid(
            model,
            format!(
            "verification failed: max |Δprobability| {worst:e} against tch exceeds {tolerance:e}"
        ),
        ));
    }
    Ok(Verification {
        images: take,
        max_abs_diff: worst,
        tolerance,
        backend: "tract",
    })
}

/// Exports a training run folder (see [`crate::run`]) to `output`: base weights from the run's
/// `weights` file (its fingerprint must equal the one the run trained with), head from
/// `head.safetensors`, metadata from `config.json` and `history.json`.
///
/// # Errors
/// A missing or incomplete run, base weights that changed since training, or an unwritable `output`;
/// nothing is left at `output` on error.
/// With `verify_images > 0` (and the `tract` feature), the written model is first checked with
/// [`verify_against_run`] and only renamed into place when it passes.
pub fn export_run(
    run_dir: &Path,
    output: &Path,
    opset: i64,
    kind: Output,
    verify_images: usize,
    fp16_weights: bool,
) -> Result<ExportSummary> {
    use crate::config::TrainConfig;
    use crate::run::{EpochMetrics, CONFIG_FILE, HEAD_FILE, HISTORY_FILE};
    let config: TrainConfig = crate::util::read_json(&run_dir.join(CONFIG_FILE))?;
    let arch = Arch::vgg16_transfer(config.input_size, config.classes.len());
    let base_path = crate::run::base_weights(run_dir, &config);
    if config.unfreeze > 0 && base_path == config.weights {
        return Err(Error::invalid(
            run_dir,
            format!(
                "fine-tuned run without its {}; it did not finish (train it again or --resume it)",
                crate::run::BASE_FILE
            ),
        ));
    }
    let (base, fp) = crate::weights::load_base(&base_path, &arch, true)?;
    // A fine-tuned run carries its own base; a frozen-base run must find the weights it trained with.
    if config.unfreeze == 0 && fp != config.weights_fingerprint {
        return Err(Error::invalid(
            &config.weights,
            format!(
                "base weights fingerprint {fp} differs from the one run {} trained with ({})",
                config.name, config.weights_fingerprint
            ),
        ));
    }
    let (head, _) =
        crate::weights::load_safetensors(&run_dir.join(HEAD_FILE), &arch.head_params())?;
    let history: Vec<EpochMetrics> =
        crate::util::read_json(&run_dir.join(HISTORY_FILE)).unwrap_or_default();
    let mut metadata = vec![
        (
            "classes".to_string(),
            serde_json::to_string(&config.classes).unwrap_or_default(),
        ),
        ("input_name".into(), INPUT_NAME.into()),
        ("input_layout".into(), "NHWC".into()),
        ("input_color".into(), "RGB".into()),
        ("input_range".into(), "0..255 float32".into()),
        ("input_size".into(), config.input_size.to_string()),
        (
            "resize_filter".into(),
            "bilinear (image crate FilterType::Triangle)".into(),
        ),
        (
            "preprocessing".into(),
            format!("{} (inside the graph)", crate::run::CAFFE_PREPROCESSING),
        ),
        (
            "output".into(),
            match kind {
                Output::Probabilities => "softmax probabilities",
                Output::Logits => "logits",
            }
            .into(),
        ),
        ("weights_fingerprint".into(), fp),
        ("fine_tuned_conv_layers".into(), config.unfreeze.to_string()),
        ("run".into(), config.name.clone()),
        (
            "weights_dtype".into(),
            if fp16_weights { "float16" } else { "float32" }.into(),
        ),
        ("pipe_version".into(), env!("CARGO_PKG_VERSION").into()),
    ];
    if let Some(last) = history.last() {
        metadata.push(("test_accuracy".into(), format!("{:.4}", last.val_accuracy)));
    }
    let model = build_model(
        &arch,
        &base,
        &head,
        &ExportOptions {
            opset,
            output: kind,
            metadata,
            fp16_weights,
        },
    )?;
    #[cfg_attr(not(feature = "tract"), allow(unused_mut))]
    let mut verification = None;
    write_model_checked(output, &model, |tmp| {
        #[cfg(feature = "tract")]
        if verify_images > 0 {
            let tolerance = if fp16_weights {
                FP16_VERIFY_TOLERANCE
            } else {
                VERIFY_TOLERANCE
            };
            verification = Some(verify_against_run(
                tmp,
                run_dir,
                verify_images,
                kind,
                tolerance,
            )?);
        }
        #[cfg(not(feature = "tract"))]
        let _ = (tmp, verify_images);
        Ok(())
    })?;
    let bytes = std::fs::metadata(output)
        .map_err(|e| Error::io(output, e))?
        .len();
    Ok(ExportSummary {
        path: output.to_path_buf(),
        bytes,
        run: config.name,
        verification,
    })
}

/// Writes the Triton Inference Server files beside a model exported into `DIR/<name>/1/model.onnx`:
/// `DIR/<name>/config.pbtxt` (ONNX Runtime backend, dynamic batching up to `max_batch_size`, batch
/// dimension implicit as Triton requires with `max_batch_size > 0`) and `DIR/<name>/labels.txt` (class
/// names, one per line, referenced as the output's `label_filename`). Field names follow Triton's
/// `model_config.proto`.
///
/// # Errors
/// [`Error::Io`] when the files cannot be written.
pub fn write_triton_config(
    model_dir: &Path,
    name: &str,
    info: &crate::infer::ModelInfo,
    max_batch_size: usize,
) -> Result<()> {
    let s = info.input_size;
    let config = format!(
        r#"# Triton Inference Server model configuration, written by pipe {version}.
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{input}"
    data_type: TYPE_FP32
    format: FORMAT_NHWC
    dims: [ {s}, {s}, 3 ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 1000
}}
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
"#,
        version = env!("CARGO_PKG_VERSION"),
        input = INPUT_NAME,
        output = info.output_name,
        classes = info.classes.len(),
    );
    let labels = info.classes.join("\n") + "\n";
    crate::util::write_atomic(&model_dir.join("config.pbtxt"), |w| {
        w.write_all(config.as_bytes())
    })?;
    crate::util::write_atomic(&model_dir.join("labels.txt"), |w| {
        w.write_all(labels.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::numel;

    /// Deterministic pseudo-random weights, uniform-like in ±sqrt(6/fan_in) (He), so activations keep
    /// their scale through the 13 convs; the first conv is scaled down to bring 0..255 pixels to ~1.
    pub(crate) fn weights(arch: &Arch) -> (Vec<NamedTensor>, Vec<NamedTensor>) {
        let mk = |v: Vec<(String, Vec<usize>)>| -> Vec<NamedTensor> {
            v.into_iter()
                .enumerate()
                .map(|(k, (name, shape))| {
                    let fan_in = numel(&shape) / shape[0];
                    let mut scale = if shape.len() == 1 {
                        0.05
                    } else {
                        (6.0 / fan_in as f32).sqrt()
                    };
                    if k == 0 {
                        scale /= 50.0;
                    }
                    let data = (0..numel(&shape))
                        .map(|i| (((i * 7919 + k * 13) % 17) as f32 / 8.0 - 1.0) * scale)
                        .collect();
                    NamedTensor { name, shape, data }
                })
                .collect()
        };
        (mk(arch.base_params()), mk(arch.head_params()))
    }

    #[test]
    fn graph_has_preprocessing_base_head_and_metadata() {
        let arch = Arch::vgg16_transfer(32, 10);
        let (b, h) = weights(&arch);
        let opts = ExportOptions {
            metadata: vec![("classes".into(), "[\"a\"]".into())],
            ..Default::default()
        };
        let m = build_model(&arch, &b, &h, &opts).unwrap();
        assert_eq!(m.opset_import[0].version, 17);
        assert_eq!(m.ir_version, 8);
        let g = m.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(&ops[..3], &["Transpose", "Gather", "Sub"]);
        assert_eq!(ops.iter().filter(|o| **o == "Conv").count(), 13);
        assert_eq!(ops.iter().filter(|o| **o == "MaxPool").count(), 5);
        assert!(!ops.contains(&"Dropout"));
        assert_eq!(ops.last(), Some(&"Softmax"));
        assert_eq!(g.input[0].name, "images");
        assert_eq!(g.output[0].name, "probabilities");
        assert_eq!(m.metadata_props[0].key, "classes");
        let params: usize = g
            .initializer
            .iter()
            .filter(|t| t.data_type == 1)
            .map(|t| t.dims.iter().product::<i64>() as usize)
            .sum();
        assert_eq!(params, 14_714_688 + 133_898 + 3);
        // Names are unique (Netron and onnx.checker need this).
        let mut names: Vec<&str> = g.node.iter().map(|n| n.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), g.node.len());
    }

    /// float16 weights: half the bytes, a Cast per weight, and tract computes (almost) the same
    /// logits as the float32 graph.
    #[test]
    fn fp16_weights_halve_the_model_and_keep_its_outputs() {
        use tract_onnx::prelude::*;
        let arch = Arch::vgg16_transfer(32, 10);
        let (b, h) = weights(&arch);
        let dir = tempfile::tempdir().unwrap();
        let run = |fp16: bool| -> (u64, Vec<f32>, pb::ModelProto) {
            let opts = ExportOptions {
                fp16_weights: fp16,
                output: Output::Logits,
                ..Default::default()
            };
            let m = build_model(&arch, &b, &h, &opts).unwrap();
            let p = dir.path().join(format!("m{fp16}.onnx"));
            write_model(&p, &m).unwrap();
            let plan = tract_onnx::onnx()
                .model_for_path(&p)
                .unwrap()
                .into_optimized()
                .unwrap()
                .into_runnable()
                .unwrap();
            let x: Vec<f32> = (0..2 * 32 * 32 * 3)
                .map(|i| (i * 37 % 256) as f32)
                .collect();
            let t = tract_ndarray::Array4::from_shape_vec((2, 32, 32, 3), x).unwrap();
            let out = plan.run(tvec!(Tensor::from(t).into())).unwrap();
            let v = out[0]
                .to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect();
            (std::fs::metadata(&p).unwrap().len(), v, m)
        };
        let (full, p32, _) = run(false);
        let (half, p16, m) = run(true);
        assert!(half * 100 < full * 51, "{half} vs {full} bytes");
        let g = m.graph.as_ref().unwrap();
        // One Cast per weight and bias: 13 convs and 2 dense layers.
        assert_eq!(g.node.iter().filter(|n| n.op_type == "Cast").count(), 30);
        assert!(g
            .initializer
            .iter()
            .filter(|t| t.name.starts_with("base.") || t.name.starts_with("head."))
            .all(|t| t.data_type == DataType::Float16 as i32));
        // Logits move (weights were rounded) but only slightly relative to their spread (these random
        // weights give logits in the thousands, and the rounding errors of 15 layers add up; on real
        // runs the export verification bounds the probabilities, see tests/train_options.rs).
        assert!(
            p32.iter().zip(&p16).any(|(a, b)| a != b),
            "fp16 changed nothing?"
        );
        let spread = p32.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = p32
            .iter()
            .zip(&p16)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 5e-2 * spread, "max |Δlogit| {worst} of {spread}");
    }

    #[test]
    fn refuses_wrong_shapes_and_opsets() {
        let arch = Arch::vgg16_transfer(32, 10);
        let (b, mut h) = weights(&arch);
        let opts = ExportOptions {
            opset: 12,
            ..Default::default()
        };
        assert!(build_model(&arch, &b, &h, &opts).is_err());
        h[0].shape = vec![512, 256];
        let err = build_model(&arch, &b, &h, &ExportOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("head.dense1.weight"), "{err}");
    }

    /// Runs the exported graph with tract on random pixels and compares with a direct, naive
    /// implementation of the same network in plain Rust (caffe preprocessing, conv, pool, head, softmax).
    #[test]
    fn tract_runs_the_exported_graph_like_a_naive_reference() {
        use tract_onnx::prelude::*;
        let arch = Arch::vgg16_transfer(32, 10);
        let (b, h) = weights(&arch);
        let m = build_model(&arch, &b, &h, &ExportOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        write_model(&p, &m).unwrap();
        let n = 2;
        let pixels: Vec<u8> = (0..n * 32 * 32 * 3)
            .map(|i| ((i * 31 + 7) % 256) as u8)
            .collect();
        let input: Vec<f32> = pixels.iter().map(|&v| f32::from(v)).collect();
        let model = tract_onnx::onnx()
            .model_for_path(&p)
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let t = Tensor::from_shape(&[n, 32, 32, 3], &input).unwrap();
        let out = model.run(tvec!(t.into())).unwrap();
        let got = out[0].to_plain_array_view::<f32>().unwrap().to_owned();
        let want = crate::export::tests::naive_forward(&arch, &b, &h, &pixels, n);
        assert_eq!(got.shape(), &[n, 10]);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "tract {g} vs naive {w}");
        }
        for row in got.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-5);
        }
    }

    /// Straightforward f64 reference of the whole network for `n` NHWC RGB u8 images.
    pub(crate) fn naive_forward(
        arch: &Arch,
        base: &[NamedTensor],
        head: &[NamedTensor],
        pixels: &[u8],
        n: usize,
    ) -> Vec<f32> {
        let s = arch.input_size;
        let pre = crate::data::caffe_preprocess(pixels, n, s);
        let mut out = Vec::new();
        for img in pre.chunks_exact(3 * s * s) {
            let (mut x, mut c, mut hw): (Vec<f64>, usize, usize) =
                (img.iter().map(|&v| v as f64).collect(), 3, s);
            let mut k = 0;
            for layer in &arch.base {
                match layer {
                    BaseLayer::Conv { out_channels, .. } => {
                        let (w, bias) = (&base[2 * k].data, &base[2 * k + 1].data);
                        let mut y = vec![0f64; out_channels * hw * hw];
                        for o in 0..*out_channels {
                            for i in 0..hw {
                                for j in 0..hw {
                                    let mut acc = bias[o] as f64;
                                    for ci in 0..c {
                                        for di in 0..3 {
                                            for dj in 0..3 {
                                                let (ii, jj) = (
                                                    i as isize + di as isize - 1,
                                                    j as isize + dj as isize - 1,
                                                );
                                                if ii >= 0
                                                    && jj >= 0
                                                    && (ii as usize) < hw
                                                    && (jj as usize) < hw
                                                {
                                                    acc += w[((o * c + ci) * 3 + di) * 3 + dj]
                                                        as f64
                                                        * x[(ci * hw + ii as usize) * hw
                                                            + jj as usize];
                                                }
                                            }
                                        }
                                    }
                                    y[(o * hw + i) * hw + j] = acc.max(0.0);
                                }
                            }
                        }
                        x = y;
                        c = *out_channels;
                        k += 1;
                    }
                    BaseLayer::MaxPool { .. } => {
                        let h2 = hw / 2;
                        let mut y = vec![0f64; c * h2 * h2];
                        for ci in 0..c {
                            for i in 0..h2 {
                                for j in 0..h2 {
                                    let v = [(0, 0), (0, 1), (1, 0), (1, 1)]
                                        .iter()
                                        .map(|(a, b2)| x[(ci * hw + 2 * i + a) * hw + 2 * j + b2])
                                        .fold(f64::MIN, f64::max);
                                    y[(ci * h2 + i) * h2 + j] = v;
                                }
                            }
                        }
                        x = y;
                        hw = h2;
                    }
                }
            }
            let mut li = 0;
            for layer in &arch.head {
                match layer {
                    HeadLayer::Linear {
                        in_features,
                        out_features,
                        ..
                    } => {
                        let (w, bias) = (&head[2 * li].data, &head[2 * li + 1].data);
                        x = (0..*out_features)
                            .map(|o| {
                                bias[o] as f64
                                    + (0..*in_features)
                                        .map(|i| w[o * in_features + i] as f64 * x[i])
                                        .sum::<f64>()
                            })
                            .collect();
                        li += 1;
                    }
                    HeadLayer::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
                    HeadLayer::Dropout { .. } => {}
                }
            }
            let m = x.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = x.iter().map(|v| (v - m).exp()).sum();
            out.extend(x.iter().map(|v| ((v - m).exp() / z) as f32));
        }
        out
    }
}
