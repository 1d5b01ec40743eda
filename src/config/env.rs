//! The choices of one invocation that are not part of a run's configuration: they do not change its
//! results (a resumed run may make other choices). Each is declared once, as a field whose doc
//! comment is its `--help` text; `pipe train` takes [`TrainEnv`], `evaluate` and `sweep` take
//! [`ExtractEnv`].

use super::{command_line_defaults as defaults, DEFAULT_CACHE_DIR, DEFAULT_RUNS_DIR};
use crate::error::{Error, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Device choice for training and evaluation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainDevice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA GPU (an error when there is none).
    Cuda,
}

/// How the frozen base runs in this invocation (train, evaluate, sweep): device, extraction batches,
/// the feature cache, and whether foreign base weights are accepted.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct ExtractEnv {
    /// Device: auto = CUDA when libtorch sees a GPU, else CPU.
    #[arg(long, value_enum, default_value_t = TrainDevice::Auto)]
    pub device: TrainDevice,
    /// Batch size for feature extraction through the frozen base.
    #[arg(long, default_value_t = 128)]
    pub extract_batch_size: usize,
    /// Folder of the feature cache (features keyed by weights fingerprint, preprocessing, input size,
    /// resize policy and filter, and image pixels).
    #[arg(long, default_value = DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,
    /// Neither read nor write the feature cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Accept base weights whose fingerprint is not the ImageNet VGG16 one.
    #[arg(long)]
    pub allow_unverified: bool,
}

impl ExtractEnv {
    /// The feature cache folder, `None` with `--no-cache`.
    pub fn cache(&self) -> Option<&Path> {
        (!self.no_cache).then_some(self.cache_dir.as_path())
    }

    /// Checks the extraction batch size (at least 1).
    ///
    /// # Errors
    /// [`Error::Usage`].
    pub fn validate(&self) -> Result<()> {
        if self.extract_batch_size == 0 {
            return Err(Error::Usage(
                "--epochs, --batch-size and --extract-batch-size must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The choices of one `pipe train`: how the base runs, where the run goes, and whether it continues
/// an unfinished one.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct TrainEnv {
    /// How the frozen base runs.
    #[command(flatten)]
    pub extract: ExtractEnv,
    /// Stop at the first image file that cannot be decoded (exit code 1) instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Folder of training runs.
    #[arg(long, default_value = DEFAULT_RUNS_DIR)]
    pub runs_dir: PathBuf,
    /// Run name (default: the UTC time, YYYYMMDD-HHMMSS). With --resume: the run to continue.
    #[arg(long)]
    pub name: Option<String>,
    /// Continue an unfinished run (killed or interrupted) from its last epoch checkpoint; the run's
    /// config.json decides data and hyper-parameters. Without --name: the most recent unfinished run.
    #[arg(long)]
    pub resume: bool,
    /// Extract only shard K of N (from 0) of each split's frozen-base features into the feature
    /// cache, then stop (no run is written). N processes with 0/N .. N-1/N sharing the cache folder
    /// (for example the pods of a Kubernetes Indexed Job: --extract-shard $(JOB_COMPLETION_INDEX)/N)
    /// extract every image once; a following `pipe train` with the same data, weights and image
    /// options assembles the shards and extracts nothing.
    #[arg(long, value_name = "K/N")]
    pub extract_shard: Option<crate::shard::Shard>,
    /// Stop after N epochs as if interrupted (leaves an unfinished run; for testing --resume).
    #[arg(long = "interrupt-after-epoch", hide = true)]
    pub interrupt_after: Option<usize>,
}

impl Default for ExtractEnv {
    /// The command line's defaults.
    fn default() -> Self {
        defaults()
    }
}

impl Default for TrainEnv {
    /// The command line's defaults.
    fn default() -> Self {
        defaults()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_command_line_defaults_and_the_batch_is_checked() {
        let env = TrainEnv::default();
        assert_eq!(env.extract.device, TrainDevice::Auto);
        assert_eq!(env.extract.extract_batch_size, 128);
        assert_eq!(env.extract.cache(), Some(Path::new(DEFAULT_CACHE_DIR)));
        assert_eq!(env.runs_dir, PathBuf::from(DEFAULT_RUNS_DIR));
        assert!(!env.resume && !env.strict && env.name.is_none());
        let no_cache = ExtractEnv {
            no_cache: true,
            ..ExtractEnv::default()
        };
        assert_eq!(no_cache.cache(), None);
        let zero = ExtractEnv {
            extract_batch_size: 0,
            ..ExtractEnv::default()
        };
        assert!(zero.validate().is_err());
        ExtractEnv::default().validate().unwrap();
    }
}
