//! Pooling followed by BN without affine parameters, in training mode, as one graph node
//! on the CPU: the search network's `max_pool_3x3` and `avg_pool_3x3` (DARTS's
//! `model_search.py` puts `BatchNorm2d(C, affine=False)` after each pool).
//!
//! BN without affine parameters outputs its normalised input, so its backward reads the
//! block's output and the pooled tensor need not be kept; max pooling's backward needs only
//! the argmax. One node instead of two also spares candle's backward a zeroed gradient and
//! an addition for the pooled tensor.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Shape, Tensor};

use crate::error::Result;
use crate::kernels::elem::Elem;
use crate::ops::batch_norm::{self as bn, batch_norm_train, batch_norm_train_slow, BatchStats};
use crate::ops::pool::{self, pool2d, pool2d_slow, PoolConfig};
use crate::ops::saved::{downcast, lock, Shared};
use crate::ops::shell::custom_op;
use crate::ops::storage::dispatch;

const OP: &str = "pool_bn";

/// Training-mode `BN(pool(x))`, BN without affine parameters normalising with the batch's
/// statistics. Returns the output and the batch statistics (for the running statistics).
/// One fused op on the CPU; on other devices the two ops one after the other.
pub fn pool_bn_train(x: &Tensor, cfg: PoolConfig, eps: f64) -> Result<(Tensor, BatchStats)> {
    let geom = pool::Geometry::new(x.dims(), cfg)?;
    if !x.device().is_cpu() {
        return batch_norm_train(&pool2d(x, cfg)?, None, eps);
    }
    let saved: Shared = Arc::new(Mutex::new(None));
    let y = x.contiguous()?.apply_op1(PoolBn {
        geom,
        eps,
        saved: saved.clone(),
    })?;
    let saved = lock(&saved, OP)?;
    let stats = match y.dtype() {
        DType::F32 => downcast::<PoolBnState<f32>>(&saved, OP)?.stats(&geom),
        _ => downcast::<PoolBnState<f64>>(&saved, OP)?.stats(&geom),
    };
    Ok((y, stats))
}

/// The plain-tensor reference: the two ops' `_slow` versions one after the other.
pub fn pool_bn_train_slow(x: &Tensor, cfg: PoolConfig, eps: f64) -> Result<Tensor> {
    batch_norm_train_slow(&pool2d_slow(x, cfg)?, None, eps)
}

fn bn_geometry(g: &pool::Geometry) -> bn::Geometry {
    bn::Geometry {
        n: g.n,
        c: g.c,
        hw: g.oh * g.ow,
    }
}

/// What the forward pass leaves for the backward pass.
pub(crate) struct PoolBnState<T> {
    /// Max pooling's argmax (plane-local input index per output).
    argmax: Option<Vec<u32>>,
    bn: bn::TrainState<T>,
}

impl<T> PoolBnState<T> {
    pub(crate) fn stats(&self, g: &pool::Geometry) -> BatchStats {
        self.bn.stats(&bn_geometry(g))
    }
}

/// The output and what the backward pass needs.
pub(crate) fn pool_bn_forward<T: Elem>(
    g: &pool::Geometry,
    eps: f64,
    x: &[T],
) -> (Vec<T>, PoolBnState<T>) {
    let (pooled, argmax) = pool::forward(g, x);
    let (y, bn) = bn::train_forward(&bn_geometry(g), eps, pooled, None);
    (y, PoolBnState { argmax, bn })
}

/// `dx` from the output gradient and the output.
pub(crate) fn pool_bn_backward<T: Elem>(
    g: &pool::Geometry,
    st: &PoolBnState<T>,
    dy: &[T],
    y: &[T],
) -> Vec<T> {
    let (d_pooled, _) = bn::train_backward(&bn_geometry(g), &st.bn, None, dy, y);
    match &st.argmax {
        Some(arg) => pool::max_backward(g, &d_pooled, arg),
        None => pool::avg_backward(g, &d_pooled),
    }
}

struct PoolBn {
    geom: pool::Geometry,
    eps: f64,
    saved: Shared,
}

custom_op! {
    PoolBn: CustomOp1 = OP;
    cpu(&self, s, l) {
        let g = &self.geom;
        dispatch!(OP, [(s, l) => x], |T| {
            let (y, state) = pool_bn_forward::<T>(g, self.eps, x);
            *lock(&self.saved, OP)? = Some(Box::new(state));
            Ok((T::storage(y), Shape::from((g.n, g.c, g.oh, g.ow))))
        })
    }
    extra {
        fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
            let back = PoolBnBackward {
                geom: self.geom,
                saved: self.saved.clone(),
                input_shape: x.shape().clone(),
            };
            Ok(Some(dy.contiguous()?.apply_op2_no_bwd(y, &back)?))
        }
    }
}

/// `(dy, y) -> dx`.
struct PoolBnBackward {
    geom: pool::Geometry,
    saved: Shared,
    input_shape: Shape,
}

custom_op! {
    PoolBnBackward: CustomOp2 = "pool_bn_backward";
    cpu(&self, s1, l1, s2, l2) {
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => y], |T| {
            let saved = lock(&self.saved, OP)?;
            let st = downcast::<PoolBnState<T>>(&saved, OP)?;
            let dx = pool_bn_backward(&self.geom, st, dy, y);
            Ok((T::storage(dx), self.input_shape.clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::pool::PoolKind;
    use crate::testing::{assert_close, grad_check, randn};
    use candle_core::{DType, Device, Var};

    fn configs() -> Vec<PoolConfig> {
        vec![
            PoolConfig::darts(true, 1),
            PoolConfig::darts(true, 2),
            PoolConfig::darts(false, 1),
            PoolConfig::darts(false, 2),
        ]
    }

    #[test]
    fn matches_the_two_ops_and_the_slow_reference() -> Result<()> {
        let dev = Device::Cpu;
        for cfg in configs() {
            let x = Var::from_tensor(&randn(&[3, 4, 7, 9], DType::F32, &dev)?)?;
            let (y, stats) = pool_bn_train(&x, cfg, 1e-5)?;
            assert_close(&y, &pool_bn_train_slow(&x, cfg, 1e-5)?, 1e-4, 1e-4, "slow")?;
            let (y2, stats2) = batch_norm_train(&pool2d(&x, cfg)?, None, 1e-5)?;
            assert_close(&y, &y2, 1e-5, 1e-5, "pool then BN")?;
            assert_eq!(stats.count, stats2.count);
            let r = randn(y.dims(), DType::F32, &dev)?;
            let g1 = (&y * &r)?.sum_all()?.backward()?;
            let g2 = (&y2 * &r)?.sum_all()?.backward()?;
            let (a, b) = (g1.get(&x).expect("grad"), g2.get(&x).expect("grad"));
            assert_close(a, b, 1e-4, 1e-4, "input gradient")?;
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for cfg in configs() {
            // Distinct values, so that no max-pool window has a tie that a finite
            // difference would split.
            let x = randn(&[2, 3, 7, 5], DType::F64, &dev)?;
            let what = match cfg.kind {
                PoolKind::Max => "max pool + BN",
                PoolKind::Avg { .. } => "avg pool + BN",
            };
            grad_check(
                std::slice::from_ref(&x),
                |v| Ok(pool_bn_train(&v[0], cfg, 1e-5)?.0),
                what,
            )?;
        }
        Ok(())
    }
}
