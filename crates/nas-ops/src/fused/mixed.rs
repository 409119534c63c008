//! The search network's MixedOp (DARTS paper eq. 2) as one graph node on the CPU, in
//! training mode: `y = sum_k w_k op_k(x)` over max and average pooling with BN, the skip
//! connection (identity, or FactorizedReduce at stride 2), the two separable and the two
//! dilated convolutions, all with BN without affine parameters.
//!
//! As separate ops, candle's backward pass gives every op output and the input its own
//! zeroed gradient buffer and an addition per use, and the weighted sum needs the seven
//! outputs copied into one stacked tensor. Here the ops run the same kernels
//! (`separable.rs`, `pool_bn.rs`, `pointwise.rs`, `batch_norm.rs`) and the backward adds
//! each op's input gradient straight into one buffer. Each op's backward is linear in the
//! output gradient, so it runs on `dy` itself and its results are scaled by `w_k`.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, DType, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::fused::params::{BlockParams, FusedBn, ReduceParams};
use crate::fused::pool_bn::{pool_bn_backward, pool_bn_forward, PoolBnState};
use crate::fused::reduce::{reduce_backward, reduce_forward, ReduceGeometry, ReduceState};
use crate::fused::separable::{block_backward, block_forward, BlockGeometry, BlockState};
use crate::kernels::elem::Elem;
use crate::kernels::reduce;
use crate::ops::batch_norm::BatchStats;
use crate::ops::pool::{self, PoolConfig};
use crate::ops::saved::{downcast, lock, tensor_from, Shared};
use crate::ops::shell::custom_op;
use crate::ops::storage::dispatch;

const OP: &str = "mixed_op";

/// The ops of one search MixedOp as the fused kernel takes them: weights, BN modules
/// (for their running statistics) and geometry. Built by `MixedOp` from its modules.
pub(crate) struct MixedParts<'a> {
    pub max: (PoolConfig, &'a dyn FusedBn),
    pub avg: (PoolConfig, &'a dyn FusedBn),
    /// `None` at stride 1 (the identity); FactorizedReduce at stride 2.
    pub reduce: Option<ReduceParams<'a>>,
    /// Separable 3x3, separable 5x5 (two blocks each), dilated 3x3, dilated 5x5.
    pub blocks: [BlockParams<'a>; 6],
}

/// `sum_k weights[k] * op_k(x)`, `weights` `[8]` in DARTS's primitive order (`none`
/// first, contributing nothing); updates every BN's running statistics. `None` when the
/// configuration is not the one this kernel covers (odd sizes at stride 2, BN with affine
/// parameters), for the caller to run the ops one by one.
pub(crate) fn mixed_op_train(
    x: &Tensor,
    weights: &Tensor,
    parts: &MixedParts<'_>,
) -> Result<Option<Tensor>> {
    let Some(plan) = Plan::new(x.dims(), parts)? else {
        return Ok(None);
    };
    let mut tensors = Vec::new();
    if let Some(fr) = parts.reduce {
        tensors.extend(fr.flat()?);
    }
    for b in &parts.blocks {
        tensors.extend([b.dw.flatten_all()?, b.pw.flatten_all()?]);
    }
    let params = Tensor::cat(&tensors, 0)?;
    let saved: Shared = Arc::new(Mutex::new(None));
    let op = MixedOpFused {
        plan: plan.clone(),
        saved: saved.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&params, &weights.contiguous()?, op)?;
    let stats = {
        let guard = lock(&saved, OP)?;
        match y.dtype() {
            DType::F32 => downcast::<State<f32>>(&guard, OP)?.stats(&plan),
            _ => downcast::<State<f64>>(&guard, OP)?.stats(&plan),
        }
    };
    let mut bns = vec![parts.max.1, parts.avg.1];
    bns.extend(parts.reduce.map(|fr| fr.bn));
    bns.extend(parts.blocks.iter().map(|b| b.bn));
    for (bn, s) in bns.into_iter().zip(&stats) {
        bn.update_running_all(std::slice::from_ref(s))?;
    }
    Ok(Some(y))
}

#[derive(Debug, Clone)]
struct Plan {
    max: pool::Geometry,
    avg: pool::Geometry,
    pool_eps: [f64; 2],
    reduce: Option<ReduceGeometry>,
    blocks: [BlockGeometry; 6],
    /// Offsets of each block's `[dw, pw]` in the flat parameters (after the reduce's).
    block_offsets: [usize; 6],
    param_len: usize,
    out_shape: Shape,
}

impl Plan {
    fn new(x: &[usize], parts: &MixedParts<'_>) -> Result<Option<Plan>> {
        let no_affine = |b: &dyn FusedBn| b.affine().is_none();
        if !no_affine(parts.max.1) || !no_affine(parts.avg.1) {
            return Ok(None);
        }
        let max = pool::Geometry::new(x, parts.max.0)?;
        let avg = pool::Geometry::new(x, parts.avg.0)?;
        let mut offset = 0;
        let reduce = match parts.reduce {
            None => None,
            Some(fr) => match ReduceGeometry::new(&fr, x)? {
                Some(g) => {
                    offset = g.param_len();
                    Some(g)
                }
                None => return Ok(None),
            },
        };
        let mut blocks = Vec::with_capacity(6);
        let mut block_offsets = [0; 6];
        let mut input: Vec<usize> = x.to_vec();
        for (i, p) in parts.blocks.iter().enumerate() {
            if !no_affine(p.bn) {
                return Ok(None);
            }
            // Blocks 1 and 3 are the second halves of the separable convolutions: they
            // read the first half's output.
            let block_in = if i == 1 || i == 3 { &input } else { x };
            let g =
                BlockGeometry::new(block_in, p.dw.dims(), p.pw.dims(), p.cfg, false, p.bn.eps())?;
            input = g.out_shape().dims().to_vec();
            block_offsets[i] = offset;
            offset += g.param_len();
            blocks.push(g);
        }
        let blocks: [BlockGeometry; 6] = blocks.try_into().expect("six blocks");
        let out_shape = blocks[0].out_shape();
        let same = |d: &[usize]| d == out_shape.dims();
        let pool_out = |g: &pool::Geometry| [g.n, g.c, g.oh, g.ow];
        let reduce_ok = reduce.is_none_or(|r| same(r.out_shape().dims()));
        let identity_ok = reduce.is_some() || same(x);
        if !(blocks[1..].iter().all(|b| same(b.out_shape().dims()))
            && same(&pool_out(&max))
            && same(&pool_out(&avg))
            && reduce_ok
            && identity_ok)
        {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: format!("every op to output {:?}", out_shape.dims()),
                got: x.to_vec(),
            }
            .into());
        }
        Ok(Some(Plan {
            max,
            avg,
            pool_eps: [parts.max.1.eps(), parts.avg.1.eps()],
            reduce,
            blocks,
            block_offsets,
            param_len: offset,
            out_shape,
        }))
    }

    fn block_params<'a, T>(
        &self,
        params: &'a [T],
        i: usize,
    ) -> crate::fused::separable::Params<'a, T> {
        let start = self.block_offsets[i];
        self.blocks[i].split(&params[start..start + self.blocks[i].param_len()])
    }
}

/// Everything the backward pass needs, for one float type.
struct State<T> {
    params: Vec<T>,
    weights: Vec<T>,
    max: (Vec<T>, PoolBnState<T>),
    avg: (Vec<T>, PoolBnState<T>),
    reduce: Option<(Vec<T>, ReduceState<T>)>,
    /// Each block's output and state.
    blocks: Vec<(Vec<T>, BlockState<T>)>,
}

impl<T: Elem> State<T> {
    /// BN statistics in the order of [`mixed_op_train`]'s BN list.
    fn stats(&self, plan: &Plan) -> Vec<BatchStats> {
        let mut out = vec![self.max.1.stats(&plan.max), self.avg.1.stats(&plan.avg)];
        if let (Some((_, r)), Some(g)) = (&self.reduce, &plan.reduce) {
            out.push(g.stats(r));
        }
        for (g, (_, st)) in plan.blocks.iter().zip(&self.blocks) {
            out.push(g.stats(st));
        }
        out
    }

    /// The op outputs in weight order 1..8 (the identity's is `x`).
    fn outputs<'a>(&'a self, x: &'a [T]) -> [&'a [T]; 7] {
        let skip = self.reduce.as_ref().map_or(x, |(out, _)| &out[..]);
        [
            &self.max.0,
            &self.avg.0,
            skip,
            &self.blocks[1].0,
            &self.blocks[3].0,
            &self.blocks[4].0,
            &self.blocks[5].0,
        ]
    }
}

fn forward<T: Elem>(plan: &Plan, x: &[T], params: &[T], weights: &[T]) -> (Vec<T>, State<T>) {
    let max = pool_bn_forward(&plan.max, plan.pool_eps[0], x);
    let avg = pool_bn_forward(&plan.avg, plan.pool_eps[1], x);
    let reduce = plan
        .reduce
        .as_ref()
        .map(|g| reduce_forward(g, x, &params[..g.param_len()]));
    let mut blocks: Vec<(Vec<T>, BlockState<T>)> = Vec::with_capacity(6);
    for i in 0..6 {
        let p = plan.block_params(params, i);
        let input = if i == 1 || i == 3 {
            &blocks[i - 1].0[..]
        } else {
            x
        };
        blocks.push(block_forward(&plan.blocks[i], input, &p));
    }
    let state = State {
        params: params.to_vec(),
        weights: weights.to_vec(),
        max,
        avg,
        reduce,
        blocks,
    };
    let outputs = state.outputs(x);
    let len = plan.out_shape.elem_count();
    let mut y = vec![T::zero(); len];
    y.par_chunks_mut(1 << 14)
        .enumerate()
        .for_each(|(chunk, yc)| {
            let range = chunk * (1 << 14)..chunk * (1 << 14) + yc.len();
            for (o, &w) in outputs.iter().zip(&weights[1..]) {
                for (yv, &ov) in yc.iter_mut().zip(&o[range.clone()]) {
                    *yv = w.mul_add(ov, *yv);
                }
            }
        });
    (y, state)
}

/// `(dx, dparams, dweights)`.
fn backward<T: Elem>(plan: &Plan, st: &State<T>, dy: &[T], x: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
    let w = &st.weights;
    let mut dweights = vec![T::zero(); 8];
    for (k, o) in st.outputs(x).iter().enumerate() {
        dweights[k + 1] = T::of_f64(reduce::dot_par(dy, o));
    }
    let mut dparams = vec![T::zero(); plan.param_len];
    let mut dx = pool_bn_backward(&plan.max, &st.max.1, dy, &st.max.0);
    dx.par_iter_mut().for_each(|v| *v = *v * w[1]);
    reduce::axpy_par(
        &mut dx,
        w[2],
        &pool_bn_backward(&plan.avg, &st.avg.1, dy, &st.avg.0),
    );
    match (&plan.reduce, &st.reduce) {
        (Some(g), Some((out, r))) => {
            let (d, dw) = reduce_backward(g, r, &st.params[..g.param_len()], dy, x, out);
            reduce::axpy_par(&mut dx, w[3], &d);
            for (dst, v) in dparams.iter_mut().zip(dw) {
                *dst = v * w[3];
            }
        }
        _ => reduce::axpy_par(&mut dx, w[3], dy),
    }
    // Separable convolutions: the second block's input gradient feeds the first's.
    // (Weights 4..8: sep 3x3, sep 5x5, dil 3x3, dil 5x5; blocks 0-1, 2-3, 4, 5.)
    let chains: [(&[usize], usize); 4] = [(&[1, 0], 4), (&[3, 2], 5), (&[4], 6), (&[5], 7)];
    for (chain, k) in chains {
        let mut d = Cow::Borrowed(dy);
        for &i in chain {
            let p = plan.block_params(&st.params, i);
            let input = if i == 1 || i == 3 {
                &st.blocks[i - 1].0[..]
            } else {
                x
            };
            let (d_in, dp) = block_backward(
                &plan.blocks[i],
                &st.blocks[i].1,
                &p,
                &d,
                input,
                &st.blocks[i].0,
            );
            let off = plan.block_offsets[i];
            for (dst, v) in dparams[off..off + dp.len()].iter_mut().zip(dp) {
                *dst = v * w[k];
            }
            d = Cow::Owned(d_in);
        }
        reduce::axpy_par(&mut dx, w[k], &d);
    }
    (dx, dparams, dweights)
}

struct MixedOpFused {
    plan: Plan,
    saved: Shared,
}

custom_op! {
    MixedOpFused: CustomOp3 = OP;
    cpu(&self, s1, l1, s2, l2, s3, l3) {
        dispatch!(OP, [(s1, l1) => x, (s2, l2) => params, (s3, l3) => weights], |T| {
            if weights.len() != 8 || params.len() != self.plan.param_len {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    expected: format!("8 weights and {} parameters", self.plan.param_len),
                    got: vec![weights.len(), params.len()],
                }
                .into());
            }
            let (y, state) = forward::<T>(&self.plan, x, params, weights);
            *lock(&self.saved, OP)? = Some(Box::new(state));
            Ok((T::storage(y), self.plan.out_shape.clone()))
        })
    }
    extra {
        fn bwd(
            &self,
            x: &Tensor,
            params: &Tensor,
            weights: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let back = MixedOpBackward {
                plan: self.plan.clone(),
                saved: self.saved.clone(),
                grads: Arc::new(Mutex::new(None)),
            };
            let dx = dy.contiguous()?.apply_op2_no_bwd(x, &back)?;
            let (dparams, dweights) =
                lock(&back.grads, OP)?
                    .take()
                    .ok_or_else(|| Error::Unsupported {
                        op: OP,
                        message: "no gradients after the backward pass".into(),
                    })?;
            Ok((
                Some(dx),
                Some(tensor_from(dparams, params.shape(), OP)?),
                Some(tensor_from(dweights, weights.shape(), OP)?),
            ))
        }
    }
}

/// `(dy, x) -> dx`, the parameters' and weights' gradients left in `grads`.
struct MixedOpBackward {
    plan: Plan,
    saved: Shared,
    grads: Arc<Mutex<Option<(CpuStorage, CpuStorage)>>>,
}

custom_op! {
    MixedOpBackward: CustomOp2 = "mixed_op_backward";
    cpu(&self, s1, l1, s2, l2) {
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => x], |T| {
            let saved = lock(&self.saved, OP)?;
            let st = downcast::<State<T>>(&saved, OP)?;
            let (dx, dparams, dweights) = backward(&self.plan, st, dy, x);
            *lock(&self.grads, OP)? = Some((T::storage(dparams), T::storage(dweights)));
            Ok((T::storage(dx), l2.shape().clone()))
        })
    }
}
