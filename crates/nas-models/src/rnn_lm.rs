//! The language model around a DARTS recurrent cell (`RNNModel` of the reference
//! `rnn/model.py`, after Merity et al.'s AWD-LSTM): an embedding whose matrix the decoder
//! shares (weight tying), variational dropouts (embedding rows, locked dropout on the
//! input and the output, the cell's `x` and `h` masks), one recurrent cell, and a linear
//! decoder with a bias.
//!
//! Parameter names follow the reference's state dict: `encoder.weight`, `rnns.0._W0`,
//! `rnns.0._Ws.{i}`, `rnns.0.bn.*` (search) and `decoder.bias`; the decoder's weight is
//! `encoder.weight` itself.

use std::cell::RefCell;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};
use nas_search_space::{RnnGenotype, RnnOp};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rnn_cell::{CellMasks, RnnCell};

/// Sizes and regularisation of a recurrent language model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RnnLmConfig {
    /// Embedding size (equal to `nhid`, as the reference requires).
    pub emsize: usize,
    /// Hidden size of the cell.
    pub nhid: usize,
    /// Locked dropout on the cell's output, before the decoder.
    pub dropout: f64,
    /// The cell's mask on the hidden state and on every state before `W_i`.
    pub dropouth: f64,
    /// The cell's mask on `x_t`.
    pub dropoutx: f64,
    /// Locked dropout on the embedded input.
    pub dropouti: f64,
    /// Dropout of whole embedding rows (words).
    pub dropoute: f64,
    /// Weights start in `U(-init_range, init_range)` (0.04).
    #[serde(default = "default_init_range")]
    pub init_range: f64,
}

fn default_init_range() -> f64 {
    0.04
}

impl RnnLmConfig {
    /// Checks sizes and probabilities.
    pub fn validate(&self) -> Result<()> {
        if self.emsize != self.nhid || self.nhid == 0 {
            return Err(Error::Config(format!(
                "model: emsize and nhid must be equal and positive (the decoder shares the embedding), got emsize {} and nhid {}",
                self.emsize, self.nhid
            )));
        }
        for (name, p) in [
            ("dropout", self.dropout),
            ("dropouth", self.dropouth),
            ("dropoutx", self.dropoutx),
            ("dropouti", self.dropouti),
            ("dropoute", self.dropoute),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::Config(format!(
                    "model.{name} must be in [0, 1), got {p}"
                )));
            }
        }
        if self.init_range.is_nan() || self.init_range <= 0.0 {
            return Err(Error::Config(format!(
                "model.init_range must be positive, got {}",
                self.init_range
            )));
        }
        Ok(())
    }
}

/// The dropout masks of one training sequence, already divided by the keep probability.
#[derive(Debug, Clone, Default)]
pub struct LmMasks {
    /// Per vocabulary row, `[vocab, 1]`.
    pub embed: Option<Tensor>,
    /// Locked over time on the embedded input, `[batch, emsize]`.
    pub input: Option<Tensor>,
    /// The cell's masks.
    pub cell: CellMasks,
    /// Locked over time on the cell's output, `[batch, nhid]`.
    pub output: Option<Tensor>,
}

impl LmMasks {
    /// Fresh masks drawn from `rng` (none where a probability is 0).
    pub fn sample(
        cfg: &RnnLmConfig,
        vocab: usize,
        batch: usize,
        rng: &mut impl Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut mask = |p: f64, rows: usize, cols: usize| -> Result<Option<Tensor>> {
            if p == 0.0 {
                return Ok(None);
            }
            // One drop-path draw per element: the same draws as an inverted dropout.
            let data: Vec<f32> = nas_ops::drop_path_scales(rows * cols, 1.0 - p, rng)?
                .into_iter()
                .map(|s| s as f32)
                .collect();
            Ok(Some(
                Tensor::from_vec(data, (rows, cols), device)?.to_dtype(dtype)?,
            ))
        };
        Ok(LmMasks {
            embed: mask(cfg.dropoute, vocab, 1)?,
            input: mask(cfg.dropouti, batch, cfg.emsize)?,
            cell: CellMasks {
                x: mask(cfg.dropoutx, batch, cfg.emsize)?,
                h: mask(cfg.dropouth, batch, cfg.nhid)?,
            },
            output: mask(cfg.dropout, batch, cfg.nhid)?,
        })
    }
}

/// What one forward pass gives.
#[derive(Debug, Clone)]
pub struct LmOutput {
    /// The decoder's weight (tied to the encoder), `[vocab, nhid]`.
    pub decoder: Tensor,
    /// The decoder's bias, `[vocab]`.
    pub bias: Tensor,
    /// The cell's outputs before the output dropout, `[T, B, nhid]`.
    pub raw: Tensor,
    /// The same after the output dropout.
    pub dropped: Tensor,
    /// The last hidden state, `[B, nhid]`.
    pub hidden: Tensor,
}

/// A recurrent language model.
#[derive(Debug, Clone)]
pub struct RnnLm {
    encoder: Tensor,
    decoder_bias: Tensor,
    cell: RnnCell,
    cfg: RnnLmConfig,
    vocab: usize,
}

impl RnnLm {
    /// The search model: a search cell of `steps` nodes.
    pub fn search(cfg: RnnLmConfig, vocab: usize, steps: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let cell = RnnCell::search(cfg.emsize, cfg.nhid, steps, cfg.init_range, vb.pp("rnns.0"))?;
        Self::build(cfg, vocab, cell, vb)
    }

    /// The model of a derived genotype.
    pub fn derived(
        cfg: RnnLmConfig,
        vocab: usize,
        genotype: &RnnGenotype,
        vb: VarBuilder,
    ) -> Result<Self> {
        cfg.validate()?;
        if let Some(e) = genotype
            .recurrent()
            .iter()
            .find(|e| e.activation == RnnOp::None)
        {
            return Err(Error::Config(format!(
                "genotype: a derived recurrent cell cannot use `none` (edge from state {}); expected tanh, relu, sigmoid or identity",
                e.input
            )));
        }
        let cell = RnnCell::derived(
            cfg.emsize,
            cfg.nhid,
            genotype,
            cfg.init_range,
            vb.pp("rnns.0"),
        )?;
        Self::build(cfg, vocab, cell, vb)
    }

    fn build(cfg: RnnLmConfig, vocab: usize, cell: RnnCell, vb: VarBuilder) -> Result<Self> {
        if vocab < 2 {
            return Err(Error::Config(format!(
                "model: the vocabulary needs at least 2 words, got {vocab}"
            )));
        }
        let encoder = vb.get_with_hints(
            (vocab, cfg.emsize),
            "encoder.weight",
            Init::Uniform {
                lo: -cfg.init_range,
                up: cfg.init_range,
            },
        )?;
        let decoder_bias = vb.get_with_hints(vocab, "decoder.bias", Init::Const(0.0))?;
        Ok(RnnLm {
            encoder,
            decoder_bias,
            cell,
            cfg,
            vocab,
        })
    }

    /// The same model with every weight a constant (shared storage). The first-order
    /// architecture step needs only the gradient of the architecture weights; with the
    /// weights constant, backward skips their gradients (a third of the cell's and half
    /// of the decoder's backward products).
    pub fn detached(&self) -> Self {
        RnnLm {
            encoder: self.encoder.detach(),
            decoder_bias: self.decoder_bias.detach(),
            cell: self.cell.detached(),
            ..self.clone()
        }
    }

    /// The settings.
    pub fn config(&self) -> &RnnLmConfig {
        &self.cfg
    }

    /// The vocabulary size.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The cell.
    pub fn cell(&self) -> &RnnCell {
        &self.cell
    }

    /// A zero hidden state for `batch` sequences.
    pub fn init_hidden(&self, batch: usize) -> Result<Tensor> {
        Ok(Tensor::zeros(
            (batch, self.cfg.nhid),
            self.encoder.dtype(),
            self.encoder.device(),
        )?)
    }

    /// Runs the model over `tokens` `[T, B]` (u32) from `hidden`. `probs` are the softmax
    /// of the architecture weights (search model only); `masks` are ignored unless `train`.
    pub fn forward(
        &self,
        tokens: &Tensor,
        hidden: &Tensor,
        probs: Option<&Tensor>,
        masks: &LmMasks,
        train: bool,
    ) -> Result<LmOutput> {
        let (t_len, batch) = tokens.dims2()?;
        let none = LmMasks::default();
        let masks = if train { masks } else { &none };
        let table = match &masks.embed {
            Some(m) => self.encoder.broadcast_mul(m)?,
            None => self.encoder.clone(),
        };
        let emb = table.index_select(&tokens.flatten_all()?, 0)?.reshape((
            t_len,
            batch,
            self.cfg.emsize,
        ))?;
        let emb = locked(&emb, masks.input.as_ref())?;
        let raw = self.cell.forward(&emb, hidden, probs, &masks.cell, train)?;
        let hidden = raw.get(t_len - 1)?;
        let dropped = locked(&raw, masks.output.as_ref())?;
        Ok(LmOutput {
            decoder: self.encoder.clone(),
            bias: self.decoder_bias.clone(),
            raw,
            dropped,
            hidden,
        })
    }
}

/// The trainable parameters of a recurrent language model, by building it: the search
/// model when `genotype` is `None`, with `steps` nodes. Tied weights count once, as in
/// the reference (`sum(p.numel() for p in model.parameters())`).
pub fn count_lm(
    genotype: Option<&RnnGenotype>,
    emsize: usize,
    nhid: usize,
    vocab: usize,
    steps: usize,
) -> Result<usize> {
    let store = nas_train::ParamStore::new(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let cfg = RnnLmConfig {
        emsize,
        nhid,
        dropout: 0.0,
        dropouth: 0.0,
        dropoutx: 0.0,
        dropouti: 0.0,
        dropoute: 0.0,
        init_range: default_init_range(),
    };
    match genotype {
        Some(g) => RnnLm::derived(cfg, vocab, g, vb)?,
        None => RnnLm::search(cfg, vocab, steps, vb)?,
    };
    Ok(store.count(|_| true))
}

fn locked(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    Ok(match mask {
        Some(m) => x.broadcast_mul(&m.unsqueeze(0)?)?,
        None => x.clone(),
    })
}

impl LmOutput {
    /// The dropped outputs as decoder inputs, `[T * B, nhid]` (row `t * B + b`).
    fn decoder_input(&self) -> Result<Tensor> {
        let (t_len, batch, nhid) = self.dropped.dims3()?;
        Ok(self.dropped.reshape((t_len * batch, nhid))?)
    }

    /// The decoder's logits before the bias, `[T * B, vocab]` (row `t * B + b`). The
    /// loss ([`nll`]) does not need them: it computes them inside one fused op.
    pub fn logits(&self) -> Result<Tensor> {
        Ok(self.decoder_input()?.matmul(&self.decoder.t()?)?)
    }
}

/// The mean negative log-likelihood of `targets` (`[T * B]`, u32) under the decoder's
/// output (one fused op: decoder product, bias, log-softmax and the pick of the target).
pub fn nll(out: &LmOutput, targets: &Tensor) -> Result<Tensor> {
    Ok(nas_ops::linear_cross_entropy(
        &out.decoder_input()?,
        &out.decoder,
        &out.bias,
        targets,
    )?)
}

/// Temporal activation regularisation (Merity et al. 2017): `beta` times the mean squared
/// difference of consecutive outputs; zero for a single time step.
pub fn tar(raw: &Tensor, beta: f64) -> Result<Option<Tensor>> {
    let t_len = raw.dim(0)?;
    if beta == 0.0 || t_len < 2 {
        return Ok(None);
    }
    let diff = (raw.narrow(0, 1, t_len - 1)? - raw.narrow(0, 0, t_len - 1)?)?;
    Ok(Some((diff.sqr()?.mean_all()? * beta)?))
}

/// Activation regularisation: `alpha` times the mean square of the dropped outputs.
pub fn ar(dropped: &Tensor, alpha: f64) -> Result<Option<Tensor>> {
    if alpha == 0.0 {
        return Ok(None);
    }
    Ok(Some((dropped.sqr()?.mean_all()? * alpha)?))
}

/// One sequence window for the architect: tokens, targets, the hidden state it starts
/// from and its dropout masks. The last loss computed on it leaves its final hidden
/// state in `next_hidden`.
#[derive(Debug)]
pub struct LmBatch {
    /// Inputs `[T, B]`.
    pub tokens: Tensor,
    /// Targets `[T * B]`.
    pub targets: Tensor,
    /// The starting hidden state (detached).
    pub hidden: Tensor,
    /// Dropout masks, the same for every loss computed on this batch.
    pub masks: LmMasks,
    /// The final hidden state of the last loss computed on this batch.
    pub next_hidden: RefCell<Option<Tensor>>,
}

impl LmBatch {
    /// A batch whose `next_hidden` is still empty.
    pub fn new(tokens: Tensor, targets: Tensor, hidden: Tensor, masks: LmMasks) -> Self {
        LmBatch {
            tokens,
            targets,
            hidden,
            masks,
            next_hidden: RefCell::new(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rnn_cell::rnn_edge_count;
    use candle_core::Var;
    use nas_search_space::{bundled, Genotype};
    use nas_train::ParamStore;
    use rand::SeedableRng;

    fn cfg(n: usize) -> RnnLmConfig {
        RnnLmConfig {
            emsize: n,
            nhid: n,
            dropout: 0.5,
            dropouth: 0.25,
            dropoutx: 0.5,
            dropouti: 0.2,
            dropoute: 0.1,
            init_range: 0.3,
        }
    }

    fn tokens(t: usize, b: usize, vocab: u32, dev: &Device) -> (Tensor, Tensor) {
        let x: Vec<u32> = (0..t * b).map(|i| (i as u32 * 7 + 3) % vocab).collect();
        let y: Vec<u32> = (0..t * b).map(|i| (i as u32 * 5 + 1) % vocab).collect();
        (
            Tensor::from_vec(x, (t, b), dev).unwrap(),
            Tensor::from_vec(y, t * b, dev).unwrap(),
        )
    }

    /// The architecture gradient through the whole search model (embedding, dropout
    /// masks, 8-node search cell with batch norm, tied decoder), against central
    /// differences in f64.
    #[test]
    fn alpha_gradient_of_the_search_model_matches_finite_differences() {
        let dev = Device::Cpu;
        let store = ParamStore::new(5);
        let model = RnnLm::search(cfg(6), 11, 8, store.var_builder(DType::F64, &dev)).unwrap();
        let alphas =
            Var::from_tensor(&(Tensor::randn(0.0f64, 0.5, (rnn_edge_count(8), 5), &dev).unwrap()))
                .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let masks = LmMasks::sample(model.config(), 11, 4, &mut rng, DType::F64, &dev).unwrap();
        let (x, y) = tokens(3, 4, 11, &dev);
        let hidden = (Tensor::ones((4, 6), DType::F64, &dev).unwrap() * 0.1).unwrap();
        let loss_at = |a: &Tensor| -> Tensor {
            let probs = candle_nn::ops::softmax(a, 1).unwrap();
            let out = model
                .forward(&x, &hidden, Some(&probs), &masks, true)
                .unwrap();
            let l = nll(&out, &y).unwrap();
            (l + tar(&out.raw, 0.3).unwrap().unwrap()).unwrap()
        };
        // BN's running statistics change on every training pass, but the loss does not
        // depend on them in training mode.
        let g = loss_at(alphas.as_tensor())
            .backward()
            .unwrap()
            .get(alphas.as_tensor())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let base = alphas.as_tensor().to_vec2::<f64>().unwrap();
        let eps = 1e-6;
        let mut checked = 0;
        for (r, row) in base.iter().enumerate().step_by(5) {
            for c in 0..row.len() {
                let shifted = |d: f64| {
                    let mut m = base.clone();
                    m[r][c] += d;
                    let t = Tensor::new(m, &dev).unwrap();
                    loss_at(&t).to_scalar::<f64>().unwrap()
                };
                let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
                assert!(
                    (g[r][c] - numeric).abs() < 1e-6 + 1e-4 * numeric.abs(),
                    "row {r} col {c}: {} vs {numeric}",
                    g[r][c]
                );
                checked += 1;
            }
        }
        assert!(checked >= 30);
        // And the gradient is not trivially zero.
        assert!(g.iter().flatten().any(|v| v.abs() > 1e-6));
        // With the weights made constants (the first-order architect's model), the
        // architecture gradient is the same and no weight gets one.
        let constant = model.detached();
        let probs = candle_nn::ops::softmax(alphas.as_tensor(), 1).unwrap();
        let out = constant
            .forward(&x, &hidden, Some(&probs), &masks, true)
            .unwrap();
        let loss = (nll(&out, &y).unwrap() + tar(&out.raw, 0.3).unwrap().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let gd = grads
            .get(alphas.as_tensor())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for (a, b) in g.iter().flatten().zip(gd.iter().flatten()) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        for (name, var) in store.trainable() {
            assert!(
                grads.get(var.as_tensor()).is_none(),
                "{name} got a gradient"
            );
        }
    }

    /// Weight gradients of a derived model (DARTS-V2) against central differences.
    #[test]
    fn weight_gradients_of_a_derived_model_match_finite_differences() {
        let dev = Device::Cpu;
        let Genotype::DartsRnn(g) = bundled("darts-rnn-v2").unwrap() else {
            panic!("darts-rnn-v2 is a recurrent genotype")
        };
        let store = ParamStore::new(9);
        let model = RnnLm::derived(cfg(5), 7, &g, store.var_builder(DType::F64, &dev)).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let masks = LmMasks::sample(model.config(), 7, 3, &mut rng, DType::F64, &dev).unwrap();
        let (x, y) = tokens(4, 3, 7, &dev);
        let hidden = model.init_hidden(3).unwrap();
        let loss = || -> Tensor {
            let out = model.forward(&x, &hidden, None, &masks, true).unwrap();
            (nll(&out, &y).unwrap() + tar(&out.raw, 0.5).unwrap().unwrap()).unwrap()
        };
        let grads = loss().backward().unwrap();
        let eps = 1e-6;
        for (name, var) in store.trainable() {
            let analytic: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base = var.as_tensor().copy().unwrap();
            let flat: Vec<f64> = base.flatten_all().unwrap().to_vec1().unwrap();
            for j in (0..flat.len()).step_by(flat.len() / 6 + 1) {
                let shifted = |d: f64| {
                    let mut v = flat.clone();
                    v[j] += d;
                    var.set(&Tensor::from_vec(v, base.dims(), &dev).unwrap())
                        .unwrap();
                    let l = loss().to_scalar::<f64>().unwrap();
                    var.set(&base).unwrap();
                    l
                };
                let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
                assert!(
                    (analytic[j] - numeric).abs() < 1e-6 + 1e-4 * numeric.abs(),
                    "{name}[{j}]: {} vs {numeric}",
                    analytic[j]
                );
            }
        }
    }

    #[test]
    fn parameter_counts_follow_the_reference_layout() {
        let dev = Device::Cpu;
        // Tied weights are counted once: V E + V + (E + H) 2H + steps H 2H.
        let count = |model: fn(&ParamStore) -> RnnLm| {
            let store = ParamStore::new(0);
            let _ = model(&store);
            store.count(|_| true)
        };
        let search = count(|s| {
            RnnLm::search(cfg(16), 100, 8, s.var_builder(DType::F32, &Device::Cpu)).unwrap()
        });
        assert_eq!(search, 100 * 16 + 100 + 32 * 32 + 8 * 16 * 32);
        let _ = dev;
        let Genotype::DartsRnn(g) = bundled("darts-rnn-v2").unwrap() else {
            panic!()
        };
        let store = ParamStore::new(0);
        RnnLm::derived(
            RnnLmConfig {
                emsize: 850,
                nhid: 850,
                ..cfg(850)
            },
            10_000,
            &g,
            store.var_builder(DType::F32, &Device::Cpu),
        )
        .unwrap();
        // The paper's "23M".
        assert_eq!(store.count(|_| true), 22_960_000);
        let mut names: Vec<String> = store.trainable().into_iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(names[0], "decoder.bias");
        assert_eq!(names[1], "encoder.weight");
        assert_eq!(names[2], "rnns.0._W0");
        assert_eq!(names[3], "rnns.0._Ws.0");
    }
}
