//! The DARTS search cell (`Cell` in the reference `cnn/model_search.py`): two
//! preprocessed inputs, `steps` intermediate nodes each summing a MixedOp over every
//! earlier node, and the concatenation of the last `multiplier` nodes as output.

use candle_core::Tensor;
use candle_nn::{ModuleT, VarBuilder};
use nas_models::{CellShape, Preprocess0};
use nas_ops::{mixed_op, MixedOp, ReluConvBn};

/// The number of edges of a cell with `steps` intermediate nodes: node `i` has `i + 2`
/// inputs, so `steps (steps + 3) / 2` (14 for 4 nodes).
pub fn edge_count(steps: usize) -> usize {
    steps * (steps + 3) / 2
}

/// One search cell.
#[derive(Debug, Clone)]
pub struct SearchCell {
    preprocess0: Preprocess0,
    preprocess1: ReluConvBn,
    ops: Vec<MixedOp>,
    shape: CellShape,
}

impl SearchCell {
    /// Builds the cell under `vb` with the reference's names (`preprocess0`,
    /// `preprocess1`, `_ops.{edge}`), BN without affine parameters throughout.
    pub fn new(shape: CellShape, vb: VarBuilder) -> candle_core::Result<Self> {
        let CellShape {
            c,
            steps,
            reduction,
            ..
        } = shape;
        let (preprocess0, preprocess1) = Preprocess0::build(&shape, false, &vb)?;
        let mut ops = Vec::with_capacity(edge_count(steps));
        let vb_ops = vb.pp("_ops");
        for i in 0..steps {
            for j in 0..i + 2 {
                let stride = if reduction && j < 2 { 2 } else { 1 };
                ops.push(mixed_op(c, stride, vb_ops.pp(ops.len().to_string()))?);
            }
        }
        Ok(SearchCell {
            preprocess0,
            preprocess1,
            ops,
            shape,
        })
    }

    /// The cell's shape.
    pub fn shape(&self) -> CellShape {
        self.shape
    }

    /// The output `[n, multiplier c, h', w']` for inputs `s0`, `s1` and the softmaxed
    /// architecture weights `weights` `[edges, primitives]`.
    pub fn forward(
        &self,
        s0: &Tensor,
        s1: &Tensor,
        weights: &Tensor,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let s0 = self.preprocess0.forward_t(s0, train)?;
        let s1 = self.preprocess1.forward_t(s1, train)?;
        let mut states = vec![s0, s1];
        let mut edge = 0;
        for _ in 0..self.shape.steps {
            let mut sum: Option<Tensor> = None;
            for h in &states {
                let y = self.ops[edge].forward_weighted(h, &weights.get(edge)?, train)?;
                sum = Some(match sum {
                    Some(s) => (s + y)?,
                    None => y,
                });
                edge += 1;
            }
            states.extend(sum);
        }
        let out = &states[states.len() - self.shape.multiplier..];
        Tensor::cat(out, 1)
    }
}
