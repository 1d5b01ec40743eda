//! Feature extraction through the frozen base, with an on-disk cache keyed by what determines the
//! features: base-weights fingerprint, preprocessing, input size and the decoded pixels themselves.

use super::model::{from_tch, to_tch, Base};
use crate::arch::Arch;
use crate::config::{TrainConfig, TrainEnv};
use crate::contract::CAFFE_PREPROCESSING;
use crate::data::{caffe_preprocess, DataSource, LoadedSplit, Split};
use crate::error::{Error, Result};
use crate::weights::{hex, load_base, load_safetensors, save_safetensors};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Tensor};

/// Labels and names of one split's images, without pixels.
#[derive(Debug, Clone)]
pub struct SplitInfo {
    /// Folder the names are relative to.
    pub root: PathBuf,
    /// Per image: relative path or `<batch file>#<record>`.
    pub names: Vec<String>,
    /// Per image: label.
    pub labels: Vec<usize>,
}

/// Base features of the training and test images, on the CPU.
pub struct Features {
    /// Class names.
    pub classes: Vec<String>,
    /// The training images.
    pub train: SplitInfo,
    /// The test images.
    pub test: SplitInfo,
    /// Training features `[n_train, feature_dim]`, float32.
    pub train_x: Tensor,
    /// Test features `[n_test, feature_dim]`, float32.
    pub test_x: Tensor,
    /// Validation images carved out of the training images by [`carve_validation`] (`--val-split`).
    pub val: Option<SplitInfo>,
    /// Validation features `[n_val, feature_dim]`, float32, with `val`.
    pub val_x: Option<Tensor>,
    /// A few test images for `predictions.png`: index into the test split and HWC RGB `u8` pixels at
    /// the input size (see [`preview_indices`]).
    pub test_preview: Vec<(usize, Vec<u8>)>,
    /// Side of the preview images, pixels (the input size).
    pub preview_size: usize,
    /// Base-weights fingerprint.
    pub fingerprint: String,
    /// Images that went through the base in this call (0 when both splits came from the cache).
    pub extracted: usize,
    /// Seconds spent in extraction.
    pub extract_seconds: f64,
}

/// Cache key of a split's features: SHA-256 over a format tag, the weights fingerprint, the
/// preprocessing description, the input size, the image count and the decoded pixels.
pub fn cache_key(fingerprint: &str, split: &LoadedSplit) -> String {
    let mut h = Sha256::new();
    h.update(b"pipe-features-v1\0");
    h.update(fingerprint.as_bytes());
    h.update(CAFFE_PREPROCESSING.as_bytes());
    h.update((split.size as u64).to_le_bytes());
    h.update((split.len() as u64).to_le_bytes());
    h.update(&split.pixels);
    hex(&h.finalize())
}

fn progress_bar(len: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "extracting features [{bar:32}] {pos}/{len} images  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

/// Runs the frozen base over `pixels` (NHWC RGB u8, `n` images) in batches, returning features
/// `[n, feature_dim]` float32 on the CPU.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn extract(
    base: &Base,
    pixels: &[u8],
    n: usize,
    batch: usize,
    pb: &ProgressBar,
) -> Result<Tensor> {
    let s = base.input_size;
    let per = s * s * 3;
    let mut parts = Vec::new();
    let _guard = tch::no_grad_guard();
    for start in (0..n).step_by(batch.max(1)) {
        let m = batch.min(n - start);
        let x = caffe_preprocess(&pixels[start * per..(start + m) * per], m, s);
        let x = Tensor::f_from_slice(&x)?.f_view([m as i64, 3, s as i64, s as i64])?;
        parts.push(base.features(&x)?.f_to_device(Device::Cpu)?);
        pb.inc(m as u64);
    }
    if parts.is_empty() {
        return Err(Error::Usage("no images to extract features from".into()));
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

fn info(s: &LoadedSplit) -> SplitInfo {
    SplitInfo {
        root: s.root.clone(),
        names: s.names.clone(),
        labels: s.labels.clone(),
    }
}

/// The features of `split`: read from `cache_dir` when a valid entry exists, else computed by `make`
/// and stored there (atomically). Returns the features and whether `make` ran.
///
/// # Errors
/// Whatever `make` returns; an unwritable cache folder.
fn cached(
    split: &LoadedSplit,
    fingerprint: &str,
    dim: usize,
    cache_dir: Option<&Path>,
    make: impl FnOnce() -> Result<Tensor>,
) -> Result<(Tensor, bool)> {
    let path = cache_dir.map(|d| d.join(format!("{}.safetensors", cache_key(fingerprint, split))));
    if let Some(p) = path.as_ref().filter(|p| p.is_file()) {
        match load_safetensors(p, &[("features".to_string(), vec![split.len(), dim])]) {
            Ok((t, _)) => return Ok((to_tch(&t[0], Device::Cpu)?, false)),
            Err(e) => {
                eprintln!("warning: ignoring unreadable feature cache ({e}); extracting again")
            }
        }
    }
    let x = make()?;
    if let Some(p) = path {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let meta = HashMap::from([("fingerprint".to_string(), fingerprint.to_string())]);
        save_safetensors(&p, &[from_tch("features", &x)?], meta)?;
    }
    Ok((x, true))
}

/// Loads both splits of `config`'s data (its subsets, at its input size), and their base features
/// from `env`'s cache or by extraction on `device` in `env`'s batches (then stored in the cache). The
/// tch base is built only when something must be extracted.
///
/// # Errors
/// Data, weights or libtorch errors; differing class lists between the splits.
pub fn prepare_features(config: &TrainConfig, env: &TrainEnv, device: Device) -> Result<Features> {
    let (train, test) = load_train_test(
        &config.data,
        config.train_limit,
        config.test_limit,
        config.input_size,
    )?;
    let arch = Arch::vgg16_transfer(config.input_size, train.classes.len());
    let (weights, fingerprint) = load_base(&config.weights, &arch, env.allow_unverified)?;
    let mut base: Option<Base> = None;
    let t0 = Instant::now();
    let pb = progress_bar(0, env.progress);
    let mut features = |split: &LoadedSplit| -> Result<(Tensor, bool)> {
        cached(
            split,
            &fingerprint,
            arch.feature_dim(),
            env.cache_dir.as_deref(),
            || {
                if base.is_none() {
                    base = Some(Base::new(&arch, &weights, device)?);
                }
                let b = base
                    .as_ref()
                    .ok_or_else(|| Error::Torch("base not built".into()))?;
                pb.inc_length(split.len() as u64);
                extract(b, &split.pixels, split.len(), env.extract_batch_size, &pb)
            },
        )
    };
    let (train_x, a) = features(&train)?;
    let (test_x, b) = features(&test)?;
    pb.finish_and_clear();
    let extracted = usize::from(a) * train.len() + usize::from(b) * test.len();
    let test_preview = preview_pixels(&test);
    Ok(Features {
        classes: train.classes.clone(),
        train: info(&train),
        test: info(&test),
        train_x,
        test_x,
        val: None,
        val_x: None,
        test_preview,
        preview_size: test.size,
        fingerprint,
        extracted,
        extract_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Loads the training and test splits of `data` (at most `train_limit` / `test_limit` images, 0 = all,
/// resized to `size`x`size`) and checks that both have the same class folders, at least 2.
///
/// # Errors
/// Data errors ([`DataSource::load`]); class lists that differ between the splits; fewer than 2
/// classes.
pub fn load_train_test(
    data: &Path,
    train_limit: usize,
    test_limit: usize,
    size: usize,
) -> Result<(LoadedSplit, LoadedSplit)> {
    let source = DataSource::detect(data)?;
    let train = source.load(Split::Train, train_limit, size)?;
    let test = source.load(Split::Test, test_limit, size)?;
    if train.classes != test.classes {
        return Err(Error::invalid(
            data,
            format!(
                "class folders differ between train {:?} and test {:?}",
                train.classes, test.classes
            ),
        ));
    }
    if train.classes.len() < 2 {
        return Err(Error::invalid(
            &train.root,
            format!("needs at least 2 classes, found {}", train.classes.len()),
        ));
    }
    Ok((train, test))
}

/// The test images drawn in `predictions.png` ([`preview_indices`]): each index into `test` with its
/// pixels (NHWC RGB u8, `size`x`size`x3).
pub fn preview_pixels(test: &LoadedSplit) -> Vec<(usize, Vec<u8>)> {
    let per = test.size * test.size * 3;
    preview_indices(&test.labels, test.classes.len(), PREVIEW_IMAGES)
        .into_iter()
        .filter_map(|i| {
            test.pixels
                .get(i * per..(i + 1) * per)
                .map(|p| (i, p.to_vec()))
        })
        .collect()
}

/// Number of test images drawn in `predictions.png` (a 2x5 grid, as in the Keras seed).
pub const PREVIEW_IMAGES: usize = 10;

/// Which test images to draw: the first image of each class in turn (so that a 10-class set shows one
/// of each), then further images spread evenly over the split, up to `k` indices in ascending order.
pub fn preview_indices(labels: &[usize], classes: usize, k: usize) -> Vec<usize> {
    let n = labels.len();
    let k = k.min(n);
    let mut chosen: Vec<usize> = (0..classes)
        .filter_map(|c| labels.iter().position(|&l| l == c))
        .take(k)
        .collect();
    let spread = (0..k).map(|j| j * n / k.max(1));
    for cand in spread.chain(0..n) {
        if chosen.len() >= k {
            break;
        }
        if !chosen.contains(&cand) {
            chosen.push(cand);
        }
    }
    chosen.sort_unstable();
    chosen
}

/// Splits image indices `0..labels.len()` into (training, validation) for `--val-split`: per class,
/// `round(fraction * count)` images chosen by a ChaCha8 shuffle seeded with `seed` go to validation (at
/// least one per class with two or more images, never a whole class). Both lists are ascending.
///
/// # Errors
/// [`Error::Usage`] when `fraction` is not in (0, 1) or a split would be empty.
pub fn stratified_holdout(
    labels: &[usize],
    classes: usize,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::Usage(format!(
            "--val-split must be between 0 and 1 (exclusive), got {fraction}"
        )));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x7661_6c5f_7370_6c74);
    let mut is_val = vec![false; labels.len()];
    for c in 0..classes {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        let mut k = (fraction * idx.len() as f64).round() as usize;
        if k == 0 && idx.len() >= 2 {
            k = 1;
        }
        idx.shuffle(&mut rng);
        for &i in idx.iter().take(k.min(idx.len().saturating_sub(1))) {
            is_val[i] = true;
        }
    }
    let (val_idx, train_idx): (Vec<usize>, Vec<usize>) =
        (0..labels.len()).partition(|&i| is_val[i]);
    if val_idx.is_empty() || train_idx.is_empty() {
        return Err(Error::Usage(format!(
            "--val-split {fraction} of {} training images leaves an empty split",
            labels.len()
        )));
    }
    Ok((train_idx, val_idx))
}

/// Moves a class-stratified `fraction` (0..1) of the training images into a validation split
/// (`--val-split`, see [`stratified_holdout`]). Training and validation stay in the original order.
///
/// # Errors
/// As [`stratified_holdout`]; libtorch errors.
pub fn carve_validation(mut f: Features, fraction: f64, seed: u64) -> Result<Features> {
    let (train_idx, val_idx) =
        stratified_holdout(&f.train.labels, f.classes.len(), fraction, seed)?;
    let pick = |idx: &[usize]| -> Result<(SplitInfo, Tensor)> {
        let t = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
        Ok((
            SplitInfo {
                root: f.train.root.clone(),
                names: idx.iter().map(|&i| f.train.names[i].clone()).collect(),
                labels: idx.iter().map(|&i| f.train.labels[i]).collect(),
            },
            f.train_x.f_index_select(0, &t)?,
        ))
    };
    let (val, val_x) = pick(&val_idx)?;
    let (train, train_x) = pick(&train_idx)?;
    f.train = train;
    f.train_x = train_x;
    f.val = Some(val);
    f.val_x = Some(val_x);
    Ok(f)
}

/// Features `[n, feature_dim]` (CPU) of a single split (for `pipe evaluate`) through the base
/// `weights`, from `env`'s cache or by extraction on `device`.
///
/// # Errors
/// As [`prepare_features`].
pub fn split_features(
    split: &LoadedSplit,
    weights: &Path,
    arch: &Arch,
    env: &TrainEnv,
    device: Device,
) -> Result<Tensor> {
    let (w, fingerprint) = load_base(weights, arch, true)?;
    let cache_dir = env.cache_dir.as_deref();
    let (x, _) = cached(split, &fingerprint, arch.feature_dim(), cache_dir, || {
        let base = Base::new(arch, &w, device)?;
        let pb = progress_bar(split.len(), env.progress);
        let x = extract(
            &base,
            &split.pixels,
            split.len(),
            env.extract_batch_size,
            &pb,
        );
        pb.finish_and_clear();
        x
    })?;
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(size: usize, n: usize) -> LoadedSplit {
        LoadedSplit {
            classes: vec!["a".into(), "b".into()],
            root: "r".into(),
            names: (0..n).map(|i| i.to_string()).collect(),
            labels: (0..n).map(|i| i % 2).collect(),
            pixels: (0..n * size * size * 3).map(|i| (i % 251) as u8).collect(),
            size,
        }
    }

    /// The cache key changes with anything that changes the features: the weights, the input size,
    /// a single pixel; the same inputs give the same key.
    #[test]
    fn cache_key_changes_with_weights_size_and_pixels() {
        let s = split(32, 4);
        let key = cache_key("fp", &s);
        assert_eq!(key, cache_key("fp", &split(32, 4)));
        assert_eq!(key.len(), 64);
        assert_ne!(key, cache_key("fp2", &s), "weights fingerprint");
        // The same bytes read as one 64x64 image instead of four 32x32 ones.
        let mut big = s.clone();
        big.size = 64;
        big.labels.truncate(1);
        big.names.truncate(1);
        assert_eq!(big.pixels.len(), 64 * 64 * 3);
        assert_ne!(key, cache_key("fp", &big), "input size");
        let mut pixel = s.clone();
        pixel.pixels[1000] ^= 1;
        assert_ne!(key, cache_key("fp", &pixel), "one pixel");
        // Labels and names do not change the features, so not the key.
        let mut relabelled = s.clone();
        relabelled.labels.reverse();
        assert_eq!(key, cache_key("fp", &relabelled));
    }

    /// `--val-split`: per class round(fraction x count) images (at least one, never the whole class)
    /// go to validation; the two lists are disjoint, ascending, cover every image, and depend only on
    /// the seed.
    #[test]
    fn stratified_holdout_is_per_class_disjoint_and_seeded() {
        // Class c has 10 * (c + 1) images, except class 3 with 2 and class 4 with 1, interleaved.
        let counts = [10, 20, 30, 2, 1];
        let mut labels: Vec<usize> = counts
            .iter()
            .enumerate()
            .flat_map(|(c, &k)| std::iter::repeat_n(c, k))
            .collect();
        labels.sort_by_key(|&c| (c * 7919) % 13);
        let (train, val) = stratified_holdout(&labels, counts.len(), 0.1, 42).unwrap();
        let per_class = |idx: &[usize], c: usize| idx.iter().filter(|&&i| labels[i] == c).count();
        // round(0.1 x 10, 20, 30) = 1, 2, 3; 0 rounds up to 1 for the class of 2; the class of 1
        // image stays whole in training.
        let want = [1, 2, 3, 1, 0];
        for (c, &w) in want.iter().enumerate() {
            assert_eq!(per_class(&val, c), w, "class {c}");
            assert_eq!(per_class(&train, c), counts[c] - w, "class {c}");
        }
        assert!(train.windows(2).all(|w| w[0] < w[1]) && val.windows(2).all(|w| w[0] < w[1]));
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..labels.len()).collect::<Vec<_>>(),
            "disjoint, and the union is everything"
        );
        assert_eq!(
            stratified_holdout(&labels, counts.len(), 0.1, 42).unwrap(),
            (train, val.clone()),
            "same seed, same split"
        );
        let other = (1..20)
            .map(|seed| {
                stratified_holdout(&labels, counts.len(), 0.1, seed)
                    .unwrap()
                    .1
            })
            .any(|v| v != val);
        assert!(other, "another seed draws another split");
        // A half split of a large class.
        let (t, v) = stratified_holdout(&[0; 9], 1, 0.5, 1).unwrap();
        assert_eq!((t.len(), v.len()), (4, 5));
        for bad in [0.0, 1.0, -0.5, f64::NAN] {
            assert!(stratified_holdout(&labels, counts.len(), bad, 1).is_err());
        }
        // Nothing to hold out of single-image classes.
        assert!(stratified_holdout(&[0, 1], 2, 0.5, 1).is_err());
    }
}
