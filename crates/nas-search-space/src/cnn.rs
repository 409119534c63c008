//! DARTS-style CNN genotypes: a normal and a reduction cell (DARTS paper, section 2.1).
//!
//! A cell has two input states (0: `c_{k-2}`, 1: `c_{k-1}`) and `n` intermediate nodes
//! (states 2..n+2). Each node sums `inputs_per_node` edges, each an operation applied to
//! an earlier state; the cell output concatenates the states in `concat`.

use serde::{Deserialize, Serialize};

use crate::concat::Concat;
use crate::error::{Error, Result};
use crate::primitive::CnnOp;

/// Inputs per node in every published DARTS-style genotype.
pub const DEFAULT_INPUTS_PER_NODE: usize = 2;

/// One edge of a CNN cell: `op` applied to state `input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "(CnnOp, usize)", into = "(CnnOp, usize)")]
pub struct CnnEdge {
    /// The operation.
    pub op: CnnOp,
    /// The state it reads (0 and 1 are the cell inputs).
    pub input: usize,
}

impl From<(CnnOp, usize)> for CnnEdge {
    fn from((op, input): (CnnOp, usize)) -> Self {
        CnnEdge { op, input }
    }
}

impl From<CnnEdge> for (CnnOp, usize) {
    fn from(edge: CnnEdge) -> Self {
        (edge.op, edge.input)
    }
}

/// A validated CNN cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CnnCell {
    edges: Vec<CnnEdge>,
    inputs_per_node: usize,
    concat: Concat,
}

impl CnnCell {
    /// Builds a cell from its flat edge list (node-major, as the reference writes it).
    ///
    /// `name` ("normal cell", "reduce cell") is used in error messages.
    pub fn new(
        name: &str,
        edges: Vec<CnnEdge>,
        inputs_per_node: usize,
        concat: Concat,
    ) -> Result<Self> {
        if inputs_per_node == 0 {
            return Err(Error::WrongInputCount {
                cell: name.to_string(),
                expected: 1,
                got: 0,
            });
        }
        if edges.is_empty() {
            return Err(Error::EmptyCell {
                cell: name.to_string(),
            });
        }
        if !edges.len().is_multiple_of(inputs_per_node) {
            return Err(Error::WrongInputCount {
                cell: name.to_string(),
                expected: inputs_per_node,
                got: edges.len(),
            });
        }
        for (pos, edge) in edges.iter().enumerate() {
            let node = pos / inputs_per_node + 2;
            if edge.input >= node {
                return Err(Error::InputNotEarlier {
                    cell: name.to_string(),
                    node,
                    input: edge.input,
                    max: node - 1,
                });
            }
        }
        let n_states = edges.len() / inputs_per_node + 2;
        concat.validate(name, 0..n_states)?;
        Ok(CnnCell {
            edges,
            inputs_per_node,
            concat,
        })
    }

    /// All edges, node-major.
    pub fn edges(&self) -> &[CnnEdge] {
        &self.edges
    }

    /// The edges of each intermediate node.
    pub fn nodes(&self) -> impl Iterator<Item = &[CnnEdge]> {
        self.edges.chunks(self.inputs_per_node)
    }

    /// Number of intermediate nodes.
    pub fn n_nodes(&self) -> usize {
        self.edges.len() / self.inputs_per_node
    }

    /// Edges per node.
    pub fn inputs_per_node(&self) -> usize {
        self.inputs_per_node
    }

    /// The states concatenated into the output.
    pub fn concat(&self) -> &Concat {
        &self.concat
    }

    /// `[('sep_conv_3x3', 0), ...]`
    pub(crate) fn edges_to_python(&self) -> String {
        let items: Vec<String> = self
            .edges
            .iter()
            .map(|e| format!("('{}', {})", e.op, e.input))
            .collect();
        format!("[{}]", items.join(", "))
    }
}

/// A DARTS-style CNN genotype: the normal and the reduction cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "CnnGenotypeRepr", into = "CnnGenotypeRepr")]
pub struct CnnGenotype {
    normal: CnnCell,
    reduce: CnnCell,
}

impl CnnGenotype {
    /// Pairs two cells; they must have the same number of inputs per node.
    pub fn new(normal: CnnCell, reduce: CnnCell) -> Result<Self> {
        if normal.inputs_per_node != reduce.inputs_per_node {
            return Err(Error::WrongInputCount {
                cell: "reduce cell".to_string(),
                expected: normal.inputs_per_node,
                got: reduce.inputs_per_node,
            });
        }
        Ok(CnnGenotype { normal, reduce })
    }

    /// Builds and validates a genotype from the reference's four fields.
    pub fn from_parts(
        normal: Vec<(CnnOp, usize)>,
        normal_concat: Concat,
        reduce: Vec<(CnnOp, usize)>,
        reduce_concat: Concat,
    ) -> Result<Self> {
        let to_edges = |v: Vec<(CnnOp, usize)>| v.into_iter().map(CnnEdge::from).collect();
        CnnGenotype::new(
            CnnCell::new("normal cell", to_edges(normal), 2, normal_concat)?,
            CnnCell::new("reduce cell", to_edges(reduce), 2, reduce_concat)?,
        )
    }

    /// The normal cell.
    pub fn normal(&self) -> &CnnCell {
        &self.normal
    }

    /// The reduction cell.
    pub fn reduce(&self) -> &CnnCell {
        &self.reduce
    }

    /// The official Python notation, exactly as the reference code prints a `Genotype`.
    ///
    /// Fails for cells with other than two inputs per node, which that notation cannot express.
    pub fn to_python(&self) -> Result<String> {
        if self.normal.inputs_per_node != DEFAULT_INPUTS_PER_NODE {
            return Err(Error::Unsupported(format!(
                "python notation assumes {DEFAULT_INPUTS_PER_NODE} inputs per node, this genotype has {}; use json",
                self.normal.inputs_per_node
            )));
        }
        Ok(format!(
            "Genotype(normal={}, normal_concat={}, reduce={}, reduce_concat={})",
            self.normal.edges_to_python(),
            self.normal.concat.to_python(),
            self.reduce.edges_to_python(),
            self.reduce.concat.to_python()
        ))
    }
}

/// The JSON shape: the reference's namedtuple fields (what `json.dumps(genotype._asdict())`
/// writes for list concats), plus `inputs_per_node` when it is not 2.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CnnGenotypeRepr {
    normal: Vec<CnnEdge>,
    normal_concat: Concat,
    reduce: Vec<CnnEdge>,
    reduce_concat: Concat,
    #[serde(default = "default_inputs", skip_serializing_if = "is_default_inputs")]
    inputs_per_node: usize,
}

fn default_inputs() -> usize {
    DEFAULT_INPUTS_PER_NODE
}

fn is_default_inputs(n: &usize) -> bool {
    *n == DEFAULT_INPUTS_PER_NODE
}

impl TryFrom<CnnGenotypeRepr> for CnnGenotype {
    type Error = Error;

    fn try_from(r: CnnGenotypeRepr) -> Result<Self> {
        CnnGenotype::new(
            CnnCell::new("normal cell", r.normal, r.inputs_per_node, r.normal_concat)?,
            CnnCell::new("reduce cell", r.reduce, r.inputs_per_node, r.reduce_concat)?,
        )
    }
}

impl From<CnnGenotype> for CnnGenotypeRepr {
    fn from(g: CnnGenotype) -> Self {
        CnnGenotypeRepr {
            inputs_per_node: g.normal.inputs_per_node,
            normal: g.normal.edges,
            normal_concat: g.normal.concat,
            reduce: g.reduce.edges,
            reduce_concat: g.reduce.concat,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(op: CnnOp, input: usize) -> CnnEdge {
        CnnEdge { op, input }
    }

    #[test]
    fn rejects_input_from_later_node() {
        let edges = vec![
            edge(CnnOp::SepConv3x3, 0),
            edge(CnnOp::SepConv3x3, 1),
            edge(CnnOp::SkipConnect, 3),
            edge(CnnOp::SkipConnect, 0),
        ];
        let err = CnnCell::new("normal cell", edges, 2, Concat::range(2, 4)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "normal cell: node 3 takes input 3, but only states 0..=2 come before it"
        );
    }

    #[test]
    fn rejects_odd_edge_count_and_empty_cells() {
        let edges = vec![edge(CnnOp::SepConv3x3, 0); 3];
        let err = CnnCell::new("reduce cell", edges, 2, Concat::range(2, 3)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "reduce cell: expected 2 inputs per node, got 3"
        );
        let err = CnnCell::new("reduce cell", vec![], 2, Concat::range(2, 3)).unwrap_err();
        assert_eq!(err.to_string(), "reduce cell: the cell has no nodes");
    }

    #[test]
    fn json_rejects_unknown_fields_and_ops() {
        let json = r#"{"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "normal_concat": [2],
            "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2], "extra": 1}"#;
        let err = serde_json::from_str::<CnnGenotype>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `extra`"), "{err}");
        let json = r#"{"normal": [["sep_conv_4x4", 0], ["skip_connect", 1]], "normal_concat": [2],
            "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2]}"#;
        let err = serde_json::from_str::<CnnGenotype>(json)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown darts-cnn primitive \"sep_conv_4x4\""),
            "{err}"
        );
    }
}
