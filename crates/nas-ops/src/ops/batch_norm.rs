//! Batch normalisation (Ioffe and Szegedy 2015) over `[n, c, h, w]`: a fused training-mode
//! op that saves the batch mean and inverse standard deviation for its hand-written
//! backward, and a module with running statistics, with or without affine parameters
//! (DARTS's search cells use BN without affine parameters).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, DType, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::buffer::par_chunks_new;
use crate::kernels::elem::Elem;
use crate::kernels::reduce;
use crate::ops::saved::lock;
use crate::ops::shell::custom_op;
use crate::ops::storage::dispatch;

const OP: &str = "batch_norm";

/// The statistics of one training batch, per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStats {
    /// Mean over batch and space.
    pub mean: Vec<f64>,
    /// Biased variance over batch and space (what normalises the batch).
    pub var: Vec<f64>,
    /// Number of values each channel's statistics cover (n * h * w).
    pub count: usize,
}

/// Training-mode batch norm: normalises with the batch's own statistics, then scales by
/// `gamma` and shifts by `beta` when given. Returns the output and the batch statistics.
pub fn batch_norm_train(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    let (n, c, h, w) = dims(x)?;
    check_affine(OP, c, affine)?;
    let saved = Arc::new(Mutex::new(None));
    let op = BatchNormTrain {
        geom: Geometry { n, c, hw: h * w },
        eps,
        saved: saved.clone(),
    };
    let x = x.contiguous()?;
    let y = match affine {
        Some((gamma, beta)) => x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?,
        None => x.apply_op1(op)?,
    };
    let stats = lock(&saved, OP)?
        .as_ref()
        .map(|s: &Saved| BatchStats {
            mean: s.mean.clone(),
            var: s.var.clone(),
            count: n * h * w,
        })
        .ok_or_else(|| Error::Unsupported {
            op: OP,
            message: format!("no statistics for a tensor on {:?}", x.device()),
        })?;
    Ok((y, stats))
}

/// An error naming `op` unless `gamma` and `beta` (if given) are `[c]`.
pub(crate) fn check_affine(
    op: &'static str,
    c: usize,
    affine: Option<(&Tensor, &Tensor)>,
) -> Result<()> {
    if let Some((gamma, beta)) = affine {
        for (name, t) in [("gamma", gamma), ("beta", beta)] {
            if t.dims() != [c] {
                return Err(Error::ShapeMismatch {
                    op,
                    expected: format!("{name} [{c}]"),
                    got: t.dims().to_vec(),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// The plain-tensor reference of [`batch_norm_train`]'s output.
pub fn batch_norm_train_slow(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<Tensor> {
    let (_, c, _, _) = dims(x)?;
    let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred
        .sqr()?
        .mean_keepdim(0)?
        .mean_keepdim(2)?
        .mean_keepdim(3)?;
    let y = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    match affine {
        Some((gamma, beta)) => y
            .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
            .broadcast_add(&beta.reshape((1, c, 1, 1))?),
        None => Ok(y),
    }
}

fn dims(x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    match x.dims() {
        &[n, c, h, w] if n * h * w > 0 => Ok((n, c, h, w)),
        other => Err(Error::ShapeMismatch {
            op: OP,
            expected: "a non-empty input [n, c, h, w]".to_string(),
            got: other.to_vec(),
        }
        .into()),
    }
}

/// `[n, c, h * w]`: the layout the CPU kernels see.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

#[derive(Debug, Clone)]
struct Saved {
    mean: Vec<f64>,
    var: Vec<f64>,
    inv_std: Vec<f64>,
}

struct BatchNormTrain {
    geom: Geometry,
    eps: f64,
    saved: Arc<Mutex<Option<Saved>>>,
}

/// Per-channel mean and biased variance. Each plane is read from memory once: a
/// vectorised sum gives a first estimate `m` of its mean, and one more pass over the
/// plane (in cache by then) the sums of `x - m` and `(x - m)^2`, from which its exact mean
/// and squared deviations follow without cancellation. The planes are merged in f64
/// (Chan et al.'s pairwise update: `M2 = sum_p M2_p + sum_p hw * (mean_p - mean)^2`).
pub(crate) fn channel_stats<T: Elem>(g: &Geometry, x: &[T]) -> (Vec<f64>, Vec<f64>) {
    let count = (g.n * g.hw) as f64;
    let hw = g.hw as f64;
    (0..g.c)
        .into_par_iter()
        .map(|c| {
            let mut m2 = 0.0f64;
            let mut plane_means = Vec::with_capacity(g.n);
            for n in 0..g.n {
                let p = &x[(n * g.c + c) * g.hw..(n * g.c + c + 1) * g.hw];
                let m = T::of_f64(reduce::sum(p).as_f64() / hw);
                let (dev, sq) = reduce::sum_dev_and_sq_dev(p, m);
                let (dev, sq) = (dev.as_f64(), sq.as_f64());
                plane_means.push(m.as_f64() + dev / hw);
                m2 += sq - dev * dev / hw;
            }
            let mean = plane_means.iter().sum::<f64>() / g.n as f64;
            let between: f64 = plane_means.iter().map(|pm| (pm - mean).powi(2)).sum();
            (mean, (m2 + hw * between).max(0.0) / count)
        })
        .unzip()
}

/// `y = scale * x + shift` per channel, computed as `scale * (x - m) + (shift + scale * m)`
/// with `m` the mean rounded to T: `shift` is `beta - scale * mean`, so the plain form
/// cancels in f32 when the mean is large against the spread.
pub(crate) fn normalise<T: Elem>(
    g: &Geometry,
    x: &[T],
    mean: &[f64],
    scale: &[f64],
    shift: &[f64],
) -> Vec<T> {
    par_chunks_new(x.len(), g.hw, |plane, yp| {
        let c = plane % g.c;
        let m = T::of_f64(mean[c]);
        let a = T::of_f64(scale[c]);
        // shift = beta - scale * mean, so y = scale * (x - m) + (shift + scale * m).
        let b = T::of_f64(shift[c] + scale[c] * m.as_f64());
        for (yv, &xv) in yp.iter_mut().zip(&x[plane * g.hw..(plane + 1) * g.hw]) {
            *yv = (xv - m).mul_add(a, b);
        }
    })
}

/// Per channel `(inv_std, scale, shift)`: `y = scale * x + shift` normalises the batch
/// (and applies `gamma` and `beta` when given).
pub(crate) fn scale_shift(
    mean: &[f64],
    var: &[f64],
    eps: f64,
    affine: Option<(&[f64], &[f64])>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let (mut scale, mut shift) = (inv_std.clone(), vec![0.0; mean.len()]);
    for ch in 0..mean.len() {
        let (gamma, beta) = match affine {
            Some((gm, bt)) => (gm[ch], bt[ch]),
            None => (1.0, 0.0),
        };
        scale[ch] = inv_std[ch] * gamma;
        shift[ch] = beta - mean[ch] * scale[ch];
    }
    (inv_std, scale, shift)
}

/// What training-mode BN's backward pass needs ([`train_forward`]).
pub(crate) struct TrainState<T> {
    /// The input, kept only with affine parameters (the backward then reads the
    /// normalised input from it; without, that is the output itself).
    pre: Option<Vec<T>>,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    inv_std: Vec<f64>,
}

impl<T> TrainState<T> {
    /// The batch statistics, for the running statistics.
    pub(crate) fn stats(&self, g: &Geometry) -> BatchStats {
        BatchStats {
            mean: self.mean.clone(),
            var: self.var.clone(),
            count: g.n * g.hw,
        }
    }
}

/// Training-mode BN of `x` (taken, and kept for the backward pass only with `affine =
/// (gamma, beta)`): the output and its [`TrainState`].
pub(crate) fn train_forward<T: Elem>(
    g: &Geometry,
    eps: f64,
    x: Vec<T>,
    affine: Option<(&[T], &[T])>,
) -> (Vec<T>, TrainState<T>) {
    let (mean, var) = channel_stats(g, &x);
    let to_f64 = |v: &[T]| v.iter().map(|v| v.as_f64()).collect::<Vec<f64>>();
    let affine = affine.map(|(gm, bt)| (to_f64(gm), to_f64(bt)));
    let (inv_std, scale, shift) = scale_shift(
        &mean,
        &var,
        eps,
        affine.as_ref().map(|(gm, bt)| (&gm[..], &bt[..])),
    );
    let y = normalise(g, &x, &mean, &scale, &shift);
    let pre = affine.is_some().then_some(x);
    (
        y,
        TrainState {
            pre,
            mean,
            var,
            inv_std,
        },
    )
}

/// Gradients (or values) of gamma and beta.
pub(crate) type Affine<T> = (Vec<T>, Vec<T>);

/// The backward pass of [`train_forward`] from the output gradient `dy` and the output
/// `y`: the input gradient, and with `gamma` given the gradients of gamma and beta.
pub(crate) fn train_backward<T: Elem>(
    g: &Geometry,
    st: &TrainState<T>,
    gamma: Option<&[T]>,
    dy: &[T],
    y: &[T],
) -> (Vec<T>, Option<Affine<T>>) {
    let (coeffs, src, affine) = train_backward_coeffs(g, st, gamma, dy, y);
    (coeffs.apply(g, dy, src), affine)
}

/// [`train_backward`] up to its last pass, for callers that apply the input gradient
/// plane by plane themselves: the per-channel coefficients, the tensor they apply to in
/// place of the input (the input, or without affine parameters the output), and the
/// gradients of gamma and beta.
pub(crate) fn train_backward_coeffs<'a, T: Elem>(
    g: &Geometry,
    st: &'a TrainState<T>,
    gamma: Option<&[T]>,
    dy: &[T],
    y: &'a [T],
) -> (InputGrad<T>, &'a [T], Option<Affine<T>>) {
    // The normalised input: the input standardised with the batch statistics, or
    // without affine parameters the output itself.
    let (src, mean, inv) = match &st.pre {
        Some(pre) => (&pre[..], st.mean.clone(), st.inv_std.clone()),
        None => (y, vec![0.0; g.c], vec![1.0; g.c]),
    };
    let (sum_dy, sum_dy_xhat) = grad_sums(g, dy, src, &mean, &inv);
    let k: Vec<f64> = (0..g.c)
        .map(|ch| gamma.map_or(1.0, |gm| gm[ch].as_f64()) * st.inv_std[ch])
        .collect();
    let coeffs = InputGrad::new(g, &mean, &inv, &k, (&sum_dy, &sum_dy_xhat));
    let to_t = |v: &[f64]| v.iter().map(|&v| T::of_f64(v)).collect::<Vec<T>>();
    let affine = gamma.map(|_| (to_t(&sum_dy_xhat), to_t(&sum_dy)));
    (coeffs, src, affine)
}

/// Per channel `(sum(dy), sum(dy * xhat))` with `xhat = (x - mean) * inv_std`: the
/// gradients of `beta` and `gamma`, and what the input gradient needs. (With `mean` 0 and
/// `inv_std` 1, `x` is `xhat` itself: a BN without affine parameters can pass its output.)
pub(crate) fn grad_sums<T: Elem>(
    g: &Geometry,
    dy: &[T],
    x: &[T],
    mean: &[f64],
    inv_std: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    (0..g.c)
        .into_par_iter()
        .map(|c| {
            // sum(dy * (x - mean)) from deviations about the mean rounded to T:
            // sum(dy * (x - m_t)) - (mean - m_t) * sum(dy).
            let mean_t = T::of_f64(mean[c]);
            let shift = mean[c] - mean_t.as_f64();
            let (mut a, mut b) = (0.0f64, 0.0f64);
            for n in 0..g.n {
                let range = (n * g.c + c) * g.hw..(n * g.c + c + 1) * g.hw;
                let (s, p) = reduce::sum_and_dot_dev(&dy[range.clone()], &x[range], mean_t);
                a += s.as_f64();
                b += p.as_f64();
            }
            (a, (b - shift * a) * inv_std[c])
        })
        .unzip()
}

/// `dx = k * (dy - sum(dy) / m - xhat * sum(dy * xhat) / m)` per channel, `xhat = (x -
/// mean) * inv_std`, `m = n * h * w`; `k` is `gamma * inv_std` of the forward pass.
#[allow(clippy::too_many_arguments)]
pub(crate) fn input_grad<T: Elem>(
    g: &Geometry,
    dy: &[T],
    x: &[T],
    mean: &[f64],
    inv_std: &[f64],
    k: &[f64],
    sums: (&[f64], &[f64]),
) -> Vec<T> {
    InputGrad::new(g, mean, inv_std, k, sums).apply(g, dy, x)
}

/// [`input_grad`] per channel: `dx = k * dy + p * (x - m_t) + q`, `m_t` the mean rounded
/// to T (subtracted first: `p * x + q` would cancel in f32 when the mean is large against
/// the spread).
pub(crate) struct InputGrad<T> {
    k: Vec<T>,
    p: Vec<T>,
    q: Vec<T>,
    mean: Vec<T>,
}

impl<T: Elem> InputGrad<T> {
    fn new(
        g: &Geometry,
        mean: &[f64],
        inv_std: &[f64],
        k: &[f64],
        (sum_dy, sum_dy_xhat): (&[f64], &[f64]),
    ) -> Self {
        let m = (g.n * g.hw) as f64;
        let mut out = InputGrad {
            k: Vec::with_capacity(g.c),
            p: Vec::with_capacity(g.c),
            q: Vec::with_capacity(g.c),
            mean: Vec::with_capacity(g.c),
        };
        for c in 0..g.c {
            // dx = k * (dy - a - xhat * b), folded as above.
            let (a, b) = (sum_dy[c] / m, sum_dy_xhat[c] / m);
            let p = -k[c] * b * inv_std[c];
            let mean_t = T::of_f64(mean[c]);
            let q = -k[c] * a + p * (mean_t.as_f64() - mean[c]);
            out.k.push(T::of_f64(k[c]));
            out.p.push(T::of_f64(p));
            out.q.push(T::of_f64(q));
            out.mean.push(mean_t);
        }
        out
    }

    /// The whole input gradient, plane by plane on all threads.
    fn apply(&self, g: &Geometry, dy: &[T], x: &[T]) -> Vec<T> {
        par_chunks_new(dy.len(), g.hw, |plane, dxp| {
            let range = plane * g.hw..(plane + 1) * g.hw;
            self.plane(plane % g.c, &dy[range.clone()], &x[range], dxp);
        })
    }

    /// One plane of channel `c`: its output gradient `dy` and input `x` into `dx`.
    pub(crate) fn plane(&self, c: usize, dy: &[T], x: &[T], dx: &mut [T]) {
        let (kt, p, q, m) = (self.k[c], self.p[c], self.q[c], self.mean[c]);
        for ((d, &gv), &xv) in dx.iter_mut().zip(dy).zip(x) {
            *d = kt.mul_add(gv, p.mul_add(xv - m, q));
        }
    }
}

impl BatchNormTrain {
    fn run<T: Elem>(&self, x: &[T], affine: Option<(&[T], &[T])>) -> Result<CpuStorage> {
        let g = &self.geom;
        let (mean, var) = channel_stats(g, x);
        let to_f64 = |v: &[T]| v.iter().map(|v| v.as_f64()).collect::<Vec<f64>>();
        let affine = affine.map(|(gm, bt)| (to_f64(gm), to_f64(bt)));
        let (scale, shift) = self.finish(mean.clone(), var, affine)?;
        Ok(T::storage(normalise(g, x, &mean, &scale, &shift)))
    }

    /// Saves the batch statistics for the backward pass and returns the per-channel
    /// `(scale, shift)` that normalise (and scale and shift) the batch.
    fn finish(
        &self,
        mean: Vec<f64>,
        var: Vec<f64>,
        affine: Option<(Vec<f64>, Vec<f64>)>,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let affine = affine.as_ref().map(|(g, b)| (&g[..], &b[..]));
        let (inv_std, scale, shift) = scale_shift(&mean, &var, self.eps, affine);
        *lock(&self.saved, OP)? = Some(Saved { mean, var, inv_std });
        Ok((scale, shift))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda<T: crate::cuda::GpuElem>(
        &self,
        dev: &candle_core::CudaDevice,
        x: &candle_core::cuda::cudarc::driver::CudaView<'_, T>,
        affine: Option<(
            &candle_core::cuda::cudarc::driver::CudaView<'_, T>,
            &candle_core::cuda::cudarc::driver::CudaView<'_, T>,
        )>,
    ) -> Result<candle_core::CudaStorage> {
        use crate::cuda::{self, int, kernels::BATCH_NORM, Launch, PushKernelArg};
        let g = &self.geom;
        let (n, c, hw) = (int(g.n, OP)?, int(g.c, OP)?, int(g.hw, OP)?);
        let mut stats = cuda::output::<f64>(dev, 2 * g.c)?;
        let k = cuda::kernel::<T>(dev, &BATCH_NORM, "bn_stats", Launch::Blocks(g.c))?;
        let mut args = k.args();
        args.arg(x).arg(&mut stats).arg(&n).arg(&c).arg(&hw);
        k.launch(args)?;
        let mut stats = cuda::download(dev, &stats)?;
        let var = stats.split_off(g.c);
        let to_f64 = |v: Vec<T>| v.into_iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
        let affine = match affine {
            Some((gm, bt)) => Some((
                to_f64(cuda::download(dev, gm)?),
                to_f64(cuda::download(dev, bt)?),
            )),
            None => None,
        };
        let (scale, shift) = self.finish(stats, var, affine)?;
        let coef = cuda::upload(dev, &[scale, shift].concat())?;
        let total = g.n * g.c * g.hw;
        let mut y = cuda::output::<T>(dev, total)?;
        let k = cuda::kernel::<T>(dev, &BATCH_NORM, "bn_normalise", Launch::Elements(total))?;
        let mut args = k.args();
        args.arg(x).arg(&coef).arg(&mut y).arg(&n).arg(&c).arg(&hw);
        k.launch(args)?;
        Ok(cuda::storage(y, dev))
    }

    fn saved(&self) -> Result<Saved> {
        lock(&self.saved, OP)?.clone().ok_or_else(|| {
            Error::Unsupported {
                op: OP,
                message: "backward before forward".into(),
            }
            .into()
        })
    }

    /// `(dx, Some((dgamma, dbeta)))` from the saved statistics.
    fn backward(
        &self,
        x: &Tensor,
        gamma: Option<&Tensor>,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let saved = self.saved()?;
        let dy = dy.contiguous()?;
        let sums = dy.apply_op2_no_bwd(
            x,
            &BnReduce {
                geom: self.geom,
                saved: saved.clone(),
            },
        )?;
        let gamma = match gamma {
            Some(g) => g.to_dtype(DType::F64)?.to_vec1::<f64>()?,
            None => vec![1.0; self.geom.c],
        };
        let dx = dy.apply_op3_no_bwd(
            x,
            &sums,
            &BnInputGrad {
                geom: self.geom,
                saved,
                gamma,
            },
        )?;
        Ok((dx, sums.get(1)?, sums.get(0)?))
    }
}

custom_op! {
    BatchNormTrain: CustomOp1 = OP;
    cpu(&self, s, l) {
        // The output keeps the input's shape.
        let st = dispatch!(OP, [(s, l) => x], |T| self.run::<T>(x, None))?;
        Ok((st, l.shape().clone()))
    }
    cuda(&self, s, l) {
        let st = crate::cuda::cuda_dispatch!(OP, [(s, l) => x], |T| {
            self.run_cuda::<T>(&s.device, &x, None)
        })?;
        Ok((st, l.shape().clone()))
    }
    extra {
        fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
            Ok(Some(self.backward(x, None, dy)?.0))
        }
    }
}

custom_op! {
    BatchNormTrain: CustomOp3 = OP;
    cpu(&self, s1, l1, s2, l2, s3, l3) {
        let st = dispatch!(OP, [(s1, l1) => x, (s2, l2) => gamma, (s3, l3) => beta], |T| {
            self.run::<T>(x, Some((gamma, beta)))
        })?;
        Ok((st, l1.shape().clone()))
    }
    cuda(&self, s1, l1, s2, l2, s3, l3) {
        let st = crate::cuda::cuda_dispatch!(
            OP,
            [(s1, l1) => x, (s2, l2) => gamma, (s3, l3) => beta],
            |T| self.run_cuda::<T>(&s1.device, &x, Some((&gamma, &beta)))
        )?;
        Ok((st, l1.shape().clone()))
    }
    extra {
        fn bwd(
            &self,
            x: &Tensor,
            gamma: &Tensor,
            _beta: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let (dx, dgamma, dbeta) = self.backward(x, Some(gamma), dy)?;
            Ok((Some(dx), Some(dgamma), Some(dbeta)))
        }
    }
}

/// `(dy, x) -> [2, c]`: per channel `sum(dy)` and `sum(dy * xhat)`.
struct BnReduce {
    geom: Geometry,
    saved: Saved,
}

custom_op! {
    BnReduce: CustomOp2 = "batch_norm_reduce";
    cpu(&self, s1, l1, s2, l2) {
        let g = &self.geom;
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => x], |T| {
            let (sum_dy, sum_dy_xhat) =
                grad_sums(g, dy, x, &self.saved.mean, &self.saved.inv_std);
            let out: Vec<T> = sum_dy
                .iter()
                .chain(&sum_dy_xhat)
                .map(|&v| T::of_f64(v))
                .collect();
            Ok((T::storage(out), Shape::from((2, g.c))))
        })
    }
    cuda(&self, s1, l1, s2, l2) {
        use crate::cuda::{self, int, kernels::BATCH_NORM, Launch, PushKernelArg};
        let (g, dev) = (&self.geom, &s1.device);
        let (n, c, hw) = (int(g.n, OP)?, int(g.c, OP)?, int(g.hw, OP)?);
        let saved = cuda::upload(
            dev,
            &[&self.saved.mean[..], &self.saved.inv_std[..]].concat(),
        )?;
        cuda::cuda_dispatch!(OP, [(s1, l1) => dy, (s2, l2) => x], |T| {
            let mut out = cuda::output::<T>(dev, 2 * g.c)?;
            let k = cuda::kernel::<T>(dev, &BATCH_NORM, "bn_reduce", Launch::Blocks(g.c))?;
            let mut args = k.args();
            args.arg(&dy).arg(&x).arg(&saved).arg(&mut out).arg(&n).arg(&c).arg(&hw);
            k.launch(args)?;
            Ok((cuda::storage(out, dev), Shape::from((2, g.c))))
        })
    }
}

/// `(dy, x, sums) -> dx = gamma * inv_std / m * (m * dy - sum(dy) - xhat * sum(dy * xhat))`.
struct BnInputGrad {
    geom: Geometry,
    saved: Saved,
    gamma: Vec<f64>,
}

custom_op! {
    BnInputGrad: CustomOp3 = "batch_norm_input_grad";
    cpu(&self, s1, l1, s2, l2, s3, l3) {
        let g = &self.geom;
        let k: Vec<f64> = (0..g.c)
            .map(|c| self.gamma[c] * self.saved.inv_std[c])
            .collect();
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => x, (s3, l3) => sums], |T| {
            let sums: Vec<f64> = sums.iter().map(|v| v.as_f64()).collect();
            let (sum_dy, sum_dy_xhat) = sums.split_at(g.c);
            let dx = input_grad(
                g,
                dy,
                x,
                &self.saved.mean,
                &self.saved.inv_std,
                &k,
                (sum_dy, sum_dy_xhat),
            );
            Ok((T::storage(dx), l1.shape().clone()))
        })
    }
    cuda(&self, s1, l1, s2, l2, s3, l3) {
        use crate::cuda::{self, int, kernels::BATCH_NORM, Launch, PushKernelArg};
        let (g, dev) = (&self.geom, &s1.device);
        let (n, c, hw) = (int(g.n, OP)?, int(g.c, OP)?, int(g.hw, OP)?);
        let saved = [
            &self.saved.mean[..],
            &self.saved.inv_std[..],
            &self.gamma[..],
        ]
        .concat();
        let saved = cuda::upload(dev, &saved)?;
        let total = g.n * g.c * g.hw;
        cuda::cuda_dispatch!(OP, [(s1, l1) => dy, (s2, l2) => x, (s3, l3) => sums], |T| {
            let mut dx = cuda::output::<T>(dev, total)?;
            let k = cuda::kernel::<T>(dev, &BATCH_NORM, "bn_dgrad", Launch::Elements(total))?;
            let mut args = k.args();
            args.arg(&dy).arg(&x).arg(&sums).arg(&saved).arg(&mut dx);
            args.arg(&n).arg(&c).arg(&hw);
            k.launch(args)?;
            Ok((cuda::storage(dx, dev), l1.shape().clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_check, randn};
    use candle_core::{Device, Var};

    #[test]
    fn matches_slow_reference() -> Result<()> {
        let dev = Device::Cpu;
        let x = ((randn(&[3, 4, 7, 9], DType::F32, &dev)? * 3.0)? + 1.5)?;
        let gamma = randn(&[4], DType::F32, &dev)?;
        let beta = randn(&[4], DType::F32, &dev)?;
        for affine in [None, Some((&gamma, &beta))] {
            let (y, stats) = batch_norm_train(&x, affine, 1e-5)?;
            assert_close(
                &y,
                &batch_norm_train_slow(&x, affine, 1e-5)?,
                1e-5,
                1e-4,
                "bn",
            )?;
            assert_eq!(stats.count, 3 * 7 * 9);
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(&[3, 2, 5, 3], DType::F64, &dev)?;
        let gamma = (randn(&[2], DType::F64, &dev)? + 1.0)?;
        let beta = randn(&[2], DType::F64, &dev)?;
        grad_check(
            std::slice::from_ref(&x),
            |v| Ok(batch_norm_train(&v[0], None, 1e-5)?.0),
            "bn no affine",
        )?;
        grad_check(
            &[x, gamma, beta],
            |v| Ok(batch_norm_train(&v[0], Some((&v[1], &v[2])), 1e-5)?.0),
            "bn affine",
        )
    }

    /// A large mean and a small spread (where one-pass sums of squares in f32 cancel):
    /// the f32 kernels' statistics and input gradient against the f64 kernels' on the
    /// same values.
    #[test]
    fn f32_statistics_survive_a_large_offset() -> Result<()> {
        let dev = Device::Cpu;
        let x32 =
            ((randn(&[5, 3, 9, 11], DType::F64, &dev)? * 0.05)? + 300.0)?.to_dtype(DType::F32)?;
        let x64 = x32.to_dtype(DType::F64)?;
        let r = randn(&[5, 3, 9, 11], DType::F64, &dev)?;
        let (_, s32) = batch_norm_train(&x32, None, 1e-5)?;
        let (_, s64) = batch_norm_train(&x64, None, 1e-5)?;
        for c in 0..3 {
            assert!((s32.mean[c] - s64.mean[c]).abs() < 1e-8 * 300.0, "mean {c}");
            let rel = (s32.var[c] - s64.var[c]).abs() / s64.var[c];
            assert!(rel < 1e-5, "variance {c}: {} vs {}", s32.var[c], s64.var[c]);
        }
        let grad = |x: &Tensor| -> Result<Tensor> {
            let v = Var::from_tensor(x)?;
            let y = batch_norm_train(v.as_tensor(), None, 1e-5)?.0;
            let loss = (y.to_dtype(DType::F64)? * &r)?.sum_all()?;
            Ok(loss.backward()?.get(v.as_tensor()).expect("grad").clone())
        };
        let (g32, g64) = (grad(&x32)?.to_dtype(DType::F64)?, grad(&x64)?);
        let scale = g64.abs()?.max_all()?.to_scalar::<f64>()?;
        assert_close(&g32, &g64, 1e-4 * scale, 0.0, "bn input gradient")
    }

    #[test]
    fn shape_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3, 4), DType::F32, &dev).unwrap();
        let err = batch_norm_train(&x, None, 1e-5).unwrap_err().to_string();
        assert!(
            err.contains(
                "batch_norm: expected a non-empty input [n, c, h, w], got shape [2, 3, 4]"
            ),
            "{err}"
        );
        let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap();
        let g = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let err = batch_norm_train(&x, Some((&g, &g)), 1e-5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected gamma [3]"), "{err}");
    }
}
