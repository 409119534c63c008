//! Gradients as a list aligned with a list of variables, and clipping by global norm.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;

/// The gradient of each of `vars` in `store` (`None` where a variable got none),
/// detached.
///
/// candle detaches the gradients of intermediate tensors but not the sums it keeps for
/// variables: a weight's gradient is, for example, the product of the activation it
/// multiplied and the incoming gradient, and holds that activation and so the whole
/// forward graph. An optimizer state made from it (a momentum buffer) would keep every
/// step's graph alive: hundreds of megabytes per step on a DARTS network.
pub fn collect(store: &GradStore, vars: &[(String, Var)]) -> Vec<Option<Tensor>> {
    vars.iter()
        .map(|(_, v)| store.get(v.as_tensor()).map(Tensor::detach))
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

/// Whether `t` still depends on `var` through a recorded graph (for tests that state
/// must not keep graphs alive).
#[cfg(test)]
pub(crate) fn reaches(t: &Tensor, var: &Var) -> bool {
    let store = t
        .sum_all()
        .and_then(|s| s.backward())
        .expect("backward of a sum");
    store.get(var.as_tensor()).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn collected_gradients_hold_no_graph() {
        let dev = Device::Cpu;
        let v = Var::new(&[1f64, 2.0], &dev).unwrap();
        let w = Var::new(&[3f64, 4.0], &dev).unwrap();
        // x depends on v; the gradient of w is x (times 1), so candle's sum for w
        // records a graph that reaches v.
        let x = (v.as_tensor() * 2.0).unwrap();
        let loss = (w.as_tensor() * &x).unwrap().sum_all().unwrap();
        let store = loss.backward().unwrap();
        let raw = store.get(w.as_tensor()).unwrap();
        assert!(
            reaches(raw, &v),
            "the premise: candle's gradient keeps its graph"
        );
        let vars = vec![("v".to_string(), v.clone()), ("w".to_string(), w.clone())];
        let g = collect(&store, &vars);
        let gw = g[1].as_ref().unwrap();
        assert_eq!(gw.to_vec1::<f64>().unwrap(), vec![2.0, 4.0]);
        assert!(!reaches(gw, &v));
    }

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
