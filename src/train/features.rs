//! Feature extraction through the frozen base, with an on-disk cache keyed by what determines the
//! features: base-weights fingerprint, preprocessing, input size, resize policy and filter, and the
//! decoded pixels themselves.

use super::images::{RunImages, SplitInfo};
use super::model::{from_tch, to_tch, Base};
use crate::arch::{Arch, Pooling};
use crate::config::{ExtractEnv, TrainConfig};
use crate::contract::CAFFE_PREPROCESSING;
use crate::data::{caffe_preprocess, ImageSpec, LoadedSplit};
use crate::error::{Error, Result};
use crate::events::{Event, EventSink, Task, Warning};
use crate::shard::Shard;
use crate::weights::{hex, load_base, load_safetensors, save_safetensors};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Tensor};

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
    /// Validation images (a `--val-split` share of the training images, or a `val/` folder); `None`:
    /// the test split validates.
    pub val: Option<SplitInfo>,
    /// Validation features `[n_val, feature_dim]`, float32, with `val`.
    pub val_x: Option<Tensor>,
    /// Base-weights fingerprint.
    pub fingerprint: String,
    /// Images that went through the base in this call (0 when both splits came from the cache).
    pub extracted: usize,
    /// Seconds spent in extraction.
    pub extract_seconds: f64,
}

/// Cache key of a split's features: SHA-256 over a format tag, the weights fingerprint, the
/// preprocessing description, the input size, the resize policy and filter of `spec`, the pooling
/// (other than flatten), the image count and the decoded pixels.
pub fn cache_key(
    fingerprint: &str,
    spec: &ImageSpec,
    pooling: Pooling,
    split: &LoadedSplit,
) -> String {
    let mut h = Sha256::new();
    h.update(b"pipe-features-v2\0");
    h.update(fingerprint.as_bytes());
    h.update(CAFFE_PREPROCESSING.as_bytes());
    h.update((split.size as u64).to_le_bytes());
    for name in [spec.resize.as_str(), spec.filter.as_str()] {
        h.update(name.as_bytes());
        h.update(b"\0");
    }
    // Flattened features keep the keys they had before pooling was a choice.
    if pooling != Pooling::Flatten {
        h.update(b"pooling\0");
        h.update(pooling.as_str().as_bytes());
    }
    h.update((split.len() as u64).to_le_bytes());
    h.update(&split.pixels);
    hex(&h.finalize())
}

/// Progress of an extraction over several splits: [`Event::Progress`] of [`Task::Extract`], whose
/// total grows as each split's extraction starts.
struct ExtractProgress<'a> {
    events: &'a dyn EventSink,
    done: u64,
    total: u64,
}

impl<'a> ExtractProgress<'a> {
    fn new(events: &'a dyn EventSink) -> Self {
        ExtractProgress {
            events,
            done: 0,
            total: 0,
        }
    }

    /// `images` more to extract.
    fn add(&mut self, images: usize) {
        self.total += images as u64;
        self.advance(0);
    }

    /// `images` more extracted.
    fn advance(&mut self, images: usize) {
        self.done += images as u64;
        self.events.emit(Event::Progress {
            task: Task::Extract,
            done: self.done,
            total: self.total,
        });
    }

    /// The extraction has ended (only reported when it started).
    fn finish(&self) {
        if self.total > 0 {
            self.events.emit(Event::ProgressDone(Task::Extract));
        }
    }
}

/// Runs the frozen base over `pixels` (NHWC RGB u8, `n` images) in batches of `batch`, returning
/// features `[n, feature_dim]` float32 on the CPU; `progress` receives the images of each batch done.
///
/// # Errors
/// [`Error::Torch`] on a libtorch failure.
pub fn extract(
    base: &Base,
    pixels: &[u8],
    n: usize,
    batch: usize,
    progress: &mut dyn FnMut(usize),
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
        progress(m);
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

/// Where a split's features are cached: the folder (`None`: `--no-cache`), the weights fingerprint
/// and how the pixels were made; and where a cache entry that cannot be read is reported.
struct CacheSlot<'a> {
    dir: Option<&'a Path>,
    fingerprint: &'a str,
    spec: &'a ImageSpec,
    pooling: Pooling,
    events: &'a dyn EventSink,
}

/// The features of `split`: read from `slot` when a valid entry exists, else computed by `make`
/// and stored there (atomically). Returns the features and whether `make` ran.
///
/// # Errors
/// Whatever `make` returns; an unwritable cache folder.
fn cached(
    split: &LoadedSplit,
    slot: &CacheSlot,
    dim: usize,
    make: impl FnOnce() -> Result<Tensor>,
) -> Result<(Tensor, bool)> {
    let fingerprint = slot.fingerprint;
    let key = |d: &Path| {
        d.join(format!(
            "{}.safetensors",
            cache_key(fingerprint, slot.spec, slot.pooling, split)
        ))
    };
    let path = slot.dir.map(key);
    if let Some(p) = path.as_ref().filter(|p| p.is_file()) {
        match load_safetensors(p, &[("features".to_string(), vec![split.len(), dim])]) {
            Ok((t, _)) => return Ok((to_tch(&t[0], Device::Cpu)?, false)),
            Err(e) => slot.events.warn(Warning::Other(format!(
                "ignoring unreadable feature cache ({e}); extracting again"
            ))),
        }
    }
    if let Some(p) = &path {
        if let Some(x) = assemble_shards(p, split.len(), dim, slot)? {
            return Ok((x, false));
        }
    }
    let x = make()?;
    if let Some(p) = path {
        store(&p, &x, fingerprint)?;
    }
    Ok((x, true))
}

/// Writes features `x` to the cache file `path` (atomically), creating its folder.
///
/// # Errors
/// An unwritable cache folder.
fn store(path: &Path, x: &Tensor, fingerprint: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let meta = HashMap::from([("fingerprint".to_string(), fingerprint.to_string())]);
    save_safetensors(path, &[from_tch("features", x)?], meta)
}

/// The rows of a split of `n` images that shard `shard` extracts when the base runs in batches of
/// `batch`: part `shard` of the split's batches (whole batches, so that every batch is the one a
/// single process would run and the features are bitwise the same).
pub fn shard_rows(shard: Shard, n: usize, batch: usize) -> Range<usize> {
    let batch = batch.max(1);
    let batches = shard.range(n.div_ceil(batch));
    (batches.start * batch).min(n)..(batches.end * batch).min(n)
}

/// The file holding rows `rows` of the features whose whole cache file is `whole`
/// (`<key>.safetensors` → `<key>.rows-A-B.safetensors`).
fn rows_file(whole: &Path, rows: &Range<usize>) -> PathBuf {
    whole.with_extension(format!("rows-{}-{}.safetensors", rows.start, rows.end))
}

/// The row ranges of the shard files (`pipe train --extract-shard`) next to the cache file `whole`,
/// sorted.
fn shard_files(whole: &Path) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let (Some(dir), Some(stem)) = (whole.parent(), whole.file_stem().and_then(|s| s.to_str()))
    else {
        return found;
    };
    let prefix = format!("{stem}.rows-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for name in entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
    {
        let rows = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".safetensors"))
            .and_then(|ab| ab.split_once('-'));
        if let Some((a, b)) = rows {
            if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                if a < b {
                    found.push(a..b);
                }
            }
        }
    }
    found.sort_by_key(|r| (r.start, r.end));
    found
}

/// The features of a split of `n` images assembled from shard files next to the cache file `whole`
/// whose rows cover 0..n end to end, then stored as the whole cache file and those shard files
/// removed; `None` when the rows there do not cover the split, or one of them cannot be read
/// (reported).
///
/// # Errors
/// An unwritable cache folder.
fn assemble_shards(whole: &Path, n: usize, dim: usize, slot: &CacheSlot) -> Result<Option<Tensor>> {
    let files = shard_files(whole);
    let mut chain: Vec<Range<usize>> = Vec::new();
    let mut at = 0;
    while at < n {
        match files.iter().find(|r| r.start == at && r.end <= n) {
            Some(r) => {
                at = r.end;
                chain.push(r.clone());
            }
            None => return Ok(None),
        }
    }
    if chain.is_empty() {
        return Ok(None);
    }
    let mut parts = Vec::new();
    for rows in &chain {
        let file = rows_file(whole, rows);
        let shape = vec![rows.len(), dim];
        match load_safetensors(&file, &[("features".to_string(), shape)]) {
            Ok((t, _)) => parts.push(to_tch(&t[0], Device::Cpu)?),
            Err(e) => {
                slot.events.warn(Warning::Other(format!(
                    "ignoring the feature shards ({e}); extracting again"
                )));
                return Ok(None);
            }
        }
    }
    let x = Tensor::f_cat(&parts, 0)?;
    store(whole, &x, slot.fingerprint)?;
    for rows in &chain {
        let _ = std::fs::remove_file(rows_file(whole, rows));
    }
    slot.events.info(format!(
        "features of {n} images assembled from {} in the feature cache",
        crate::util::plural(chain.len(), "shard file")
    ));
    Ok(Some(x))
}

/// What `pipe train --extract-shard K/N` did with one split.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPart {
    /// `train`, `validation` or `test`.
    pub split: &'static str,
    /// The rows of the split this shard holds (its images in the run's order; empty when the split
    /// has fewer extraction batches than there are shards).
    pub rows: Range<usize>,
    /// The split's image count.
    pub of: usize,
    /// Whether this call ran the base (false: nothing to extract, or the shard or the whole split
    /// was already cached).
    pub extracted: bool,
}

/// Extracts shard `shard` of the features of each of `images`' splits (training, validation when
/// there is one, test) into `env`'s feature cache, as `<key>.rows-A-B.safetensors` next to the file
/// the whole split's features would have: rows [`shard_rows`] of the split, whole batches of
/// `env.extract_batch_size`. A split whose whole features or whose shard file is already cached is
/// left as it is. When the shards of a split cover it, the next [`prepare_features`] with the same
/// images and base assembles them into the split's cache file and extracts nothing; with the same
/// extraction batch size, its features are bitwise those one process extracts.
///
/// # Errors
/// `env` without a cache (`--no-cache`); weights or libtorch errors; an unwritable cache folder.
pub fn extract_shard(
    images: &RunImages,
    config: &TrainConfig,
    env: &ExtractEnv,
    shard: Shard,
    device: Device,
    events: &dyn EventSink,
) -> Result<Vec<ShardPart>> {
    let dir = env.cache().ok_or_else(|| {
        Error::Usage(
            "--extract-shard writes into the feature cache, which --no-cache turns off".into(),
        )
    })?;
    let arch = config.arch(images.list.classes.len());
    let (weights, fingerprint) = load_base(&config.weights, &arch, env.allow_unverified)?;
    let mut base: Option<Base> = None;
    let mut progress = ExtractProgress::new(events);
    let mut splits = vec![("train", &images.train)];
    splits.extend(images.val.as_ref().map(|v| ("validation", v)));
    splits.push(("test", &images.test));
    let mut done = Vec::new();
    for (name, split) in splits {
        let key = cache_key(&fingerprint, &images.spec, arch.pooling, split);
        let whole = dir.join(format!("{key}.safetensors"));
        let rows = shard_rows(shard, split.len(), env.extract_batch_size);
        let file = rows_file(&whole, &rows);
        let shape = vec![rows.len(), arch.feature_dim()];
        let cached = whole.is_file()
            || rows.is_empty()
            || load_safetensors(&file, &[("features".to_string(), shape)]).is_ok();
        if !cached {
            if base.is_none() {
                base = Some(Base::new(&arch, &weights, device)?);
            }
            let b = base
                .as_ref()
                .ok_or_else(|| Error::Torch("base not built".into()))?;
            let per = split.size * split.size * 3;
            progress.add(rows.len());
            let x = extract(
                b,
                &split.pixels[rows.start * per..rows.end * per],
                rows.len(),
                env.extract_batch_size,
                &mut |m| progress.advance(m),
            )?;
            store(&file, &x, &fingerprint)?;
        }
        done.push(ShardPart {
            split: name,
            rows,
            of: split.len(),
            extracted: !cached,
        });
    }
    progress.finish();
    Ok(done)
}

/// The base features of `images`' splits (training, validation when there is one, test) from `env`'s
/// cache, or by extraction on `device` in `env`'s batches (then stored in the cache), reporting the
/// extraction's progress to `events`. The tch base is built only when something must be extracted.
///
/// # Errors
/// Weights or libtorch errors; an unwritable cache folder.
pub fn prepare_features(
    images: &RunImages,
    config: &TrainConfig,
    env: &ExtractEnv,
    device: Device,
    events: &dyn EventSink,
) -> Result<Features> {
    let arch = config.arch(images.list.classes.len());
    let (weights, fingerprint) = load_base(&config.weights, &arch, env.allow_unverified)?;
    let mut base: Option<Base> = None;
    let t0 = Instant::now();
    let mut progress = ExtractProgress::new(events);
    let slot = CacheSlot {
        dir: env.cache(),
        fingerprint: &fingerprint,
        spec: &images.spec,
        pooling: arch.pooling,
        events,
    };
    let mut extracted = 0;
    let mut features = |split: &LoadedSplit| -> Result<Tensor> {
        let (x, made) = cached(split, &slot, arch.feature_dim(), || {
            if base.is_none() {
                base = Some(Base::new(&arch, &weights, device)?);
            }
            let b = base
                .as_ref()
                .ok_or_else(|| Error::Torch("base not built".into()))?;
            progress.add(split.len());
            extract(
                b,
                &split.pixels,
                split.len(),
                env.extract_batch_size,
                &mut |m| progress.advance(m),
            )
        })?;
        extracted += usize::from(made) * split.len();
        Ok(x)
    };
    let train_x = features(&images.train)?;
    let val_x = images.val.as_ref().map(&mut features).transpose()?;
    let test_x = features(&images.test)?;
    progress.finish();
    Ok(Features {
        classes: images.list.classes.clone(),
        train: info(&images.train),
        test: images.test_info(),
        train_x,
        test_x,
        val: images.val.as_ref().map(info),
        val_x,
        fingerprint,
        extracted,
        extract_seconds: t0.elapsed().as_secs_f64(),
    })
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

/// Features `[n, feature_dim]` (CPU) of a single split decoded with `spec` (for `pipe evaluate`)
/// through the base `weights`, from `env`'s cache or by extraction on `device`, reporting the
/// extraction's progress to `events`.
///
/// # Errors
/// As [`prepare_features`].
pub fn split_features(
    split: &LoadedSplit,
    spec: &ImageSpec,
    weights: &Path,
    arch: &Arch,
    env: &ExtractEnv,
    (device, events): (Device, &dyn EventSink),
) -> Result<Tensor> {
    let (w, fingerprint) = load_base(weights, arch, true)?;
    let slot = CacheSlot {
        dir: env.cache(),
        fingerprint: &fingerprint,
        spec,
        pooling: arch.pooling,
        events,
    };
    let (x, _) = cached(split, &slot, arch.feature_dim(), || {
        let base = Base::new(arch, &w, device)?;
        let mut progress = ExtractProgress::new(events);
        progress.add(split.len());
        let x = extract(
            &base,
            &split.pixels,
            split.len(),
            env.extract_batch_size,
            &mut |m| progress.advance(m),
        );
        progress.finish();
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

    /// Shards take whole extraction batches: 50 images in batches of 8 are 7 batches, 3 + 2 + 2
    /// in three shards (rows 0-24, 24-40, 40-50); 10 images are 2 batches, the third shard empty;
    /// the shards of any split cover it end to end.
    #[test]
    fn shard_rows_are_whole_batches_covering_the_split() {
        let rows = |k, n, b| shard_rows(Shard { index: k, count: 3 }, n, b);
        assert_eq!(
            [rows(0, 50, 8), rows(1, 50, 8), rows(2, 50, 8)],
            [0..24, 24..40, 40..50]
        );
        assert_eq!(
            [rows(0, 10, 8), rows(1, 10, 8), rows(2, 10, 8)],
            [0..8, 8..10, 10..10]
        );
        for n in 0..60 {
            for count in 1..6 {
                for batch in 1..9 {
                    let mut at = 0;
                    for index in 0..count {
                        let r = shard_rows(Shard { index, count }, n, batch);
                        assert_eq!(r.start, at, "{n} {count} {batch}");
                        assert!(r.start.is_multiple_of(batch) || r.is_empty());
                        at = r.end;
                    }
                    assert_eq!(at, n);
                }
            }
        }
    }

    /// The cache key changes with anything that changes the features: the weights, the input size,
    /// the resize policy, a single pixel; the same inputs give the same key.
    #[test]
    fn cache_key_changes_with_weights_size_policy_and_pixels() {
        let s = split(32, 4);
        let squash = ImageSpec::new(32, crate::data::ResizePolicy::Squash);
        let cache_key =
            |fp: &str, split: &LoadedSplit| cache_key(fp, &squash, Pooling::Flatten, split);
        let key = cache_key("fp", &s);
        assert_eq!(key, cache_key("fp", &split(32, 4)));
        assert_eq!(key.len(), 64);
        assert_ne!(key, cache_key("fp2", &s), "weights fingerprint");
        let crop = ImageSpec::new(32, crate::data::ResizePolicy::Crop);
        assert_ne!(
            key,
            super::cache_key("fp", &crop, Pooling::Flatten, &s),
            "resize policy"
        );
        assert_ne!(
            key,
            super::cache_key("fp", &squash, Pooling::Max, &s),
            "pooling"
        );
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
}
