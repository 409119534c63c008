//! ReLU, convolution, BN (`ReLUConvBN` in DARTS's `cnn/operations.py`; ENAS's conv
//! branches and 1x1 calibrations have the same shape). Parameter names `op.1.weight`,
//! `op.2.*` as in the reference.

use candle_core::Tensor;
use candle_nn::{ModuleT, VarBuilder};

use crate::error::Result;
use crate::fused::cell::InputParams;
use crate::fused::params::ConvBnParams;
use crate::modules::batch_norm::{batch_norm, BatchNorm, BatchNormConfig};
use crate::modules::conv::{conv2d, Conv2d, Conv2dConfig};

/// ReLU, bias-free convolution, BN.
#[derive(Debug, Clone)]
pub struct ReluConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ModuleT for ReluConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // 1x1 (the preprocessing and calibration convolutions): ReLU fused.
        let y = self.conv.forward_relu(x)?;
        self.bn.forward_t(&y, train)
    }
}

impl ReluConvBn {
    /// `(convolution, BN)`.
    /// The fused cell's form: ReLU-1x1-BN is covered, other convolutions are not.
    pub(crate) fn fused_input(&self) -> InputParams<'_> {
        if self.conv.config() != Conv2dConfig::pointwise(1) {
            return InputParams::Other;
        }
        InputParams::Conv(ConvBnParams {
            weight: self.conv.weight(),
            bn: &self.bn,
        })
    }
}

/// Builds a [`ReluConvBn`].
pub fn relu_conv_bn(
    c_in: usize,
    c_out: usize,
    cfg: Conv2dConfig,
    affine: bool,
    vb: VarBuilder,
) -> Result<ReluConvBn> {
    let vb = vb.pp("op");
    Ok(ReluConvBn {
        conv: conv2d(c_in, c_out, cfg, vb.pp("1"))?,
        bn: batch_norm(
            c_out,
            BatchNormConfig {
                affine,
                ..Default::default()
            },
            vb.pp("2"),
        )?,
    })
}
