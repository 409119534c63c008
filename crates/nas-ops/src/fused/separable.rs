//! The ReLU-depthwise-pointwise-BN block of DARTS's separable and dilated convolutions
//! (`sep_conv.rs`), in training mode, as one graph node on the CPU.
//!
//! As three ops (depthwise, pointwise, BN) the block costs candle's backward pass a zeroed
//! gradient buffer and an addition for each of the two intermediate tensors, and keeps the
//! pointwise output alive for BN's backward. Here the backward runs the same kernels
//! (`depthwise.rs`, `pointwise.rs`, `batch_norm.rs`) straight from one intermediate to the
//! next, and without affine parameters BN's normalised input is the block's own output,
//! so only the depthwise output is saved. The parameters travel as one flat tensor
//! (`[depthwise, pointwise, gamma, beta]`), whose gradient candle splits back into the
//! variables.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, Shape, Tensor};

use crate::error::{Error, Result};
use crate::kernels::elem::Elem;
use crate::ops::batch_norm::{self as bn, batch_norm_train, batch_norm_train_slow, BatchStats};
use crate::ops::depthwise::{self, depthwise_conv2d, depthwise_conv2d_slow, DepthwiseConfig};
use crate::ops::pointwise::{self, pointwise_conv2d, pointwise_conv2d_slow, PointwiseConfig};
use crate::ops::saved::{downcast, lock, tensor_from, Shared};
use crate::ops::shell::custom_op;
use crate::ops::storage::dispatch;

const OP: &str = "separable_block";

/// Training-mode `BN(pointwise(depthwise(x)))` (the depthwise convolution applies ReLU
/// first when `cfg.relu_input`), BN normalising with the batch's statistics and then
/// applying `affine = (gamma, beta)` when given. Returns the output and BN's batch
/// statistics (for the running statistics). One fused op on the CPU; on other devices the
/// three ops one after the other.
pub fn separable_block_train(
    x: &Tensor,
    dw: &Tensor,
    pw: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    cfg: DepthwiseConfig,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    let geom = BlockGeometry::new(x.dims(), dw.dims(), pw.dims(), cfg, affine.is_some(), eps)?;
    bn::check_affine(OP, geom.bn.c, affine)?;
    if !x.device().is_cpu() {
        let y = pointwise_conv2d(&depthwise_conv2d(x, dw, cfg)?, pw, Default::default())?;
        return batch_norm_train(&y, affine, eps);
    }
    let mut parts = vec![dw.flatten_all()?, pw.flatten_all()?];
    if let Some((gamma, beta)) = affine {
        parts.extend([gamma.clone(), beta.clone()]);
    }
    let params = Tensor::cat(&parts, 0)?;
    let saved: Shared = Arc::new(Mutex::new(None));
    let op = SeparableBlock {
        geom,
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op2(&params, op)?;
    let saved = lock(&saved, OP)?;
    let stats = match y.dtype() {
        candle_core::DType::F32 => geom.stats(&downcast::<Saved<f32>>(&saved, OP)?.state),
        _ => geom.stats(&downcast::<Saved<f64>>(&saved, OP)?.state),
    };
    Ok((y, stats))
}

/// The plain-tensor reference: the three ops' `_slow` versions one after the other.
pub fn separable_block_train_slow(
    x: &Tensor,
    dw: &Tensor,
    pw: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    cfg: DepthwiseConfig,
    eps: f64,
) -> Result<Tensor> {
    let y = depthwise_conv2d_slow(x, dw, cfg)?;
    let y = pointwise_conv2d_slow(&y, pw, PointwiseConfig::default())?;
    batch_norm_train_slow(&y, affine, eps)
}

/// The shapes of one block. Without a depthwise stage it is ReLU-1x1-BN
/// ([`BlockGeometry::pointwise`]: DARTS's `ReLUConvBN` preprocessing).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockGeometry {
    dw: Option<depthwise::Geometry>,
    pw: pointwise::Geometry,
    bn: bn::Geometry,
    dw_len: usize,
    pw_len: usize,
    affine: bool,
    eps: f64,
}

/// One block's parameters as slices.
pub(crate) struct Params<'a, T> {
    /// Empty without a depthwise stage.
    pub dw: &'a [T],
    pub pw: &'a [T],
    /// `(gamma, beta)`.
    pub affine: Option<(&'a [T], &'a [T])>,
}

impl BlockGeometry {
    /// The geometry of a block on `x` with these weight shapes (errors name the op and
    /// the shapes).
    pub(crate) fn new(
        x: &[usize],
        dw: &[usize],
        pw: &[usize],
        cfg: DepthwiseConfig,
        affine: bool,
        eps: f64,
    ) -> Result<Self> {
        let dw_geom = depthwise::Geometry::new(x, dw, cfg)?;
        let mid = dw_geom.out_shape();
        let mut g = Self::pointwise(mid.dims(), pw, PointwiseConfig::default(), affine, eps)?;
        g.dw = Some(dw_geom);
        g.dw_len = dw.iter().product();
        Ok(g)
    }

    /// A block without the depthwise stage: the pointwise convolution (ReLU fused by
    /// `cfg.relu_input`) on `x`, then BN.
    pub(crate) fn pointwise(
        x: &[usize],
        pw: &[usize],
        cfg: PointwiseConfig,
        affine: bool,
        eps: f64,
    ) -> Result<Self> {
        let pw_geom = pointwise::Geometry::new(x, pw, cfg)?;
        let out = pw_geom.out_shape();
        let &[n, c, oh, ow] = out.dims() else {
            unreachable!("pointwise outputs are [n, c, h, w]")
        };
        Ok(BlockGeometry {
            dw: None,
            pw: pw_geom,
            bn: bn::Geometry { n, c, hw: oh * ow },
            dw_len: 0,
            pw_len: pw.iter().product(),
            affine,
            eps,
        })
    }

    /// Output shape `[n, c_out, oh, ow]`.
    pub(crate) fn out_shape(&self) -> Shape {
        self.pw.out_shape()
    }

    /// Number of parameters (depthwise, pointwise, and gamma and beta if affine).
    pub(crate) fn param_len(&self) -> usize {
        self.dw_len + self.pw_len + if self.affine { 2 * self.bn.c } else { 0 }
    }

    /// The flat parameters `[depthwise, pointwise, gamma, beta]` split.
    pub(crate) fn split<'a, T>(&self, params: &'a [T]) -> Params<'a, T> {
        let (dw, rest) = params.split_at(self.dw_len);
        let (pw, rest) = rest.split_at(self.pw_len);
        let affine = self.affine.then(|| rest.split_at(self.bn.c));
        Params { dw, pw, affine }
    }

    /// BN's statistics as [`BatchStats`].
    pub(crate) fn stats(&self, st: &BlockState<impl Elem>) -> BatchStats {
        st.bn.stats(&self.bn)
    }
}

/// What a block's forward pass leaves for its backward pass.
pub(crate) struct BlockState<T> {
    /// The depthwise output (the pointwise product's input); `None` without a depthwise
    /// stage (the input is).
    mid: Option<Vec<T>>,
    bn: bn::TrainState<T>,
}

/// The block's output and what its backward pass needs.
pub(crate) fn block_forward<T: Elem>(
    g: &BlockGeometry,
    x: &[T],
    p: &Params<'_, T>,
) -> (Vec<T>, BlockState<T>) {
    let mid = g.dw.as_ref().map(|dg| depthwise::forward(dg, x, p.dw));
    let pre_bn = pointwise::forward(&g.pw, mid.as_deref().unwrap_or(x), p.pw);
    let (y, bn) = bn::train_forward(&g.bn, g.eps, pre_bn, p.affine);
    (y, BlockState { mid, bn })
}

/// `(dx, dparams)` from the output gradient `dy`, the input `x` and the output `y`.
pub(crate) fn block_backward<T: Elem>(
    g: &BlockGeometry,
    st: &BlockState<T>,
    p: &Params<'_, T>,
    dy: &[T],
    x: &[T],
    y: &[T],
) -> (Vec<T>, Vec<T>) {
    let (coeffs, src, d_affine) =
        bn::train_backward_coeffs(&g.bn, &st.bn, p.affine.map(|a| a.0), dy, y);
    let mid = st.mid.as_deref().unwrap_or(x);
    // BN's input gradient image by image, straight into the pointwise backward.
    let (c, hw) = (g.bn.c, g.bn.hw);
    let (d_mid, d_pw) = pointwise::backward_with(&g.pw, p.pw, mid, |img, d_pre| {
        for (ch, dp) in d_pre.chunks_exact_mut(hw).enumerate() {
            let range = (img * c + ch) * hw..(img * c + ch + 1) * hw;
            coeffs.plane(ch, &dy[range.clone()], &src[range], dp);
        }
    });
    let mut dparams = Vec::with_capacity(g.param_len());
    let dx = match &g.dw {
        Some(dg) => {
            let (dx, d_dw) = depthwise::backward(dg, &d_mid, p.dw, x);
            dparams.extend(d_dw);
            dx
        }
        None => d_mid,
    };
    dparams.extend(d_pw);
    if let Some((d_gamma, d_beta)) = d_affine {
        dparams.extend(d_gamma);
        dparams.extend(d_beta);
    }
    (dx, dparams)
}

/// A block's state and a copy of its parameters, for the backward pass.
struct Saved<T> {
    state: BlockState<T>,
    params: Vec<T>,
}

struct SeparableBlock {
    geom: BlockGeometry,
    saved: Shared,
}

custom_op! {
    SeparableBlock: CustomOp2 = OP;
    cpu(&self, s1, l1, s2, l2) {
        dispatch!(OP, [(s1, l1) => x, (s2, l2) => params], |T| {
            let (y, state) = block_forward::<T>(&self.geom, x, &self.geom.split(params));
            let saved = Saved {
                state,
                params: params.to_vec(),
            };
            *lock(&self.saved, OP)? = Some(Box::new(saved));
            Ok((T::storage(y), self.geom.out_shape()))
        })
    }
    extra {
        fn bwd(
            &self,
            x: &Tensor,
            params: &Tensor,
            y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let back = SeparableBackward {
                geom: self.geom,
                saved: self.saved.clone(),
                dparams: Arc::new(Mutex::new(None)),
            };
            let dx = dy.contiguous()?.apply_op3_no_bwd(x, y, &back)?;
            let dparams = lock(&back.dparams, OP)?
                .take()
                .ok_or_else(|| Error::Unsupported {
                    op: OP,
                    message: "no parameter gradient after the backward pass".into(),
                })?;
            Ok((Some(dx), Some(tensor_from(dparams, params.shape(), OP)?)))
        }
    }
}

/// `(dy, x, y) -> dx`, the parameters' gradient left in `dparams`.
struct SeparableBackward {
    geom: BlockGeometry,
    saved: Shared,
    dparams: Arc<Mutex<Option<CpuStorage>>>,
}

custom_op! {
    SeparableBackward: CustomOp3 = "separable_block_backward";
    cpu(&self, s1, l1, s2, l2, s3, l3) {
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => x, (s3, l3) => y], |T| {
            let saved = lock(&self.saved, OP)?;
            let s = downcast::<Saved<T>>(&saved, OP)?;
            let p = self.geom.split(&s.params);
            let (dx, dparams) = block_backward(&self.geom, &s.state, &p, dy, x, y);
            *lock(&self.dparams, OP)? = Some(T::storage(dparams));
            Ok((T::storage(dx), l2.shape().clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_check, randn};
    use candle_core::{DType, Device, Var};

    /// Odd sizes, both strides, dilation, with and without ReLU.
    fn configs() -> Vec<(usize, DepthwiseConfig)> {
        let cfg = |k: usize, stride, dilation, relu_input| DepthwiseConfig {
            stride,
            padding: dilation * (k - 1) / 2,
            dilation,
            relu_input,
        };
        vec![
            (3, cfg(3, 1, 1, true)),
            (3, cfg(3, 2, 1, true)),
            (5, cfg(5, 1, 2, true)),
            (3, cfg(3, 2, 2, false)),
        ]
    }

    #[test]
    fn matches_the_three_ops_and_the_slow_reference() -> Result<()> {
        let dev = Device::Cpu;
        for (k, cfg) in configs() {
            let x = Var::from_tensor(&randn(&[3, 4, 7, 9], DType::F32, &dev)?)?;
            let dw = Var::from_tensor(&randn(&[4, 1, k, k], DType::F32, &dev)?)?;
            let pw = Var::from_tensor(&randn(&[5, 4, 1, 1], DType::F32, &dev)?)?;
            let gamma = Var::from_tensor(&(randn(&[5], DType::F32, &dev)? + 1.0)?)?;
            let beta = Var::from_tensor(&randn(&[5], DType::F32, &dev)?)?;
            for affine in [false, true] {
                let aff = affine.then(|| (gamma.as_tensor(), beta.as_tensor()));
                let (y, stats) =
                    separable_block_train(&x, dw.as_tensor(), pw.as_tensor(), aff, cfg, 1e-5)?;
                let slow = separable_block_train_slow(&x, &dw, &pw, aff, cfg, 1e-5)?;
                let r = randn(y.dims(), DType::F32, &dev)?;
                assert_close(&y, &slow, 1e-4, 1e-4, "block vs slow")?;
                // The three fused ops one after the other: same output, statistics and
                // gradients.
                let mid = depthwise_conv2d(&x, &dw, cfg)?;
                let pre = pointwise_conv2d(&mid, &pw, Default::default())?;
                let (y3, stats3) = batch_norm_train(&pre, aff, 1e-5)?;
                assert_close(&y, &y3, 1e-5, 1e-5, "block vs three ops")?;
                assert_eq!(stats.count, stats3.count);
                for (a, b) in stats.var.iter().zip(&stats3.var) {
                    assert!((a - b).abs() < 1e-6 * (1.0 + b.abs()), "variance");
                }
                let vars = [&x, &dw, &pw, &gamma, &beta];
                let g1 = (y.broadcast_mul(&r))?.sum_all()?.backward()?;
                let g3 = (y3.broadcast_mul(&r))?.sum_all()?.backward()?;
                for v in vars.iter().take(if affine { 5 } else { 3 }) {
                    let (a, b) = (g1.get(v).expect("grad"), g3.get(v).expect("grad"));
                    assert_close(a, b, 1e-4, 1e-4, "input and parameter gradients")?;
                }
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (k, cfg) in configs() {
            let x = randn(&[2, 3, 7, 5], DType::F64, &dev)?;
            let dw = randn(&[3, 1, k, k], DType::F64, &dev)?;
            let pw = randn(&[4, 3, 1, 1], DType::F64, &dev)?;
            let gamma = (randn(&[4], DType::F64, &dev)? + 1.0)?;
            let beta = randn(&[4], DType::F64, &dev)?;
            grad_check(
                &[x.clone(), dw.clone(), pw.clone()],
                |v| Ok(separable_block_train(&v[0], &v[1], &v[2], None, cfg, 1e-5)?.0),
                "separable block, no affine",
            )?;
            grad_check(
                &[x, dw, pw, gamma, beta],
                |v| {
                    let aff = Some((&v[3], &v[4]));
                    Ok(separable_block_train(&v[0], &v[1], &v[2], aff, cfg, 1e-5)?.0)
                },
                "separable block, affine",
            )?;
        }
        Ok(())
    }

    #[test]
    fn shape_errors_name_the_parameter() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3, 5, 5), DType::F32, &dev).unwrap();
        let dw = Tensor::zeros((3, 1, 3, 3), DType::F32, &dev).unwrap();
        let pw = Tensor::zeros((4, 3, 1, 1), DType::F32, &dev).unwrap();
        let bad = Tensor::zeros(3, DType::F32, &dev).unwrap();
        let cfg = DepthwiseConfig {
            padding: 1,
            ..Default::default()
        };
        let err = separable_block_train(&x, &dw, &pw, Some((&bad, &bad)), cfg, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gamma [4]"), "{err}");
        let err = separable_block_train(&x, &pw, &pw, None, cfg, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("weight"), "{err}");
    }
}
