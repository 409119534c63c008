//! Drop path (Larsson et al. 2017, as DARTS's `utils.drop_path`): zero a whole sample's
//! output with probability `1 - keep`, scale the kept ones by `1 / keep`. The mask comes
//! from the caller's seeded generator, so runs are reproducible.

use candle_core::Tensor;
use rand::Rng;

use crate::error::{Error, Result};

/// Applies drop path to `x` `[n, ...]` with keep probability `keep` (1 leaves `x` as is).
pub fn drop_path(x: &Tensor, keep: f64, rng: &mut impl Rng) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&keep) || keep == 0.0 {
        return Err(Error::Unsupported {
            op: "drop_path",
            message: format!("keep probability must be in (0, 1], got {keep}"),
        }
        .into());
    }
    if keep == 1.0 {
        return Ok(x.clone());
    }
    let n = x.dim(0)?;
    let mask: Vec<f32> = (0..n)
        .map(|_| {
            if rng.random::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    let mut shape = vec![1usize; x.rank()];
    shape[0] = n;
    let mask = Tensor::from_vec(mask, shape, x.device())?.to_dtype(x.dtype())?;
    x.broadcast_mul(&mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use rand::SeedableRng;

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
