//! The candidate operations of a DARTS-style CNN cell (`OPS` in the reference
//! `cnn/operations.py`), and the MixedOp that relaxes a choice among them (paper eq. 2).

use candle_core::Tensor;
use candle_nn::{Init, ModuleT, VarBuilder};
use nas_search_space::{CnnOp, DARTS_CNN_PRIMITIVES};

use crate::error::{Error, Result};
use crate::fused::cell::OpParams;
use crate::fused::mixed::{mixed_op_train, MixedParts};
use crate::fused::params::FusedBn;
use crate::fused::pool_bn::pool_bn_train;
use crate::modules::batch_norm::{batch_norm, BatchNorm, BatchNormConfig};
use crate::modules::factorized_reduce::{factorized_reduce, FactorizedReduce};
use crate::modules::sep_conv::{dil_conv, sep_conv, DepthwiseSeparable, SepConv};
use crate::ops::pool::{pool2d, PoolConfig};
use crate::ops::subsample::subsample;
use crate::ops::weighted_sum::weighted_sum;

/// One candidate operation on an edge.
#[derive(Debug, Clone)]
pub enum DartsOp {
    /// `none`: zeros of the output shape.
    Zero {
        /// Stride of the edge.
        stride: usize,
    },
    /// `skip_connect` at stride 1.
    Identity,
    /// `skip_connect` at stride 2.
    FactorizedReduce(FactorizedReduce),
    /// `max_pool_3x3` / `avg_pool_3x3`, followed in the search network by BN without affine.
    Pool {
        /// The pooling geometry.
        cfg: PoolConfig,
        /// The BN the search network puts after a pool.
        bn: Option<BatchNorm>,
    },
    /// `sep_conv_3x3`, `sep_conv_5x5`, `sep_conv_7x7`.
    SepConv(SepConv),
    /// `dil_conv_3x3`, `dil_conv_5x5`.
    DilConv(DepthwiseSeparable),
    /// `conv_7x1_1x7` (AmoebaNet).
    Conv7x1x7(Conv7x1x7),
}

impl DartsOp {
    /// True for the identity, which DARTS's evaluation network never drops (drop path).
    pub fn is_identity(&self) -> bool {
        matches!(self, DartsOp::Identity)
    }

    /// The op as the fused cell takes it.
    pub(crate) fn fused(&self) -> OpParams<'_> {
        match self {
            DartsOp::Identity => OpParams::Identity,
            DartsOp::Pool { cfg, bn: None } => OpParams::Pool(*cfg),
            DartsOp::FactorizedReduce(fr) => OpParams::Reduce(fr.fused()),
            DartsOp::DilConv(b) => OpParams::Dil(b.fused()),
            DartsOp::SepConv(s) => OpParams::Sep(s.blocks().map(DepthwiseSeparable::fused)),
            DartsOp::Zero { .. } | DartsOp::Pool { .. } | DartsOp::Conv7x1x7(_) => OpParams::Other,
        }
    }
}

impl ModuleT for DartsOp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            DartsOp::Zero { stride } => subsample(x, *stride, 0)?.zeros_like(),
            DartsOp::Identity => Ok(x.clone()),
            DartsOp::FactorizedReduce(op) => op.forward_t(x, train),
            DartsOp::Pool { cfg, bn: Some(bn) } if train && bn.affine().is_none() => {
                // One graph node (`pool_bn.rs`).
                let (y, stats) = pool_bn_train(x, *cfg, bn.config().eps)?;
                bn.update_running_all(std::slice::from_ref(&stats))?;
                Ok(y)
            }
            DartsOp::Pool { cfg, bn } => {
                let y = pool2d(x, *cfg)?;
                match bn {
                    Some(bn) => bn.forward_t(&y, train),
                    None => Ok(y),
                }
            }
            DartsOp::SepConv(op) => op.forward_t(x, train),
            DartsOp::DilConv(op) => op.forward_t(x, train),
            DartsOp::Conv7x1x7(op) => op.forward_t(x, train),
        }
    }
}

/// Where an op is built: the search network adds BN after pools and uses BN without
/// affine parameters; the evaluation network does neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpContext {
    /// Channels in and out.
    pub channels: usize,
    /// 1, or 2 on the input edges of a reduction cell.
    pub stride: usize,
    /// Learnable BN scale and shift.
    pub affine: bool,
    /// Put a BN (without affine) after pooling, as the search network's MixedOp does.
    pub bn_after_pool: bool,
}

/// Builds `op` with the reference's parameter names under `vb`.
pub fn darts_op(op: CnnOp, ctx: OpContext, vb: VarBuilder) -> Result<DartsOp> {
    let OpContext {
        channels: c,
        stride,
        affine,
        bn_after_pool,
    } = ctx;
    Ok(match op {
        CnnOp::None => DartsOp::Zero { stride },
        CnnOp::SkipConnect if stride == 1 => DartsOp::Identity,
        CnnOp::SkipConnect => DartsOp::FactorizedReduce(factorized_reduce(c, c, affine, vb)?),
        CnnOp::MaxPool3x3 | CnnOp::AvgPool3x3 => {
            let bn = if bn_after_pool {
                let cfg = BatchNormConfig {
                    affine: false,
                    ..Default::default()
                };
                Some(batch_norm(c, cfg, vb.pp("1"))?)
            } else {
                None
            };
            DartsOp::Pool {
                cfg: PoolConfig::darts(op == CnnOp::MaxPool3x3, stride),
                bn,
            }
        }
        CnnOp::SepConv3x3 => DartsOp::SepConv(sep_conv(c, c, 3, stride, affine, vb)?),
        CnnOp::SepConv5x5 => DartsOp::SepConv(sep_conv(c, c, 5, stride, affine, vb)?),
        CnnOp::SepConv7x7 => DartsOp::SepConv(sep_conv(c, c, 7, stride, affine, vb)?),
        CnnOp::DilConv3x3 => DartsOp::DilConv(dil_conv(c, c, 3, stride, 2, affine, vb)?),
        CnnOp::DilConv5x5 => DartsOp::DilConv(dil_conv(c, c, 5, stride, 2, affine, vb)?),
        CnnOp::Conv7x1_1x7 => DartsOp::Conv7x1x7(conv_7x1_1x7(c, stride, affine, vb)?),
    })
}

/// ReLU, a `1 x 7` convolution (stride `(1, s)`), a `7 x 1` one (stride `(s, 1)`), BN.
#[derive(Debug, Clone)]
pub struct Conv7x1x7 {
    row: Tensor,
    col: Tensor,
    bn: BatchNorm,
    stride: usize,
}

impl ModuleT for Conv7x1x7 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = x
            .relu()?
            .pad_with_zeros(3, 3, 3)?
            .conv2d(&self.row, 0, 1, 1, 1)?;
        let y = pick(&y, 3, self.stride)?;
        let y = y.pad_with_zeros(2, 3, 3)?.conv2d(&self.col, 0, 1, 1, 1)?;
        self.bn.forward_t(&pick(&y, 2, self.stride)?, train)
    }
}

/// Every `stride`-th index of dimension `dim`.
fn pick(x: &Tensor, dim: usize, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return Ok(x.clone());
    }
    let idx: Vec<u32> = (0..x.dim(dim)?).step_by(stride).map(|i| i as u32).collect();
    x.index_select(&Tensor::new(idx, x.device())?, dim)
}

fn conv_7x1_1x7(c: usize, stride: usize, affine: bool, vb: VarBuilder) -> Result<Conv7x1x7> {
    let bound = 1.0 / ((c * 7) as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    Ok(Conv7x1x7 {
        row: vb.pp("1").get_with_hints((c, c, 1, 7), "weight", init)?,
        col: vb.pp("2").get_with_hints((c, c, 7, 1), "weight", init)?,
        bn: batch_norm(
            c,
            BatchNormConfig {
                affine,
                ..Default::default()
            },
            vb.pp("3"),
        )?,
        stride,
    })
}

/// A softmax-weighted mixture of all DARTS search primitives on one edge (paper eq. 2).
///
/// `none` contributes nothing to the sum, so it is not run; its weight still takes its
/// share of the softmax, and so of the gradient of the architecture weights.
#[derive(Debug, Clone)]
pub struct MixedOp {
    ops: Vec<DartsOp>,
}

impl MixedOp {
    /// The candidate ops, in the order of [`DARTS_CNN_PRIMITIVES`].
    pub fn ops(&self) -> &[DartsOp] {
        &self.ops
    }

    /// `sum_k weights[k] * op_k(x)`, where `weights` `[8]` is the softmax of the edge's
    /// architecture weights.
    pub fn forward_weighted(&self, x: &Tensor, weights: &Tensor, train: bool) -> Result<Tensor> {
        let k = self.ops.len();
        if weights.dims() != [k] {
            return Err(Error::ShapeMismatch {
                op: "mixed_op",
                expected: format!("weights [{k}]"),
                got: weights.dims().to_vec(),
            }
            .into());
        }
        if train && x.device().is_cpu() {
            if let Some(parts) = self.fused_parts() {
                if let Some(y) = mixed_op_train(x, weights, &parts)? {
                    return Ok(y);
                }
            }
        }
        self.forward_unfused(x, weights, train)
    }

    /// The ops one by one and their weighted sum (on other devices, in evaluation mode,
    /// and for shapes the fused kernel does not cover).
    fn forward_unfused(&self, x: &Tensor, weights: &Tensor, train: bool) -> Result<Tensor> {
        let k = self.ops.len();
        let outputs = self.ops[1..]
            .iter()
            .map(|op| op.forward_t(x, train))
            .collect::<Result<Vec<_>>>()?;
        weighted_sum(&Tensor::stack(&outputs, 0)?, &weights.narrow(0, 1, k - 1)?)
    }

    /// The ops as the fused kernel (`fused/mixed.rs`) takes them, if they are the search
    /// network's eight in DARTS's order.
    fn fused_parts(&self) -> Option<MixedParts<'_>> {
        let [DartsOp::Zero { .. }, max, avg, skip, DartsOp::SepConv(s3), DartsOp::SepConv(s5), DartsOp::DilConv(d3), DartsOp::DilConv(d5)] =
            &self.ops[..]
        else {
            return None;
        };
        let reduce = match skip {
            DartsOp::Identity => None,
            DartsOp::FactorizedReduce(fr) => Some(fr.fused()),
            _ => return None,
        };
        let [a, b] = s3.blocks();
        let [c, d] = s5.blocks();
        Some(MixedParts {
            max: fused_pool(max)?,
            avg: fused_pool(avg)?,
            reduce,
            blocks: [a, b, c, d, d3, d5].map(DepthwiseSeparable::fused),
        })
    }
}

/// A pool followed by BN, as the fused MixedOp takes it.
fn fused_pool(op: &DartsOp) -> Option<(PoolConfig, &dyn FusedBn)> {
    match op {
        DartsOp::Pool { cfg, bn: Some(bn) } => Some((*cfg, bn as &dyn FusedBn)),
        _ => None,
    }
}

/// Builds a search-network MixedOp (`_ops.{i}`), BN without affine after pools.
pub fn mixed_op(channels: usize, stride: usize, vb: VarBuilder) -> Result<MixedOp> {
    let ctx = OpContext {
        channels,
        stride,
        affine: false,
        bn_after_pool: true,
    };
    let vb = vb.pp("_ops");
    let ops = DARTS_CNN_PRIMITIVES
        .iter()
        .enumerate()
        .map(|(i, &op)| darts_op(op, ctx, vb.pp(i.to_string())))
        .collect::<Result<Vec<_>>>()?;
    Ok(MixedOp { ops })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_check, randn};
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// Parameter counts of each op at C = 16, from the reference's definitions: a
    /// depthwise k x k has C k^2 weights, a pointwise C^2, an affine BN 2C.
    #[test]
    fn parameter_counts_match_the_reference() -> Result<()> {
        let dev = Device::Cpu;
        let c = 16;
        let expected = [
            (CnnOp::None, 1, 0),
            (CnnOp::MaxPool3x3, 1, 0),
            (CnnOp::AvgPool3x3, 2, 0),
            (CnnOp::SkipConnect, 1, 0),
            (CnnOp::SkipConnect, 2, 2 * (c * c / 2) + 2 * c),
            (CnnOp::SepConv3x3, 1, 2 * (c * 9 + c * c + 2 * c)),
            (CnnOp::SepConv5x5, 2, 2 * (c * 25 + c * c + 2 * c)),
            (CnnOp::SepConv7x7, 1, 2 * (c * 49 + c * c + 2 * c)),
            (CnnOp::DilConv3x3, 1, c * 9 + c * c + 2 * c),
            (CnnOp::DilConv5x5, 2, c * 25 + c * c + 2 * c),
            (CnnOp::Conv7x1_1x7, 2, 2 * c * c * 7 + 2 * c),
        ];
        for (op, stride, params) in expected {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
            let ctx = OpContext {
                channels: c,
                stride,
                affine: true,
                bn_after_pool: false,
            };
            let module = darts_op(op, ctx, vb)?;
            let count = crate::testing::trainable_count(&varmap);
            assert_eq!(count, params, "{op} stride {stride}");
            let x = randn(&[2, c, 8, 8], DType::F32, &dev)?;
            let y = module.forward_t(&x, true)?;
            assert_eq!(
                y.dims(),
                [2, c, 8 / stride, 8 / stride],
                "{op} stride {stride}"
            );
        }
        Ok(())
    }

    #[test]
    fn reference_parameter_names() -> Result<()> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let _ = mixed_op(4, 2, vb)?;
        let names = crate::testing::trainable_names(&varmap);
        assert_eq!(
            names,
            [
                "_ops.3.conv_1.weight",
                "_ops.3.conv_2.weight",
                "_ops.4.op.1.weight",
                "_ops.4.op.2.weight",
                "_ops.4.op.5.weight",
                "_ops.4.op.6.weight",
                "_ops.5.op.1.weight",
                "_ops.5.op.2.weight",
                "_ops.5.op.5.weight",
                "_ops.5.op.6.weight",
                "_ops.6.op.1.weight",
                "_ops.6.op.2.weight",
                "_ops.7.op.1.weight",
                "_ops.7.op.2.weight",
            ]
            .map(String::from)
            .to_vec()
        );
        Ok(())
    }

    #[test]
    fn mixed_op_gradients_reach_input_and_weights() -> Result<()> {
        let dev = Device::Cpu;
        // Stride 1 on an odd size, stride 2 on an even one (the fused kernel's cases).
        for (stride, size) in [(1, 5), (2, 6)] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
            let op = mixed_op(2, stride, vb)?;
            assert!(
                op.fused_parts().is_some(),
                "the search MixedOp takes the fused path"
            );
            let x = randn(&[2, 2, size, size], DType::F64, &dev)?;
            let w = randn(&[8], DType::F64, &dev)?;
            grad_check(
                &[x, w],
                |v| op.forward_weighted(&v[0], &v[1], true),
                &format!("mixed op, stride {stride}"),
            )?;
        }
        Ok(())
    }

    /// The fused MixedOp against the ops one by one: output, gradients of the input, the
    /// weights and every parameter, and the running statistics of every BN.
    #[test]
    fn fused_mixed_op_matches_the_ops_one_by_one() -> Result<()> {
        let dev = Device::Cpu;
        for (stride, size) in [(1, 7), (2, 8)] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
            let op = mixed_op(4, stride, vb)?;
            let x = candle_core::Var::from_tensor(&randn(&[2, 4, size, size], DType::F32, &dev)?)?;
            let w = candle_core::Var::from_tensor(&randn(&[8], DType::F32, &dev)?)?;
            let buffers = |vm: &VarMap| -> Result<Vec<(String, Tensor)>> {
                let data = vm.data().lock().expect("varmap");
                let mut v: Vec<_> = data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_tensor().copy()))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(|(k, t)| t.map(|t| (k, t)))
                    .collect::<Result<Vec<_>>>()?;
                v.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(v)
            };
            let before = buffers(&varmap)?;
            let fused = op.forward_weighted(&x, &w, true)?;
            let after_fused = buffers(&varmap)?;
            // Restore the running statistics, then the same step one op at a time.
            for (name, t) in &before {
                varmap.data().lock().expect("varmap")[name].set(t)?;
            }
            let plain = op.forward_unfused(&x, &w, true)?;
            let after_plain = buffers(&varmap)?;
            assert_close(&fused, &plain, 1e-5, 1e-5, "output")?;
            for ((name, a), (_, b)) in after_fused.iter().zip(&after_plain) {
                assert_close(a, b, 1e-5, 1e-5, name)?;
            }
            let r = randn(fused.dims(), DType::F32, &dev)?;
            let g1 = (&fused * &r)?.sum_all()?.backward()?;
            let g2 = (&plain * &r)?.sum_all()?.backward()?;
            let vars = varmap.all_vars();
            let mut checked = 0;
            for v in vars.iter().chain([&x, &w]) {
                if let (Some(a), Some(b)) = (g1.get(v), g2.get(v)) {
                    assert_close(a, b, 1e-4, 1e-3, "gradient")?;
                    checked += 1;
                }
            }
            let params = if stride == 2 { 14 } else { 12 };
            assert_eq!(
                checked,
                params + 2,
                "every parameter, the input and the weights"
            );
        }
        Ok(())
    }
}
