//! Static int8 quantization in QDQ form (standard ONNX `QuantizeLinear` / `DequantizeLinear` around
//! float operators, which onnxruntime fuses into its int8 kernels and any ONNX runtime can execute):
//!
//! - weights of every Conv and dense (Gemm) layer: int8, symmetric (zero point 0), one scale per
//!   output channel ([`quantize_weight`]), behind a `DequantizeLinear` whose output carries the
//!   weight's own name, so the Conv and Gemm nodes are those of the float graph;
//! - biases: int32 with scale `input scale × weight scale` per channel ([`quantize_bias`]), as
//!   onnxruntime's kernels require;
//! - activations: uint8, one scale per tensor ([`ActivationQuant`]), from the range calibration gives
//!   ([`super::calibrate`]); a `QuantizeLinear` + `DequantizeLinear` pair on each quantized tensor.
//!   A ReLU followed by quantization with zero point 0 is the quantization alone (negative values
//!   saturate to 0), so the int8 graph has no ReLU after a Conv or a hidden dense layer.
//!
//! Preprocessing, pooling and normalisation of the features, the logits and the softmax stay float:
//! the graph's input and output are those of the float model.

use super::calibrate::{input_range, Calibration, CalibrationPoint, PointKind, Stats};
use crate::error::{Error, Result};
use std::collections::HashMap;

/// Default `--calibration-images`.
pub const DEFAULT_CALIBRATION_IMAGES: usize = 256;
/// Default `--max-accuracy-drop`, in points of test accuracy (0.5 = half a percentage point).
pub const DEFAULT_MAX_ACCURACY_DROP: f64 = 0.5;

/// How an int8 export is made.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeOptions {
    /// How the activation ranges are chosen.
    pub calibration: Calibration,
    /// Training images the float model runs on for calibration (class-balanced, seeded).
    pub images: usize,
    /// Seed of the choice of calibration images.
    pub seed: u64,
    /// Quantize weights to 7 bits (-64..63) instead of 8, for CPUs without int8 dot-product
    /// instructions (AVX2 without VNNI), where onnxruntime's u8×s8 kernels can saturate (its
    /// quantizer's `reduce_range`).
    pub reduce_range: bool,
    /// Refuse the export when the int8 test accuracy is more than this many points below float.
    pub max_accuracy_drop: f64,
    /// Where to write the calibration images' pixels as well (raw uint8, NHWC RGB, `images ×
    /// input size × input size × 3` bytes in the order calibrated), so that another quantizer can
    /// be calibrated on the very same pixels.
    pub save_calibration: Option<std::path::PathBuf>,
    /// The engine that runs the float model for calibration and the int8 model for its
    /// verification.
    pub backend: crate::infer::BackendKind,
}

/// `pipe export --reduce-range`: whether the int8 weights take 7 bits instead of 8.
///
/// Without int8 dot-product instructions (x86-64 without AVX512_VNNI or AVX-VNNI), ONNX Runtime's
/// int8 convolutions multiply uint8 activations by int8 weights with `vpmaddubsw`, which adds each
/// pair of products in int16 and saturates there (255 × 127 × 2 = 64,770 > 32,767); weights in 7
/// bits keep every pair inside int16 (255 × 63 × 2 = 32,130). onnxruntime's own quantizer names the
/// same choice `reduce_range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReduceRange {
    /// 7 bits where the exporting CPU is an x86-64 without int8 dot-product instructions (the
    /// export's verification runs on it), 8 bits elsewhere.
    #[default]
    Auto,
    /// Always 7 bits.
    On,
    /// Always 8 bits.
    Off,
}

impl ReduceRange {
    /// Whether the weights take 7 bits on a CPU with `cpu`'s features.
    pub fn resolve(self, cpu: &crate::cpu::CpuFeatures) -> bool {
        match self {
            ReduceRange::On => true,
            ReduceRange::Off => false,
            ReduceRange::Auto => cfg!(target_arch = "x86_64") && cpu.int8_dot_product().is_none(),
        }
    }

    /// The sentence that says what `resolve` chose on `cpu` and why, for the export's log.
    pub fn explain(self, cpu: &crate::cpu::CpuFeatures) -> String {
        let bits = if self.resolve(cpu) { 7 } else { 8 };
        let why = match (self, cpu.int8_dot_product()) {
            (ReduceRange::On, _) => "--reduce-range on".to_string(),
            (ReduceRange::Off, _) => "--reduce-range off".to_string(),
            (ReduceRange::Auto, Some(isa)) => {
                format!("--reduce-range auto: this CPU has {isa}, whose int8 dot products do not saturate")
            }
            (ReduceRange::Auto, None) if bits == 7 => "--reduce-range auto: this CPU has no int8 \
                 dot-product instructions (AVX512_VNNI, AVX-VNNI), where ONNX Runtime's int8 \
                 kernels saturate with 8-bit weights"
                .to_string(),
            (ReduceRange::Auto, None) => "--reduce-range auto: not an x86-64 CPU".to_string(),
        };
        format!("int8 weights in {bits} bits ({why})")
    }
}

/// The default engine of the int8 calibration and verification: ONNX Runtime where this build has
/// it (several times faster than tract at large input sizes: at 384 pixels tract runs about a photo
/// a second on 2 cores), else tract.
pub const DEFAULT_INT8_BACKEND: crate::infer::BackendKind = if cfg!(feature = "ort") {
    crate::infer::BackendKind::Ort
} else {
    crate::infer::BackendKind::Tract
};

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            calibration: Calibration::Percentile,
            images: DEFAULT_CALIBRATION_IMAGES,
            seed: 0,
            reduce_range: ReduceRange::Auto.resolve(&crate::cpu::CpuFeatures::detect()),
            max_accuracy_drop: DEFAULT_MAX_ACCURACY_DROP,
            save_calibration: None,
            backend: DEFAULT_INT8_BACKEND,
        }
    }
}

/// The uint8 quantization of an activation: `q = clamp(round(x / scale) + zero_point, 0, 255)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationQuant {
    /// Float value of one step.
    pub scale: f32,
    /// The uint8 value of 0.0.
    pub zero_point: u8,
}

impl ActivationQuant {
    /// The quantization covering `[lo, hi]` (widened to hold 0, so that 0.0 is exact) in 255 steps;
    /// a range of width 0 gets scale 1.
    pub fn of_range(lo: f32, hi: f32) -> Self {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        ActivationQuant { scale, zero_point }
    }
}

/// The activation quantization of every calibration point, by the point's name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QuantPlan {
    /// Per calibration point name.
    pub activations: HashMap<String, ActivationQuant>,
    /// Weights quantized to 7 bits ([`QuantizeOptions::reduce_range`]).
    pub reduce_range: bool,
}

impl QuantPlan {
    /// The plan of `points` from their calibration `stats` (same order) with `method`: the input's
    /// range from the preprocessing ([`input_range`]), the non-negative points' from `method`.
    ///
    /// # Errors
    /// [`Error::Usage`] when the lists differ in length.
    pub fn new(
        points: &[CalibrationPoint],
        stats: &[Stats],
        method: Calibration,
        reduce_range: bool,
    ) -> Result<Self> {
        if points.len() != stats.len() {
            return Err(Error::Usage(format!(
                "calibration gave {} summaries for {} points",
                stats.len(),
                points.len()
            )));
        }
        let activations = points
            .iter()
            .zip(stats)
            .map(|(p, s)| {
                let q = match p.kind {
                    PointKind::Input => {
                        let (lo, hi) = input_range();
                        ActivationQuant::of_range(lo, hi)
                    }
                    PointKind::NonNegative => ActivationQuant::of_range(0.0, method.range(s)),
                };
                (p.name.clone(), q)
            })
            .collect();
        Ok(QuantPlan {
            activations,
            reduce_range,
        })
    }

    /// The quantization of the point `name`.
    ///
    /// # Errors
    /// [`Error::Usage`] when the plan has no such point.
    pub fn activation(&self, name: &str) -> Result<ActivationQuant> {
        self.activations
            .get(name)
            .copied()
            .ok_or_else(|| Error::Usage(format!("int8 export: no calibration for {name}")))
    }
}

/// A weight quantized per output channel: int8 values and one scale per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    /// The values, in the weight's layout.
    pub values: Vec<i8>,
    /// Per output channel (the first dimension): the float value of one step.
    pub scales: Vec<f32>,
}

/// Quantizes `data` (row-major, `channels` output channels along the first dimension) symmetrically
/// per output channel: `scale = max |w| / 127` (63 with `reduce_range`), `q = round(w / scale)`
/// (half to even, as ONNX's QuantizeLinear). A channel of zeros gets scale 1.
pub fn quantize_weight(data: &[f32], channels: usize, reduce_range: bool) -> QuantizedWeight {
    let qmax = if reduce_range { 63.0 } else { 127.0 };
    let per = data.len() / channels.max(1);
    let mut values = Vec::with_capacity(data.len());
    let mut scales = Vec::with_capacity(channels);
    for row in data.chunks(per.max(1)) {
        let m = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if m > 0.0 { m / qmax } else { 1.0 };
        values.extend(
            row.iter()
                .map(|&w| (w / scale).round_ties_even().clamp(-qmax, qmax) as i8),
        );
        scales.push(scale);
    }
    QuantizedWeight { values, scales }
}

/// Quantizes a bias for an input of scale `input_scale` and a weight of per-channel `weight_scales`:
/// int32 values of scale `input_scale × weight_scale` per channel (onnxruntime's int8 Conv and Gemm
/// add the bias in their int32 accumulator), and those scales.
pub fn quantize_bias(
    bias: &[f32],
    input_scale: f32,
    weight_scales: &[f32],
) -> (Vec<i32>, Vec<f32>) {
    let scales: Vec<f32> = weight_scales.iter().map(|s| s * input_scale).collect();
    let values = bias
        .iter()
        .zip(&scales)
        .map(|(&b, &s)| (f64::from(b) / f64::from(s)).round() as i32)
        .collect();
    (values, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--reduce-range auto` takes 7 bits exactly on an x86-64 CPU without AVX512_VNNI and
    /// AVX-VNNI; on and off ignore the CPU; the log line says the bits and the reason.
    #[test]
    fn reduce_range_auto_follows_the_int8_dot_products() {
        use crate::cpu::CpuFeatures;
        let avx2 = CpuFeatures::default();
        let vnni = CpuFeatures {
            avx512_vnni: true,
            ..CpuFeatures::default()
        };
        let client = CpuFeatures {
            avx_vnni: true,
            ..CpuFeatures::default()
        };
        let x86 = cfg!(target_arch = "x86_64");
        assert_eq!(ReduceRange::Auto.resolve(&avx2), x86);
        assert!(!ReduceRange::Auto.resolve(&vnni));
        assert!(!ReduceRange::Auto.resolve(&client));
        for cpu in [avx2, vnni, client] {
            assert!(ReduceRange::On.resolve(&cpu));
            assert!(!ReduceRange::Off.resolve(&cpu));
        }
        assert!(ReduceRange::Auto
            .explain(&vnni)
            .starts_with("int8 weights in 8 bits (--reduce-range auto: this CPU has AVX512_VNNI"));
        if x86 {
            assert!(ReduceRange::Auto
                .explain(&avx2)
                .starts_with("int8 weights in 7 bits (--reduce-range auto: this CPU has no int8"));
        }
        assert_eq!(
            ReduceRange::Off.explain(&avx2),
            "int8 weights in 8 bits (--reduce-range off)"
        );
    }

    /// Hand-computed cases: channel [0.5, -1.27, 0.01] has max 1.27, scale 0.01, values 50, -127, 1;
    /// a channel of zeros keeps scale 1; 7 bits divide by 63.
    #[test]
    fn weights_are_symmetric_per_output_channel() {
        let q = quantize_weight(&[0.5, -1.27, 0.01, 0.0, 0.0, 0.0], 2, false);
        assert_eq!(q.values, [50, -127, 1, 0, 0, 0]);
        assert!((q.scales[0] - 0.01).abs() < 1e-8, "{:?}", q.scales);
        assert_eq!(q.scales[1], 1.0);
        let r = quantize_weight(&[0.63, -0.315], 1, true);
        assert_eq!(r.values, [63, -32]);
        assert!((r.scales[0] - 0.01).abs() < 1e-8);
        // Half to even: 0.5 steps round to the even neighbour (scale 2^-7, exact in float).
        let h = quantize_weight(&[0.9921875, 0.00390625, 0.01171875], 1, false);
        assert_eq!(h.scales, [0.0078125]);
        assert_eq!(h.values, [127, 0, 2]);
    }

    /// A bias of 0.3 with input scale 0.5 and weight scale 0.01 is 60 steps of 0.005.
    #[test]
    fn biases_are_int32_in_input_times_weight_steps() {
        let (v, s) = quantize_bias(&[0.3, -0.0499], 0.5, &[0.01, 0.02]);
        assert_eq!(v, [60, -5]);
        assert_eq!(s, [0.005, 0.01]);
    }

    /// A non-negative range has zero point 0; the preprocessed input's range -123.68..151.061 maps
    /// 0.0 to step 115 (123.68 / (274.741 / 255) = 114.79); an empty range gets scale 1.
    #[test]
    fn activation_ranges_hold_zero_exactly() {
        let a = ActivationQuant::of_range(0.0, 25.5);
        assert_eq!((a.scale, a.zero_point), (0.1, 0));
        let (lo, hi) = input_range();
        let i = ActivationQuant::of_range(lo, hi);
        assert_eq!(i.zero_point, 115);
        assert!((i.scale - 274.741 / 255.0).abs() < 1e-5, "{}", i.scale);
        assert_eq!(ActivationQuant::of_range(0.0, 0.0).scale, 1.0);
    }
}
