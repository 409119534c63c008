//! The running average of the weights that averaged SGD (Polyak and Juditsky 1992)
//! keeps, as PyTorch's `torch.optim.ASGD` with `t0 = 0` and `lambd = 0` does: after the
//! `n`-th step since averaging began, `ax = ax + (w - ax) / n`, so `ax` is the mean of
//! every iterate since then. Non-monotonically triggered ASGD (NT-ASGD, Merity et al.
//! 2017, used to retrain DARTS's recurrent cells) runs plain SGD until the validation
//! loss stops improving, then starts averaging and evaluates with the average.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use crate::error::{Error, Result};

/// The average of the iterates of a set of variables.
#[derive(Debug)]
pub struct IterateAverage {
    vars: Vec<(String, Var)>,
    averages: Vec<Tensor>,
    steps: u64,
}

impl IterateAverage {
    /// Starts averaging `vars`; the average is empty until the first [`update`](Self::update).
    pub fn new(vars: Vec<(String, Var)>) -> Result<Self> {
        let averages = vars
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        Ok(IterateAverage {
            vars,
            averages,
            steps: 0,
        })
    }

    /// The number of iterates averaged so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Adds the variables' current values (call after every optimizer step).
    pub fn update(&mut self) -> Result<()> {
        self.steps += 1;
        let mu = 1.0 / self.steps as f64;
        for ((_, var), ax) in self.vars.iter().zip(&mut self.averages) {
            let w = var.as_tensor();
            *ax = if self.steps == 1 {
                w.copy()?
            } else {
                (&*ax + ((w - &*ax)? * mu)?)?
            };
        }
        Ok(())
    }

    /// The averages by variable name.
    pub fn averages(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.vars
            .iter()
            .zip(&self.averages)
            .map(|((n, _), a)| (n.as_str(), a))
    }

    /// Sets the variables to their averages and returns the values they had, for
    /// [`restore`](Self::restore) (evaluation with the averaged weights).
    pub fn swap_in(&self) -> Result<Vec<Tensor>> {
        let mut saved = Vec::with_capacity(self.vars.len());
        for ((_, var), ax) in self.vars.iter().zip(&self.averages) {
            saved.push(var.as_tensor().copy()?);
            var.set(ax)?;
        }
        Ok(saved)
    }

    /// Puts back the values [`swap_in`](Self::swap_in) returned.
    pub fn restore(&self, saved: &[Tensor]) -> Result<()> {
        for ((_, var), w) in self.vars.iter().zip(saved) {
            var.set(w)?;
        }
        Ok(())
    }

    /// The averages (`ax.{name}`) and the step count (`ax_steps`), for checkpoints.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out: HashMap<String, Tensor> = self
            .averages()
            .map(|(n, a)| (format!("ax.{n}"), a.clone()))
            .collect();
        let device = self.averages.first().map(|t| t.device().clone());
        if let Some(device) = device {
            out.insert(
                "ax_steps".into(),
                Tensor::new(&[self.steps as f64], &device)?,
            );
        }
        Ok(out)
    }

    /// Restores a state saved by [`state`](Self::state); every variable must be there.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for key in state.keys().filter(|k| *k != "ax_steps") {
            let name = key.strip_prefix("ax.").unwrap_or(key);
            if !self.vars.iter().any(|(n, _)| n == name) {
                return Err(Error::Invalid(format!(
                    "averaging state for unknown variable {name:?}"
                )));
            }
        }
        for ((name, var), ax) in self.vars.iter().zip(&mut self.averages) {
            let t = state.get(&format!("ax.{name}")).ok_or_else(|| {
                Error::Invalid(format!("averaging state lacks variable {name:?}"))
            })?;
            if t.shape() != var.shape() {
                return Err(Error::Invalid(format!(
                    "averaging state for {name:?} has shape {:?}, the variable {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            *ax = t.to_dtype(var.dtype())?;
        }
        let steps = state
            .get("ax_steps")
            .ok_or_else(|| Error::Invalid("averaging state lacks ax_steps".into()))?;
        self.steps = steps
            .flatten_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_vec1::<f64>()?[0] as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Sgd, SgdConfig};
    use candle_core::Device;

    fn value(t: &Tensor) -> f64 {
        t.to_vec1::<f64>().unwrap()[0]
    }

    /// SGD with lr 0.5 on f(w) = w^2 / 2 (gradient w) from w = 8: iterates 4, 2, 1; their
    /// mean is 7/3, as PyTorch's ASGD(t0=0, lambd=0) reports in `ax`.
    #[test]
    fn average_is_the_mean_of_the_iterates() {
        let var = Var::new(&[8.0f64], &Device::Cpu).unwrap();
        let vars = vec![("w".to_string(), var.clone())];
        let cfg = SgdConfig {
            lr: 0.5,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        };
        let mut opt = Sgd::new(vars.clone(), cfg).unwrap();
        let mut avg = IterateAverage::new(vars.clone()).unwrap();
        for _ in 0..3 {
            let g = var.as_tensor().copy().unwrap();
            opt.step(&[Some(g)]).unwrap();
            avg.update().unwrap();
        }
        assert_eq!(value(var.as_tensor()), 1.0);
        let (_, ax) = avg.averages().next().unwrap();
        assert!((value(ax) - 7.0 / 3.0).abs() < 1e-12);

        let saved = avg.swap_in().unwrap();
        assert!((value(var.as_tensor()) - 7.0 / 3.0).abs() < 1e-12);
        avg.restore(&saved).unwrap();
        assert_eq!(value(var.as_tensor()), 1.0);

        let mut other = IterateAverage::new(vars).unwrap();
        other.load_state(&avg.state().unwrap()).unwrap();
        assert_eq!(other.steps(), 3);
        var.set(&Tensor::new(&[5.0f64], &Device::Cpu).unwrap())
            .unwrap();
        other.update().unwrap();
        avg.update().unwrap();
        let a = value(avg.averages().next().unwrap().1);
        assert_eq!(a, value(other.averages().next().unwrap().1));
        assert!((a - (4.0 + 2.0 + 1.0 + 5.0) / 4.0).abs() < 1e-12);

        let mut bad = avg.state().unwrap();
        bad.remove("ax_steps");
        assert!(other
            .load_state(&bad)
            .unwrap_err()
            .to_string()
            .contains("ax_steps"));
    }
}
