//! DARTS and ENAS operations as candle modules, built on fused CPU kernels with
//! hand-written, gradient-checked backward passes; under the `cuda` feature the same ops
//! run CUDA kernels (from `nas-kernels`) on tensors on a CUDA device.
//!
//! Every fused op has a plain-tensor `_slow` reference that the tests compare against.

mod batch_norm;
mod buffer;
mod cell_fused;
mod conv;
mod cpu;
mod cross_entropy;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;
mod darts_op;
mod depthwise;
mod depthwise_dense;
mod drop_path;
mod enas_op;
mod error;
mod factorized_reduce;
mod gemm;
mod im2col;
mod linear_cross_entropy;
mod mixed_fused;
mod padded;
mod pointwise;
mod pool;
mod pool_bn;
mod pool_dense;
mod reduce;
mod relu_conv_bn;
mod rnn_node;
mod rnn_sequence;
pub mod runtime;
mod sep_conv;
mod separable;
#[cfg(test)]
mod testing;
mod weighted_sum;

pub use batch_norm::{
    batch_norm, batch_norm_train, batch_norm_train_slow, BatchNorm, BatchNormConfig, BatchStats,
};
pub use cell_fused::{cell_train, CellInput, CellSpec};
pub use conv::{conv2d, global_avg_pool, pointwise, subsample, Conv2d, Conv2dConfig};
pub use cross_entropy::{softmax_cross_entropy, softmax_cross_entropy_slow};
pub use darts_op::{darts_op, mixed_op, Conv7x1x7, DartsOp, MixedOp, OpContext};
pub use depthwise::{depthwise_conv2d, depthwise_conv2d_slow, DepthwiseConfig};
pub use drop_path::{drop_path, drop_path_scales, drop_path_sum, drop_path_sum_slow, Term};
pub use enas_op::{enas_macro_op, enas_micro_op, EnasMacroLayerOp};
pub use error::{Error, Result};
pub use factorized_reduce::{factorized_reduce, FactorizedReduce};
pub use linear_cross_entropy::{linear_cross_entropy, linear_cross_entropy_slow};
pub use pointwise::{pointwise_conv2d, pointwise_conv2d_slow, PointwiseConfig};
pub use pool::{pool2d, pool2d_slow, PoolConfig, PoolKind};
pub use pool_bn::{pool_bn_train, pool_bn_train_slow};
pub use relu_conv_bn::{relu_conv_bn, ReluConvBn};
pub use rnn_node::{rnn_node, rnn_node_slow};
pub use rnn_sequence::{
    rnn_sequence, rnn_sequence_slow, RnnCellSpec, RnnNorm, RnnSequence, RnnSequenceOutput,
};
pub use sep_conv::{dil_conv, sep_conv, DepthwiseSeparable, SepConv};
pub use separable::{separable_block_train, separable_block_train_slow};
pub use weighted_sum::{weighted_sum, weighted_sum_slow};
