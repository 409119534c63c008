//! The DARTS recurrent cell (paper section 2.1; reference `rnn/model.py` and
//! `rnn/model_search.py`), for search and for a derived genotype.
//!
//! State 0 comes from the input `x_t` and the previous hidden state through one matrix,
//! `[c0, h0] = [x_t, h_{t-1}] W0`, as `s0 = h_{t-1} + sigmoid(c0) (tanh(h0) - h_{t-1})`.
//! Node `i` reads an earlier state `s` through its own matrix, `[c, h] = s W_i`, as the
//! highway update `s + sigmoid(c) (f(h) - s)`. The output averages the `concat` states.
//!
//! The search cell mixes every (predecessor, activation) pair of node `i` with the
//! softmax of its architecture weights; node `i` has `i + 1` predecessors, so 8 nodes
//! have 36 rows of weights over `none, tanh, relu, sigmoid, identity`. As in the
//! reference, one batch norm without affine parameters normalises state 0 and every node.
//!
//! Each node's element-wise work (activations, gates, mixture) is one fused op
//! ([`nas_ops::rnn_node`]) with a hand-written backward, so the graph keeps only the
//! node's inputs per time step.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, ModuleT, VarBuilder};
use nas_ops::{
    batch_norm, rnn_node, rnn_sequence, BatchNorm, BatchNormConfig, RnnCellSpec, RnnNorm,
    RnnSequence,
};
use nas_search_space::{Concat, RnnGenotype, RnnOp, DARTS_RNN_PRIMITIVES};

use crate::error::{Error, Result};

/// Nodes of the DARTS search cell.
pub const RNN_STEPS: usize = 8;

/// Rows of the search cell's architecture weights: node `i` has `i + 1` predecessors.
pub fn rnn_edge_count(steps: usize) -> usize {
    steps * (steps + 1) / 2
}

/// What the cell's nodes compute.
#[derive(Debug, Clone)]
enum Nodes {
    /// Every node mixes all its predecessors and activations.
    Search { steps: usize, bn: BatchNorm },
    /// Node `i` applies one activation to one state.
    Derived(RnnGenotype),
}

/// Variational dropout masks of one sequence (the same for every time step), already
/// divided by the keep probability. `None` means no dropout.
#[derive(Debug, Clone, Default)]
pub struct CellMasks {
    /// On `x_t` before `W0`, `[batch, ninp]`.
    pub x: Option<Tensor>,
    /// On `h_{t-1}` before `W0` and on every state before `W_i`, `[batch, nhid]`.
    pub h: Option<Tensor>,
}

/// A DARTS recurrent cell.
#[derive(Debug, Clone)]
pub struct RnnCell {
    w0: Tensor,
    ws: Vec<Tensor>,
    nodes: Nodes,
    nhid: usize,
    /// One-hot rows over the primitives (row `k` selects primitive `k`), for state 0 and
    /// the derived cell's nodes.
    one_hot: Tensor,
}

impl RnnCell {
    /// The search cell with `steps` nodes, under `vb` with the reference's names
    /// (`_W0`, `_Ws.{i}`, `bn`). Weights are drawn from `U(-init_range, init_range)`.
    pub fn search(
        ninp: usize,
        nhid: usize,
        steps: usize,
        init_range: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bn = batch_norm(
            nhid,
            BatchNormConfig {
                affine: false,
                ..BatchNormConfig::default()
            },
            vb.pp("bn"),
        )?;
        Self::build(
            ninp,
            nhid,
            steps,
            init_range,
            Nodes::Search { steps, bn },
            vb,
        )
    }

    /// The cell of a derived genotype.
    pub fn derived(
        ninp: usize,
        nhid: usize,
        genotype: &RnnGenotype,
        init_range: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::build(
            ninp,
            nhid,
            genotype.n_nodes(),
            init_range,
            Nodes::Derived(genotype.clone()),
            vb,
        )
    }

    fn build(
        ninp: usize,
        nhid: usize,
        steps: usize,
        init_range: f64,
        nodes: Nodes,
        vb: VarBuilder,
    ) -> Result<Self> {
        if ninp == 0 || nhid == 0 || steps == 0 {
            return Err(Error::Config(format!(
                "model: a recurrent cell needs positive sizes, got ninp {ninp}, nhid {nhid}, {steps} nodes"
            )));
        }
        let init = Init::Uniform {
            lo: -init_range,
            up: init_range,
        };
        let w0 = vb.get_with_hints((ninp + nhid, 2 * nhid), "_W0", init)?;
        let ws = (0..steps)
            .map(|i| vb.get_with_hints((nhid, 2 * nhid), &format!("_Ws.{i}"), init))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let one_hot = one_hot_rows(vb.dtype(), vb.device())?;
        Ok(RnnCell {
            w0,
            ws,
            nodes,
            nhid,
            one_hot,
        })
    }

    /// The same cell with its weights as constants: gradients stop at them (and are
    /// not computed), the storage is shared.
    pub fn detached(&self) -> Self {
        RnnCell {
            w0: self.w0.detach(),
            ws: self.ws.iter().map(Tensor::detach).collect(),
            ..self.clone()
        }
    }

    /// The hidden size.
    pub fn nhid(&self) -> usize {
        self.nhid
    }

    /// True for the search cell.
    pub fn is_search(&self) -> bool {
        matches!(self.nodes, Nodes::Search { .. })
    }

    /// Runs the cell over `inputs` `[T, B, ninp]` from `hidden` `[B, nhid]`. `probs` (the
    /// softmax of the architecture weights, `[rnn_edge_count(steps), 5]`) is required by
    /// the search cell and ignored otherwise. Returns the outputs `[T, B, nhid]`.
    pub fn forward(
        &self,
        inputs: &Tensor,
        hidden: &Tensor,
        probs: Option<&Tensor>,
        masks: &CellMasks,
        train: bool,
    ) -> Result<Tensor> {
        if let Nodes::Search { steps, .. } = &self.nodes {
            let expected = [rnn_edge_count(*steps), DARTS_RNN_PRIMITIVES.len()];
            match probs {
                Some(p) if p.dims() == expected => {}
                other => {
                    return Err(Error::Config(format!(
                        "the search cell needs architecture weights {expected:?}, got {:?}",
                        other.map(|p| p.dims().to_vec())
                    )))
                }
            }
        }
        if inputs.device().is_cpu() {
            return self.forward_fused(inputs, hidden, probs, masks, train);
        }
        self.forward_steps(inputs, hidden, probs, masks, train)
    }

    /// The whole sequence as one fused op ([`nas_ops::rnn_sequence`]), on the CPU.
    fn forward_fused(
        &self,
        inputs: &Tensor,
        hidden: &Tensor,
        probs: Option<&Tensor>,
        masks: &CellMasks,
        train: bool,
    ) -> Result<Tensor> {
        let (spec, probs) = match &self.nodes {
            Nodes::Search { steps, bn } => {
                let eps = bn.config().eps;
                let norm = if train {
                    RnnNorm::Batch { eps }
                } else {
                    let read =
                        |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.to_vec1()?) };
                    RnnNorm::Running {
                        mean: read(bn.running_mean())?,
                        var: read(bn.running_var())?,
                        eps,
                    }
                };
                let probs = probs.expect("checked in forward").clone();
                (RnnCellSpec::search(*steps, Some(norm)), probs)
            }
            Nodes::Derived(g) => {
                let nodes = g
                    .recurrent()
                    .iter()
                    .enumerate()
                    .map(|(i, edge)| vec![(edge.input, i)])
                    .collect();
                let rows: Vec<u32> = g
                    .recurrent()
                    .iter()
                    .map(|edge| edge.activation.index() as u32)
                    .collect();
                let rows = Tensor::new(rows.as_slice(), self.one_hot.device())?;
                let spec = RnnCellSpec {
                    nodes,
                    concat: g.concat().indices(),
                    norm: None,
                };
                (spec, self.one_hot.index_select(&rows, 0)?)
            }
        };
        let out = rnn_sequence(
            &RnnSequence {
                x: inputs,
                h0: hidden,
                w0: &self.w0,
                ws: &self.ws,
                probs: &probs,
                mask_x: masks.x.as_ref(),
                mask_h: masks.h.as_ref(),
            },
            &spec,
        )?;
        if let (Nodes::Search { bn, .. }, true) = (&self.nodes, train) {
            bn.update_running_all(&out.stats)?;
        }
        Ok(out.outputs)
    }

    /// The sequence step by step, one fused op per node ([`nas_ops::rnn_node`]): for
    /// devices without the whole-sequence op, and the reference the tests hold it to.
    pub(crate) fn forward_steps(
        &self,
        inputs: &Tensor,
        hidden: &Tensor,
        probs: Option<&Tensor>,
        masks: &CellMasks,
        train: bool,
    ) -> Result<Tensor> {
        let t_len = inputs.dim(0)?;
        let mut h = hidden.clone();
        let mut outputs = Vec::with_capacity(t_len);
        for t in 0..t_len {
            h = self.step(&inputs.get(t)?, &h, probs, masks, train)?;
            outputs.push(h.clone());
        }
        Ok(Tensor::stack(&outputs, 0)?)
    }

    fn step(
        &self,
        x: &Tensor,
        h_prev: &Tensor,
        probs: Option<&Tensor>,
        masks: &CellMasks,
        train: bool,
    ) -> Result<Tensor> {
        let x = apply_mask(x, masks.x.as_ref())?;
        let h_masked = apply_mask(h_prev, masks.h.as_ref())?;
        let ch0 = Tensor::cat(&[&x, &h_masked], 1)?.matmul(&self.w0)?;
        let tanh = self.one_hot.narrow(0, RnnOp::Tanh.index(), 1)?;
        let s0 = rnn_node(&h_prev.unsqueeze(0)?, &ch0.unsqueeze(0)?, &tanh)?;
        match &self.nodes {
            Nodes::Search { steps, bn } => {
                let probs = probs.expect("checked in forward");
                let bn_t = |s: &Tensor| -> Result<Tensor> {
                    let (b, hid) = s.dims2()?;
                    Ok(bn
                        .forward_t(&s.reshape((b, hid, 1, 1))?, train)?
                        .reshape((b, hid))?)
                };
                let mut states = vec![bn_t(&s0)?];
                // Each state masked once, for every node that reads it.
                let mut masked = vec![apply_mask(&states[0], masks.h.as_ref())?];
                let mut offset = 0;
                for i in 0..*steps {
                    let n = i + 1;
                    let stacked = Tensor::stack(&states, 0)?;
                    let (b, hid) = (stacked.dim(1)?, stacked.dim(2)?);
                    let ch =
                        Tensor::cat(&masked, 0)?
                            .matmul(&self.ws[i])?
                            .reshape((n, b, 2 * hid))?;
                    let s = bn_t(&rnn_node(&stacked, &ch, &probs.narrow(0, offset, n)?)?)?;
                    masked.push(apply_mask(&s, masks.h.as_ref())?);
                    states.push(s);
                    offset += n;
                }
                mean_of(&states, &Concat::range(1, steps + 1))
            }
            Nodes::Derived(g) => {
                let mut states = vec![s0];
                for (i, edge) in g.recurrent().iter().enumerate() {
                    let s_prev = &states[edge.input];
                    let ch = apply_mask(s_prev, masks.h.as_ref())?.matmul(&self.ws[i])?;
                    let row = self.one_hot.narrow(0, edge.activation.index(), 1)?;
                    let s = rnn_node(&s_prev.unsqueeze(0)?, &ch.unsqueeze(0)?, &row)?;
                    states.push(s);
                }
                mean_of(&states, g.concat())
            }
        }
    }
}

fn apply_mask(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    Ok(match mask {
        Some(m) => (x * m)?,
        None => x.clone(),
    })
}

fn mean_of(states: &[Tensor], concat: &Concat) -> Result<Tensor> {
    let idx = concat.indices();
    let picked: Vec<&Tensor> = idx.iter().map(|&i| &states[i]).collect();
    Ok((Tensor::stack(&picked, 0)?.sum(0)? / idx.len() as f64)?)
}

fn one_hot_rows(dtype: DType, device: &Device) -> Result<Tensor> {
    let k = DARTS_RNN_PRIMITIVES.len();
    Ok(Tensor::eye(k, dtype, device)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};
    use candle_nn::VarMap;
    use nas_search_space::{bundled, Genotype};

    use super::*;

    fn close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
        let a: Vec<f64> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f64> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Builds a cell twice from the same seed (so the two have equal weights and their
    /// own running statistics) and checks the fused sequence op against the per-node path:
    /// outputs, gradients of inputs, weights and architecture weights, and the running
    /// statistics the batch norm is left with.
    fn check(search: bool, train: bool) {
        let dev = Device::Cpu;
        let (t, b, ninp, nhid, steps) = (4, 6, 5, 7, 4);
        let build = || -> (RnnCell, VarMap) {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
            let cell = if search {
                RnnCell::search(ninp, nhid, steps, 0.3, vb).unwrap()
            } else {
                let Genotype::DartsRnn(g) = bundled("darts-rnn-v2").unwrap() else {
                    panic!("darts-rnn-v2 is a recurrent genotype");
                };
                RnnCell::derived(ninp, nhid, &g, 0.3, vb).unwrap()
            };
            (cell, varmap)
        };
        let (fused, fused_vars) = build();
        let (steps_cell, steps_vars) = build();
        // Equal weights: copy one varmap into the other.
        for (name, var) in fused_vars.data().lock().unwrap().iter() {
            steps_vars.data().lock().unwrap()[name]
                .set(var.as_tensor())
                .unwrap();
        }
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (t, b, ninp), &dev).unwrap()).unwrap();
        let h0 = Tensor::randn(0f64, 0.5, (b, nhid), &dev).unwrap();
        let rows = rnn_edge_count(steps);
        let alpha = Var::from_tensor(&Tensor::randn(0f64, 1.0, (rows, 5), &dev).unwrap()).unwrap();
        let probs = candle_nn::ops::softmax(alpha.as_tensor(), 1).unwrap();
        let probs = search.then_some(&probs);
        let keep = |n: usize| -> Tensor {
            let v: Vec<f64> = (0..b * n)
                .map(|i| if i.is_multiple_of(5) { 0.0 } else { 1.25 })
                .collect();
            Tensor::from_vec(v, (b, n), &dev).unwrap()
        };
        let masks = CellMasks {
            x: Some(keep(ninp)),
            h: Some(keep(nhid)),
        };
        let r = Tensor::randn(0f64, 1.0, (t, b, nhid), &dev).unwrap();
        let a = fused
            .forward(x.as_tensor(), &h0, probs, &masks, train)
            .unwrap();
        let want = steps_cell
            .forward_steps(x.as_tensor(), &h0, probs, &masks, train)
            .unwrap();
        close(&a, &want, 1e-10, "outputs");
        if !train {
            return;
        }
        let ga = a.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = want.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut checked = vec![(
            x.as_tensor().clone(),
            x.as_tensor().clone(),
            "x".to_string(),
        )];
        if search {
            checked.push((
                alpha.as_tensor().clone(),
                alpha.as_tensor().clone(),
                "alpha".into(),
            ));
        }
        let fused_data = fused_vars.data().lock().unwrap();
        let steps_data = steps_vars.data().lock().unwrap();
        for (name, var) in fused_data.iter() {
            if name.contains("running") {
                close(var.as_tensor(), steps_data[name].as_tensor(), 1e-10, name);
            } else {
                checked.push((
                    var.as_tensor().clone(),
                    steps_data[name].as_tensor().clone(),
                    name.clone(),
                ));
            }
        }
        for (mine, theirs, name) in &checked {
            let (Some(p), Some(q)) = (ga.get(mine), gb.get(theirs)) else {
                panic!("{name}: no gradient");
            };
            close(p, q, 1e-9, &format!("gradient of {name}"));
        }
    }

    #[test]
    fn fused_search_cell_matches_the_per_node_cell_in_training() {
        check(true, true);
    }

    #[test]
    fn fused_search_cell_matches_the_per_node_cell_in_evaluation() {
        check(true, false);
    }

    #[test]
    fn fused_derived_cell_matches_the_per_node_cell() {
        check(false, true);
    }
}
