//! Errors of the training machinery.

use std::path::PathBuf;

/// What can go wrong while training, checkpointing or resuming.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        // Not `source`: the message holds it, and a source would print it twice.
        cause: std::io::Error,
    },
    /// A file's content is not what was expected.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found.
        message: String,
    },
    /// A loss or gradient became NaN or infinite.
    #[error("{what} is not finite ({value}) at epoch {epoch}, step {step}; the last checkpoint is kept as it was")]
    NonFinite {
        /// The quantity, e.g. "training loss".
        what: String,
        /// Its value.
        value: f64,
        /// The epoch (0-based).
        epoch: usize,
        /// The step within the epoch (0-based).
        step: usize,
    },
    /// Tensors do not match the variables they should set (names, shapes, counts).
    #[error("{0}")]
    Mismatch(String),
    /// A checkpoint's tensor group is missing or does not match the model.
    #[error("checkpoint {path}: {group}: {message}")]
    Group {
        /// The checkpoint folder.
        path: PathBuf,
        /// The group (`weights`, `optimizer`, ...).
        group: String,
        /// What is wrong.
        message: String,
    },
    /// A configuration value is wrong; the message names the key.
    #[error("configuration: {0}")]
    Config(String),
    /// Another live process holds the run directory.
    #[error("{} is in use by another run (it holds {}); wait for that run to end or choose another folder", path.display(), lock.display())]
    Locked {
        /// The run directory.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// A run or network would need more memory than the machine has.
    #[error("{what} needs about {}, more than the {} this machine has available; make it smaller, or pass --no-memory-check to try anyway", crate::memory::human_bytes(*estimate), crate::memory::human_bytes(*available))]
    TooLarge {
        /// What was estimated.
        what: String,
        /// The estimate in bytes.
        estimate: u64,
        /// The available memory in bytes.
        available: u64,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
