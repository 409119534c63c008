//! ENAS micro search space genotypes: a normal and a reduction cell (ENAS paper, section 2.4).
//!
//! Each node reads two states (`x` and `y`, 0 and 1 being the two previous cells),
//! applies one operation to each and adds them. The cell output concatenates every state
//! that no node reads (`_fixed_combine` in the reference `src/cifar10/micro_child.py`).

use serde::{Deserialize, Serialize};

use crate::arc;
use crate::error::{Error, Result};
use crate::primitive::{by_id, EnasMicroOp};

/// One node of an ENAS micro cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnasMicroNode {
    /// The first input state.
    pub x_input: usize,
    /// The operation on the first input.
    pub x_op: EnasMicroOp,
    /// The second input state.
    pub y_input: usize,
    /// The operation on the second input.
    pub y_op: EnasMicroOp,
}

/// A validated ENAS micro cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<EnasMicroNode>", into = "Vec<EnasMicroNode>")]
pub struct EnasMicroCell {
    nodes: Vec<EnasMicroNode>,
}

impl EnasMicroCell {
    /// Validates that node `i` (state `i + 2`) reads only states `0..i + 2`.
    pub fn new(name: &str, nodes: Vec<EnasMicroNode>) -> Result<Self> {
        if nodes.is_empty() {
            return Err(Error::EmptyCell {
                cell: name.to_string(),
            });
        }
        for (pos, node) in nodes.iter().enumerate() {
            let state = pos + 2;
            for input in [node.x_input, node.y_input] {
                if input >= state {
                    return Err(Error::InputNotEarlier {
                        cell: name.to_string(),
                        node: state,
                        input,
                        max: state - 1,
                    });
                }
            }
        }
        Ok(EnasMicroCell { nodes })
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[EnasMicroNode] {
        &self.nodes
    }

    /// The states that no node reads, in order: the ones concatenated into the output.
    pub fn concat(&self) -> Vec<usize> {
        let mut used = vec![false; self.nodes.len() + 2];
        for node in &self.nodes {
            used[node.x_input] = true;
            used[node.y_input] = true;
        }
        (0..used.len()).filter(|&i| !used[i]).collect()
    }

    fn push_arc(&self, out: &mut Vec<usize>) {
        for n in &self.nodes {
            out.extend([n.x_input, n.x_op.index(), n.y_input, n.y_op.index()]);
        }
    }

    fn from_ints(name: &str, ints: &[usize]) -> Result<Self> {
        let op = |id| by_id(EnasMicroOp::ALL, EnasMicroOp::SPACE, id);
        let nodes = ints
            .chunks(4)
            .map(|c| {
                Ok(EnasMicroNode {
                    x_input: c[0],
                    x_op: op(c[1])?,
                    y_input: c[2],
                    y_op: op(c[3])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        EnasMicroCell::new(name, nodes)
    }
}

impl TryFrom<Vec<EnasMicroNode>> for EnasMicroCell {
    type Error = Error;

    fn try_from(nodes: Vec<EnasMicroNode>) -> Result<Self> {
        EnasMicroCell::new("enas micro cell", nodes)
    }
}

impl From<EnasMicroCell> for Vec<EnasMicroNode> {
    fn from(cell: EnasMicroCell) -> Self {
        cell.nodes
    }
}

/// An ENAS micro genotype: normal and reduction cell with the same number of nodes.
///
/// JSON: `{"normal": [{"x_input": 0, "x_op": "avg_pool_3x3", "y_input": 0, "y_op": "sep_conv_3x3"}, ...], "reduce": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnasMicroGenotype {
    normal: EnasMicroCell,
    reduce: EnasMicroCell,
}

impl EnasMicroGenotype {
    /// Pairs two cells of equal size (ENAS's arc strings cannot express anything else).
    pub fn new(normal: EnasMicroCell, reduce: EnasMicroCell) -> Result<Self> {
        if normal.nodes.len() != reduce.nodes.len() {
            return Err(Error::Invalid {
                format: "enas micro genotype",
                message: format!(
                    "normal cell has {} nodes but reduce cell has {}",
                    normal.nodes.len(),
                    reduce.nodes.len()
                ),
            });
        }
        Ok(EnasMicroGenotype { normal, reduce })
    }

    /// The normal cell.
    pub fn normal(&self) -> &EnasMicroCell {
        &self.normal
    }

    /// The reduction cell.
    pub fn reduce(&self) -> &EnasMicroCell {
        &self.reduce
    }

    /// Parses ENAS's arc string: per node `x_input x_op y_input y_op`, normal cell then reduce.
    pub fn from_arc(text: &str) -> Result<Self> {
        let ints = arc::parse_ints(text)?;
        if ints.len() % 8 != 0 {
            return Err(arc::invalid(format!(
                "an enas-micro arc has 4 integers per node for two cells of equal size (a multiple of 8), got {}",
                ints.len()
            )));
        }
        let (normal, reduce) = ints.split_at(ints.len() / 2);
        EnasMicroGenotype::new(
            EnasMicroCell::from_ints("normal cell", normal)?,
            EnasMicroCell::from_ints("reduce cell", reduce)?,
        )
    }

    /// The arc string, as ENAS's scripts write it.
    pub fn to_arc(&self) -> String {
        let mut ints = Vec::new();
        self.normal.push_arc(&mut ints);
        self.reduce.push_arc(&mut ints);
        arc::to_string(&ints)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arc_rejects_bad_ids_and_lengths() {
        let err = EnasMicroGenotype::from_arc("0 5 0 0 0 0 0 0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "enas-micro primitive id 5 is out of range; expected 0..=4"
        );
        let err = EnasMicroGenotype::from_arc("0 1 2 0 0 0 0 0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "normal cell: node 2 takes input 2, but only states 0..=1 come before it"
        );
        assert!(EnasMicroGenotype::from_arc("0 1 0 0").is_err());
    }

    #[test]
    fn concat_is_the_unused_states() {
        // node 2 reads 0 and 1; node 3 reads 2 and 1: only 3 is unused.
        let g = EnasMicroGenotype::from_arc("0 0 1 0 2 4 1 1  0 0 1 0 0 4 1 1").unwrap();
        assert_eq!(g.normal().concat(), vec![3]);
        assert_eq!(g.reduce().concat(), vec![2, 3]);
        assert_eq!(g.to_arc(), "0 0 1 0 2 4 1 1 0 0 1 0 0 4 1 1");
    }
}
