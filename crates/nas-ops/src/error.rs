//! The error type of the ops crate.
//!
//! Ops run inside candle modules, whose signatures return `candle_core::Result`; this
//! error converts into `candle_core::Error` (as a wrapped error) so the message survives.

/// What can go wrong when building or applying an op.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input of the wrong shape.
    #[error("{op}: expected {expected}, got shape {got:?}")]
    ShapeMismatch {
        /// The op.
        op: &'static str,
        /// The expected shape, in words.
        expected: String,
        /// The given shape.
        got: Vec<usize>,
    },
    /// A configuration the op does not support.
    #[error("{op}: {message}")]
    Unsupported {
        /// The op.
        op: &'static str,
        /// What is unsupported.
        message: String,
    },
    /// An unknown operation name.
    #[error("unknown {space} operation {name:?}; expected one of: {allowed}")]
    UnknownOp {
        /// The search space.
        space: &'static str,
        /// The name given.
        name: String,
        /// The allowed names.
        allowed: String,
    },
}

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// The crate's result type (candle's, so ops compose with candle modules).
pub type Result<T> = candle_core::Result<T>;
