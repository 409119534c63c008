//! A cell built from a genotype (`Cell` in the reference `cnn/model.py`): each
//! intermediate node sums its chosen ops on its chosen inputs; the output concatenates
//! the genotype's `concat` states. Ops carry affine BN; pools have no BN.

use candle_core::Tensor;
use candle_nn::{ModuleT, VarBuilder};
use nas_ops::{
    cell_train, darts_op, drop_path_scales, drop_path_sum, CellInput, CellSpec, DartsOp, OpContext,
    ReluConvBn, Term,
};
use nas_search_space::{CnnCell, CnnOp};
use rand::Rng;

use crate::cell_shape::{CellShape, Preprocess0};

/// One evaluation cell.
#[derive(Debug, Clone)]
pub struct EvalCell {
    preprocess0: Preprocess0,
    preprocess1: ReluConvBn,
    ops: Vec<DartsOp>,
    inputs: Vec<usize>,
    per_node: usize,
    concat: Vec<usize>,
    reduction: bool,
}

impl EvalCell {
    /// Builds the cell for `genotype` (its normal or reduce cell, chosen by the caller)
    /// with the reference's names (`preprocess0`, `preprocess1`, `_ops.{k}`).
    /// `shape.steps` and `shape.multiplier` are ignored: the genotype decides them.
    pub fn new(genotype: &CnnCell, shape: CellShape, vb: VarBuilder) -> candle_core::Result<Self> {
        let CellShape { c, reduction, .. } = shape;
        let (preprocess0, preprocess1) = Preprocess0::build(&shape, true, &vb)?;
        let vb_ops = vb.pp("_ops");
        let mut ops = Vec::new();
        let mut inputs = Vec::new();
        for (k, edge) in genotype.edges().iter().enumerate() {
            let stride = if reduction && edge.input < 2 { 2 } else { 1 };
            let ctx = OpContext {
                channels: c,
                stride,
                affine: true,
                bn_after_pool: false,
            };
            ops.push(darts_op(edge.op, ctx, vb_ops.pp(k.to_string()))?);
            inputs.push(edge.input);
        }
        Ok(EvalCell {
            preprocess0,
            preprocess1,
            ops,
            inputs,
            per_node: genotype.inputs_per_node(),
            concat: genotype.concat().indices(),
            reduction,
        })
    }

    /// The number of states concatenated into the output.
    pub fn multiplier(&self) -> usize {
        self.concat.len()
    }

    /// True for a reduction cell.
    pub fn reduction(&self) -> bool {
        self.reduction
    }

    /// The output for inputs `s0`, `s1`. In training, every op that is not an identity
    /// has its output dropped per sample with probability `drop_prob` (drop path).
    pub fn forward(
        &self,
        s0: &Tensor,
        s1: &Tensor,
        train: bool,
        drop_prob: f64,
        rng: &mut impl Rng,
    ) -> candle_core::Result<Tensor> {
        // Drop-path scales op by op in order (the draws `node_sum` makes).
        let n = s0.dim(0)?;
        let scales = self
            .ops
            .iter()
            .map(|op| {
                let drop = train && drop_prob > 0.0 && !op.is_identity();
                drop.then(|| drop_path_scales(n, 1.0 - drop_prob, rng))
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        if train {
            // The whole cell as one graph node where the kernel covers it (`fused/cell.rs`).
            let spec = CellSpec {
                pre: [
                    match &self.preprocess0 {
                        Preprocess0::Reduce(fr) => CellInput::Reduce(fr),
                        Preprocess0::Conv(op) => CellInput::Conv(op),
                    },
                    CellInput::Conv(&self.preprocess1),
                ],
                ops: &self.ops,
                inputs: &self.inputs,
                per_node: self.per_node,
                concat: &self.concat,
            };
            if let Some(y) = cell_train(s0, s1, &spec, &scales)? {
                return Ok(y);
            }
        }
        let s0 = self.preprocess0.forward_t(s0, train)?;
        let s1 = self.preprocess1.forward_t(s1, train)?;
        let mut states = vec![s0, s1];
        for node in 0..self.ops.len() / self.per_node {
            let ks = node * self.per_node..(node + 1) * self.per_node;
            let outputs = ks
                .clone()
                .map(|k| self.ops[k].forward_t(&states[self.inputs[k]], train))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let terms: Vec<Term> = outputs
                .iter()
                .zip(&scales[ks])
                .map(|(h, s)| (h, s.as_deref()))
                .collect();
            states.push(drop_path_sum(&terms)?);
        }
        let out: Vec<&Tensor> = self.concat.iter().map(|&i| &states[i]).collect();
        Tensor::cat(&out, 1)
    }
}

/// A node's sum of its op outputs `(h, droppable)`, each droppable one dropped per sample
/// with probability `drop_prob` in training: drop path and the sum as one fused op, masks
/// drawn op by op in order (shared by the DARTS and ENAS cells).
pub(crate) fn node_sum(
    outputs: Vec<(Tensor, bool)>,
    train: bool,
    drop_prob: f64,
    rng: &mut impl Rng,
) -> candle_core::Result<Tensor> {
    let mut scaled = Vec::with_capacity(outputs.len());
    for (h, droppable) in outputs {
        let scales = if train && drop_prob > 0.0 && droppable {
            Some(drop_path_scales(h.dim(0)?, 1.0 - drop_prob, rng)?)
        } else {
            None
        };
        scaled.push((h, scales));
    }
    let terms: Vec<Term> = scaled.iter().map(|(h, s)| (h, s.as_deref())).collect();
    drop_path_sum(&terms)
}

/// Multiply-accumulates of one op for one image whose input is `h x w` (output `h' x w'`
/// after `stride`), with `c` channels in and out. Pools and identities count 0.
pub fn op_mult_adds(op: CnnOp, c: usize, h: usize, w: usize, stride: usize) -> usize {
    let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
    let out = oh * ow;
    match op {
        CnnOp::None | CnnOp::MaxPool3x3 | CnnOp::AvgPool3x3 => 0,
        CnnOp::SkipConnect if stride == 1 => 0,
        // Two 1x1 stride-2 convolutions to c / 2 channels each.
        CnnOp::SkipConnect => 2 * out * c * (c / 2),
        CnnOp::SepConv3x3 | CnnOp::SepConv5x5 | CnnOp::SepConv7x7 => {
            let k = sep_kernel(op);
            2 * (out * c * k * k + out * c * c)
        }
        CnnOp::DilConv3x3 => out * c * 9 + out * c * c,
        CnnOp::DilConv5x5 => out * c * 25 + out * c * c,
        // 1x7 with stride (1, s), then 7x1 with stride (s, 1).
        CnnOp::Conv7x1_1x7 => h * ow * c * c * 7 + out * c * c * 7,
    }
}

fn sep_kernel(op: CnnOp) -> usize {
    match op {
        CnnOp::SepConv3x3 => 3,
        CnnOp::SepConv5x5 => 5,
        _ => 7,
    }
}
