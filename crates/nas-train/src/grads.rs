//! Gradients as a list aligned with a list of variables, and clipping by global norm.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;

/// The gradient of each of `vars` in `store` (`None` where a variable got none).
pub fn collect(store: &GradStore, vars: &[(String, Var)]) -> Vec<Option<Tensor>> {
    vars.iter()
        .map(|(_, v)| store.get(v.as_tensor()).cloned())
        .collect()
}

/// The L2 norm of all gradients taken together.
pub fn global_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut sum = 0f64;
    for g in grads.iter().flatten() {
        sum += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(sum.sqrt())
}

/// Scales the gradients so that their global norm is at most `max_norm`, as PyTorch's
/// `clip_grad_norm_` does (factor `max_norm / (norm + 1e-6)` when it is below 1).
/// Returns the norm before clipping.
pub fn clip_global_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = (&*g * factor)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clipping_scales_to_the_maximum_and_leaves_small_gradients() {
        let dev = Device::Cpu;
        let mut g = vec![
            Some(Tensor::new(&[3f64, 0.0], &dev).unwrap()),
            None,
            Some(Tensor::new(&[4f64], &dev).unwrap()),
        ];
        let norm = clip_global_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        let a: Vec<f64> = g[0].as_ref().unwrap().to_vec1().unwrap();
        let b: Vec<f64> = g[2].as_ref().unwrap().to_vec1().unwrap();
        assert!((a[0] - 0.6 / (1.0 + 2e-7)).abs() < 1e-9, "{a:?}");
        assert!((b[0] - 0.8 / (1.0 + 2e-7)).abs() < 1e-9, "{b:?}");
        let norm = clip_global_norm(&mut g, 10.0).unwrap();
        assert!((norm - 1.0).abs() < 1e-6);
        let b2: Vec<f64> = g[2].as_ref().unwrap().to_vec1().unwrap();
        assert_eq!(b, b2);
    }
}
