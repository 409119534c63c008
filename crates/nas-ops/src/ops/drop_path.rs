//! Drop path (Larsson et al. 2017, as DARTS's `utils.drop_path`): zero a whole sample's
//! output with probability `1 - keep`, scale the kept ones by `1 / keep`. The mask comes
//! from the caller's seeded generator, so runs are reproducible.
//!
//! A cell node sums its ops' outputs after drop path; [`drop_path_sum`] does the masking
//! and the sum as one fused op (one graph node instead of a mask, a broadcast and a
//! product per op and an addition per pair: candle's backward allocates a gradient for
//! each node).

use candle_core::Tensor;
use rand::Rng;

use crate::error::{Error, Result};
use crate::kernels::buffer::par_chunks_new;
use crate::kernels::elem::Elem;
use crate::ops::shell::custom_op;
use crate::ops::storage::dispatch;

/// Applies drop path to `x` `[n, ...]` with keep probability `keep` (1 leaves `x` as is).
pub fn drop_path(x: &Tensor, keep: f64, rng: &mut impl Rng) -> Result<Tensor> {
    if keep == 1.0 {
        return Ok(x.clone());
    }
    let scales = drop_path_scales(x.dim(0)?, keep, rng)?;
    scale_samples_slow(x, &scales)
}

/// The per-sample factors of drop path for a batch of `n`: `1 / keep` for a kept sample,
/// 0 for a dropped one (the draws [`drop_path`] makes).
pub fn drop_path_scales(n: usize, keep: f64, rng: &mut impl Rng) -> Result<Vec<f64>> {
    if !(0.0..=1.0).contains(&keep) || keep == 0.0 {
        return Err(Error::Unsupported {
            op: "drop_path",
            message: format!("keep probability must be in (0, 1], got {keep}"),
        }
        .into());
    }
    Ok((0..n)
        .map(|_| {
            if rng.random::<f64>() < keep {
                // Rounded to the working precision first, as the unfused mask tensor is.
                (1.0 / keep) as f32 as f64
            } else {
                0.0
            }
        })
        .collect())
}

/// `sum_k scale_k[n] * x_k[n, ...]` over `terms` (`None`: no scaling, an identity op
/// that drop path skips). All terms have one shape `[n, ...]`; scales have `n` entries.
pub fn drop_path_sum(terms: &[Term]) -> Result<Tensor> {
    let Some(((first, s0), rest)) = terms.split_first() else {
        return Err(Error::Unsupported {
            op: OP,
            message: "needs at least one term".to_string(),
        }
        .into());
    };
    let n = first.dim(0)?;
    for (x, scales) in terms {
        if x.dims() != first.dims() {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: format!("every term of shape {:?}", first.dims()),
                got: x.dims().to_vec(),
            }
            .into());
        }
        if let Some(s) = scales {
            if s.len() != n {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    expected: format!("{n} per-sample scales"),
                    got: vec![s.len()],
                }
                .into());
            }
        }
    }
    if !first.device().is_cpu() {
        return drop_path_sum_slow(terms);
    }
    let scaled = |x: &Tensor, s: Option<&[f64]>| -> Result<Tensor> {
        match s {
            Some(s) => x.contiguous()?.apply_op1(Scale(s.to_vec())),
            None => Ok(x.clone()),
        }
    };
    let Some(((second, s1), rest)) = rest.split_first() else {
        return scaled(first, *s0);
    };
    let pair = ScaledAdd {
        a: s0.map(<[f64]>::to_vec),
        b: s1.map(<[f64]>::to_vec),
    };
    let mut sum = first.contiguous()?.apply_op2(&second.contiguous()?, pair)?;
    for (x, s) in rest {
        let pair = ScaledAdd {
            a: None,
            b: s.map(<[f64]>::to_vec),
        };
        sum = sum.apply_op2(&x.contiguous()?, pair)?;
    }
    Ok(sum)
}

/// The plain-tensor reference: a broadcast product per scaled term, then additions.
pub fn drop_path_sum_slow(terms: &[Term]) -> Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    for (x, s) in terms {
        let h = match s {
            Some(s) => scale_samples_slow(x, s)?,
            None => (*x).clone(),
        };
        sum = Some(match sum {
            Some(acc) => (acc + h)?,
            None => h,
        });
    }
    sum.ok_or_else(|| {
        Error::Unsupported {
            op: OP,
            message: "needs at least one term".to_string(),
        }
        .into()
    })
}

/// `x[n, ...] * scales[n]` with candle's broadcast product.
fn scale_samples_slow(x: &Tensor, scales: &[f64]) -> Result<Tensor> {
    let mut shape = vec![1usize; x.rank()];
    shape[0] = scales.len();
    let mask = Tensor::from_vec(scales.to_vec(), shape, x.device())?.to_dtype(x.dtype())?;
    x.broadcast_mul(&mask)
}

const OP: &str = "drop_path_sum";

/// One term of a [`drop_path_sum`]: an op's output and its per-sample drop-path factors
/// (`None`: not dropped, as identities are not).
pub type Term<'a> = (&'a Tensor, Option<&'a [f64]>);

/// `y[n, i] = a[n] x[n, i] + b[n] z[n, i]` (a missing factor is 1), images in parallel.
fn scaled_add<T: Elem>(x: &[T], z: Option<&[T]>, a: Option<&[f64]>, b: Option<&[f64]>) -> Vec<T> {
    let n = a.or(b).map_or(1, <[f64]>::len);
    let per = x.len() / n;
    let factor = |s: Option<&[f64]>, i: usize| s.map_or(T::one(), |s| T::of_f64(s[i]));
    par_chunks_new(x.len(), per, |i, yi| {
        let (fa, xi) = (factor(a, i), &x[i * per..(i + 1) * per]);
        match z {
            Some(z) => {
                let (fb, zi) = (factor(b, i), &z[i * per..(i + 1) * per]);
                for ((yv, &xv), &zv) in yi.iter_mut().zip(xi).zip(zi) {
                    *yv = fa * xv + fb * zv;
                }
            }
            None => {
                for (yv, &xv) in yi.iter_mut().zip(xi) {
                    *yv = fa * xv;
                }
            }
        }
    })
}

/// `x * s[n]` per sample (forward of a lone scaled term, and every backward).
struct Scale(Vec<f64>);

custom_op! {
    Scale: CustomOp1 = OP;
    cpu(&self, s, l) {
        dispatch!(OP, [(s, l) => x], |T| {
            Ok((T::storage(scaled_add::<T>(x, None, Some(&self.0), None)), l.shape().clone()))
        })
    }
    extra {
        fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
            Ok(Some(
                dy.contiguous()?.apply_op1_no_bwd(&Scale(self.0.clone()))?,
            ))
        }
    }
}

/// `a[n] x + b[n] z`.
struct ScaledAdd {
    a: Option<Vec<f64>>,
    b: Option<Vec<f64>>,
}

custom_op! {
    ScaledAdd: CustomOp2 = OP;
    cpu(&self, s1, l1, s2, l2) {
        let (a, b) = (self.a.as_deref(), self.b.as_deref());
        dispatch!(OP, [(s1, l1) => x, (s2, l2) => z], |T| {
            Ok((T::storage(scaled_add::<T>(x, Some(z), a, b)), l1.shape().clone()))
        })
    }
    extra {
        fn bwd(
            &self,
            _x: &Tensor,
            _z: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let grad = |s: &Option<Vec<f64>>| -> Result<Tensor> {
                match s {
                    Some(s) => dy.contiguous()?.apply_op1_no_bwd(&Scale(s.clone())),
                    None => Ok(dy.clone()),
                }
            };
            Ok((Some(grad(&self.a)?), Some(grad(&self.b)?)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_check, randn};
    use candle_core::{DType, Device};
    use rand::SeedableRng;

    #[test]
    fn fused_sum_matches_masking_and_adding() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let xs: Vec<Tensor> = (0..3)
            .map(|i| randn(&[5, 3, 4, 2 + i], DType::F32, &dev)?.narrow(3, 0, 2))
            .collect::<Result<_>>()?;
        let s0 = drop_path_scales(5, 0.6, &mut rng)?;
        let s2 = drop_path_scales(5, 0.6, &mut rng)?;
        assert!(
            s0.contains(&0.0) || s2.contains(&0.0),
            "some sample dropped"
        );
        let cases: Vec<Vec<Term>> = vec![
            vec![(&xs[0], Some(&s0))],
            vec![(&xs[0], None)],
            vec![(&xs[0], Some(&s0)), (&xs[1], None)],
            vec![(&xs[0], None), (&xs[1], Some(&s2))],
            vec![(&xs[0], Some(&s0)), (&xs[1], None), (&xs[2], Some(&s2))],
        ];
        for (i, terms) in cases.iter().enumerate() {
            let fast = drop_path_sum(terms)?;
            let slow = drop_path_sum_slow(terms)?;
            assert_close(&fast, &slow, 1e-6, 1e-6, &format!("case {i}"))?;
        }
        Ok(())
    }

    #[test]
    fn fused_sum_gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let scales = [2.5, 0.0, 2.5];
        for k in 1..=3 {
            let xs: Vec<Tensor> = (0..k)
                .map(|_| randn(&[3, 2, 3, 5], DType::F64, &dev))
                .collect::<Result<_>>()?;
            grad_check(
                &xs,
                |v| {
                    let terms: Vec<Term> = v
                        .iter()
                        .enumerate()
                        .map(|(i, x)| (x, (i != 1).then_some(&scales[..])))
                        .collect();
                    drop_path_sum(&terms)
                },
                &format!("{k} terms"),
            )?;
        }
        Ok(())
    }

    #[test]
    fn fused_sum_refuses_bad_terms() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let err = drop_path_sum(&[(&a, None), (&b, None)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("every term of shape [2, 3]"), "{err}");
        let err = drop_path_sum(&[(&a, Some(&[1.0][..]))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 per-sample scales"), "{err}");
        assert!(drop_path_sum(&[]).is_err());
    }

    /// How many samples an output kept.
    fn kept(output: &Tensor) -> Result<usize> {
        let per_sample = output
            .flatten_from(1)?
            .abs()?
            .sum(1)?
            .to_dtype(DType::F64)?;
        Ok(per_sample
            .to_vec1::<f64>()?
            .iter()
            .filter(|v| **v > 0.0)
            .count())
    }

    #[test]
    fn same_seed_same_mask_and_expected_scale() -> Result<()> {
        let x = Tensor::ones((1000, 2), DType::F32, &Device::Cpu)?;
        let a = drop_path(&x, 0.8, &mut rand::rngs::StdRng::seed_from_u64(7))?;
        let b = drop_path(&x, 0.8, &mut rand::rngs::StdRng::seed_from_u64(7))?;
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        let k = kept(&a)?;
        assert!((750..850).contains(&k), "kept {k} of 1000");
        let mean = a.mean_all()?.to_scalar::<f32>()?;
        assert!((mean - 1.0).abs() < 0.1, "mean {mean}");
        assert!(drop_path(&x, 0.0, &mut rand::rngs::StdRng::seed_from_u64(7)).is_err());
        Ok(())
    }
}
