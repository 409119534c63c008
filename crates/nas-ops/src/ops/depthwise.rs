//! Depthwise 2-D convolution (one `k x k` filter per channel), optionally on `relu(x)`,
//! as a fused candle op with hand-written backward (input and weight gradients).
//!
//! The separable and dilated convolutions of DARTS (paper, section 3.1.1) and ENAS are a
//! depthwise convolution followed by a 1x1 one. candle's grouped convolution runs one
//! convolution per group; this kernel runs every (image, channel) plane in parallel with
//! contiguous inner loops, and fuses the ReLU that precedes it.

use std::borrow::Cow;

use candle_core::{Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::buffer::par_chunks_new;
use crate::kernels::depthwise_dense;
use crate::kernels::elem::{act, Elem};
use crate::kernels::padded::{self, Dense};
use crate::kernels::reduce;
use crate::ops::shell::custom_op;
use crate::ops::storage::dispatch;

/// Geometry of a depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseConfig {
    /// Stride (1 or 2 in DARTS and ENAS; any positive value works).
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Dilation (2 for DARTS's `dil_conv`).
    pub dilation: usize,
    /// Apply ReLU to the input first (fused: no ReLU tensor is made).
    pub relu_input: bool,
}

impl Default for DepthwiseConfig {
    fn default() -> Self {
        DepthwiseConfig {
            stride: 1,
            padding: 0,
            dilation: 1,
            relu_input: false,
        }
    }
}

/// `y = depthwise_conv(relu?(x), w)`, x `[n, c, h, w]`, w `[c, 1, k, k]`, no bias.
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, cfg: DepthwiseConfig) -> Result<Tensor> {
    let geom = Geometry::new(x.dims(), w.dims(), cfg)?;
    x.contiguous()?
        .apply_op2(&w.contiguous()?, DepthwiseConv2d { geom })
}

/// The plain-tensor reference: candle's grouped convolution on `relu?(x)`.
pub fn depthwise_conv2d_slow(x: &Tensor, w: &Tensor, cfg: DepthwiseConfig) -> Result<Tensor> {
    let x = if cfg.relu_input { x.relu()? } else { x.clone() };
    let channels = x.dim(1)?;
    x.conv2d(w, cfg.padding, cfg.stride, cfg.dilation, channels)
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    oh: usize,
    ow: usize,
    cfg: DepthwiseConfig,
}

const OP: &str = "depthwise_conv2d";

impl Geometry {
    pub(crate) fn new(x: &[usize], w: &[usize], cfg: DepthwiseConfig) -> Result<Self> {
        let &[n, c, h, wd] = x else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "input [n, c, h, w]".to_string(),
                got: x.to_vec(),
            }
            .into());
        };
        let &[wc, 1, k, k2] = w else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: format!("weight [{c}, 1, k, k]"),
                got: w.to_vec(),
            }
            .into());
        };
        if wc != c || k != k2 || k == 0 {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: format!("weight [{c}, 1, k, k] for an input with {c} channels"),
                got: w.to_vec(),
            }
            .into());
        }
        if cfg.stride == 0 || cfg.dilation == 0 {
            return Err(Error::Unsupported {
                op: OP,
                message: format!(
                    "stride {} and dilation {} must be positive",
                    cfg.stride, cfg.dilation
                ),
            }
            .into());
        }
        let span = cfg.dilation * (k - 1) + 1;
        let out = |size: usize| {
            (size + 2 * cfg.padding)
                .checked_sub(span)
                .map(|v| v / cfg.stride + 1)
        };
        let (Some(oh), Some(ow)) = (out(h), out(wd)) else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: format!(
                    "an input of at least {span} x {span} after padding {}",
                    cfg.padding
                ),
                got: x.to_vec(),
            }
            .into());
        };
        Ok(Geometry {
            n,
            c,
            h,
            w: wd,
            k,
            oh,
            ow,
            cfg,
        })
    }

    /// Output rows (or columns) `o` for which `o * stride + tap * dilation - padding` lies in
    /// `0..size`, as a range.
    fn valid(&self, tap: usize, size: usize, out: usize) -> std::ops::Range<usize> {
        let s = self.cfg.stride as isize;
        let shift = (tap * self.cfg.dilation) as isize - self.cfg.padding as isize;
        // o * s + shift >= 0  and  o * s + shift <= size - 1
        let lo = if shift >= 0 {
            0
        } else {
            ((-shift) + s - 1) / s
        };
        let hi = (size as isize - 1 - shift).div_euclid(s) + 1;
        let hi = hi.clamp(0, out as isize) as usize;
        (lo as usize).min(hi)..hi
    }

    /// Input index for output index `o` and tap `t` (only called inside `valid`).
    #[inline(always)]
    fn input_index(&self, o: usize, tap: usize) -> usize {
        o * self.cfg.stride + tap * self.cfg.dilation - self.cfg.padding
    }

    pub(crate) fn out_shape(&self) -> Shape {
        Shape::from((self.n, self.c, self.oh, self.ow))
    }

    /// The padded-plane layout of the stride-1 kernels (`depthwise_dense.rs`). Stride 2
    /// runs them too, at stride 1, subsampling the output (and spreading its gradient):
    /// four times the arithmetic, but vectorised (the first-order search step, whose
    /// reduction cells have them, took 2.10 s instead of 2.23 s, medians of three runs);
    /// larger strides take the row-by-row kernels below.
    fn dense(&self) -> Option<Dense> {
        let span = self.cfg.dilation * (self.k - 1);
        (self.cfg.stride <= 2).then_some(Dense {
            h: self.h,
            w: self.w,
            k: self.k,
            padding: self.cfg.padding,
            dilation: self.cfg.dilation,
            oh: self.h + 2 * self.cfg.padding - span,
            ow: self.w + 2 * self.cfg.padding - span,
        })
    }

    /// `(oh, ow)` at stride 1 and at the op's stride.
    fn sizes(&self, d: &Dense) -> ((usize, usize), (usize, usize)) {
        ((d.oh, d.ow), (self.oh, self.ow))
    }

    /// The output gradient as the stride-1 kernels take it (spread out when strided).
    fn unit_stride_grad<'a, T: Elem>(&self, d: &Dense, dy: &'a [T]) -> Cow<'a, [T]> {
        if self.cfg.stride == 1 {
            return Cow::Borrowed(dy);
        }
        let (one, strided) = self.sizes(d);
        Cow::Owned(padded::upsample(dy, strided, self.cfg.stride, one))
    }

    #[cfg(feature = "cuda")]
    fn gpu(&self) -> Result<crate::cuda::DwGeom> {
        use crate::cuda::int;
        Ok(crate::cuda::DwGeom {
            n: int(self.n, OP)?,
            c: int(self.c, OP)?,
            h: int(self.h, OP)?,
            w: int(self.w, OP)?,
            k: int(self.k, OP)?,
            oh: int(self.oh, OP)?,
            ow: int(self.ow, OP)?,
            stride: int(self.cfg.stride, OP)?,
            pad: int(self.cfg.padding, OP)?,
            dil: int(self.cfg.dilation, OP)?,
            relu: i32::from(self.cfg.relu_input),
        })
    }
}

/// One kernel tap (`kh`, `kw`) with the output rows and columns whose input it reaches.
struct Tap {
    /// `kh * k + kw`.
    index: usize,
    kh: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    /// Input column of the first output column in `cols`.
    iw0: usize,
}

impl Geometry {
    /// Every tap that reaches the input at all.
    fn taps(&self) -> impl Iterator<Item = Tap> + '_ {
        (0..self.k).flat_map(move |kh| {
            let rows = self.valid(kh, self.h, self.oh);
            (0..self.k).filter_map(move |kw| {
                let cols = self.valid(kw, self.w, self.ow);
                if rows.is_empty() || cols.is_empty() {
                    return None;
                }
                let iw0 = self.input_index(cols.start, kw);
                Some(Tap {
                    index: kh * self.k + kw,
                    kh,
                    rows: rows.clone(),
                    cols,
                    iw0,
                })
            })
        })
    }
}

pub(crate) fn forward<T: Elem>(g: &Geometry, x: &[T], w: &[T]) -> Vec<T> {
    if let Some(d) = g.dense() {
        let full = depthwise_dense::forward(&d, g.c, x, w, g.cfg.relu_input);
        if g.cfg.stride == 1 {
            return full;
        }
        let (one, strided) = g.sizes(&d);
        return padded::subsample(&full, one, g.cfg.stride, strided);
    }
    // One monomorphised loop nest with and one without the ReLU, so neither branches
    // per element.
    if g.cfg.relu_input {
        forward_impl::<T, true>(g, x, w)
    } else {
        forward_impl::<T, false>(g, x, w)
    }
}

fn forward_impl<T: Elem, const RELU: bool>(g: &Geometry, x: &[T], w: &[T]) -> Vec<T> {
    let (plane_in, plane_out, kk, s) = (g.h * g.w, g.oh * g.ow, g.k * g.k, g.cfg.stride);
    par_chunks_new(g.n * g.c * plane_out, plane_out, |plane, yp| {
        let xp = &x[plane * plane_in..(plane + 1) * plane_in];
        let wp = &w[(plane % g.c) * kk..(plane % g.c + 1) * kk];
        for tap in g.taps() {
            let wv = wp[tap.index];
            for oh in tap.rows.clone() {
                let xrow = &xp[g.input_index(oh, tap.kh) * g.w..];
                let ys = &mut yp[oh * g.ow + tap.cols.start..oh * g.ow + tap.cols.end];
                for (i, yv) in ys.iter_mut().enumerate() {
                    *yv = *yv + wv * act(xrow[tap.iw0 + i * s], RELU);
                }
            }
        }
    })
}

/// `(dx, dw)`: [`input_grad`] and [`weight_grad`], in one pass on padded planes.
pub(crate) fn backward<T: Elem>(g: &Geometry, dy: &[T], w: &[T], x: &[T]) -> (Vec<T>, Vec<T>) {
    match g.dense() {
        Some(d) => {
            let dy = g.unit_stride_grad(&d, dy);
            depthwise_dense::backward(&d, g.c, &dy, w, x, g.cfg.relu_input)
        }
        None => (input_grad(g, dy, w, x), weight_grad(g, dy, x)),
    }
}

pub(crate) fn input_grad<T: Elem>(g: &Geometry, dy: &[T], w: &[T], x: &[T]) -> Vec<T> {
    if let Some(d) = g.dense() {
        let dy = g.unit_stride_grad(&d, dy);
        return depthwise_dense::input_grad(&d, g.c, &dy, w, x, g.cfg.relu_input);
    }
    let (plane_in, plane_out, kk, s) = (g.h * g.w, g.oh * g.ow, g.k * g.k, g.cfg.stride);
    par_chunks_new(g.n * g.c * plane_in, plane_in, |plane, dxp| {
        let dyp = &dy[plane * plane_out..(plane + 1) * plane_out];
        let wp = &w[(plane % g.c) * kk..(plane % g.c + 1) * kk];
        for tap in g.taps() {
            let wv = wp[tap.index];
            for oh in tap.rows.clone() {
                let ih = g.input_index(oh, tap.kh);
                let dxrow = &mut dxp[ih * g.w..(ih + 1) * g.w];
                let dyrow = &dyp[oh * g.ow + tap.cols.start..oh * g.ow + tap.cols.end];
                for (i, &gv) in dyrow.iter().enumerate() {
                    dxrow[tap.iw0 + i * s] = dxrow[tap.iw0 + i * s] + wv * gv;
                }
            }
        }
        if g.cfg.relu_input {
            let xp = &x[plane * plane_in..(plane + 1) * plane_in];
            for (d, &xv) in dxp.iter_mut().zip(xp) {
                if xv <= T::zero() {
                    *d = T::zero();
                }
            }
        }
    })
}

pub(crate) fn weight_grad<T: Elem>(g: &Geometry, dy: &[T], x: &[T]) -> Vec<T> {
    if let Some(d) = g.dense() {
        let dy = g.unit_stride_grad(&d, dy);
        return depthwise_dense::weight_grad(&d, g.c, &dy, x, g.cfg.relu_input);
    }
    if g.cfg.relu_input {
        weight_grad_impl::<T, true>(g, dy, x)
    } else {
        weight_grad_impl::<T, false>(g, dy, x)
    }
}

fn weight_grad_impl<T: Elem, const RELU: bool>(g: &Geometry, dy: &[T], x: &[T]) -> Vec<T> {
    let (plane_in, plane_out, kk, s) = (g.h * g.w, g.oh * g.ow, g.k * g.k, g.cfg.stride);
    // Per-plane partial sums, reduced over the batch in a fixed order (deterministic).
    let mut partial = vec![T::zero(); g.n * g.c * kk];
    partial
        .par_chunks_mut(kk)
        .enumerate()
        .for_each(|(plane, pp)| {
            let xp = &x[plane * plane_in..(plane + 1) * plane_in];
            let dyp = &dy[plane * plane_out..(plane + 1) * plane_out];
            for tap in g.taps() {
                let mut acc = T::zero();
                for oh in tap.rows.clone() {
                    let xrow = &xp[g.input_index(oh, tap.kh) * g.w..];
                    let dyrow = &dyp[oh * g.ow + tap.cols.start..oh * g.ow + tap.cols.end];
                    for (i, &gv) in dyrow.iter().enumerate() {
                        acc = acc + gv * act(xrow[tap.iw0 + i * s], RELU);
                    }
                }
                pp[tap.index] = acc;
            }
        });
    reduce::sum_parts(partial.chunks_exact(g.c * kk), g.c * kk)
}

struct DepthwiseConv2d {
    geom: Geometry,
}

custom_op! {
    DepthwiseConv2d: CustomOp2 = OP;
    cpu(&self, s1, l1, s2, l2) {
        let g = &self.geom;
        dispatch!(OP, [(s1, l1) => x, (s2, l2) => w], |T| {
            Ok((T::storage(forward::<T>(g, x, w)), g.out_shape()))
        })
    }
    cuda(&self, s1, l1, s2, l2) {
        use crate::cuda::{self, kernels::DEPTHWISE, Launch, PushKernelArg};
        let (g, dev) = (&self.geom, &s1.device);
        let geom = g.gpu()?;
        cuda::cuda_dispatch!(OP, [(s1, l1) => x, (s2, l2) => w], |T| {
            let len = g.n * g.c * g.oh * g.ow;
            let mut y = cuda::output::<T>(dev, len)?;
            let k = cuda::kernel::<T>(dev, &DEPTHWISE, "depthwise_fwd", Launch::Elements(len))?;
            let mut args = k.args();
            args.arg(&x).arg(&w).arg(&mut y).arg(&geom);
            k.launch(args)?;
            Ok((cuda::storage(y, dev), g.out_shape()))
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
            let dx = dy.apply_op3_no_bwd(w, x, &DepthwiseInputGrad { geom: self.geom })?;
            let dw = dy.apply_op2_no_bwd(x, &DepthwiseWeightGrad { geom: self.geom })?;
            Ok((Some(dx), Some(dw)))
        }
    }
}

/// `(dy, w, x) -> dx`.
struct DepthwiseInputGrad {
    geom: Geometry,
}

custom_op! {
    DepthwiseInputGrad: CustomOp3 = "depthwise_conv2d_input_grad";
    cpu(&self, s1, l1, s2, l2, s3, l3) {
        let g = &self.geom;
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => w, (s3, l3) => x], |T| {
            Ok((T::storage(input_grad::<T>(g, dy, w, x)), Shape::from((g.n, g.c, g.h, g.w))))
        })
    }
    cuda(&self, s1, l1, s2, l2, s3, l3) {
        use crate::cuda::{self, kernels::DEPTHWISE, Launch, PushKernelArg};
        let (g, dev) = (&self.geom, &s1.device);
        let geom = g.gpu()?;
        cuda::cuda_dispatch!(OP, [(s1, l1) => dy, (s2, l2) => w, (s3, l3) => x], |T| {
            let len = g.n * g.c * g.h * g.w;
            let mut dx = cuda::output::<T>(dev, len)?;
            let k = cuda::kernel::<T>(dev, &DEPTHWISE, "depthwise_dgrad", Launch::Elements(len))?;
            let mut args = k.args();
            args.arg(&dy).arg(&w).arg(&x).arg(&mut dx).arg(&geom);
            k.launch(args)?;
            Ok((cuda::storage(dx, dev), Shape::from((g.n, g.c, g.h, g.w))))
        })
    }
}

/// `(dy, x) -> dw`.
struct DepthwiseWeightGrad {
    geom: Geometry,
}

custom_op! {
    DepthwiseWeightGrad: CustomOp2 = "depthwise_conv2d_weight_grad";
    cpu(&self, s1, l1, s2, l2) {
        let g = &self.geom;
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => x], |T| {
            Ok((T::storage(weight_grad::<T>(g, dy, x)), Shape::from((g.c, 1, g.k, g.k))))
        })
    }
    cuda(&self, s1, l1, s2, l2) {
        use crate::cuda::{self, kernels::DEPTHWISE, Launch, PushKernelArg};
        let (g, dev) = (&self.geom, &s1.device);
        let geom = g.gpu()?;
        cuda::cuda_dispatch!(OP, [(s1, l1) => dy, (s2, l2) => x], |T| {
            let jobs = g.c * g.k * g.k;
            let mut dw = cuda::output::<T>(dev, jobs)?;
            let k = cuda::kernel::<T>(dev, &DEPTHWISE, "depthwise_wgrad", Launch::Blocks(jobs))?;
            let mut args = k.args();
            args.arg(&dy).arg(&x).arg(&mut dw).arg(&geom);
            k.launch(args)?;
            Ok((cuda::storage(dw, dev), Shape::from((g.c, 1, g.k, g.k))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_check, randn};
    use candle_core::{DType, Device};

    fn configs() -> Vec<(usize, DepthwiseConfig)> {
        let mut out = Vec::new();
        for (k, dilation) in [(3, 1), (5, 1), (3, 2), (5, 2)] {
            for stride in [1, 2, 3] {
                for relu_input in [false, true] {
                    let padding = dilation * (k - 1) / 2;
                    out.push((
                        k,
                        DepthwiseConfig {
                            stride,
                            padding,
                            dilation,
                            relu_input,
                        },
                    ));
                }
            }
        }
        // Without padding (a "valid" convolution), and with more padding than "same".
        for (padding, stride) in [(0, 1), (0, 2), (3, 1)] {
            let cfg = DepthwiseConfig {
                stride,
                padding,
                dilation: 1,
                relu_input: true,
            };
            out.push((3, cfg));
        }
        out
    }

    #[test]
    fn matches_slow_reference() -> Result<()> {
        let dev = Device::Cpu;
        for (k, cfg) in configs() {
            let x = randn(&[3, 4, 7, 9], DType::F32, &dev)?;
            let w = randn(&[4, 1, k, k], DType::F32, &dev)?;
            let fast = depthwise_conv2d(&x, &w, cfg)?;
            let slow = depthwise_conv2d_slow(&x, &w, cfg)?;
            assert_close(&fast, &slow, 1e-5, 1e-4, &format!("k={k} {cfg:?}"))?;
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (k, cfg) in configs() {
            let x = randn(&[3, 2, 7, 9], DType::F64, &dev)?;
            let w = randn(&[2, 1, k, k], DType::F64, &dev)?;
            grad_check(
                &[x, w],
                |v| depthwise_conv2d(&v[0], &v[1], cfg),
                &format!("k={k} {cfg:?}"),
            )?;
        }
        Ok(())
    }

    /// The one-pass backward equals the two gradients computed apart (each checked
    /// against finite differences above).
    #[test]
    fn one_pass_backward_matches_the_two_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (k, cfg) in configs() {
            let x = randn(&[3, 2, 7, 9], DType::F64, &dev)?;
            let w = randn(&[2, 1, k, k], DType::F64, &dev)?;
            let g = Geometry::new(x.dims(), w.dims(), cfg)?;
            let dy = randn(g.out_shape().dims(), DType::F64, &dev)?;
            let (x, w, dy): (Vec<f64>, Vec<f64>, Vec<f64>) = (
                x.flatten_all()?.to_vec1()?,
                w.flatten_all()?.to_vec1()?,
                dy.flatten_all()?.to_vec1()?,
            );
            let (dx, dw) = backward(&g, &dy, &w, &x);
            assert_eq!(dx, input_grad(&g, &dy, &w, &x), "dx, k={k} {cfg:?}");
            assert_eq!(dw, weight_grad(&g, &dy, &x), "dw, k={k} {cfg:?}");
        }
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 1, 3, 3), DType::F32, &dev).unwrap();
        let err = depthwise_conv2d(&x, &w, DepthwiseConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("depthwise_conv2d: expected weight [3, 1, k, k] for an input with 3 channels, got shape [4, 1, 3, 3]"), "{err}");
        let small = Tensor::zeros((1, 4, 2, 2), DType::F32, &dev).unwrap();
        let err = depthwise_conv2d(&small, &w, DepthwiseConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("an input of at least 3 x 3"), "{err}");
        let ints = Tensor::zeros((1, 4, 8, 8), DType::U8, &dev).unwrap();
        let w8 = Tensor::zeros((4, 1, 3, 3), DType::U8, &dev).unwrap();
        let err = depthwise_conv2d(&ints, &w8, DepthwiseConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("dtype U8 is not supported"), "{err}");
    }
}
