//! A whole evaluation cell as one graph node in training (`fused/cell.rs`), taking the
//! cell's modules.

use candle_core::Tensor;

use crate::error::Result;
use crate::fused::cell::{self as fused, CellParams, InputParams};
use crate::modules::darts_op::DartsOp;
use crate::modules::factorized_reduce::FactorizedReduce;
use crate::modules::relu_conv_bn::ReluConvBn;

/// How a cell preprocesses one of its inputs.
#[derive(Debug, Clone, Copy)]
pub enum CellInput<'a> {
    /// ReLU, 1x1 convolution, BN.
    Conv(&'a ReluConvBn),
    /// FactorizedReduce (the input before a reduction cell has twice the resolution).
    Reduce(&'a FactorizedReduce),
}

/// A cell as [`cell_train`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct CellSpec<'a> {
    /// `preprocess0`, `preprocess1`.
    pub pre: [CellInput<'a>; 2],
    /// The ops in genotype order, `per_node` for each intermediate node in turn.
    pub ops: &'a [DartsOp],
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
/// preprocessing, odd sizes into a FactorizedReduce), or the tensors are not on the CPU:
/// the caller then runs the ops one by one.
pub fn cell_train(
    s0: &Tensor,
    s1: &Tensor,
    spec: &CellSpec<'_>,
    scales: &[Option<Vec<f64>>],
) -> Result<Option<Tensor>> {
    fused::cell_train(s0, s1, &params(spec), scales)
}

/// The cell's parameters as the fused kernel takes them.
pub(crate) fn params<'a>(spec: &CellSpec<'a>) -> CellParams<'a> {
    CellParams {
        pre: spec.pre.map(|p| match p {
            CellInput::Conv(op) => op.fused_input(),
            CellInput::Reduce(fr) => InputParams::Reduce(fr.fused()),
        }),
        ops: spec.ops.iter().map(DartsOp::fused).collect(),
        inputs: spec.inputs,
        per_node: spec.per_node,
        concat: spec.concat,
    }
}
