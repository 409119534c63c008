//! Strided selection of rows and columns.

use candle_core::Tensor;

use crate::error::Result;

/// Every `stride`-th row and column starting at `offset` (`x[:, :, offset::s, offset::s]`).
pub fn subsample(x: &Tensor, stride: usize, offset: usize) -> Result<Tensor> {
    if stride == 1 && offset == 0 {
        return Ok(x.clone());
    }
    let pick = |dim: usize| -> Result<Tensor> {
        let size = x.dim(dim)?;
        let idx: Vec<u32> = (offset..size).step_by(stride).map(|i| i as u32).collect();
        Tensor::new(idx, x.device())
    };
    x.index_select(&pick(2)?, 2)?.index_select(&pick(3)?, 3)
}
