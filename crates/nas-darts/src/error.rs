//! Errors of the DARTS crate.

/// What can go wrong while building, searching or resuming.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Training machinery: optimizers, checkpoints, run directories.
    #[error(transparent)]
    Train(#[from] nas_train::Error),
    /// Data loading.
    #[error(transparent)]
    Data(#[from] nas_data::Error),
    /// Building or reading a network.
    #[error(transparent)]
    Model(#[from] nas_models::Error),
    /// The recurrent loop (retraining crate).
    #[error(transparent)]
    Retrain(#[from] nas_retrain::Error),
    /// Genotype derivation or formatting.
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
    /// A configuration value is wrong; the message names the key.
    #[error("configuration: {0}")]
    Config(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
