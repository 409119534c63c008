//! The softmax-weighted sum of a DARTS MixedOp (paper eq. 2): `y = sum_k w_k * o_k` over
//! stacked op outputs `[k, ...]` and weights `[k]`, as one pass forward and backward
//! (to every output and to the weights).

use candle_core::{Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::elem::Elem;
use crate::kernels::reduce;
use crate::ops::shell::custom_op;
use crate::ops::storage::dispatch;

const OP: &str = "weighted_sum";
/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `sum_k weights[k] * outputs[k]` for `outputs` `[k, ...]` and `weights` `[k]`.
pub fn weighted_sum(outputs: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let k = outputs.dim(0)?;
    if weights.dims() != [k] {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: format!("weights [{k}] for {k} stacked outputs"),
            got: weights.dims().to_vec(),
        }
        .into());
    }
    outputs
        .contiguous()?
        .apply_op2(&weights.contiguous()?, WeightedSum)
}

/// The plain-tensor reference.
pub fn weighted_sum_slow(outputs: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let k = outputs.dim(0)?;
    let mut shape = vec![1usize; outputs.rank()];
    shape[0] = k;
    outputs.broadcast_mul(&weights.reshape(shape)?)?.sum(0)
}

struct WeightedSum;

fn forward<T: Elem>(o: &[T], w: &[T]) -> Vec<T> {
    let size = o.len() / w.len();
    let mut y = vec![T::zero(); size];
    y.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, yc)| {
        let start = chunk * CHUNK;
        for (k, &wk) in w.iter().enumerate() {
            let oc = &o[k * size + start..k * size + start + yc.len()];
            for (yv, &ov) in yc.iter_mut().zip(oc) {
                *yv = *yv + wk * ov;
            }
        }
    });
    y
}

/// `dw_k = sum(dy * o_k)` ([`reduce::dot_par`]: deterministic, blocks summed in f64).
fn weight_grad<T: Elem>(dy: &[T], o: &[T]) -> Vec<T> {
    o.chunks_exact(dy.len())
        .map(|ok| T::of_f64(reduce::dot_par(dy, ok)))
        .collect()
}

custom_op! {
    WeightedSum: CustomOp2 = OP;
    cpu(&self, s1, l1, s2, l2) {
        let out_shape = Shape::from(&l1.dims()[1..]);
        dispatch!(OP, [(s1, l1) => o, (s2, l2) => w], |T| {
            Ok((T::storage(forward::<T>(o, w)), out_shape))
        })
    }
    cuda(&self, s1, l1, s2, l2) {
        use crate::cuda::{self, int, kernels::WEIGHTED_SUM, Launch, PushKernelArg};
        let dev = &s1.device;
        let out_shape = Shape::from(&l1.dims()[1..]);
        let size = out_shape.elem_count();
        let k = int(l2.dims()[0], OP)?;
        cuda::cuda_dispatch!(OP, [(s1, l1) => o, (s2, l2) => w], |T| {
            let mut y = cuda::output::<T>(dev, size)?;
            let kernel = cuda::kernel::<T>(dev, &WEIGHTED_SUM, "ws_fwd", Launch::Elements(size))?;
            let mut args = kernel.args();
            args.arg(&o).arg(&w).arg(&mut y).arg(&k).arg(&size);
            kernel.launch(args)?;
            Ok((cuda::storage(y, dev), out_shape))
        })
    }
    extra {
        fn bwd(
            &self,
            outputs: &Tensor,
            weights: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let dy = dy.contiguous()?;
            let dw = dy.apply_op2_no_bwd(outputs, &WeightedSumWeightGrad)?;
            let d_outputs = dy.apply_op2_no_bwd(weights, &WeightedSumOutputGrad)?;
            Ok((Some(d_outputs), Some(dw)))
        }
    }
}

/// `(dy, outputs) -> dw`.
struct WeightedSumWeightGrad;

custom_op! {
    WeightedSumWeightGrad: CustomOp2 = "weighted_sum_weight_grad";
    cpu(&self, s1, l1, s2, l2) {
        let k = l2.dims()[0];
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => o], |T| {
            Ok((T::storage(weight_grad::<T>(dy, o)), Shape::from(k)))
        })
    }
    cuda(&self, s1, l1, s2, l2) {
        use crate::cuda::{self, int, kernels::WEIGHTED_SUM, Launch, PushKernelArg};
        let dev = &s1.device;
        let (k, size) = (l2.dims()[0], l1.shape().elem_count());
        let k32 = int(k, OP)?;
        cuda::cuda_dispatch!(OP, [(s1, l1) => dy, (s2, l2) => o], |T| {
            let mut dw = cuda::output::<T>(dev, k)?;
            let kernel = cuda::kernel::<T>(dev, &WEIGHTED_SUM, "ws_wgrad", Launch::Blocks(k))?;
            let mut args = kernel.args();
            args.arg(&dy).arg(&o).arg(&mut dw).arg(&k32).arg(&size);
            kernel.launch(args)?;
            Ok((cuda::storage(dw, dev), Shape::from(k)))
        })
    }
}

/// `(dy, w) -> [k, ...]` with `d_outputs[k] = w[k] * dy`.
struct WeightedSumOutputGrad;

custom_op! {
    WeightedSumOutputGrad: CustomOp2 = "weighted_sum_output_grad";
    cpu(&self, s1, l1, s2, l2) {
        let k = l2.dims()[0];
        let mut dims = vec![k];
        dims.extend_from_slice(l1.dims());
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => w], |T| {
            let size = dy.len();
            let mut out = vec![T::of_f64(0.0); k * size];
            out.par_chunks_mut(size).zip(w.par_iter()).for_each(|(oc, &wk)| {
                for (o, &d) in oc.iter_mut().zip(dy) {
                    *o = wk * d;
                }
            });
            Ok((T::storage(out), Shape::from(dims)))
        })
    }
    cuda(&self, s1, l1, s2, l2) {
        use crate::cuda::{self, int, kernels::WEIGHTED_SUM, Launch, PushKernelArg};
        let dev = &s1.device;
        let (k, size) = (l2.dims()[0], l1.shape().elem_count());
        let k32 = int(k, OP)?;
        let mut dims = vec![k];
        dims.extend_from_slice(l1.dims());
        cuda::cuda_dispatch!(OP, [(s1, l1) => dy, (s2, l2) => w], |T| {
            let mut out = cuda::output::<T>(dev, k * size)?;
            let kernel =
                cuda::kernel::<T>(dev, &WEIGHTED_SUM, "ws_ograd", Launch::Elements(k * size))?;
            let mut args = kernel.args();
            args.arg(&dy).arg(&w).arg(&mut out).arg(&k32).arg(&size);
            kernel.launch(args)?;
            Ok((cuda::storage(out, dev), Shape::from(dims)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_check, randn};
    use candle_core::{DType, Device};

    #[test]
    fn matches_slow_reference_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let o = randn(&[7, 3, 2, 5, 3], DType::F32, &dev)?;
        let w = randn(&[7], DType::F32, &dev)?;
        assert_close(
            &weighted_sum(&o, &w)?,
            &weighted_sum_slow(&o, &w)?,
            1e-5,
            1e-5,
            "weighted sum",
        )?;
        let o = randn(&[4, 2, 3, 5, 3], DType::F64, &dev)?;
        let w = randn(&[4], DType::F64, &dev)?;
        grad_check(&[o, w], |v| weighted_sum(&v[0], &v[1]), "weighted sum")
    }

    #[test]
    fn weight_shape_is_checked() {
        let dev = Device::Cpu;
        let o = Tensor::zeros((3, 2, 2), DType::F32, &dev).unwrap();
        let w = Tensor::zeros(2, DType::F32, &dev).unwrap();
        let err = weighted_sum(&o, &w).unwrap_err().to_string();
        assert!(
            err.contains("weighted_sum: expected weights [3] for 3 stacked outputs, got shape [2]"),
            "{err}"
        );
    }
}
