//! ENAS's micro child in search mode (`MicroChild._model` of the reference
//! `src/cifar10/micro_child.py` with `fixed_arc=None`): a stem, `layers + 2` shared
//! layers of which two reduce, the auxiliary head, and the classifier.
//!
//! - Stem: 3x3 convolution to `3 F` channels (no bias) and BN; both first inputs are it.
//! - Layer ids `[L / 3, 2 (L / 3) + 1]` reduce: `F` doubles, the previous output passes a
//!   factorized reduction without ReLU, and the layer is an ordinary stride-1 layer on
//!   `[previous output, its reduction]` (so the older state is dropped), whose
//!   calibration reduces the first input again (ReLU and a second factorized reduction).
//!   The pair passed on is `[reduction, output]`.
//! - The auxiliary head (ENAS's variant of DARTS's) sits after layer id
//!   `2 (L / 3) + 2`; its loss weight is the trainer's business.
//! - Head: ReLU, global average pooling, dropout (keep 0.9), a linear layer without bias.
//!
//! Only the sampled child is computed: each branch runs its one op with its one row.
//!
//! Differences from the reference, on purpose: separable and 1x1 weights start as
//! PyTorch's (Kaiming uniform on the true fan-in), not as Keras' `he_normal` on a
//! weight table's row count (docs/enas-reference.md, "Initialisation"), and the
//! auxiliary head is trained (the reference leaves it out of the optimizer).

use candle_core::Tensor;
use candle_nn::{Init, ModuleT, VarBuilder};
use nas_models::{AuxHead, EvalKind};
use nas_ops::{
    batch_norm, conv2d, factorized_reduce, global_avg_pool, BatchNorm, BatchNormConfig, Conv2d,
    Conv2dConfig, FactorizedReduce,
};
use nas_search_space::EnasMicroGenotype;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::shared_layer::{LayerInputs, SharedLayer};
use crate::{Error, Result};

/// The name prefix of the auxiliary head's variables.
pub const AUX_PREFIX: &str = "aux_head.";

/// Sizes of the shared-weight child (input channels and classes come from the data).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicroChildConfig {
    /// Image channels.
    pub in_channels: usize,
    /// Classes.
    pub classes: usize,
    /// `F`, the first layers' channels (20 in the reference search).
    pub filters: usize,
    /// `L`: the child has `L + 2` layers, two of them reducing (6 in the reference).
    pub layers: usize,
    /// Nodes per cell (5).
    pub nodes: usize,
    /// Build the auxiliary head.
    pub aux_head: bool,
    /// Keep probability of the dropout before the classifier (0.9).
    pub keep_prob: f64,
}

impl MicroChildConfig {
    /// The reference's CIFAR-10 search child: F = 20, L = 6, 5 nodes, auxiliary head.
    pub fn reference() -> Self {
        MicroChildConfig {
            in_channels: 3,
            classes: 10,
            filters: 20,
            layers: 6,
            nodes: 5,
            aux_head: true,
            keep_prob: 0.9,
        }
    }

    /// The two reducing layer ids.
    pub fn reductions(&self) -> [usize; 2] {
        let p = self.layers / 3;
        [p, 2 * p + 1]
    }

    /// The layer id after which the auxiliary head reads.
    pub fn aux_after(&self) -> usize {
        self.reductions()[1] + 1
    }

    /// Checks the sizes (the message names the key under `prefix`); `image` is the
    /// input's height and width when known.
    pub fn validate(&self, prefix: &str, image: Option<(usize, usize)>) -> Result<()> {
        let fail = |m: String| Err(Error::Config(format!("{prefix}{m}")));
        if self.filters < 2 || !self.filters.is_multiple_of(2) {
            return fail(format!(
                "filters must be even and at least 2 (factorized reductions halve it), got {}",
                self.filters
            ));
        }
        if self.layers < 1 || self.nodes < 1 {
            return fail(format!(
                "layers and nodes must be at least 1, got {} and {}",
                self.layers, self.nodes
            ));
        }
        if !(self.keep_prob > 0.0 && self.keep_prob <= 1.0) {
            return fail(format!(
                "keep_prob must be in (0, 1], got {}",
                self.keep_prob
            ));
        }
        if let Some((h, w)) = image {
            if h < 4 || w < 4 {
                return fail(format!(
                    "images of {h}x{w} are too small for two reductions"
                ));
            }
            let (ah, aw) = (h.div_ceil(4), w.div_ceil(4));
            if self.aux_head && (ah < 5 || aw < 5) {
                return fail(format!(
                    "aux_head needs at least 5x5 after two reductions (its 5x5 pooling), \
                     these images give {ah}x{aw}; set it to false"
                ));
            }
        }
        Ok(())
    }

    /// Bytes a shared step may hold at `batch` images of `h` x `w`: about 100 f32 values
    /// per state element of each layer (inputs, node outputs, the sampled ops' inner
    /// tensors and their gradients; the fashion-mnist preset's search peaks at 568 MB
    /// against an estimate of 470 MB plus its data), 10 per stem element, and the
    /// weights four times (values, gradients, momentum, slack).
    pub fn memory_estimate(&self, batch: usize, h: usize, w: usize) -> u64 {
        let reductions = self.reductions();
        let (mut f, mut h, mut w) = (self.filters, h, w);
        let stem = (3 * self.filters * h * w) as u64 * 10;
        let mut states = 0u64;
        for id in 0..self.layers + 2 {
            if reductions.contains(&id) {
                f *= 2;
                h = h.div_ceil(2);
                w = w.div_ceil(2);
            }
            states += (f * h * w) as u64 * 100;
        }
        let (params, with_aux) = self.parameters().unwrap_or((0, 0));
        (stem + states) * batch as u64 * 4 + params.max(with_aux) as u64 * 16
    }

    /// Trainable parameters without and with the auxiliary head (the reference prints
    /// the first; it counts the head apart), from the sizes: nothing is allocated.
    pub fn parameters(&self) -> Result<(usize, usize)> {
        self.validate("model.", None)?;
        let bn = |c: usize| 2 * c;
        let fr = |c_in: usize, c_out: usize| c_in * c_out + bn(c_out);
        let conv_bn = |c_in: usize, c_out: usize| c_in * c_out + bn(c_out);
        let layer = |c_x: usize, c_y: usize, x_larger: bool, f: usize| {
            let mut n = 0;
            if x_larger {
                n += fr(c_x, f);
            } else if c_x != f {
                n += conv_bn(c_x, f);
            }
            if c_y != f {
                n += conv_bn(c_y, f);
            }
            for c in 0..self.nodes {
                let rows = c + 2;
                // Two branches, each sep 3x3 and sep 5x5 of two units.
                let unit = |k: usize| k * k * f + f * f + bn(f);
                n += 2 * rows * 2 * (unit(3) + unit(5));
            }
            n + (self.nodes + 2) * f * f + bn(f)
        };
        let stem_c = 3 * self.filters;
        let mut body = self.in_channels * 9 * stem_c + bn(stem_c);
        let reductions = self.reductions();
        let (mut c_prev_prev, mut c_prev, mut f) = (stem_c, stem_c, self.filters);
        let mut aux = 0;
        for id in 0..self.layers + 2 {
            if reductions.contains(&id) {
                f *= 2;
                body += fr(c_prev, f) + layer(c_prev, f, true, f);
                c_prev_prev = f;
            } else {
                body += layer(c_prev_prev, c_prev, false, f);
                c_prev_prev = c_prev;
            }
            c_prev = f;
            if id == self.aux_after() {
                aux = f * 128 + bn(128) + 2 * 2 * 128 * 768 + bn(768) + 768 * self.classes;
            }
        }
        body += f * self.classes;
        Ok((body, if self.aux_head { body + aux } else { body }))
    }
}

/// One layer and, for a reducing one, the reduction of its newer input.
#[derive(Debug, Clone)]
struct Layer {
    reduce_input: Option<FactorizedReduce>,
    shared: SharedLayer,
}

/// The shared-weight child.
#[derive(Debug, Clone)]
pub struct MicroChild {
    cfg: MicroChildConfig,
    stem: Conv2d,
    stem_bn: BatchNorm,
    layers: Vec<Layer>,
    aux: Option<AuxHead>,
    fc: Tensor,
}

/// The child's outputs.
#[derive(Debug, Clone)]
pub struct ChildOutput {
    /// The logits.
    pub logits: Tensor,
    /// The auxiliary logits (training with a head only).
    pub aux_logits: Option<Tensor>,
}

impl MicroChild {
    /// Builds every shared weight (names `stem_conv.*`, `layer_{id}.*`, `aux_head.*`, `fc.w`).
    pub fn new(cfg: MicroChildConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate("model.", None)?;
        let stem_c = 3 * cfg.filters;
        let stem = conv2d(
            cfg.in_channels,
            stem_c,
            Conv2dConfig::same(3),
            vb.pp("stem_conv").pp("conv"),
        )?;
        let stem_bn = batch_norm(
            stem_c,
            BatchNormConfig::default(),
            vb.pp("stem_conv").pp("bn"),
        )?;
        let reductions = cfg.reductions();
        let (mut c_prev_prev, mut c_prev, mut f) = (stem_c, stem_c, cfg.filters);
        let mut layers = Vec::with_capacity(cfg.layers + 2);
        let mut aux = None;
        for id in 0..cfg.layers + 2 {
            let vb_l = vb.pp(format!("layer_{id}"));
            let layer = if reductions.contains(&id) {
                f *= 2;
                let fr = factorized_reduce(c_prev, f, true, vb_l.pp("reduce"))?.without_relu();
                let inputs = LayerInputs {
                    c_x: c_prev,
                    c_y: f,
                    x_larger: true,
                };
                c_prev_prev = f;
                Layer {
                    reduce_input: Some(fr),
                    shared: SharedLayer::new(f, cfg.nodes, inputs, vb_l)?,
                }
            } else {
                let inputs = LayerInputs {
                    c_x: c_prev_prev,
                    c_y: c_prev,
                    x_larger: false,
                };
                c_prev_prev = c_prev;
                Layer {
                    reduce_input: None,
                    shared: SharedLayer::new(f, cfg.nodes, inputs, vb_l)?,
                }
            };
            c_prev = f;
            layers.push(layer);
            if cfg.aux_head && id == cfg.aux_after() {
                aux = Some(AuxHead::new(
                    EvalKind::Cifar,
                    true,
                    f,
                    cfg.classes,
                    vb.pp(AUX_PREFIX.trim_end_matches('.')),
                )?);
            }
        }
        let bound = 1.0 / (f as f64).sqrt();
        let fc = vb.pp("fc").get_with_hints(
            (cfg.classes, f),
            "w",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(MicroChild {
            cfg,
            stem,
            stem_bn,
            layers,
            aux,
            fc,
        })
    }

    /// The sizes.
    pub fn config(&self) -> MicroChildConfig {
        self.cfg
    }

    /// The child `arc` on images `x`. BNs always use batch statistics; `train` turns on
    /// the dropout (masks from `rng`) and the auxiliary logits.
    pub fn forward(
        &self,
        x: &Tensor,
        arc: &EnasMicroGenotype,
        train: bool,
        rng: &mut impl Rng,
    ) -> Result<ChildOutput> {
        let s = self
            .stem_bn
            .forward_t(&self.stem.forward_t(x, true)?, true)?;
        let (mut older, mut newer) = (s.clone(), s);
        let reductions = self.cfg.reductions();
        let mut aux_logits = None;
        for (id, layer) in self.layers.iter().enumerate() {
            let cell = if reductions.contains(&id) {
                arc.reduce()
            } else {
                arc.normal()
            };
            let out = match &layer.reduce_input {
                Some(fr) => {
                    let reduced = fr.forward_t(&newer, true)?;
                    let out = layer.shared.forward(&newer, &reduced, cell)?;
                    older = reduced;
                    out
                }
                None => {
                    let out = layer.shared.forward(&older, &newer, cell)?;
                    older = newer;
                    out
                }
            };
            newer = out;
            if train && id == self.cfg.aux_after() {
                if let Some(aux) = &self.aux {
                    aux_logits = Some(aux.forward(&newer, true)?);
                }
            }
        }
        let mut features = global_avg_pool(&newer.relu()?)?;
        if train && self.cfg.keep_prob < 1.0 {
            features = nas_models::dropout(&features, 1.0 - self.cfg.keep_prob, rng)?;
        }
        let logits = features.matmul(&self.fc.t()?)?;
        Ok(ChildOutput { logits, aux_logits })
    }
}
