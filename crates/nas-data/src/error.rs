//! The error type of the data crate.

use std::path::PathBuf;

/// What can go wrong reading a data set. Every message names the file (or data set) and,
/// for format errors, where in the file and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("reading {path:?}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        // Not `source`: the message holds it, and a source would print it twice.
        cause: std::io::Error,
    },
    /// A file whose contents do not follow its format.
    #[error("{path:?}: at {location}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Byte offset, record or line, in words ("byte 16", "record 3", "line 12").
        location: String,
        /// What was expected.
        message: String,
    },
    /// A data set that is not where it was looked for.
    #[error("{dataset} not found: looked for {looked:?}; fetch it with `{fetch}`")]
    Missing {
        /// The data set's name.
        dataset: &'static str,
        /// The file that was missing.
        looked: PathBuf,
        /// The command that fetches it.
        fetch: String,
    },
    /// A file whose md5 is not the published one.
    #[error("{path:?}: mismatch (md5 {got}, expected {expected})")]
    Checksum {
        /// The file (possibly under its temporary `.part` name).
        path: PathBuf,
        /// Its md5.
        got: String,
        /// The published md5.
        expected: String,
    },
    /// A folder tree (or an archive of one) that is not laid out as expected.
    #[error("{path:?}: expected {expected}")]
    Layout {
        /// The folder or archive.
        path: PathBuf,
        /// What was expected, and what was found.
        expected: String,
    },
    /// A request that does not fit the data.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    pub(crate) fn format(
        path: impl Into<PathBuf>,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Format {
            path: path.into(),
            location: location.into(),
            message: message.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
