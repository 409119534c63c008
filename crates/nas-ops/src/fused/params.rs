//! The parameters of the fused compositions as they take them: tensors, settings, and
//! batch norms through a trait, so that this layer never names a module (the modules
//! implement the trait and lend their tensors).

use candle_core::Tensor;

use crate::error::Result;
use crate::ops::batch_norm::BatchStats;
use crate::ops::depthwise::DepthwiseConfig;

/// A batch norm: its affine parameters, epsilon, and where its batch statistics go.
pub(crate) trait FusedBn {
    /// `(gamma, beta)`, if it has them.
    fn affine(&self) -> Option<(&Tensor, &Tensor)>;
    /// Added to the variance.
    fn eps(&self) -> f64;
    /// Folds batch statistics into the running statistics, in order.
    fn update_running_all(&self, stats: &[BatchStats]) -> Result<()>;
}

/// One ReLU-depthwise-pointwise-BN block.
#[derive(Clone, Copy)]
pub(crate) struct BlockParams<'a> {
    pub dw: &'a Tensor,
    pub pw: &'a Tensor,
    pub bn: &'a dyn FusedBn,
    pub cfg: DepthwiseConfig,
}

/// FactorizedReduce: (ReLU,) two strided 1x1 convolutions, BN.
#[derive(Clone, Copy)]
pub(crate) struct ReduceParams<'a> {
    pub w1: &'a Tensor,
    pub w2: &'a Tensor,
    pub bn: &'a dyn FusedBn,
    pub relu: bool,
}

impl ReduceParams<'_> {
    /// The parameters in the fused kernels' flat order: both weights, then gamma and beta
    /// if BN has them.
    pub(crate) fn flat(&self) -> Result<Vec<Tensor>> {
        let mut out = vec![self.w1.flatten_all()?, self.w2.flatten_all()?];
        if let Some((gamma, beta)) = self.bn.affine() {
            out.extend([gamma.clone(), beta.clone()]);
        }
        Ok(out)
    }
}

/// ReLU, a 1x1 stride-1 convolution, BN (a cell's preprocessing).
#[derive(Clone, Copy)]
pub(crate) struct ConvBnParams<'a> {
    pub weight: &'a Tensor,
    pub bn: &'a dyn FusedBn,
}
