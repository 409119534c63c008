//! Errors of the network crate.

/// What can go wrong while building a network, counting it, or reading its weights.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Parameter stores, checkpoints.
    #[error(transparent)]
    Train(#[from] nas_train::Error),
    /// Data sets (normalisation records).
    #[error(transparent)]
    Data(#[from] nas_data::Error),
    /// Genotypes.
    #[error(transparent)]
    SearchSpace(#[from] nas_search_space::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A network setting or a weights file does not fit; the message names the key or
    /// file.
    #[error("configuration: {0}")]
    Config(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
