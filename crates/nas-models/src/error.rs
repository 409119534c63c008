//! The error of the crates that build, train and search networks: `nas-models`,
//! `nas-retrain`, `nas-darts` (and the searches to come) share it, as candle-nn shares
//! candle-core's, so that one `?` carries an error through all of them.

/// What can go wrong while building, counting, loading, training, searching or resuming
/// a network.
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
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        // Not `source`: the message holds it, and a source would print it twice.
        cause: std::io::Error,
    },
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
    /// A setting does not fit; the message names the key.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// A [`Error::File`] error for `path`.
    pub fn file(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
