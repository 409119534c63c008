//! An ENAS micro cell in an evaluation network (`_fixed_layer` of the reference
//! `src/cifar10/micro_child.py`).
//!
//! The two inputs are first brought to the cell's `F` channels and resolution
//! (`_maybe_calibrate_size`): the older one through a factorized reduction (ReLU in front)
//! when the previous cell reduced, else through ReLU-1x1-BN when its channels differ; the
//! newer one through ReLU-1x1-BN when its channels differ. The newer one then always
//! passes one more ReLU-1x1-BN (`layer_base`). Each node applies one op to each of its two
//! inputs and adds them; ops other than the identity are dropped per sample in training
//! (drop path). The output concatenates the states no node reads (`_fixed_combine`), the
//! two inputs of a reduction cell passing a factorized reduction without ReLU first.
//!
//! Parameter names follow the reference's variable scopes: `calibrate.pool_x`,
//! `calibrate.pool_y`, `layer_base`, `cell_{k}.x_conv`, `cell_{k}.y_conv`,
//! `final_combine.calibrate_{i}`.

use candle_core::Tensor;
use candle_nn::{ModuleT, VarBuilder};
use nas_ops::{
    enas_micro_op, factorized_reduce, relu_conv_bn, Conv2dConfig, DartsOp, FactorizedReduce,
    ReluConvBn,
};
use nas_search_space::{EnasMicroCell, EnasMicroOp};
use rand::Rng;

use crate::eval_cell::node_sum;

/// How the older input is calibrated.
#[derive(Debug, Clone)]
enum CalibrateX {
    Reduce(FactorizedReduce),
    Conv(ReluConvBn),
}

/// One op of a node.
#[derive(Debug, Clone)]
struct Branch {
    input: usize,
    op: DartsOp,
    /// ENAS drops every op but the identity (also when the identity reduces).
    droppable: bool,
}

/// Channels, resolution changes and position of one ENAS micro cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnasCellShape {
    /// Channels of the older input.
    pub c_prev_prev: usize,
    /// Channels of the newer input.
    pub c_prev: usize,
    /// `F`: channels of every state inside the cell.
    pub c: usize,
    /// This cell halves the resolution (ops on the two inputs stride 2).
    pub reduction: bool,
    /// The older input has twice the resolution of the newer one.
    pub reduction_prev: bool,
}

/// One ENAS micro cell.
#[derive(Debug, Clone)]
pub struct EnasMicroEvalCell {
    calibrate_x: Option<CalibrateX>,
    calibrate_y: Option<ReluConvBn>,
    layer_base: ReluConvBn,
    nodes: Vec<[Branch; 2]>,
    /// The states concatenated into the output, with the reduction some need first.
    combine: Vec<(usize, Option<FactorizedReduce>)>,
}

impl EnasMicroEvalCell {
    /// Builds `cell` (the genotype's normal or reduce cell, chosen by the caller).
    pub fn new(
        cell: &EnasMicroCell,
        shape: EnasCellShape,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let f = shape.c;
        let pw = Conv2dConfig::pointwise(1);
        let cal = vb.pp("calibrate");
        let calibrate_x = if shape.reduction_prev {
            Some(CalibrateX::Reduce(factorized_reduce(
                shape.c_prev_prev,
                f,
                true,
                cal.pp("pool_x"),
            )?))
        } else if shape.c_prev_prev != f {
            Some(CalibrateX::Conv(relu_conv_bn(
                shape.c_prev_prev,
                f,
                pw,
                true,
                cal.pp("pool_x"),
            )?))
        } else {
            None
        };
        let calibrate_y = if shape.c_prev != f {
            Some(relu_conv_bn(shape.c_prev, f, pw, true, cal.pp("pool_y"))?)
        } else {
            None
        };
        let layer_base = relu_conv_bn(f, f, pw, true, vb.pp("layer_base"))?;
        let mut nodes = Vec::with_capacity(cell.nodes().len());
        for (k, node) in cell.nodes().iter().enumerate() {
            let vb_node = vb.pp(format!("cell_{k}"));
            let branch = |input: usize, op: EnasMicroOp, name: &str| -> candle_core::Result<_> {
                let stride = if shape.reduction && input < 2 { 2 } else { 1 };
                Ok(Branch {
                    input,
                    op: enas_micro_op(op, f, stride, vb_node.pp(name))?,
                    droppable: op != EnasMicroOp::Identity,
                })
            };
            nodes.push([
                branch(node.x_input, node.x_op, "x_conv")?,
                branch(node.y_input, node.y_op, "y_conv")?,
            ]);
        }
        let vb_combine = vb.pp("final_combine");
        let combine = cell
            .concat()
            .into_iter()
            .map(|i| {
                let reduce = if shape.reduction && i < 2 {
                    let fr =
                        factorized_reduce(f, f, true, vb_combine.pp(format!("calibrate_{i}")))?;
                    Some(fr.without_relu())
                } else {
                    None
                };
                Ok((i, reduce))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(EnasMicroEvalCell {
            calibrate_x,
            calibrate_y,
            layer_base,
            nodes,
            combine,
        })
    }

    /// The number of states concatenated into the output (output channels over `F`).
    pub fn multiplier(&self) -> usize {
        self.combine.len()
    }

    /// The output for inputs `s0` (older) and `s1`. In training, every op but the
    /// identity has its output dropped per sample with probability `drop_prob`.
    pub fn forward(
        &self,
        s0: &Tensor,
        s1: &Tensor,
        train: bool,
        drop_prob: f64,
        rng: &mut impl Rng,
    ) -> candle_core::Result<Tensor> {
        let x = match &self.calibrate_x {
            Some(CalibrateX::Reduce(fr)) => fr.forward_t(s0, train)?,
            Some(CalibrateX::Conv(op)) => op.forward_t(s0, train)?,
            None => s0.clone(),
        };
        let y = match &self.calibrate_y {
            Some(op) => op.forward_t(s1, train)?,
            None => s1.clone(),
        };
        let y = self.layer_base.forward_t(&y, train)?;
        let mut states = vec![x, y];
        for branches in &self.nodes {
            let mut outputs = Vec::with_capacity(2);
            for b in branches {
                outputs.push((b.op.forward_t(&states[b.input], train)?, b.droppable));
            }
            states.push(node_sum(outputs, train, drop_prob, rng)?);
        }
        let out = self
            .combine
            .iter()
            .map(|(i, reduce)| match reduce {
                Some(fr) => fr.forward_t(&states[*i], train),
                None => Ok(states[*i].clone()),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&out, 1)
    }
}
