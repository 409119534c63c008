//! FactorizedReduce (DARTS's `cnn/operations.py`): halves the resolution without losing
//! every other pixel. ReLU, then two 1x1 stride-2 convolutions, the second on the input
//! shifted by one pixel, concatenated over channels, then BN. Names `conv_1`, `conv_2`, `bn`.
//! ENAS's `_factorized_reduction` is the same without the ReLU ([`FactorizedReduce::without_relu`]).

use candle_core::Tensor;
use candle_nn::{ModuleT, VarBuilder};

use crate::error::{Error, Result};
use crate::fused::params::ReduceParams;
use crate::modules::batch_norm::{batch_norm, BatchNorm, BatchNormConfig};
use crate::modules::conv::{conv2d, Conv2d, Conv2dConfig};
use crate::ops::pointwise::{pointwise_conv2d, PointwiseConfig};

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct FactorizedReduce {
    conv_1: Conv2d,
    conv_2: Conv2d,
    bn: BatchNorm,
    relu: bool,
}

impl FactorizedReduce {
    /// The parameters as the fused kernels take them.
    pub(crate) fn fused(&self) -> ReduceParams<'_> {
        ReduceParams {
            w1: self.conv_1.weight(),
            w2: self.conv_2.weight(),
            bn: &self.bn,
            relu: self.relu,
        }
    }

    /// The same module without the leading ReLU (ENAS's identity at stride 2 and its
    /// cells' output calibration).
    pub fn without_relu(self) -> Self {
        FactorizedReduce {
            relu: false,
            ..self
        }
    }
}

impl ModuleT for FactorizedReduce {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // ReLU and subsampling fused into the two 1x1 convolutions.
        let half = |offset: usize| PointwiseConfig {
            stride: 2,
            offset,
            relu_input: self.relu,
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
        relu: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, randn};
    use candle_core::{DType, Device, D};
    use candle_nn::VarMap;

    /// Both variants against plain tensors: (ReLU,) two strided 1x1 convolutions, concat,
    /// and batch statistics normalisation (affine parameters start at 1 and 0).
    #[test]
    fn with_and_without_relu_match_plain_tensors() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(&[2, 3, 6, 6], DType::F64, &dev)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        let fr = factorized_reduce(3, 4, true, vb)?;
        for (relu, module) in [(true, fr.clone()), (false, fr.clone().without_relu())] {
            let input = if relu { x.relu()? } else { x.clone() };
            let conv = |w: &Conv2d, offset: usize| -> Result<Tensor> {
                let shifted = input
                    .narrow(2, offset, 6 - offset)?
                    .narrow(3, offset, 6 - offset)?;
                shifted.conv2d(w.weight(), 0, 2, 1, 1)
            };
            let y = Tensor::cat(&[conv(&fr.conv_1, 0)?, conv(&fr.conv_2, 1)?], 1)?;
            let mean = y
                .mean_keepdim(D::Minus1)?
                .mean_keepdim(2)?
                .mean_keepdim(0)?;
            let centred = y.broadcast_sub(&mean)?;
            let var = centred
                .sqr()?
                .mean_keepdim(D::Minus1)?
                .mean_keepdim(2)?
                .mean_keepdim(0)?;
            let expected = centred.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
            let got = module.forward_t(&x, true)?;
            assert_close(&got, &expected, 1e-10, 1e-10, &format!("relu={relu}"))?;
        }
        // The ReLU matters on this input, so the comparison above tells the two apart.
        let a = fr.forward_t(&x, true)?;
        let b = fr.without_relu().forward_t(&x, true)?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff > 1e-3, "{diff}");
        Ok(())
    }
}
