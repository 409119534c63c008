//! ENAS's operations (Pham et al. 2018, sections 2.3 and 2.4), for fixed architectures.
//!
//! Macro layers (`_conv_branch` and `_pool_branch` of the reference
//! `src/cifar10/general_child.py`): a 1x1 convolution, BN and ReLU, then a `k x k`
//! convolution, a separable one, or a 3x3 pooling (stride 1, "SAME", average without the
//! padding); convolutions end in BN and ReLU. Micro cells (`_fixed_layer` of
//! `micro_child.py`): separable convolutions stacked twice (ReLU, depthwise, pointwise,
//! BN; the first strides), 3x3 pools, and the identity (FactorizedReduce without ReLU when
//! it strides): the same modules as DARTS's.

use candle_core::Tensor;
use candle_nn::{Init, ModuleT, VarBuilder};
use nas_search_space::{EnasMacroOp, EnasMicroOp};

use crate::error::Result;
use crate::modules::batch_norm::{batch_norm, BatchNorm, BatchNormConfig};
use crate::modules::conv::{conv2d, pointwise, Conv2d, Conv2dConfig};
use crate::modules::darts_op::DartsOp;
use crate::modules::factorized_reduce::factorized_reduce;
use crate::modules::sep_conv::sep_conv;
use crate::ops::depthwise::{depthwise_conv2d, DepthwiseConfig};
use crate::ops::pool::{pool2d, PoolConfig};

/// Builds the operation `op` of an ENAS micro cell on `channels` channels.
pub fn enas_micro_op(
    op: EnasMicroOp,
    channels: usize,
    stride: usize,
    vb: VarBuilder,
) -> Result<DartsOp> {
    let c = channels;
    Ok(match op {
        EnasMicroOp::SepConv3x3 => DartsOp::SepConv(sep_conv(c, c, 3, stride, true, vb)?),
        EnasMicroOp::SepConv5x5 => DartsOp::SepConv(sep_conv(c, c, 5, stride, true, vb)?),
        EnasMicroOp::AvgPool3x3 => DartsOp::Pool {
            cfg: PoolConfig::darts(false, stride),
            bn: None,
        },
        EnasMicroOp::MaxPool3x3 => DartsOp::Pool {
            cfg: PoolConfig::darts(true, stride),
            bn: None,
        },
        EnasMicroOp::Identity if stride == 1 => DartsOp::Identity,
        // `_factorized_reduction` without a ReLU in front.
        EnasMicroOp::Identity => {
            DartsOp::FactorizedReduce(factorized_reduce(c, c, true, vb)?.without_relu())
        }
    })
}

/// The second half of a macro layer.
#[derive(Debug, Clone)]
enum MacroOut {
    Conv(Conv2d, BatchNorm),
    Separable {
        depthwise: Tensor,
        pointwise: Tensor,
        bn: BatchNorm,
        cfg: DepthwiseConfig,
    },
    Pool(PoolConfig),
}

/// One layer of an ENAS macro network: 1x1 conv, BN, ReLU, then the layer's operation.
#[derive(Debug, Clone)]
pub struct EnasMacroLayerOp {
    inp_conv: Conv2d,
    inp_bn: BatchNorm,
    out: MacroOut,
}

impl ModuleT for EnasMacroLayerOp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self
            .inp_bn
            .forward_t(&self.inp_conv.forward_t(x, train)?, train)?
            .relu()?;
        match &self.out {
            MacroOut::Conv(conv, bn) => bn.forward_t(&conv.forward_t(&x, train)?, train)?.relu(),
            MacroOut::Separable {
                depthwise,
                pointwise: pw,
                bn,
                cfg,
            } => {
                let y = pointwise(&depthwise_conv2d(&x, depthwise, *cfg)?, pw)?;
                bn.forward_t(&y, train)?.relu()
            }
            MacroOut::Pool(cfg) => pool2d(&x, *cfg),
        }
    }
}

/// Builds a macro layer from `c_in` to `c_out` channels (names `inp_conv_1.*`, `out_conv.*`).
pub fn enas_macro_op(
    op: EnasMacroOp,
    c_in: usize,
    c_out: usize,
    vb: VarBuilder,
) -> Result<EnasMacroLayerOp> {
    let bn = |vb: VarBuilder| batch_norm(c_out, BatchNormConfig::default(), vb);
    let inp = vb.pp("inp_conv_1");
    let inp_conv = conv2d(c_in, c_out, Conv2dConfig::pointwise(1), inp.pp("conv"))?;
    let inp_bn = bn(inp.pp("bn"))?;
    let out_vb = vb.pp("out_conv");
    let separable = |k: usize| -> Result<MacroOut> {
        let b = 1.0 / ((k * k) as f64).sqrt();
        let depthwise = out_vb.get_with_hints(
            (c_out, 1, k, k),
            "depthwise",
            Init::Uniform { lo: -b, up: b },
        )?;
        let b = 1.0 / (c_out as f64).sqrt();
        let pointwise = out_vb.get_with_hints(
            (c_out, c_out, 1, 1),
            "pointwise",
            Init::Uniform { lo: -b, up: b },
        )?;
        let cfg = DepthwiseConfig {
            stride: 1,
            padding: k / 2,
            dilation: 1,
            relu_input: false,
        };
        Ok(MacroOut::Separable {
            depthwise,
            pointwise,
            bn: bn(out_vb.pp("bn"))?,
            cfg,
        })
    };
    let conv = |k: usize| -> Result<MacroOut> {
        Ok(MacroOut::Conv(
            conv2d(c_out, c_out, Conv2dConfig::same(k), out_vb.pp("conv"))?,
            bn(out_vb.pp("bn"))?,
        ))
    };
    let out = match op {
        EnasMacroOp::Conv3x3 => conv(3)?,
        EnasMacroOp::Conv5x5 => conv(5)?,
        EnasMacroOp::SepConv3x3 => separable(3)?,
        EnasMacroOp::SepConv5x5 => separable(5)?,
        EnasMacroOp::AvgPool3x3 => MacroOut::Pool(PoolConfig::darts(false, 1)),
        EnasMacroOp::MaxPool3x3 => MacroOut::Pool(PoolConfig::darts(true, 1)),
    };
    Ok(EnasMacroLayerOp {
        inp_conv,
        inp_bn,
        out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::randn;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn macro_layers_keep_the_resolution_and_count_their_parameters() -> Result<()> {
        let dev = Device::Cpu;
        let (c_in, c) = (8, 12);
        // 1x1 conv + BN, then: conv k*k*c*c + BN, or depthwise k*k*c + pointwise c*c + BN.
        let base = c_in * c + 2 * c;
        for (op, params) in [
            (EnasMacroOp::Conv3x3, base + 9 * c * c + 2 * c),
            (EnasMacroOp::Conv5x5, base + 25 * c * c + 2 * c),
            (EnasMacroOp::SepConv3x3, base + 9 * c + c * c + 2 * c),
            (EnasMacroOp::SepConv5x5, base + 25 * c + c * c + 2 * c),
            (EnasMacroOp::AvgPool3x3, base),
            (EnasMacroOp::MaxPool3x3, base),
        ] {
            let varmap = VarMap::new();
            let layer = enas_macro_op(
                op,
                c_in,
                c,
                VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            )?;
            let count = crate::testing::trainable_count(&varmap);
            assert_eq!(count, params, "{op}");
            let y = layer.forward_t(&randn(&[2, c_in, 7, 9], DType::F32, &dev)?, true)?;
            assert_eq!(y.dims(), [2, c, 7, 9], "{op}");
        }
        Ok(())
    }

    #[test]
    fn micro_ops_follow_the_stride() -> Result<()> {
        let dev = Device::Cpu;
        for &op in EnasMicroOp::ALL {
            for stride in [1, 2] {
                let varmap = VarMap::new();
                let module = enas_micro_op(
                    op,
                    6,
                    stride,
                    VarBuilder::from_varmap(&varmap, DType::F32, &dev),
                )?;
                let y = module.forward_t(&randn(&[2, 6, 8, 8], DType::F32, &dev)?, true)?;
                assert_eq!(
                    y.dims(),
                    [2, 6, 8 / stride, 8 / stride],
                    "{op} stride {stride}"
                );
            }
        }
        Ok(())
    }
}
