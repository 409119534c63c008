//! Kernels over slices: no tensors, no candle ops. The element type and its fast math,
//! parallel buffers, matrix products, reductions, and the dense inner loops of the
//! depthwise convolution and pooling.

pub(crate) mod buffer;
pub(crate) mod depthwise_dense;
pub(crate) mod elem;
pub(crate) mod gemm;
pub(crate) mod padded;
pub(crate) mod pool_dense;
pub(crate) mod reduce;
