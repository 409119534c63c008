//! The CUDA kernels (feature `cuda`; these tests need a CUDA device and fail without
//! one): outputs and gradients against the CPU kernels in f32 and f64 on odd sizes, and
//! the f64 kernels' gradients against central differences computed on the GPU.

use candle_core::{DType, Device, Tensor, Var};

use crate::testing::{assert_close, grad_check, randn};
use crate::*;

fn gpu() -> Device {
    Device::new_cuda(0).expect("the `cuda` feature's tests need a CUDA device")
}

/// `f` on the CPU and on the GPU: the outputs, and the gradients of `sum(f(x) * r)` with
/// respect to every input, agree within `tol` (absolute and relative).
fn matches_cpu(
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    tol: f64,
    what: &str,
) -> Result<()> {
    let run = |dev: &Device| -> Result<(Tensor, Vec<Tensor>)> {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_device(dev)?))
            .collect::<Result<_>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts)?;
        assert!(
            y.device().same_device(dev),
            "{what}: output left the device"
        );
        let r = randn(y.dims(), y.dtype(), &Device::Cpu)?.to_device(dev)?;
        let grads = y.mul(&r)?.sum_all()?.backward()?;
        let grads = vars
            .iter()
            .map(|v| match grads.get(v.as_tensor()) {
                Some(g) => g.to_device(&Device::Cpu),
                None => v.as_tensor().zeros_like()?.to_device(&Device::Cpu),
            })
            .collect::<Result<_>>()?;
        Ok((y.to_device(&Device::Cpu)?, grads))
    };
    let (y_cpu, g_cpu) = run(&Device::Cpu)?;
    let (y_gpu, g_gpu) = run(&gpu())?;
    assert_close(&y_gpu, &y_cpu, tol, tol, &format!("{what}: output"))?;
    for (i, (a, b)) in g_gpu.iter().zip(&g_cpu).enumerate() {
        assert_close(a, b, tol, tol, &format!("{what}: gradient of input {i}"))?;
    }
    Ok(())
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        1e-10
    } else {
        1e-4
    }
}

#[test]
fn depthwise_matches_cpu_and_finite_differences() -> Result<()> {
    for (k, dilation) in [(3, 1), (5, 1), (3, 2), (5, 2)] {
        for stride in [1, 2] {
            for relu_input in [false, true] {
                let cfg = DepthwiseConfig {
                    stride,
                    padding: dilation * (k - 1) / 2,
                    dilation,
                    relu_input,
                };
                for dtype in [DType::F32, DType::F64] {
                    let x = randn(&[3, 4, 7, 9], dtype, &Device::Cpu)?;
                    let w = randn(&[4, 1, k, k], dtype, &Device::Cpu)?;
                    let what = format!("depthwise k={k} {cfg:?} {dtype:?}");
                    matches_cpu(
                        &[x, w],
                        |v| depthwise_conv2d(&v[0], &v[1], cfg),
                        tol(dtype),
                        &what,
                    )?;
                }
                let x = randn(&[2, 2, 7, 9], DType::F64, &gpu())?;
                let w = randn(&[2, 1, k, k], DType::F64, &gpu())?;
                grad_check(
                    &[x, w],
                    |v| depthwise_conv2d(&v[0], &v[1], cfg),
                    &format!("gpu depthwise k={k} {cfg:?}"),
                )?;
            }
        }
    }
    Ok(())
}

#[test]
fn pooling_matches_cpu_and_finite_differences() -> Result<()> {
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
        for stride in [1, 2] {
            let cfg = PoolConfig {
                kind,
                kernel: 3,
                stride,
                padding: 1,
            };
            for dtype in [DType::F32, DType::F64] {
                let x = randn(&[3, 4, 7, 9], dtype, &Device::Cpu)?;
                let what = format!("pool {cfg:?} {dtype:?}");
                matches_cpu(&[x], |v| pool2d(&v[0], cfg), tol(dtype), &what)?;
            }
            let x = randn(&[2, 2, 7, 9], DType::F64, &gpu())?;
            grad_check(&[x], |v| pool2d(&v[0], cfg), &format!("gpu pool {cfg:?}"))?;
        }
    }
    Ok(())
}

#[test]
fn batch_norm_matches_cpu_and_finite_differences() -> Result<()> {
    for affine in [false, true] {
        for dtype in [DType::F32, DType::F64] {
            let x = randn(&[3, 5, 7, 9], dtype, &Device::Cpu)?;
            let gamma = randn(&[5], dtype, &Device::Cpu)?;
            let beta = randn(&[5], dtype, &Device::Cpu)?;
            let what = format!("batch norm affine={affine} {dtype:?}");
            matches_cpu(
                &[x, gamma, beta],
                |v| {
                    let affine = affine.then_some((&v[1], &v[2]));
                    Ok(batch_norm_train(&v[0], affine, 1e-5)?.0)
                },
                tol(dtype),
                &what,
            )?;
        }
        let x = randn(&[3, 2, 5, 7], DType::F64, &gpu())?;
        let gamma = randn(&[2], DType::F64, &gpu())?;
        let beta = randn(&[2], DType::F64, &gpu())?;
        grad_check(
            &[x, gamma, beta],
            |v| Ok(batch_norm_train(&v[0], affine.then_some((&v[1], &v[2])), 1e-5)?.0),
            &format!("gpu batch norm affine={affine}"),
        )?;
    }
    // The statistics the module's running averages use agree too.
    let x = randn(&[3, 5, 7, 9], DType::F64, &Device::Cpu)?;
    let (_, cpu) = batch_norm_train(&x, None, 1e-5)?;
    let (_, gpu_stats) = batch_norm_train(&x.to_device(&gpu())?, None, 1e-5)?;
    for (a, b) in cpu.mean.iter().zip(&gpu_stats.mean) {
        assert!((a - b).abs() < 1e-12, "mean {a} vs {b}");
    }
    for (a, b) in cpu.var.iter().zip(&gpu_stats.var) {
        assert!((a - b).abs() < 1e-12, "var {a} vs {b}");
    }
    Ok(())
}

#[test]
fn weighted_sum_matches_cpu_and_finite_differences() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let o = randn(&[7, 3, 2, 5, 3], dtype, &Device::Cpu)?;
        let w = randn(&[7], dtype, &Device::Cpu)?;
        matches_cpu(
            &[o, w],
            |v| weighted_sum(&v[0], &v[1]),
            tol(dtype),
            &format!("weighted sum {dtype:?}"),
        )?;
    }
    let o = randn(&[4, 2, 3, 5, 3], DType::F64, &gpu())?;
    let w = randn(&[4], DType::F64, &gpu())?;
    grad_check(&[o, w], |v| weighted_sum(&v[0], &v[1]), "gpu weighted sum")
}

#[test]
fn a_whole_mixed_op_runs_on_the_gpu_as_on_the_cpu() -> Result<()> {
    // Every DARTS primitive through the fused kernels (and candle's own CUDA ops for the
    // 1x1 convolutions), forward and backward, stride 1 and 2.
    use candle_nn::{VarBuilder, VarMap};
    for stride in [1, 2] {
        let mut outs = Vec::new();
        for dev in [Device::Cpu, gpu()] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
            let op = mixed_op(6, stride, vb)?;
            // Same weights on both devices: overwrite the random initialisation.
            let mut names: Vec<String> = varmap
                .data()
                .lock()
                .expect("lock")
                .keys()
                .cloned()
                .collect();
            names.sort();
            for name in &names {
                let var = varmap.data().lock().expect("lock")[name].clone();
                var.set(&randn(var.dims(), DType::F64, &Device::Cpu)?.to_device(&dev)?)?;
            }
            let x = randn(&[2, 6, 8, 8], DType::F64, &Device::Cpu)?.to_device(&dev)?;
            let alpha = Var::from_tensor(
                &randn(&[op.ops().len()], DType::F64, &Device::Cpu)?.to_device(&dev)?,
            )?;
            let weights = candle_nn::ops::softmax(alpha.as_tensor(), 0)?;
            let y = op.forward_weighted(&x, &weights, true)?;
            let grads = y.sqr()?.sum_all()?.backward()?;
            let ga = grads.get(alpha.as_tensor()).expect("alpha has a gradient");
            outs.push((y.to_device(&Device::Cpu)?, ga.to_device(&Device::Cpu)?));
        }
        assert_close(
            &outs[1].0,
            &outs[0].0,
            1e-9,
            1e-9,
            &format!("mixed op stride {stride}"),
        )?;
        assert_close(
            &outs[1].1,
            &outs[0].1,
            1e-9,
            1e-9,
            &format!("alpha grad stride {stride}"),
        )?;
    }
    Ok(())
}

#[test]
fn rnn_node_matches_cpu_and_finite_differences() -> Result<()> {
    let (n, b, h) = (3, 5, 7);
    for dtype in [DType::F32, DType::F64] {
        let states = randn(&[n, b, h], dtype, &Device::Cpu)?;
        let ch = randn(&[n, b, 2 * h], dtype, &Device::Cpu)?;
        let probs = candle_nn::ops::softmax(&randn(&[n, 5], dtype, &Device::Cpu)?, 1)?;
        matches_cpu(
            &[states, ch, probs],
            |v| rnn_node(&v[0], &v[1], &v[2]),
            tol(dtype),
            &format!("rnn_node {dtype:?}"),
        )?;
    }
    // One-hot rows, as a derived cell passes: skipped states still get weight gradients.
    let mut one_hot = vec![0f64; n * 5];
    for j in 0..n {
        one_hot[j * 5 + (j + 1) % 5] = 1.0;
    }
    let states = randn(&[n, 2, 4], DType::F64, &gpu())?;
    let ch = randn(&[n, 2, 8], DType::F64, &gpu())?;
    let probs = Tensor::from_vec(one_hot, (n, 5), &gpu())?;
    grad_check(
        &[states, ch, probs],
        |v| rnn_node(&v[0], &v[1], &v[2]),
        "gpu rnn_node",
    )
}

#[test]
fn softmax_cross_entropy_matches_cpu_and_finite_differences() -> Result<()> {
    let (n, v) = (37, 301);
    let targets: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % v) as u32).collect();
    for dtype in [DType::F32, DType::F64] {
        let z = (randn(&[n, v], dtype, &Device::Cpu)? * 3.0)?;
        let b = randn(&[v], dtype, &Device::Cpu)?;
        let t = targets.clone();
        matches_cpu(
            &[z, b],
            |x| {
                let t = Tensor::from_vec(t.clone(), n, x[0].device())?;
                softmax_cross_entropy(&x[0], &x[1], &t)
            },
            tol(dtype),
            &format!("softmax cross-entropy {dtype:?}"),
        )?;
    }
    let (n, v) = (5, 7);
    let z = randn(&[n, v], DType::F64, &gpu())?;
    let b = randn(&[v], DType::F64, &gpu())?;
    let t = Tensor::from_vec(vec![0u32, 6, 3, 3, 1], n, &gpu())?;
    grad_check(
        &[z, b],
        |x| softmax_cross_entropy(&x[0], &x[1], &t),
        "gpu softmax cross-entropy",
    )?;
    // Targets outside the vocabulary are an error, not an out-of-bounds read.
    let z = randn(&[2, 3], DType::F32, &gpu())?;
    let b = randn(&[3], DType::F32, &gpu())?;
    let t = Tensor::from_vec(vec![0u32, 3], 2, &gpu())?;
    let err = softmax_cross_entropy(&z, &b, &t)
        .expect_err("target 3 of 3")
        .to_string();
    assert!(
        err.contains("target 1 is 3, outside the vocabulary of 3"),
        "{err}"
    );
    Ok(())
}
