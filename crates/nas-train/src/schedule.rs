//! Learning-rate schedules, evaluated per epoch.
//!
//! Cosine annealing here gives epoch `e` the rate at `T_cur = e`, so the first epoch
//! trains at the base rate. DARTS's reference calls `scheduler.step()` at the top of each
//! epoch under PyTorch 0.3 semantics, which makes its first epoch use `T_cur = 1`; the
//! difference is one epoch's shift of the curve.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The same rate throughout.
    Constant {
        /// The rate.
        lr: f64,
    },
    /// `eta_min + (lr - eta_min) (1 + cos(pi e / epochs)) / 2`.
    Cosine {
        /// The rate at epoch 0.
        lr: f64,
        /// The rate approached at the end.
        eta_min: f64,
        /// The period in epochs.
        epochs: usize,
    },
    /// Cosine annealing with warm restarts (SGDR, Loshchilov and Hutter 2017), as ENAS:
    /// the first period lasts `t0` epochs, each next one `t_mul` times longer.
    Sgdr {
        /// The rate at the start of each period.
        lr_max: f64,
        /// The rate at the end of each period.
        lr_min: f64,
        /// Length of the first period.
        t0: usize,
        /// Growth of the period.
        t_mul: usize,
    },
    /// `lr * gamma^(floor(e / step_size))`.
    Step {
        /// The initial rate.
        lr: f64,
        /// Epochs between decays.
        step_size: usize,
        /// Decay factor.
        gamma: f64,
    },
}

impl LrSchedule {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let ok = match *self {
            LrSchedule::Constant { lr } => lr >= 0.0,
            LrSchedule::Cosine {
                lr,
                eta_min,
                epochs,
            } => lr >= 0.0 && eta_min >= 0.0 && epochs > 0,
            LrSchedule::Sgdr {
                lr_max,
                lr_min,
                t0,
                t_mul,
            } => lr_max >= 0.0 && lr_min >= 0.0 && t0 > 0 && t_mul > 0,
            LrSchedule::Step {
                lr,
                step_size,
                gamma,
            } => lr >= 0.0 && step_size > 0 && gamma > 0.0,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "learning-rate schedule {self:?}: rates must be >= 0 and periods > 0"
            )))
        }
    }

    /// The rate for epoch `epoch` (0-based).
    pub fn lr(&self, epoch: usize) -> f64 {
        let cosine = |hi: f64, lo: f64, t: f64, period: f64| {
            lo + (hi - lo) * (1.0 + (std::f64::consts::PI * t / period).cos()) / 2.0
        };
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::Cosine {
                lr,
                eta_min,
                epochs,
            } => cosine(lr, eta_min, epoch.min(epochs) as f64, epochs as f64),
            LrSchedule::Sgdr {
                lr_max,
                lr_min,
                t0,
                t_mul,
            } => {
                let (mut start, mut period) = (0usize, t0);
                while epoch >= start + period {
                    start += period;
                    period *= t_mul;
                }
                cosine(lr_max, lr_min, (epoch - start) as f64, period as f64)
            }
            LrSchedule::Step {
                lr,
                step_size,
                gamma,
            } => lr * gamma.powi((epoch / step_size) as i32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_runs_from_lr_to_eta_min() {
        let s = LrSchedule::Cosine {
            lr: 0.025,
            eta_min: 0.001,
            epochs: 50,
        };
        assert!((s.lr(0) - 0.025).abs() < 1e-15);
        assert!((s.lr(25) - 0.013).abs() < 1e-12);
        assert!((s.lr(50) - 0.001).abs() < 1e-15);
        assert!(s.lr(10) > s.lr(11));
    }

    #[test]
    fn sgdr_restarts_after_growing_periods() {
        // ENAS: T0 = 10, T_mul = 2 -> restarts at 10, 30, 70.
        let s = LrSchedule::Sgdr {
            lr_max: 0.05,
            lr_min: 0.001,
            t0: 10,
            t_mul: 2,
        };
        for restart in [0, 10, 30, 70] {
            assert!((s.lr(restart) - 0.05).abs() < 1e-15, "epoch {restart}");
        }
        assert!((s.lr(20) - 0.0255).abs() < 1e-12);
        assert!(s.lr(29) < s.lr(28));
    }

    #[test]
    fn step_decay_and_validation() {
        let s = LrSchedule::Step {
            lr: 0.1,
            step_size: 1,
            gamma: 0.97,
        };
        assert!((s.lr(2) - 0.1 * 0.97 * 0.97).abs() < 1e-15);
        assert!(LrSchedule::Cosine {
            lr: 0.1,
            eta_min: 0.0,
            epochs: 0
        }
        .validate()
        .is_err());
        assert!(s.validate().is_ok());
    }
}
