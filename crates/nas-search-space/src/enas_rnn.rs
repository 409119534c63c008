//! ENAS recurrent cells (ENAS paper, section 2.1; `_rhn_fixed` in the reference
//! `src/ptb/ptb_enas_child.py`).
//!
//! State 0 applies an activation to a projection of `x_t` and `h_{t-1}`; node `i`
//! (states 1..n) applies an activation to a projection of one earlier state. The output
//! averages every state that no node reads. With `tanh` on state 0 this is exactly a
//! DARTS recurrent genotype, and the two convert into each other.

use serde::{Deserialize, Serialize};

use crate::arc;
use crate::concat::Concat;
use crate::error::{Error, Result};
use crate::primitive::{by_id, RnnOp, ENAS_RNN_ACTIVATIONS};
use crate::rnn::{RnnEdge, RnnGenotype};

/// A validated ENAS recurrent cell.
///
/// JSON: `{"first": "tanh", "nodes": [["tanh", 0], ["relu", 1], ...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "EnasRnnRepr", into = "EnasRnnRepr")]
pub struct EnasRnnCell {
    first: RnnOp,
    nodes: Vec<RnnEdge>,
}

impl EnasRnnCell {
    /// Validates activations (ENAS has no `none`) and that node `i` reads a state below `i`.
    pub fn new(first: RnnOp, nodes: Vec<RnnEdge>) -> Result<Self> {
        const CELL: &str = "enas recurrent cell";
        let check = |op: RnnOp| {
            if ENAS_RNN_ACTIVATIONS.contains(&op) {
                Ok(())
            } else {
                Err(Error::UnknownPrimitive {
                    space: "enas-rnn",
                    name: op.name().to_string(),
                    allowed: "tanh, relu, identity, sigmoid".to_string(),
                })
            }
        };
        check(first)?;
        for (pos, edge) in nodes.iter().enumerate() {
            check(edge.activation)?;
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
        Ok(EnasRnnCell { first, nodes })
    }

    /// The activation of state 0.
    pub fn first(&self) -> RnnOp {
        self.first
    }

    /// Nodes 1..=n.
    pub fn nodes(&self) -> &[RnnEdge] {
        &self.nodes
    }

    /// The states no node reads, which the output averages.
    pub fn concat(&self) -> Vec<usize> {
        let mut used = vec![false; self.nodes.len() + 1];
        for edge in &self.nodes {
            used[edge.input] = true;
        }
        (0..used.len()).filter(|&i| !used[i]).collect()
    }

    /// Parses ENAS's arc string: the activation id of state 0, then `input activation`
    /// per node (ids: 0 tanh, 1 relu, 2 identity, 3 sigmoid).
    pub fn from_arc(text: &str) -> Result<Self> {
        let ints = arc::parse_ints(text)?;
        if ints.len() % 2 != 1 {
            return Err(arc::invalid(format!(
                "an enas-rnn arc has 1 + 2 * nodes integers (an odd count), got {}",
                ints.len()
            )));
        }
        let act = |id| by_id(ENAS_RNN_ACTIVATIONS, "enas-rnn", id);
        let first = act(ints[0])?;
        let nodes = ints[1..]
            .chunks(2)
            .map(|c| {
                Ok(RnnEdge {
                    input: c[0],
                    activation: act(c[1])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        EnasRnnCell::new(first, nodes)
    }

    /// The arc string, as ENAS's scripts write it.
    pub fn to_arc(&self) -> String {
        let id = |op: RnnOp| {
            ENAS_RNN_ACTIVATIONS
                .iter()
                .position(|&a| a == op)
                .expect("validated in EnasRnnCell::new")
        };
        let mut ints = vec![id(self.first)];
        for edge in &self.nodes {
            ints.extend([edge.input, id(edge.activation)]);
        }
        arc::to_string(&ints)
    }

    /// The same cell as a DARTS recurrent genotype (which always uses `tanh` on state 0).
    pub fn to_darts(&self) -> Result<RnnGenotype> {
        if self.first != RnnOp::Tanh {
            return Err(Error::Unsupported(format!(
                "a DARTS recurrent genotype always applies tanh to state 0; this cell applies {}",
                self.first
            )));
        }
        RnnGenotype::new(self.nodes.clone(), Concat::List(self.concat()))
    }

    /// The ENAS cell of a DARTS recurrent genotype whose concat is exactly its unused states.
    pub fn from_darts(genotype: &RnnGenotype) -> Result<Self> {
        let cell = EnasRnnCell::new(RnnOp::Tanh, genotype.recurrent().to_vec())?;
        if cell.concat() != genotype.concat().indices() {
            return Err(Error::Unsupported(format!(
                "an ENAS cell averages its unused states {:?}, but this genotype averages {:?}",
                cell.concat(),
                genotype.concat().indices()
            )));
        }
        Ok(cell)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnasRnnRepr {
    first: RnnOp,
    nodes: Vec<RnnEdge>,
}

impl TryFrom<EnasRnnRepr> for EnasRnnCell {
    type Error = Error;

    fn try_from(r: EnasRnnRepr) -> Result<Self> {
        EnasRnnCell::new(r.first, r.nodes)
    }
}

impl From<EnasRnnCell> for EnasRnnRepr {
    fn from(c: EnasRnnCell) -> Self {
        EnasRnnRepr {
            first: c.first,
            nodes: c.nodes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_enas_ptb_final_arc() {
        // scripts/ptb_final.sh of the reference ENAS code.
        let cell = EnasRnnCell::from_arc("0 0 0 1 1 2 1 2 0 2 0 5 1 1 0 6 1 8 1 8 1 8 1").unwrap();
        assert_eq!(cell.nodes().len(), 11);
        assert_eq!(cell.first(), RnnOp::Tanh);
        assert_eq!(
            cell.nodes()[1],
            RnnEdge {
                input: 1,
                activation: RnnOp::Relu
            }
        );
        assert_eq!(cell.concat(), vec![3, 4, 7, 9, 10, 11]);
        assert_eq!(
            cell.to_arc(),
            "0 0 0 1 1 2 1 2 0 2 0 5 1 1 0 6 1 8 1 8 1 8 1"
        );
        let darts = cell.to_darts().unwrap();
        assert_eq!(EnasRnnCell::from_darts(&darts).unwrap(), cell);
    }

    #[test]
    fn arc_errors() {
        let err = EnasRnnCell::from_arc("0 0 4").unwrap_err();
        assert_eq!(
            err.to_string(),
            "enas-rnn primitive id 4 is out of range; expected 0..=3"
        );
        let err = EnasRnnCell::from_arc("0 1 0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "enas recurrent cell: node 1 takes input 1, but only states 0..=0 come before it"
        );
        assert!(EnasRnnCell::from_arc("0 0").is_err());
    }
}
