//! Adam and AdamW as PyTorch's `torch.optim.Adam` / `AdamW`: L2 weight decay added to
//! the gradient (Adam) or decoupled decay of the weights (AdamW), bias-corrected moments.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Settings of [`Adam`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay rates of the first and second moments.
    pub betas: (f64, f64),
    /// Added to the denominator.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Decoupled weight decay (AdamW) instead of an L2 term in the gradient.
    #[serde(default)]
    pub decoupled: bool,
}

fn default_eps() -> f64 {
    1e-8
}

/// Adam over named variables.
#[derive(Debug)]
pub struct Adam {
    vars: Vec<(String, Var)>,
    moments: Vec<Option<(Tensor, Tensor)>>,
    steps: Vec<u64>,
    cfg: AdamConfig,
}

impl Adam {
    /// An optimizer over `vars` (kept in this order).
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamConfig) -> Result<Self> {
        let (b1, b2) = cfg.betas;
        if !(cfg.lr >= 0.0
            && (0.0..1.0).contains(&b1)
            && (0.0..1.0).contains(&b2)
            && cfg.eps >= 0.0
            && cfg.weight_decay >= 0.0)
        {
            return Err(Error::Invalid(format!(
                "Adam needs lr >= 0, betas in [0, 1), eps and weight_decay >= 0, got {cfg:?}"
            )));
        }
        let n = vars.len();
        Ok(Adam {
            vars,
            moments: vec![None; n],
            steps: vec![0; n],
            cfg,
        })
    }

    /// The variables, in order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// Sets the learning rate.
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// One step with `grads` aligned with [`Adam::vars`]; variables without a gradient
    /// are left alone.
    pub fn step(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        if grads.len() != self.vars.len() {
            return Err(Error::Invalid(format!(
                "{} gradients for {} variables",
                grads.len(),
                self.vars.len()
            )));
        }
        let AdamConfig {
            lr,
            betas: (b1, b2),
            eps,
            weight_decay,
            decoupled,
        } = self.cfg;
        for (i, ((_, var), grad)) in self.vars.iter().zip(grads).enumerate() {
            let Some(grad) = grad else { continue };
            let mut w = var.as_tensor().clone();
            let g = if weight_decay != 0.0 && !decoupled {
                (grad + (&w * weight_decay)?)?
            } else {
                grad.clone()
            };
            if weight_decay != 0.0 && decoupled {
                w = (&w * (1.0 - lr * weight_decay))?;
            }
            let (m, v) = match self.moments[i].take() {
                Some((m, v)) => (
                    ((m * b1)? + (&g * (1.0 - b1))?)?,
                    ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                ),
                None => ((&g * (1.0 - b1))?, (g.sqr()? * (1.0 - b2))?),
            };
            self.steps[i] += 1;
            let t = self.steps[i] as i32;
            let bc1 = 1.0 - b1.powi(t);
            let bc2 = 1.0 - b2.powi(t);
            let denom = ((v.sqrt()? / bc2.sqrt())? + eps)?;
            let update = ((&m / denom)? * (lr / bc1))?;
            var.set(&(w - update)?)?;
            // Detached: the moments must not hold the graph of the step that made them
            // (each step's would reach back through all earlier ones).
            self.moments[i] = Some((m.detach(), v.detach()));
        }
        Ok(())
    }

    /// Moments and step counts by variable name, for checkpoints.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (((name, var), mv), &t) in self.vars.iter().zip(&self.moments).zip(&self.steps) {
            if let Some((m, v)) = mv {
                out.insert(format!("exp_avg.{name}"), m.clone());
                out.insert(format!("exp_avg_sq.{name}"), v.clone());
                out.insert(
                    format!("step.{name}"),
                    Tensor::new(&[t as f64], var.device())?,
                );
            }
        }
        Ok(out)
    }

    /// Restores state saved by [`Adam::state`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.try_load_state(state).map_err(Error::Mismatch)
    }

    fn try_load_state(
        &mut self,
        state: &HashMap<String, Tensor>,
    ) -> std::result::Result<(), String> {
        let mut moments = vec![None; self.vars.len()];
        let mut steps = vec![0; self.vars.len()];
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let get = |kind: &str| state.get(&format!("{kind}.{name}"));
            match (get("exp_avg"), get("exp_avg_sq"), get("step")) {
                (None, None, None) => {}
                (Some(m), Some(v), Some(t)) => {
                    for (key, x) in [("exp_avg", m), ("exp_avg_sq", v)] {
                        if x.shape() != var.shape() {
                            return Err(format!(
                                "Adam state {key}.{name} has shape {:?}, the variable {:?}",
                                x.dims(),
                                var.dims()
                            ));
                        }
                    }
                    let t = t
                        .to_dtype(candle_core::DType::F64)
                        .and_then(|t| t.to_vec1::<f64>())
                        .map_err(|e| e.to_string())?;
                    steps[i] = match t.as_slice() {
                        [t] if *t >= 1.0 => *t as u64,
                        other => {
                            return Err(format!(
                                "Adam state step.{name} is {other:?}, expected one count >= 1"
                            ))
                        }
                    };
                    let dt = var.dtype();
                    let conv = |x: &Tensor| x.to_dtype(dt).map_err(|e| e.to_string());
                    moments[i] = Some((conv(m)?, conv(v)?));
                }
                _ => return Err(format!("Adam state for {name:?} is incomplete")),
            }
        }
        let known = state.len();
        let used = 3 * moments.iter().filter(|m| m.is_some()).count();
        if known != used {
            return Err(format!(
                "Adam state has {known} entries, {used} belong to this model's variables"
            ));
        }
        self.moments = moments;
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn moments_hold_no_graph() {
        let var = Var::new(&[1.0f64], &Device::Cpu).unwrap();
        let cfg = AdamConfig {
            lr: 0.01,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.1,
            decoupled: false,
        };
        let mut opt = Adam::new(vec![("w".into(), var.clone())], cfg).unwrap();
        for _ in 0..2 {
            opt.step(&[Some(Tensor::new(&[0.5], &Device::Cpu).unwrap())])
                .unwrap();
        }
        let state = opt.state().unwrap();
        for key in ["exp_avg.w", "exp_avg_sq.w"] {
            assert!(!crate::grads::reaches(&state[key], &var), "{key}");
        }
    }

    fn run(cfg: AdamConfig, grads: &[f64]) -> f64 {
        let var = Var::new(&[1.0f64], &Device::Cpu).unwrap();
        let mut opt = Adam::new(vec![("w".into(), var.clone())], cfg).unwrap();
        for &g in grads {
            opt.step(&[Some(Tensor::new(&[g], &Device::Cpu).unwrap())])
                .unwrap();
        }
        var.as_tensor().to_vec1::<f64>().unwrap()[0]
    }

    /// The first Adam step moves every weight by about `lr` in the gradient's direction;
    /// the second is worked by hand from the bias-corrected moments.
    #[test]
    fn matches_hand_computed_steps() {
        let cfg = AdamConfig {
            lr: 0.1,
            betas: (0.5, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        };
        let w1 = run(cfg, &[2.0]);
        assert!(
            (w1 - (1.0 - 0.1 * 2.0 / (2.0 + 1e-8))).abs() < 1e-12,
            "{w1}"
        );
        // m1 = 0.5 * 2 = 1, v1 = 0.001 * 4 = 0.004; the first step moved by lr.
        let w2 = run(cfg, &[2.0, -2.0]);
        // m2 = 0.5 * 1 + 0.5 * -2 = -0.5, bc1 = 0.75 -> m^ = -2/3
        // v2 = 0.999 * 0.004 + 0.001 * 4 = 0.007996, bc2 = 1 - 0.998001 = 0.001999 -> v^ = 4.0
        let expected = w1 - 0.1 * (-2.0 / 3.0) / (2.0 + 1e-8);
        assert!((w2 - expected).abs() < 1e-9, "{w2} vs {expected}");
    }

    #[test]
    fn weight_decay_l2_and_decoupled() {
        let base = AdamConfig {
            lr: 0.1,
            betas: (0.9, 0.999),
            eps: 0.0,
            weight_decay: 0.5,
            decoupled: false,
        };
        // L2: g = 1 + 0.5 * 1 = 1.5 -> first step moves by lr
        assert!((run(base, &[1.0]) - 0.9).abs() < 1e-12);
        // decoupled: w = 1 * (1 - 0.05) then minus lr * sign
        let w = run(
            AdamConfig {
                decoupled: true,
                ..base
            },
            &[1.0],
        );
        assert!((w - 0.85).abs() < 1e-12, "{w}");
    }

    #[test]
    fn state_round_trips() {
        let cfg = AdamConfig {
            lr: 0.01,
            betas: (0.5, 0.999),
            eps: 1e-8,
            weight_decay: 1e-3,
            decoupled: false,
        };
        let dev = Device::Cpu;
        let a_var = Var::new(&[1.0f64, 2.0], &dev).unwrap();
        let mut a = Adam::new(vec![("x".into(), a_var.clone())], cfg).unwrap();
        let g = || vec![Some(Tensor::new(&[0.3f64, -0.7], &dev).unwrap())];
        a.step(&g()).unwrap();
        let b_var = Var::from_tensor(&a_var.as_tensor().copy().unwrap()).unwrap();
        let mut b = Adam::new(vec![("x".into(), b_var.clone())], cfg).unwrap();
        b.load_state(&a.state().unwrap()).unwrap();
        a.step(&g()).unwrap();
        b.step(&g()).unwrap();
        assert_eq!(
            a_var.as_tensor().to_vec1::<f64>().unwrap(),
            b_var.as_tensor().to_vec1::<f64>().unwrap()
        );
        let mut partial = a.state().unwrap();
        partial.remove("step.x");
        assert!(b
            .load_state(&partial)
            .unwrap_err()
            .to_string()
            .contains("incomplete"));
    }
}
