//! DARTS-style recurrent cell genotypes (DARTS paper, section 2.1 and 3.1.2).
//!
//! State 0 is computed from the input `x_t` and the previous hidden state `h_{t-1}`;
//! intermediate node `i` (states 1..=n) applies one activation to one earlier state.
//! The cell output averages the states in `concat`.

use serde::{Deserialize, Serialize};

use crate::concat::Concat;
use crate::error::{Error, Result};
use crate::primitive::RnnOp;

/// One edge of a recurrent cell: `activation` applied to state `input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "(RnnOp, usize)", into = "(RnnOp, usize)")]
pub struct RnnEdge {
    /// The activation.
    pub activation: RnnOp,
    /// The state it reads (0 is the state computed from `x_t` and `h_{t-1}`).
    pub input: usize,
}

impl From<(RnnOp, usize)> for RnnEdge {
    fn from((activation, input): (RnnOp, usize)) -> Self {
        RnnEdge { activation, input }
    }
}

impl From<RnnEdge> for (RnnOp, usize) {
    fn from(edge: RnnEdge) -> Self {
        (edge.activation, edge.input)
    }
}

/// A validated recurrent cell genotype.
///
/// JSON: `{"recurrent": [["sigmoid", 0], ...], "concat": [1, 2, ...]}` (or `{"range": [1, 9]}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RnnGenotypeRepr", into = "RnnGenotypeRepr")]
pub struct RnnGenotype {
    recurrent: Vec<RnnEdge>,
    concat: Concat,
}

impl RnnGenotype {
    /// Builds and validates a recurrent genotype: node `i` (state `i`, from 1) may read
    /// states `0..i`; the concat names states `0..=n`.
    pub fn new(recurrent: Vec<RnnEdge>, concat: Concat) -> Result<Self> {
        const CELL: &str = "recurrent cell";
        if recurrent.is_empty() {
            return Err(Error::EmptyCell {
                cell: CELL.to_string(),
            });
        }
        for (pos, edge) in recurrent.iter().enumerate() {
            let node = pos + 1;
            if edge.input >= node {
                return Err(Error::InputNotEarlier {
                    cell: CELL.to_string(),
                    node,
                    input: edge.input,
                    max: node - 1,
                });
            }
        }
        concat.validate(CELL, 0..recurrent.len() + 1)?;
        Ok(RnnGenotype { recurrent, concat })
    }

    /// The edges, one per intermediate node.
    pub fn recurrent(&self) -> &[RnnEdge] {
        &self.recurrent
    }

    /// Number of intermediate nodes (DARTS: 8).
    pub fn n_nodes(&self) -> usize {
        self.recurrent.len()
    }

    /// The states averaged into the output.
    pub fn concat(&self) -> &Concat {
        &self.concat
    }

    /// The official Python notation: `Genotype(recurrent=[('sigmoid', 0), ...], concat=range(1, 9))`.
    pub fn to_python(&self) -> String {
        let items: Vec<String> = self
            .recurrent
            .iter()
            .map(|e| format!("('{}', {})", e.activation, e.input))
            .collect();
        format!(
            "Genotype(recurrent=[{}], concat={})",
            items.join(", "),
            self.concat.to_python()
        )
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RnnGenotypeRepr {
    recurrent: Vec<RnnEdge>,
    concat: Concat,
}

impl TryFrom<RnnGenotypeRepr> for RnnGenotype {
    type Error = Error;

    fn try_from(r: RnnGenotypeRepr) -> Result<Self> {
        RnnGenotype::new(r.recurrent, r.concat)
    }
}

impl From<RnnGenotype> for RnnGenotypeRepr {
    fn from(g: RnnGenotype) -> Self {
        RnnGenotypeRepr {
            recurrent: g.recurrent,
            concat: g.concat,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_inputs_and_concat() {
        let edges = vec![(RnnOp::Tanh, 0).into(), (RnnOp::Relu, 2).into()];
        let err = RnnGenotype::new(edges, Concat::range(1, 3)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "recurrent cell: node 2 takes input 2, but only states 0..=1 come before it"
        );
        let edges = vec![(RnnOp::Tanh, 0).into(), (RnnOp::Relu, 1).into()];
        let err = RnnGenotype::new(edges, Concat::range(1, 4)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "recurrent cell: concat entry 3 is not a state of the cell (expected 0..=2)"
        );
    }

    #[test]
    fn python_notation() {
        let edges = vec![(RnnOp::Sigmoid, 0).into(), (RnnOp::Relu, 1).into()];
        let g = RnnGenotype::new(edges, Concat::range(1, 3)).unwrap();
        assert_eq!(
            g.to_python(),
            "Genotype(recurrent=[('sigmoid', 0), ('relu', 1)], concat=range(1, 3))"
        );
    }
}
