//! 1x1 convolution, optionally strided (`x[:, :, offset::s, offset::s]`) and on
//! `relu(x)`, as one fused candle op with hand-written backward.
//!
//! Every DARTS and ENAS cell is full of 1x1 convolutions: the preprocessing ReLU-Conv-BN,
//! the pointwise half of every separable and dilated convolution, the two shifted
//! stride-2 convolutions of FactorizedReduce. Written with candle's tensor ops, one such
//! convolution is a ReLU, two index selects, reshapes, a broadcast weight and a batched
//! matrix product: each of them a node to which candle's backward pass allocates and adds
//! a gradient. Here it is one node, and neither the ReLU'd nor the subsampled input is
//! ever stored.
//!
//! The products run on the `gemm` crate's kernels (see `gemm.rs`), one single-threaded
//! product per image (forward, input gradient) or per block of output channels (weight
//! gradient, summing the images in order), in parallel with rayon; every sum has a fixed
//! order, so results do not depend on the number of threads. Tensors not on the CPU take
//! the plain-tensor path ([`pointwise_conv2d_slow`]).

use candle_core::{Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::buffer::{par_chunk_pairs_new_init, par_chunks_new};
use crate::kernels::elem::{act, Elem};
use crate::kernels::gemm::{matmul, MatRef};
use crate::kernels::reduce;
use crate::ops::shell::custom_op;
use crate::ops::storage::dispatch;

/// Geometry of a [`pointwise_conv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointwiseConfig {
    /// Stride: the convolution reads every `stride`-th row and column.
    pub stride: usize,
    /// First row and column read (FactorizedReduce's second convolution reads
    /// `x[:, :, 1:, 1:]`, i.e. offset 1); below `stride`.
    pub offset: usize,
    /// Apply ReLU to the input first.
    pub relu_input: bool,
}

impl Default for PointwiseConfig {
    fn default() -> Self {
        PointwiseConfig {
            stride: 1,
            offset: 0,
            relu_input: false,
        }
    }
}

/// `y[n, o] = sum_i w[o, i] * relu?(x)[n, i, offset::stride, offset::stride]`, with x
/// `[n, in, h, w]` and w `[out, in, 1, 1]` (or `[out, in]`); no bias.
pub fn pointwise_conv2d(x: &Tensor, w: &Tensor, cfg: PointwiseConfig) -> Result<Tensor> {
    let geom = Geometry::new(x.dims(), w.dims(), cfg)?;
    if !x.device().is_cpu() {
        return pointwise_conv2d_slow(x, w, cfg);
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Pointwise { geom })
}

/// The plain-tensor reference: ReLU, subsampling by index selects, and a batched matrix
/// product.
pub fn pointwise_conv2d_slow(x: &Tensor, w: &Tensor, cfg: PointwiseConfig) -> Result<Tensor> {
    let g = Geometry::new(x.dims(), w.dims(), cfg)?;
    let x = if cfg.relu_input { x.relu()? } else { x.clone() };
    let x = crate::ops::subsample::subsample(&x, cfg.stride, cfg.offset)?;
    let y =
        w.reshape((g.cout, g.cin))?
            .broadcast_matmul(&x.reshape((g.n, g.cin, g.oh * g.ow))?)?;
    y.reshape((g.n, g.cout, g.oh, g.ow))
}

const OP: &str = "pointwise_conv2d";

#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    cfg: PointwiseConfig,
}

impl Geometry {
    pub(crate) fn new(x: &[usize], w: &[usize], cfg: PointwiseConfig) -> Result<Self> {
        let &[n, cin, h, wd] = x else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "input [n, c, h, w]".to_string(),
                got: x.to_vec(),
            }
            .into());
        };
        let cout = match w {
            &[o, i, 1, 1] | &[o, i] if i == cin => o,
            _ => {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    expected: format!("weight [out, {cin}, 1, 1] for an input with {cin} channels"),
                    got: w.to_vec(),
                }
                .into())
            }
        };
        if cfg.stride == 0 || cfg.offset >= cfg.stride {
            return Err(Error::Unsupported {
                op: OP,
                message: format!(
                    "stride {} must be positive and offset {} below it",
                    cfg.stride, cfg.offset
                ),
            }
            .into());
        }
        if h <= cfg.offset || wd <= cfg.offset || n * cin * cout == 0 {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: format!(
                    "a non-empty input larger than {} x {} (the offset)",
                    cfg.offset, cfg.offset
                ),
                got: x.to_vec(),
            }
            .into());
        }
        let out = |size: usize| (size - cfg.offset - 1) / cfg.stride + 1;
        Ok(Geometry {
            n,
            cin,
            cout,
            h,
            w: wd,
            oh: out(h),
            ow: out(wd),
            cfg,
        })
    }

    fn plane_in(&self) -> usize {
        self.h * self.w
    }

    fn plane_out(&self) -> usize {
        self.oh * self.ow
    }

    /// Whether the convolution reads every pixel (no subsampling).
    fn dense(&self) -> bool {
        self.cfg.stride == 1
    }

    pub(crate) fn out_shape(&self) -> Shape {
        Shape::from((self.n, self.cout, self.oh, self.ow))
    }

    /// One image's input as the product reads it, `[in, oh * ow]`: subsampled and
    /// ReLU'd. `None` when that is the input itself (dense, no ReLU).
    fn operand<T: Elem>(&self, xi: &[T]) -> Option<Vec<T>> {
        let relu = self.cfg.relu_input;
        if self.dense() {
            return relu.then(|| xi.iter().map(|&v| act(v, true)).collect());
        }
        let (pi, po) = (self.plane_in(), self.plane_out());
        let mut out = vec![T::zero(); self.cin * po];
        let (s, o) = (self.cfg.stride, self.cfg.offset);
        for (dst, src) in out.chunks_exact_mut(po).zip(xi.chunks_exact(pi)) {
            // Row by row: `source(p)` per element costs two integer divisions.
            for (r, drow) in dst.chunks_exact_mut(self.ow).enumerate() {
                let srow = &src[(o + r * s) * self.w + o..];
                for (c, d) in drow.iter_mut().enumerate() {
                    *d = act(srow[c * s], relu);
                }
            }
        }
        Some(out)
    }
}

/// Images per job of the weight gradient (a fixed number, so that results do not depend
/// on the number of threads).
const DW_IMAGES: usize = 4;

/// `y[n] = w x[n]`, one product per image, images in parallel.
pub(crate) fn forward<T: Elem>(g: &Geometry, x: &[T], w: &[T]) -> Vec<T> {
    let (pi, po) = (g.plane_in(), g.plane_out());
    par_chunks_new(g.n * g.cout * po, g.cout * po, |img, yi| {
        let xi = &x[img * g.cin * pi..(img + 1) * g.cin * pi];
        let own = g.operand(xi);
        let b = own.as_deref().unwrap_or(xi);
        matmul(
            yi,
            MatRef::rows(w, g.cout, g.cin),
            MatRef::rows(b, g.cin, po),
            false,
        );
    })
}

/// `dx[n] = w^T dy[n]`, scattered back to the pixels the forward read and masked by the
/// ReLU.
pub(crate) fn input_grad<T: Elem>(g: &Geometry, dy: &[T], w: &[T], x: &[T]) -> Vec<T> {
    let (pi, po) = (g.plane_in(), g.plane_out());
    par_chunks_new(g.n * g.cin * pi, g.cin * pi, |img, dxi| {
        let dyi = &dy[img * g.cout * po..(img + 1) * g.cout * po];
        let xi = &x[img * g.cin * pi..(img + 1) * g.cin * pi];
        g.image_input_grad(dyi, w, xi, dxi);
    })
}

impl Geometry {
    /// One image's input gradient `dxi` (zeros on entry) from its output gradient.
    fn image_input_grad<T: Elem>(&self, dyi: &[T], w: &[T], xi: &[T], dxi: &mut [T]) {
        let (pi, po) = (self.plane_in(), self.plane_out());
        let wt = MatRef::transposed(w, self.cout, self.cin);
        let dyv = MatRef::rows(dyi, self.cout, po);
        if self.dense() {
            matmul(dxi, wt, dyv, false);
        } else {
            let mut prod = vec![T::zero(); self.cin * po];
            matmul(&mut prod, wt, dyv, false);
            let (s, o) = (self.cfg.stride, self.cfg.offset);
            for (dplane, pplane) in dxi.chunks_exact_mut(pi).zip(prod.chunks_exact(po)) {
                for (r, prow) in pplane.chunks_exact(self.ow).enumerate() {
                    let drow = &mut dplane[(o + r * s) * self.w + o..];
                    for (c, &v) in prow.iter().enumerate() {
                        drow[c * s] = v;
                    }
                }
            }
        }
        if self.cfg.relu_input {
            for (d, &xv) in dxi.iter_mut().zip(xi) {
                if xv <= T::zero() {
                    *d = T::zero();
                }
            }
        }
    }
}

/// `(dx, dw)` in one pass over the images, each image's output gradient made by
/// `dy_of(img, dyi)` into a scratch buffer (`cout * oh * ow`) right where it is used: a
/// caller that computes it per image (BN's input gradient, in `separable.rs`) never
/// stores the whole tensor. The weight gradient is one product per image, the images'
/// products added in image order.
pub(crate) fn backward_with<T, F>(g: &Geometry, w: &[T], x: &[T], dy_of: F) -> (Vec<T>, Vec<T>)
where
    T: Elem,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    let (pi, po) = (g.plane_in(), g.plane_out());
    let (dx, partial) = par_chunk_pairs_new_init(
        g.n * g.cin * pi,
        g.cin * pi,
        g.cout * g.cin,
        Vec::new,
        |dyi: &mut Vec<T>, img, dxi, dwi| {
            dyi.resize(g.cout * po, T::zero());
            dy_of(img, dyi);
            let xi = &x[img * g.cin * pi..(img + 1) * g.cin * pi];
            let own = g.operand(xi);
            let xo = own.as_deref().unwrap_or(xi);
            matmul(
                dwi,
                MatRef::rows(dyi, g.cout, po),
                MatRef::transposed(xo, g.cin, po),
                false,
            );
            g.image_input_grad(dyi, w, xi, dxi);
        },
    );
    let len = g.cout * g.cin;
    (dx, reduce::sum_parts(partial.chunks_exact(len), len))
}

/// `dw = sum_n dy[n] x[n]^T` (x as the forward read it): jobs over fixed groups of
/// [`DW_IMAGES`] images, each a whole `[out, in]` partial sum (one product per image, so
/// each image's operands are packed once), the partials added in group order (results do
/// not depend on the number of threads).
pub(crate) fn weight_grad<T: Elem>(g: &Geometry, dy: &[T], x: &[T]) -> Vec<T> {
    let (pi, po) = (g.plane_in(), g.plane_out());
    let groups: Vec<usize> = (0..g.n).step_by(DW_IMAGES).collect();
    let partials: Vec<Vec<T>> = groups
        .into_par_iter()
        .map(|first| {
            let mut acc = vec![T::zero(); g.cout * g.cin];
            for img in first..(first + DW_IMAGES).min(g.n) {
                let xi = &x[img * g.cin * pi..(img + 1) * g.cin * pi];
                let own = g.operand(xi);
                let xi = own.as_deref().unwrap_or(xi);
                let dyi = &dy[img * g.cout * po..(img + 1) * g.cout * po];
                matmul(
                    &mut acc,
                    MatRef::rows(dyi, g.cout, po),
                    MatRef::transposed(xi, g.cin, po),
                    img > first,
                );
            }
            acc
        })
        .collect();
    reduce::sum_parts(partials.iter().map(Vec::as_slice), g.cout * g.cin)
}

struct Pointwise {
    geom: Geometry,
}

custom_op! {
    Pointwise: CustomOp2 = OP;
    cpu(&self, s1, l1, s2, l2) {
        let g = &self.geom;
        dispatch!(OP, [(s1, l1) => x, (s2, l2) => w], |T| {
            Ok((T::storage(forward::<T>(g, x, w)), g.out_shape()))
        })
    }
    extra {
        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let dy = dy.contiguous()?;
            let dx = dy.apply_op3_no_bwd(w, x, &PointwiseInputGrad { geom: self.geom })?;
            let dw = dy
                .apply_op2_no_bwd(x, &PointwiseWeightGrad { geom: self.geom })?
                .reshape(w.shape())?;
            Ok((Some(dx), Some(dw)))
        }
    }
}

/// `(dy, w, x) -> dx`.
struct PointwiseInputGrad {
    geom: Geometry,
}

custom_op! {
    PointwiseInputGrad: CustomOp3 = "pointwise_conv2d_input_grad";
    cpu(&self, s1, l1, s2, l2, s3, l3) {
        let g = &self.geom;
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => w, (s3, l3) => x], |T| {
            Ok((T::storage(input_grad::<T>(g, dy, w, x)), Shape::from((g.n, g.cin, g.h, g.w))))
        })
    }
}

/// `(dy, x) -> dw` as `[out, in]`.
struct PointwiseWeightGrad {
    geom: Geometry,
}

custom_op! {
    PointwiseWeightGrad: CustomOp2 = "pointwise_conv2d_weight_grad";
    cpu(&self, s1, l1, s2, l2) {
        let g = &self.geom;
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => x], |T| {
            Ok((T::storage(weight_grad::<T>(g, dy, x)), Shape::from((g.cout, g.cin))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_check, randn};
    use candle_core::{DType, Device};

    fn configs() -> Vec<PointwiseConfig> {
        let mut out = Vec::new();
        for (stride, offset) in [(1, 0), (2, 0), (2, 1)] {
            for relu_input in [false, true] {
                out.push(PointwiseConfig {
                    stride,
                    offset,
                    relu_input,
                });
            }
        }
        out
    }

    #[test]
    fn matches_slow_reference_and_convolution() -> Result<()> {
        let dev = Device::Cpu;
        // 7 output channels: a partial block of rows; 37 pixels: a partial lane chunk.
        for (h, w) in [(7, 9), (8, 8), (1, 37)] {
            for cfg in configs() {
                if h <= cfg.offset {
                    continue;
                }
                let x = randn(&[3, 5, h, w], DType::F32, &dev)?;
                let wt = randn(&[7, 5, 1, 1], DType::F32, &dev)?;
                let what = format!("{h}x{w} {cfg:?}");
                let fast = pointwise_conv2d(&x, &wt, cfg)?;
                let slow = pointwise_conv2d_slow(&x, &wt, cfg)?;
                assert_close(&fast, &slow, 1e-5, 1e-4, &what)?;
                // candle's own convolution on the cropped input, as a second opinion.
                let xr = if cfg.relu_input { x.relu()? } else { x.clone() };
                let cropped = xr.narrow(2, cfg.offset, h - cfg.offset)?.narrow(
                    3,
                    cfg.offset,
                    w - cfg.offset,
                )?;
                let conv = cropped.contiguous()?.conv2d(&wt, 0, cfg.stride, 1, 1)?;
                assert_close(&fast, &conv, 1e-5, 1e-4, &what)?;
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for cfg in configs() {
            let x = randn(&[3, 2, 7, 9], DType::F64, &dev)?;
            let w = randn(&[5, 2, 1, 1], DType::F64, &dev)?;
            grad_check(
                &[x, w],
                |v| pointwise_conv2d(&v[0], &v[1], cfg),
                &format!("{cfg:?}"),
            )?;
        }
        Ok(())
    }

    #[test]
    fn gradients_match_the_slow_reference_at_scale() -> Result<()> {
        // Larger than the finite-difference check: full row blocks, 8-lane chunks.
        let dev = Device::Cpu;
        for cfg in configs() {
            let x = candle_core::Var::from_tensor(&randn(&[4, 16, 12, 12], DType::F64, &dev)?)?;
            let w = candle_core::Var::from_tensor(&randn(&[24, 16, 1, 1], DType::F64, &dev)?)?;
            let up = randn(pointwise_conv2d(&x, &w, cfg)?.dims(), DType::F64, &dev)?;
            let grads = |y: Tensor| -> Result<(Tensor, Tensor)> {
                let store = (y * &up)?.sum_all()?.backward()?;
                let get = |v: &candle_core::Var| {
                    store
                        .get(v.as_tensor())
                        .cloned()
                        .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
                };
                Ok((get(&x)?, get(&w)?))
            };
            let (fx, fw) = grads(pointwise_conv2d(&x, &w, cfg)?)?;
            let (sx, sw) = grads(pointwise_conv2d_slow(&x, &w, cfg)?)?;
            assert_close(&fx, &sx, 1e-10, 1e-10, &format!("dx {cfg:?}"))?;
            assert_close(&fw, &sw, 1e-10, 1e-10, &format!("dw {cfg:?}"))?;
        }
        Ok(())
    }

    /// The one-pass backward against the two gradients computed apart (each checked
    /// against finite differences above), with the output gradient made per image.
    #[test]
    fn one_pass_backward_matches_the_two_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for cfg in configs() {
            let x = randn(&[5, 3, 7, 9], DType::F64, &dev)?;
            let w = randn(&[4, 3, 1, 1], DType::F64, &dev)?;
            let g = Geometry::new(x.dims(), w.dims(), cfg)?;
            let dy = randn(g.out_shape().dims(), DType::F64, &dev)?;
            let (x, w, dy): (Vec<f64>, Vec<f64>, Vec<f64>) = (
                x.flatten_all()?.to_vec1()?,
                w.flatten_all()?.to_vec1()?,
                dy.flatten_all()?.to_vec1()?,
            );
            let image = dy.len() / 5;
            let (dx, dw) = backward_with(&g, &w, &x, |img, out| {
                out.copy_from_slice(&dy[img * image..(img + 1) * image])
            });
            assert_eq!(dx, input_grad(&g, &dy, &w, &x), "dx {cfg:?}");
            for (a, b) in dw.iter().zip(weight_grad(&g, &dy, &x)) {
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                    "dw {cfg:?}: {a} vs {b}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 2, 1, 1), DType::F32, &dev).unwrap();
        let err = pointwise_conv2d(&x, &w, PointwiseConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected weight [out, 3, 1, 1] for an input with 3 channels"),
            "{err}"
        );
        let w = Tensor::zeros((4, 3, 1, 1), DType::F32, &dev).unwrap();
        let cfg = PointwiseConfig {
            stride: 2,
            offset: 2,
            relu_input: false,
        };
        let err = pointwise_conv2d(&x, &w, cfg).unwrap_err().to_string();
        assert!(err.contains("offset 2 below it"), "{err}");
        let ints = Tensor::zeros((1, 3, 8, 8), DType::U8, &dev).unwrap();
        let w8 = Tensor::zeros((4, 3, 1, 1), DType::U8, &dev).unwrap();
        let err = pointwise_conv2d(&ints, &w8, PointwiseConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("dtype U8 is not supported"), "{err}");
    }

    #[test]
    fn same_result_with_one_thread_and_many() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(&[8, 16, 16, 16], DType::F32, &dev)?;
        let w = randn(&[32, 16, 1, 1], DType::F32, &dev)?;
        let g = Geometry::new(x.dims(), w.dims(), PointwiseConfig::default())?;
        let (xv, wv) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
        );
        let pool = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        };
        let dy = forward(&g, &xv, &wv);
        let a = pool(1)?.install(|| weight_grad(&g, &dy, &xv));
        let b = pool(3)?.install(|| weight_grad(&g, &dy, &xv));
        assert_eq!(a, b);
        Ok(())
    }
}
