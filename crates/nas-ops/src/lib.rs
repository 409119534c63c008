//! DARTS and ENAS operations as candle modules, built on fused CPU kernels with
//! hand-written, gradient-checked backward passes.
//!
//! Every fused op has a plain-tensor `_slow` reference that the tests compare against.

mod cpu;
mod depthwise;
mod error;
mod pool;
mod batch_norm;
#[cfg(test)]
mod testing;

pub use depthwise::{depthwise_conv2d, depthwise_conv2d_slow, DepthwiseConfig};
pub use error::{Error, Result};
pub use pool::{pool2d, pool2d_slow, PoolConfig, PoolKind};
pub use batch_norm::{batch_norm, batch_norm_train, batch_norm_train_slow, BatchNorm, BatchNormConfig, BatchStats};
