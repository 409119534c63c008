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
    /// A file cannot be read or does not hold what was expected.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong, or what was expected and what was found.
        message: String,
    },
    /// A run directory holds no checkpoint (or no best checkpoint) yet.
    #[error("{} has no {}checkpoint yet", run_dir.display(), if *best { "best " } else { "" })]
    NoCheckpoint {
        /// The run directory.
        run_dir: std::path::PathBuf,
        /// Whether the best checkpoint was asked for.
        best: bool,
    },
    /// A configuration value does not fit; the message names the key.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// A [`Error::File`] error for `path`.
    pub(crate) fn file(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
