//! The DARTS recurrent cell over a whole sequence (Liu et al. 2018; reference
//! `rnn/model.py` and `rnn/model_search.py`) as one candle op with a hand-written
//! backward through time.
//!
//! Per time step `t`, from the previous hidden state `h` (`h0` at `t = 0`):
//!
//! - state 0: `[c, g] = [x_t m_x, h m_h] W0`, `s_0 = norm(h + sigmoid(c) (tanh(g) - h))`;
//! - node `i` (state `i + 1`) reads its predecessors `s_j` through its own matrix,
//!   `[c_j, g_j] = (s_j m_h) W_i`, and mixes their highway updates with one row of
//!   weights per predecessor (the [`rnn_node`](crate::rnn_node) update):
//!   `s_{i+1} = norm(sum_j P_j s_j + sigmoid(c_j) (F_j(g_j) - P_j s_j))`;
//! - the output (and the next `h`) is the mean of the `concat` states.
//!
//! `m_x`, `m_h` are the variational dropout masks (one per sequence), `norm` is batch
//! norm without affine parameters (the search cell's) or nothing (a derived cell's).
//!
//! Why one op: a time step of the search cell is 9 matrix products and about 40 small
//! element-wise tensors; as candle ops they are graph nodes whose bookkeeping (a zeroed
//! gradient and an addition per node, stacks, copies) cost more than the arithmetic. Here
//! the forward keeps a tape of what the backward needs (every state after the norm, every
//! projection, the norms' inverse deviations), the products run on all threads through
//! `gemm`, and the element-wise work runs in parallel over batch rows.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::elem::{zeros_par, Elem};
use crate::kernels::gemm::{matmul_par, MatRef};
use crate::ops::batch_norm::BatchStats;
use crate::ops::rnn_node::{
    gates_in_place, row_backward, row_backward_inputs, row_forward_gated, NodeWeights,
};
use crate::ops::saved::lock;
use crate::ops::shell::custom_op;
use crate::ops::storage::{contiguous, cpu_storage};

const OP: &str = "rnn_sequence";
/// `none, tanh, relu, sigmoid, identity`: the columns of `probs`.
const N_PRIMITIVES: usize = 5;
/// State 0 always uses tanh.
const TANH_ROW: [f64; N_PRIMITIVES] = [0.0, 1.0, 0.0, 0.0, 0.0];

/// The normalisation applied to state 0 and to every node's state.
#[derive(Debug, Clone, PartialEq)]
pub enum RnnNorm {
    /// Batch norm without affine parameters, with the batch's own statistics (training):
    /// per time step and state, the mean and biased variance over the batch.
    Batch {
        /// Added to the variance.
        eps: f64,
    },
    /// Batch norm without affine parameters, with fixed statistics (evaluation).
    Running {
        /// Per feature, `[H]`.
        mean: Vec<f64>,
        /// Per feature (the unbiased running variance), `[H]`.
        var: Vec<f64>,
        /// Added to the variance.
        eps: f64,
    },
}

/// Which states each node reads, which states the output averages, and the norm.
#[derive(Debug, Clone, PartialEq)]
pub struct RnnCellSpec {
    /// Node `i` (state `i + 1`) reads the listed `(state, row of probs)` pairs; a state
    /// index must be at most `i` (an earlier state).
    pub nodes: Vec<Vec<(usize, usize)>>,
    /// The states averaged into the output.
    pub concat: Vec<usize>,
    /// Normalisation of every state, if any.
    pub norm: Option<RnnNorm>,
}

impl RnnCellSpec {
    /// The DARTS search cell with `steps` nodes: node `i` reads every earlier state, with
    /// rows `i (i + 1) / 2 ..` of `probs`; the output averages states `1..=steps`.
    pub fn search(steps: usize, norm: Option<RnnNorm>) -> Self {
        let mut offset = 0;
        let nodes = (0..steps)
            .map(|i| {
                let preds = (0..=i).map(|j| (j, offset + j)).collect();
                offset += i + 1;
                preds
            })
            .collect();
        RnnCellSpec {
            nodes,
            concat: (1..=steps).collect(),
            norm,
        }
    }

    /// The number of rows of `probs` the spec reads.
    pub fn prob_rows(&self) -> usize {
        self.nodes
            .iter()
            .flatten()
            .map(|&(_, row)| row + 1)
            .max()
            .unwrap_or(0)
    }
}

/// The inputs of [`rnn_sequence`]. The dropout masks are constants (already divided by
/// the keep probability); gradients flow to every other tensor that tracks them.
#[derive(Debug, Clone, Copy)]
pub struct RnnSequence<'a> {
    /// The inputs, `[T, B, ninp]`.
    pub x: &'a Tensor,
    /// The hidden state before the first step, `[B, H]`.
    pub h0: &'a Tensor,
    /// State 0's matrix, `[ninp + H, 2H]` (input rows first).
    pub w0: &'a Tensor,
    /// One matrix per node, each `[H, 2H]`.
    pub ws: &'a [Tensor],
    /// The node weights, `[rows, 5]` over `none, tanh, relu, sigmoid, identity`.
    pub probs: &'a Tensor,
    /// The mask on `x_t`, `[B, ninp]`.
    pub mask_x: Option<&'a Tensor>,
    /// The mask on the previous hidden state and on every state a node reads, `[B, H]`.
    pub mask_h: Option<&'a Tensor>,
}

/// What [`rnn_sequence`] returns.
#[derive(Debug, Clone)]
pub struct RnnSequenceOutput {
    /// The outputs of every step, `[T, B, H]` (the last is the final hidden state).
    pub outputs: Tensor,
    /// With [`RnnNorm::Batch`], the statistics of every normalisation in the order they
    /// were applied (per step: state 0, then the nodes), for running statistics.
    pub stats: Vec<BatchStats>,
}

/// The cell over the sequence `x`, on the CPU, f32 or f64. See the module documentation
/// for what it computes; [`rnn_sequence_slow`] is the same with plain tensor ops.
pub fn rnn_sequence(inputs: &RnnSequence, spec: &RnnCellSpec) -> Result<RnnSequenceOutput> {
    let plan = Plan::new(inputs, spec)?;
    for t in inputs.tensors() {
        if !t.device().is_cpu() {
            return Err(Error::Unsupported {
                op: OP,
                message: format!(
                    "only the CPU is supported, got an input on {:?} (use the per-step \
                     cell there)",
                    t.device().location()
                ),
            }
            .into());
        }
    }
    let wants = Wants {
        x: inputs.x.track_op(),
        h0: inputs.h0.track_op(),
        probs: inputs.probs.track_op(),
        weights: inputs.w0.track_op() || inputs.ws.iter().any(Tensor::track_op),
    };
    // The tracked parameters travel as one packed input, so that candle routes their
    // gradients; the kernel reads them from the op itself.
    let mut parts = Vec::new();
    if wants.probs {
        parts.push(inputs.probs.flatten_all()?);
    }
    if wants.weights {
        parts.push(inputs.w0.flatten_all()?);
        for w in inputs.ws {
            parts.push(w.flatten_all()?);
        }
    }
    let packed = if parts.is_empty() {
        Tensor::zeros(1, inputs.x.dtype(), inputs.x.device())?
    } else {
        Tensor::cat(&parts, 0)?
    };
    let saved = Arc::new(Mutex::new(Saved::default()));
    let op = SequenceOp {
        plan,
        w0: inputs.w0.contiguous()?,
        ws: inputs
            .ws
            .iter()
            .map(Tensor::contiguous)
            .collect::<Result<_>>()?,
        probs: inputs.probs.contiguous()?,
        mask_x: inputs.mask_x.map(Tensor::contiguous).transpose()?,
        mask_h: inputs.mask_h.map(Tensor::contiguous).transpose()?,
        wants,
        saved: saved.clone(),
    };
    let outputs = inputs
        .x
        .contiguous()?
        .apply_op3(&inputs.h0.contiguous()?, &packed, op)?;
    let stats = std::mem::take(&mut lock(&saved, OP)?.stats);
    Ok(RnnSequenceOutput { outputs, stats })
}

/// The plain-tensor reference of [`rnn_sequence`]'s outputs: the cell step by step, one
/// [`rnn_node_slow`](crate::ops::rnn_node::rnn_node_slow) per predecessor.
pub fn rnn_sequence_slow(inputs: &RnnSequence, spec: &RnnCellSpec) -> Result<Tensor> {
    let plan = Plan::new(inputs, spec)?;
    let (dtype, dev) = (inputs.x.dtype(), inputs.x.device());
    let mask = |t: &Tensor, m: Option<&Tensor>| -> Result<Tensor> {
        match m {
            Some(m) => t.mul(m),
            None => Ok(t.clone()),
        }
    };
    let norm = |u: Tensor| -> Result<Tensor> {
        match &spec.norm {
            None => Ok(u),
            Some(RnnNorm::Batch { eps }) => {
                let (b, h) = u.dims2()?;
                crate::ops::batch_norm::batch_norm_train_slow(
                    &u.reshape((b, h, 1, 1))?,
                    None,
                    *eps,
                )?
                .reshape((b, h))
            }
            Some(RnnNorm::Running { mean, var, eps }) => {
                let mean = Tensor::new(mean.as_slice(), dev)?.to_dtype(dtype)?;
                let inv = Tensor::new(var.as_slice(), dev)?
                    .affine(1.0, *eps)?
                    .sqrt()?
                    .recip()?
                    .to_dtype(dtype)?;
                u.broadcast_sub(&mean)?.broadcast_mul(&inv)
            }
        }
    };
    let tanh = Tensor::new(&TANH_ROW, dev)?
        .to_dtype(dtype)?
        .reshape((1, N_PRIMITIVES))?;
    let mut h_prev = inputs.h0.clone();
    let mut outputs = Vec::with_capacity(plan.t);
    for t in 0..plan.t {
        let xt = mask(&inputs.x.get(t)?, inputs.mask_x)?;
        let hm = mask(&h_prev, inputs.mask_h)?;
        let ch0 = Tensor::cat(&[&xt, &hm], 1)?.matmul(inputs.w0)?;
        let s0 =
            crate::ops::rnn_node::rnn_node_slow(&h_prev.unsqueeze(0)?, &ch0.unsqueeze(0)?, &tanh)?;
        let mut states = vec![norm(s0)?];
        for (i, preds) in spec.nodes.iter().enumerate() {
            let mut u: Option<Tensor> = None;
            for &(j, row) in preds {
                let ch = mask(&states[j], inputs.mask_h)?.matmul(&inputs.ws[i])?;
                let term = crate::ops::rnn_node::rnn_node_slow(
                    &states[j].unsqueeze(0)?,
                    &ch.unsqueeze(0)?,
                    &inputs.probs.narrow(0, row, 1)?,
                )?;
                u = Some(match u {
                    Some(u) => (u + term)?,
                    None => term,
                });
            }
            let u = u.expect("every node reads a state (checked)");
            states.push(norm(u)?);
        }
        let picked: Vec<&Tensor> = spec.concat.iter().map(|&k| &states[k]).collect();
        h_prev = (Tensor::stack(&picked, 0)?.sum(0)? / spec.concat.len() as f64)?;
        outputs.push(h_prev.clone());
    }
    Tensor::stack(&outputs, 0)
}

impl<'a> RnnSequence<'a> {
    fn tensors(&self) -> impl Iterator<Item = &'a Tensor> {
        [self.x, self.h0, self.w0, self.probs]
            .into_iter()
            .chain(self.ws.iter())
            .chain(self.mask_x)
            .chain(self.mask_h)
    }
}

/// The sizes and the node structure, checked.
#[derive(Debug, Clone)]
struct Plan {
    t: usize,
    b: usize,
    ninp: usize,
    h: usize,
    nodes: Vec<Vec<(usize, usize)>>,
    /// Row offset of node `i`'s projections in a step's block of projections.
    offsets: Vec<usize>,
    /// Projections per step (the sum of the nodes' predecessor counts).
    rows: usize,
    /// Rows of `probs`.
    prob_rows: usize,
    concat: Vec<usize>,
    norm: Option<RnnNorm>,
}

impl Plan {
    fn new(inputs: &RnnSequence, spec: &RnnCellSpec) -> Result<Self> {
        let shape_err = |expected: String, got: &Tensor| -> candle_core::Error {
            Error::ShapeMismatch {
                op: OP,
                expected,
                got: got.dims().to_vec(),
            }
            .into()
        };
        let unsupported = |message: String| -> candle_core::Error {
            Error::Unsupported { op: OP, message }.into()
        };
        let &[t, b, ninp] = inputs.x.dims() else {
            return Err(shape_err("x [T, B, ninp]".into(), inputs.x));
        };
        let &[hb, h] = inputs.h0.dims() else {
            return Err(shape_err(format!("h0 [{b}, H]"), inputs.h0));
        };
        if hb != b {
            return Err(shape_err(format!("h0 [{b}, H]"), inputs.h0));
        }
        if t == 0 || b == 0 || ninp == 0 || h == 0 {
            return Err(unsupported(format!(
                "empty sizes: T {t}, B {b}, ninp {ninp}, H {h}"
            )));
        }
        if inputs.w0.dims() != [ninp + h, 2 * h] {
            return Err(shape_err(
                format!("w0 [{}, {}] (ninp + H, 2H)", ninp + h, 2 * h),
                inputs.w0,
            ));
        }
        if inputs.ws.len() != spec.nodes.len() {
            return Err(unsupported(format!(
                "{} node matrices for {} nodes",
                inputs.ws.len(),
                spec.nodes.len()
            )));
        }
        for (i, w) in inputs.ws.iter().enumerate() {
            if w.dims() != [h, 2 * h] {
                return Err(shape_err(format!("ws[{i}] [{h}, {}] (H, 2H)", 2 * h), w));
            }
        }
        let prob_rows = spec.prob_rows();
        if inputs.probs.rank() != 2
            || inputs.probs.dim(1)? != N_PRIMITIVES
            || inputs.probs.dim(0)? < prob_rows
        {
            return Err(shape_err(
                format!("probs [rows >= {prob_rows}, {N_PRIMITIVES}]"),
                inputs.probs,
            ));
        }
        for (name, m, cols) in [
            ("mask_x", inputs.mask_x, ninp),
            ("mask_h", inputs.mask_h, h),
        ] {
            if let Some(m) = m {
                if m.dims() != [b, cols] {
                    return Err(shape_err(format!("{name} [{b}, {cols}]"), m));
                }
            }
        }
        let mut offsets = Vec::with_capacity(spec.nodes.len());
        let mut rows = 0;
        for (i, preds) in spec.nodes.iter().enumerate() {
            if preds.is_empty() {
                return Err(unsupported(format!("node {i} reads no state")));
            }
            if let Some(&(j, _)) = preds.iter().find(|&&(j, _)| j > i) {
                return Err(unsupported(format!(
                    "node {i} reads state {j}; it can read states 0..={i}"
                )));
            }
            let mut seen: Vec<usize> = preds.iter().map(|&(j, _)| j).collect();
            seen.sort_unstable();
            seen.dedup();
            if seen.len() != preds.len() {
                return Err(unsupported(format!("node {i} reads a state twice")));
            }
            offsets.push(rows);
            rows += preds.len();
        }
        let n_states = spec.nodes.len() + 1;
        if spec.concat.is_empty() || spec.concat.iter().any(|&k| k >= n_states) {
            return Err(unsupported(format!(
                "concat {:?}: expected a non-empty list of states below {n_states}",
                spec.concat
            )));
        }
        if let Some(RnnNorm::Running { mean, var, .. }) = &spec.norm {
            if mean.len() != h || var.len() != h {
                return Err(unsupported(format!(
                    "running statistics of {} and {} features, expected {h}",
                    mean.len(),
                    var.len()
                )));
            }
        }
        Ok(Plan {
            t,
            b,
            ninp,
            h,
            nodes: spec.nodes.clone(),
            offsets,
            rows,
            prob_rows,
            concat: spec.concat.clone(),
            norm: spec.norm.clone(),
        })
    }

    fn n_states(&self) -> usize {
        self.nodes.len() + 1
    }

    /// Per node, the weights of each predecessor (its row of `probs`).
    fn node_weights<T: Elem>(&self, probs: &[T]) -> Vec<Vec<NodeWeights<T>>> {
        self.nodes
            .iter()
            .map(|preds| {
                preds
                    .iter()
                    .map(|&(_, row)| NodeWeights::of(&probs[row * N_PRIMITIVES..][..N_PRIMITIVES]))
                    .collect()
            })
            .collect()
    }

    /// Node `i`'s predecessors as runs of consecutive states, one matrix product each:
    /// `(first predecessor, first state, length)`.
    fn runs(&self, i: usize) -> Vec<(usize, usize, usize)> {
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for (p, &(j, _)) in self.nodes[i].iter().enumerate() {
            match runs.last_mut() {
                Some((_, j0, len)) if *j0 + *len == j => *len += 1,
                _ => runs.push((p, j, 1)),
            }
        }
        runs
    }
}

/// Which inputs get gradients.
#[derive(Debug, Clone, Copy)]
struct Wants {
    x: bool,
    h0: bool,
    probs: bool,
    weights: bool,
}

impl Wants {
    fn any(&self) -> bool {
        self.x || self.h0 || self.probs || self.weights
    }
}

/// What the forward keeps for the backward.
struct Tape<T> {
    /// Every state after the norm, `[T, S, B, H]`.
    states: Vec<T>,
    /// State 0's projections, `[T, B, 2H]`, each row's `c` half replaced by its gate
    /// `sigmoid(c)`.
    ch0: Vec<T>,
    /// The nodes' projections, `[T, rows, B, 2H]`, gates in the `c` halves likewise.
    ch: Vec<T>,
    /// The norms' inverse standard deviations, `[T, S, H]` (batch norm) or `[H]`
    /// (running statistics); empty without a norm.
    inv_std: Vec<T>,
}

enum AnyTape {
    F32(Tape<f32>),
    F64(Tape<f64>),
}

/// The element types the op runs in, with their tape.
trait TapeElem: Elem + candle_core::WithDType {
    fn wrap(tape: Tape<Self>) -> AnyTape;
    fn unwrap(tape: &AnyTape) -> Option<&Tape<Self>>;
}

impl TapeElem for f32 {
    fn wrap(tape: Tape<Self>) -> AnyTape {
        AnyTape::F32(tape)
    }
    fn unwrap(tape: &AnyTape) -> Option<&Tape<Self>> {
        match tape {
            AnyTape::F32(t) => Some(t),
            AnyTape::F64(_) => None,
        }
    }
}

impl TapeElem for f64 {
    fn wrap(tape: Tape<Self>) -> AnyTape {
        AnyTape::F64(tape)
    }
    fn unwrap(tape: &AnyTape) -> Option<&Tape<Self>> {
        match tape {
            AnyTape::F64(t) => Some(t),
            AnyTape::F32(_) => None,
        }
    }
}

#[derive(Default)]
struct Saved {
    tape: Option<AnyTape>,
    stats: Vec<BatchStats>,
}

/// The op's parameters as slices of one element type.
struct Views<'a, T> {
    x: &'a [T],
    h0: &'a [T],
    w0: &'a [T],
    ws: Vec<&'a [T]>,
    probs: &'a [T],
    mask_x: Option<&'a [T]>,
    mask_h: Option<&'a [T]>,
}

/// `dst = src * mask` row by row (`mask` is `[B, cols]`, `src` is `[.., B, cols]`), or a
/// copy without a mask.
fn mask_into<T: Elem>(dst: &mut [T], src: &[T], mask: Option<&[T]>) {
    match mask {
        Some(m) => dst
            .par_chunks_mut(m.len())
            .zip(src.par_chunks(m.len()))
            .for_each(|(d, s)| {
                d.par_chunks_mut(PIECE)
                    .zip(s.par_chunks(PIECE))
                    .zip(m.par_chunks(PIECE))
                    .for_each(|((d, s), m)| {
                        for ((d, &s), &m) in d.iter_mut().zip(s).zip(m) {
                            *d = s * m;
                        }
                    })
            }),
        None => dst
            .par_chunks_mut(PIECE)
            .zip(src.par_chunks(PIECE))
            .for_each(|(d, s)| d.copy_from_slice(s)),
    }
}

/// Elements per parallel task of the element-wise loops (the `[B, H]` blocks are tens of
/// thousands of elements: split, they run on every thread instead of one).
const PIECE: usize = 4096;

/// `dst += src`, in parallel pieces.
fn add_into<T: Elem>(dst: &mut [T], src: &[T]) {
    dst.par_chunks_mut(PIECE)
        .zip(src.par_chunks(PIECE))
        .for_each(|(d, s)| {
            for (d, &s) in d.iter_mut().zip(s) {
                *d = *d + s;
            }
        });
}

/// `dst = 0`, in parallel pieces.
fn zero_par<T: Elem>(dst: &mut [T]) {
    dst.par_chunks_mut(PIECE).for_each(|d| d.fill(T::zero()));
}

/// `src * mask`, borrowed when there is no mask.
fn masked<'a, T: Elem>(src: &'a [T], mask: Option<&[T]>) -> std::borrow::Cow<'a, [T]> {
    match mask {
        Some(_) => {
            let mut out = vec![T::zero(); src.len()];
            mask_into(&mut out, src, mask);
            std::borrow::Cow::Owned(out)
        }
        None => std::borrow::Cow::Borrowed(src),
    }
}

/// The running statistics as `(mean, 1 / sqrt(var + eps))` in `T`.
fn running<T: Elem>(mean: &[f64], var: &[f64], eps: f64) -> (Vec<T>, Vec<T>) {
    (
        mean.iter().map(|&m| T::of_f64(m)).collect(),
        var.iter()
            .map(|&v| T::of_f64(1.0 / (v + eps).sqrt()))
            .collect(),
    )
}

/// Batch norm without affine parameters over the rows of `u` (`[B, H]`), in place; writes
/// the inverse deviations to `inv` and returns the statistics.
fn batch_norm_rows<T: Elem>(u: &mut [T], h: usize, eps: f64, inv: &mut [T]) -> BatchStats {
    let b = u.len() / h;
    let mean = column_sums(u, h, |x, _| x.as_f64())
        .into_iter()
        .map(|s| s / b as f64)
        .collect::<Vec<_>>();
    let var = column_sums(u, h, |x, c| {
        let d = x.as_f64() - mean[c];
        d * d
    })
    .into_iter()
    .map(|s| s / b as f64)
    .collect::<Vec<_>>();
    let mean_t: Vec<T> = mean.iter().map(|&m| T::of_f64(m)).collect();
    for (i, &v) in inv.iter_mut().zip(&var) {
        *i = T::of_f64(1.0 / (v + eps).sqrt());
    }
    let inv = &*inv;
    u.par_chunks_mut(h)
        .with_min_len(ROWS_PER_TASK)
        .for_each(|row| {
            for ((x, &m), &i) in row.iter_mut().zip(&mean_t).zip(inv) {
                *x = (*x - m) * i;
            }
        });
    BatchStats {
        mean,
        var,
        count: b,
    }
}

/// Rows per parallel task of the row-wise loops over `[B, H]` blocks.
const ROWS_PER_TASK: usize = 16;
/// Columns per parallel task of the column sums.
const COLS_PER_TASK: usize = 16;

/// Per column `c` of the row-major `[B, h]` block `m`, the sum over rows of `f(x, c)` in
/// f64, in row order (so the result does not depend on the thread count); blocks of
/// columns in parallel.
fn column_sums<T: Elem>(m: &[T], h: usize, f: impl Fn(T, usize) -> f64 + Sync) -> Vec<f64> {
    let mut sums = vec![0f64; h];
    sums.par_chunks_mut(COLS_PER_TASK)
        .enumerate()
        .for_each(|(blk, s)| {
            let c0 = blk * COLS_PER_TASK;
            for row in m.chunks(h) {
                for (i, (acc, &x)) in s.iter_mut().zip(&row[c0..]).enumerate() {
                    *acc += f(x, c0 + i);
                }
            }
        });
    sums
}

/// The backward of batch norm without affine parameters, in place on `d` (`[B, H]`):
/// `d <- inv (d - mean_b(d) - y mean_b(d y))`, with `y` the normalised output.
fn batch_norm_rows_backward<T: Elem>(d: &mut [T], y: &[T], h: usize, inv: &[T]) {
    let b = d.len() / h;
    let mut sums = vec![(0f64, 0f64); h];
    sums.par_chunks_mut(COLS_PER_TASK)
        .enumerate()
        .for_each(|(blk, s)| {
            let c0 = blk * COLS_PER_TASK;
            for (dr, yr) in d.chunks(h).zip(y.chunks(h)) {
                for ((acc, &dv), &yv) in s.iter_mut().zip(&dr[c0..]).zip(&yr[c0..]) {
                    acc.0 += dv.as_f64();
                    acc.1 += (dv * yv).as_f64();
                }
            }
        });
    let mean_d: Vec<T> = sums.iter().map(|s| T::of_f64(s.0 / b as f64)).collect();
    let mean_dy: Vec<T> = sums.iter().map(|s| T::of_f64(s.1 / b as f64)).collect();
    d.par_chunks_mut(h)
        .zip(y.par_chunks(h))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(dr, yr)| {
            for ((((dv, &yv), &md), &mdy), &i) in
                dr.iter_mut().zip(yr).zip(&mean_d).zip(&mean_dy).zip(inv)
            {
                *dv = i * (*dv - md - yv * mdy);
            }
        });
}

/// The forward pass: the outputs `[T, B, H]`, the tape and the batch statistics.
fn forward<T: Elem>(p: &Plan, v: &Views<T>) -> (Vec<T>, Tape<T>, Vec<BatchStats>) {
    let (tl, b, ni, h) = (p.t, p.b, p.ninp, p.h);
    let (bh, bh2, ns) = (b * h, b * 2 * h, p.n_states());
    let mut states = zeros_par(tl * ns * bh);
    let mut ch0 = zeros_par(tl * bh2);
    let mut ch = zeros_par(tl * p.rows * bh2);
    let mut out = vec![T::zero(); tl * bh];
    let mut stats = Vec::new();
    let (run_mean, mut inv_std) = match &p.norm {
        Some(RnnNorm::Batch { .. }) => (Vec::new(), vec![T::zero(); tl * ns * h]),
        Some(RnnNorm::Running { mean, var, eps }) => running(mean, var, *eps),
        None => (Vec::new(), Vec::new()),
    };
    // The input half of state 0's product, for every step at once.
    let xm = masked(v.x, v.mask_x);
    let (w0x, w0h) = v.w0.split_at(ni * 2 * h);
    matmul_par(
        &mut ch0,
        MatRef::rows(&xm, tl * b, ni),
        MatRef::rows(w0x, ni, 2 * h),
        false,
    );
    let tanh = NodeWeights::of(&TANH_ROW.map(T::of_f64));
    let weights = p.node_weights(v.probs);
    let mut hm = vec![T::zero(); bh];
    let mut state_masked = vec![T::zero(); ns * bh];
    let mut norm = |t: usize, k: usize, u: &mut [T]| match &p.norm {
        Some(RnnNorm::Batch { eps }) => {
            let inv = &mut inv_std[(t * ns + k) * h..][..h];
            stats.push(batch_norm_rows(u, h, *eps, inv));
        }
        Some(RnnNorm::Running { .. }) => {
            for row in u.chunks_mut(h) {
                for ((x, &m), &i) in row.iter_mut().zip(&run_mean).zip(&inv_std) {
                    *x = (*x - m) * i;
                }
            }
        }
        None => {}
    };
    for t in 0..tl {
        let (done, rest) = out.split_at_mut(t * bh);
        let h_prev = if t == 0 { v.h0 } else { &done[(t - 1) * bh..] };
        let ch0_t = &mut ch0[t * bh2..][..bh2];
        mask_into(&mut hm, h_prev, v.mask_h);
        matmul_par(
            ch0_t,
            MatRef::rows(&hm, b, h),
            MatRef::rows(w0h, h, 2 * h),
            true,
        );
        // The tape keeps gates `sigmoid(c)`, not `c`.
        gates_in_place(ch0_t, h);
        let st = &mut states[t * ns * bh..][..ns * bh];
        {
            let s0 = &mut st[..bh];
            let ch0_t = &*ch0_t;
            s0.par_chunks_mut(h).enumerate().for_each(|(bi, y)| {
                let (c, g) = ch0_t[bi * 2 * h..][..2 * h].split_at(h);
                row_forward_gated(&tanh, y, &h_prev[bi * h..][..h], c, g);
            });
            norm(t, 0, s0);
            mask_into(&mut state_masked[..bh], s0, v.mask_h);
        }
        let ch_t = &mut ch[t * p.rows * bh2..][..p.rows * bh2];
        for (i, preds) in p.nodes.iter().enumerate() {
            let ch_i = &mut ch_t[p.offsets[i] * bh2..][..preds.len() * bh2];
            for (p0, j0, len) in p.runs(i) {
                matmul_par(
                    &mut ch_i[p0 * bh2..][..len * bh2],
                    MatRef::rows(&state_masked[j0 * bh..][..len * bh], len * b, h),
                    MatRef::rows(v.ws[i], h, 2 * h),
                    false,
                );
            }
            gates_in_place(ch_i, h);
            let (prev, cur) = st.split_at_mut((i + 1) * bh);
            let u = &mut cur[..bh];
            let (ch_i, prev, w) = (&*ch_i, &*prev, &weights[i]);
            u.par_chunks_mut(h).enumerate().for_each(|(bi, y)| {
                for (pi, (&(j, _), w)) in preds.iter().zip(w).enumerate() {
                    if !w.any() {
                        continue;
                    }
                    let (c, g) = ch_i[(pi * b + bi) * 2 * h..][..2 * h].split_at(h);
                    row_forward_gated(w, y, &prev[(j * b + bi) * h..][..h], c, g);
                }
            });
            norm(t, i + 1, u);
            mask_into(&mut state_masked[(i + 1) * bh..][..bh], u, v.mask_h);
        }
        let scale = T::one() / T::of_f64(p.concat.len() as f64);
        let st = &*st;
        rest[..bh]
            .par_chunks_mut(h)
            .enumerate()
            .for_each(|(bi, y)| {
                for &k in &p.concat {
                    for (o, &s) in y.iter_mut().zip(&st[(k * b + bi) * h..][..h]) {
                        *o = *o + s;
                    }
                }
                y.iter_mut().for_each(|o| *o = *o * scale);
            });
    }
    (
        out,
        Tape {
            states,
            ch0,
            ch,
            inv_std,
        },
        stats,
    )
}

/// The gradients of one call.
struct Grads<T> {
    x: Vec<T>,
    h0: Vec<T>,
    /// `[rows, 5]`, summed in f64.
    probs: Vec<f64>,
    /// `[ninp + H, 2H]`, empty unless the weights want gradients.
    w0: Vec<T>,
    ws: Vec<Vec<T>>,
}

/// The backward pass through time, from the gradient `dout` of the outputs.
fn backward<T: Elem>(
    p: &Plan,
    v: &Views<T>,
    tape: &Tape<T>,
    out: &[T],
    dout: &[T],
    wants: Wants,
) -> Grads<T> {
    let (tl, b, ni, h) = (p.t, p.b, p.ninp, p.h);
    let (bh, bh2, ns) = (b * h, b * 2 * h, p.n_states());
    let (w0x, w0h) = v.w0.split_at(ni * 2 * h);
    let mut dch0 = zeros_par(tl * bh2);
    let (mut dw0, mut dws) = if wants.weights {
        (
            vec![T::zero(); (ni + h) * 2 * h],
            vec![vec![T::zero(); h * 2 * h]; p.nodes.len()],
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let mut dprobs = vec![0f64; p.prob_rows * N_PRIMITIVES];
    let tanh = NodeWeights::of(&TANH_ROW.map(T::of_f64));
    let weights = p.node_weights(v.probs);
    let max_preds = p.nodes.iter().map(Vec::len).max().unwrap_or(1);
    let mut carry = vec![T::zero(); bh];
    let mut d_state = vec![T::zero(); ns * bh];
    let mut d_masked = vec![T::zero(); ns * bh];
    let mut state_masked = vec![T::zero(); ns * bh];
    let mut d_preds = vec![T::zero(); max_preds * bh];
    let mut d_ch = vec![T::zero(); max_preds * bh2];
    let mut du = vec![T::zero(); bh];
    let mut d_out = vec![T::zero(); bh];
    let mut d_direct = vec![T::zero(); bh];
    let mut d_hm = vec![T::zero(); bh];
    let mut hm = vec![T::zero(); bh];
    let scale = T::one() / T::of_f64(p.concat.len() as f64);
    // `du <- norm'(d_state[k] + m_h d_masked[k])` for state `k` of step `t`.
    let norm_back = |du: &mut [T], t: usize, k: usize, d_state: &[T], d_masked: &[T], y: &[T]| {
        let (ds, dm) = (&d_state[k * bh..][..bh], &d_masked[k * bh..][..bh]);
        match v.mask_h {
            Some(m) => {
                du.par_chunks_mut(PIECE)
                    .zip(ds.par_chunks(PIECE))
                    .zip(dm.par_chunks(PIECE).zip(m.par_chunks(PIECE)))
                    .for_each(|((du, ds), (dm, m))| {
                        for (((d, &s), &g), &m) in du.iter_mut().zip(ds).zip(dm).zip(m) {
                            *d = s + g * m;
                        }
                    });
            }
            None => {
                for ((d, &s), &g) in du.iter_mut().zip(ds).zip(dm) {
                    *d = s + g;
                }
            }
        }
        match &p.norm {
            Some(RnnNorm::Batch { .. }) => {
                batch_norm_rows_backward(
                    du,
                    &y[k * bh..][..bh],
                    h,
                    &tape.inv_std[(t * ns + k) * h..][..h],
                );
            }
            Some(RnnNorm::Running { .. }) => {
                for row in du.chunks_mut(h) {
                    for (d, &i) in row.iter_mut().zip(&tape.inv_std) {
                        *d = *d * i;
                    }
                }
            }
            None => {}
        }
    };
    for t in (0..tl).rev() {
        let st = &tape.states[t * ns * bh..][..ns * bh];
        let ch_t = &tape.ch[t * p.rows * bh2..][..p.rows * bh2];
        let h_prev = if t == 0 {
            v.h0
        } else {
            &out[(t - 1) * bh..][..bh]
        };
        mask_into(&mut state_masked, st, v.mask_h);
        zero_par(&mut d_state);
        zero_par(&mut d_masked);
        // The output's gradient, spread over the averaged states.
        let dout_t = &dout[t * bh..][..bh];
        d_out
            .par_chunks_mut(PIECE)
            .zip(dout_t.par_chunks(PIECE).zip(carry.par_chunks(PIECE)))
            .for_each(|(d, (g, c))| {
                for ((d, &g), &c) in d.iter_mut().zip(g).zip(c) {
                    *d = (g + c) * scale;
                }
            });
        for &k in &p.concat {
            add_into(&mut d_state[k * bh..][..bh], &d_out);
        }
        for (i, preds) in p.nodes.iter().enumerate().rev() {
            norm_back(&mut du, t, i + 1, &d_state, &d_masked, st);
            let np = preds.len();
            let ch_i = &ch_t[p.offsets[i] * bh2..][..np * bh2];
            let (du, w) = (&du, &weights[i]);
            let partial: Vec<[f64; 4]> = d_preds[..np * bh]
                .par_chunks_mut(h)
                .zip(d_ch[..np * bh2].par_chunks_mut(2 * h))
                .enumerate()
                .map_init(
                    || vec![T::zero(); if wants.probs { 4 * h } else { 0 }],
                    |terms, (r, (ds, dch))| {
                        let (pi, bi) = (r / b, r % b);
                        let j = preds[pi].0;
                        let (dc, dg) = dch.split_at_mut(h);
                        let (c, g) = ch_i[r * 2 * h..][..2 * h].split_at(h);
                        let (du, s) = (&du[bi * h..][..h], &st[(j * b + bi) * h..][..h]);
                        if wants.probs {
                            row_backward::<T, true>(&w[pi], du, s, c, g, ds, dc, dg, terms)
                        } else {
                            row_backward_inputs::<T, true>(&w[pi], du, s, c, g, ds, dc, dg);
                            [0.0; 4]
                        }
                    },
                )
                .collect();
            for (r, acc) in partial.iter().enumerate() {
                let row = preds[r / b].1;
                for (d, &a) in dprobs[row * N_PRIMITIVES + 1..][..4].iter_mut().zip(acc) {
                    *d += a;
                }
            }
            for (pi, &(j, _)) in preds.iter().enumerate() {
                add_into(&mut d_state[j * bh..][..bh], &d_preds[pi * bh..][..bh]);
            }
            for (p0, j0, len) in p.runs(i) {
                let dch_run = MatRef::rows(&d_ch[p0 * bh2..][..len * bh2], len * b, 2 * h);
                matmul_par(
                    &mut d_masked[j0 * bh..][..len * bh],
                    dch_run,
                    MatRef::transposed(v.ws[i], h, 2 * h),
                    true,
                );
                if wants.weights {
                    matmul_par(
                        &mut dws[i],
                        MatRef::transposed(&state_masked[j0 * bh..][..len * bh], len * b, h),
                        dch_run,
                        true,
                    );
                }
            }
        }
        // State 0, from the previous hidden state.
        norm_back(&mut du, t, 0, &d_state, &d_masked, st);
        let dch0_t = &mut dch0[t * bh2..][..bh2];
        let ch0_t = &tape.ch0[t * bh2..][..bh2];
        let du = &du;
        d_direct
            .par_chunks_mut(h)
            .zip(dch0_t.par_chunks_mut(2 * h))
            .enumerate()
            .for_each(|(bi, (ds, dch))| {
                let (dc, dg) = dch.split_at_mut(h);
                let (c, g) = ch0_t[bi * 2 * h..][..2 * h].split_at(h);
                let (du, s) = (&du[bi * h..][..h], &h_prev[bi * h..][..h]);
                row_backward_inputs::<T, true>(&tanh, du, s, c, g, ds, dc, dg);
            });
        let dch0_t = MatRef::rows(&*dch0_t, b, 2 * h);
        matmul_par(&mut d_hm, dch0_t, MatRef::transposed(w0h, h, 2 * h), false);
        if wants.weights {
            mask_into(&mut hm, h_prev, v.mask_h);
            matmul_par(
                &mut dw0[ni * 2 * h..],
                MatRef::transposed(&hm, b, h),
                dch0_t,
                true,
            );
        }
        mask_into(&mut carry, &d_hm, v.mask_h);
        add_into(&mut carry, &d_direct);
    }
    let mut dx = vec![T::zero(); tl * b * ni];
    if wants.x {
        matmul_par(
            &mut dx,
            MatRef::rows(&dch0, tl * b, 2 * h),
            MatRef::transposed(w0x, ni, 2 * h),
            false,
        );
        if let Some(m) = v.mask_x {
            for row in dx.chunks_mut(m.len()) {
                for (d, &m) in row.iter_mut().zip(m) {
                    *d = *d * m;
                }
            }
        }
    }
    if wants.weights {
        let xm = masked(v.x, v.mask_x);
        matmul_par(
            &mut dw0[..ni * 2 * h],
            MatRef::transposed(&xm, tl * b, ni),
            MatRef::rows(&dch0, tl * b, 2 * h),
            true,
        );
    }
    Grads {
        x: dx,
        h0: carry,
        probs: dprobs,
        w0: dw0,
        ws: dws,
    }
}

struct SequenceOp {
    plan: Plan,
    w0: Tensor,
    ws: Vec<Tensor>,
    probs: Tensor,
    mask_x: Option<Tensor>,
    mask_h: Option<Tensor>,
    wants: Wants,
    saved: Arc<Mutex<Saved>>,
}

/// A tensor's (read-locked) storage and its layout.
type Guard<'a> = (&'a candle_core::Storage, &'a Layout);

/// The contiguous data of a CPU tensor as `T`.
fn data_of<'a, T: Elem>(guard: &Guard<'a>) -> Result<&'a [T]> {
    use candle_core::backend::BackendStorage;
    let storage = cpu_storage(guard.0, OP)?;
    let data = T::slice(storage).ok_or_else(|| {
        candle_core::Error::from(Error::Unsupported {
            op: OP,
            message: format!(
                "inputs must share one dtype (f32 or f64), got {:?}",
                storage.dtype()
            ),
        })
    })?;
    contiguous(data, guard.1, OP)
}

impl SequenceOp {
    /// The op's own tensors: `w0`, the node matrices, `probs`, then the masks that are
    /// present.
    fn tensors(&self) -> Vec<&Tensor> {
        std::iter::once(&self.w0)
            .chain(&self.ws)
            .chain(std::iter::once(&self.probs))
            .chain(&self.mask_x)
            .chain(&self.mask_h)
            .collect()
    }

    /// The views of the op's inputs, `x` and `h0` given.
    fn views<'a, T: Elem>(
        &self,
        guards: &'a [Guard<'a>],
        x: &'a [T],
        h0: &'a [T],
    ) -> Result<Views<'a, T>> {
        let n = self.ws.len();
        let mut rest = guards[n + 2..].iter();
        let mask_x = match self.mask_x {
            Some(_) => Some(data_of(rest.next().expect("guarded"))?),
            None => None,
        };
        let mask_h = match self.mask_h {
            Some(_) => Some(data_of(rest.next().expect("guarded"))?),
            None => None,
        };
        Ok(Views {
            x,
            h0,
            w0: data_of(&guards[0])?,
            ws: guards[1..=n].iter().map(data_of).collect::<Result<_>>()?,
            probs: data_of(&guards[n + 1])?,
            mask_x,
            mask_h,
        })
    }

    fn fwd_typed<T: TapeElem>(&self, x: &[T], h0: &[T]) -> Result<(CpuStorage, Shape)> {
        let locked: Vec<_> = self
            .tensors()
            .into_iter()
            .map(Tensor::storage_and_layout)
            .collect();
        let guards: Vec<Guard<'_>> = locked.iter().map(|(s, l)| (&**s, *l)).collect();
        let views = self.views(&guards, x, h0)?;
        let (out, tape, stats) = forward(&self.plan, &views);
        let mut saved = lock(&self.saved, OP)?;
        saved.stats = stats;
        if self.wants.any() {
            saved.tape = Some(T::wrap(tape));
        }
        let p = &self.plan;
        Ok((T::storage(out), Shape::from((p.t, p.b, p.h))))
    }

    fn bwd_typed<T: TapeElem>(
        &self,
        x: &[T],
        h0: &[T],
        out: &[T],
        dout: &[T],
        packed_len: usize,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let locked: Vec<_> = self
            .tensors()
            .into_iter()
            .map(Tensor::storage_and_layout)
            .collect();
        let guards: Vec<Guard<'_>> = locked.iter().map(|(s, l)| (&**s, *l)).collect();
        let views = self.views(&guards, x, h0)?;
        let saved = lock(&self.saved, OP)?;
        let tape = saved
            .tape
            .as_ref()
            .and_then(T::unwrap)
            .ok_or_else(|| Error::Unsupported {
                op: OP,
                message: "backward without a forward tape".into(),
            })?;
        let g = backward(&self.plan, &views, tape, out, dout, self.wants);
        let p = &self.plan;
        let dev = &Device::Cpu;
        let dx = if self.wants.x {
            Some(Tensor::from_vec(g.x, (p.t, p.b, p.ninp), dev)?)
        } else {
            None
        };
        let dh0 = if self.wants.h0 {
            Some(Tensor::from_vec(g.h0, (p.b, p.h), dev)?)
        } else {
            None
        };
        let mut packed: Vec<T> = Vec::with_capacity(packed_len);
        if self.wants.probs {
            let rows = self.probs.dim(0)?;
            let mut dp: Vec<T> = g.probs.iter().map(|&v| T::of_f64(v)).collect();
            dp.resize(rows * N_PRIMITIVES, T::zero());
            packed.extend(dp);
        }
        if self.wants.weights {
            packed.extend(g.w0);
            for w in g.ws {
                packed.extend(w);
            }
        }
        let dpacked = if packed.is_empty() {
            None
        } else {
            Some(Tensor::from_vec(packed, packed_len, dev)?)
        };
        Ok((dx, dh0, dpacked))
    }
}

custom_op! {
    SequenceOp: CustomOp3 = OP;
    cpu(&self, s1, l1, s2, l2, _s3, _l3) {
        match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(h0)) => {
                self.fwd_typed::<f32>(contiguous(x, l1, OP)?, contiguous(h0, l2, OP)?)
            }
            (CpuStorage::F64(x), CpuStorage::F64(h0)) => {
                self.fwd_typed::<f64>(contiguous(x, l1, OP)?, contiguous(h0, l2, OP)?)
            }
            _ => Err(crate::ops::storage::mismatch(OP, &[s1, s2])),
        }
    }
    extra {
        fn bwd(
            &self,
            x: &Tensor,
            h0: &Tensor,
            packed: &Tensor,
            res: &Tensor,
            grad_res: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let dout = grad_res.contiguous()?;
            let tensors = [x, h0, res, &dout];
            let locked: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
            let guards: Vec<Guard<'_>> = locked.iter().map(|(s, l)| (&**s, *l)).collect();
            let n = packed.elem_count();
            match cpu_storage(guards[0].0, OP)? {
                CpuStorage::F32(_) => self.bwd_typed::<f32>(
                    data_of(&guards[0])?,
                    data_of(&guards[1])?,
                    data_of(&guards[2])?,
                    data_of(&guards[3])?,
                    n,
                ),
                CpuStorage::F64(_) => self.bwd_typed::<f64>(
                    data_of(&guards[0])?,
                    data_of(&guards[1])?,
                    data_of(&guards[2])?,
                    data_of(&guards[3])?,
                    n,
                ),
                other => Err(crate::ops::storage::unsupported_dtype(OP, other)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;
    use crate::testing::{assert_close, grad_check, randn};

    /// Sizes of the test cells: T, B, ninp, H.
    const SIZES: (usize, usize, usize, usize) = (3, 5, 4, 6);

    fn derived_spec(norm: Option<RnnNorm>) -> RnnCellSpec {
        RnnCellSpec {
            nodes: vec![vec![(0, 0)], vec![(1, 1)], vec![(0, 2)], vec![(2, 3)]],
            concat: vec![1, 2, 3, 4],
            norm,
        }
    }

    /// A probability table: softmax rows, or one-hot rows (activation `row % 4 + 1`).
    fn probs(rows: usize, one_hot: bool, dtype: DType) -> Result<Tensor> {
        let dev = &Device::Cpu;
        if one_hot {
            let mut v = vec![0f64; rows * N_PRIMITIVES];
            for r in 0..rows {
                v[r * N_PRIMITIVES + r % 4 + 1] = 1.0;
            }
            return Tensor::from_vec(v, (rows, N_PRIMITIVES), dev)?.to_dtype(dtype);
        }
        candle_nn::ops::softmax(&randn(&[rows, N_PRIMITIVES], dtype, dev)?, 1)
    }

    /// Inputs in the order x, h0, w0, probs, ws..., then the masks (which are not
    /// differentiated).
    fn inputs(steps: usize, rows: usize, one_hot: bool, dtype: DType) -> Result<Vec<Tensor>> {
        let (t, b, ni, h) = SIZES;
        let dev = &Device::Cpu;
        let mut v = vec![
            randn(&[t, b, ni], dtype, dev)?,
            (randn(&[b, h], dtype, dev)? * 0.5)?,
            (randn(&[ni + h, 2 * h], dtype, dev)? * 0.4)?,
            probs(rows, one_hot, dtype)?,
        ];
        for i in 0..steps {
            v.push(((randn(&[h, 2 * h], dtype, dev)? * 0.4)? + 0.01 * i as f64)?);
        }
        Ok(v)
    }

    fn masks(dtype: DType) -> Result<(Tensor, Tensor)> {
        let (_, b, ni, h) = SIZES;
        let dev = &Device::Cpu;
        // Keep about 3 in 4, scaled by 1 / 0.75, from a fixed pattern.
        let pattern = |n: usize, seed: usize| -> Vec<f64> {
            (0..n)
                .map(|i| {
                    if (i * 7 + seed).is_multiple_of(4) {
                        0.0
                    } else {
                        4.0 / 3.0
                    }
                })
                .collect()
        };
        Ok((
            Tensor::from_vec(pattern(b * ni, 1), (b, ni), dev)?.to_dtype(dtype)?,
            Tensor::from_vec(pattern(b * h, 2), (b, h), dev)?.to_dtype(dtype)?,
        ))
    }

    fn run(
        xs: &[Tensor],
        spec: &RnnCellSpec,
        masks: Option<&(Tensor, Tensor)>,
        slow: bool,
    ) -> Result<Tensor> {
        let inputs = RnnSequence {
            x: &xs[0],
            h0: &xs[1],
            w0: &xs[2],
            probs: &xs[3],
            ws: &xs[4..],
            mask_x: masks.map(|m| &m.0),
            mask_h: masks.map(|m| &m.1),
        };
        if slow {
            rnn_sequence_slow(&inputs, spec)
        } else {
            Ok(rnn_sequence(&inputs, spec)?.outputs)
        }
    }

    fn running_norm() -> RnnNorm {
        let h = SIZES.3;
        RnnNorm::Running {
            mean: (0..h).map(|i| 0.1 * i as f64 - 0.2).collect(),
            var: (0..h).map(|i| 0.5 + 0.3 * i as f64).collect(),
            eps: 1e-5,
        }
    }

    /// (name, spec, one-hot probs, masks): the cases every test runs.
    fn cases() -> Vec<(&'static str, RnnCellSpec, bool, bool)> {
        vec![
            (
                "search, batch norm, masks",
                RnnCellSpec::search(3, Some(RnnNorm::Batch { eps: 1e-5 })),
                false,
                true,
            ),
            (
                "search, no norm, no masks",
                RnnCellSpec::search(3, None),
                false,
                false,
            ),
            (
                "search, running norm, masks",
                RnnCellSpec::search(2, Some(running_norm())),
                false,
                true,
            ),
            ("derived, no norm, masks", derived_spec(None), true, true),
            (
                "derived, batch norm, no masks",
                derived_spec(Some(RnnNorm::Batch { eps: 1e-5 })),
                false,
                false,
            ),
        ]
    }

    #[test]
    fn outputs_match_the_step_by_step_reference() -> Result<()> {
        for dtype in [DType::F64, DType::F32] {
            for (name, spec, one_hot, with_masks) in cases() {
                let xs = inputs(spec.nodes.len(), spec.prob_rows(), one_hot, dtype)?;
                let m = masks(dtype)?;
                let m = with_masks.then_some(&m);
                let fast = run(&xs, &spec, m, false)?;
                let slow = run(&xs, &spec, m, true)?;
                let tol = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
                assert_close(&fast, &slow, tol, tol, &format!("{name} ({dtype:?})"))?;
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_the_step_by_step_reference() -> Result<()> {
        for (name, spec, one_hot, with_masks) in cases() {
            let xs = inputs(spec.nodes.len(), spec.prob_rows(), one_hot, DType::F64)?;
            let m = masks(DType::F64)?;
            let m = with_masks.then_some(&m);
            let vars: Vec<Var> = xs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let r = randn(&[SIZES.0, SIZES.1, SIZES.3], DType::F64, &Device::Cpu)?;
            let fast = run(&ts, &spec, m, false)?.mul(&r)?.sum_all()?.backward()?;
            let slow = run(&ts, &spec, m, true)?.mul(&r)?.sum_all()?.backward()?;
            for (i, v) in vars.iter().enumerate() {
                let (Some(a), Some(b)) = (fast.get(v.as_tensor()), slow.get(v.as_tensor())) else {
                    panic!("{name}: input {i} has no gradient");
                };
                assert_close(a, b, 1e-10, 1e-8, &format!("{name}: gradient of input {i}"))?;
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for (name, spec, one_hot, with_masks) in cases() {
            let xs = inputs(spec.nodes.len(), spec.prob_rows(), one_hot, DType::F64)?;
            let m = masks(DType::F64)?;
            let m = with_masks.then_some(&m);
            grad_check(&xs, |xs| run(xs, &spec, m, false), name)?;
        }
        Ok(())
    }

    #[test]
    fn constant_weights_get_no_gradient_and_the_rest_is_unchanged() -> Result<()> {
        let spec = RnnCellSpec::search(3, Some(RnnNorm::Batch { eps: 1e-5 }));
        let xs = inputs(3, spec.prob_rows(), false, DType::F64)?;
        let m = masks(DType::F64)?;
        let x = Var::from_tensor(&xs[0])?;
        let probs = Var::from_tensor(&xs[3])?;
        let r = randn(&[SIZES.0, SIZES.1, SIZES.3], DType::F64, &Device::Cpu)?;
        let mut with_consts = xs.clone();
        with_consts[0] = x.as_tensor().clone();
        with_consts[3] = probs.as_tensor().clone();
        let grads = run(&with_consts, &spec, Some(&m), false)?
            .mul(&r)?
            .sum_all()?
            .backward()?;
        // The reference, with every input a variable.
        let vars: Vec<Var> = xs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let all = run(&ts, &spec, Some(&m), true)?
            .mul(&r)?
            .sum_all()?
            .backward()?;
        for (mine, theirs, what) in [(&x, &vars[0], "x"), (&probs, &vars[3], "probs")] {
            let a = grads.get(mine.as_tensor()).expect("tracked");
            let b = all.get(theirs.as_tensor()).expect("tracked");
            assert_close(a, b, 1e-10, 1e-8, what)?;
        }
        for w in &with_consts[1..3] {
            assert!(grads.get(w).is_none(), "a constant got a gradient");
        }
        // Constant node weights (`probs`), variable matrices: the backward takes the
        // path without the `probs` sums.
        let w0 = Var::from_tensor(&xs[2])?;
        let mut with_consts = xs.clone();
        with_consts[2] = w0.as_tensor().clone();
        let grads = run(&with_consts, &spec, Some(&m), false)?
            .mul(&r)?
            .sum_all()?
            .backward()?;
        assert!(grads.get(&with_consts[3]).is_none());
        assert_close(
            grads.get(w0.as_tensor()).expect("tracked"),
            all.get(vars[2].as_tensor()).expect("tracked"),
            1e-10,
            1e-8,
            "w0 with constant probs",
        )?;
        Ok(())
    }

    #[test]
    fn batch_statistics_are_those_of_every_normalised_state_in_order() -> Result<()> {
        let spec = RnnCellSpec::search(2, Some(RnnNorm::Batch { eps: 1e-5 }));
        let xs = inputs(2, spec.prob_rows(), false, DType::F64)?;
        let out = rnn_sequence(
            &RnnSequence {
                x: &xs[0],
                h0: &xs[1],
                w0: &xs[2],
                probs: &xs[3],
                ws: &xs[4..],
                mask_x: None,
                mask_h: None,
            },
            &spec,
        )?;
        assert_eq!(out.stats.len(), SIZES.0 * 3);
        // State 0 of step 0 by hand: the tanh highway update of h0.
        let ch0 = Tensor::cat(&[&xs[0].get(0)?, &xs[1]], 1)?.matmul(&xs[2])?;
        let tanh = Tensor::new(&[TANH_ROW], &Device::Cpu)?;
        let u0 =
            crate::ops::rnn_node::rnn_node_slow(&xs[1].unsqueeze(0)?, &ch0.unsqueeze(0)?, &tanh)?;
        let mean = u0.mean(0)?;
        let var = u0.broadcast_sub(&mean)?.sqr()?.mean(0)?;
        let first = &out.stats[0];
        assert_eq!(first.count, SIZES.1);
        assert_close(
            &Tensor::new(first.mean.as_slice(), &Device::Cpu)?,
            &mean,
            1e-12,
            0.0,
            "mean",
        )?;
        assert_close(
            &Tensor::new(first.var.as_slice(), &Device::Cpu)?,
            &var,
            1e-12,
            0.0,
            "variance",
        )?;
        Ok(())
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() -> Result<()> {
        let spec = RnnCellSpec::search(3, Some(RnnNorm::Batch { eps: 1e-5 }));
        let run_in = |threads: usize| -> Result<(Vec<f32>, Vec<f32>)> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                let xs = inputs(3, spec.prob_rows(), false, DType::F32)?;
                let m = masks(DType::F32)?;
                let vars: Vec<Var> = xs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
                let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
                let out = run(&ts, &spec, Some(&m), false)?;
                let grads = out.sqr()?.sum_all()?.backward()?;
                let mut g = Vec::new();
                for v in &vars {
                    g.extend(
                        grads
                            .get(v.as_tensor())
                            .expect("grad")
                            .flatten_all()?
                            .to_vec1::<f32>()?,
                    );
                }
                Ok((out.flatten_all()?.to_vec1()?, g))
            })
        };
        assert_eq!(run_in(1)?, run_in(3)?);
        Ok(())
    }

    #[test]
    fn bad_inputs_are_named_in_the_error() -> Result<()> {
        let spec = RnnCellSpec::search(2, None);
        let xs = inputs(2, spec.prob_rows(), false, DType::F32)?;
        let call = |w0: &Tensor, ws: &[Tensor], probs: &Tensor, spec: &RnnCellSpec| {
            rnn_sequence(
                &RnnSequence {
                    x: &xs[0],
                    h0: &xs[1],
                    w0,
                    probs,
                    ws,
                    mask_x: None,
                    mask_h: None,
                },
                spec,
            )
            .map(|_| ())
            .unwrap_err()
            .to_string()
        };
        let e = call(&xs[2].t()?, &xs[4..], &xs[3], &spec);
        assert!(e.contains("w0 [10, 12]"), "{e}");
        let e = call(&xs[2], &xs[4..5], &xs[3], &spec);
        assert!(e.contains("1 node matrices for 2 nodes"), "{e}");
        let e = call(&xs[2], &xs[4..], &xs[3].narrow(0, 0, 2)?, &spec);
        assert!(e.contains("probs [rows >= 3, 5]"), "{e}");
        let mut bad = spec.clone();
        bad.nodes[0] = vec![(1, 0)];
        let e = call(&xs[2], &xs[4..], &xs[3], &bad);
        assert!(e.contains("node 0 reads state 1"), "{e}");
        let mut bad = spec.clone();
        bad.concat = vec![3];
        let e = call(&xs[2], &xs[4..], &xs[3], &bad);
        assert!(e.contains("concat [3]"), "{e}");
        Ok(())
    }
}
