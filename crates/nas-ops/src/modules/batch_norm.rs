//! The batch-norm module: running statistics, with or without affine parameters (DARTS's
//! search cells use BN without affine parameters); training mode runs the fused op.

use candle_core::{Tensor, Var};
use candle_nn::{Init, ModuleT, VarBuilder};

use crate::error::Result;
use crate::fused::params::FusedBn;
use crate::ops::batch_norm::{batch_norm_train, BatchStats};

/// Settings of a [`BatchNorm`] module (PyTorch's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance.
    pub eps: f64,
    /// Weight of the new batch in the running statistics.
    pub momentum: f64,
    /// Learnable scale and shift.
    pub affine: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: 0.1,
            affine: true,
        }
    }
}

/// Batch norm with running statistics. In training it normalises with the batch (fused
/// op) and updates the running mean and unbiased variance; in evaluation it uses them.
///
/// Parameters are `weight` and `bias`, the running statistics `running_mean` and
/// `running_var` (PyTorch's names). The statistics come from the same [`VarBuilder`]:
/// stores that train must keep them apart from the trainable parameters (they never get a
/// gradient).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    affine: Option<(Tensor, Tensor)>,
    running_mean: Var,
    running_var: Var,
    cfg: BatchNormConfig,
}

impl BatchNorm {
    /// The running mean.
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The running (unbiased) variance.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// `(gamma, beta)`, if the BN has affine parameters.
    pub fn affine(&self) -> Option<(&Tensor, &Tensor)> {
        self.affine.as_ref().map(|(g, b)| (g, b))
    }

    /// The settings.
    pub fn config(&self) -> BatchNormConfig {
        self.cfg
    }

    /// Folds the statistics of training batches into the running statistics, in order,
    /// as that many training-mode calls would (for fused ops that normalise many times
    /// per call, such as [`rnn_sequence`](crate::rnn_sequence)).
    pub fn update_running_all(&self, stats: &[BatchStats]) -> Result<()> {
        stats.iter().try_for_each(|s| self.update_running(s))
    }

    fn update_running(&self, stats: &BatchStats) -> Result<()> {
        let m = self.cfg.momentum;
        let unbiased = stats.count as f64 / (stats.count.max(2) - 1) as f64;
        let dev = self.running_mean.device();
        let dtype = self.running_mean.dtype();
        let mean = Tensor::new(stats.mean.as_slice(), dev)?.to_dtype(dtype)?;
        let var = (Tensor::new(stats.var.as_slice(), dev)? * unbiased)?.to_dtype(dtype)?;
        let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let new_var = ((self.running_var.as_tensor() * (1.0 - m))? + (var * m)?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)
    }
}

impl FusedBn for BatchNorm {
    fn affine(&self) -> Option<(&Tensor, &Tensor)> {
        BatchNorm::affine(self)
    }
    fn eps(&self) -> f64 {
        self.cfg.eps
    }
    fn update_running_all(&self, stats: &[BatchStats]) -> Result<()> {
        BatchNorm::update_running_all(self, stats)
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            let (y, stats) = batch_norm_train(x, self.affine(), self.cfg.eps)?;
            self.update_running(&stats)?;
            return Ok(y);
        }
        let c = x.dim(1)?;
        let shape = (1, c, 1, 1);
        let inv = (self.running_var.as_tensor() + self.cfg.eps)?
            .sqrt()?
            .recip()?;
        let (scale, shift) = match &self.affine {
            Some((g, b)) => {
                let scale = (g * &inv)?;
                let shift = (b - (self.running_mean.as_tensor() * &scale)?)?;
                (scale, shift)
            }
            None => {
                let shift = (self.running_mean.as_tensor() * &inv)?.neg()?;
                (inv, shift)
            }
        };
        x.broadcast_mul(&scale.reshape(shape)?)?
            .broadcast_add(&shift.reshape(shape)?)
    }
}

/// Builds a [`BatchNorm`] for `channels`; `weight` starts at 1 and `bias` at 0.
pub fn batch_norm(channels: usize, cfg: BatchNormConfig, vb: VarBuilder) -> Result<BatchNorm> {
    let affine = if cfg.affine {
        Some((
            vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
            vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
        ))
    } else {
        None
    };
    // The running statistics are requested from `vb` under PyTorch's buffer names, so
    // that a store which keeps them (checkpoints, reference state dicts) sees them. A
    // tensor from a `VarMap`-like store is a variable, and `Var::from_tensor` then shares
    // its storage; from a read-only store it is a copy, which is all evaluation needs.
    let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
    let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
    Ok(BatchNorm {
        affine,
        running_mean: Var::from_tensor(&running_mean)?,
        running_var: Var::from_tensor(&running_var)?,
        cfg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn running_statistics_follow_pytorch() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        let bn = batch_norm(1, BatchNormConfig::default(), vb)?;
        let x = Tensor::new(&[[[[1f64, 2.0]], [[3.0, 6.0]]]], &dev)?.reshape((2, 1, 1, 2))?;
        let y = bn.forward_t(&x, true)?;
        // mean 3, biased var 3.5, unbiased 14 / 3.
        let rm: Vec<f64> = bn.running_mean().to_vec1()?;
        let rv: Vec<f64> = bn.running_var().to_vec1()?;
        assert!((rm[0] - 0.3).abs() < 1e-12, "{rm:?}");
        assert!((rv[0] - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-12, "{rv:?}");
        // The store sees the update: it holds the statistics under PyTorch's names.
        let stored: Vec<f64> = varmap.data().lock().expect("lock")["running_mean"]
            .as_tensor()
            .to_vec1()?;
        assert_eq!(stored, rm);
        let first: f64 = y.flatten_all()?.to_vec1::<f64>()?[0];
        assert!((first - (1.0 - 3.0) / (3.5f64 + 1e-5).sqrt()).abs() < 1e-9);
        // Evaluation uses the running statistics.
        let e: Vec<f64> = bn.forward_t(&x, false)?.flatten_all()?.to_vec1()?;
        assert!((e[0] - (1.0 - 0.3) / (rv[0] + 1e-5).sqrt()).abs() < 1e-9);
        Ok(())
    }
}
