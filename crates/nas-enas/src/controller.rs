//! The ENAS micro controller (`MicroController` of the reference
//! `src/cifar10/micro_controller.py`): an LSTM without biases that samples a normal cell
//! and then a reduction cell, node by node, each node choosing two earlier states by
//! attention over their anchors and two of the five operations.
//!
//! Per cell: two warm-up steps for the two inputs (their anchors are zero vectors, their
//! attention keys the warm-up hidden states), then per node five steps: index x, index y,
//! op x, op y (the sampling order), then one anchor step on the embedding of op y. The arc
//! is stored per node as `[x_index, x_op, y_index, y_op]` (ENAS's layout). The reduction
//! cell continues from the normal cell's LSTM state. Index logits are
//! `tanh_constant * tanh(v^T tanh(W_1 h_j + W_2 h_t))`, op logits
//! `(tanh_constant / op_tanh_reduce) * tanh(W_soft h + b_soft)`, plus the constant
//! `[0.25, 0.25, -0.25, -0.25, -0.25]` in the normal cell; `b_soft` starts at
//! `[10, 10, 0, 0, 0]`; every other variable uniform in [-0.1, 0.1]. See
//! docs/enas-reference.md, section 1.
//!
//! Many arcs are run at once (a batch dimension): sampling draws each row from its own
//! generator, so a batch samples what the same rows would sample one by one.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, VarBuilder};
use nas_search_space::EnasMicroGenotype;
use nas_train::ParamStore;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The number of operations of the micro space (sep 3x3, sep 5x5, avg 3x3, max 3x3, identity).
pub const NUM_OPS: usize = 5;

/// The learnable op bias's first value (`b_soft`, mc:100-104).
const B_SOFT_INIT: [f64; NUM_OPS] = [10.0, 10.0, 0.0, 0.0, 0.0];

/// The constant op bias of normal cells (`b_soft_no_learn`, mc:106-109).
const B_SOFT_NO_LEARN: [f64; NUM_OPS] = [0.25, 0.25, -0.25, -0.25, -0.25];

/// The controller's sizes and logit shaping (reference defaults of the CIFAR-10 micro
/// search script).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// LSTM units (64 in the reference scripts; the paper says 100).
    pub lstm_size: usize,
    /// Stacked LSTM layers (1).
    pub lstm_layers: usize,
    /// Nodes per cell (5).
    pub nodes: usize,
    /// Logits pass `c * tanh(logits)` (1.1; 0: off).
    pub tanh_constant: f64,
    /// Op logits use `tanh_constant / op_tanh_reduce` (2.5).
    pub op_tanh_reduce: f64,
    /// Logits are divided by it first (0: off, as in the reference scripts).
    pub temperature: f64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            lstm_size: 64,
            lstm_layers: 1,
            nodes: 5,
            tanh_constant: 1.1,
            op_tanh_reduce: 2.5,
            temperature: 0.0,
        }
    }
}

impl ControllerConfig {
    /// Checks the sizes; the message names the key under `prefix`.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let checks = [
            (self.lstm_size >= 1, "lstm_size must be at least 1"),
            (self.lstm_layers >= 1, "lstm_layers must be at least 1"),
            (self.nodes >= 1, "nodes must be at least 1"),
            (self.tanh_constant >= 0.0, "tanh_constant must be >= 0"),
            (self.op_tanh_reduce > 0.0, "op_tanh_reduce must be positive"),
            (self.temperature >= 0.0, "temperature must be >= 0"),
        ];
        for (ok, message) in checks {
            if !ok {
                return Err(Error::Config(format!("{prefix}{message}")));
            }
        }
        Ok(())
    }

    /// Integers of one arc: 4 per node, normal then reduction cell.
    pub fn arc_len(&self) -> usize {
        8 * self.nodes
    }

    /// Trainable parameters: the LSTM (`[2H, 4H]` per layer, no bias), the start and op
    /// embeddings, the op softmax and its bias, and the attention (`W_1`, `W_2`, `v`).
    pub fn parameters(&self) -> usize {
        let h = self.lstm_size;
        self.lstm_layers * 2 * h * 4 * h + h + NUM_OPS * h + h * NUM_OPS + NUM_OPS + 2 * h * h + h
    }
}

/// What a run of the controller gives for each of its arcs.
#[derive(Debug, Clone)]
pub struct Decisions {
    /// The arcs (ENAS's layout, normal then reduction cell).
    pub arcs: Vec<Vec<usize>>,
    /// `-log p(arc)` per arc, `[arcs]`, differentiable in the controller's variables.
    pub nll: Tensor,
    /// The summed entropy of every decision's distribution, per arc.
    pub entropy: Vec<f64>,
    /// `log p(arc)` per arc, as a number.
    pub log_prob: Vec<f64>,
    /// Per arc, every decision's probabilities, in sampling order.
    pub probs: Vec<Vec<Vec<f64>>>,
}

impl Decisions {
    /// Arc `i` as a genotype.
    pub fn genotype(&self, i: usize) -> Result<EnasMicroGenotype> {
        arc_genotype(&self.arcs[i])
    }
}

/// An arc of integers as a genotype.
pub fn arc_genotype(arc: &[usize]) -> Result<EnasMicroGenotype> {
    Ok(EnasMicroGenotype::from_arc(
        &nas_search_space::arc::to_string(arc),
    )?)
}

/// Where the choices come from.
pub enum Choices<'a, R> {
    /// Drawn from the controller's distributions, row `i` from generator `i`.
    Sample(&'a mut [R]),
    /// Given arcs (to score them).
    Given(&'a [Vec<usize>]),
}

/// The controller's variables.
#[derive(Debug, Clone)]
pub struct MicroController {
    cfg: ControllerConfig,
    lstm: Vec<Tensor>,
    g_emb: Tensor,
    w_emb: Tensor,
    w_soft: Tensor,
    b_soft: Tensor,
    b_soft_no_learn: Tensor,
    w_attn_1: Tensor,
    w_attn_2: Tensor,
    v_attn: Tensor,
}

/// One LSTM layer's state.
struct State {
    c: Tensor,
    h: Tensor,
}

impl MicroController {
    /// Builds the controller's variables in `store` (names as the reference's scopes:
    /// `lstm.layer_{k}.w`, `g_emb`, `emb.w`, `softmax.w`, `softmax.b`, `attention.*`).
    pub fn new(
        cfg: ControllerConfig,
        store: &ParamStore,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        cfg.validate("controller.")?;
        let vb = store.var_builder(dtype, dev);
        let h = cfg.lstm_size;
        let init = Init::Uniform { lo: -0.1, up: 0.1 };
        let get = |vb: &VarBuilder, shape: (usize, usize), name: &str| {
            vb.get_with_hints(shape, name, init)
        };
        let lstm = (0..cfg.lstm_layers)
            .map(|k| get(&vb.pp("lstm").pp(format!("layer_{k}")), (2 * h, 4 * h), "w"))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let b_soft = vb
            .pp("softmax")
            .get_with_hints((1, NUM_OPS), "b", Init::Const(0.0))?;
        // `b_soft` starts at a constant vector (a checkpoint, if any, is loaded after).
        let b_soft_var = store
            .all()
            .into_iter()
            .find(|(name, _)| name == "softmax.b")
            .map(|(_, var)| var)
            .ok_or_else(|| Error::Config("the controller's store lost softmax.b".into()))?;
        b_soft_var.set(&Tensor::new(&[B_SOFT_INIT], dev)?.to_dtype(dtype)?)?;
        Ok(MicroController {
            cfg,
            lstm,
            g_emb: get(&vb, (1, h), "g_emb")?,
            w_emb: get(&vb.pp("emb"), (NUM_OPS, h), "w")?,
            w_soft: get(&vb.pp("softmax"), (h, NUM_OPS), "w")?,
            b_soft,
            b_soft_no_learn: Tensor::new(&[B_SOFT_NO_LEARN], dev)?.to_dtype(dtype)?,
            w_attn_1: get(&vb.pp("attention"), (h, h), "w_1")?,
            w_attn_2: get(&vb.pp("attention"), (h, h), "w_2")?,
            v_attn: get(&vb.pp("attention"), (h, 1), "v")?,
        })
    }

    /// The settings.
    pub fn config(&self) -> ControllerConfig {
        self.cfg
    }

    /// The same controller on detached views of its variables: it samples without
    /// recording a graph, and follows every update of the variables.
    pub fn detached(&self) -> Self {
        MicroController {
            cfg: self.cfg,
            lstm: self.lstm.iter().map(Tensor::detach).collect(),
            g_emb: self.g_emb.detach(),
            w_emb: self.w_emb.detach(),
            w_soft: self.w_soft.detach(),
            b_soft: self.b_soft.detach(),
            b_soft_no_learn: self.b_soft_no_learn.clone(),
            w_attn_1: self.w_attn_1.detach(),
            w_attn_2: self.w_attn_2.detach(),
            v_attn: self.v_attn.detach(),
        }
    }

    /// Runs the controller over `arcs` arcs: samples them or scores given ones.
    pub fn run<R: Rng>(&self, arcs: usize, mut choices: Choices<'_, R>) -> Result<Decisions> {
        if let Choices::Sample(rngs) = &choices {
            if rngs.len() != arcs {
                return Err(Error::Config(format!(
                    "{} generators for {arcs} arcs",
                    rngs.len()
                )));
            }
        }
        if let Choices::Given(given) = &choices {
            if given.len() != arcs {
                return Err(Error::Config(format!(
                    "{} arcs given, {arcs} expected",
                    given.len()
                )));
            }
            if let Some(bad) = given.iter().find(|a| a.len() != self.cfg.arc_len()) {
                return Err(Error::Config(format!(
                    "an arc of {} integers, expected {}",
                    bad.len(),
                    self.cfg.arc_len()
                )));
            }
        }
        let b = arcs;
        let h = self.cfg.lstm_size;
        let dev = self.g_emb.device().clone();
        let dtype = self.g_emb.dtype();
        let zeros = Tensor::zeros((b, h), dtype, &dev)?;
        let mut state: Vec<State> = (0..self.cfg.lstm_layers)
            .map(|_| State {
                c: zeros.clone(),
                h: zeros.clone(),
            })
            .collect();
        let g_emb = self.g_emb.broadcast_as((b, h))?.contiguous()?;
        let mut acc = Accumulator::new(b, self.cfg.arc_len());
        for (cell, normal) in [(0, true), (1, false)] {
            let offset = cell * 4 * self.cfg.nodes;
            let mut anchors = Vec::with_capacity(self.cfg.nodes + 2);
            let mut keys = Vec::with_capacity(self.cfg.nodes + 2);
            for _ in 0..2 {
                let out = self.lstm_step(&g_emb, &mut state)?;
                anchors.push(zeros.clone());
                keys.push(out.matmul(&self.w_attn_1)?);
            }
            let mut x = g_emb.clone();
            for t in 2..self.cfg.nodes + 2 {
                let base = offset + 4 * (t - 2);
                for i in 0..2 {
                    let out = self.lstm_step(&x, &mut state)?;
                    let logits = self.index_logits(&out, &keys)?;
                    let picked = acc.decide(&logits, &mut choices, base + 2 * i)?;
                    let onehot = one_hot(&picked, t, dtype, &dev)?.unsqueeze(1)?;
                    x = onehot.matmul(&Tensor::stack(&anchors, 1)?)?.squeeze(1)?;
                }
                for i in 0..2 {
                    let out = self.lstm_step(&x, &mut state)?;
                    let logits = self.op_logits(&out, normal)?;
                    let picked = acc.decide(&logits, &mut choices, base + 2 * i + 1)?;
                    let ids: Vec<u32> = picked.iter().map(|&p| p as u32).collect();
                    x = self
                        .w_emb
                        .index_select(&Tensor::new(ids.as_slice(), &dev)?, 0)?;
                }
                let out = self.lstm_step(&x, &mut state)?;
                keys.push(out.matmul(&self.w_attn_1)?);
                anchors.push(out);
                x = g_emb.clone();
            }
        }
        acc.finish()
    }

    /// One step of the stacked LSTM on input `x` `[b, H]`; returns the top layer's output.
    fn lstm_step(&self, x: &Tensor, state: &mut [State]) -> Result<Tensor> {
        let h = self.cfg.lstm_size;
        let mut inp = x.clone();
        for (w, s) in self.lstm.iter().zip(state.iter_mut()) {
            let z = Tensor::cat(&[&inp, &s.h], 1)?.matmul(w)?;
            let gate = |k: usize| sigmoid(&z.narrow(1, k * h, h)?);
            let (i, f, o) = (gate(0)?, gate(1)?, gate(2)?);
            let g = z.narrow(1, 3 * h, h)?.tanh()?;
            let c = ((i * g)? + (f * &s.c)?)?;
            let out = (o * c.tanh()?)?;
            s.c = c;
            s.h = out.clone();
            inp = out;
        }
        Ok(inp)
    }

    /// Attention logits over the anchors' keys `[b, t]`.
    fn index_logits(&self, out: &Tensor, keys: &[Tensor]) -> Result<Tensor> {
        let (b, h) = out.dims2()?;
        let t = keys.len();
        let query = out.matmul(&self.w_attn_2)?.unsqueeze(1)?;
        let hidden = Tensor::stack(keys, 1)?.broadcast_add(&query)?.tanh()?;
        let u = hidden
            .reshape((b * t, h))?
            .matmul(&self.v_attn)?
            .reshape((b, t))?;
        self.shape_logits(u, self.cfg.tanh_constant)
    }

    /// Op logits `[b, 5]`.
    fn op_logits(&self, out: &Tensor, normal: bool) -> Result<Tensor> {
        let z = out.matmul(&self.w_soft)?.broadcast_add(&self.b_soft)?;
        let z = self.shape_logits(z, self.cfg.tanh_constant / self.cfg.op_tanh_reduce)?;
        Ok(if normal {
            z.broadcast_add(&self.b_soft_no_learn)?
        } else {
            z
        })
    }

    /// Temperature first, then the tanh bound (mc:158-161, 179-183).
    fn shape_logits(&self, mut z: Tensor, bound: f64) -> Result<Tensor> {
        if self.cfg.temperature > 0.0 {
            z = (z / self.cfg.temperature)?;
        }
        if self.cfg.tanh_constant > 0.0 {
            z = (z.tanh()? * bound)?;
        }
        Ok(z)
    }
}

/// `1 / (1 + e^-x)` as `(tanh(x / 2) + 1) / 2`, from differentiable primitives.
fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    ((x * 0.5)?.tanh()? + 1.0)? * 0.5
}

/// One-hot rows `[b, k]`.
fn one_hot(picked: &[usize], k: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; picked.len() * k];
    for (row, &p) in picked.iter().enumerate() {
        v[row * k + p] = 1.0;
    }
    Ok(Tensor::from_vec(v, (picked.len(), k), dev)?.to_dtype(dtype)?)
}

/// The decisions made so far, per arc.
struct Accumulator {
    arcs: Vec<Vec<usize>>,
    terms: Vec<Tensor>,
    entropy: Vec<f64>,
    log_prob: Vec<f64>,
    probs: Vec<Vec<Vec<f64>>>,
}

impl Accumulator {
    fn new(b: usize, len: usize) -> Self {
        Accumulator {
            arcs: vec![vec![0; len]; b],
            terms: Vec::new(),
            entropy: vec![0.0; b],
            log_prob: vec![0.0; b],
            probs: vec![Vec::new(); b],
        }
    }

    /// Makes the decision at arc position `pos` from `logits` `[b, k]` for every arc.
    fn decide<R: Rng>(
        &mut self,
        logits: &Tensor,
        choices: &mut Choices<'_, R>,
        pos: usize,
    ) -> Result<Vec<usize>> {
        let k = logits.dim(1)?;
        let rows: Vec<Vec<f64>> = logits.to_dtype(DType::F64)?.to_vec2()?;
        let mut picked = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let p = softmax(row);
            let choice = match choices {
                Choices::Sample(rngs) => draw(&p, &mut rngs[i]),
                Choices::Given(arcs) => {
                    let c = arcs[i][pos];
                    if c >= k {
                        return Err(Error::Config(format!(
                            "arc {i}: value {c} at position {pos} is out of range; expected 0..{k}"
                        )));
                    }
                    c
                }
            };
            self.entropy[i] -= p
                .iter()
                .filter(|&&q| q > 0.0)
                .map(|q| q * q.ln())
                .sum::<f64>();
            self.log_prob[i] += p[choice].ln();
            self.arcs[i][pos] = choice;
            self.probs[i].push(p);
            picked.push(choice);
        }
        let onehot = one_hot(&picked, k, logits.dtype(), logits.device())?;
        let ll = (candle_nn::ops::log_softmax(logits, D::Minus1)? * onehot)?.sum(1)?;
        self.terms.push(ll);
        Ok(picked)
    }

    fn finish(self) -> Result<Decisions> {
        let nll = Tensor::stack(&self.terms, 1)?.sum(1)?.neg()?;
        Ok(Decisions {
            arcs: self.arcs,
            nll,
            entropy: self.entropy,
            log_prob: self.log_prob,
            probs: self.probs,
        })
    }
}

/// A softmax in f64.
fn softmax(row: &[f64]) -> Vec<f64> {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|v| (v - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Draws an index from `p` by inverting its cumulative sum.
fn draw(p: &[f64], rng: &mut impl Rng) -> usize {
    let u: f64 = rng.random();
    let mut cum = 0.0;
    for (i, q) in p.iter().enumerate() {
        cum += q;
        if u < cum {
            return i;
        }
    }
    p.len() - 1
}

/// A uniformly random arc (the `--controller random` ablation): each index uniform over
/// the earlier states, each op uniform over the five.
pub fn uniform_arc(nodes: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut arc = Vec::with_capacity(8 * nodes);
    for _cell in 0..2 {
        for t in 2..nodes + 2 {
            for _branch in 0..2 {
                arc.push(rng.random_range(0..t));
                arc.push(rng.random_range(0..NUM_OPS));
            }
        }
    }
    arc
}
