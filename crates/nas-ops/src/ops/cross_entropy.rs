//! Softmax cross-entropy of a language model's decoder as one op: the mean over rows of
//! `logsumexp(z_i + b) - (z_i + b)[t_i]` for logits `z` `[n, v]`, a bias `b` `[v]` and
//! targets `t` `[n]`. Forward saves each row's log-sum-exp; backward writes
//! `(softmax - onehot) / n` once and sums it over rows for the bias. Built from candle's
//! generic ops the same loss takes about ten passes over `[n, v]` (bias add, max,
//! subtract, exp, sum, log, gather, and their gradients), each with a fresh buffer: for
//! PTB's 10,000-word vocabulary that is most of a step's memory traffic.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::elem::Elem;
use crate::ops::shell::custom_op;
use crate::ops::storage::{cpu_storage, dispatch};

const OP: &str = "softmax_cross_entropy";
/// Rows per parallel task of the backward pass (the bias gradient is summed per task,
/// then over tasks in order, so the result does not depend on the thread count).
const ROWS_PER_TASK: usize = 32;

/// The mean cross-entropy of `targets` (`[n]`, u32) under `softmax(logits + bias)` with
/// `logits` `[n, v]` and `bias` `[v]`; a scalar, differentiable in `logits` and `bias`.
pub fn softmax_cross_entropy(logits: &Tensor, bias: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, v) = check(logits, bias, targets)?;
    let op = SoftmaxCrossEntropy {
        n,
        v,
        lse: Arc::new(Mutex::new(None)),
    };
    logits
        .contiguous()?
        .apply_op3(&bias.contiguous()?, &targets.contiguous()?, op)
}

/// The plain-tensor reference of [`softmax_cross_entropy`].
pub fn softmax_cross_entropy_slow(
    logits: &Tensor,
    bias: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    check(logits, bias, targets)?;
    let z = logits.broadcast_add(bias)?;
    let log_p = candle_nn::ops::log_softmax(&z, 1)?;
    candle_nn::loss::nll(&log_p, targets)
}

fn check(logits: &Tensor, bias: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    let (n, v) = match logits.dims() {
        &[n, v] if n > 0 && v > 0 => (n, v),
        other => {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "non-empty logits [n, vocab]".into(),
                got: other.to_vec(),
            }
            .into())
        }
    };
    if bias.dims() != [v] {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: format!("bias [{v}]"),
            got: bias.dims().to_vec(),
        }
        .into());
    }
    if targets.dims() != [n] || targets.dtype() != DType::U32 {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: format!("u32 targets [{n}] (got dtype {:?})", targets.dtype()),
            got: targets.dims().to_vec(),
        }
        .into());
    }
    Ok((n, v))
}

struct SoftmaxCrossEntropy {
    n: usize,
    v: usize,
    /// Each row's log-sum-exp, saved by the forward pass for the backward one.
    lse: Arc<Mutex<Option<Lse>>>,
}

/// Each row's log-sum-exp, where the forward pass ran.
#[derive(Clone)]
enum Lse {
    Cpu(Vec<f64>),
    #[cfg(feature = "cuda")]
    Cuda(candle_core::cuda::cudarc::driver::CudaSlice<f64>),
}

pub(crate) fn targets_of<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [u32]> {
    match s {
        CpuStorage::U32(t) => crate::ops::storage::contiguous(t, l, OP),
        other => Err(Error::Unsupported {
            op: OP,
            message: format!("targets must be u32, got {:?}", other.dtype()),
        }
        .into()),
    }
}

pub(crate) fn check_targets(t: &[u32], v: usize) -> candle_core::Result<()> {
    match t.iter().position(|&x| x as usize >= v) {
        Some(i) => Err(Error::Unsupported {
            op: OP,
            message: format!("target {i} is {}, outside the vocabulary of {v}", t[i]),
        }
        .into()),
        None => Ok(()),
    }
}

/// Per row: the log-sum-exp of `z + b` and the loss `lse - (z + b)[t]`.
pub(crate) fn forward<T: Elem>(z: &[T], b: &[T], t: &[u32], v: usize) -> Vec<(f64, f64)> {
    z.par_chunks(v)
        .zip(t.par_iter())
        .map(|(row, &target)| {
            // Lane-wise max and sum over fixed-width chunks: no serial dependency, no
            // branch, so both loops vectorise.
            const LANES: usize = 8;
            let mut maxes = [T::neg_infinity(); LANES];
            let mut chunks = row.chunks_exact(LANES).zip(b.chunks_exact(LANES));
            for (xc, bc) in &mut chunks {
                for ((m, &x), &bb) in maxes.iter_mut().zip(xc).zip(bc) {
                    *m = m.max(x + bb);
                }
            }
            let full = row.len() / LANES * LANES;
            let mut max = maxes.iter().fold(T::neg_infinity(), |a, &m| a.max(m));
            for (&x, &bb) in row[full..].iter().zip(&b[full..]) {
                max = max.max(x + bb);
            }
            let mut lanes = [T::zero(); LANES];
            for (xc, bc) in row.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
                for ((l, &x), &bb) in lanes.iter_mut().zip(xc).zip(bc) {
                    *l = *l + (x + bb - max).exp_v();
                }
            }
            let tail: f64 = row[full..]
                .iter()
                .zip(&b[full..])
                .map(|(&x, &bb)| (x + bb - max).exp_v().as_f64())
                .sum();
            let sum: f64 = lanes.iter().map(|v| v.as_f64()).sum::<f64>() + tail;
            let lse = max.as_f64() + sum.ln();
            let target = target as usize;
            (lse, lse - (row[target] + b[target]).as_f64())
        })
        .collect()
}

/// `dz = scale (softmax(z + b) - onehot(t))` and `db = sum_rows dz`.
pub(crate) fn backward<T: Elem>(
    z: &[T],
    b: &[T],
    t: &[u32],
    lse: &[f64],
    v: usize,
    scale: f64,
) -> (Vec<T>, Vec<T>) {
    let mut dz = crate::kernels::elem::zeros_par(z.len());
    dz.par_chunks_mut(v * ROWS_PER_TASK)
        .zip(z.par_chunks(v * ROWS_PER_TASK))
        .for_each(|(d, z)| d.copy_from_slice(z));
    let db = backward_in_place(&mut dz, b, t, lse, v, scale);
    (dz, db)
}

/// [`backward`] overwriting the logits `z` with `dz`; returns `db`. (A fused op whose
/// saved logits serve one backward pass spares the new buffer.)
pub(crate) fn backward_in_place<T: Elem>(
    z: &mut [T],
    b: &[T],
    t: &[u32],
    lse: &[f64],
    v: usize,
    scale: f64,
) -> Vec<T> {
    let partial: Vec<Vec<f64>> = z
        .par_chunks_mut(v * ROWS_PER_TASK)
        .enumerate()
        .map(|(task, zc)| {
            let mut db = vec![0f64; v];
            for (r, row) in zc.chunks_mut(v).enumerate() {
                let i = task * ROWS_PER_TASK + r;
                let shift = T::of_f64(lse[i]);
                let s = T::of_f64(scale);
                for (d, &bb) in row.iter_mut().zip(b) {
                    *d = s * (*d + bb - shift).exp_v();
                }
                let target = t[i] as usize;
                row[target] = row[target] - s;
                for (acc, &d) in db.iter_mut().zip(row.iter()) {
                    *acc += d.as_f64();
                }
            }
            db
        })
        .collect();
    let mut db = vec![0f64; v];
    for p in &partial {
        for (acc, &x) in db.iter_mut().zip(p) {
            *acc += x;
        }
    }
    db.into_iter().map(T::of_f64).collect()
}

custom_op! {
    SoftmaxCrossEntropy: CustomOp3 = OP;
    cpu(&self, s1, l1, s2, l2, s3, l3) {
        let t = targets_of(s3, l3)?;
        check_targets(t, self.v)?;
        let v = self.v;
        let rows = dispatch!(OP, [(s1, l1) => z, (s2, l2) => b], |T| {
            Ok::<_, candle_core::Error>(forward::<T>(z, b, t, v))
        })?;
        let mean = rows.iter().map(|&(_, l)| l).sum::<f64>() / self.n as f64;
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Lse::Cpu(rows.into_iter().map(|(lse, _)| lse).collect()));
        let out = match s1 {
            CpuStorage::F64(_) => CpuStorage::F64(vec![mean]),
            _ => CpuStorage::F32(vec![mean as f32]),
        };
        Ok((out, Shape::from(())))
    }
    cuda(&self, s1, l1, s2, l2, s3, l3) {
        use crate::cuda::{self, int, kernels::CROSS_ENTROPY, Launch, PushKernelArg};
        let dev = &s1.device;
        let t = cuda::view::<u32>(s3, l3, OP)?;
        // The kernels index with the targets: check them first (n values come back).
        check_targets(&cuda::download(dev, &t)?, self.v)?;
        let (n, v) = (int(self.n, OP)?, int(self.v, OP)?);
        let mut lse = cuda::output::<f64>(dev, self.n)?;
        let mut loss = cuda::output::<f64>(dev, self.n)?;
        let out = cuda::cuda_dispatch!(OP, [(s1, l1) => z, (s2, l2) => b], |T| {
            let k = cuda::kernel::<T>(dev, &CROSS_ENTROPY, "xent_rows", Launch::Blocks(self.n))?;
            let mut args = k.args();
            args.arg(&z).arg(&b).arg(&t).arg(&mut lse).arg(&mut loss).arg(&n).arg(&v);
            k.launch(args)?;
            let mut out = cuda::output::<T>(dev, 1)?;
            let k = cuda::kernel::<T>(dev, &CROSS_ENTROPY, "xent_mean", Launch::Blocks(1))?;
            let mut args = k.args();
            args.arg(&loss).arg(&mut out).arg(&n);
            k.launch(args)?;
            Ok::<_, candle_core::Error>(cuda::storage(out, dev))
        })?;
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = Some(Lse::Cuda(lse));
        Ok((out, Shape::from(())))
    }
    extra {
        fn bwd(
            &self,
            logits: &Tensor,
            bias: &Tensor,
            targets: &Tensor,
            _loss: &Tensor,
            grad: &Tensor,
        ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let scale = grad.to_dtype(DType::F64)?.to_scalar::<f64>()? / self.n as f64;
            let lse = self
                .lse
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or_else(|| Error::Unsupported {
                    op: OP,
                    message: "backward before forward".into(),
                })?;
            let lse = match lse {
                Lse::Cpu(lse) if logits.device().is_cpu() => lse,
                lse => return backward_ops(logits, bias, targets, lse, scale),
            };
            let (sz, lz) = logits.storage_and_layout();
            let (sb, lb) = bias.storage_and_layout();
            let (st, lt) = targets.storage_and_layout();
            let (sz, sb, st) = (
                cpu_storage(&sz, OP)?,
                cpu_storage(&sb, OP)?,
                cpu_storage(&st, OP)?,
            );
            let t = targets_of(st, lt)?;
            let (n, v) = (self.n, self.v);
            let dev = logits.device();
            let (dz, db) = dispatch!(OP, [(sz, lz) => z, (sb, lb) => b], |T| {
                let (dz, db) = backward::<T>(z, b, t, &lse, v, scale);
                Ok::<_, candle_core::Error>((
                    Tensor::from_vec(dz, (n, v), dev)?,
                    Tensor::from_vec(db, v, dev)?,
                ))
            })?;
            Ok((Some(dz), Some(db), None))
        }
    }
}

/// The backward pass as two custom ops (how it runs on a GPU, where the storages cannot
/// be read directly): the logits' gradient, then its column sums for the bias.
fn backward_ops(
    logits: &Tensor,
    bias: &Tensor,
    targets: &Tensor,
    lse: Lse,
    scale: f64,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let dz = logits.apply_op3_no_bwd(bias, targets, &LogitsGrad { lse, scale })?;
    let db = dz.apply_op1_no_bwd(&ColumnSum)?;
    Ok((Some(dz), Some(db), None))
}

/// `(z, b, t) -> dz = scale (softmax(z + b) - onehot(t))` with the saved log-sum-exps.
struct LogitsGrad {
    lse: Lse,
    scale: f64,
}

custom_op! {
    LogitsGrad: CustomOp3 = "softmax_cross_entropy_logits_grad";
    cpu(&self, s1, l1, s2, l2, s3, l3) {
        // One variant without the `cuda` feature.
        #[allow(clippy::infallible_destructuring_match)]
        let lse = match &self.lse {
            Lse::Cpu(lse) => lse,
            #[cfg(feature = "cuda")]
            Lse::Cuda(_) => {
                return Err(Error::Unsupported {
                    op: OP,
                    message: "forward on CUDA, backward on CPU".into(),
                }
                .into())
            }
        };
        let t = targets_of(s3, l3)?;
        let v = l2.dims()[0];
        let scale = self.scale;
        dispatch!(OP, [(s1, l1) => z, (s2, l2) => b], |T| {
            let (dz, _) = backward::<T>(z, b, t, lse, v, scale);
            Ok((T::storage(dz), l1.shape().clone()))
        })
    }
    cuda(&self, s1, l1, s2, l2, s3, l3) {
        use crate::cuda::{self, int, kernels::CROSS_ENTROPY, Launch, PushKernelArg};
        let Lse::Cuda(lse) = &self.lse else {
            return Err(Error::Unsupported {
                op: OP,
                message: "forward on CPU, backward on CUDA".into(),
            }
            .into());
        };
        let dev = &s1.device;
        let (n, v) = (l1.dims()[0], l1.dims()[1]);
        let (n32, v32) = (int(n, OP)?, int(v, OP)?);
        let t = cuda::view::<u32>(s3, l3, OP)?;
        cuda::cuda_dispatch!(OP, [(s1, l1) => z, (s2, l2) => b], |T| {
            let mut dz = cuda::output::<T>(dev, n * v)?;
            let k = cuda::kernel::<T>(dev, &CROSS_ENTROPY, "xent_dlogits", Launch::Elements(n * v))?;
            let mut args = k.args();
            args.arg(&z).arg(&b).arg(&t).arg(lse).arg(&mut dz);
            args.arg(&self.scale).arg(&n32).arg(&v32);
            k.launch(args)?;
            Ok((cuda::storage(dz, dev), l1.shape().clone()))
        })
    }
}

/// `dz [n, v] -> [v]`: column sums, accumulated in f64 over the rows in order.
struct ColumnSum;

custom_op! {
    ColumnSum: CustomOp1 = "softmax_cross_entropy_bias_grad";
    cpu(&self, s, l) {
        let v = l.dims()[1];
        dispatch!(OP, [(s, l) => dz], |T| {
            let mut acc = vec![0f64; v];
            for row in dz.chunks(v) {
                for (a, &d) in acc.iter_mut().zip(row) {
                    *a += d.as_f64();
                }
            }
            Ok((T::storage(acc.into_iter().map(T::of_f64).collect()), Shape::from(v)))
        })
    }
    cuda(&self, s, l) {
        use crate::cuda::{self, int, kernels::CROSS_ENTROPY, Launch, PushKernelArg};
        let dev = &s.device;
        let (n, v) = (l.dims()[0], l.dims()[1]);
        let (n32, v32) = (int(n, OP)?, int(v, OP)?);
        cuda::cuda_dispatch!(OP, [(s, l) => dz], |T| {
            let mut db = cuda::output::<T>(dev, v)?;
            let k = cuda::kernel::<T>(dev, &CROSS_ENTROPY, "xent_dbias", Launch::Elements(v))?;
            let mut args = k.args();
            args.arg(&dz).arg(&mut db).arg(&n32).arg(&v32);
            k.launch(args)?;
            Ok((cuda::storage(db, dev), Shape::from(v)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, randn};
    use candle_core::CustomOp3;
    use candle_core::{Device, Var};

    fn targets(n: usize, v: usize, dev: &Device) -> Tensor {
        let t: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % v) as u32).collect();
        Tensor::from_vec(t, n, dev).unwrap()
    }

    #[test]
    fn matches_the_slow_reference_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let (n, v) = (67, 301);
        let z = (randn(&[n, v], DType::F32, &dev)? * 3.0)?;
        let b = randn(&[v], DType::F32, &dev)?;
        let t = targets(n, v, &dev);
        let (vz, vb) = (Var::from_tensor(&z)?, Var::from_tensor(&b)?);
        let fast = softmax_cross_entropy(vz.as_tensor(), vb.as_tensor(), &t)?;
        let slow = softmax_cross_entropy_slow(vz.as_tensor(), vb.as_tensor(), &t)?;
        assert_close(&fast, &slow, 1e-5, 1e-5, "loss")?;
        let gf = (fast * 1.7)?.backward()?;
        let gs = (slow * 1.7)?.backward()?;
        for (var, what) in [(&vz, "logits"), (&vb, "bias")] {
            assert_close(
                gf.get(var.as_tensor()).unwrap(),
                gs.get(var.as_tensor()).unwrap(),
                1e-6,
                1e-4,
                what,
            )?;
        }
        Ok(())
    }

    #[test]
    fn backward_as_ops_equals_the_direct_one() -> Result<()> {
        // The op form (the GPU's) gives the direct backward's gradients.
        let dev = Device::Cpu;
        let (n, v) = (37, 53);
        let z = randn(&[n, v], DType::F64, &dev)?;
        let b = randn(&[v], DType::F64, &dev)?;
        let t = targets(n, v, &dev);
        let op = SoftmaxCrossEntropy {
            n,
            v,
            lse: Arc::new(Mutex::new(None)),
        };
        let loss = z.apply_op3_no_bwd(&b, &t, &op)?;
        let lse = op
            .lse
            .lock()
            .unwrap()
            .clone()
            .expect("the forward saved it");
        let grad = Tensor::new(1.3f64, &dev)?;
        let direct = op.bwd(&z, &b, &t, &loss, &grad)?;
        let ops = backward_ops(&z, &b, &t, lse, 1.3 / n as f64)?;
        for (what, a, b) in [("logits", &direct.0, &ops.0), ("bias", &direct.1, &ops.1)] {
            let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
            assert_close(b, a, 1e-14, 1e-12, what)?;
        }
        assert!(direct.2.is_none() && ops.2.is_none());
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let (n, v) = (5, 7);
        let z = randn(&[n, v], DType::F64, &dev)?;
        let b = randn(&[v], DType::F64, &dev)?;
        let t = targets(n, v, &dev);
        let (vz, vb) = (Var::from_tensor(&z)?, Var::from_tensor(&b)?);
        let g = softmax_cross_entropy(vz.as_tensor(), vb.as_tensor(), &t)?.backward()?;
        let loss = |z: &Tensor, b: &Tensor| -> f64 {
            softmax_cross_entropy(z, b, &t)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let eps = 1e-6;
        for (which, base) in [(0, &z), (1, &b)] {
            let analytic: Vec<f64> = g
                .get(if which == 0 {
                    vz.as_tensor()
                } else {
                    vb.as_tensor()
                })
                .unwrap()
                .flatten_all()?
                .to_vec1()?;
            let flat: Vec<f64> = base.flatten_all()?.to_vec1()?;
            for j in 0..flat.len() {
                let at = |d: f64| {
                    let mut x = flat.clone();
                    x[j] += d;
                    let x = Tensor::from_vec(x, base.dims(), &dev).unwrap();
                    if which == 0 {
                        loss(&x, &b)
                    } else {
                        loss(&z, &x)
                    }
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                assert!(
                    (analytic[j] - numeric).abs() < 1e-7 + 1e-5 * numeric.abs(),
                    "input {which} element {j}: {} vs {numeric}",
                    analytic[j]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn bad_targets_and_shapes_are_named() {
        let dev = Device::Cpu;
        let z = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(3, DType::F32, &dev).unwrap();
        let t = Tensor::new(&[0u32, 3], &dev).unwrap();
        let err = softmax_cross_entropy(&z, &b, &t).unwrap_err().to_string();
        assert!(
            err.contains("target 1 is 3, outside the vocabulary of 3"),
            "{err}"
        );
        let bad_bias = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let err = softmax_cross_entropy(&z, &bad_bias, &t)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bias [3]"), "{err}");
        let float_targets = Tensor::zeros(2, DType::F32, &dev).unwrap();
        let err = softmax_cross_entropy(&z, &b, &float_targets)
            .unwrap_err()
            .to_string();
        assert!(err.contains("u32 targets [2]"), "{err}");
    }
}
