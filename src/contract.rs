//! What an exported model promises its clients: tensor names, layout, preprocessing and the
//! `metadata_props` keys. `export` writes models that keep this contract and `infer` reads them by it;
//! both depend on this module and neither on the other (no ONNX and no libtorch types here).
//!
//! The contract of a pipe model:
//! - one input [`INPUT_NAME`], float32 `[N, S, S, 3]`: decoded RGB pixels 0..255, NHWC, `N` the
//!   symbolic batch dimension [`BATCH_DIM`], `S` the input size; images become `S`x`S` by the
//!   model's resize policy ([`keys::RESIZE`]: squash or crop) with [`RESIZE_FILTER`];
//! - preprocessing ([`CAFFE_PREPROCESSING`]) inside the graph, so clients feed raw pixels;
//! - one output, float32 `[N, classes]`: [`PROBABILITIES`] (softmax) or [`LOGITS`] ([`Output`]);
//! - [`ModelMetadata`] in `metadata_props` (class names first, see [`keys`]).

/// Name of the graph input: decoded RGB pixels, float32 `[N, S, S, 3]`, values 0..255.
pub const INPUT_NAME: &str = "images";
/// Name of the graph output when it carries softmax probabilities, float32 `[N, classes]`.
pub const PROBABILITIES: &str = "probabilities";
/// Name of the graph output when it carries logits, float32 `[N, classes]`.
pub const LOGITS: &str = "logits";
/// Symbolic batch dimension of input and output.
pub const BATCH_DIM: &str = "N";
/// Memory layout of the input: batch, height, width, channels.
pub const INPUT_LAYOUT: &str = "NHWC";
/// Channel order of the input.
pub const INPUT_COLOR: &str = "RGB";
/// Value range and element type of the input.
pub const INPUT_RANGE: &str = "0..255 float32";
/// How images are resized to the input size (pipe's decoder; clients should do the same): the value
/// of [`keys::RESIZE_FILTER`], whose first word names the [`ResizeFilter`].
pub const RESIZE_FILTER: &str = "bilinear (image crate FilterType::Triangle)";
/// Description of the preprocessing (Keras' `preprocess_input(mode="caffe")`), as stored in a run's
/// `config.json`, in the feature-cache key and in the ONNX metadata.
pub const CAFFE_PREPROCESSING: &str =
    "caffe: RGB->BGR, subtract ImageNet BGR means [103.939, 116.779, 123.68], no scaling";

use crate::data::{ImageSpec, ResizeFilter, ResizePolicy};
use crate::error::{Error, Result};
use std::path::Path;

/// What the model outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Softmax probabilities, output named [`PROBABILITIES`].
    Probabilities,
    /// Pre-softmax scores, output named [`LOGITS`].
    Logits,
}

impl Output {
    /// [`Output::Logits`] when `logits` (the `--logits` option), else [`Output::Probabilities`].
    pub fn logits(logits: bool) -> Self {
        if logits {
            Output::Logits
        } else {
            Output::Probabilities
        }
    }

    /// The kind an output named `name` carries: [`Output::Logits`] for [`LOGITS`], else (also for
    /// foreign models) [`Output::Probabilities`].
    pub fn from_name(name: &str) -> Self {
        if name == LOGITS {
            Output::Logits
        } else {
            Output::Probabilities
        }
    }

    /// The graph output's name: [`PROBABILITIES`] or [`LOGITS`].
    pub fn name(self) -> &'static str {
        match self {
            Output::Probabilities => PROBABILITIES,
            Output::Logits => LOGITS,
        }
    }

    /// The value of the `output` metadata key.
    pub fn description(self) -> &'static str {
        match self {
            Output::Probabilities => "softmax probabilities",
            Output::Logits => "logits",
        }
    }

    /// What one output value is called in reports (column names, JSON keys): `probability` or `logit`.
    pub fn score_name(self) -> &'static str {
        match self {
            Output::Probabilities => "probability",
            Output::Logits => "logit",
        }
    }
}

/// Input dimensions of a model of input size `size`: `[N, size, size, 3]` (`None` = [`BATCH_DIM`]).
pub fn input_dims(size: usize) -> [Option<i64>; 4] {
    let s = Some(size as i64);
    [None, s, s, Some(3)]
}

/// Output dimensions of a model with `classes` classes: `[N, classes]` (`None` = [`BATCH_DIM`]).
pub fn output_dims(classes: usize) -> [Option<i64>; 2] {
    [None, Some(classes as i64)]
}

/// The input size `S` of input dimensions `[N, S, S, 3]` (`None` = unknown dimension); `None` when
/// the dimensions are not in this layout.
pub fn input_size_of(dims: &[Option<i64>]) -> Option<usize> {
    match dims {
        [_, Some(h), Some(w), Some(3)] if h == w && *h > 0 => Some(*h as usize),
        _ => None,
    }
}

/// The number of classes of output dimensions `[N, classes]`; `None` when not in this layout.
pub fn classes_of(dims: &[Option<i64>]) -> Option<usize> {
    match dims {
        [_, Some(c)] if *c > 0 => Some(*c as usize),
        _ => None,
    }
}

/// The `metadata_props` keys of an exported model, in the order [`ModelMetadata::to_props`] writes them.
pub mod keys {
    /// Class names as a JSON array of strings, index = output column.
    pub const CLASSES: &str = "classes";
    /// [`super::INPUT_NAME`].
    pub const INPUT_NAME: &str = "input_name";
    /// [`super::INPUT_LAYOUT`].
    pub const INPUT_LAYOUT: &str = "input_layout";
    /// [`super::INPUT_COLOR`].
    pub const INPUT_COLOR: &str = "input_color";
    /// [`super::INPUT_RANGE`].
    pub const INPUT_RANGE: &str = "input_range";
    /// Input height and width in pixels.
    pub const INPUT_SIZE: &str = "input_size";
    /// How an image of any aspect ratio becomes the `S`x`S` input: `squash` (stretch the whole image)
    /// or `crop` (shorter side to `S`, then the centre square), [`crate::data::ResizePolicy`]. Absent
    /// in models exported before it existed, which were all squash.
    pub const RESIZE: &str = "resize";
    /// [`super::RESIZE_FILTER`].
    pub const RESIZE_FILTER: &str = "resize_filter";
    /// [`super::CAFFE_PREPROCESSING`], noted as inside the graph.
    pub const PREPROCESSING: &str = "preprocessing";
    /// How the base's last map becomes the head's input, inside the graph: `flatten` or `max`
    /// ([`crate::arch::Pooling`]). For information: clients need not read it. Absent in models
    /// exported before it existed, which were all flatten.
    pub const POOLING: &str = "pooling";
    /// [`super::Output::description`].
    pub const OUTPUT: &str = "output";
    /// SHA-256 fingerprint of the conv-base weights the run started from.
    pub const WEIGHTS_FINGERPRINT: &str = "weights_fingerprint";
    /// Conv layers fine-tuned, counted from the last (0 = frozen base).
    pub const FINE_TUNED_CONV_LAYERS: &str = "fine_tuned_conv_layers";
    /// Name of the training run.
    pub const RUN: &str = "run";
    /// `float32`, `float16` for weights stored as float16, `int8` for an int8 export.
    pub const WEIGHTS_DTYPE: &str = "weights_dtype";
    /// The arithmetic of the conv and dense layers: `float32`, or `int8` for an int8 export (QDQ form:
    /// int8 weights per output channel, uint8 activations). Absent in models exported before it
    /// existed, which were all float32.
    pub const PRECISION: &str = "precision";
    /// An int8 export's calibration method (`minmax`, `percentile`, `entropy`).
    pub const CALIBRATION: &str = "calibration";
    /// An int8 export's number of calibration images (from the run's training split).
    pub const CALIBRATION_IMAGES: &str = "calibration_images";
    /// An int8 export's seed of the choice of calibration images.
    pub const CALIBRATION_SEED: &str = "calibration_seed";
    /// An int8 export's weight bits: `8`, or `7` with `--reduce-range`.
    pub const WEIGHT_BITS: &str = "weight_bits";
    /// Test-time augmentation inside the graph: `flip` (the mean of the outputs on the image and on
    /// its horizontal mirror); absent without it.
    pub const TTA: &str = "tta";
    /// Version of pipe that exported the model.
    pub const PIPE_VERSION: &str = "pipe_version";
    /// Last epoch's validation accuracy, 4 decimals (absent when the run has no history).
    pub const TEST_ACCURACY: &str = "test_accuracy";
}

/// The metadata pipe writes into an exported model's `metadata_props`. Adding a key is a field here,
/// a line in [`ModelMetadata::to_props`] and, when clients need it, a reader beside
/// [`ModelMetadata::classes_from_props`].
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    /// Class names, index = output column.
    pub classes: Vec<String>,
    /// Input height and width, pixels.
    pub input_size: usize,
    /// How images become `input_size` squares (the run's `--resize`).
    pub resize: ResizePolicy,
    /// The run's `--pooling`.
    pub pooling: crate::arch::Pooling,
    /// What the output carries.
    pub output: Output,
    /// SHA-256 fingerprint of the conv-base weights (lower-case hex).
    pub weights_fingerprint: String,
    /// Conv layers fine-tuned, counted from the last (0 = frozen base).
    pub fine_tuned_conv_layers: usize,
    /// Name of the training run.
    pub run: String,
    /// Whether the weights are stored as float16.
    pub fp16_weights: bool,
    /// Last epoch's validation accuracy, 0..1.
    pub test_accuracy: Option<f64>,
    /// How the model was quantized, for an int8 export.
    pub int8: Option<Int8Quantization>,
    /// Test-time augmentation by horizontal flip inside the graph (`--tta flip`).
    pub tta_flip: bool,
}

/// How an int8 export was quantized, as its metadata records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Quantization {
    /// Calibration method (`minmax`, `percentile`, `entropy`).
    pub calibration: String,
    /// Calibration images.
    pub images: usize,
    /// Seed of the choice of calibration images.
    pub seed: u64,
    /// Weights quantized to 7 bits instead of 8.
    pub reduce_range: bool,
}

/// The value of [`keys::PRECISION`] for an int8 export.
pub const INT8: &str = "int8";
/// The value of [`keys::PRECISION`] for a float export.
pub const FLOAT32: &str = "float32";

impl ModelMetadata {
    /// The `(key, value)` pairs of `metadata_props`, in file order (the keys of [`keys`], in order).
    pub fn to_props(&self) -> Vec<(String, String)> {
        let mut props: Vec<(&str, String)> = vec![
            (
                keys::CLASSES,
                serde_json::to_string(&self.classes).unwrap_or_default(),
            ),
            (keys::INPUT_NAME, INPUT_NAME.into()),
            (keys::INPUT_LAYOUT, INPUT_LAYOUT.into()),
            (keys::INPUT_COLOR, INPUT_COLOR.into()),
            (keys::INPUT_RANGE, INPUT_RANGE.into()),
            (keys::INPUT_SIZE, self.input_size.to_string()),
            (keys::RESIZE, self.resize.as_str().into()),
            (keys::RESIZE_FILTER, RESIZE_FILTER.into()),
            (
                keys::PREPROCESSING,
                format!("{CAFFE_PREPROCESSING} (inside the graph)"),
            ),
            (keys::POOLING, self.pooling.as_str().into()),
            (keys::OUTPUT, self.output.description().into()),
            (keys::WEIGHTS_FINGERPRINT, self.weights_fingerprint.clone()),
            (
                keys::FINE_TUNED_CONV_LAYERS,
                self.fine_tuned_conv_layers.to_string(),
            ),
            (keys::RUN, self.run.clone()),
            (
                keys::WEIGHTS_DTYPE,
                match (&self.int8, self.fp16_weights) {
                    (Some(_), _) => INT8,
                    (None, true) => "float16",
                    (None, false) => FLOAT32,
                }
                .into(),
            ),
            (
                keys::PRECISION,
                if self.int8.is_some() { INT8 } else { FLOAT32 }.into(),
            ),
        ];
        if let Some(q) = &self.int8 {
            props.extend([
                (keys::CALIBRATION, q.calibration.clone()),
                (keys::CALIBRATION_IMAGES, q.images.to_string()),
                (keys::CALIBRATION_SEED, q.seed.to_string()),
                (
                    keys::WEIGHT_BITS,
                    if q.reduce_range { "7" } else { "8" }.into(),
                ),
            ]);
        }
        if self.tta_flip {
            props.push((keys::TTA, "flip".into()));
        }
        props.push((keys::PIPE_VERSION, env!("CARGO_PKG_VERSION").into()));
        if let Some(acc) = self.test_accuracy {
            props.push((keys::TEST_ACCURACY, format!("{acc:.4}")));
        }
        props.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The precision recorded under [`keys::PRECISION`] of `props`: `int8` or `float32` (also when the
    /// key is absent, as in every model exported before it).
    pub fn precision_from_props(props: &[(String, String)]) -> &str {
        props
            .iter()
            .find(|(k, _)| k == keys::PRECISION)
            .map_or(FLOAT32, |(_, v)| v.as_str())
    }

    /// The class names stored under [`keys::CLASSES`] of `props`, when present, a JSON array of
    /// strings, and `n_classes` long (the model's output width); `None` otherwise.
    pub fn classes_from_props(props: &[(String, String)], n_classes: usize) -> Option<Vec<String>> {
        props
            .iter()
            .find(|(k, _)| k == keys::CLASSES)
            .and_then(|(_, v)| serde_json::from_str::<Vec<String>>(v).ok())
            .filter(|c| c.len() == n_classes)
    }

    /// How the model named `model` wants its images decoded, from `props`: an [`ImageSpec`] of side
    /// `input_size` with the policy of [`keys::RESIZE`] (squash when absent, as every model before
    /// the key) and the filter named by the first word of [`keys::RESIZE_FILTER`] (bilinear when
    /// absent), JPEG DCT scaling on (as training decodes).
    ///
    /// # Errors
    /// [`Error::InvalidFile`] naming `model` when a key names a policy or filter pipe does not
    /// apply: pipe refuses such a model rather than feed it other pixels than it was trained on.
    pub fn image_spec_from_props(
        model: &Path,
        props: &[(String, String)],
        input_size: usize,
    ) -> Result<ImageSpec> {
        let value = |key: &str| {
            props
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let refuse = |key: &str, e: Error| {
            Error::invalid(
                model,
                format!("metadata {key}: {e}; this pipe cannot decode images for it"),
            )
        };
        let resize = match value(keys::RESIZE) {
            Some(v) => v.parse().map_err(|e| refuse(keys::RESIZE, e))?,
            None => ResizePolicy::Squash,
        };
        let filter: ResizeFilter = match value(keys::RESIZE_FILTER) {
            Some(v) => v
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|e| refuse(keys::RESIZE_FILTER, e))?,
            None => ResizeFilter::Bilinear,
        };
        Ok(ImageSpec {
            filter,
            ..ImageSpec::new(input_size, resize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips_and_refuses_other_shapes() {
        assert_eq!(input_size_of(&input_dims(64)), Some(64));
        assert_eq!(input_size_of(&[None, Some(3), Some(32), Some(32)]), None);
        assert_eq!(input_size_of(&[None, None, None, None]), None);
        assert_eq!(classes_of(&output_dims(10)), Some(10));
        assert_eq!(classes_of(&[None, Some(0)]), None);
        assert_eq!(Output::from_name(LOGITS), Output::Logits);
        assert_eq!(Output::from_name("y"), Output::Probabilities);
        assert_eq!(Output::Logits.name(), LOGITS);
    }

    #[test]
    fn metadata_props_in_order_and_classes_read_back() {
        let m = ModelMetadata {
            classes: vec!["cat".into(), "dog".into()],
            input_size: 32,
            resize: ResizePolicy::Crop,
            pooling: crate::arch::Pooling::Max,
            output: Output::Probabilities,
            weights_fingerprint: "ab".into(),
            fine_tuned_conv_layers: 0,
            run: "seed".into(),
            fp16_weights: false,
            test_accuracy: Some(0.456),
            int8: None,
            tta_flip: false,
        };
        let props = m.to_props();
        let names: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names[0], keys::CLASSES);
        assert_eq!(names.last(), Some(&keys::TEST_ACCURACY));
        assert_eq!(props[0].1, r#"["cat","dog"]"#);
        assert_eq!(props.last().unwrap().1, "0.4560");
        assert_eq!(
            ModelMetadata::classes_from_props(&props, 2),
            Some(m.classes.clone())
        );
        assert_eq!(ModelMetadata::classes_from_props(&props, 3), None);
        let resize = names.iter().position(|k| *k == keys::RESIZE).unwrap();
        assert_eq!(names[resize - 1], keys::INPUT_SIZE);
        assert_eq!(names[resize + 1], keys::RESIZE_FILTER);
        assert_eq!(props[resize].1, "crop");
        let pooling = names.iter().position(|k| *k == keys::POOLING).unwrap();
        assert_eq!(names[pooling - 1], keys::PREPROCESSING);
        assert_eq!(props[pooling].1, "max");
        let value = |props: &[(String, String)], key: &str| {
            props.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        };
        assert_eq!(value(&props, keys::PRECISION).as_deref(), Some(FLOAT32));
        assert_eq!(ModelMetadata::precision_from_props(&props), FLOAT32);
        assert_eq!(value(&props, keys::CALIBRATION), None);
        // An int8 export records its precision and how it was calibrated, after the weights' dtype.
        let q = ModelMetadata {
            int8: Some(Int8Quantization {
                calibration: "percentile".into(),
                images: 256,
                seed: 7,
                reduce_range: true,
            }),
            ..m
        }
        .to_props();
        let names: Vec<&str> = q.iter().map(|(k, _)| k.as_str()).collect();
        let dtype = names
            .iter()
            .position(|k| *k == keys::WEIGHTS_DTYPE)
            .unwrap();
        assert_eq!(
            names[dtype..dtype + 6],
            [
                keys::WEIGHTS_DTYPE,
                keys::PRECISION,
                keys::CALIBRATION,
                keys::CALIBRATION_IMAGES,
                keys::CALIBRATION_SEED,
                keys::WEIGHT_BITS
            ]
        );
        let got: Vec<&str> = q[dtype..dtype + 6]
            .iter()
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(got, ["int8", "int8", "percentile", "256", "7", "7"]);
        assert_eq!(ModelMetadata::precision_from_props(&q), INT8);
        assert_eq!(ModelMetadata::precision_from_props(&[]), FLOAT32);
    }

    /// The spec read back is the one written; a model without the keys (exported before they
    /// existed) is squash and bilinear; an unknown policy or filter is refused by name.
    #[test]
    fn image_spec_round_trips_defaults_to_squash_and_refuses_unknown_values() {
        let model = Path::new("m.onnx");
        let props = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        for resize in ResizePolicy::ALL {
            let m = ModelMetadata {
                classes: vec!["a".into()],
                input_size: 224,
                resize,
                pooling: crate::arch::Pooling::Flatten,
                output: Output::Probabilities,
                weights_fingerprint: String::new(),
                fine_tuned_conv_layers: 0,
                run: "r".into(),
                fp16_weights: false,
                test_accuracy: None,
                int8: None,
                tta_flip: false,
            };
            let spec = ModelMetadata::image_spec_from_props(model, &m.to_props(), 224).unwrap();
            assert_eq!(spec, ImageSpec::new(224, resize));
        }
        let old = props(&[(keys::RESIZE_FILTER, RESIZE_FILTER)]);
        let spec = ModelMetadata::image_spec_from_props(model, &old, 32).unwrap();
        assert_eq!(spec, ImageSpec::new(32, ResizePolicy::Squash));
        assert_eq!(
            ModelMetadata::image_spec_from_props(model, &[], 32).unwrap(),
            spec
        );
        for (key, value, want) in [
            (
                keys::RESIZE,
                "stretch",
                "m.onnx: metadata resize: unknown resize policy",
            ),
            (
                keys::RESIZE_FILTER,
                "lanczos3",
                "m.onnx: metadata resize_filter: unknown resize filter",
            ),
        ] {
            let err = ModelMetadata::image_spec_from_props(model, &props(&[(key, value)]), 32)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "{err}");
        }
    }
}
