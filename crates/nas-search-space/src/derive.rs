//! Deriving a discrete genotype from raw architecture weights (DARTS paper, section 2.4).
//!
//! Every row (edge) is softmaxed over the primitives. Each node keeps its `k` incoming
//! edges with the largest weight of any primitive other than `none` (ties keep the
//! earlier edge, as Python's stable sort does), and gives each kept edge its strongest
//! primitive other than `none` (ties keep the earlier primitive). This is `genotype()`
//! of the reference `cnn/model_search.py` (k = 2) and `rnn/model_search.py` (k = 1).

use crate::cnn::{CnnCell, CnnEdge, CnnGenotype};
use crate::concat::Concat;
use crate::error::{Error, Result};
use crate::primitive::{CnnOp, RnnOp, DARTS_CNN_PRIMITIVES, DARTS_RNN_PRIMITIVES};
use crate::rnn::{RnnEdge, RnnGenotype};

/// A dense row-major matrix of raw architecture weights: one row per edge, one column
/// per primitive.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchWeights {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl ArchWeights {
    /// Wraps row-major data; `what` names the matrix in error messages.
    pub fn new(what: &str, rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::Shape {
                what: what.to_string(),
                expected: format!("{rows} x {cols} = {} values", rows.saturating_mul(cols)),
                got: format!("{} values", data.len()),
            });
        }
        let weights = ArchWeights { rows, cols, data };
        weights.check_finite(what)?;
        Ok(weights)
    }

    /// Builds from nested rows, which must all have the same length.
    pub fn from_rows(what: &str, rows: &[Vec<f32>]) -> Result<Self> {
        let cols = rows.first().map_or(0, Vec::len);
        if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != cols) {
            return Err(Error::Shape {
                what: what.to_string(),
                expected: format!("every row of length {cols}"),
                got: format!("row {i} of length {}", row.len()),
            });
        }
        ArchWeights::new(what, rows.len(), cols, rows.concat())
    }

    /// Number of rows (edges).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (primitives).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    fn check_finite(&self, what: &str) -> Result<()> {
        match self.data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(pos) => Err(Error::NonFinite {
                what: what.to_string(),
                row: pos / self.cols.max(1),
                column: pos % self.cols.max(1),
                value: self.data[pos],
            }),
        }
    }

    /// Softmax of every row, computed in `f32` as the reference does.
    pub fn softmax_rows(&self) -> ArchWeights {
        let mut data = Vec::with_capacity(self.data.len());
        for i in 0..self.rows {
            let row = self.row(i);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            data.extend(exps.iter().map(|e| e / sum));
        }
        ArchWeights {
            rows: self.rows,
            cols: self.cols,
            data,
        }
    }
}

/// Derives a DARTS CNN genotype from `alphas_normal` and `alphas_reduce` (raw, each
/// `[n (n + 3) / 2, 8]`), keeping `k` (1 or 2) inputs per node.
pub fn derive_cnn(normal: &ArchWeights, reduce: &ArchWeights, k: usize) -> Result<CnnGenotype> {
    CnnGenotype::new(
        derive_cnn_cell("normal cell", normal, k)?,
        derive_cnn_cell("reduce cell", reduce, k)?,
    )
}

/// Derives one CNN cell; the concat is `range(2, n + 2)` as the reference writes it.
pub fn derive_cnn_cell(name: &str, weights: &ArchWeights, k: usize) -> Result<CnnCell> {
    expect_cols(name, weights, DARTS_CNN_PRIMITIVES.len())?;
    // Node i (0-based) has i + 2 candidate inputs; n nodes have n (n + 3) / 2 edges.
    let n_nodes =
        nodes_for_rows(weights.rows(), |n| n * (n + 3) / 2).ok_or_else(|| Error::Shape {
            what: name.to_string(),
            expected: "n (n + 3) / 2 rows for n nodes (2, 5, 9, 14, 20, ...)".to_string(),
            got: format!("{} rows", weights.rows()),
        })?;
    if k == 0 || k > 2 {
        return Err(Error::Unsupported(format!(
            "{name}: k must be 1 or 2, since the first node has only 2 candidate inputs; got {k}"
        )));
    }
    let probs = weights.softmax_rows();
    let none = CnnOp::None.index();
    let mut edges = Vec::with_capacity(n_nodes * k);
    let mut start = 0;
    for node in 0..n_nodes {
        let candidates = node + 2;
        for (input, op) in strongest_edges(&probs, start, candidates, k, none) {
            edges.push(CnnEdge {
                op: DARTS_CNN_PRIMITIVES[op],
                input,
            });
        }
        start += candidates;
    }
    CnnCell::new(name, edges, k, Concat::range(2, n_nodes + 2))
}

/// Derives a DARTS recurrent genotype from raw weights `[n (n + 1) / 2, 5]` (DARTS: 36 x 5),
/// one input per node; the concat is `range(1, n + 1)` as the reference writes it.
pub fn derive_rnn(weights: &ArchWeights) -> Result<RnnGenotype> {
    const NAME: &str = "recurrent cell";
    expect_cols(NAME, weights, DARTS_RNN_PRIMITIVES.len())?;
    let n_nodes =
        nodes_for_rows(weights.rows(), |n| n * (n + 1) / 2).ok_or_else(|| Error::Shape {
            what: NAME.to_string(),
            expected: "n (n + 1) / 2 rows for n nodes (1, 3, 6, ..., 36, ...)".to_string(),
            got: format!("{} rows", weights.rows()),
        })?;
    let probs = weights.softmax_rows();
    let none = RnnOp::None.index();
    let mut edges = Vec::with_capacity(n_nodes);
    let mut start = 0;
    for node in 0..n_nodes {
        let candidates = node + 1;
        for (input, op) in strongest_edges(&probs, start, candidates, 1, none) {
            edges.push(RnnEdge {
                activation: DARTS_RNN_PRIMITIVES[op],
                input,
            });
        }
        start += candidates;
    }
    RnnGenotype::new(edges, Concat::range(1, n_nodes + 1))
}

/// The `k` strongest of rows `start..start + candidates`, strongest first, each with its
/// best column other than `skip`: `(input, column)` pairs.
fn strongest_edges(
    probs: &ArchWeights,
    start: usize,
    candidates: usize,
    k: usize,
    skip: usize,
) -> Vec<(usize, usize)> {
    let best = |input: usize| -> (usize, f32) {
        let row = probs.row(start + input);
        let mut best: Option<(usize, f32)> = None;
        for (col, &p) in row.iter().enumerate() {
            if col != skip && best.is_none_or(|(_, b)| p > b) {
                best = Some((col, p));
            }
        }
        // Every vocabulary has a primitive besides `none`.
        best.expect("at least one primitive other than none")
    };
    let mut inputs: Vec<usize> = (0..candidates).collect();
    // Stable sort, descending: ties keep the earlier input, as Python's sorted() does.
    inputs.sort_by(|&a, &b| best(b).1.total_cmp(&best(a).1));
    inputs.truncate(k);
    inputs
        .into_iter()
        .map(|input| (input, best(input).0))
        .collect()
}

fn expect_cols(name: &str, weights: &ArchWeights, cols: usize) -> Result<()> {
    if weights.cols() != cols {
        return Err(Error::Shape {
            what: name.to_string(),
            expected: format!("{cols} columns, one per primitive"),
            got: format!("{} columns", weights.cols()),
        });
    }
    Ok(())
}

fn nodes_for_rows(rows: usize, rows_for: impl Fn(usize) -> usize) -> Option<usize> {
    (1..=rows).find(|&n| rows_for(n) == rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f32) -> ArchWeights {
        let data = (0..rows * cols).map(|i| f(i / cols, i % cols)).collect();
        ArchWeights::new("test", rows, cols, data).unwrap()
    }

    #[test]
    fn none_never_wins_and_edges_rank_by_best_op() {
        // Every edge prefers `none`; edge strength otherwise grows with the row index.
        let w = weights(14, 8, |r, c| match c {
            0 => 10.0,
            5 => (r + 1) as f32 * 0.1,
            _ => 0.0,
        });
        let cell = derive_cnn_cell("normal cell", &w, 2).unwrap();
        let got: Vec<_> = cell
            .edges()
            .iter()
            .map(|e| (e.op.name(), e.input))
            .collect();
        // The latest-created (strongest) inputs first, as the reference orders them.
        assert_eq!(
            got,
            vec![
                ("sep_conv_5x5", 1),
                ("sep_conv_5x5", 0),
                ("sep_conv_5x5", 2),
                ("sep_conv_5x5", 1),
                ("sep_conv_5x5", 3),
                ("sep_conv_5x5", 2),
                ("sep_conv_5x5", 4),
                ("sep_conv_5x5", 3),
            ]
        );
        assert_eq!(cell.concat(), &Concat::range(2, 6));
    }

    #[test]
    fn ties_keep_the_earlier_edge_and_op() {
        let w = weights(14, 8, |_, _| 0.0);
        let cell = derive_cnn_cell("normal cell", &w, 2).unwrap();
        for node in cell.nodes() {
            assert_eq!(node[0].input, 0);
            assert_eq!(node[1].input, 1);
            assert_eq!(node[0].op, CnnOp::MaxPool3x3);
        }
    }

    #[test]
    fn softmax_matters_across_rows() {
        // Row 0: raw max 2.0 but a flat row; row 1: raw max 1.5 but peaked. After
        // softmax row 1's best primitive is stronger, so k = 1 keeps input 1.
        let mut rows = vec![vec![0.0f32; 8]; 2];
        rows[0] = vec![2.0; 8];
        rows[1] = vec![-5.0, 1.5, -5.0, -5.0, -5.0, -5.0, -5.0, -5.0];
        let w = ArchWeights::from_rows("normal", &rows).unwrap();
        let cell = derive_cnn_cell("normal cell", &w, 1).unwrap();
        assert_eq!(
            cell.edges()[0],
            CnnEdge {
                op: CnnOp::MaxPool3x3,
                input: 1
            }
        );
    }

    #[test]
    fn rnn_derivation() {
        let w = weights(
            36,
            5,
            |r, c| if c == 3 { (r + 1) as f32 * 0.1 } else { 0.0 },
        );
        let g = derive_rnn(&w).unwrap();
        assert_eq!(g.n_nodes(), 8);
        assert!(g
            .recurrent()
            .iter()
            .enumerate()
            .all(|(i, e)| e.input == i && e.activation == RnnOp::Sigmoid));
        assert_eq!(g.concat(), &Concat::range(1, 9));
    }

    #[test]
    fn shape_and_value_errors() {
        let err = derive_cnn_cell("normal cell", &weights(13, 8, |_, _| 0.0), 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "normal cell: expected n (n + 3) / 2 rows for n nodes (2, 5, 9, 14, 20, ...), got 13 rows"
        );
        let err = derive_rnn(&weights(36, 8, |_, _| 0.0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "recurrent cell: expected 5 columns, one per primitive, got 8 columns"
        );
        let err = derive_cnn_cell("normal cell", &weights(14, 8, |_, _| 0.0), 3).unwrap_err();
        assert!(err.to_string().contains("k must be 1 or 2"), "{err}");
        let err =
            ArchWeights::new("alphas_normal", 2, 2, vec![0.0, 1.0, f32::NAN, 0.0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "alphas_normal: weight at row 1, column 0 is NaN, expected a finite number"
        );
        let err =
            ArchWeights::from_rows("alphas_reduce", &[vec![0.0; 8], vec![0.0; 7]]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "alphas_reduce: expected every row of length 8, got row 1 of length 7"
        );
    }
}
