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
