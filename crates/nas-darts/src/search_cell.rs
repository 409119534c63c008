//! The DARTS search cell (`Cell` in the reference `cnn/model_search.py`): two
//! preprocessed inputs, `steps` intermediate nodes each summing a MixedOp over every
//! earlier node, and the concatenation of the last `multiplier` nodes as output.

use candle_core::Tensor;
use candle_nn::{ModuleT, VarBuilder};
use nas_ops::{
    factorized_reduce, mixed_op, relu_conv_bn, Conv2dConfig, FactorizedReduce, MixedOp, ReluConvBn,
};

/// The number of edges of a cell with `steps` intermediate nodes: node `i` has `i + 2`
/// inputs, so `steps (steps + 3) / 2` (14 for 4 nodes).
pub fn edge_count(steps: usize) -> usize {
    steps * (steps + 3) / 2
}

/// How a cell adapts its first input `s0` (shared by the search and evaluation cells).
#[derive(Debug, Clone)]
pub(crate) enum Preprocess0 {
    /// After a reduction cell `s0` has twice the resolution of `s1`.
    Reduce(FactorizedReduce),
    /// ReLU, 1x1 convolution, BN.
    Conv(ReluConvBn),
}

impl Preprocess0 {
    /// `preprocess0` and `preprocess1` of a cell of `shape`, under `vb`.
    pub(crate) fn build(
        shape: &CellShape,
        affine: bool,
        vb: &VarBuilder,
    ) -> candle_core::Result<(Self, ReluConvBn)> {
        let pw = Conv2dConfig::pointwise(1);
        let (cpp, cp, c) = (shape.c_prev_prev, shape.c_prev, shape.c);
        let p0 = if shape.reduction_prev {
            Preprocess0::Reduce(factorized_reduce(cpp, c, affine, vb.pp("preprocess0"))?)
        } else {
            Preprocess0::Conv(relu_conv_bn(cpp, c, pw, affine, vb.pp("preprocess0"))?)
        };
        Ok((p0, relu_conv_bn(cp, c, pw, affine, vb.pp("preprocess1"))?))
    }

    pub(crate) fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Preprocess0::Reduce(op) => op.forward_t(x, train),
            Preprocess0::Conv(op) => op.forward_t(x, train),
        }
    }
}

/// Channel counts and position of one search cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellShape {
    /// Channels of the cell before the previous one.
    pub c_prev_prev: usize,
    /// Channels of the previous cell.
    pub c_prev: usize,
    /// Channels of every node of this cell.
    pub c: usize,
    /// Intermediate nodes.
    pub steps: usize,
    /// Nodes concatenated into the output.
    pub multiplier: usize,
    /// This cell halves the resolution (its input edges have stride 2).
    pub reduction: bool,
    /// The previous cell halved the resolution.
    pub reduction_prev: bool,
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
