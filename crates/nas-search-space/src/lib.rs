//! Genotypes of DARTS and ENAS: primitive vocabularies, validated genotype types, the
//! reference formats (JSON, DARTS's Python notation, ENAS's arc strings), derivation of a
//! discrete genotype from architecture weights, the published genotypes, and drawings.
//!
//! This crate knows nothing about tensors: genotypes can be parsed, derived and drawn
//! without candle.
//!
//! ```
//! use nas_search_space::{bundled, Genotype};
//!
//! let darts = bundled("darts-v2")?;
//! let text = darts.to_python()?;
//! assert!(text.starts_with("Genotype(normal=[('sep_conv_3x3', 0)"));
//! assert_eq!(Genotype::parse(&text, None)?, darts);
//! # Ok::<(), nas_search_space::Error>(())
//! ```

pub mod arc;
mod bundled;
mod cnn;
mod concat;
mod derive;
mod draw;
mod enas_macro;
mod enas_micro;
mod enas_rnn;
mod error;
mod genotype;
mod primitive;
mod python;
mod random;
mod rnn;

pub use bundled::{bundled, Bundled, BUNDLED};
pub use cnn::{CnnCell, CnnEdge, CnnGenotype, DEFAULT_INPUTS_PER_NODE};
pub use concat::Concat;
pub use derive::{derive_cnn, derive_cnn_cell, derive_rnn, ArchWeights};
pub use draw::{to_dot, to_svg, MAX_SVG_OPS_PER_CELL};
pub use enas_macro::{EnasMacroArch, EnasMacroLayer};
pub use enas_micro::{EnasMicroCell, EnasMicroGenotype, EnasMicroNode};
pub use enas_rnn::EnasRnnCell;
pub use error::{Error, Result};
pub use genotype::{Genotype, GenotypeKind, TextFormat};
pub use primitive::{
    CnnOp, EnasMacroOp, EnasMicroOp, RnnOp, DARTS_CNN_PRIMITIVES, DARTS_RNN_PRIMITIVES,
    ENAS_RNN_ACTIVATIONS,
};
pub use python::parse as parse_python;
pub use random::{random_cnn, random_enas_micro, random_rnn};
pub use rnn::{RnnEdge, RnnGenotype};
