//! DARTS and ENAS operations as candle modules, built on fused CPU kernels with
//! hand-written, gradient-checked backward passes; under the `cuda` feature the same ops
//! run CUDA kernels (from `nas-kernels`) on tensors on a CUDA device.
//!
//! Every fused op has a plain-tensor `_slow` reference that the tests compare against.
//!
//! The source folders are the layers, each using only those above it in this list:
//! `kernels` (loops over slices), `cuda` (launching the CUDA kernels), `ops` (candle custom
//! ops with backward passes), `fused` (compositions of ops as one graph node), `modules`
//! (parameter-holding candle-nn modules). `cargo xtask deps` checks it.

#[cfg(feature = "cuda")]
mod cuda;
mod error;
mod fused;
mod kernels;
mod modules;
mod ops;
pub mod runtime;
#[cfg(test)]
mod testing;

pub use error::{Error, Result};
pub use fused::pool_bn::{pool_bn_train, pool_bn_train_slow};
pub use fused::rnn_sequence::{
    rnn_sequence, rnn_sequence_slow, RnnCellSpec, RnnNorm, RnnSequence, RnnSequenceOutput,
};
pub use fused::separable::{separable_block_train, separable_block_train_slow};
pub use modules::batch_norm::{batch_norm, BatchNorm, BatchNormConfig};
pub use modules::cell::{cell_train, CellInput, CellSpec};
pub use modules::conv::{conv2d, global_avg_pool, pointwise, Conv2d, Conv2dConfig};
pub use modules::darts_op::{darts_op, mixed_op, Conv7x1x7, DartsOp, MixedOp, OpContext};
pub use modules::enas_op::{enas_macro_op, enas_micro_op, EnasMacroLayerOp};
pub use modules::factorized_reduce::{factorized_reduce, FactorizedReduce};
pub use modules::relu_conv_bn::{relu_conv_bn, ReluConvBn};
pub use modules::sep_conv::{dil_conv, sep_conv, DepthwiseSeparable, SepConv};
pub use ops::batch_norm::{batch_norm_train, batch_norm_train_slow, BatchStats};
pub use ops::cross_entropy::{softmax_cross_entropy, softmax_cross_entropy_slow};
pub use ops::depthwise::{depthwise_conv2d, depthwise_conv2d_slow, DepthwiseConfig};
pub use ops::drop_path::{drop_path, drop_path_scales, drop_path_sum, drop_path_sum_slow, Term};
pub use ops::linear_cross_entropy::{linear_cross_entropy, linear_cross_entropy_slow};
pub use ops::pointwise::{pointwise_conv2d, pointwise_conv2d_slow, PointwiseConfig};
pub use ops::pool::{pool2d, pool2d_slow, PoolConfig, PoolKind};
pub use ops::rnn_node::{rnn_node, rnn_node_slow};
pub use ops::subsample::subsample;
pub use ops::weighted_sum::{weighted_sum, weighted_sum_slow};
