//! Plain 2-D convolution without bias, with PyTorch's weight layout `[out, in, k, k]`
//! and initialisation; 1x1 kernels run the fused [`pointwise_conv2d`].

use candle_core::{Tensor, D};
use candle_nn::{Init, ModuleT, VarBuilder};

use crate::error::{Error, Result};
use crate::ops::im2col::conv2d_unfold;
use crate::ops::pointwise::{pointwise_conv2d, PointwiseConfig};

/// Geometry of a [`Conv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Kernel size (square).
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
}

impl Conv2dConfig {
    /// A `k x k` kernel, stride 1, "same" padding.
    pub fn same(kernel: usize) -> Self {
        Conv2dConfig {
            kernel,
            stride: 1,
            padding: kernel / 2,
        }
    }

    /// A 1x1 kernel with the given stride.
    pub fn pointwise(stride: usize) -> Self {
        Conv2dConfig {
            kernel: 1,
            stride,
            padding: 0,
        }
    }
}

/// A bias-free convolution, `weight` `[out, in, k, k]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    cfg: Conv2dConfig,
}

impl Conv2d {
    /// The weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The geometry.
    pub fn config(&self) -> Conv2dConfig {
        self.cfg
    }

    /// The convolution of `relu(x)`; for a 1x1 kernel the ReLU is fused into it.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(cfg) = self.pointwise_config(true) {
            return pointwise_conv2d(x, &self.weight, cfg);
        }
        self.forward_t(&x.relu()?, true)
    }

    /// The fused op's settings when this is a 1x1 convolution without padding.
    fn pointwise_config(&self, relu_input: bool) -> Option<PointwiseConfig> {
        (self.cfg.kernel == 1 && self.cfg.padding == 0).then_some(PointwiseConfig {
            stride: self.cfg.stride,
            offset: 0,
            relu_input,
        })
    }
}

impl ModuleT for Conv2d {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        if let Some(cfg) = self.pointwise_config(false) {
            return pointwise_conv2d(x, &self.weight, cfg);
        }
        conv2d_unfold(x, &self.weight, self.cfg.padding, self.cfg.stride)
    }
}

/// Builds a [`Conv2d`] initialised as PyTorch does (uniform in `±1/sqrt(fan_in)`).
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    if cfg.kernel == 0 || cfg.stride == 0 || in_channels == 0 || out_channels == 0 {
        return Err(Error::Unsupported {
            op: "conv2d",
            message: format!("kernel, stride and channel counts must be positive, got {cfg:?}, {in_channels} -> {out_channels}"),
        }
        .into());
    }
    let bound = 1.0 / ((in_channels * cfg.kernel * cfg.kernel) as f64).sqrt();
    let weight = vb.get_with_hints(
        (out_channels, in_channels, cfg.kernel, cfg.kernel),
        "weight",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Ok(Conv2d { weight, cfg })
}

/// A 1x1 convolution, `[n, in, h, w] -> [n, out, h, w]` (the fused
/// [`pointwise_conv2d`] with its default settings).
pub fn pointwise(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    pointwise_conv2d(x, weight, PointwiseConfig::default())
}

/// Sum over the spatial dimensions divided by their size: `[n, c, h, w] -> [n, c]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean(D::Minus1)?.mean(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::subsample::subsample;
    use crate::testing::{assert_close, grad_check, randn};
    use candle_core::{DType, Device};

    #[test]
    fn pointwise_matches_convolution() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(&[3, 4, 7, 9], DType::F32, &dev)?;
        let w = randn(&[5, 4, 1, 1], DType::F32, &dev)?;
        assert_close(
            &pointwise(&x, &w)?,
            &x.conv2d(&w, 0, 1, 1, 1)?,
            1e-5,
            1e-4,
            "pointwise",
        )?;
        let strided = pointwise(&subsample(&x, 2, 0)?, &w)?;
        assert_close(
            &strided,
            &x.conv2d(&w, 0, 2, 1, 1)?,
            1e-5,
            1e-4,
            "pointwise stride 2",
        )
    }

    #[test]
    fn pointwise_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(&[2, 3, 5, 3], DType::F64, &dev)?;
        let w = randn(&[4, 3, 1, 1], DType::F64, &dev)?;
        grad_check(
            &[x, w],
            |v| pointwise(&subsample(&v[0], 2, 1)?, &v[1]),
            "pointwise",
        )
    }
}
