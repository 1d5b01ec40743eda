//! Calibration of an int8 export: the float model is run on calibration images with the tensors that
//! feed each quantized node added as outputs ([`CalibrationPoint`]), their values are summarised
//! ([`Stats`]: minimum, maximum and, for the histogram methods, a histogram), and each summary gives
//! the range that the point's uint8 quantization covers ([`Calibration::range`]).
//!
//! Three methods, as onnxruntime's quantizer and TensorRT name them:
//! - `minmax`: the largest value seen (no clipping; one outlier widens every step);
//! - `percentile`: the value below which [`PERCENTILE`] of all values fall (outliers clipped);
//! - `entropy`: the threshold whose uint8 histogram is closest to the float histogram in
//!   Kullback-Leibler divergence (TensorRT's entropy calibration, Migacz 2017, "8-bit Inference with
//!   TensorRT"), over [`HISTOGRAM_BINS`] bins.

use crate::arch::{Arch, BaseLayer, HeadLayer, IMAGENET_BGR_MEANS};
use crate::error::{Error, Result};

/// Bins of a calibration histogram.
pub const HISTOGRAM_BINS: usize = 2048;
/// Share of all values (in percent) below the range the `percentile` method keeps: onnxruntime's
/// default for its percentile calibration.
pub const PERCENTILE: f64 = 99.999;
/// Quantization levels of a uint8 activation above its zero point of 0: the entropy method compares
/// the float histogram with one of this many levels.
const UINT8_LEVELS: usize = 255;

/// How calibration turns the values of a tensor into the range its uint8 quantization covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Calibration {
    /// The largest value seen.
    #[value(name = "minmax")]
    MinMax,
    /// The 99.999th percentile of the values (onnxruntime's default percentile).
    Percentile,
    /// The threshold that minimises the Kullback-Leibler divergence between the float and the
    /// quantized histogram (TensorRT's entropy calibration).
    Entropy,
}

impl Calibration {
    /// The name on the command line and in the model's metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Calibration::MinMax => "minmax",
            Calibration::Percentile => "percentile",
            Calibration::Entropy => "entropy",
        }
    }

    /// Whether the method needs histograms (not only the extremes).
    fn needs_histogram(self) -> bool {
        self != Calibration::MinMax
    }

    /// The upper end of the range that the quantization of a tensor of non-negative values with
    /// `stats` covers (its lower end is 0).
    pub fn range(self, stats: &Stats) -> f32 {
        let hist = stats.histogram.as_ref().filter(|h| h.total > 0);
        match (self, hist) {
            (Calibration::Percentile, Some(h)) => h.percentile(PERCENTILE).min(stats.max),
            (Calibration::Entropy, Some(h)) => h.entropy_threshold(UINT8_LEVELS).min(stats.max),
            _ => stats.max,
        }
    }
}

impl std::fmt::Display for Calibration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a quantized activation holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointKind {
    /// The preprocessed image (BGR pixels minus the ImageNet means): signed, its range known from
    /// the preprocessing ([`input_range`]), not calibrated.
    Input,
    /// The output of a ReLU (or of pooling and normalising such outputs): 0 or more.
    NonNegative,
}

/// A float tensor of the exported graph whose values an int8 export quantizes: the input of a Conv
/// or Gemm, or the output of one (which feeds the next after max pooling or flattening, which keep
/// the values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationPoint {
    /// The tensor's name in the float graph (`preprocess/out`, `base/block1_conv1/relu`, ...).
    pub name: String,
    /// What it holds.
    pub kind: PointKind,
}

/// The calibration points of `arch`'s graph, in graph order: the preprocessed input, each conv
/// layer's ReLU output, with global max pooling the normalised features (`head/pooled`), and the
/// ReLU output of each dense layer but the last (whose logits stay float).
pub fn calibration_points(arch: &Arch) -> Vec<CalibrationPoint> {
    let point = |name: String, kind| CalibrationPoint { name, kind };
    let mut points = vec![point("preprocess/out".into(), PointKind::Input)];
    points.extend(arch.base.iter().filter_map(|l| match l {
        BaseLayer::Conv { name, .. } => {
            Some(point(format!("base/{name}/relu"), PointKind::NonNegative))
        }
        BaseLayer::MaxPool { .. } => None,
    }));
    if arch.pooling == crate::arch::Pooling::Max {
        points.push(point("head/pooled".into(), PointKind::NonNegative));
    }
    let linear: Vec<&str> = arch
        .head
        .iter()
        .filter_map(|l| match l {
            HeadLayer::Linear { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if let Some((_, hidden)) = linear.split_last() {
        points.extend(
            hidden
                .iter()
                .map(|n| point(format!("head/{n}_relu"), PointKind::NonNegative)),
        );
    }
    points
}

/// The range of the preprocessed input, from the preprocessing alone: pixels 0..255 minus the
/// ImageNet BGR means (103.939, 116.779, 123.68), so -123.68 to 151.061.
pub fn input_range() -> (f32, f32) {
    let lo = IMAGENET_BGR_MEANS.iter().copied().fold(f32::MIN, f32::max);
    let hi = 255.0 - IMAGENET_BGR_MEANS.iter().copied().fold(f32::MAX, f32::min);
    (-lo, hi)
}

/// A histogram of non-negative values over [0, `top`) in [`HISTOGRAM_BINS`] equal bins, whose top
/// doubles (merging pairs of bins) when a larger value arrives, so that it needs one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Counts per bin.
    pub counts: Vec<u64>,
    /// Upper end of the last bin: a power of two.
    pub top: f32,
    /// Values counted.
    pub total: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; HISTOGRAM_BINS],
            top: 0.0,
            total: 0,
        }
    }

    /// Counts `values` (non-negative), after widening the range to hold `max`, their largest.
    fn add(&mut self, values: &[f32], max: f32) {
        if self.top == 0.0 {
            self.top = max.max(f32::MIN_POSITIVE).log2().ceil().exp2();
        }
        while max >= self.top {
            let merged: Vec<u64> = self.counts.chunks(2).map(|p| p.iter().sum()).collect();
            self.counts.fill(0);
            self.counts[..merged.len()].copy_from_slice(&merged);
            self.top *= 2.0;
        }
        let per = HISTOGRAM_BINS as f32 / self.top;
        for &v in values {
            let bin = ((v.max(0.0) * per) as usize).min(HISTOGRAM_BINS - 1);
            self.counts[bin] += 1;
        }
        self.total += values.len() as u64;
    }

    /// Width of one bin.
    fn width(&self) -> f32 {
        self.top / HISTOGRAM_BINS as f32
    }

    /// The upper edge of the first bin at which `percent` of the values are counted.
    pub fn percentile(&self, percent: f64) -> f32 {
        let want = (self.total as f64 * percent / 100.0).ceil() as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return (i + 1) as f32 * self.width();
            }
        }
        self.top
    }

    /// The threshold (an upper bin edge) whose quantization into `levels` steps loses the least
    /// information: for each candidate end bin `i` from `levels` on, the histogram clipped at `i`
    /// (the counts above folded into bin `i - 1`) is compared, by Kullback-Leibler divergence, with
    /// that histogram merged into `levels` groups and spread back over each group's non-empty bins.
    pub fn entropy_threshold(&self, levels: usize) -> f32 {
        let last = self
            .counts
            .iter()
            .rposition(|&c| c > 0)
            .map_or(levels, |i| i + 1)
            .max(levels);
        let mut best = (f64::INFINITY, last);
        for end in levels..=last {
            let kl = clipped_divergence(&self.counts, end, levels);
            if kl < best.0 {
                best = (kl, end);
            }
        }
        best.1 as f32 * self.width()
    }
}

/// Kullback-Leibler divergence between `counts[..end]` with the counts above folded into the last
/// bin (P) and P merged into `levels` groups of bins and spread back evenly over each group's
/// non-empty bins (Q).
fn clipped_divergence(counts: &[u64], end: usize, levels: usize) -> f64 {
    let mut p: Vec<f64> = counts[..end].iter().map(|&c| c as f64).collect();
    let outliers: u64 = counts[end..].iter().sum();
    if let Some(last) = p.last_mut() {
        *last += outliers as f64;
    }
    let mut q = vec![0f64; end];
    for g in 0..levels {
        let (lo, hi) = (g * end / levels, (g + 1) * end / levels);
        // The group's mass, from the clipped histogram but with the folded outliers left out, as
        // TensorRT does: the quantized histogram cannot represent them.
        let mass: f64 = (lo..hi).map(|i| counts[i] as f64).sum();
        let nonzero = (lo..hi).filter(|&i| counts[i] > 0).count();
        if nonzero > 0 {
            for i in (lo..hi).filter(|&i| counts[i] > 0) {
                q[i] = mass / nonzero as f64;
            }
        }
    }
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp == 0.0 || sq == 0.0 {
        return f64::INFINITY;
    }
    p.iter()
        .zip(&q)
        .filter(|(&a, _)| a > 0.0)
        .map(|(&a, &b)| {
            let (a, b) = (a / sp, b / sq);
            if b == 0.0 {
                // A value the quantized histogram cannot hold: heavily penalised, not infinite, so
                // that a candidate can still win on the rest.
                a * (a / 1e-12).ln()
            } else {
                a * (a / b).ln()
            }
        })
        .sum()
}

/// What calibration keeps of one point's values over all calibration images.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// Histogram of the values, for the methods that need one.
    pub histogram: Option<Histogram>,
}

impl Stats {
    /// No values yet; with a histogram when `method` needs one.
    pub fn new(method: Calibration) -> Self {
        Stats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            histogram: method.needs_histogram().then(Histogram::new),
        }
    }

    /// Counts `values`.
    ///
    /// # Errors
    /// [`Error::Usage`] when a value is not finite (the float model overflowed on a calibration
    /// image).
    pub fn add(&mut self, values: &[f32]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in values {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Usage(
                "calibration: the float model gives a value that is not finite".into(),
            ));
        }
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        if let Some(h) = self.histogram.as_mut() {
            h.add(values, hi.max(0.0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The points of the seed recipe's graph: the input, 13 conv outputs, the first dense layer's
    /// output; with max pooling also the pooled features.
    #[test]
    fn points_follow_the_architecture() {
        let flat = calibration_points(&Arch::vgg16_transfer(32, 10));
        assert_eq!(flat.len(), 15);
        assert_eq!(flat[0].name, "preprocess/out");
        assert_eq!(flat[0].kind, PointKind::Input);
        assert_eq!(flat[1].name, "base/block1_conv1/relu");
        assert_eq!(flat[13].name, "base/block5_conv3/relu");
        assert_eq!(flat[14].name, "head/dense1_relu");
        let max = calibration_points(&Arch::vgg16_pooled(384, 2, crate::arch::Pooling::Max));
        assert_eq!(max.len(), 16);
        assert_eq!(max[14].name, "head/pooled");
        assert_eq!(input_range(), (-123.68, 255.0 - 103.939));
    }

    /// Values of 0, 1, ..., 999 (each once) and one outlier at 10,000: minmax keeps the outlier,
    /// the 99.9th percentile stops at 1,000 (hand count: 999 of 1,001 values lie below 1,000), and
    /// the histogram, grown from 1,024 to 16,384, lost no value.
    #[test]
    fn minmax_keeps_the_outlier_and_the_percentile_drops_it() {
        let mut s = Stats::new(Calibration::Percentile);
        let values: Vec<f32> = (0..1000).map(|v| v as f32).collect();
        s.add(&values).unwrap();
        s.add(&[10_000.0]).unwrap();
        assert_eq!((s.min, s.max), (0.0, 10_000.0));
        assert_eq!(Calibration::MinMax.range(&s), 10_000.0);
        let h = s.histogram.as_ref().unwrap();
        assert_eq!((h.top, h.total), (16_384.0, 1001));
        assert_eq!(h.counts.iter().sum::<u64>(), 1001);
        // Bins of 8: 999 values below 1,000 fill bins 0..=124; the 99.9th percentile wants 1,000
        // values (ceil of 999.999), which bin 124 (values 992..999) completes at its edge 1,000.
        assert_eq!(h.percentile(99.9), 1000.0);
        assert_eq!(h.percentile(100.0), 10_008.0);
        // With all values, the percentile range is at most the largest value.
        assert_eq!(
            Calibration::Percentile.range(&s),
            10_000f32.min(s.max).min(h.percentile(PERCENTILE))
        );
        assert!(Stats::new(Calibration::MinMax).add(&[f32::NAN]).is_err());
    }

    /// Entropy keeps the bulk of a decaying distribution (activations after a ReLU are roughly
    /// exponential) and clips a thin tail: for 100,000 values exponential with mean 10 (largest
    /// 122) plus five at 1,000, the threshold lies far below the outliers and above the bulk's
    /// median (6.9). On a uniform bulk, which merging bins does not distort, KL divergence does not
    /// prefer any range: that is why percentile is the default.
    #[test]
    fn entropy_clips_a_thin_tail() {
        let n = 100_000;
        let bulk: Vec<f32> = (0..n)
            .map(|i| -(1.0 - (i as f64 + 0.5) / n as f64).ln() as f32 * 10.0)
            .collect();
        let mut s = Stats::new(Calibration::Entropy);
        s.add(&bulk).unwrap();
        s.add(&[1000.0; 5]).unwrap();
        let t = Calibration::Entropy.range(&s);
        assert!((20.0..=200.0).contains(&t), "{t}");
        assert_eq!(Calibration::MinMax.range(&s), 1000.0);
    }
}
