//! FactorizedReduce's fused forward and backward passes over slices (ReLU, two strided
//! 1x1 convolutions, concatenation, BN), for the fused MixedOp and cell.

use candle_core::Shape;

use crate::error::{Error, Result};
use crate::fused::params::ReduceParams;
use crate::kernels::elem::Elem;
use crate::kernels::reduce;
use crate::ops::batch_norm::{self as bn, BatchStats};
use crate::ops::pointwise::{self, PointwiseConfig};

/// FactorizedReduce's shapes for the fused CPU kernels (`fused/mixed.rs`,
/// `fused/cell.rs`); even input sizes only (as the reference), so both halves line up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReduceGeometry {
    a: pointwise::Geometry,
    b: pointwise::Geometry,
    bn: bn::Geometry,
    half: usize,
    w_len: usize,
    affine: bool,
    eps: f64,
}

impl ReduceGeometry {
    /// The geometry of `p` on an input of shape `x`; `None` for odd sizes.
    pub(crate) fn new(p: &ReduceParams<'_>, x: &[usize]) -> Result<Option<Self>> {
        let &[n, _, h, w] = x else {
            return Err(Error::ShapeMismatch {
                op: "factorized_reduce",
                expected: "input [n, c, h, w]".to_string(),
                got: x.to_vec(),
            }
            .into());
        };
        if h % 2 != 0 || w % 2 != 0 {
            return Ok(None);
        }
        let ReduceParams { w1, w2, bn, relu } = *p;
        let cfg = |offset| PointwiseConfig {
            stride: 2,
            offset,
            relu_input: relu,
        };
        let half = w1.dim(0)?;
        Ok(Some(ReduceGeometry {
            a: pointwise::Geometry::new(x, w1.dims(), cfg(0))?,
            b: pointwise::Geometry::new(x, w2.dims(), cfg(1))?,
            bn: bn::Geometry {
                n,
                c: 2 * half,
                hw: (h / 2) * (w / 2),
            },
            half,
            w_len: w1.elem_count(),
            affine: bn.affine().is_some(),
            eps: bn.eps(),
        }))
    }

    /// Output shape `[n, c_out, h / 2, w / 2]`.
    pub(crate) fn out_shape(&self) -> Shape {
        let [oh, ow] = [self.a.out_shape().dims()[2], self.a.out_shape().dims()[3]];
        Shape::from((self.bn.n, self.bn.c, oh, ow))
    }

    /// Number of parameters: both weights, and gamma and beta if affine.
    pub(crate) fn param_len(&self) -> usize {
        2 * self.w_len + if self.affine { 2 * self.bn.c } else { 0 }
    }

    /// `(w1, w2, affine)` from the flat parameters `[w1, w2, gamma, beta]`.
    #[allow(clippy::type_complexity)]
    fn split<'a, T>(&self, params: &'a [T]) -> (&'a [T], &'a [T], Option<(&'a [T], &'a [T])>) {
        let (w1, rest) = params.split_at(self.w_len);
        let (w2, rest) = rest.split_at(self.w_len);
        (w1, w2, self.affine.then(|| rest.split_at(self.bn.c)))
    }

    /// BN's batch statistics.
    pub(crate) fn stats<T>(&self, st: &ReduceState<T>) -> BatchStats {
        st.bn.stats(&self.bn)
    }
}

/// What the fused forward pass leaves for the backward pass.
pub(crate) struct ReduceState<T> {
    bn: bn::TrainState<T>,
}

/// The output and the state, from the flat parameters `[w1, w2, gamma, beta]`.
pub(crate) fn reduce_forward<T: Elem>(
    g: &ReduceGeometry,
    x: &[T],
    params: &[T],
) -> (Vec<T>, ReduceState<T>) {
    let (w1, w2, affine) = g.split(params);
    let a = pointwise::forward(&g.a, x, w1);
    let b = pointwise::forward(&g.b, x, w2);
    let plane = g.half * g.bn.hw;
    let mut cat = Vec::with_capacity(2 * a.len());
    for (ai, bi) in a.chunks_exact(plane).zip(b.chunks_exact(plane)) {
        cat.extend_from_slice(ai);
        cat.extend_from_slice(bi);
    }
    let (y, bn) = bn::train_forward(&g.bn, g.eps, cat, affine);
    (y, ReduceState { bn })
}

/// `(dx, dparams)` from the output gradient `dy`, the input `x` and the output `y`.
pub(crate) fn reduce_backward<T: Elem>(
    g: &ReduceGeometry,
    st: &ReduceState<T>,
    params: &[T],
    dy: &[T],
    x: &[T],
    y: &[T],
) -> (Vec<T>, Vec<T>) {
    let (w1, w2, affine) = g.split(params);
    let (d_cat, d_affine) = bn::train_backward(&g.bn, &st.bn, affine.map(|a| a.0), dy, y);
    let plane = g.half * g.bn.hw;
    let mut da = Vec::with_capacity(d_cat.len() / 2);
    let mut db = Vec::with_capacity(d_cat.len() / 2);
    for img in d_cat.chunks_exact(2 * plane) {
        da.extend_from_slice(&img[..plane]);
        db.extend_from_slice(&img[plane..]);
    }
    drop(d_cat);
    let mut dparams = Vec::with_capacity(g.param_len());
    dparams.extend(pointwise::weight_grad(&g.a, &da, x));
    dparams.extend(pointwise::weight_grad(&g.b, &db, x));
    if let Some((d_gamma, d_beta)) = d_affine {
        dparams.extend(d_gamma);
        dparams.extend(d_beta);
    }
    let mut dx = pointwise::input_grad(&g.a, &da, w1, x);
    reduce::axpy_par(&mut dx, T::one(), &pointwise::input_grad(&g.b, &db, w2, x));
    (dx, dparams)
}
