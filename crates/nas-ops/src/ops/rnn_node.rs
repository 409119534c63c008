//! The node update of the DARTS recurrent cell (Liu et al. 2018; reference
//! `rnn/model_search.py`, `DARTSCellSearch.cell`) as one fused candle op with a
//! hand-written, fused backward.
//!
//! Node `i` of the cell reads every earlier state `s_j`, projects it to a gate and a
//! candidate, `[c_j, h_j] = s_j W_j`, and mixes the highway updates of every activation:
//!
//! `s_i = sum_j sum_k p_jk (s_j + sigmoid(c_j) * (f_k(h_j) - s_j))`
//!
//! over the primitives `none, tanh, relu, sigmoid, identity` (`none` contributes zero).
//! The search cell passes softmax weights `p_j = softmax(alpha_j)`; the evaluation cell
//! passes one-hot rows; the forward skips a state whose weights are all zero.
//!
//! With `P_j = sum_k p_jk` and `F_j = sum_k p_jk f_k(h_j)` (k over the four activations):
//! `s_i = sum_j P_j s_j + sigmoid(c_j) (F_j - P_j s_j)`, which the kernels use.

use candle_core::{Device, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::elem::Elem;
use crate::ops::shell::custom_op;
use crate::ops::storage::{cpu_storage, dispatch};

const OP: &str = "rnn_node";
/// `none, tanh, relu, sigmoid, identity`: the columns of `probs`.
const N_PRIMITIVES: usize = 5;

/// The fused node update: `states` `[n, B, H]` (the `n` earlier states), `ch` `[n, B, 2H]`
/// (each state's projection: the first `H` columns are the gate pre-activation `c`, the
/// last `H` the candidate pre-activation `h`), and `probs` `[n, 5]` (per state, the
/// weights of `none, tanh, relu, sigmoid, identity`). Returns `[B, H]`:
///
/// `out[b, x] = sum_j sum_{k=1..4} probs[j, k] * (s + sigmoid(c) * (f_k(h) - s))`
/// with `s = states[j, b, x]`, `c = ch[j, b, x]`, `h = ch[j, b, H + x]`.
///
/// Differentiable in all three inputs; `relu'(0) = 0`, as in PyTorch. f32 or f64; on the
/// CPU, or on a CUDA device in a build with the `cuda` feature.
pub fn rnn_node(states: &Tensor, ch: &Tensor, probs: &Tensor) -> Result<Tensor> {
    let geom = Geometry::new(states, ch, probs)?;
    for t in [states, ch, probs] {
        let supported = t.device().is_cpu() || (cfg!(feature = "cuda") && t.device().is_cuda());
        if !supported {
            return Err(Error::Unsupported {
                op: OP,
                message: format!(
                    "only the CPU{} is supported, got an input on {:?}",
                    if cfg!(feature = "cuda") {
                        " and CUDA"
                    } else {
                        ""
                    },
                    t.device().location()
                ),
            }
            .into());
        }
    }
    states
        .contiguous()?
        .apply_op3(&ch.contiguous()?, &probs.contiguous()?, RnnNode { geom })
}

/// The plain-tensor reference of [`rnn_node`], written as the DARTS reference code
/// writes it: one highway update per primitive, weighted and summed over the states.
pub fn rnn_node_slow(states: &Tensor, ch: &Tensor, probs: &Tensor) -> Result<Tensor> {
    let geom = Geometry::new(states, ch, probs)?;
    let c = ch.narrow(2, 0, geom.hidden)?;
    let h = ch.narrow(2, geom.hidden, geom.hidden)?;
    let gate = candle_nn::ops::sigmoid(&c)?;
    // `h * [h > 0]`: the mask is not differentiated, so relu'(0) = 0 as in PyTorch
    // (candle's `relu` has gradient 1 at 0).
    let relu = h.mul(&h.gt(0.0)?.to_dtype(h.dtype())?)?;
    let activations = [h.tanh()?, relu, candle_nn::ops::sigmoid(&h)?, h.clone()];
    let mut out = states.zeros_like()?;
    for (k, f) in activations.iter().enumerate() {
        let unweighted = (states + gate.mul(&(f - states)?)?)?;
        let weight = probs.narrow(1, k + 1, 1)?.unsqueeze(2)?;
        out = (out + unweighted.broadcast_mul(&weight)?)?;
    }
    out.sum(0)
}

/// The sizes of one node update.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// Earlier states the node reads (`n`).
    n_states: usize,
    /// Batch (`B`).
    batch: usize,
    /// Hidden size (`H`).
    hidden: usize,
}

impl Geometry {
    fn new(states: &Tensor, ch: &Tensor, probs: &Tensor) -> Result<Self> {
        let &[n_states, batch, hidden] = states.dims() else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "states [n, B, H]".to_string(),
                got: states.dims().to_vec(),
            }
            .into());
        };
        if ch.dims() != [n_states, batch, 2 * hidden] {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: format!(
                    "ch [{n_states}, {batch}, {}] (gate and candidate pre-activations of \
                     states [{n_states}, {batch}, {hidden}])",
                    2 * hidden
                ),
                got: ch.dims().to_vec(),
            }
            .into());
        }
        if probs.dims() != [n_states, N_PRIMITIVES] {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: format!(
                    "probs [{n_states}, {N_PRIMITIVES}] (weights of none, tanh, relu, sigmoid, \
                     identity for {n_states} states)"
                ),
                got: probs.dims().to_vec(),
            }
            .into());
        }
        Ok(Geometry {
            n_states,
            batch,
            hidden,
        })
    }
}

/// One state's weights over the four activations (`none` dropped), and their sum `P_j`.
#[derive(Clone, Copy)]
pub(crate) struct NodeWeights<T> {
    tanh: T,
    relu: T,
    sigmoid: T,
    identity: T,
    total: T,
}

impl<T: Elem> NodeWeights<T> {
    /// From one row of `probs` (`none, tanh, relu, sigmoid, identity`).
    pub(crate) fn of(row: &[T]) -> Self {
        let (tanh, relu, sigmoid, identity) = (row[1], row[2], row[3], row[4]);
        NodeWeights {
            tanh,
            relu,
            sigmoid,
            identity,
            total: tanh + relu + sigmoid + identity,
        }
    }

    /// Whether any activation has a non-zero weight (otherwise the state adds exactly 0).
    pub(crate) fn any(&self) -> bool {
        [self.tanh, self.relu, self.sigmoid, self.identity]
            .iter()
            .any(|w| !w.is_zero())
    }
}

#[inline(always)]
fn sigmoid<T: Elem>(x: T) -> T {
    T::one() / (T::one() + (-x).exp_v())
}

#[inline(always)]
fn relu<T: Elem>(x: T) -> T {
    if x > T::zero() {
        x
    } else {
        T::zero()
    }
}

/// `[B, H]`, one parallel task per output row `b`, reading row `b` of every state.
fn forward<T: Elem>(g: &Geometry, s: &[T], ch: &[T], p: &[T]) -> Vec<T> {
    let (h, b) = (g.hidden, g.batch);
    let mut out = vec![T::zero(); b * h];
    if h == 0 {
        return out;
    }
    let weights: Vec<NodeWeights<T>> = p.chunks(N_PRIMITIVES).map(NodeWeights::of).collect();
    out.par_chunks_mut(h).enumerate().for_each(|(bi, y)| {
        for (j, w) in weights.iter().enumerate() {
            if !w.any() {
                continue;
            }
            let row = j * b + bi;
            let (cr, hr) = ch[row * 2 * h..(row + 1) * 2 * h].split_at(h);
            row_forward(w, y, &s[row * h..(row + 1) * h], cr, hr);
        }
    });
    out
}

/// Adds one state's weighted highway updates to the output row `y`: with `s = sr[x]`,
/// `c = cr[x]`, `h = hr[x]`, `y[x] += P s + sigmoid(c) (F(h) - P s)`. Branch-free (every
/// activation is evaluated; a zero weight adds exactly 0 for finite inputs), so the loop
/// vectorises.
#[inline(always)]
pub(crate) fn row_forward<T: Elem>(w: &NodeWeights<T>, y: &mut [T], sr: &[T], cr: &[T], hr: &[T]) {
    row_forward_with::<T, false>(w, y, sr, cr, hr)
}

/// [`row_forward`] with a row of gates `sigmoid(c)` (from [`gates_in_place`]) for `cr`.
#[inline(always)]
pub(crate) fn row_forward_gated<T: Elem>(
    w: &NodeWeights<T>,
    y: &mut [T],
    sr: &[T],
    gates: &[T],
    hr: &[T],
) {
    row_forward_with::<T, true>(w, y, sr, gates, hr)
}

#[inline(always)]
fn row_forward_with<T: Elem, const GATED: bool>(
    w: &NodeWeights<T>,
    y: &mut [T],
    sr: &[T],
    cr: &[T],
    hr: &[T],
) {
    for (((yv, &sv), &cv), &hv) in y.iter_mut().zip(sr).zip(cr).zip(hr) {
        let (t, sh) = hv.tanh_sigmoid_v();
        let f = w.tanh * t + w.relu * relu(hv) + w.sigmoid * sh + w.identity * hv;
        let ps = w.total * sv;
        let gate = if GATED { cv } else { sigmoid(cv) };
        *yv = *yv + ps + gate * (f - ps);
    }
}

/// Replaces the `c` half of every `[c, h]` row (`2 h` wide) by its gate `sigmoid(c)`:
/// a tape that keeps gates instead of `c` spares the backward pass one exponential per
/// element (it needs `c` only through its gate).
pub(crate) fn gates_in_place<T: Elem>(ch: &mut [T], h: usize) {
    if h == 0 {
        return;
    }
    ch.par_chunks_mut(2 * h).for_each(|row| {
        for c in &mut row[..h] {
            *c = sigmoid(*c);
        }
    });
}

/// The backward pass of one row `(j, b)`: writes `d s`, `d c`, `d h` and returns the row's
/// four `d p_k` sums (tanh, relu, sigmoid, identity). First one element-wise pass with no
/// reduction and no bounds checks (every slice is cut to `h`), which vectorises, writing
/// each element's `d p_k` terms to `terms` (`4 h`); then per term a sum over 8 lanes,
/// finished in f64.
///
/// With `GATED`, `cr` holds the gates `sigmoid(c)` ([`gates_in_place`]) instead of `c`.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[inline(always)]
pub(crate) fn row_backward<T: Elem, const GATED: bool>(
    w: &NodeWeights<T>,
    gr: &[T],
    sr: &[T],
    cr: &[T],
    hr: &[T],
    ds: &mut [T],
    dc: &mut [T],
    dh: &mut [T],
    terms: &mut [T],
) -> [f64; 4] {
    let h = gr.len();
    let (sr, cr, hr) = (&sr[..h], &cr[..h], &hr[..h]);
    let (ds, dc, dh) = (&mut ds[..h], &mut dc[..h], &mut dh[..h]);
    let (t_tanh, rest) = terms[..4 * h].split_at_mut(h);
    let (t_relu, rest) = rest.split_at_mut(h);
    let (t_sig, t_id) = rest.split_at_mut(h);
    let t_id = &mut t_id[..h];
    for x in 0..h {
        let gate = if GATED { cr[x] } else { sigmoid(cr[x]) };
        let e = element_backward(w, gr[x], sr[x], gate, hr[x]);
        (ds[x], dc[x], dh[x]) = (e.ds, e.dc, e.dh);
        t_tanh[x] = e.base + e.g_gate * e.tanh;
        t_relu[x] = e.base + e.g_gate * e.relu;
        t_sig[x] = e.base + e.g_gate * e.sigmoid;
        t_id[x] = e.base + e.g_gate * hr[x];
    }
    let mut out = [0f64; 4];
    for (o, buf) in out.iter_mut().zip([&*t_tanh, &*t_relu, &*t_sig, &*t_id]) {
        *o = lane_sum(buf);
    }
    out
}

/// [`row_backward`] without the `d p_k` sums, for callers whose weights are constants.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn row_backward_inputs<T: Elem, const GATED: bool>(
    w: &NodeWeights<T>,
    gr: &[T],
    sr: &[T],
    cr: &[T],
    hr: &[T],
    ds: &mut [T],
    dc: &mut [T],
    dh: &mut [T],
) {
    let h = gr.len();
    let (sr, cr, hr) = (&sr[..h], &cr[..h], &hr[..h]);
    let (ds, dc, dh) = (&mut ds[..h], &mut dc[..h], &mut dh[..h]);
    for x in 0..h {
        let gate = if GATED { cr[x] } else { sigmoid(cr[x]) };
        let e = element_backward(w, gr[x], sr[x], gate, hr[x]);
        (ds[x], dc[x], dh[x]) = (e.ds, e.dc, e.dh);
    }
}

/// One element's gradients (`g` the output gradient, `s` the state, `gate = sigmoid(c)`
/// and `h` the pre-activation), and what the `d p_k` terms are made of:
/// `d p_k = base + g_gate * f_k(h)`.
struct ElementGrad<T> {
    ds: T,
    dc: T,
    dh: T,
    base: T,
    g_gate: T,
    tanh: T,
    relu: T,
    sigmoid: T,
}

#[inline(always)]
fn element_backward<T: Elem>(w: &NodeWeights<T>, gv: T, sv: T, gate: T, hv: T) -> ElementGrad<T> {
    let one = T::one();
    let (t, sh) = hv.tanh_sigmoid_v();
    let r = relu(hv);
    let f = w.tanh * t + w.relu * r + w.sigmoid * sh + w.identity * hv;
    let ps = w.total * sv;
    let relu_slope = if hv > T::zero() { w.relu } else { T::zero() };
    let df = w.tanh * (one - t * t) + relu_slope + w.sigmoid * sh * (one - sh) + w.identity;
    let g_gate = gv * gate;
    ElementGrad {
        ds: gv * w.total * (one - gate),
        dc: gv * gate * (one - gate) * (f - ps),
        dh: g_gate * df,
        base: gv * (one - gate) * sv,
        g_gate,
        tanh: t,
        relu: r,
        sigmoid: sh,
    }
}

/// The sum of `v`: 8 lane sums in `T` (a loop that vectorises), added in f64 in order.
#[inline(always)]
fn lane_sum<T: Elem>(v: &[T]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [T::zero(); LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = *l + x;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|x| x.as_f64()).sum();
    lanes.iter().map(|x| x.as_f64()).sum::<f64>() + tail
}

/// The gradients of one node update.
struct Grads<T> {
    /// `[n, B, H]`.
    states: Vec<T>,
    /// `[n, B, 2H]`.
    ch: Vec<T>,
    /// `[n, 5]`.
    probs: Vec<T>,
}

/// One pass over the rows `(j, b)` of the states: with `g = dy[b]` and `sig = sigmoid(c)`,
///
/// - `d s = g P (1 - sig)`
/// - `d c = g sig (1 - sig) (F - P s)`
/// - `d h = g sig sum_k p_k f_k'(h)`
/// - `d p_k = sum_{b, x} g (s + sig (f_k(h) - s))` (0 for `none`), accumulated per row in
///   f64 and summed over the rows in order (deterministic).
///
/// Every activation is evaluated here, even at weight zero: `d p_k` needs it.
fn backward<T: Elem>(g: &Geometry, dy: &[T], s: &[T], ch: &[T], p: &[T]) -> Grads<T> {
    let (h, b) = (g.hidden, g.batch);
    let rows = g.n_states * b;
    let mut d_states = vec![T::zero(); rows * h];
    let mut d_ch = vec![T::zero(); rows * 2 * h];
    let mut d_probs = vec![T::zero(); g.n_states * N_PRIMITIVES];
    if h == 0 {
        return Grads {
            states: d_states,
            ch: d_ch,
            probs: d_probs,
        };
    }
    // Per row `(j, b)`: `d p_k` for tanh, relu, sigmoid, identity.
    let partial: Vec<[f64; 4]> = d_states
        .par_chunks_mut(h)
        .zip(d_ch.par_chunks_mut(2 * h))
        .enumerate()
        .map_init(
            || vec![T::zero(); 4 * h],
            |terms, (row, (ds, dch))| {
                let (j, bi) = (row / b, row % b);
                let w = NodeWeights::of(&p[j * N_PRIMITIVES..(j + 1) * N_PRIMITIVES]);
                let (dc, dh) = dch.split_at_mut(h);
                let (cr, hr) = ch[row * 2 * h..(row + 1) * 2 * h].split_at(h);
                row_backward::<T, false>(
                    &w,
                    &dy[bi * h..(bi + 1) * h],
                    &s[row * h..(row + 1) * h],
                    cr,
                    hr,
                    ds,
                    dc,
                    dh,
                    terms,
                )
            },
        )
        .collect();
    let mut sums = vec![[0f64; 4]; g.n_states];
    for (row, acc) in partial.iter().enumerate() {
        for (total, a) in sums[row / b].iter_mut().zip(acc) {
            *total += a;
        }
    }
    for (dp, sum) in d_probs.chunks_mut(N_PRIMITIVES).zip(&sums) {
        for (d, &v) in dp[1..].iter_mut().zip(sum) {
            *d = T::of_f64(v);
        }
    }
    Grads {
        states: d_states,
        ch: d_ch,
        probs: d_probs,
    }
}

/// The CPU storage of a tensor, or the op's unsupported-device error.
struct RnnNode {
    geom: Geometry,
}

impl RnnNode {
    /// The fused backward: one kernel reads `dy` and the three inputs and writes the three
    /// gradients (a custom op has one output and at most three inputs, so this reads the
    /// storages directly).
    fn backward(
        &self,
        dy: &Tensor,
        states: &Tensor,
        ch: &Tensor,
        probs: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        if !dy.device().is_cpu() {
            return self.backward_packed(dy, states, ch, probs);
        }
        let g = &self.geom;
        let (dy_storage, dy_layout) = dy.storage_and_layout();
        let (s_storage, s_layout) = states.storage_and_layout();
        let (ch_storage, ch_layout) = ch.storage_and_layout();
        let (p_storage, p_layout) = probs.storage_and_layout();
        let dy_cpu = cpu_storage(&dy_storage, OP)?;
        let s_cpu = cpu_storage(&s_storage, OP)?;
        let ch_cpu = cpu_storage(&ch_storage, OP)?;
        let p_cpu = cpu_storage(&p_storage, OP)?;
        dispatch!(
            OP,
            [(dy_cpu, dy_layout) => dy, (s_cpu, s_layout) => s, (ch_cpu, ch_layout) => c,
             (p_cpu, p_layout) => p],
            |T| {
                let grads = backward::<T>(g, dy, s, c, p);
                let (n, b, h) = (g.n_states, g.batch, g.hidden);
                Ok((
                    Tensor::from_vec(grads.states, (n, b, h), &Device::Cpu)?,
                    Tensor::from_vec(grads.ch, (n, b, 2 * h), &Device::Cpu)?,
                    Tensor::from_vec(grads.probs, (n, N_PRIMITIVES), &Device::Cpu)?,
                ))
            }
        )
    }
}

impl RnnNode {
    /// The backward pass as one custom op with one output (how it runs on a GPU, where
    /// the storages cannot be read directly): `(dy, states, ch)` to the three gradients
    /// packed in one buffer, then cut apart. `probs` (a few values) travels in the op.
    fn backward_packed(
        &self,
        dy: &Tensor,
        states: &Tensor,
        ch: &Tensor,
        probs: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let g = self.geom;
        let probs: Vec<f64> = probs
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let packed = dy.apply_op3_no_bwd(states, ch, &RnnNodeBackward { geom: g, probs })?;
        let (n, b, h) = (g.n_states, g.batch, g.hidden);
        let len = n * b * h;
        Ok((
            packed.narrow(0, 0, len)?.reshape((n, b, h))?,
            packed.narrow(0, len, 2 * len)?.reshape((n, b, 2 * h))?,
            packed
                .narrow(0, 3 * len, n * N_PRIMITIVES)?
                .reshape((n, N_PRIMITIVES))?,
        ))
    }
}

/// `(dy, states, ch) -> [d states, d ch, d probs]`, flattened and concatenated.
struct RnnNodeBackward {
    geom: Geometry,
    /// `probs` `[n, 5]`, row-major.
    probs: Vec<f64>,
}

custom_op! {
    RnnNodeBackward: CustomOp3 = "rnn_node_backward";
    cpu(&self, s1, l1, s2, l2, s3, l3) {
        let g = &self.geom;
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => s, (s3, l3) => ch], |T| {
            let p: Vec<T> = self.probs.iter().map(|&v| T::of_f64(v)).collect();
            let grads = backward::<T>(g, dy, s, ch, &p);
            let mut packed = grads.states;
            packed.extend(grads.ch);
            packed.extend(grads.probs);
            let len = packed.len();
            Ok((T::storage(packed), Shape::from(len)))
        })
    }
    cuda(&self, s1, l1, s2, l2, s3, l3) {
        use crate::cuda::{self, int, kernels::RNN_NODE, Launch, PushKernelArg};
        let (g, dev) = (&self.geom, &s1.device);
        let (n, b, h) = (int(g.n_states, OP)?, int(g.batch, OP)?, int(g.hidden, OP)?);
        let len = g.n_states * g.batch * g.hidden;
        let total = 3 * len + g.n_states * N_PRIMITIVES;
        cuda::cuda_dispatch!(OP, [(s1, l1) => dy, (s2, l2) => s, (s3, l3) => ch], |T| {
            let p: Vec<T> = self
                .probs
                .iter()
                .map(|&v| <T as candle_core::WithDType>::from_f64(v))
                .collect();
            let p = cuda::upload(dev, &p)?;
            let mut grads = cuda::output::<T>(dev, total)?;
            let k = cuda::kernel::<T>(dev, &RNN_NODE, "rnn_node_bwd", Launch::Elements(len))?;
            let mut args = k.args();
            args.arg(&dy).arg(&s).arg(&ch).arg(&p).arg(&mut grads);
            args.arg(&n).arg(&b).arg(&h);
            k.launch(args)?;
            let k = cuda::kernel::<T>(dev, &RNN_NODE, "rnn_node_pgrad", Launch::Blocks(g.n_states))?;
            let mut args = k.args();
            args.arg(&dy).arg(&s).arg(&ch).arg(&mut grads).arg(&n).arg(&b).arg(&h);
            k.launch(args)?;
            Ok((cuda::storage(grads, dev), Shape::from(total)))
        })
    }
}

custom_op! {
    RnnNode: CustomOp3 = OP;
    cpu(&self, s1, l1, s2, l2, s3, l3) {
        let g = &self.geom;
        dispatch!(OP, [(s1, l1) => s, (s2, l2) => ch, (s3, l3) => p], |T| {
            Ok((
                T::storage(forward::<T>(g, s, ch, p)),
                Shape::from((g.batch, g.hidden)),
            ))
        })
    }
    cuda(&self, s1, l1, s2, l2, s3, l3) {
        use crate::cuda::{self, int, kernels::RNN_NODE, Launch, PushKernelArg};
        let (g, dev) = (&self.geom, &s1.device);
        let (n, b, h) = (int(g.n_states, OP)?, int(g.batch, OP)?, int(g.hidden, OP)?);
        let len = g.batch * g.hidden;
        cuda::cuda_dispatch!(OP, [(s1, l1) => s, (s2, l2) => ch, (s3, l3) => p], |T| {
            let mut out = cuda::output::<T>(dev, len)?;
            let k = cuda::kernel::<T>(dev, &RNN_NODE, "rnn_node_fwd", Launch::Elements(len))?;
            let mut args = k.args();
            args.arg(&s).arg(&ch).arg(&p).arg(&mut out).arg(&n).arg(&b).arg(&h);
            k.launch(args)?;
            Ok((cuda::storage(out, dev), Shape::from((g.batch, g.hidden))))
        })
    }
    extra {
        fn bwd(
            &self,
            states: &Tensor,
            ch: &Tensor,
            probs: &Tensor,
            _out: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let dy = dy.contiguous()?;
            let (d_states, d_ch, d_probs) = self.backward(&dy, states, ch, probs)?;
            Ok((Some(d_states), Some(d_ch), Some(d_probs)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_check, randn};
    use candle_core::{DType, Var};

    /// Softmax rows of `[n, 5]`, as the search cell passes.
    fn softmax_probs(n: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
        candle_nn::ops::softmax(&randn(&[n, N_PRIMITIVES], dtype, dev)?, 1)
    }

    /// One-hot rows cycling through `none, tanh, relu, sigmoid, identity`, as the
    /// evaluation cell passes.
    fn one_hot_probs(n: usize, offset: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = vec![0f64; n * N_PRIMITIVES];
        for j in 0..n {
            data[j * N_PRIMITIVES + (j + offset) % N_PRIMITIVES] = 1.0;
        }
        Tensor::from_vec(data, (n, N_PRIMITIVES), dev)?.to_dtype(dtype)
    }

    /// `ch [n, B, 2H]` whose candidate half holds values near 0 (and exact zeros when
    /// `zeros` is set), so relu's kink is exercised.
    fn pre_activations(n: usize, b: usize, h: usize, dtype: DType, zeros: bool) -> Result<Tensor> {
        let dev = Device::Cpu;
        let mut data: Vec<f64> = randn(&[n, b, 2 * h], DType::F64, &dev)?
            .flatten_all()?
            .to_vec1()?;
        let near_zero = [1e-3, -1e-3, 2e-2, -2e-2, 0.0];
        for (i, row) in data.chunks_mut(2 * h).enumerate() {
            for (x, v) in row[h..].iter_mut().enumerate() {
                if (i + x) % 3 == 0 {
                    let z = near_zero[(i + x) % near_zero.len()];
                    *v = if z == 0.0 && !zeros { 5e-3 } else { z };
                }
            }
        }
        Tensor::from_vec(data, (n, b, 2 * h), &dev)?.to_dtype(dtype)
    }

    #[test]
    fn rnn_node_forward_matches_slow_reference() -> Result<()> {
        let dev = Device::Cpu;
        let (n, b, h) = (3, 5, 7);
        let states = randn(&[n, b, h], DType::F32, &dev)?;
        let ch = pre_activations(n, b, h, DType::F32, true)?;
        let mut cases = vec![("softmax", softmax_probs(n, DType::F32, &dev)?)];
        for offset in 0..N_PRIMITIVES {
            cases.push(("one-hot", one_hot_probs(n, offset, DType::F32, &dev)?));
        }
        for (what, probs) in &cases {
            let fused = rnn_node(&states, &ch, probs)?;
            assert_eq!(fused.dims(), [b, h]);
            let slow = rnn_node_slow(&states, &ch, probs)?;
            assert_close(&fused, &slow, 1e-6, 1e-5, what)?;
        }
        // All `none`: exactly zero.
        let none = Tensor::from_vec(vec![1f32, 0., 0., 0., 0.], (1, N_PRIMITIVES), &dev)?
            .repeat((n, 1))?;
        let zero = rnn_node(&states, &ch, &none)?;
        assert_eq!(zero.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        // Non-contiguous inputs are made contiguous by the wrapper.
        let ch_t = ch.transpose(0, 1)?.contiguous()?.transpose(0, 1)?;
        assert!(!ch_t.is_contiguous());
        assert_close(
            &rnn_node(&states, &ch_t, &cases[0].1)?,
            &rnn_node_slow(&states, &ch, &cases[0].1)?,
            1e-6,
            1e-5,
            "non-contiguous ch",
        )
    }

    #[test]
    fn rnn_node_gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let (n, b, h) = (3, 3, 5);
        let states = randn(&[n, b, h], DType::F64, &dev)?;
        let ch = pre_activations(n, b, h, DType::F64, false)?;
        // Unnormalised weights, as a general op.
        let probs = randn(&[n, N_PRIMITIVES], DType::F64, &dev)?;
        grad_check(
            &[states.clone(), ch.clone(), probs],
            |v| rnn_node(&v[0], &v[1], &v[2]),
            "rnn_node (dense weights)",
        )?;
        // One-hot rows (including an all-`none` one): the forward skips zero weights, but
        // the gradient to every weight must still be there.
        let probs = one_hot_probs(n, 0, DType::F64, &dev)?;
        grad_check(
            &[states, ch, probs],
            |v| rnn_node(&v[0], &v[1], &v[2]),
            "rnn_node (one-hot weights)",
        )
    }

    #[test]
    fn rnn_node_backward_matches_slow_reference() -> Result<()> {
        let dev = Device::Cpu;
        let (n, b, h) = (8, 16, 32);
        let states = Var::from_tensor(&randn(&[n, b, h], DType::F32, &dev)?)?;
        // Exact zeros in `h`: relu'(0) must be 0 in both.
        let ch = Var::from_tensor(&pre_activations(n, b, h, DType::F32, true)?)?;
        let probs = Var::from_tensor(&softmax_probs(n, DType::F32, &dev)?)?;
        let upstream = randn(&[b, h], DType::F32, &dev)?;
        let inputs = [&states, &ch, &probs];
        let grads_of = |f: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| -> Result<Vec<_>> {
            let out = f(states.as_tensor(), ch.as_tensor(), probs.as_tensor())?;
            let grads = out.mul(&upstream)?.sum_all()?.backward()?;
            inputs
                .iter()
                .map(|v| {
                    grads
                        .get(v.as_tensor())
                        .cloned()
                        .ok_or_else(|| candle_core::Error::Msg("missing gradient".into()))
                })
                .collect()
        };
        let fused = grads_of(rnn_node)?;
        let slow = grads_of(rnn_node_slow)?;
        for (name, (f, s)) in ["states", "ch", "probs"]
            .iter()
            .zip(fused.iter().zip(&slow))
        {
            assert_close(f, s, 1e-5, 1e-4, &format!("d {name}"))?;
        }
        // `none` gets no gradient, the activations do.
        let d_probs: Vec<Vec<f32>> = fused[2].to_vec2()?;
        assert!(d_probs.iter().all(|row| row[0] == 0.0 && row[1] != 0.0));
        Ok(())
    }

    #[test]
    fn packed_backward_equals_the_direct_one() -> Result<()> {
        // The packed form (the GPU's) cuts the same three gradients out of one buffer.
        let dev = Device::Cpu;
        let (n, b, h) = (3, 4, 5);
        let states = randn(&[n, b, h], DType::F64, &dev)?;
        let ch = pre_activations(n, b, h, DType::F64, true)?;
        let probs = softmax_probs(n, DType::F64, &dev)?;
        let dy = randn(&[b, h], DType::F64, &dev)?;
        let op = RnnNode {
            geom: Geometry::new(&states, &ch, &probs)?,
        };
        let direct = op.backward(&dy, &states, &ch, &probs)?;
        let packed = op.backward_packed(&dy, &states, &ch, &probs)?;
        for (what, a, b) in [
            ("states", &direct.0, &packed.0),
            ("ch", &direct.1, &packed.1),
            ("probs", &direct.2, &packed.2),
        ] {
            assert_eq!(a.dims(), b.dims(), "{what}");
            let (a, b): (Vec<f64>, Vec<f64>) =
                (a.flatten_all()?.to_vec1()?, b.flatten_all()?.to_vec1()?);
            assert_eq!(a, b, "{what}");
        }
        Ok(())
    }

    #[test]
    fn rnn_node_backward_is_deterministic() -> Result<()> {
        let dev = Device::Cpu;
        let (n, b, h) = (4, 64, 33);
        let states = Var::from_tensor(&randn(&[n, b, h], DType::F32, &dev)?)?;
        let ch = randn(&[n, b, 2 * h], DType::F32, &dev)?;
        let probs = Var::from_tensor(&softmax_probs(n, DType::F32, &dev)?)?;
        let d_probs = || -> Result<Vec<Vec<f32>>> {
            let out = rnn_node(states.as_tensor(), &ch, probs.as_tensor())?;
            let grads = out.sum_all()?.backward()?;
            grads
                .get(probs.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("missing gradient".into()))?
                .to_vec2()
        };
        let first = d_probs()?;
        for _ in 0..3 {
            assert_eq!(d_probs()?, first);
        }
        Ok(())
    }

    #[test]
    fn rnn_node_shapes_are_checked() -> Result<()> {
        let dev = Device::Cpu;
        let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &dev);
        let states = zeros(&[3, 2, 4])?;
        let ch = zeros(&[3, 2, 8])?;
        let probs = zeros(&[3, 5])?;
        let cases = [
            (
                zeros(&[3, 8])?,
                ch.clone(),
                probs.clone(),
                "rnn_node: expected states [n, B, H], got shape [3, 8]",
            ),
            (
                states.clone(),
                zeros(&[3, 2, 4])?,
                probs.clone(),
                "rnn_node: expected ch [3, 2, 8] (gate and candidate pre-activations of \
                 states [3, 2, 4]), got shape [3, 2, 4]",
            ),
            (
                states.clone(),
                ch.clone(),
                zeros(&[3, 4])?,
                "rnn_node: expected probs [3, 5] (weights of none, tanh, relu, sigmoid, \
                 identity for 3 states), got shape [3, 4]",
            ),
        ];
        for (s, c, p, message) in &cases {
            for f in [rnn_node, rnn_node_slow] {
                let err = f(s, c, p).expect_err("a shape mismatch").to_string();
                assert!(err.contains(message), "{err}");
            }
        }
        let err = rnn_node(&states, &ch, &probs.to_dtype(DType::F64)?)
            .expect_err("a dtype mismatch")
            .to_string();
        assert!(
            err.contains("rnn_node: inputs must share one dtype"),
            "{err}"
        );
        Ok(())
    }
}
