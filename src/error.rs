//! Typed errors of the library. Every variant that concerns a file names it; `main.rs` turns these
//! into messages and a non-zero exit code.

use std::path::{Path, PathBuf};

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in pipe's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file or folder failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The operating-system error (part of the message, so not repeated as a cause).
        error: std::io::Error,
    },
    /// An image could not be decoded.
    #[error("{}: cannot decode image: {error}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's error (part of the message, so not repeated as a cause).
        error: image::ImageError,
    },
    /// A file exists and was read, but its contents are not what pipe expects.
    #[error("{}: {message}", path.display())]
    InvalidFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong and, where possible, what to do.
        message: String,
    },
    /// The conv-base weights are not the ImageNet VGG16 weights pipe was built for.
    #[error(
        "{}: weights fingerprint {actual} differs from the ImageNet VGG16 fingerprint {expected}; \
         this is not the expected file (pass --allow-unverified to import it anyway)",
        path.display()
    )]
    Fingerprint {
        /// The weights file.
        path: PathBuf,
        /// The fingerprint pipe expects.
        expected: String,
        /// The fingerprint of the file.
        actual: String,
    },
    /// A user-supplied option or combination of options is invalid.
    #[error("{0}")]
    Usage(String),
    /// An inference backend (tract or ONNX Runtime) failed.
    #[error("{backend}: {message}")]
    Backend {
        /// `tract` or `ort`.
        backend: &'static str,
        /// The backend's message.
        message: String,
    },
    /// Training produced a non-finite loss.
    #[error("training diverged at epoch {epoch} (step {step}): loss is {loss}; lower --lr")]
    Diverged {
        /// Epoch (from 1).
        epoch: usize,
        /// Step within the epoch (from 1; 0 = validation).
        step: usize,
        /// The loss value.
        loss: f64,
    },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<Path>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            error,
        }
    }

    /// A file whose contents are wrong, with a message saying what is wrong.
    pub fn invalid(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::InvalidFile {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}

#[cfg(feature = "train")]
impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(e.to_string())
    }
}
