//! Test helpers: seeded random tensors, closeness checks, and f64 central-difference
//! gradient checks (eps 1e-6, atol 1e-5, rtol 1e-3, as PyTorch's gradcheck).

use candle_core::{DType, Device, Tensor, Var};

use crate::error::Result;

/// A deterministic normal-ish tensor (sum of uniforms from a fixed-seed generator), so
/// tests do not depend on a global RNG.
pub fn randn(shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut state = 0x9E37_79B9_7F4A_7C15u64
        ^ (n as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)
        ^ shape.len() as u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let data: Vec<f64> = (0..n)
        .map(|_| (0..4).map(|_| next()).sum::<f64>() - 2.0)
        .collect();
    Tensor::from_vec(data, shape, dev)?.to_dtype(dtype)
}

/// Asserts `|a - b| <= atol + rtol * |b|` elementwise.
pub fn assert_close(a: &Tensor, b: &Tensor, atol: f64, rtol: f64, what: &str) -> Result<()> {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let a: Vec<f64> = a.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
    let b: Vec<f64> = b.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= atol + rtol * y.abs(),
            "{what}: element {i}: {x} vs {y}"
        );
    }
    Ok(())
}

/// Checks the gradients that candle's backward (through the hand-written `bwd`) gives for
/// every input against central differences of `loss = sum(f(inputs) * r)`, in f64.
pub fn grad_check(
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    what: &str,
) -> Result<()> {
    const EPS: f64 = 1e-6;
    const ATOL: f64 = 1e-5;
    const RTOL: f64 = 1e-3;
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let as_tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&as_tensors)?;
    let weights = randn(out.dims(), DType::F64, out.device())?;
    let loss_of =
        |xs: &[Tensor]| -> Result<f64> { f(xs)?.mul(&weights)?.sum_all()?.to_scalar::<f64>() };
    let grads = out.mul(&weights)?.sum_all()?.backward()?;
    for (i, input) in inputs.iter().enumerate() {
        let analytic: Vec<f64> = match grads.get(vars[i].as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1()?,
            None => vec![0.0; input.elem_count()],
        };
        let base: Vec<f64> = input.flatten_all()?.to_vec1()?;
        for j in 0..base.len() {
            let shifted = |delta: f64| -> Result<f64> {
                let mut data = base.clone();
                data[j] += delta;
                let mut xs = inputs.to_vec();
                xs[i] = Tensor::from_vec(data, input.dims(), input.device())?;
                loss_of(&xs)
            };
            let numeric = (shifted(EPS)? - shifted(-EPS)?) / (2.0 * EPS);
            let a = analytic[j];
            assert!(
                (a - numeric).abs() <= ATOL + RTOL * numeric.abs(),
                "{what}: input {i}, element {j}: analytic {a} vs numeric {numeric}"
            );
        }
    }
    Ok(())
}

/// True for batch-norm running statistics, which a `VarMap` holds next to the parameters.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name == "running_mean"
        || name == "running_var"
}

/// The number of trainable scalars in `varmap` (running statistics apart).
pub fn trainable_count(varmap: &candle_nn::VarMap) -> usize {
    trainable_names(varmap)
        .iter()
        .map(|n| varmap.data().lock().expect("lock")[n].elem_count())
        .sum()
}

/// The sorted names of the trainable variables in `varmap`.
pub fn trainable_names(varmap: &candle_nn::VarMap) -> Vec<String> {
    let mut names: Vec<String> = varmap
        .data()
        .lock()
        .expect("lock")
        .keys()
        .filter(|n| !is_buffer(n))
        .cloned()
        .collect();
    names.sort();
    names
}
