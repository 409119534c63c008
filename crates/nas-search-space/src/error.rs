//! The one error type of the search-space crate.

/// Everything that can go wrong while building, parsing, deriving or drawing a genotype.
///
/// Messages are lowercase and name the offending value and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A primitive name that the search space does not know.
    #[error("unknown {space} primitive {name:?}; expected one of: {allowed}")]
    UnknownPrimitive {
        /// The search space the name was looked up in.
        space: &'static str,
        /// The name as it was given.
        name: String,
        /// The allowed names, comma-separated.
        allowed: String,
    },
    /// An integer id (in an ENAS arc string) outside a vocabulary.
    #[error("{space} primitive id {id} is out of range; expected 0..={max}")]
    UnknownPrimitiveId {
        /// The search space the id was looked up in.
        space: &'static str,
        /// The id as it was given.
        id: usize,
        /// The largest allowed id.
        max: usize,
    },
    /// A node reads a state that is not computed before it.
    #[error("{cell}: node {node} takes input {input}, but only states 0..={max} come before it")]
    InputNotEarlier {
        /// Which cell ("normal cell", "recurrent cell", ...).
        cell: String,
        /// The node's state index.
        node: usize,
        /// The offending input index.
        input: usize,
        /// The largest input index allowed for this node.
        max: usize,
    },
    /// A node has the wrong number of inputs.
    #[error("{cell}: expected {expected} inputs per node, got {got}")]
    WrongInputCount {
        /// Which cell.
        cell: String,
        /// Inputs per node that the format requires.
        expected: usize,
        /// What was given (for a flat list, its length).
        got: usize,
    },
    /// A cell without intermediate nodes.
    #[error("{cell}: the cell has no nodes")]
    EmptyCell {
        /// Which cell.
        cell: String,
    },
    /// A concat list without entries.
    #[error("{cell}: the concat list is empty")]
    EmptyConcat {
        /// Which cell.
        cell: String,
    },
    /// A concat entry that is not a state of the cell, or a repeated one.
    #[error("{cell}: concat entry {index} is {problem}")]
    BadConcat {
        /// Which cell.
        cell: String,
        /// The offending entry.
        index: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// A syntax error in a textual format.
    #[error("{format} at line {line}, column {column}: {message}")]
    Syntax {
        /// The format being read ("python notation", "arc string").
        format: &'static str,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What was expected.
        message: String,
    },
    /// A structurally valid document that does not describe a genotype.
    #[error("{format}: {message}")]
    Invalid {
        /// The format being read.
        format: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Architecture weights of the wrong shape.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        /// Which matrix.
        what: String,
        /// The expected shape, in words.
        expected: String,
        /// The given shape.
        got: String,
    },
    /// A NaN or infinite architecture weight.
    #[error("{what}: weight at row {row}, column {column} is {value}, expected a finite number")]
    NonFinite {
        /// Which matrix.
        what: String,
        /// Row (edge) index.
        row: usize,
        /// Column (primitive) index.
        column: usize,
        /// The offending value.
        value: f32,
    },
    /// An unknown bundled genotype name.
    #[error("unknown genotype {name:?}; bundled genotypes are: {available}")]
    UnknownGenotype {
        /// The requested name.
        name: String,
        /// The bundled names, comma-separated.
        available: String,
    },
    /// A request that the genotype kind cannot honour.
    #[error("{0}")]
    Unsupported(String),
    /// Malformed JSON.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The SVG layout engine failed.
    #[error("svg layout: {0}")]
    Layout(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
