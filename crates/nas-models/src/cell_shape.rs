//! What every DARTS-style cell shares, in search and in evaluation: its channel counts
//! and position in the network, and how it preprocesses its two inputs.

use candle_core::Tensor;
use candle_nn::{ModuleT, VarBuilder};
use nas_ops::{factorized_reduce, relu_conv_bn, Conv2dConfig, FactorizedReduce, ReluConvBn};

/// How a cell adapts its first input `s0` (shared by the search and evaluation cells).
#[derive(Debug, Clone)]
pub enum Preprocess0 {
    /// After a reduction cell `s0` has twice the resolution of `s1`.
    Reduce(FactorizedReduce),
    /// ReLU, 1x1 convolution, BN.
    Conv(ReluConvBn),
}

impl Preprocess0 {
    /// `preprocess0` and `preprocess1` of a cell of `shape`, under `vb`.
    pub fn build(
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

    /// Preprocesses `x` (training or evaluation mode).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Preprocess0::Reduce(op) => op.forward_t(x, train),
            Preprocess0::Conv(op) => op.forward_t(x, train),
        }
    }
}

/// Channel counts and position of one cell (search or evaluation).
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
