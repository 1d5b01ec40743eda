//! `pipe explain`: class-activation heatmaps (Grad-CAM, Selvaraju et al. 2017) of a run's model over
//! images.
//!
//! For an image, the last conv block's output `A` (`[512, h, w]`, `h = w = S/16`) and the gradient
//! `G` of the chosen class's logit with respect to it come from libtorch's autograd; each channel is
//! weighted by the mean of its gradient over the map, and the map is `ReLU(Σ_k mean(G_k) · A_k)`,
//! scaled to 0..1 by its maximum. Where the map is hot, the features that raise the class's score
//! are.

use super::device::resolve_device;
use super::model::{Base, Head};
use crate::config::{TrainConfig, TrainDevice};
use crate::data::{caffe_preprocess, load_image};
use crate::error::{Error, Result};
use crate::run;
use crate::weights::{load_base, load_safetensors};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// The heatmap of one image.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The image file.
    pub path: PathBuf,
    /// The class explained (the predicted one unless asked otherwise).
    pub class: String,
    /// The model's probability of that class, 0..1.
    pub probability: f32,
    /// The predicted class.
    pub predicted: String,
    /// Side of the map, cells (`S/16`).
    pub map_side: usize,
    /// The map, row-major `[map_side, map_side]`, 0..1 (1 at its maximum; all 0 when no feature
    /// raises the class's score).
    pub map: Vec<f32>,
    /// Row and column of the map's hottest cell.
    pub hottest: (usize, usize),
    /// The image as the model sees it (decoded, resized as the run's `--resize` says), HWC RGB
    /// `u8`, `input_size` square.
    #[serde(skip)]
    pub pixels: Vec<u8>,
    /// The map upsampled (bilinear) to the input size, row-major, 0..1.
    #[serde(skip)]
    pub heat: Vec<f32>,
}

/// A run's model loaded for explanations.
pub struct Explainer {
    config: TrainConfig,
    base: Base,
    head: Head,
    _vs: nn::VarStore,
}

impl Explainer {
    /// Loads the run in `run_dir` (its base weights, tuned ones for a fine-tuned run, and its head) on
    /// `device`.
    ///
    /// # Errors
    /// A missing or unfinished run, weights that do not match, an unavailable device, libtorch
    /// errors.
    pub fn open(run_dir: &Path, device: TrainDevice) -> Result<Self> {
        let device = resolve_device(device)?;
        let config: TrainConfig = crate::util::read_json(&run_dir.join(run::CONFIG_FILE))?;
        let arch = config.arch(config.classes.len());
        let (weights, _) = load_base(&run::base_weights(run_dir, &config), &arch, true)?;
        let base = Base::new(&arch, &weights, device)?;
        let (params, _) = load_safetensors(&run_dir.join(run::HEAD_FILE), &arch.head_params())?;
        let vs = nn::VarStore::new(device);
        let head = Head::new(&vs.root(), &arch);
        head.load(&params)?;
        Ok(Explainer {
            config,
            base,
            head,
            _vs: vs,
        })
    }

    /// The run's class names.
    pub fn classes(&self) -> &[String] {
        &self.config.classes
    }

    /// The heatmap of the image file `path` (decoded as the run decodes its images) for class
    /// `class` (an index of [`Explainer::classes`]), or for the predicted class.
    ///
    /// # Errors
    /// [`Error::InvalidFile`] / [`Error::Io`] naming an image that cannot be read or decoded;
    /// libtorch errors.
    pub fn explain(&self, path: &Path, class: Option<usize>) -> Result<Explanation> {
        let spec = super::images::run_spec(&self.config);
        let size = self.config.input_size;
        let pixels = load_image(path, &spec)?;
        let x = Tensor::from_slice(&caffe_preprocess(&pixels, 1, size)).f_reshape([
            1,
            3,
            size as i64,
            size as i64,
        ])?;
        let (a, features) = self.base.last_block(&x)?;
        let logits = self.head.forward(&features, false)?;
        let probabilities = Vec::<f32>::try_from(
            &logits
                .f_softmax(-1, Kind::Float)?
                .f_to_device(Device::Cpu)?
                .f_flatten(0, -1)?,
        )?;
        let predicted = argmax(&probabilities);
        let class = class.unwrap_or(predicted);
        let score = logits.f_select(1, class as i64)?.f_sum(Kind::Float)?;
        let grads = Tensor::f_run_backward(&[score], &[&a], false, false)?;
        let g = grads
            .first()
            .ok_or_else(|| Error::Torch("no gradient for the last conv block".into()))?;
        let weights = g.f_mean_dim([2i64, 3].as_slice(), true, Kind::Float)?;
        let map = a
            .f_detach()?
            .f_mul(&weights)?
            .f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?
            .f_relu()?;
        let top = map.f_max()?.f_double_value(&[])?;
        let map = if top > 0.0 {
            map.f_div_scalar(top)?
        } else {
            map
        };
        let heat = map.f_upsample_bilinear2d([size as i64, size as i64], false, None, None)?;
        let to_vec = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(Vec::<f32>::try_from(
                &t.f_to_device(Device::Cpu)?
                    .f_contiguous()?
                    .f_flatten(0, -1)?,
            )?)
        };
        let (map, heat) = (to_vec(&map)?, to_vec(&heat)?);
        let map_side = (map.len() as f64).sqrt().round() as usize;
        let hot = argmax(&map);
        Ok(Explanation {
            path: path.to_path_buf(),
            class: self.config.classes[class].clone(),
            probability: probabilities[class],
            predicted: self.config.classes[predicted].clone(),
            map_side,
            hottest: (hot / map_side.max(1), hot % map_side.max(1)),
            map,
            pixels,
            heat,
        })
    }
}

/// Index of the largest value (the first on ties).
fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
        .unwrap_or(0)
}

/// The explanation drawn over its image: each pixel half the image's, half the heat's colour on the
/// jet scale (dark blue at 0, green at 0.5, dark red at 1), the square image enlarged (nearest neighbour) to at least
/// 224 pixels so that a CIFAR-10 image stays visible. HWC RGB `u8` and the side, pixels.
pub fn overlay(e: &Explanation) -> (Vec<u8>, usize) {
    let size = (e.heat.len() as f64).sqrt().round() as usize;
    let scale = 224usize.div_ceil(size.max(1)).max(1);
    let side = size * scale;
    let jet = |v: f32| {
        let c = |x: f32| (1.5 - x.abs()).clamp(0.0, 1.0);
        [c(4.0 * v - 3.0), c(4.0 * v - 2.0), c(4.0 * v - 1.0)]
    };
    let mut out = vec![0u8; side * side * 3];
    for y in 0..side {
        for x in 0..side {
            let i = (y / scale) * size + x / scale;
            let colour = jet(e.heat.get(i).copied().unwrap_or(0.0));
            for c in 0..3 {
                let image = f32::from(e.pixels.get(i * 3 + c).copied().unwrap_or(0));
                out[(y * side + x) * 3 + c] = (0.5 * image + 0.5 * 255.0 * colour[c]).round() as u8;
            }
        }
    }
    (out, side)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The jet scale: 0 is dark blue, 0.5 green, 1 dark red; the overlay is half image, half colour,
    /// enlarged to 224 pixels (112x for a 2-pixel image).
    #[test]
    fn overlay_blends_the_image_with_the_jet_colour_of_the_heat() {
        let e = Explanation {
            path: PathBuf::new(),
            class: String::new(),
            probability: 0.0,
            predicted: String::new(),
            map_side: 1,
            map: vec![0.0],
            hottest: (0, 0),
            pixels: vec![100; 2 * 2 * 3],
            heat: vec![0.0, 0.5, 1.0, 0.25],
        };
        let (out, side) = overlay(&e);
        assert_eq!(side, 224);
        let at = |x: usize, y: usize| &out[(y * side + x) * 3..(y * side + x) * 3 + 3];
        // jet(v) = clamp(1.5 - |4v - k|) for k = 3, 2, 1; out = 0.5 * 100 + 0.5 * 255 * jet.
        assert_eq!(at(0, 0), [50, 50, 114]);
        assert_eq!(at(223, 0), [114, 178, 114]);
        assert_eq!(at(0, 223), [114, 50, 50]);
        assert_eq!(at(223, 223), [50, 114, 178]);
    }
}
