//! Max and average 2-D pooling with padding, as fused candle ops with hand-written
//! backward.
//!
//! DARTS's `max_pool_3x3` and `avg_pool_3x3` (kernel 3, padding 1, stride 1 or 2; average
//! pooling with `count_include_pad=False`) and ENAS's pools. candle's own pooling has no
//! padding and its backward refuses a kernel size other than the stride.

use std::sync::{Arc, Mutex};

use candle_core::{Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::elem::Elem;
use crate::kernels::padded::{self, Dense};
use crate::kernels::pool_dense;
use crate::ops::shell::custom_op;
use crate::ops::storage::dispatch;

/// Which reduction a pooling window applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// The window's maximum; padding never wins (as if it were -inf).
    Max,
    /// The window's mean.
    Avg {
        /// Divide by the full window (true) or by the input positions it covers
        /// (false, DARTS's choice).
        count_include_pad: bool,
    },
}

/// Geometry of a pooling op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Max or average.
    pub kind: PoolKind,
    /// Window size (square).
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding on each side.
    pub padding: usize,
}

impl PoolConfig {
    /// DARTS's 3x3 pooling: padding 1, average without counting padding.
    pub fn darts(kind_is_max: bool, stride: usize) -> Self {
        PoolConfig {
            kind: if kind_is_max {
                PoolKind::Max
            } else {
                PoolKind::Avg {
                    count_include_pad: false,
                }
            },
            kernel: 3,
            stride,
            padding: 1,
        }
    }
}

const OP: &str = "pool2d";

/// Pools `x` `[n, c, h, w]`.
pub fn pool2d(x: &Tensor, cfg: PoolConfig) -> Result<Tensor> {
    let geom = Geometry::new(x.dims(), cfg)?;
    x.contiguous()?.apply_op1(Pool {
        geom,
        argmax: Arc::default(),
    })
}

/// The plain-tensor reference: pads explicitly and reduces shifted views.
pub fn pool2d_slow(x: &Tensor, cfg: PoolConfig) -> Result<Tensor> {
    let p = cfg.padding;
    let geom = Geometry::new(x.dims(), cfg)?;
    let pad_value = match cfg.kind {
        PoolKind::Max => f64::NEG_INFINITY,
        PoolKind::Avg { .. } => 0.0,
    };
    let pad = |t: &Tensor| -> Result<Tensor> {
        if p == 0 {
            return Ok(t.clone());
        }
        let (n, c, h, w) = t.dims4()?;
        let row = Tensor::full(pad_value, (n, c, p, w), t.device())?.to_dtype(t.dtype())?;
        let t = Tensor::cat(&[&row, t, &row], 2)?;
        let col = Tensor::full(pad_value, (n, c, h + 2 * p, p), t.device())?.to_dtype(t.dtype())?;
        Tensor::cat(&[&col, &t, &col], 3)
    };
    let padded = pad(x)?;
    let ones = pad(&x.ones_like()?)?;
    let window = |t: &Tensor, kh: usize, kw: usize| -> Result<Tensor> {
        // Rows kh, kh + s, ..., one per output row (and the same for columns).
        let rows: Vec<u32> = (0..geom.oh).map(|o| (o * cfg.stride + kh) as u32).collect();
        let cols: Vec<u32> = (0..geom.ow).map(|o| (o * cfg.stride + kw) as u32).collect();
        let rows = Tensor::new(rows, t.device())?;
        let cols = Tensor::new(cols, t.device())?;
        t.index_select(&rows, 2)?.index_select(&cols, 3)
    };
    let mut acc: Option<Tensor> = None;
    let mut count: Option<Tensor> = None;
    for kh in 0..cfg.kernel {
        for kw in 0..cfg.kernel {
            let v = window(&padded, kh, kw)?;
            acc = Some(match (acc, cfg.kind) {
                (None, _) => v,
                (Some(a), PoolKind::Max) => a.maximum(&v)?,
                (Some(a), PoolKind::Avg { .. }) => (a + v)?,
            });
            let o = window(&ones, kh, kw)?;
            count = Some(match count {
                None => o,
                Some(c) => (c + o)?,
            });
        }
    }
    let acc = acc.expect("kernel >= 1");
    match cfg.kind {
        PoolKind::Max => Ok(acc),
        PoolKind::Avg {
            count_include_pad: true,
        } => acc / (cfg.kernel * cfg.kernel) as f64,
        PoolKind::Avg {
            count_include_pad: false,
        } => acc.div(&count.expect("kernel >= 1")),
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub n: usize,
    pub c: usize,
    h: usize,
    w: usize,
    pub oh: usize,
    pub ow: usize,
    cfg: PoolConfig,
}

impl Geometry {
    pub(crate) fn new(x: &[usize], cfg: PoolConfig) -> Result<Self> {
        let &[n, c, h, w] = x else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "input [n, c, h, w]".to_string(),
                got: x.to_vec(),
            }
            .into());
        };
        if cfg.kernel == 0 || cfg.stride == 0 || cfg.padding * 2 > cfg.kernel {
            return Err(Error::Unsupported {
                op: OP,
                message: format!(
                    "kernel {} and stride {} must be positive and padding {} at most half the kernel",
                    cfg.kernel, cfg.stride, cfg.padding
                ),
            }
            .into());
        }
        let out = |size: usize| {
            (size + 2 * cfg.padding)
                .checked_sub(cfg.kernel)
                .map(|v| v / cfg.stride + 1)
        };
        let (Some(oh), Some(ow)) = (out(h), out(w)) else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: format!(
                    "an input of at least {0} x {0} after padding {1}",
                    cfg.kernel, cfg.padding
                ),
                got: x.to_vec(),
            }
            .into());
        };
        Ok(Geometry {
            n,
            c,
            h,
            w,
            oh,
            ow,
            cfg,
        })
    }

    /// The padded-plane layout of the stride-1 kernels (`pool_dense.rs`), with the
    /// stride-1 geometry. Stride 2 runs them at stride 1 and subsamples (the windows and
    /// divisors at the kept positions are the strided ones); larger strides take the
    /// window-by-window kernels below.
    fn dense(&self) -> Option<(Dense, Geometry)> {
        if self.cfg.stride > 2 {
            return None;
        }
        let one = Geometry {
            oh: self.h + 2 * self.cfg.padding - self.cfg.kernel + 1,
            ow: self.w + 2 * self.cfg.padding - self.cfg.kernel + 1,
            cfg: PoolConfig {
                stride: 1,
                ..self.cfg
            },
            ..*self
        };
        let d = Dense {
            h: self.h,
            w: self.w,
            k: self.cfg.kernel,
            padding: self.cfg.padding,
            dilation: 1,
            oh: one.oh,
            ow: one.ow,
        };
        Some((d, one))
    }

    /// Every output position's divisor (average pooling), output-shaped.
    fn divisors<T: Elem>(&self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.oh * self.ow);
        for oh in 0..self.oh {
            let rows = self.span(oh, self.h).len();
            for ow in 0..self.ow {
                let cols = self.span(ow, self.w).len();
                out.push(T::of_f64(self.divisor(oh, ow, rows, cols) as f64));
            }
        }
        out
    }

    /// The input range a window starting at output index `o` covers along a side of `size`.
    #[inline(always)]
    fn span(&self, o: usize, size: usize) -> std::ops::Range<usize> {
        let start = (o * self.cfg.stride) as isize - self.cfg.padding as isize;
        let end = (start + self.cfg.kernel as isize).min(size as isize);
        (start.max(0) as usize)..(end.max(0) as usize)
    }

    #[cfg(feature = "cuda")]
    fn gpu(&self) -> Result<crate::cuda::PoolGeom> {
        use crate::cuda::int;
        Ok(crate::cuda::PoolGeom {
            n: int(self.n, OP)?,
            c: int(self.c, OP)?,
            h: int(self.h, OP)?,
            w: int(self.w, OP)?,
            oh: int(self.oh, OP)?,
            ow: int(self.ow, OP)?,
            kernel: int(self.cfg.kernel, OP)?,
            stride: int(self.cfg.stride, OP)?,
            pad: int(self.cfg.padding, OP)?,
            count_include_pad: i32::from(matches!(
                self.cfg.kind,
                PoolKind::Avg {
                    count_include_pad: true
                }
            )),
        })
    }

    /// Divisor of an average window with the given valid extent.
    #[inline(always)]
    fn divisor(&self, oh: usize, ow: usize, rows: usize, cols: usize) -> usize {
        match self.cfg.kind {
            PoolKind::Avg {
                count_include_pad: true,
            } => {
                // Window positions inside the padded input.
                let side = |o: usize, size: usize| {
                    let start = o * self.cfg.stride;
                    let end = (start + self.cfg.kernel).min(size + 2 * self.cfg.padding);
                    end - start
                };
                side(oh, self.h) * side(ow, self.w)
            }
            _ => rows * cols,
        }
    }
}

/// Pools every plane; for max pooling also returns, per output, the plane-local index of
/// the first window position (row-major) holding the maximum, as PyTorch picks it.
pub(crate) fn forward<T: Elem>(g: &Geometry, x: &[T]) -> (Vec<T>, Option<Vec<u32>>) {
    if let Some((d, one)) = g.dense() {
        let (y, arg) = match g.cfg.kind {
            PoolKind::Max => {
                let (y, arg) = pool_dense::max_forward(&d, x);
                (y, Some(arg))
            }
            PoolKind::Avg { .. } => (pool_dense::avg_forward(&d, x, &one.divisors()), None),
        };
        if g.cfg.stride == 1 {
            return (y, arg);
        }
        let (full, kept) = ((one.oh, one.ow), (g.oh, g.ow));
        return (
            padded::subsample(&y, full, 2, kept),
            arg.map(|a| padded::subsample(&a, full, 2, kept)),
        );
    }
    forward_windows(g, x)
}

/// [`forward`] window by window (strided pools; the reference for the stride-1 kernels).
fn forward_windows<T: Elem>(g: &Geometry, x: &[T]) -> (Vec<T>, Option<Vec<u32>>) {
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    let mut y = vec![T::zero(); g.n * g.c * plane_out];
    match g.cfg.kind {
        PoolKind::Max => {
            let mut arg = vec![0u32; y.len()];
            y.par_chunks_mut(plane_out)
                .zip(arg.par_chunks_mut(plane_out))
                .enumerate()
                .for_each(|(plane, (yp, ap))| {
                    let xp = &x[plane * plane_in..(plane + 1) * plane_in];
                    for oh in 0..g.oh {
                        let rows = g.span(oh, g.h);
                        for ow in 0..g.ow {
                            let cols = g.span(ow, g.w);
                            let mut best = T::neg_infinity();
                            let mut at = rows.start * g.w + cols.start;
                            for ih in rows.clone() {
                                for iw in cols.clone() {
                                    let v = xp[ih * g.w + iw];
                                    if v > best || (v.is_nan() && !best.is_nan()) {
                                        best = v;
                                        at = ih * g.w + iw;
                                    }
                                }
                            }
                            yp[oh * g.ow + ow] = best;
                            ap[oh * g.ow + ow] = at as u32;
                        }
                    }
                });
            (y, Some(arg))
        }
        PoolKind::Avg { .. } => {
            y.par_chunks_mut(plane_out)
                .enumerate()
                .for_each(|(plane, yp)| {
                    let xp = &x[plane * plane_in..(plane + 1) * plane_in];
                    for oh in 0..g.oh {
                        let rows = g.span(oh, g.h);
                        for ow in 0..g.ow {
                            let cols = g.span(ow, g.w);
                            let mut sum = T::zero();
                            for ih in rows.clone() {
                                for &v in &xp[ih * g.w + cols.start..ih * g.w + cols.end] {
                                    sum = sum + v;
                                }
                            }
                            let d = g.divisor(oh, ow, rows.len(), cols.len());
                            yp[oh * g.ow + ow] = sum / T::of_f64(d as f64);
                        }
                    }
                });
            (y, None)
        }
    }
}

/// `dx` for max pooling: each output's gradient goes to its saved argmax.
pub(crate) fn max_backward<T: Elem>(g: &Geometry, dy: &[T], arg: &[u32]) -> Vec<T> {
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    let mut dx = vec![T::zero(); g.n * g.c * plane_in];
    dx.par_chunks_mut(plane_in)
        .enumerate()
        .for_each(|(plane, dxp)| {
            let range = plane * plane_out..(plane + 1) * plane_out;
            for (&d, &at) in dy[range.clone()].iter().zip(&arg[range]) {
                dxp[at as usize] = dxp[at as usize] + d;
            }
        });
    dx
}

pub(crate) fn avg_backward<T: Elem>(g: &Geometry, dy: &[T]) -> Vec<T> {
    if let Some((d, one)) = g.dense() {
        if g.cfg.stride == 1 {
            return pool_dense::avg_backward(&d, dy, &one.divisors());
        }
        let spread = padded::upsample(dy, (g.oh, g.ow), 2, (one.oh, one.ow));
        return pool_dense::avg_backward(&d, &spread, &one.divisors());
    }
    avg_backward_windows(g, dy)
}

/// [`avg_backward`] window by window.
fn avg_backward_windows<T: Elem>(g: &Geometry, dy: &[T]) -> Vec<T> {
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    let mut dx = vec![T::zero(); g.n * g.c * plane_in];
    dx.par_chunks_mut(plane_in)
        .enumerate()
        .for_each(|(plane, dxp)| {
            let dyp = &dy[plane * plane_out..(plane + 1) * plane_out];
            for oh in 0..g.oh {
                let rows = g.span(oh, g.h);
                for ow in 0..g.ow {
                    let cols = g.span(ow, g.w);
                    let d = g.divisor(oh, ow, rows.len(), cols.len());
                    let share = dyp[oh * g.ow + ow] / T::of_f64(d as f64);
                    for ih in rows.clone() {
                        for v in &mut dxp[ih * g.w + cols.start..ih * g.w + cols.end] {
                            *v = *v + share;
                        }
                    }
                }
            }
        });
    dx
}

/// Max pooling's argmax, saved by the forward pass for the backward pass, where the
/// forward ran.
#[derive(Clone)]
enum Argmax {
    Cpu(Vec<u32>),
    #[cfg(feature = "cuda")]
    Cuda(candle_core::cuda::cudarc::driver::CudaSlice<u32>),
}

struct Pool {
    geom: Geometry,
    argmax: Arc<Mutex<Option<Argmax>>>,
}

custom_op! {
    Pool: CustomOp1 = OP;
    cpu(&self, s, l) {
        let g = &self.geom;
        dispatch!(OP, [(s, l) => x], |T| {
            let (y, argmax) = forward::<T>(g, x);
            if let Some(argmax) = argmax {
                *self.argmax.lock().map_err(|_| poisoned())? = Some(Argmax::Cpu(argmax));
            }
            Ok((T::storage(y), Shape::from((g.n, g.c, g.oh, g.ow))))
        })
    }
    cuda(&self, s, l) {
        use crate::cuda::{self, kernels::POOL, Launch, PushKernelArg};
        let (g, dev) = (&self.geom, &s.device);
        let geom = g.gpu()?;
        let len = g.n * g.c * g.oh * g.ow;
        cuda::cuda_dispatch!(OP, [(s, l) => x], |T| {
            let mut y = cuda::output::<T>(dev, len)?;
            match g.cfg.kind {
                PoolKind::Max => {
                    let mut arg = cuda::output::<u32>(dev, len)?;
                    let k = cuda::kernel::<T>(dev, &POOL, "pool_max_fwd", Launch::Elements(len))?;
                    let mut args = k.args();
                    args.arg(&x).arg(&mut y).arg(&mut arg).arg(&geom);
                    k.launch(args)?;
                    *self.argmax.lock().map_err(|_| poisoned())? = Some(Argmax::Cuda(arg));
                }
                PoolKind::Avg { .. } => {
                    let k = cuda::kernel::<T>(dev, &POOL, "pool_avg_fwd", Launch::Elements(len))?;
                    let mut args = k.args();
                    args.arg(&x).arg(&mut y).arg(&geom);
                    k.launch(args)?;
                }
            }
            Ok((cuda::storage(y, dev), Shape::from((g.n, g.c, g.oh, g.ow))))
        })
    }
    extra {
        fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
            let dy = dy.contiguous()?;
            let argmax = match self.geom.cfg.kind {
                PoolKind::Max => Some(
                    self.argmax
                        .lock()
                        .map_err(|_| poisoned())?
                        .clone()
                        .ok_or_else(|| {
                            candle_core::Error::from(Error::Unsupported {
                                op: OP,
                                message: "backward before forward".to_string(),
                            })
                        })?,
                ),
                PoolKind::Avg { .. } => None,
            };
            let dx = dy.apply_op1_no_bwd(&PoolBackward {
                geom: self.geom,
                argmax,
            })?;
            Ok(Some(dx))
        }
    }
}

fn poisoned() -> candle_core::Error {
    Error::Unsupported {
        op: OP,
        message: "argmax lock poisoned".to_string(),
    }
    .into()
}

/// `dy -> dx`.
struct PoolBackward {
    geom: Geometry,
    argmax: Option<Argmax>,
}

custom_op! {
    PoolBackward: CustomOp1 = "pool2d_backward";
    cpu(&self, s, l) {
        let g = &self.geom;
        let shape = Shape::from((g.n, g.c, g.h, g.w));
        dispatch!(OP, [(s, l) => dy], |T| {
            let dx = match &self.argmax {
                Some(Argmax::Cpu(arg)) => max_backward::<T>(g, dy, arg),
                #[cfg(feature = "cuda")]
                Some(Argmax::Cuda(_)) => {
                    return Err(Error::Unsupported {
                        op: OP,
                        message: "forward on CUDA, backward on CPU".to_string(),
                    }
                    .into())
                }
                None => avg_backward::<T>(g, dy),
            };
            Ok((T::storage(dx), shape))
        })
    }
    cuda(&self, s, l) {
        use crate::cuda::{self, kernels::POOL, Launch, PushKernelArg};
        let (g, dev) = (&self.geom, &s.device);
        let geom = g.gpu()?;
        let len = g.n * g.c * g.h * g.w;
        cuda::cuda_dispatch!(OP, [(s, l) => dy], |T| {
            let mut dx = cuda::output::<T>(dev, len)?;
            match &self.argmax {
                Some(Argmax::Cuda(arg)) => {
                    let k = cuda::kernel::<T>(dev, &POOL, "pool_max_bwd", Launch::Elements(len))?;
                    let mut args = k.args();
                    args.arg(&dy).arg(arg).arg(&mut dx).arg(&geom);
                    k.launch(args)?;
                }
                Some(Argmax::Cpu(_)) => {
                    return Err(Error::Unsupported {
                        op: OP,
                        message: "forward on CPU, backward on CUDA".to_string(),
                    }
                    .into())
                }
                None => {
                    let k = cuda::kernel::<T>(dev, &POOL, "pool_avg_bwd", Launch::Elements(len))?;
                    let mut args = k.args();
                    args.arg(&dy).arg(&mut dx).arg(&geom);
                    k.launch(args)?;
                }
            }
            Ok((cuda::storage(dx, dev), Shape::from((g.n, g.c, g.h, g.w))))
        })
    }
}

#[cfg(test)]
mod tests {
    /// The padded-plane kernels (stride 1 and 2) against the window-by-window ones, exactly:
    /// ties, infinities and NaNs included (max), every divisor rule (avg).
    #[test]
    fn padded_kernels_equal_window_kernels() {
        let (n, c, h, w) = (2, 3, 7, 9);
        let mut x: Vec<f64> = (0..n * c * h * w)
            .map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.5)
            .collect();
        x[5] = f64::NAN;
        x[70] = f64::NAN;
        x[71] = f64::NAN;
        x[100] = f64::NEG_INFINITY;
        x[200] = f64::INFINITY;
        // A plane of -inf only: the argmax is the window's first valid position.
        for v in &mut x[h * w..2 * h * w] {
            *v = f64::NEG_INFINITY;
        }
        let kinds = [
            PoolKind::Max,
            PoolKind::Avg {
                count_include_pad: false,
            },
            PoolKind::Avg {
                count_include_pad: true,
            },
        ];
        for kind in kinds {
            for (kernel, padding, stride) in [
                (3, 1, 1),
                (3, 0, 1),
                (5, 2, 1),
                (2, 1, 1),
                (3, 1, 2),
                (2, 1, 2),
                (3, 0, 2),
            ] {
                let cfg = PoolConfig {
                    kind,
                    kernel,
                    stride,
                    padding,
                };
                let g = Geometry::new(&[n, c, h, w], cfg).unwrap();
                let (dense_y, dense_arg) = forward(&g, &x);
                let (win_y, win_arg) = forward_windows(&g, &x);
                let same = |a: &[f64], b: &[f64]| {
                    a.iter()
                        .zip(b)
                        .all(|(u, v)| u.to_bits() == v.to_bits() || (u - v).abs() < 1e-12)
                };
                assert!(same(&dense_y, &win_y), "{cfg:?}");
                assert_eq!(dense_arg, win_arg, "{cfg:?}");
                if let PoolKind::Avg { .. } = kind {
                    let dy: Vec<f64> = (0..dense_y.len()).map(|i| (i % 7) as f64 - 3.0).collect();
                    let a = avg_backward(&g, &dy);
                    let b = avg_backward_windows(&g, &dy);
                    assert!(
                        a.iter().zip(&b).all(|(u, v)| (u - v).abs() < 1e-12),
                        "{cfg:?}"
                    );
                }
            }
        }
    }

    use super::*;
    use crate::testing::{assert_close, grad_check, randn};
    use candle_core::{DType, Device};

    fn configs() -> Vec<PoolConfig> {
        let mut out = Vec::new();
        for kind in [
            PoolKind::Max,
            PoolKind::Avg {
                count_include_pad: false,
            },
            PoolKind::Avg {
                count_include_pad: true,
            },
        ] {
            for stride in [1, 2] {
                for (kernel, padding) in [(3, 1), (3, 0), (2, 0), (5, 2)] {
                    out.push(PoolConfig {
                        kind,
                        kernel,
                        stride,
                        padding,
                    });
                }
            }
        }
        out
    }

    #[test]
    fn matches_slow_reference() -> Result<()> {
        let dev = Device::Cpu;
        for cfg in configs() {
            let x = randn(&[3, 4, 7, 9], DType::F32, &dev)?;
            assert_close(
                &pool2d(&x, cfg)?,
                &pool2d_slow(&x, cfg)?,
                1e-6,
                1e-5,
                &format!("{cfg:?}"),
            )?;
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for cfg in configs() {
            let x = randn(&[3, 2, 7, 9], DType::F64, &dev)?;
            grad_check(&[x], |v| pool2d(&v[0], cfg), &format!("{cfg:?}"))?;
        }
        Ok(())
    }

    #[test]
    fn average_ignores_padding_at_the_border() -> Result<()> {
        // A 2x2 input of ones: every 3x3 window (padding 1) averages only ones.
        let x = Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu)?;
        let y: Vec<f32> = pool2d(&x, PoolConfig::darts(false, 1))?
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(y, vec![1.0; 4]);
        let cfg = PoolConfig {
            kind: PoolKind::Avg {
                count_include_pad: true,
            },
            ..PoolConfig::darts(false, 1)
        };
        let y: Vec<f32> = pool2d(&x, cfg)?.flatten_all()?.to_vec1()?;
        assert_eq!(y, vec![4.0 / 9.0; 4]);
        Ok(())
    }

    #[test]
    fn max_gradient_goes_to_the_first_maximum() -> Result<()> {
        let x = Tensor::new(&[[[[1f64, 1.0], [1.0, 1.0]]]], &Device::Cpu)?;
        let v = candle_core::Var::from_tensor(&x)?;
        let cfg = PoolConfig {
            kind: PoolKind::Max,
            kernel: 2,
            stride: 2,
            padding: 0,
        };
        let grads = pool2d(v.as_tensor(), cfg)?.sum_all()?.backward()?;
        let g: Vec<f64> = grads
            .get(v.as_tensor())
            .expect("grad")
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(g, vec![1.0, 0.0, 0.0, 0.0]);
        Ok(())
    }
}
