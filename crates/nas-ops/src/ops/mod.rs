//! Candle custom ops, one per file: each wraps its kernels (forward and hand-written
//! backward) as graph nodes, beside its plain-tensor `_slow` reference and gradient checks.
//! Built on [`crate::kernels`] (and [`crate::cuda`] under the `cuda` feature).

pub(crate) mod batch_norm;
pub(crate) mod cross_entropy;
pub(crate) mod depthwise;
pub(crate) mod drop_path;
pub(crate) mod im2col;
pub(crate) mod linear_cross_entropy;
pub(crate) mod pointwise;
pub(crate) mod pool;
pub(crate) mod rnn_node;
pub(crate) mod saved;
pub(crate) mod shell;
pub(crate) mod storage;
pub(crate) mod subsample;
pub(crate) mod weighted_sum;
