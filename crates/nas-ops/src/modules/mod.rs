//! Modules holding parameters (candle-nn `ModuleT`s with the reference code's names): the
//! convolution, batch norm, the DARTS and ENAS ops and the search MixedOp. Their training
//! forward runs the fused compositions of [`crate::fused`] where those cover the shapes.

pub(crate) mod batch_norm;
pub(crate) mod cell;
pub(crate) mod conv;
pub(crate) mod darts_op;
pub(crate) mod enas_op;
pub(crate) mod factorized_reduce;
pub(crate) mod relu_conv_bn;
pub(crate) mod sep_conv;
