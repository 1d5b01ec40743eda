//! [`ModelInfo`]: what pipe needs to know about an exported model, read from its ONNX file and checked
//! against [`crate::contract`].

use super::read::{graph, read_onnx};
use crate::contract::{self, ModelMetadata, Output, INPUT_NAME};
use crate::data::{ImageSpec, ResizePolicy};
use crate::error::{Error, Result};
use std::path::Path;
use tract_onnx::pb;

/// What pipe needs to know about an exported model, read from its ONNX file.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Height and width of the input images, in pixels.
    pub input_size: usize,
    /// How image files are decoded for the model: side `input_size`, the resize policy and filter of
    /// its metadata ([`ModelMetadata::image_spec_from_props`]).
    pub image: ImageSpec,
    /// Class names, index = output column. Falls back to `"0"`, `"1"`, ... when the metadata has none.
    pub classes: Vec<String>,
    /// Whether [`ModelInfo::classes`] came from the model's metadata.
    pub classes_from_metadata: bool,
    /// Name of the (single) output.
    pub output_name: String,
    /// The model's `metadata_props`, in file order.
    pub metadata: Vec<(String, String)>,
    /// ONNX opset of the default domain.
    pub opset: i64,
    /// Number of parameters (elements of all initializers).
    pub parameters: usize,
}

/// The name of an ONNX `TensorProto.DataType` (`float32`, `uint8`, ...; `type <n>` for the rest).
fn dtype_name(elem_type: i32) -> String {
    match elem_type {
        1 => "float32".into(),
        2 => "uint8".into(),
        3 => "int8".into(),
        6 => "int32".into(),
        7 => "int64".into(),
        9 => "bool".into(),
        10 => "float16".into(),
        11 => "float64".into(),
        16 => "bfloat16".into(),
        n => format!("type {n}"),
    }
}

/// `name: float32 [N, 224, 224, 3]`: a graph input or output as [`outline`] lists it (a symbolic
/// dimension by its name, an unknown one as `?`).
fn value_line(vi: &pb::ValueInfoProto) -> String {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    let kind = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => {
            let dims = t.shape.as_ref().map_or_else(
                || "(no shape)".to_string(),
                |s| {
                    let dims: Vec<String> = s
                        .dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(Value::DimValue(v)) => v.to_string(),
                            Some(Value::DimParam(p)) if !p.is_empty() => p.clone(),
                            _ => "?".into(),
                        })
                        .collect();
                    format!("[{}]", dims.join(", "))
                },
            );
            format!("{} {dims}", dtype_name(t.elem_type))
        }
        _ => "not a tensor".into(),
    };
    format!("{}: {kind}", vi.name)
}

/// What any ONNX file holds, for `pipe inspect` of a model pipe did not export: producer, opset,
/// the graph's inputs (initializers left out) and outputs with their types and shapes, and its node
/// and parameter counts. One line per item, each ending in a newline.
///
/// # Errors
/// As [`read_onnx`]: the file is missing, unreadable or not ONNX.
pub fn outline(path: &Path) -> Result<String> {
    let model = read_onnx(path)?;
    let graph = graph(path, &model)?;
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut out = format!(
        "model: {}
",
        path.display()
    );
    if !model.producer_name.is_empty() {
        out += &format!(
            "producer: {} {}
",
            model.producer_name, model.producer_version
        );
    }
    let opsets: Vec<String> = model
        .opset_import
        .iter()
        .map(|o| match o.domain.as_str() {
            "" | "ai.onnx" => format!("{}", o.version),
            d => format!("{d} {}", o.version),
        })
        .collect();
    out += &format!(
        "opset: {}
",
        opsets.join(", ")
    );
    for input in graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
    {
        out += &format!(
            "input {}
",
            value_line(input)
        );
    }
    for output in &graph.output {
        out += &format!(
            "output {}
",
            value_line(output)
        );
    }
    let parameters: i64 = graph
        .initializer
        .iter()
        .map(|t| t.dims.iter().product::<i64>().max(0))
        .sum();
    out += &format!(
        "graph: {} nodes, {parameters} parameters
",
        graph.node.len()
    );
    Ok(out)
}

/// The error for a model that is valid ONNX but not in pipe's layout.
fn foreign(path: &Path, what: String) -> Error {
    Error::invalid(
        path,
        format!("{what}; pipe expects a model exported by `pipe export` (input `images`: float32 [N,S,S,3] RGB 0..255)"),
    )
}

/// Dimensions of a float32 tensor value (`None` for a symbolic or unknown dimension); `None` when the
/// value is not a float32 tensor with a shape.
fn float_dims(vi: &pb::ValueInfoProto) -> Option<Vec<Option<i64>>> {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    match vi.r#type.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) if t.elem_type == 1 => Some(
            t.shape
                .as_ref()?
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(v)) => Some(v),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// The input size of the graph's single non-initializer input, which must be [`INPUT_NAME`]
/// `[N, S, S, 3]`.
fn input_size(path: &Path, graph: &pb::GraphProto) -> Result<usize> {
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .collect();
    let input = match inputs.as_slice() {
        [one] if one.name == INPUT_NAME => *one,
        _ => {
            let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(foreign(
                path,
                format!("model inputs are {names:?}, not a single `images` input"),
            ));
        }
    };
    let dims = float_dims(input).ok_or_else(|| {
        foreign(
            path,
            "input `images` is not a float32 tensor with a known shape".into(),
        )
    })?;
    contract::input_size_of(&dims).ok_or_else(|| {
        foreign(
            path,
            format!("input `images` has shape {dims:?}, expected [N,S,S,3]"),
        )
    })
}

/// The graph's single output and its number of classes (`[N, classes]`).
fn output<'g>(path: &Path, graph: &'g pb::GraphProto) -> Result<(&'g pb::ValueInfoProto, usize)> {
    let output = match graph.output.as_slice() {
        [one] => one,
        outs => {
            return Err(foreign(
                path,
                format!("model has {} outputs, expected 1", outs.len()),
            ))
        }
    };
    let dims = float_dims(output).ok_or_else(|| {
        foreign(
            path,
            "output is not a float32 tensor with a known shape".into(),
        )
    })?;
    let classes = contract::classes_of(&dims).ok_or_else(|| {
        foreign(
            path,
            format!("output has shape {dims:?}, expected [N,classes]"),
        )
    })?;
    Ok((output, classes))
}

impl ModelInfo {
    /// Reads and checks the model: one float input named `images` of shape `[N, S, S, 3]`, one output
    /// of shape `[N, classes]`.
    ///
    /// # Errors
    /// [`Error::InvalidFile`] naming the model when it is not ONNX, not an image classifier in pipe's
    /// layout, or asks for a resize policy or filter pipe does not apply.
    pub fn read(path: &Path) -> Result<Self> {
        let model = read_onnx(path)?;
        let graph = graph(path, &model)?;
        let input_size = input_size(path, graph)?;
        let (output, n_classes) = output(path, graph)?;
        let metadata: Vec<(String, String)> = model
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        let image = ModelMetadata::image_spec_from_props(path, &metadata, input_size)?;
        let from_meta = ModelMetadata::classes_from_props(&metadata, n_classes);
        let classes_from_metadata = from_meta.is_some();
        let classes = from_meta.unwrap_or_else(|| (0..n_classes).map(|i| i.to_string()).collect());
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(0);
        let parameters = graph
            .initializer
            .iter()
            .map(|t| t.dims.iter().product::<i64>().max(0) as usize)
            .sum();
        Ok(ModelInfo {
            input_size,
            image,
            classes,
            classes_from_metadata,
            output_name: output.name.clone(),
            metadata,
            opset,
            parameters,
        })
    }

    /// The model's arithmetic, from its metadata: `int8` (QDQ: int8 weights, uint8 activations,
    /// with how it was calibrated) or `float32`.
    pub fn precision(&self) -> String {
        let value = |key: &str| {
            self.metadata
                .iter()
                .find(|(k, _)| k == key)
                .map_or("?", |(_, v)| v.as_str())
        };
        use crate::contract::keys;
        match ModelMetadata::precision_from_props(&self.metadata) {
            crate::contract::INT8 => format!(
                "int8 (QDQ: int8 weights per output channel, {}-bit; uint8 activations, {} \
                 calibration on {} training images, seed {})",
                value(keys::WEIGHT_BITS),
                value(keys::CALIBRATION),
                value(keys::CALIBRATION_IMAGES),
                value(keys::CALIBRATION_SEED)
            ),
            other => other.to_string(),
        }
    }

    /// What the output carries, from its name ([`Output::from_name`]).
    pub fn output_kind(&self) -> Output {
        Output::from_name(&self.output_name)
    }

    /// The description `pipe inspect` prints for the model file `path`: input, how images are
    /// resized to it, output, opset, parameter count and metadata, one item a line.
    pub fn describe(&self, path: &Path) -> String {
        let s = self.input_size;
        let resize = match self.image.resize {
            ResizePolicy::Squash => format!("the whole image stretched to {s}x{s}"),
            ResizePolicy::Crop => format!("shorter side to {s}, then the centre {s}x{s} square"),
        };
        let mut out = format!(
            "model:      {}\n\
             input:      {INPUT_NAME}  float32 [N, {s}, {s}, 3]  (NHWC, RGB, 0..255)\n\
             resize:     {} ({resize}), {} filter\n\
             output:     {}  float32 [N, {}]\n\
             precision:  {}\n\
             opset:      {}\n\
             parameters: {} (elements of all initializers)\n\
             metadata:\n",
            path.display(),
            self.image.resize,
            self.image.filter,
            self.output_name,
            self.classes.len(),
            self.precision(),
            self.opset,
            crate::util::thousands(self.parameters),
        );
        for (k, v) in &self.metadata {
            out += &format!("  {k}: {v}\n");
        }
        out
    }
}
