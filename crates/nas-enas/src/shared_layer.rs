//! One layer of ENAS's shared-weight micro child (`_enas_layer` of the reference
//! `src/cifar10/micro_child.py`): the weights of every cell the controller can sample at
//! this position, of which a step computes only the sampled one.
//!
//! The two inputs are calibrated to the layer's `F` channels (`_maybe_calibrate_size`:
//! ReLU and a factorized reduction when the older one has twice the resolution, else
//! ReLU-1x1-BN where channels differ). Node `c` applies, to each of its inputs `x` and `y`,
//! one of sep 3x3, sep 5x5 (two ReLU-depthwise-pointwise-BN units), avg 3x3, max 3x3 (stride
//! 1, bare) or the identity, and adds the two. Separable weights exist per node, per branch
//! (`x`, `y`) and per input index the branch may read (the rows `c + 2` of the reference's
//! weight tables, here one module per row). The states no node reads are concatenated,
//! pass ReLU and a 1x1 convolution whose input blocks are the rows of a `[nodes + 2, F, F]`
//! table picked by the unused indices, and a BN.
//!
//! All BNs run on batch statistics (the reference keeps no moving averages for the shared
//! ops, and evaluates in training mode).

use candle_core::Tensor;
use candle_nn::{Init, ModuleT, VarBuilder};
use nas_ops::{
    batch_norm, factorized_reduce, pointwise_conv2d, pool2d, relu_conv_bn, sep_conv, BatchNorm,
    BatchNormConfig, Conv2dConfig, FactorizedReduce, PointwiseConfig, PoolConfig, ReluConvBn,
    SepConv,
};
use nas_search_space::{EnasMicroCell, EnasMicroOp};

use crate::Result;

/// The separable convolutions one branch of one node may use, one per input index.
#[derive(Debug, Clone)]
struct Branch {
    sep3: Vec<SepConv>,
    sep5: Vec<SepConv>,
}

/// How the older input reaches the layer's channels and resolution.
#[derive(Debug, Clone)]
enum Calibrate {
    Reduce(FactorizedReduce),
    Conv(ReluConvBn),
}

/// Channels and resolution of a layer's two inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerInputs {
    /// Channels of the older input.
    pub c_x: usize,
    /// Channels of the newer input.
    pub c_y: usize,
    /// The older input has twice the newer one's resolution.
    pub x_larger: bool,
}

/// One shared layer.
#[derive(Debug, Clone)]
pub struct SharedLayer {
    filters: usize,
    calibrate_x: Option<Calibrate>,
    calibrate_y: Option<ReluConvBn>,
    nodes: Vec<[Branch; 2]>,
    final_conv: Tensor,
    final_bn: BatchNorm,
}

impl SharedLayer {
    /// A layer of `nodes` nodes on `filters` channels, with inputs shaped as `inputs`
    /// (names: `calibrate.pool_x`, `calibrate.pool_y`, `cell_{c}.{x,y}.conv_{k}x{k}.{row}`,
    /// `final_conv.w`, `final_conv.bn`).
    pub fn new(filters: usize, nodes: usize, inputs: LayerInputs, vb: VarBuilder) -> Result<Self> {
        let f = filters;
        let pw = Conv2dConfig::pointwise(1);
        let cal = vb.pp("calibrate");
        let calibrate_x = if inputs.x_larger {
            Some(Calibrate::Reduce(factorized_reduce(
                inputs.c_x,
                f,
                true,
                cal.pp("pool_x"),
            )?))
        } else if inputs.c_x != f {
            Some(Calibrate::Conv(relu_conv_bn(
                inputs.c_x,
                f,
                pw,
                true,
                cal.pp("pool_x"),
            )?))
        } else {
            None
        };
        let calibrate_y = if inputs.c_y != f {
            Some(relu_conv_bn(inputs.c_y, f, pw, true, cal.pp("pool_y"))?)
        } else {
            None
        };
        let mut cells = Vec::with_capacity(nodes);
        for c in 0..nodes {
            let vb_c = vb.pp(format!("cell_{c}"));
            let branch = |name: &str| -> Result<Branch> {
                let vb_b = vb_c.pp(name);
                let rows = |k: usize| -> Result<Vec<SepConv>> {
                    (0..c + 2)
                        .map(|row| {
                            Ok(sep_conv(
                                f,
                                f,
                                k,
                                1,
                                true,
                                vb_b.pp(format!("conv_{k}x{k}")).pp(row),
                            )?)
                        })
                        .collect()
                };
                Ok(Branch {
                    sep3: rows(3)?,
                    sep5: rows(5)?,
                })
            };
            cells.push([branch("x")?, branch("y")?]);
        }
        let fc = vb.pp("final_conv");
        let bound = 1.0 / (f as f64).sqrt();
        let final_conv = fc.get_with_hints(
            (nodes + 2, f, f),
            "w",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let final_bn = batch_norm(f, BatchNormConfig::default(), fc.pp("bn"))?;
        Ok(SharedLayer {
            filters,
            calibrate_x,
            calibrate_y,
            nodes: cells,
            final_conv,
            final_bn,
        })
    }

    /// The layer's output for inputs `x` (older) and `y` under the sampled `cell`.
    pub fn forward(&self, x: &Tensor, y: &Tensor, cell: &EnasMicroCell) -> Result<Tensor> {
        if cell.nodes().len() != self.nodes.len() {
            return Err(crate::Error::Config(format!(
                "a cell of {} nodes for a layer of {}",
                cell.nodes().len(),
                self.nodes.len()
            )));
        }
        let x = match &self.calibrate_x {
            Some(Calibrate::Reduce(fr)) => fr.forward_t(x, true)?,
            Some(Calibrate::Conv(op)) => op.forward_t(x, true)?,
            None => x.clone(),
        };
        let y = match &self.calibrate_y {
            Some(op) => op.forward_t(y, true)?,
            None => y.clone(),
        };
        let mut states = vec![x, y];
        for (node, branches) in cell.nodes().iter().zip(&self.nodes) {
            let a = apply(&branches[0], node.x_op, node.x_input, &states[node.x_input])?;
            let b = apply(&branches[1], node.y_op, node.y_input, &states[node.y_input])?;
            states.push((a + b)?);
        }
        let unused = cell.concat();
        let picked: Vec<&Tensor> = unused.iter().map(|&i| &states[i]).collect();
        let input = Tensor::cat(&picked, 1)?;
        let f = self.filters;
        // Rows of the table, `[n, F_in, F_out]`, become the weight `[F_out, n F_in]`.
        let ids: Vec<u32> = unused.iter().map(|&i| i as u32).collect();
        let rows = self
            .final_conv
            .index_select(&Tensor::new(ids.as_slice(), input.device())?, 0)?;
        let w = rows.reshape((unused.len() * f, f))?.t()?.contiguous()?;
        let out = pointwise_conv2d(
            &input,
            &w,
            PointwiseConfig {
                relu_input: true,
                ..Default::default()
            },
        )?;
        Ok(self.final_bn.forward_t(&out, true)?)
    }
}

/// The sampled op of one branch on its input.
fn apply(branch: &Branch, op: EnasMicroOp, input: usize, x: &Tensor) -> Result<Tensor> {
    Ok(match op {
        EnasMicroOp::SepConv3x3 => branch.sep3[input].forward_t(x, true)?,
        EnasMicroOp::SepConv5x5 => branch.sep5[input].forward_t(x, true)?,
        EnasMicroOp::AvgPool3x3 => pool2d(x, PoolConfig::darts(false, 1))?,
        EnasMicroOp::MaxPool3x3 => pool2d(x, PoolConfig::darts(true, 1))?,
        EnasMicroOp::Identity => x.clone(),
    })
}
