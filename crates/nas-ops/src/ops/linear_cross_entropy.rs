//! A language model's decoder and loss as one op: the mean over rows of the softmax
//! cross-entropy of `x W^T + b` (the [`softmax_cross_entropy`](crate::ops::cross_entropy::softmax_cross_entropy)
//! loss of a linear layer).
//!
//! Why one op: with PTB's 10,000 words the logits of a 256 x 35 batch are 358 MB. As a
//! candle matrix product followed by the loss, the backward pass allocates and zeroes a
//! gradient of that size, adds into it, and always computes both products of the
//! product's backward, even when the weight is a constant (the architecture step of the
//! recurrent search holds the weights constant: its weight product is wasted). Here the
//! logits live only inside the op, and the backward runs only the products whose inputs
//! want gradients.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, DType, Device, Shape, Tensor};

use crate::error::{Error, Result};
use crate::kernels::elem::Elem;
use crate::kernels::gemm::{matmul_par_new, MatRef};
use crate::ops::cross_entropy::{
    backward_in_place as xent_backward, check_targets, forward as xent_forward,
};
use crate::ops::shell::custom_op;
use crate::ops::storage::{contiguous, cpu_storage};

const OP: &str = "linear_cross_entropy";

/// The mean cross-entropy of `targets` (`[n]`, u32) under `softmax(x w^T + bias)`, with
/// `x` `[n, k]`, `w` `[v, k]` (one row per class, as a tied embedding table) and `bias`
/// `[v]`; a scalar, differentiable in `x`, `w` and `bias`. On the CPU one fused op; on
/// other devices a matrix product and [`softmax_cross_entropy`](crate::ops::cross_entropy::softmax_cross_entropy).
pub fn linear_cross_entropy(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    let geom = Geometry::new(x, w, bias, targets)?;
    if !(x.device().is_cpu() && w.device().is_cpu() && bias.device().is_cpu()) {
        return crate::ops::cross_entropy::softmax_cross_entropy(
            &x.matmul(&w.t()?)?,
            bias,
            targets,
        );
    }
    let op = LinearCrossEntropy {
        geom,
        targets: targets.to_vec1::<u32>()?,
        wants: [x.track_op(), w.track_op(), bias.track_op()],
        saved: Arc::new(Mutex::new(None)),
    };
    check_targets(&op.targets, geom.v)?;
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &bias.contiguous()?, op)
}

/// The plain-tensor reference of [`linear_cross_entropy`].
pub fn linear_cross_entropy_slow(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    Geometry::new(x, w, bias, targets)?;
    let log_p = candle_nn::ops::log_softmax(&x.matmul(&w.t()?)?.broadcast_add(bias)?, 1)?;
    candle_nn::loss::nll(&log_p, targets)
}

#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    k: usize,
    v: usize,
}

impl Geometry {
    fn new(x: &Tensor, w: &Tensor, bias: &Tensor, targets: &Tensor) -> Result<Self> {
        let err = |expected: String, got: &Tensor| -> candle_core::Error {
            Error::ShapeMismatch {
                op: OP,
                expected,
                got: got.dims().to_vec(),
            }
            .into()
        };
        let &[n, k] = x.dims() else {
            return Err(err("x [n, k]".into(), x));
        };
        let &[v, wk] = w.dims() else {
            return Err(err(format!("w [vocab, {k}]"), w));
        };
        if wk != k || n == 0 || v == 0 {
            return Err(err(
                format!("non-empty w [vocab, {k}] and x [n > 0, {k}]"),
                w,
            ));
        }
        if bias.dims() != [v] {
            return Err(err(format!("bias [{v}]"), bias));
        }
        if targets.dims() != [n] || targets.dtype() != DType::U32 {
            return Err(err(
                format!("u32 targets [{n}] (got dtype {:?})", targets.dtype()),
                targets,
            ));
        }
        Ok(Geometry { n, k, v })
    }
}

/// What the forward keeps: the logits (before the bias) and each row's log-sum-exp.
enum Saved {
    F32(Vec<f32>, Vec<f64>),
    F64(Vec<f64>, Vec<f64>),
}

struct LinearCrossEntropy {
    geom: Geometry,
    targets: Vec<u32>,
    /// Whether `x`, `w` and `bias` want gradients.
    wants: [bool; 3],
    saved: Arc<Mutex<Option<Saved>>>,
}

/// `x w^T`, `[n, v]`.
fn logits<T: Elem>(g: &Geometry, x: &[T], w: &[T]) -> Vec<T> {
    matmul_par_new(MatRef::rows(x, g.n, g.k), MatRef::transposed(w, g.v, g.k))
}

/// The gradients of `x`, `w` and `bias` that are wanted, from the loss gradient `scale`
/// (already divided by `n`); the saved logits `z` become `dz` in place.
#[allow(clippy::type_complexity)]
fn gradients<T: Elem>(
    op: &LinearCrossEntropy,
    mut z: Vec<T>,
    lse: &[f64],
    x: &[T],
    w: &[T],
    b: &[T],
    scale: f64,
) -> (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>) {
    let g = &op.geom;
    let db = xent_backward(&mut z, b, &op.targets, lse, g.v, scale);
    let dz = z;
    let [want_x, want_w, want_b] = op.wants;
    let dx = want_x.then(|| matmul_par_new(MatRef::rows(&dz, g.n, g.v), MatRef::rows(w, g.v, g.k)));
    let dw = want_w
        .then(|| matmul_par_new(MatRef::transposed(&dz, g.n, g.v), MatRef::rows(x, g.n, g.k)));
    (dx, dw, want_b.then_some(db))
}

impl LinearCrossEntropy {
    /// The logits (before the bias), each row's log-sum-exp, and the mean loss.
    fn forward<T: Elem>(&self, x: &[T], w: &[T], b: &[T]) -> (Vec<T>, Vec<f64>, f64) {
        let g = &self.geom;
        let z = logits(g, x, w);
        let rows = xent_forward(&z, b, &self.targets, g.v);
        let mean = rows.iter().map(|&(_, l)| l).sum::<f64>() / g.n as f64;
        (z, rows.into_iter().map(|(lse, _)| lse).collect(), mean)
    }
}

custom_op! {
    LinearCrossEntropy: CustomOp3 = OP;
    cpu(&self, s1, l1, s2, l2, s3, l3) {
        let (saved, out) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                let (z, lse, mean) = self.forward(
                    contiguous(x, l1, OP)?,
                    contiguous(w, l2, OP)?,
                    contiguous(b, l3, OP)?,
                );
                (Saved::F32(z, lse), CpuStorage::F32(vec![mean as f32]))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                let (z, lse, mean) = self.forward(
                    contiguous(x, l1, OP)?,
                    contiguous(w, l2, OP)?,
                    contiguous(b, l3, OP)?,
                );
                (Saved::F64(z, lse), CpuStorage::F64(vec![mean]))
            }
            _ => return Err(crate::ops::storage::mismatch(OP, &[s1, s2, s3])),
        };
        if self.wants.iter().any(|&w| w) {
            *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        }
        Ok((out, Shape::from(())))
    }
    extra {
        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            bias: &Tensor,
            _loss: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let g = self.geom;
            let scale = grad.to_dtype(DType::F64)?.to_scalar::<f64>()? / g.n as f64;
            // The logits serve one backward pass (they become its `dz`).
            let saved = self
                .saved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .ok_or_else(|| Error::Unsupported {
                    op: OP,
                    message: "backward without a forward, or a second backward through the same \
                              forward (the op keeps its logits for one)"
                        .into(),
                })?;
            let (sx, lx) = x.storage_and_layout();
            let (sw, lw) = w.storage_and_layout();
            let (sb, lb) = bias.storage_and_layout();
            let (sx, sw, sb) = (
                cpu_storage(&sx, OP)?,
                cpu_storage(&sw, OP)?,
                cpu_storage(&sb, OP)?,
            );
            let dev = &Device::Cpu;
            macro_rules! finish {
                ($z:expr, $lse:expr, $x:expr, $w:expr, $b:expr) => {{
                    let (x, w, b) = (
                        contiguous($x, lx, OP)?,
                        contiguous($w, lw, OP)?,
                        contiguous($b, lb, OP)?,
                    );
                    let (dx, dw, db) = gradients(self, $z, &$lse, x, w, b, scale);
                    Ok((
                        dx.map(|d| Tensor::from_vec(d, (g.n, g.k), dev))
                            .transpose()?,
                        dw.map(|d| Tensor::from_vec(d, (g.v, g.k), dev))
                            .transpose()?,
                        db.map(|d| Tensor::from_vec(d, g.v, dev)).transpose()?,
                    ))
                }};
            }
            match (saved, sx, sw, sb) {
                (Saved::F32(z, lse), CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                    finish!(z, lse, x, w, b)
                }
                (Saved::F64(z, lse), CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                    finish!(z, lse, x, w, b)
                }
                _ => Err(crate::ops::storage::mismatch(OP, &[sx, sw, sb])),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::testing::{assert_close, grad_check, randn};

    fn case(dtype: DType) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let dev = &Device::Cpu;
        let (n, k, v) = (7, 5, 11);
        let t: Vec<u32> = (0..n as u32).map(|i| (i * 4 + 1) % v as u32).collect();
        Ok((
            randn(&[n, k], dtype, dev)?,
            (randn(&[v, k], dtype, dev)? * 0.7)?,
            (randn(&[v], dtype, dev)? * 0.3)?,
            Tensor::new(t.as_slice(), dev)?,
        ))
    }

    #[test]
    fn loss_and_gradients_match_the_plain_reference() -> Result<()> {
        for dtype in [DType::F64, DType::F32] {
            let (x, w, b, t) = case(dtype)?;
            let vars = [&x, &w, &b].map(|t| Var::from_tensor(t).expect("var"));
            let ts = vars.clone().map(|v| v.as_tensor().clone());
            let fast = linear_cross_entropy(&ts[0], &ts[1], &ts[2], &t)?;
            let slow = linear_cross_entropy_slow(&ts[0], &ts[1], &ts[2], &t)?;
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            assert_close(&fast, &slow, tol, tol, "loss")?;
            let (gf, gs) = ((fast * 3.0)?.backward()?, (slow * 3.0)?.backward()?);
            for (v, name) in vars.iter().zip(["x", "w", "bias"]) {
                let (a, b) = (gf.get(v.as_tensor()), gs.get(v.as_tensor()));
                assert_close(a.expect("grad"), b.expect("grad"), tol, tol, name)?;
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let (x, w, b, t) = case(DType::F64)?;
        grad_check(
            &[x, w, b],
            |xs| linear_cross_entropy(&xs[0], &xs[1], &xs[2], &t),
            "linear_cross_entropy",
        )
    }

    #[test]
    fn a_second_backward_through_one_forward_is_refused() -> Result<()> {
        let (x, w, b, t) = case(DType::F32)?;
        let xv = Var::from_tensor(&x)?;
        let loss = linear_cross_entropy(xv.as_tensor(), &w, &b, &t)?;
        loss.backward()?;
        let e = loss.backward().unwrap_err().to_string();
        assert!(e.contains("second backward"), "{e}");
        Ok(())
    }

    #[test]
    fn constants_get_no_gradient_and_the_rest_is_unchanged() -> Result<()> {
        let (x, w, b, t) = case(DType::F64)?;
        let xv = Var::from_tensor(&x)?;
        let grads = linear_cross_entropy(xv.as_tensor(), &w, &b, &t)?.backward()?;
        assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
        let all = [&x, &w, &b].map(|t| Var::from_tensor(t).expect("var"));
        let reference = linear_cross_entropy_slow(
            all[0].as_tensor(),
            all[1].as_tensor(),
            all[2].as_tensor(),
            &t,
        )?
        .backward()?;
        assert_close(
            grads.get(xv.as_tensor()).expect("grad"),
            reference.get(all[0].as_tensor()).expect("grad"),
            1e-12,
            1e-12,
            "x",
        )
    }

    #[test]
    fn bad_inputs_are_named_in_the_error() -> Result<()> {
        let (x, w, b, t) = case(DType::F32)?;
        let e = linear_cross_entropy(&x, &w.t()?, &b, &t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("w [vocab, 5]"), "{e}");
        let e = linear_cross_entropy(&x, &w, &b.narrow(0, 0, 3)?, &t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bias [11]"), "{e}");
        let big = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 11], &Device::Cpu)?;
        let e = linear_cross_entropy(&x, &w, &b, &big)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("target 6 is 11, outside the vocabulary of 11"),
            "{e}"
        );
        Ok(())
    }
}
