//! FactorizedReduce (DARTS's `cnn/operations.py`): halves the resolution without losing
//! every other pixel. ReLU, then two 1x1 stride-2 convolutions, the second on the input
//! shifted by one pixel, concatenated over channels, then BN. Names `conv_1`, `conv_2`, `bn`.

use candle_core::Tensor;
use candle_nn::{ModuleT, VarBuilder};

use crate::batch_norm::{batch_norm, BatchNorm, BatchNormConfig};
use crate::conv::{conv2d, Conv2d, Conv2dConfig};
use crate::error::{Error, Result};
use crate::pointwise::{pointwise_conv2d, PointwiseConfig};

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct FactorizedReduce {
    conv_1: Conv2d,
    conv_2: Conv2d,
    bn: BatchNorm,
}

impl ModuleT for FactorizedReduce {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // ReLU and subsampling fused into the two 1x1 convolutions.
        let half = |offset: usize| PointwiseConfig {
            stride: 2,
            offset,
            relu_input: true,
        };
        let a = pointwise_conv2d(x, self.conv_1.weight(), half(0))?;
        // x[:, :, 1:, 1:] with stride 2: rows and columns 1, 3, 5, ...
        let b = pointwise_conv2d(x, self.conv_2.weight(), half(1))?;
        let b = match (a.dim(2)? - b.dim(2)?, a.dim(3)? - b.dim(3)?) {
            (0, 0) => b,
            // Odd sizes: the shifted half is one short; PyTorch's convolution would fail
            // too, so the reference only runs on even sizes. Pad to keep odd sizes usable.
            (dh, dw) => b.pad_with_zeros(2, 0, dh)?.pad_with_zeros(3, 0, dw)?,
        };
        self.bn.forward_t(&Tensor::cat(&[&a, &b], 1)?, train)
    }
}

/// Builds a [`FactorizedReduce`]; `c_out` must be even.
pub fn factorized_reduce(
    c_in: usize,
    c_out: usize,
    affine: bool,
    vb: VarBuilder,
) -> Result<FactorizedReduce> {
    if !c_out.is_multiple_of(2) {
        return Err(Error::Unsupported {
            op: "factorized_reduce",
            message: format!("output channels must be even, got {c_out}"),
        }
        .into());
    }
    let cfg = Conv2dConfig::pointwise(2);
    Ok(FactorizedReduce {
        conv_1: conv2d(c_in, c_out / 2, cfg, vb.pp("conv_1"))?,
        conv_2: conv2d(c_in, c_out / 2, cfg, vb.pp("conv_2"))?,
        bn: batch_norm(
            c_out,
            BatchNormConfig {
                affine,
                ..Default::default()
            },
            vb.pp("bn"),
        )?,
    })
}
