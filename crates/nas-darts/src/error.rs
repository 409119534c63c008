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
    /// Genotype derivation or formatting.
    #[error(transparent)]
    SearchSpace(#[from] nas_search_space::Error),
    /// A configuration value is wrong; the message names the key.
    #[error("configuration: {0}")]
    Config(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
