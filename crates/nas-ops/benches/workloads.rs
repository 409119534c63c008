//! Shared benchmark workloads: each op forward and backward at a given shape, in the
//! fused form and, where candle has one, in candle's own plain-tensor form. Used by the
//! criterion bench (`benches/ops.rs`) and the ratio printer (`examples/bench_ops.rs`);
//! `benches/torch_ops.py` runs the same workloads in PyTorch. The recurrent-cell node
//! update (`rnn_node`) runs at the DARTS RNN search shape whatever the image shape.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use nas_ops::{
    batch_norm_train, batch_norm_train_slow, darts_op, depthwise_conv2d, depthwise_conv2d_slow,
    mixed_op, pool2d, pool2d_slow, rnn_node, rnn_node_slow, DepthwiseConfig, OpContext, PoolConfig,
};
use nas_search_space::CnnOp;

/// One benchmark: a name, and a closure running forward + backward once.
pub struct Workload {
    /// `op/variant`, e.g. `depthwise_3x3/fused`.
    pub name: String,
    /// One forward and backward pass.
    pub run: Box<dyn Fn() -> Result<()>>,
}

fn input(shape: &[usize], seed: u64) -> Result<Var> {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu)?)
}

fn backward(y: &Tensor) -> Result<()> {
    let _ = y.sum_all()?.backward()?;
    Ok(())
}

/// The recurrent-cell node update: `n` earlier states, batch, hidden size (DARTS's RNN
/// search: batch 256, 300 hidden units; 4 states is a middle node of the 8-node cell).
const RNN_NODE: (usize, usize, usize) = (4, 256, 300);

/// Every workload at batch `n`, channels `c`, `size x size` images (and `rnn_node` at
/// [`RNN_NODE`]).
pub fn workloads(n: usize, c: usize, size: usize) -> Result<Vec<Workload>> {
    let shape = [n, c, size, size];
    let mut out = Vec::new();
    for (label, k, dilation) in [("depthwise_3x3", 3, 1), ("depthwise_5x5_dil2", 5, 2)] {
        let cfg = DepthwiseConfig {
            stride: 1,
            padding: dilation * (k - 1) / 2,
            dilation,
            relu_input: false,
        };
        for fused in [true, false] {
            let x = input(&shape, 1)?;
            let w = input(&[c, 1, k, k], 2)?;
            out.push(Workload {
                name: format!("{label}/{}", if fused { "fused" } else { "candle" }),
                run: Box::new(move || {
                    let f = if fused {
                        depthwise_conv2d
                    } else {
                        depthwise_conv2d_slow
                    };
                    backward(&f(x.as_tensor(), w.as_tensor(), cfg)?)
                }),
            });
        }
    }
    for (label, max) in [("max_pool_3x3", true), ("avg_pool_3x3", false)] {
        let cfg = PoolConfig::darts(max, 1);
        for fused in [true, false] {
            let x = input(&shape, 3)?;
            out.push(Workload {
                name: format!("{label}/{}", if fused { "fused" } else { "candle" }),
                run: Box::new(move || {
                    let f = if fused { pool2d } else { pool2d_slow };
                    backward(&f(x.as_tensor(), cfg)?)
                }),
            });
        }
    }
    for fused in [true, false] {
        let x = input(&shape, 4)?;
        let gamma = input(&[c], 5)?;
        let beta = input(&[c], 6)?;
        out.push(Workload {
            name: format!("batch_norm/{}", if fused { "fused" } else { "candle" }),
            run: Box::new(move || {
                let affine = Some((gamma.as_tensor(), beta.as_tensor()));
                let y = if fused {
                    batch_norm_train(x.as_tensor(), affine, 1e-5)?.0
                } else {
                    batch_norm_train_slow(x.as_tensor(), affine, 1e-5)?
                };
                backward(&y)
            }),
        });
    }
    for (label, op) in [
        ("sep_conv_3x3", CnnOp::SepConv3x3),
        ("dil_conv_3x3", CnnOp::DilConv3x3),
    ] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let ctx = OpContext {
            channels: c,
            stride: 1,
            affine: false,
            bn_after_pool: true,
        };
        let module = darts_op(op, ctx, vb)?;
        let x = input(&shape, 9)?;
        out.push(Workload {
            name: format!("{label}/fused"),
            run: Box::new(move || backward(&module.forward_t(x.as_tensor(), true)?)),
        });
    }
    let varmap = VarMap::new();
    let op = mixed_op(
        c,
        1,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let x = input(&shape, 7)?;
    let alpha = input(&[8], 8)?;
    out.push(Workload {
        name: "mixed_op/fused".to_string(),
        run: Box::new(move || {
            let w = candle_nn::ops::softmax(alpha.as_tensor(), 0)?;
            backward(&op.forward_weighted(x.as_tensor(), &w, true)?)
        }),
    });
    let (n_states, batch, hidden) = RNN_NODE;
    for fused in [true, false] {
        let states = input(&[n_states, batch, hidden], 10)?;
        let ch = input(&[n_states, batch, 2 * hidden], 11)?;
        let alpha = input(&[n_states, 5], 12)?;
        let probs = Var::from_tensor(&candle_nn::ops::softmax(alpha.as_tensor(), 1)?)?;
        out.push(Workload {
            name: format!("rnn_node/{}", if fused { "fused" } else { "candle" }),
            run: Box::new(move || {
                let f = if fused { rnn_node } else { rnn_node_slow };
                backward(&f(states.as_tensor(), ch.as_tensor(), probs.as_tensor())?)
            }),
        });
    }
    Ok(out)
}
