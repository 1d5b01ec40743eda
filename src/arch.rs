//! The network as data: one description from which both the tch model (training) and the ONNX graph
//! (export) are built, so the two cannot drift apart.
//!
//! The convolutional base is VGG16 (Simonyan & Zisserman, 2014, configuration "D"): 13 3x3 convolutions
//! with padding 1, each followed by ReLU, in 5 blocks closed by 2x2 max-pooling with stride 2. The head
//! is the classic Keras transfer-learning head: Flatten → Dense(256, ReLU) → Dropout(0.5) → Dense(classes),
//! or, with [`Pooling::Max`], the same dense layers on the globally max-pooled, L2-normalised map.

/// ImageNet channel means in **BGR** order (B, G, R), in 0..255 pixel units, subtracted by Keras'
/// "caffe" preprocessing (`keras.applications.vgg16.preprocess_input`), which VGG16's original Caffe
/// weights expect. Source: the original Oxford VGG release, as used by Keras.
pub const IMAGENET_BGR_MEANS: [f32; 3] = [103.939, 116.779, 123.68];

/// SHA-256 over the 26 conv-base tensors of Keras' ImageNet VGG16 (`include_top=False`) as little-endian
/// float32, in the order weight0, bias0, ..., weight12, bias12 (weights OIHW). Source: `../shared/data/README.md`.
pub const VGG16_IMAGENET_FINGERPRINT: &str =
    "dd21191fd3ba4d9b2b0104621c806227994d029acdf7f88d3ca0afd5774c15cf";

/// Number of parameters of the VGG16 conv base (13 conv layers, weights and biases).
pub const VGG16_BASE_PARAMETERS: usize = 14_714_688;

/// CIFAR-10 class names in label order 0..9 (Krizhevsky, 2009).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// VGG16 configuration "D": output channels of each conv, `0` standing for a 2x2 max-pool.
const VGG16_CFG: [usize; 18] = [
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];

/// One layer of the frozen convolutional base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseLayer {
    /// 3x3 convolution, stride 1, padding 1, followed by ReLU. Weight OIHW `[out, in, 3, 3]`, bias `[out]`.
    Conv {
        /// Keras-style name, e.g. `block1_conv1`; parameters are `base.<name>.weight` / `.bias`.
        name: String,
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
    },
    /// 2x2 max-pooling with stride 2 (halves height and width).
    MaxPool {
        /// Keras-style name, e.g. `block1_pool`.
        name: String,
    },
}

/// One layer of the trainable dense head.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadLayer {
    /// Fully connected layer `y = x Wᵀ + b`, weight `[out, in]`, bias `[out]` (PyTorch layout).
    Linear {
        /// Parameter prefix, e.g. `dense1`; parameters are `head.<name>.weight` / `.bias`.
        name: String,
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
    },
    /// Rectified linear unit.
    Relu,
    /// Dropout with drop probability `p` during training; identity at inference (absent from ONNX).
    Dropout {
        /// Drop probability in 0..1.
        p: f64,
    },
}

/// How the base's last map `[C, H, W]` becomes the head's input features.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Flatten in NCHW order: `C·H·W` features (25,088 at 224x224), the Keras recipe's `Flatten`.
    /// Keeps where in the image each feature was, and grows with the input size.
    #[default]
    Flatten,
    /// Global max pooling over `H, W`, then L2 normalisation scaled to norm `√C`: `C` features (512)
    /// at every input size, each the strongest response of one channel anywhere in the image, about 1
    /// in size (the scale the head's initialisation and learning rates expect). Where an object
    /// appears does not matter, and a larger input costs no head parameters. Normalised CNN features
    /// are the classic off-the-shelf descriptor (Razavian et al., "CNN Features off-the-shelf", 2014).
    Max,
}

impl Pooling {
    /// The L2 norm of each image's features under [`Pooling::Max`], for a map of `channels`
    /// channels: `√channels` (√512 ≈ 22.6 for VGG16), so that each feature is about 1 in size.
    pub fn max_feature_norm(channels: usize) -> f64 {
        (channels as f64).sqrt()
    }

    /// The name used on the command line and in `config.json`: `flatten` or `max`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Flatten => "flatten",
            Pooling::Max => "max",
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole network: input geometry, frozen base and trainable head.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    /// Height and width of the square RGB input images, in pixels (32 for CIFAR-10).
    pub input_size: usize,
    /// The frozen VGG16 convolutional base, in execution order.
    pub base: Vec<BaseLayer>,
    /// How the base output becomes the head's input.
    pub pooling: Pooling,
    /// The dense head applied to the pooled base output ([`Arch::feature_dim`] features).
    pub head: Vec<HeadLayer>,
    /// Number of output classes.
    pub num_classes: usize,
}

impl Arch {
    /// VGG16 base plus the Keras transfer-learning head (Flatten, Dense 256 ReLU, Dropout 0.5, Dense
    /// `num_classes`) for `input_size`x`input_size` inputs. `input_size` must be a positive multiple
    /// of 32.
    pub fn vgg16_transfer(input_size: usize, num_classes: usize) -> Self {
        Self::vgg16_pooled(input_size, num_classes, Pooling::Flatten)
    }

    /// As [`Arch::vgg16_transfer`], with the base output pooled as `pooling` says before the head.
    pub fn vgg16_pooled(input_size: usize, num_classes: usize, pooling: Pooling) -> Self {
        let mut base = Vec::new();
        let (mut block, mut conv, mut in_ch) = (1, 1, 3);
        for &c in VGG16_CFG.iter() {
            if c == 0 {
                base.push(BaseLayer::MaxPool {
                    name: format!("block{block}_pool"),
                });
                block += 1;
                conv = 1;
            } else {
                base.push(BaseLayer::Conv {
                    name: format!("block{block}_conv{conv}"),
                    in_channels: in_ch,
                    out_channels: c,
                });
                in_ch = c;
                conv += 1;
            }
        }
        let mut arch = Arch {
            input_size,
            base,
            pooling,
            head: Vec::new(),
            num_classes,
        };
        let features = arch.feature_dim();
        arch.head = vec![
            HeadLayer::Linear {
                name: "dense1".into(),
                in_features: features,
                out_features: 256,
            },
            HeadLayer::Relu,
            HeadLayer::Dropout { p: 0.5 },
            HeadLayer::Linear {
                name: "dense2".into(),
                in_features: 256,
                out_features: num_classes,
            },
        ];
        arch
    }

    /// Shape `[channels, height, width]` of the base's output for one image.
    pub fn base_output_shape(&self) -> [usize; 3] {
        let mut hw = self.input_size;
        let mut ch = 3;
        for layer in &self.base {
            match layer {
                BaseLayer::Conv { out_channels, .. } => ch = *out_channels,
                BaseLayer::MaxPool { .. } => hw /= 2,
            }
        }
        [ch, hw, hw]
    }

    /// Features per image the head takes: with [`Pooling::Flatten`], the length of the flattened
    /// base output (512 at 32x32 input, 2,048 at 64x64, 25,088 at 224x224); with [`Pooling::Max`],
    /// the base's output channels (512 at every size).
    pub fn feature_dim(&self) -> usize {
        let [c, h, w] = self.base_output_shape();
        match self.pooling {
            Pooling::Flatten => c * h * w,
            Pooling::Max => c,
        }
    }

    /// Names and shapes of the base parameters, in the order of the fingerprint:
    /// `base.<conv>.weight` (OIHW), `base.<conv>.bias`, for each conv in graph order.
    pub fn base_params(&self) -> Vec<(String, Vec<usize>)> {
        self.base
            .iter()
            .filter_map(|layer| match layer {
                BaseLayer::Conv {
                    name,
                    in_channels,
                    out_channels,
                } => Some(weight_and_bias(
                    "base",
                    name,
                    vec![*out_channels, *in_channels, 3, 3],
                )),
                BaseLayer::MaxPool { .. } => None,
            })
            .flatten()
            .collect()
    }

    /// Names and shapes of the head parameters: `head.<linear>.weight` `[out, in]` and `.bias` `[out]`.
    pub fn head_params(&self) -> Vec<(String, Vec<usize>)> {
        self.head
            .iter()
            .filter_map(|layer| match layer {
                HeadLayer::Linear {
                    name,
                    in_features,
                    out_features,
                } => Some(weight_and_bias(
                    "head",
                    name,
                    vec![*out_features, *in_features],
                )),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

/// One row of [`Arch::summary`], like a line of Keras' `model.summary()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    /// Layer name.
    pub name: String,
    /// Layer type (`Conv2D`, `MaxPooling2D`, ...).
    pub kind: &'static str,
    /// Output shape per image, batch dimension omitted (channels first).
    pub output_shape: Vec<usize>,
    /// Parameters of the layer.
    pub parameters: usize,
    /// Whether the parameters are trained (the base is frozen).
    pub trainable: bool,
}

impl Arch {
    /// The layer table: input, 13 conv + 5 pool layers of the frozen base, then the head.
    pub fn summary(&self) -> Vec<SummaryRow> {
        let s = self.input_size;
        let mut rows = vec![SummaryRow {
            name: "images".into(),
            kind: "Input",
            output_shape: vec![3, s, s],
            parameters: 0,
            trainable: false,
        }];
        let (mut ch, mut hw) = (3, s);
        for l in &self.base {
            match l {
                BaseLayer::Conv {
                    name,
                    in_channels,
                    out_channels,
                } => {
                    ch = *out_channels;
                    rows.push(SummaryRow {
                        name: name.clone(),
                        kind: "Conv2D",
                        output_shape: vec![ch, hw, hw],
                        parameters: out_channels * in_channels * 9 + out_channels,
                        trainable: false,
                    });
                }
                BaseLayer::MaxPool { name } => {
                    hw /= 2;
                    rows.push(SummaryRow {
                        name: name.clone(),
                        kind: "MaxPooling2D",
                        output_shape: vec![ch, hw, hw],
                        parameters: 0,
                        trainable: false,
                    });
                }
            }
        }
        let mut width = self.feature_dim();
        let pooled = match self.pooling {
            Pooling::Flatten => vec![("flatten", "Flatten")],
            Pooling::Max => vec![
                ("global_max_pool", "GlobalMaxPooling2D"),
                ("l2_normalise", "L2Normalisation"),
            ],
        };
        for (name, kind) in pooled {
            rows.push(SummaryRow {
                name: name.into(),
                kind,
                output_shape: vec![width],
                parameters: 0,
                trainable: false,
            });
        }
        for (i, l) in self.head.iter().enumerate() {
            let (name, kind, params) = match l {
                HeadLayer::Linear {
                    name,
                    in_features,
                    out_features,
                } => {
                    width = *out_features;
                    (
                        name.clone(),
                        "Dense",
                        in_features * out_features + out_features,
                    )
                }
                HeadLayer::Relu => (format!("relu_{i}"), "ReLU", 0),
                HeadLayer::Dropout { .. } => (format!("dropout_{i}"), "Dropout", 0),
            };
            rows.push(SummaryRow {
                name,
                kind,
                output_shape: vec![width],
                parameters: params,
                trainable: params > 0,
            });
        }
        rows
    }
}

/// The weight (shape `weight_shape`, output channels or features first) and bias (`[out]`) of layer
/// `name` under `prefix`: `<prefix>.<name>.weight` and `<prefix>.<name>.bias`.
fn weight_and_bias(
    prefix: &str,
    name: &str,
    weight_shape: Vec<usize>,
) -> [(String, Vec<usize>); 2] {
    let out = weight_shape[0];
    [
        (format!("{prefix}.{name}.weight"), weight_shape),
        (format!("{prefix}.{name}.bias"), vec![out]),
    ]
}

/// Number of elements of a tensor shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg16_has_13_convs_5_pools_and_keras_parameter_counts() {
        let a = Arch::vgg16_transfer(32, 10);
        let convs = a
            .base
            .iter()
            .filter(|l| matches!(l, BaseLayer::Conv { .. }))
            .count();
        let pools = a
            .base
            .iter()
            .filter(|l| matches!(l, BaseLayer::MaxPool { .. }))
            .count();
        assert_eq!((convs, pools), (13, 5));
        let base: usize = a.base_params().iter().map(|(_, s)| numel(s)).sum();
        let head: usize = a.head_params().iter().map(|(_, s)| numel(s)).sum();
        // Keras' model.summary(): VGG16(include_top=False) 14,714,688; head 512*256+256 + 256*10+10.
        assert_eq!(base, VGG16_BASE_PARAMETERS);
        assert_eq!(head, 133_898);
        assert_eq!(a.base_output_shape(), [512, 1, 1]);
    }

    #[test]
    fn summary_totals_match_keras() {
        let rows = Arch::vgg16_transfer(32, 10).summary();
        let base: usize = rows
            .iter()
            .filter(|r| !r.trainable)
            .map(|r| r.parameters)
            .sum();
        let head: usize = rows
            .iter()
            .filter(|r| r.trainable)
            .map(|r| r.parameters)
            .sum();
        assert_eq!((base, head), (14_714_688, 133_898));
        assert_eq!(
            rows.iter()
                .find(|r| r.name == "block5_pool")
                .unwrap()
                .output_shape,
            vec![512, 1, 1]
        );
        assert_eq!(rows.len(), 1 + 18 + 1 + 4);
    }

    #[test]
    fn feature_dim_follows_input_size() {
        assert_eq!(Arch::vgg16_transfer(64, 10).feature_dim(), 2048);
        assert_eq!(
            Arch::vgg16_transfer(64, 10).head_params()[0].1,
            vec![256, 2048]
        );
        assert_eq!(Arch::vgg16_transfer(224, 10).feature_dim(), 25_088);
    }

    /// Global max pooling gives the 512 channels at any input size, and the summary shows the
    /// pooling and normalisation rows in place of Flatten.
    #[test]
    fn max_pooling_gives_512_features_at_every_size() {
        for size in [32, 224, 448] {
            let a = Arch::vgg16_pooled(size, 2, Pooling::Max);
            assert_eq!(a.feature_dim(), 512, "size {size}");
            assert_eq!(a.head_params()[0].1, vec![256, 512]);
            let rows = a.summary();
            let kinds: Vec<&str> = rows.iter().map(|r| r.kind).collect();
            assert!(!kinds.contains(&"Flatten"), "{kinds:?}");
            let at = kinds
                .iter()
                .position(|k| *k == "GlobalMaxPooling2D")
                .unwrap();
            assert_eq!(kinds[at + 1], "L2Normalisation");
            assert_eq!(rows[at].output_shape, vec![512]);
            assert_eq!(rows.len(), 1 + 18 + 2 + 4);
        }
    }

    #[test]
    fn conv_shapes_match_the_data_readme() {
        let shapes: Vec<(usize, usize)> = Arch::vgg16_transfer(32, 10)
            .base
            .iter()
            .filter_map(|l| match l {
                BaseLayer::Conv {
                    in_channels,
                    out_channels,
                    ..
                } => Some((*out_channels, *in_channels)),
                _ => None,
            })
            .collect();
        let mut expected = vec![
            (64, 3),
            (64, 64),
            (128, 64),
            (128, 128),
            (256, 128),
            (256, 256),
            (256, 256),
            (512, 256),
        ];
        expected.extend([(512, 512); 5]);
        assert_eq!(shapes, expected);
    }
}
