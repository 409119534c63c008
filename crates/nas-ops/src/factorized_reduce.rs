//! FactorizedReduce (DARTS's `cnn/operations.py`): halves the resolution without losing
//! every other pixel. ReLU, then two 1x1 stride-2 convolutions, the second on the input
//! shifted by one pixel, concatenated over channels, then BN. Names `conv_1`, `conv_2`, `bn`.
//! ENAS's `_factorized_reduction` is the same without the ReLU ([`FactorizedReduce::without_relu`]).

use candle_core::{Shape, Tensor};
use candle_nn::{ModuleT, VarBuilder};

use crate::batch_norm::{self as bn, batch_norm, BatchNorm, BatchNormConfig, BatchStats};
use crate::conv::{conv2d, Conv2d, Conv2dConfig};
use crate::cpu::Elem;
use crate::error::{Error, Result};
use crate::pointwise::{self, pointwise_conv2d, PointwiseConfig};
use crate::reduce;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct FactorizedReduce {
    conv_1: Conv2d,
    conv_2: Conv2d,
    bn: BatchNorm,
    relu: bool,
}

impl FactorizedReduce {
    /// `(conv_1 weight, conv_2 weight, BN, leading ReLU)`.
    pub(crate) fn parts(&self) -> (&Tensor, &Tensor, &BatchNorm, bool) {
        (
            self.conv_1.weight(),
            self.conv_2.weight(),
            &self.bn,
            self.relu,
        )
    }

    /// The parameters in the fused kernels' flat order: both weights, then gamma and beta
    /// if BN has them.
    pub(crate) fn flat_params(&self) -> Result<Vec<Tensor>> {
        let mut out = vec![
            self.conv_1.weight().flatten_all()?,
            self.conv_2.weight().flatten_all()?,
        ];
        if let Some((gamma, beta)) = self.bn.affine() {
            out.extend([gamma.clone(), beta.clone()]);
        }
        Ok(out)
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

/// FactorizedReduce's shapes for the fused CPU kernels (`mixed_fused.rs`,
/// `cell_fused.rs`); even input sizes only (as the reference), so both halves line up.
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
    /// The geometry of `module` on an input of shape `x`; `None` for odd sizes.
    pub(crate) fn new(module: &FactorizedReduce, x: &[usize]) -> Result<Option<Self>> {
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
        let (w1, w2, bn, relu) = module.parts();
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
            eps: bn.config().eps,
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
