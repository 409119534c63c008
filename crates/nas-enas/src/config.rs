//! The ENAS search configuration: TOML with `deny_unknown_fields`, named presets, and
//! `key=value` overrides by dotted path (`controller.train_steps=10`).

use nas_train::{AdamConfig, ConfigFile, LrSchedule, RunConfig, SgdConfig};
use serde::{Deserialize, Serialize};

use crate::controller::ControllerConfig;
use crate::micro_child::MicroChildConfig;
use crate::{Error, Result};

/// Everything that decides an ENAS search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnasSearchConfig {
    /// The data and its preprocessing.
    pub data: DataConfig,
    /// The shared-weight child's sizes.
    pub model: ModelConfig,
    /// The shared weights' optimizer.
    pub weights: WeightsConfig,
    /// The controller and its training.
    pub controller: ControllerSection,
    /// Epochs, seed, checkpoints.
    pub run: RunConfig,
}

/// Data settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A data set name of `nas-data`.
    pub dataset: String,
    /// Training images held out as the controller's validation data (ENAS: the last
    /// 5,000 of CIFAR-10's 50,000); never the test set.
    pub valid_images: usize,
    /// Images per batch (shared steps, rewards, derivation).
    pub batch_size: usize,
    /// Zero padding of the random crop (4 for CIFAR; 0: no crop).
    pub crop_padding: usize,
    /// Random horizontal flips.
    pub flip: bool,
    /// Use only this many training images (a seeded random subset), for CPU presets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_train_images: Option<usize>,
}

/// The child's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `F`, the first layers' channels.
    pub filters: usize,
    /// `L` (the child has `L + 2` layers).
    pub layers: usize,
    /// Nodes per cell.
    pub nodes: usize,
    /// Build and train the auxiliary head.
    pub aux_head: bool,
    /// Weight of the auxiliary loss.
    pub aux_weight: f64,
    /// Keep probability of the dropout before the classifier.
    pub keep_prob: f64,
}

/// Nesterov SGD of the shared weights with cosine warm restarts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsConfig {
    /// Rate at the start of each period.
    pub lr_max: f64,
    /// Rate at the end of each period.
    pub lr_min: f64,
    /// First period, epochs.
    pub t0: usize,
    /// Period growth.
    pub t_mul: usize,
    /// Nesterov momentum.
    pub momentum: f64,
    /// L2 penalty `l2 * sum(w^2)` of the loss (the gradient gets `2 * l2 * w`).
    pub l2: f64,
    /// Clip gradients to this global norm (the reference asks for 5 and drops it).
    pub grad_clip: f64,
}

/// Which policy samples the children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControllerKind {
    /// ENAS's LSTM controller, trained with REINFORCE.
    Lstm,
    /// Uniformly random children and no controller training (the paper's ablation).
    Random,
}

/// The controller, its training and the final derivation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    /// `lstm` or `random`.
    pub kind: ControllerKind,
    /// LSTM units.
    pub lstm_size: usize,
    /// LSTM layers.
    pub lstm_layers: usize,
    /// Logit bound `c * tanh` (0: off).
    pub tanh_constant: f64,
    /// Op logits' bound divisor.
    pub op_tanh_reduce: f64,
    /// Logit temperature (0: off).
    pub temperature: f64,
    /// Adam's learning rate.
    pub lr: f64,
    /// Adam's epsilon.
    pub adam_eps: f64,
    /// Reward bonus per unit of the sampled arc's entropy.
    pub entropy_weight: f64,
    /// Decay of the moving-average baseline.
    pub baseline_decay: f64,
    /// Adam updates per controller phase.
    pub train_steps: usize,
    /// Sampled arcs averaged into each update.
    pub num_aggregate: usize,
    /// Arcs sampled at the end, each scored on one validation batch; the best is kept.
    pub derive_samples: usize,
}

/// The names of the presets.
pub const PRESETS: &[(&str, &str)] = &[
    ("digits", "the embedded 8x8 digits, F=8, L=1 (3 layers), 10 epochs: under a minute on 2 cores"),
    ("fashion-mnist", "Fashion-MNIST (real, 28x28), a 20,000-image subset, F=8, L=3 (5 layers), 30 epochs: about an hour on 2 cores"),
    ("paper", "the reference's CIFAR-10 micro search: F=20, L=6, batch 160, 150 epochs, 30 x 10 controller samples per epoch"),
];

impl EnasSearchConfig {
    /// A preset by name (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        let paper = EnasSearchConfig {
            data: DataConfig {
                dataset: "cifar10".into(),
                valid_images: 5_000,
                batch_size: 160,
                crop_padding: 4,
                flip: true,
                max_train_images: None,
            },
            model: ModelConfig {
                filters: 20,
                layers: 6,
                nodes: 5,
                aux_head: true,
                aux_weight: 0.4,
                keep_prob: 0.9,
            },
            weights: WeightsConfig {
                lr_max: 0.05,
                lr_min: 5e-4,
                t0: 10,
                t_mul: 2,
                momentum: 0.9,
                l2: 1e-4,
                grad_clip: 5.0,
            },
            controller: ControllerSection {
                kind: ControllerKind::Lstm,
                lstm_size: 64,
                lstm_layers: 1,
                tanh_constant: 1.1,
                op_tanh_reduce: 2.5,
                temperature: 0.0,
                lr: 0.0035,
                adam_eps: 1e-3,
                entropy_weight: 1e-4,
                baseline_decay: 0.99,
                train_steps: 30,
                num_aggregate: 10,
                derive_samples: 10,
            },
            run: RunConfig {
                epochs: 150,
                seed: 1,
                keep_checkpoints: 2,
                log_every: 50,
            },
        };
        match name {
            "paper" => Ok(paper),
            // One cosine period of 10 epochs of 46 shared steps, 10 controller updates
            // of 5 children each.
            "digits" => Ok(EnasSearchConfig {
                data: DataConfig {
                    dataset: "digits".into(),
                    valid_images: 300,
                    batch_size: 32,
                    crop_padding: 1,
                    flip: false,
                    max_train_images: None,
                },
                model: ModelConfig {
                    filters: 8,
                    layers: 1,
                    aux_head: false,
                    ..paper.model
                },
                controller: ControllerSection {
                    train_steps: 10,
                    num_aggregate: 5,
                    ..paper.controller
                },
                run: RunConfig {
                    epochs: 10,
                    log_every: 10,
                    ..paper.run
                },
                ..paper
            }),
            // Sized for about an hour on 2 cores: 18,000 training and 2,000 validation
            // images, 281 shared steps and the reference's 30 x 10 controller samples
            // per epoch, 30 epochs (two SGDR periods, 10 + 20).
            "fashion-mnist" => Ok(EnasSearchConfig {
                data: DataConfig {
                    dataset: "fashion-mnist".into(),
                    valid_images: 2_000,
                    batch_size: 64,
                    crop_padding: 2,
                    flip: true,
                    max_train_images: Some(20_000),
                },
                model: ModelConfig {
                    filters: 8,
                    layers: 3,
                    ..paper.model
                },
                run: RunConfig {
                    epochs: 30,
                    log_every: 50,
                    ..paper.run
                },
                ..paper
            }),
            other => Err(nas_train::unknown_preset(other, PRESETS).into()),
        }
    }

    /// The preset a data set gets when none is named, by its size class.
    pub fn default_preset_for(dataset: &str) -> &'static str {
        match nas_data::Dataset::from_name(dataset).map(|d| d.scale()) {
            Ok(nas_data::Scale::Tiny) => "digits",
            Ok(nas_data::Scale::Small) => "fashion-mnist",
            _ => "paper",
        }
    }

    /// The child for images of `in_channels` channels and `classes` classes.
    pub fn child(&self, in_channels: usize, classes: usize) -> MicroChildConfig {
        let m = &self.model;
        MicroChildConfig {
            in_channels,
            classes,
            filters: m.filters,
            layers: m.layers,
            nodes: m.nodes,
            aux_head: m.aux_head,
            keep_prob: m.keep_prob,
        }
    }

    /// The controller's sizes.
    pub fn controller(&self) -> ControllerConfig {
        let c = &self.controller;
        ControllerConfig {
            lstm_size: c.lstm_size,
            lstm_layers: c.lstm_layers,
            nodes: self.model.nodes,
            tanh_constant: c.tanh_constant,
            op_tanh_reduce: c.op_tanh_reduce,
            temperature: c.temperature,
        }
    }

    /// The shared weights' optimizer (the L2 term's gradient is `2 l2 w`).
    pub fn sgd(&self) -> SgdConfig {
        SgdConfig {
            lr: self.weights.lr_max,
            momentum: self.weights.momentum,
            weight_decay: 2.0 * self.weights.l2,
            nesterov: true,
        }
    }

    /// The shared weights' schedule.
    pub fn schedule(&self) -> LrSchedule {
        let w = &self.weights;
        LrSchedule::Sgdr {
            lr_max: w.lr_max,
            lr_min: w.lr_min,
            t0: w.t0,
            t_mul: w.t_mul,
        }
    }

    /// The controller's optimizer: Adam with beta1 = 0 (the reference's).
    pub fn adam(&self) -> AdamConfig {
        AdamConfig {
            lr: self.controller.lr,
            betas: (0.0, 0.999),
            eps: self.controller.adam_eps,
            weight_decay: 0.0,
            decoupled: false,
        }
    }
}

impl ConfigFile for EnasSearchConfig {
    type Error = Error;
    const OPTIONAL: &'static [&'static str] = &["data.max_train_images"];

    /// Checks ranges; the message names the key.
    fn validate(&self) -> Result<()> {
        let d = &self.data;
        let c = &self.controller;
        let w = &self.weights;
        let checks: [(bool, &str); 12] = [
            (
                d.batch_size >= 2,
                "data.batch_size must be at least 2 (batch norm needs 2 images)",
            ),
            (d.valid_images >= 1, "data.valid_images must be at least 1"),
            (
                d.max_train_images.is_none_or(|m| m > d.valid_images),
                "data.max_train_images must be above data.valid_images",
            ),
            (self.run.epochs >= 1, "run.epochs must be at least 1"),
            (
                w.lr_max >= w.lr_min && w.lr_min >= 0.0,
                "weights.lr_max must be >= weights.lr_min >= 0",
            ),
            (
                w.t0 >= 1 && w.t_mul >= 1,
                "weights.t0 and weights.t_mul must be at least 1",
            ),
            (
                w.momentum > 0.0 && w.momentum < 1.0,
                "weights.momentum must be in (0, 1) (Nesterov)",
            ),
            (
                w.l2 >= 0.0 && w.grad_clip > 0.0,
                "weights.l2 must be >= 0 and weights.grad_clip positive",
            ),
            (
                self.model.aux_weight >= 0.0,
                "model.aux_weight must be >= 0",
            ),
            (
                c.lr > 0.0 && c.adam_eps >= 0.0,
                "controller.lr must be positive and controller.adam_eps >= 0",
            ),
            (
                (0.0..1.0).contains(&c.baseline_decay),
                "controller.baseline_decay must be in [0, 1)",
            ),
            (
                c.num_aggregate >= 1 && c.derive_samples >= 1,
                "controller.num_aggregate and controller.derive_samples must be at least 1",
            ),
        ];
        nas_train::check(&checks)?;
        self.controller().validate("controller.")?;
        self.child(1, 2).validate("model.", None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_and_the_paper_is_the_reference_script() {
        for (name, _) in PRESETS {
            let cfg = EnasSearchConfig::preset(name).unwrap();
            let text = cfg.to_toml().unwrap();
            assert_eq!(EnasSearchConfig::from_toml(&text).unwrap(), cfg, "{name}");
        }
        let p = EnasSearchConfig::preset("paper").unwrap();
        // scripts/cifar10_micro_search.sh
        assert_eq!((p.data.batch_size, p.run.epochs), (160, 150));
        assert_eq!((p.model.filters, p.model.layers, p.model.nodes), (20, 6, 5));
        assert_eq!(
            (p.controller.train_steps, p.controller.num_aggregate),
            (30, 10)
        );
        assert_eq!(p.schedule().lr(0), 0.05);
        assert_eq!(p.adam().betas.0, 0.0);
    }

    #[test]
    fn overrides_name_bad_keys_and_values() {
        let cfg = EnasSearchConfig::preset("digits").unwrap();
        let c2 = cfg
            .with_overrides(&["controller.kind=\"random\"".into()])
            .unwrap();
        assert_eq!(c2.controller.kind, ControllerKind::Random);
        let err = cfg
            .with_overrides(&["model.filters=7".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.filters"), "{err}");
        let err = cfg
            .with_overrides(&["controller.baseline_decay=1.5".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("controller.baseline_decay"), "{err}");
        let err = cfg
            .with_overrides(&["controller.kind=\"greedy\"".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("greedy"), "{err}");
    }
}
