//! pipe: transfer learning for image classifiers. Fine-tunes a frozen ImageNet VGG16 base plus a dense
//! head with libtorch (`train` feature), exports a self-contained ONNX model natively from Rust, and
//! classifies images with tract or ONNX Runtime (no libtorch on the inference path).
#![warn(missing_docs)]
// No unwrap()/expect() in the program: errors from user input become messages (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod arch;
pub mod config;
pub mod contract;
pub mod data;
pub mod error;
pub mod export;
pub mod infer;
pub mod onnx;
#[cfg(feature = "train")]
pub mod plot;
pub mod report;
pub mod run;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "train")]
pub mod train;
pub mod util;
pub mod weights;

pub use error::{Error, Result};
