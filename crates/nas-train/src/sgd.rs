//! SGD with momentum, Nesterov momentum and L2 weight decay, as PyTorch's `torch.optim.SGD`
//! (dampening 0), with momentum buffers that can be read (DARTS's unrolled step needs them)
//! and saved.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Settings of [`Sgd`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0: plain SGD).
    #[serde(default)]
    pub momentum: f64,
    /// L2 penalty added to the gradient.
    #[serde(default)]
    pub weight_decay: f64,
    /// Nesterov momentum.
    #[serde(default)]
    pub nesterov: bool,
}

/// Stochastic gradient descent over named variables.
#[derive(Debug)]
pub struct Sgd {
    vars: Vec<(String, Var)>,
    buffers: Vec<Option<Tensor>>,
    cfg: SgdConfig,
}

impl Sgd {
    /// An optimizer over `vars` (kept in this order).
    pub fn new(vars: Vec<(String, Var)>, cfg: SgdConfig) -> Result<Self> {
        if !(cfg.lr >= 0.0 && cfg.momentum >= 0.0 && cfg.weight_decay >= 0.0) {
            return Err(Error::Invalid(format!(
                "SGD needs lr, momentum and weight_decay >= 0, got {cfg:?}"
            )));
        }
        if cfg.nesterov && cfg.momentum == 0.0 {
            return Err(Error::Invalid(
                "Nesterov SGD needs a momentum above 0".into(),
            ));
        }
        let buffers = vec![None; vars.len()];
        Ok(Sgd { vars, buffers, cfg })
    }

    /// The variables, in order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The settings.
    pub fn config(&self) -> SgdConfig {
        self.cfg
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// Sets the learning rate (schedules call this).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// The momentum buffer of variable `i`; `None` before its first step.
    pub fn momentum_buffer(&self, i: usize) -> Option<&Tensor> {
        self.buffers.get(i).and_then(|b| b.as_ref())
    }

    /// One step with `grads` aligned with [`Sgd::vars`]; variables without a gradient
    /// are left alone, as in PyTorch.
    pub fn step(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        if grads.len() != self.vars.len() {
            return Err(Error::Invalid(format!(
                "{} gradients for {} variables",
                grads.len(),
                self.vars.len()
            )));
        }
        let SgdConfig {
            lr,
            momentum,
            weight_decay,
            nesterov,
        } = self.cfg;
        for (((_, var), grad), buf) in self.vars.iter().zip(grads).zip(&mut self.buffers) {
            let Some(grad) = grad else { continue };
            let w = var.as_tensor();
            let mut d = if weight_decay != 0.0 {
                (grad + (w * weight_decay)?)?
            } else {
                grad.clone()
            };
            if momentum != 0.0 {
                let b = match buf.take() {
                    Some(b) => ((b * momentum)? + &d)?,
                    None => d.clone(),
                };
                d = if nesterov {
                    (d + (&b * momentum)?)?
                } else {
                    b.clone()
                };
                // Detached: a buffer must not hold the graph of the step that made it.
                *buf = Some(b.detach());
            }
            var.set(&(w - (d * lr)?)?)?;
        }
        Ok(())
    }

    /// The momentum buffers by variable name, for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .zip(&self.buffers)
            .filter_map(|((name, _), b)| {
                b.as_ref()
                    .map(|b| (format!("momentum_buffer.{name}"), b.clone()))
            })
            .collect()
    }

    /// Restores buffers saved by [`Sgd::state`]; names must match.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.try_load_state(state).map_err(Error::Mismatch)
    }

    fn try_load_state(
        &mut self,
        state: &HashMap<String, Tensor>,
    ) -> std::result::Result<(), String> {
        let mut buffers = vec![None; self.vars.len()];
        for (key, t) in state {
            let name = key
                .strip_prefix("momentum_buffer.")
                .ok_or_else(|| format!("unexpected SGD state entry {key:?}"))?;
            let i = self
                .vars
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| format!("SGD state for unknown variable {name:?}"))?;
            if t.shape() != self.vars[i].1.shape() {
                return Err(format!(
                    "SGD state {key:?} has shape {:?}, the variable {:?}",
                    t.dims(),
                    self.vars[i].1.dims()
                ));
            }
            buffers[i] = Some(
                t.to_dtype(self.vars[i].1.dtype())
                    .map_err(|e| e.to_string())?,
            );
        }
        self.buffers = buffers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn one_var(x: f64) -> Vec<(String, Var)> {
        vec![("w".into(), Var::new(&[x], &Device::Cpu).unwrap())]
    }

    fn value(opt: &Sgd) -> f64 {
        opt.vars()[0].1.as_tensor().to_vec1::<f64>().unwrap()[0]
    }

    fn grad(g: f64) -> Vec<Option<Tensor>> {
        vec![Some(Tensor::new(&[g], &Device::Cpu).unwrap())]
    }

    #[test]
    fn momentum_buffers_hold_no_graph() {
        let vars = one_var(1.0);
        let w = vars[0].1.clone();
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: false,
        };
        let mut opt = Sgd::new(vars, cfg).unwrap();
        opt.step(&grad(1.0)).unwrap();
        opt.step(&grad(1.0)).unwrap();
        // Without the detach the buffer would reach `w` through the weight decay term.
        let buf = &opt.state()["momentum_buffer.w"];
        assert!(!crate::grads::reaches(buf, &w));
    }

    /// Steps worked by hand from PyTorch's update rule:
    /// d = g + wd w; b = m b + d (b = d at first); w -= lr (d + m b if Nesterov, else b).
    #[test]
    fn momentum_and_weight_decay_match_hand_computed_steps() {
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: false,
        };
        let mut opt = Sgd::new(one_var(1.0), cfg).unwrap();
        opt.step(&grad(0.5)).unwrap();
        // d = 0.5 + 0.01 = 0.51; b = 0.51; w = 1 - 0.051 = 0.949
        assert!((value(&opt) - 0.949).abs() < 1e-12);
        opt.step(&grad(-0.2)).unwrap();
        // d = -0.2 + 0.00949 = -0.19051; b = 0.459 - 0.19051 = 0.26849; w = 0.949 - 0.026849
        assert!((value(&opt) - 0.922151).abs() < 1e-12, "{}", value(&opt));
        let b = opt.momentum_buffer(0).unwrap().to_vec1::<f64>().unwrap()[0];
        assert!((b - 0.26849).abs() < 1e-12);
    }

    #[test]
    fn nesterov_matches_a_hand_computed_step() {
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.5,
            weight_decay: 0.0,
            nesterov: true,
        };
        let mut opt = Sgd::new(one_var(0.0), cfg).unwrap();
        opt.step(&grad(1.0)).unwrap();
        // b = 1; d = 1 + 0.5 = 1.5; w = -0.15
        assert!((value(&opt) + 0.15).abs() < 1e-12);
        opt.step(&grad(1.0)).unwrap();
        // b = 0.5 + 1 = 1.5; d = 1 + 0.75 = 1.75; w = -0.15 - 0.175
        assert!((value(&opt) + 0.325).abs() < 1e-12);
    }

    #[test]
    fn state_round_trips_and_missing_gradients_are_skipped() {
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        };
        let mut a = Sgd::new(one_var(1.0), cfg).unwrap();
        a.step(&grad(1.0)).unwrap();
        a.step(&[None]).unwrap();
        assert!((value(&a) - 0.9).abs() < 1e-12);
        let mut b = Sgd::new(one_var(value(&a)), cfg).unwrap();
        b.load_state(&a.state()).unwrap();
        a.step(&grad(1.0)).unwrap();
        b.step(&grad(1.0)).unwrap();
        assert_eq!(value(&a), value(&b));
        let mut bad = HashMap::new();
        bad.insert(
            "momentum_buffer.v".to_string(),
            Tensor::new(&[1.0f64], &Device::Cpu).unwrap(),
        );
        assert!(b
            .load_state(&bad)
            .unwrap_err()
            .to_string()
            .contains("\"v\""));
        assert!(Sgd::new(
            one_var(0.0),
            SgdConfig {
                nesterov: true,
                momentum: 0.0,
                ..cfg
            }
        )
        .is_err());
    }
}
