//! A whole evaluation cell (`Cell` in DARTS's `cnn/model.py`) as one graph node on the
//! CPU, in training mode: both preprocessing ops, every op on every edge, drop path, the
//! node sums and the output concatenation.
//!
//! As separate ops every intermediate tensor of the cell (each preprocessed input, each
//! block output, each node) costs candle's backward pass a zeroed gradient buffer and an
//! addition per use, single-threaded, and the concatenation a copy per state: in the
//! DARTS-V2 training step that bookkeeping was a fifth of the time. Here the ops run the
//! same kernels (`separable.rs`, `factorized_reduce.rs`, `pool.rs`, `batch_norm.rs`) and
//! the backward pass adds each op's input gradient straight into its state's buffer (the
//! first one is moved in, not added). The parameters travel as one flat tensor, whose
//! gradient candle splits back into the variables.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, DType, Shape, Tensor};

use crate::error::{Error, Result};
use crate::fused::params::{BlockParams, ConvBnParams, FusedBn, ReduceParams};
use crate::fused::reduce::{reduce_backward, reduce_forward, ReduceGeometry, ReduceState};
use crate::fused::separable::{block_backward, block_forward, BlockGeometry, BlockState};
use crate::kernels::buffer::par_chunks_new;
use crate::kernels::elem::Elem;
use crate::kernels::reduce;
use crate::ops::batch_norm::BatchStats;
use crate::ops::pointwise::PointwiseConfig;
use crate::ops::pool::{self, PoolConfig};
use crate::ops::saved::{downcast, lock, tensor_from, Shared};
use crate::ops::shell::custom_op;
use crate::ops::storage::dispatch;

const OP: &str = "cell";

/// How a cell preprocesses one of its inputs.
#[derive(Clone, Copy)]
pub(crate) enum InputParams<'a> {
    /// ReLU, 1x1 convolution, BN.
    Conv(ConvBnParams<'a>),
    /// FactorizedReduce (the input before a reduction cell has twice the resolution).
    Reduce(ReduceParams<'a>),
    /// Something this kernel does not cover.
    Other,
}

/// One op of a cell.
#[derive(Clone, Copy)]
pub(crate) enum OpParams<'a> {
    Identity,
    /// A pool without BN.
    Pool(PoolConfig),
    Reduce(ReduceParams<'a>),
    /// A dilated convolution: one block.
    Dil(BlockParams<'a>),
    /// A separable convolution: two blocks.
    Sep([BlockParams<'a>; 2]),
    /// Something this kernel does not cover.
    Other,
}

/// A cell as [`cell_train`] takes it.
pub(crate) struct CellParams<'a> {
    /// `preprocess0`, `preprocess1`.
    pub pre: [InputParams<'a>; 2],
    /// The ops in genotype order, `per_node` for each intermediate node in turn.
    pub ops: Vec<OpParams<'a>>,
    /// Each op's input state: 0 and 1 the preprocessed inputs, `2 + i` node `i`.
    pub inputs: &'a [usize],
    /// Ops per intermediate node.
    pub per_node: usize,
    /// The states concatenated (over channels) into the output.
    pub concat: &'a [usize],
}

/// The training-mode output of the cell `spec` on inputs `s0`, `s1`: each op's output
/// multiplied per sample by its drop-path `scales` (`None`: kept as is, as DARTS does for
/// identities), summed per node, the `concat` states concatenated. Updates every BN's
/// running statistics. `None` when the cell holds an op this kernel does not cover
/// (`none`, `conv_7x1_1x7`, pools followed by BN, convolutions other than 1x1 in the
/// preprocessing, odd sizes into a FactorizedReduce: [`OpParams::Other`]), or the tensors are not on the CPU:
/// the caller then runs the ops one by one.
pub(crate) fn cell_train(
    s0: &Tensor,
    s1: &Tensor,
    spec: &CellParams<'_>,
    scales: &[Option<Vec<f64>>],
) -> Result<Option<Tensor>> {
    if !s0.device().is_cpu() || !s1.device().is_cpu() {
        return Ok(None);
    }
    let Some((plan, params, bns)) = Plan::new(s0.dims(), s1.dims(), spec)? else {
        return Ok(None);
    };
    if scales.len() != spec.ops.len()
        || scales.iter().flatten().any(|s| s.len() != plan.nodes[0][0])
    {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: format!(
                "one entry per op ({}), each None or one scale per sample ({})",
                spec.ops.len(),
                plan.nodes[0][0]
            ),
            got: scales
                .iter()
                .map(|s| s.as_ref().map_or(0, Vec::len))
                .collect(),
        }
        .into());
    }
    let params = Tensor::cat(&params, 0)?;
    let (y, stats) = apply(s0, s1, &params, plan, scales.to_vec())?;
    for (bn, s) in bns.into_iter().zip(&stats) {
        bn.update_running_all(std::slice::from_ref(s))?;
    }
    Ok(Some(y))
}

/// The fused op on `(s0, s1, params)` for a built plan; the output and every BN's batch
/// statistics in plan order.
fn apply(
    s0: &Tensor,
    s1: &Tensor,
    params: &Tensor,
    plan: Plan,
    scales: Vec<Option<Vec<f64>>>,
) -> Result<(Tensor, Vec<BatchStats>)> {
    let saved: Shared = Arc::new(Mutex::new(None));
    let plan = Arc::new(plan);
    let op = CellFused {
        plan: plan.clone(),
        scales: Arc::new(scales),
        saved: saved.clone(),
    };
    let y = s0
        .contiguous()?
        .apply_op3(&s1.contiguous()?, &params.contiguous()?, op)?;
    let guard = lock(&saved, OP)?;
    let stats = match y.dtype() {
        DType::F32 => downcast::<State<f32>>(&guard, OP)?.stats(&plan),
        _ => downcast::<State<f64>>(&guard, OP)?.stats(&plan),
    };
    Ok((y, stats))
}

/// A stage with parameters and a BN: a ReLU-(depthwise-)pointwise-BN block or a
/// FactorizedReduce; `offset` locates its parameters in the flat tensor.
#[derive(Debug, Clone)]
enum Stage {
    Block(BlockGeometry, usize),
    Reduce(ReduceGeometry, usize),
}

impl Stage {
    fn out_dims(&self) -> Vec<usize> {
        match self {
            Stage::Block(g, _) => g.out_shape().dims().to_vec(),
            Stage::Reduce(g, _) => g.out_shape().dims().to_vec(),
        }
    }

    fn params<'a, T>(&self, all: &'a [T]) -> &'a [T] {
        match self {
            Stage::Block(g, o) => &all[*o..o + g.param_len()],
            Stage::Reduce(g, o) => &all[*o..o + g.param_len()],
        }
    }
}

#[derive(Debug, Clone)]
enum OpPlan {
    Identity,
    Pool(pool::Geometry),
    /// Stages applied one after the other (two for a separable convolution).
    Chain(Vec<Stage>),
}

#[derive(Debug, Clone)]
struct Plan {
    pre: [Stage; 2],
    ops: Vec<OpPlan>,
    inputs: Vec<usize>,
    per_node: usize,
    concat: Vec<usize>,
    /// The dims of every state (inputs after preprocessing, then the nodes).
    nodes: Vec<Vec<usize>>,
    param_len: usize,
    out_shape: Shape,
}

/// Collects the flat parameters and BN modules in plan order.
struct Builder<'a> {
    params: Vec<Tensor>,
    bns: Vec<&'a dyn FusedBn>,
    offset: usize,
}

impl<'a> Builder<'a> {
    fn block(&mut self, x: &[usize], b: BlockParams<'a>) -> Result<Stage> {
        let affine = b.bn.affine();
        let g = BlockGeometry::new(
            x,
            b.dw.dims(),
            b.pw.dims(),
            b.cfg,
            affine.is_some(),
            b.bn.eps(),
        )?;
        self.params
            .extend([b.dw.flatten_all()?, b.pw.flatten_all()?]);
        self.finish(Stage::Block(g, self.offset), g.param_len(), b.bn)
    }

    /// ReLU-1x1-BN.
    fn conv(&mut self, x: &[usize], op: ConvBnParams<'a>) -> Result<Stage> {
        let cfg = PointwiseConfig {
            relu_input: true,
            ..Default::default()
        };
        let affine = op.bn.affine().is_some();
        let g = BlockGeometry::pointwise(x, op.weight.dims(), cfg, affine, op.bn.eps())?;
        self.params.push(op.weight.flatten_all()?);
        self.finish(Stage::Block(g, self.offset), g.param_len(), op.bn)
    }

    /// `None` for odd sizes.
    fn reduce(&mut self, x: &[usize], fr: ReduceParams<'a>) -> Result<Option<Stage>> {
        let Some(g) = ReduceGeometry::new(&fr, x)? else {
            return Ok(None);
        };
        self.params.extend(fr.flat()?);
        self.finish(Stage::Reduce(g, self.offset), g.param_len(), fr.bn)
            .map(Some)
    }

    fn input(&mut self, x: &[usize], input: InputParams<'a>) -> Result<Option<Stage>> {
        match input {
            InputParams::Conv(op) => self.conv(x, op).map(Some),
            InputParams::Reduce(fr) => self.reduce(x, fr),
            InputParams::Other => Ok(None),
        }
    }

    fn finish(&mut self, stage: Stage, len: usize, bn: &'a dyn FusedBn) -> Result<Stage> {
        // Gamma and beta follow the weights in the flat order.
        if let (Stage::Block(..), Some((gamma, beta))) = (&stage, bn.affine()) {
            self.params.extend([gamma.clone(), beta.clone()]);
        }
        self.bns.push(bn);
        self.offset += len;
        Ok(stage)
    }

    /// The op's plan on an input of dims `x`; `None` when not covered.
    fn op(&mut self, x: &[usize], op: OpParams<'a>) -> Result<Option<OpPlan>> {
        Ok(Some(match op {
            OpParams::Identity => OpPlan::Identity,
            OpParams::Pool(cfg) => OpPlan::Pool(pool::Geometry::new(x, cfg)?),
            OpParams::Reduce(fr) => match self.reduce(x, fr)? {
                Some(stage) => OpPlan::Chain(vec![stage]),
                None => return Ok(None),
            },
            OpParams::Dil(b) => OpPlan::Chain(vec![self.block(x, b)?]),
            OpParams::Sep([first, second]) => {
                let a = self.block(x, first)?;
                let b = self.block(&a.out_dims(), second)?;
                OpPlan::Chain(vec![a, b])
            }
            OpParams::Other => return Ok(None),
        }))
    }
}

impl Plan {
    /// The plan, the flat parameters and the BN modules (in the order of the batch
    /// statistics the forward pass returns); `None` when the cell is not covered.
    #[allow(clippy::type_complexity)]
    fn new<'a>(
        s0: &[usize],
        s1: &[usize],
        spec: &CellParams<'a>,
    ) -> Result<Option<(Plan, Vec<Tensor>, Vec<&'a dyn FusedBn>)>> {
        let mut b = Builder {
            params: Vec::new(),
            bns: Vec::new(),
            offset: 0,
        };
        let (Some(p0), Some(p1)) = (b.input(s0, spec.pre[0])?, b.input(s1, spec.pre[1])?) else {
            return Ok(None);
        };
        let mut nodes = vec![p0.out_dims(), p1.out_dims()];
        if spec.per_node == 0
            || spec.ops.len() != spec.inputs.len()
            || !spec.ops.len().is_multiple_of(spec.per_node)
        {
            return Err(mismatch(format!(
                "{} inputs for {} ops, a positive multiple of {} per node",
                spec.inputs.len(),
                spec.ops.len(),
                spec.per_node
            )));
        }
        let mut ops = Vec::with_capacity(spec.ops.len());
        for (node, (op_chunk, in_chunk)) in spec
            .ops
            .chunks(spec.per_node)
            .zip(spec.inputs.chunks(spec.per_node))
            .enumerate()
        {
            let mut out: Option<Vec<usize>> = None;
            for (op, &input) in op_chunk.iter().zip(in_chunk) {
                let Some(x) = nodes.get(input).cloned() else {
                    return Err(mismatch(format!(
                        "node {node}'s inputs among the {} states before it",
                        nodes.len()
                    )));
                };
                let Some(plan) = b.op(&x, *op)? else {
                    return Ok(None);
                };
                let dims = match &plan {
                    OpPlan::Identity => x,
                    OpPlan::Pool(g) => vec![g.n, g.c, g.oh, g.ow],
                    OpPlan::Chain(stages) => stages[stages.len() - 1].out_dims(),
                };
                if out.as_ref().is_some_and(|o| *o != dims) {
                    return Err(mismatch(format!(
                        "node {node}'s ops to agree on their output shape, {out:?} and {dims:?}"
                    )));
                }
                out = Some(dims);
                ops.push(plan);
            }
            nodes.push(out.expect("per_node is positive"));
        }
        let first = spec
            .concat
            .first()
            .and_then(|&i| nodes.get(i))
            .ok_or_else(|| mismatch("a non-empty concat of existing states".into()))?
            .clone();
        if spec.concat.iter().any(|&i| {
            nodes
                .get(i)
                .is_none_or(|d| d[0] != first[0] || d[2..] != first[2..])
        }) {
            return Err(mismatch(format!(
                "concatenated states {:?} of one batch and size",
                spec.concat
            )));
        }
        let channels = spec.concat.iter().map(|&i| nodes[i][1]).sum::<usize>();
        let out_shape = Shape::from((first[0], channels, first[2], first[3]));
        let plan = Plan {
            pre: [p0, p1],
            ops,
            inputs: spec.inputs.to_vec(),
            per_node: spec.per_node,
            concat: spec.concat.to_vec(),
            nodes,
            param_len: b.offset,
            out_shape,
        };
        Ok(Some((plan, b.params, b.bns)))
    }

    fn stages(&self) -> impl Iterator<Item = &Stage> {
        self.pre
            .iter()
            .chain(self.ops.iter().flat_map(|op| match op {
                OpPlan::Chain(stages) => &stages[..],
                _ => &[],
            }))
    }
}

fn mismatch(expected: String) -> candle_core::Error {
    Error::ShapeMismatch {
        op: OP,
        expected,
        got: Vec::new(),
    }
    .into()
}

enum StageState<T> {
    Block(BlockState<T>),
    Reduce(ReduceState<T>),
}

fn stage_forward<T: Elem>(stage: &Stage, x: &[T], all: &[T]) -> (Vec<T>, StageState<T>) {
    let p = stage.params(all);
    match stage {
        Stage::Block(g, _) => {
            let (y, st) = block_forward(g, x, &g.split(p));
            (y, StageState::Block(st))
        }
        Stage::Reduce(g, _) => {
            let (y, st) = reduce_forward(g, x, p);
            (y, StageState::Reduce(st))
        }
    }
}

/// The input gradient; the parameters' gradients written into `dparams` (all of them).
fn stage_backward<T: Elem>(
    stage: &Stage,
    st: &StageState<T>,
    all: &[T],
    (dy, x, y): (&[T], &[T], &[T]),
    dparams: &mut [T],
) -> Vec<T> {
    let p = stage.params(all);
    let (dx, dp, offset) = match (stage, st) {
        (Stage::Block(g, o), StageState::Block(s)) => {
            let (dx, dp) = block_backward(g, s, &g.split(p), dy, x, y);
            (dx, dp, *o)
        }
        (Stage::Reduce(g, o), StageState::Reduce(s)) => {
            let (dx, dp) = reduce_backward(g, s, p, dy, x, y);
            (dx, dp, *o)
        }
        _ => unreachable!("a stage's state comes from its own forward pass"),
    };
    dparams[offset..offset + dp.len()].copy_from_slice(&dp);
    dx
}

/// What an op's forward pass leaves.
enum OpState<T> {
    Identity,
    Pool(Vec<T>, Option<Vec<u32>>),
    Chain(Vec<(Vec<T>, StageState<T>)>),
}

/// Everything the backward pass needs, for one float type.
struct State<T> {
    params: Vec<T>,
    /// The preprocessed inputs (with their stages' states), then every node.
    states: Vec<Vec<T>>,
    pre: [StageState<T>; 2],
    ops: Vec<OpState<T>>,
}

impl<T: Elem> State<T> {
    fn stats(&self, plan: &Plan) -> Vec<BatchStats> {
        let states = self
            .pre
            .iter()
            .chain(self.ops.iter().flat_map(|op| match op {
                OpState::Chain(v) => v.iter().map(|(_, s)| s).collect::<Vec<_>>(),
                _ => Vec::new(),
            }));
        plan.stages()
            .zip(states)
            .map(|(stage, st)| match (stage, st) {
                (Stage::Block(g, _), StageState::Block(s)) => g.stats(s),
                (Stage::Reduce(g, _), StageState::Reduce(s)) => g.stats(s),
                _ => unreachable!("a stage's state comes from its own forward pass"),
            })
            .collect()
    }

    /// Op `k`'s output.
    fn output<'a>(&'a self, plan: &Plan, k: usize) -> &'a [T] {
        match &self.ops[k] {
            OpState::Identity => &self.states[plan.inputs[k]],
            OpState::Pool(y, _) => y,
            OpState::Chain(v) => &v[v.len() - 1].0,
        }
    }
}

fn scales_as<T: Elem>(scales: &Option<Vec<f64>>) -> Option<Vec<T>> {
    scales
        .as_ref()
        .map(|s| s.iter().map(|&v| T::of_f64(v)).collect())
}

/// `sum_k scale_k[n] * x_k[n]` per image `n` (`image` elements each).
fn scaled_sum<T: Elem>(terms: &[(&[T], Option<Vec<T>>)], image: usize) -> Vec<T> {
    par_chunks_new(terms[0].0.len(), image, |n, yi| {
        for (x, s) in terms {
            let s = s.as_ref().map_or(T::one(), |s| s[n]);
            reduce::axpy(yi, s, &x[n * image..(n + 1) * image]);
        }
    })
}

fn forward<T: Elem>(
    plan: &Plan,
    s0: &[T],
    s1: &[T],
    params: &[T],
    scales: &[Option<Vec<f64>>],
) -> (Vec<T>, State<T>) {
    let (p0, st0) = stage_forward(&plan.pre[0], s0, params);
    let (p1, st1) = stage_forward(&plan.pre[1], s1, params);
    let mut state = State {
        params: params.to_vec(),
        states: vec![p0, p1],
        pre: [st0, st1],
        ops: Vec::with_capacity(plan.ops.len()),
    };
    for node in 0..plan.ops.len() / plan.per_node {
        let ks = node * plan.per_node..(node + 1) * plan.per_node;
        for k in ks.clone() {
            let x = &state.states[plan.inputs[k]];
            let op = match &plan.ops[k] {
                OpPlan::Identity => OpState::Identity,
                OpPlan::Pool(g) => {
                    let (y, arg) = pool::forward(g, x);
                    OpState::Pool(y, arg)
                }
                OpPlan::Chain(stages) => {
                    let mut outs: Vec<(Vec<T>, StageState<T>)> = Vec::with_capacity(stages.len());
                    for stage in stages {
                        let input = outs.last().map_or(&x[..], |(y, _)| &y[..]);
                        let out = stage_forward(stage, input, params);
                        outs.push(out);
                    }
                    OpState::Chain(outs)
                }
            };
            state.ops.push(op);
        }
        let dims = &plan.nodes[2 + node];
        let image = dims[1..].iter().product();
        let terms: Vec<(&[T], Option<Vec<T>>)> = ks
            .map(|k| (state.output(plan, k), scales_as(&scales[k])))
            .collect();
        let y = scaled_sum(&terms, image);
        state.states.push(y);
    }
    let y = concat(plan, &state.states);
    (y, state)
}

/// The `concat` states side by side over channels, image by image.
fn concat<T: Elem>(plan: &Plan, states: &[Vec<T>]) -> Vec<T> {
    let n = plan.out_shape.dims()[0];
    let image = plan.out_shape.elem_count() / n;
    par_chunks_new(n * image, image, |img, yi| {
        let mut at = 0;
        for &s in &plan.concat {
            let len = states[s].len() / n;
            yi[at..at + len].copy_from_slice(&states[s][img * len..(img + 1) * len]);
            at += len;
        }
    })
}

/// `x` with image `i` multiplied by `s[i]`.
fn scale_images<T: Elem>(x: &[T], s: &[T]) -> Vec<T> {
    let image = x.len() / s.len();
    par_chunks_new(x.len(), image, |i, di| {
        for (d, &v) in di.iter_mut().zip(&x[i * image..(i + 1) * image]) {
            *d = v * s[i];
        }
    })
}

/// Adds `d` into the gradient `slot` (moved in if it is the first).
fn accumulate<T: Elem>(slot: &mut Option<Vec<T>>, d: Cow<'_, [T]>) {
    match slot {
        Some(acc) => reduce::axpy_par(acc, T::one(), &d),
        None => *slot = Some(d.into_owned()),
    }
}

/// `(ds0, ds1, dparams)`.
// `k` indexes the scales, inputs, plans and states of the ops alike.
#[allow(clippy::needless_range_loop)]
fn backward<T: Elem>(
    plan: &Plan,
    st: &State<T>,
    scales: &[Option<Vec<f64>>],
    dy: &[T],
    (s0, s1): (&[T], &[T]),
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let n = plan.out_shape.dims()[0];
    let mut grads: Vec<Option<Vec<T>>> = vec![None; st.states.len()];
    // The output gradient split back into the concatenated states.
    let out_image = dy.len() / n;
    let mut at = 0;
    for &s in &plan.concat {
        let len = st.states[s].len() / n;
        let d = par_chunks_new(st.states[s].len(), len, |img, di| {
            di.copy_from_slice(&dy[img * out_image + at..img * out_image + at + len]);
        });
        at += len;
        accumulate(&mut grads[s], Cow::Owned(d));
    }
    let mut dparams = vec![T::zero(); plan.param_len];
    for node in (0..plan.ops.len() / plan.per_node).rev() {
        let Some(d_node) = grads[2 + node].take() else {
            continue;
        };
        for k in node * plan.per_node..(node + 1) * plan.per_node {
            let d_out: Cow<[T]> = match scales_as::<T>(&scales[k]) {
                Some(s) => Cow::Owned(scale_images(&d_node, &s)),
                None => Cow::Borrowed(&d_node),
            };
            let input = plan.inputs[k];
            let x = &st.states[input];
            let d_in: Cow<[T]> = match (&plan.ops[k], &st.ops[k]) {
                (OpPlan::Identity, _) => d_out,
                (OpPlan::Pool(g), OpState::Pool(_, arg)) => Cow::Owned(match arg {
                    Some(arg) => pool::max_backward(g, &d_out, arg),
                    None => pool::avg_backward(g, &d_out),
                }),
                (OpPlan::Chain(stages), OpState::Chain(outs)) => {
                    let mut d = d_out;
                    for (i, stage) in stages.iter().enumerate().rev() {
                        let input = if i == 0 { &x[..] } else { &outs[i - 1].0[..] };
                        let (y, s) = &outs[i];
                        let dx =
                            stage_backward(stage, s, &st.params, (&d[..], input, y), &mut dparams);
                        d = Cow::Owned(dx);
                    }
                    d
                }
                _ => unreachable!("an op's state comes from its own forward pass"),
            };
            accumulate(&mut grads[input], d_in);
        }
    }
    let mut input_grad = |i: usize, x: &[T]| {
        let d = grads[i]
            .take()
            .unwrap_or_else(|| vec![T::zero(); st.states[i].len()]);
        stage_backward(
            &plan.pre[i],
            &st.pre[i],
            &st.params,
            (&d, x, &st.states[i]),
            &mut dparams,
        )
    };
    let ds0 = input_grad(0, s0);
    let ds1 = input_grad(1, s1);
    (ds0, ds1, dparams)
}

struct CellFused {
    plan: Arc<Plan>,
    scales: Arc<Vec<Option<Vec<f64>>>>,
    saved: Shared,
}

custom_op! {
    CellFused: CustomOp3 = OP;
    cpu(&self, a, la, b, lb, c, lc) {
        dispatch!(OP, [(a, la) => s0, (b, lb) => s1, (c, lc) => params], |T| {
            if params.len() != self.plan.param_len {
                return Err(mismatch(format!("{} parameters, got {}", self.plan.param_len, params.len())));
            }
            let (y, state) = forward::<T>(&self.plan, s0, s1, params, &self.scales);
            *lock(&self.saved, OP)? = Some(Box::new(state));
            Ok((T::storage(y), self.plan.out_shape.clone()))
        })
    }
    extra {
        fn bwd(
            &self,
            s0: &Tensor,
            s1: &Tensor,
            params: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let back = CellBackward {
                plan: self.plan.clone(),
                scales: self.scales.clone(),
                saved: self.saved.clone(),
                grads: Arc::new(Mutex::new(None)),
            };
            let ds0 = dy
                .contiguous()?
                .apply_op3_no_bwd(&s0.contiguous()?, &s1.contiguous()?, &back)?;
            let (ds1, dparams) = lock(&back.grads, OP)?
                .take()
                .ok_or_else(|| Error::Unsupported {
                    op: OP,
                    message: "no gradients after the backward pass".into(),
                })?;
            Ok((
                Some(ds0),
                Some(tensor_from(ds1, s1.shape(), OP)?),
                Some(tensor_from(dparams, params.shape(), OP)?),
            ))
        }
    }
}

/// `(dy, s0, s1) -> ds0`, the gradients of `s1` and the parameters left in `grads`.
struct CellBackward {
    plan: Arc<Plan>,
    scales: Arc<Vec<Option<Vec<f64>>>>,
    saved: Shared,
    grads: Arc<Mutex<Option<(CpuStorage, CpuStorage)>>>,
}

custom_op! {
    CellBackward: CustomOp3 = "cell_backward";
    cpu(&self, a, la, b, lb, c, lc) {
        dispatch!(OP, [(a, la) => dy, (b, lb) => s0, (c, lc) => s1], |T| {
            let saved = lock(&self.saved, OP)?;
            let st = downcast::<State<T>>(&saved, OP)?;
            let (ds0, ds1, dparams) = backward(&self.plan, st, &self.scales, dy, (s0, s1));
            *lock(&self.grads, OP)? = Some((T::storage(ds1), T::storage(dparams)));
            Ok((T::storage(ds0), lb.shape().clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::cell::{self as public, CellInput, CellSpec};
    use crate::modules::darts_op::DartsOp;
    use crate::modules::darts_op::{darts_op, OpContext};
    use crate::modules::factorized_reduce::factorized_reduce;
    use crate::modules::factorized_reduce::FactorizedReduce;
    use crate::modules::relu_conv_bn::relu_conv_bn;
    use crate::modules::relu_conv_bn::ReluConvBn;
    use crate::ops::drop_path::drop_path_sum_slow;
    use crate::testing::{assert_close, grad_check, randn};
    use crate::Conv2dConfig;
    use candle_core::{Device, Var};
    use candle_nn::{ModuleT, VarBuilder, VarMap};
    use nas_search_space::CnnOp;

    /// A test cell: its modules and wiring.
    struct Cell {
        pre0: Pre,
        pre1: ReluConvBn,
        ops: Vec<DartsOp>,
        inputs: Vec<usize>,
        concat: Vec<usize>,
    }

    enum Pre {
        Conv(ReluConvBn),
        Reduce(FactorizedReduce),
    }

    impl Cell {
        /// `edges`: `(op, input)` two per node; a reduction cell strides its input edges.
        fn new(
            (cpp, cp, c): (usize, usize, usize),
            reduction_prev: bool,
            reduction: bool,
            edges: &[(CnnOp, usize)],
            concat: Vec<usize>,
            vb: VarBuilder,
        ) -> Result<Cell> {
            let pw = Conv2dConfig::pointwise(1);
            let pre0 = if reduction_prev {
                Pre::Reduce(factorized_reduce(cpp, c, true, vb.pp("preprocess0"))?)
            } else {
                Pre::Conv(relu_conv_bn(cpp, c, pw, true, vb.pp("preprocess0"))?)
            };
            let pre1 = relu_conv_bn(cp, c, pw, true, vb.pp("preprocess1"))?;
            let mut ops = Vec::new();
            for (k, &(op, input)) in edges.iter().enumerate() {
                let ctx = OpContext {
                    channels: c,
                    stride: if reduction && input < 2 { 2 } else { 1 },
                    affine: true,
                    bn_after_pool: false,
                };
                ops.push(darts_op(op, ctx, vb.pp(format!("_ops.{k}")))?);
            }
            Ok(Cell {
                pre0,
                pre1,
                inputs: edges.iter().map(|e| e.1).collect(),
                ops,
                concat,
            })
        }

        fn spec(&self) -> CellSpec<'_> {
            CellSpec {
                pre: [
                    match &self.pre0 {
                        Pre::Conv(op) => CellInput::Conv(op),
                        Pre::Reduce(fr) => CellInput::Reduce(fr),
                    },
                    CellInput::Conv(&self.pre1),
                ],
                ops: &self.ops,
                inputs: &self.inputs,
                per_node: 2,
                concat: &self.concat,
            }
        }

        /// The reference: the ops one by one, drop path and sums by plain tensors.
        fn forward_slow(
            &self,
            s0: &Tensor,
            s1: &Tensor,
            scales: &[Option<Vec<f64>>],
        ) -> Result<Tensor> {
            let p0 = match &self.pre0 {
                Pre::Conv(op) => op.forward_t(s0, true)?,
                Pre::Reduce(fr) => fr.forward_t(s0, true)?,
            };
            let mut states = vec![p0, self.pre1.forward_t(s1, true)?];
            for node in 0..self.ops.len() / 2 {
                let outs: Vec<Tensor> = (2 * node..2 * node + 2)
                    .map(|k| self.ops[k].forward_t(&states[self.inputs[k]], true))
                    .collect::<Result<_>>()?;
                let terms: Vec<(&Tensor, Option<&[f64]>)> = outs
                    .iter()
                    .zip(&scales[2 * node..])
                    .map(|(h, s)| (h, s.as_deref()))
                    .collect();
                states.push(drop_path_sum_slow(&terms)?);
            }
            let out: Vec<&Tensor> = self.concat.iter().map(|&i| &states[i]).collect();
            Tensor::cat(&out, 1)
        }
    }

    fn cells(vb: &VarBuilder) -> Result<Vec<(Cell, [Vec<usize>; 2])>> {
        use CnnOp::*;
        Ok(vec![
            // A normal cell after a reduction: FactorizedReduce on s0, every kind of op.
            (
                Cell::new(
                    (3, 5, 4),
                    true,
                    false,
                    &[
                        (SepConv3x3, 0),
                        (SkipConnect, 1),
                        (DilConv3x3, 2),
                        (AvgPool3x3, 0),
                        (MaxPool3x3, 2),
                        (SepConv5x5, 3),
                    ],
                    vec![2, 3, 4],
                    vb.pp("normal"),
                )?,
                [vec![2, 3, 8, 8], vec![2, 5, 4, 4]],
            ),
            // A reduction cell: FactorizedReduce and strided ops on the inputs.
            (
                Cell::new(
                    (3, 5, 4),
                    false,
                    true,
                    &[
                        (SkipConnect, 0),
                        (MaxPool3x3, 1),
                        (SepConv3x3, 2),
                        (DilConv5x5, 1),
                        (AvgPool3x3, 0),
                        (SkipConnect, 3),
                    ],
                    vec![2, 3, 4],
                    vb.pp("reduce"),
                )?,
                [vec![2, 3, 8, 8], vec![2, 5, 8, 8]],
            ),
        ])
    }

    fn running(varmap: &VarMap) -> Result<Vec<(String, Tensor)>> {
        let data = varmap.data().lock().expect("lock");
        let mut out: Vec<(String, Tensor)> = data
            .iter()
            .filter(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
            .map(|(n, v)| (n.clone(), v.as_tensor().copy()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(n, t)| t.map(|t| (n, t)))
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Output, the gradients of both inputs and every parameter, and the running
    /// statistics all agree with the ops run one by one (f64, drop path on some ops).
    #[test]
    fn matches_the_ops_one_by_one() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        for (cell, [d0, d1]) in cells(&vb)? {
            let s0 = Var::from_tensor(&randn(&d0, DType::F64, &dev)?)?;
            let s1 = Var::from_tensor(&(randn(&d1, DType::F64, &dev)? * 0.7)?)?;
            let scales: Vec<Option<Vec<f64>>> = cell
                .ops
                .iter()
                .enumerate()
                .map(|(k, op)| (!op.is_identity() && k % 2 == 0).then(|| vec![0.0, 1.25]))
                .collect();
            let before = running(&varmap)?;
            let expected = cell.forward_slow(&s0, &s1, &scales)?;
            let after_slow = running(&varmap)?;
            let got = public::cell_train(&s0, &s1, &cell.spec(), &scales)?.expect("covered");
            let after_fused = running(&varmap)?;
            assert_close(&got, &expected, 1e-10, 1e-10, "output")?;
            // Each update is `r' = 0.9 r + 0.1 batch`: equal batch statistics make the
            // second step 0.9 times the first.
            for ((b, s), f) in before.iter().zip(&after_slow).zip(&after_fused) {
                let first = (&s.1 - &b.1)?;
                let second = (&f.1 - &s.1)?;
                assert_close(&second, &(first * 0.9)?, 1e-12, 1e-9, &s.0)?;
            }
            let r = randn(got.dims(), DType::F64, &dev)?;
            let g_fused = got.mul(&r)?.sum_all()?.backward()?;
            let g_slow = expected.mul(&r)?.sum_all()?.backward()?;
            let data = varmap.data().lock().expect("lock");
            let mut checked = 0;
            for (name, var) in data
                .iter()
                .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            {
                let (Some(a), Some(b)) = (g_fused.get(var), g_slow.get(var)) else {
                    continue;
                };
                assert_close(a, b, 1e-10, 1e-8, name)?;
                checked += 1;
            }
            // Both preprocessings and at least one parameter per op.
            assert!(checked >= 2 + cell.ops.len() - 1, "{checked}");
            for (x, what) in [(&s0, "s0"), (&s1, "s1")] {
                let (a, b) = (g_fused.get(x).expect("grad"), g_slow.get(x).expect("grad"));
                assert_close(a, b, 1e-10, 1e-8, what)?;
            }
        }
        Ok(())
    }

    /// Central differences of the fused op itself, in f64.
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        use CnnOp::*;
        let cases = [
            (true, false, [vec![1, 2, 4, 4], vec![1, 3, 2, 2]]),
            (false, true, [vec![1, 2, 4, 4], vec![1, 3, 4, 4]]),
        ];
        for (i, (reduction_prev, reduction, [d0, d1])) in cases.into_iter().enumerate() {
            let cell = Cell::new(
                (2, 3, 2),
                reduction_prev,
                reduction,
                &[
                    (SepConv3x3, 0),
                    (SkipConnect, 1),
                    (MaxPool3x3, 0),
                    (DilConv3x3, 2),
                ],
                vec![2, 3],
                vb.pp(i.to_string()),
            )?;
            let (plan, params, _) =
                Plan::new(&d0, &d1, &public::params(&cell.spec()))?.expect("covered");
            let params = Tensor::cat(&params, 0)?;
            let scales = vec![
                Some(vec![1.25]),
                Option::None,
                Some(vec![1.25]),
                Option::None,
            ];
            let inputs = [
                randn(&d0, DType::F64, &dev)?,
                randn(&d1, DType::F64, &dev)?,
                params,
            ];
            grad_check(
                &inputs,
                |xs| Ok(apply(&xs[0], &xs[1], &xs[2], plan.clone(), scales.clone())?.0),
                &format!("cell {i}"),
            )?;
        }
        Ok(())
    }

    /// Ops the kernel does not cover leave the cell to the ops one by one.
    #[test]
    fn uncovered_ops_fall_back() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        let cell = Cell::new(
            (2, 2, 2),
            false,
            false,
            &[(CnnOp::Conv7x1_1x7, 0), (CnnOp::SkipConnect, 1)],
            vec![2],
            vb,
        )?;
        let s = randn(&[1, 2, 4, 4], DType::F64, &dev)?;
        assert!(public::cell_train(&s, &s, &cell.spec(), &[None, None])?.is_none());
        Ok(())
    }
}
