//! Errors of retraining.

/// What can go wrong while training or evaluating a genotype.
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
    /// Building or reading the network.
    #[error(transparent)]
    Model(#[from] nas_models::Error),
    /// Genotype files.
    #[error(transparent)]
    SearchSpace(#[from] nas_search_space::Error),
    /// A configuration value or a run does not fit; the message names the key or file.
    #[error("configuration: {0}")]
    Config(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
