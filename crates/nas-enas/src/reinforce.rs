//! REINFORCE for the controller (`build_trainer` of the reference
//! `micro_controller.py`): reward = the sampled child's accuracy on one validation batch
//! plus `entropy_weight` times the arc's entropy; a moving-average baseline
//! `b <- decay b + (1 - decay) R`, updated once per sampled arc; loss `-log p(arc) (R - b)`;
//! each Adam update averages the gradients of `num_aggregate` arcs (the reference's
//! `SyncReplicasOptimizer` with one replica).
//!
//! The advantage uses the baseline after its update with the arc's reward (the order the
//! reference's control dependency asks for; docs/enas-reference.md, section 2).

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use nas_train::{grads, Adam, AdamConfig};

use crate::controller::Decisions;
use crate::{Error, Result};

/// Settings of [`Reinforce`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReinforceConfig {
    /// The controller's optimizer.
    pub adam: AdamConfig,
    /// Reward bonus per unit of entropy.
    pub entropy_weight: f64,
    /// Decay of the baseline.
    pub baseline_decay: f64,
}

/// What one update did.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStats {
    /// The rewards of the arcs.
    pub rewards: Vec<f64>,
    /// The mean advantage `R - b`.
    pub advantage: f64,
    /// The loss that was differentiated (mean over the arcs).
    pub loss: f64,
    /// The baseline after the update.
    pub baseline: f64,
}

/// The controller's trainer: Adam and the baseline.
#[derive(Debug)]
pub struct Reinforce {
    cfg: ReinforceConfig,
    adam: Adam,
    baseline: f64,
}

impl Reinforce {
    /// A trainer of `vars`, the controller's variables; the baseline starts at 0.
    pub fn new(vars: Vec<(String, Var)>, cfg: ReinforceConfig) -> Result<Self> {
        Ok(Reinforce {
            cfg,
            adam: Adam::new(vars, cfg.adam)?,
            baseline: 0.0,
        })
    }

    /// The current baseline.
    pub fn baseline(&self) -> f64 {
        self.baseline
    }

    /// The rewards of `decisions` given the children's accuracies.
    pub fn rewards(&self, decisions: &Decisions, accuracies: &[f64]) -> Vec<f64> {
        accuracies
            .iter()
            .zip(&decisions.entropy)
            .map(|(a, h)| a + self.cfg.entropy_weight * h)
            .collect()
    }

    /// The loss whose gradient one update applies: the mean of `nll_i (R_i - b_i)`, with
    /// each `b_i` the baseline after arc `i`'s reward; returns it and the baselines.
    pub fn loss(&self, decisions: &Decisions, rewards: &[f64]) -> Result<(Tensor, Vec<f64>)> {
        if rewards.len() != decisions.arcs.len() {
            return Err(Error::Config(format!(
                "{} rewards for {} arcs",
                rewards.len(),
                decisions.arcs.len()
            )));
        }
        let mut b = self.baseline;
        let mut baselines = Vec::with_capacity(rewards.len());
        let adv: Vec<f64> = rewards
            .iter()
            .map(|&r| {
                b -= (1.0 - self.cfg.baseline_decay) * (b - r);
                baselines.push(b);
                r - b
            })
            .collect();
        let nll = &decisions.nll;
        let adv = Tensor::new(adv.as_slice(), nll.device())?.to_dtype(nll.dtype())?;
        Ok(((nll * adv)?.mean_all()?, baselines))
    }

    /// One update from arcs sampled with their graph (`decisions`) and their children's
    /// accuracies.
    pub fn update(&mut self, decisions: &Decisions, accuracies: &[f64]) -> Result<UpdateStats> {
        let rewards = self.rewards(decisions, accuracies);
        let (loss, baselines) = self.loss(decisions, &rewards)?;
        let g = grads::collect(&loss.backward()?, self.adam.vars());
        self.adam.step(&g)?;
        let advantage = rewards
            .iter()
            .zip(&baselines)
            .map(|(r, b)| r - b)
            .sum::<f64>()
            / rewards.len() as f64;
        self.baseline = *baselines.last().unwrap_or(&self.baseline);
        Ok(UpdateStats {
            rewards,
            advantage,
            loss: loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            baseline: self.baseline,
        })
    }

    /// Adam's moments and the baseline, for checkpoints.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut s = self.adam.state()?;
        let dev = self
            .adam
            .vars()
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        s.insert("baseline".into(), Tensor::new(&[self.baseline], &dev)?);
        Ok(s)
    }

    /// Restores [`Reinforce::state`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let mut s = state.clone();
        let b = s
            .remove("baseline")
            .ok_or_else(|| Error::Config("the controller's checkpoint has no baseline".into()))?;
        self.baseline = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0];
        self.adam.load_state(&s)?;
        Ok(())
    }
}
