//! The crate's error type.

/// What can go wrong drawing a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line of `metrics.jsonl` is not a JSON object.
    #[error("{source_name} line {line}: {message}")]
    Metrics {
        /// The file (as the caller named it).
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The plotting backend failed.
    #[error("drawing {what}: {message}")]
    Draw {
        /// The picture.
        what: &'static str,
        /// The backend's message.
        message: String,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
