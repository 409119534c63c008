//! DARTS's separable and dilated convolutions (paper section 3.1.1; `SepConv` and
//! `DilConv` in the reference `cnn/operations.py`), built on the fused depthwise kernel.
//!
//! `dil_conv_kxk`: ReLU, depthwise `k x k` with dilation 2, pointwise, BN.
//! `sep_conv_kxk`: the same without dilation, twice; only the first depthwise strides.

use candle_core::Tensor;
use candle_nn::{Init, ModuleT, VarBuilder};

use crate::error::Result;
use crate::fused::params::BlockParams;
use crate::fused::separable::separable_block_train;
use crate::modules::batch_norm::{batch_norm, BatchNorm, BatchNormConfig};
use crate::modules::conv::pointwise;
use crate::ops::depthwise::{depthwise_conv2d, DepthwiseConfig};

/// ReLU, depthwise, pointwise, BN: one half of a [`SepConv`], or a whole [`DilConv`].
#[derive(Debug, Clone)]
pub struct DepthwiseSeparable {
    depthwise: Tensor,
    pointwise: Tensor,
    bn: BatchNorm,
    cfg: DepthwiseConfig,
}

impl ModuleT for DepthwiseSeparable {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            // One graph node (`separable.rs`); the running statistics as BN's own
            // training-mode forward updates them.
            let (y, stats) = separable_block_train(
                x,
                &self.depthwise,
                &self.pointwise,
                self.bn.affine(),
                self.cfg,
                self.bn.config().eps,
            )?;
            self.bn.update_running_all(std::slice::from_ref(&stats))?;
            return Ok(y);
        }
        let y = depthwise_conv2d(x, &self.depthwise, self.cfg)?;
        self.bn.forward_t(&pointwise(&y, &self.pointwise)?, train)
    }
}

impl DepthwiseSeparable {
    /// `(depthwise weight, pointwise weight, BN, depthwise geometry)`.
    pub(crate) fn fused(&self) -> BlockParams<'_> {
        BlockParams {
            dw: &self.depthwise,
            pw: &self.pointwise,
            bn: &self.bn,
            cfg: self.cfg,
        }
    }
}

/// The shape of one ReLU-depthwise-pointwise-BN block.
#[derive(Debug, Clone, Copy)]
struct Block {
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    affine: bool,
}

/// Builds a block with the reference's parameter names under `vb`: `{first}.weight`
/// (depthwise), `{first + 1}.weight` (pointwise), `{first + 2}.*` (BN).
fn block(b: Block, first: usize, vb: &VarBuilder) -> Result<DepthwiseSeparable> {
    let bound = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();
    let dw_bound = bound(b.kernel * b.kernel);
    let depthwise = vb.pp(first.to_string()).get_with_hints(
        (b.c_in, 1, b.kernel, b.kernel),
        "weight",
        Init::Uniform {
            lo: -dw_bound,
            up: dw_bound,
        },
    )?;
    let pw_bound = bound(b.c_in);
    let pointwise = vb.pp((first + 1).to_string()).get_with_hints(
        (b.c_out, b.c_in, 1, 1),
        "weight",
        Init::Uniform {
            lo: -pw_bound,
            up: pw_bound,
        },
    )?;
    let bn_cfg = BatchNormConfig {
        affine: b.affine,
        ..Default::default()
    };
    let bn = batch_norm(b.c_out, bn_cfg, vb.pp((first + 2).to_string()))?;
    let cfg = DepthwiseConfig {
        stride: b.stride,
        padding: b.dilation * (b.kernel - 1) / 2,
        dilation: b.dilation,
        relu_input: true,
    };
    Ok(DepthwiseSeparable {
        depthwise,
        pointwise,
        bn,
        cfg,
    })
}

/// `dil_conv_kxk`: ReLU, depthwise with dilation, pointwise, BN (names `op.1`, `op.2`, `op.3`).
pub fn dil_conv(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    affine: bool,
    vb: VarBuilder,
) -> Result<DepthwiseSeparable> {
    let b = Block {
        c_in,
        c_out,
        kernel,
        stride,
        dilation,
        affine,
    };
    block(b, 1, &vb.pp("op"))
}

/// `sep_conv_kxk`: two ReLU-depthwise-pointwise-BN blocks (names `op.1..3`, `op.5..7`).
#[derive(Debug, Clone)]
pub struct SepConv {
    first: DepthwiseSeparable,
    second: DepthwiseSeparable,
}

impl ModuleT for SepConv {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.first.forward_t(x, train)?;
        self.second.forward_t(&y, train)
    }
}

impl SepConv {
    /// The two blocks.
    pub(crate) fn blocks(&self) -> [&DepthwiseSeparable; 2] {
        [&self.first, &self.second]
    }
}

/// Builds a [`SepConv`]; the first block strides and keeps `c_in` channels.
pub fn sep_conv(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    affine: bool,
    vb: VarBuilder,
) -> Result<SepConv> {
    let vb = vb.pp("op");
    let first = Block {
        c_in,
        c_out: c_in,
        kernel,
        stride,
        dilation: 1,
        affine,
    };
    let second = Block {
        c_out,
        stride: 1,
        ..first
    };
    Ok(SepConv {
        first: block(first, 1, &vb)?,
        second: block(second, 5, &vb)?,
    })
}
