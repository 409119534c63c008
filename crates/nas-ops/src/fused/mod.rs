//! Fused compositions: several ops' kernels as one graph node (a separable block, a pool
//! with BN, FactorizedReduce, a whole search MixedOp, a whole evaluation cell, a recurrent
//! cell over a sequence). They take parameters as tensors and batch norms through
//! [`params::FusedBn`], never the modules of [`crate::modules`], which build on them.

pub(crate) mod cell;
pub(crate) mod mixed;
pub(crate) mod params;
pub(crate) mod pool_bn;
pub(crate) mod reduce;
pub(crate) mod rnn_sequence;
pub(crate) mod separable;
