//! The configuration of training a genotype from scratch: TOML with
//! `deny_unknown_fields`, presets, `key=value` overrides (shared with the search).

use nas_train::{ConfigFile, LrSchedule, RunConfig, SgdConfig};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Everything that decides a training run (the genotype is stored beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Data and augmentation.
    pub data: TrainDataConfig,
    /// Network sizes and regularisation.
    pub model: TrainModelConfig,
    /// SGD and its schedule.
    pub optim: TrainOptimConfig,
    /// Epochs, seed, checkpoints.
    pub run: RunConfig,
}

/// Data settings of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainDataConfig {
    /// An in-memory image set (`digits`, `mnist`, `fashion-mnist`, `cifar10`, `cifar100`).
    pub dataset: String,
    /// Images per batch.
    pub batch_size: usize,
    /// Zero padding of the random crop (0: none).
    pub crop_padding: usize,
    /// Random horizontal flips.
    pub flip: bool,
    /// Cutout side (0: none).
    pub cutout: usize,
    /// Training images held out (seeded) for model selection; the test set is only used
    /// once, at the end.
    pub valid_images: usize,
    /// Use only this many training images (seeded subset, validation included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_train_images: Option<usize>,
}

/// Network settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainModelConfig {
    /// `C`.
    pub channels: usize,
    /// Cells.
    pub layers: usize,
    /// Train with the auxiliary head.
    pub auxiliary: bool,
    /// Weight of the auxiliary loss.
    pub auxiliary_weight: f64,
    /// Final drop-path probability, reached linearly over the epochs (ENAS cells scale
    /// it further by depth: `(i + 1) / layers` in cell `i`).
    pub drop_path: f64,
    /// Dropout probability of the features before the classifier (ENAS: `1 - keep_prob`).
    #[serde(default)]
    pub dropout: f64,
}

/// Optimizer settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptimConfig {
    /// Initial learning rate.
    pub lr: f64,
    /// Final rate of the cosine schedule.
    pub lr_min: f64,
    /// Momentum.
    pub momentum: f64,
    /// Nesterov momentum (ENAS).
    #[serde(default)]
    pub nesterov: bool,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Global-norm gradient clipping.
    pub grad_clip: f64,
    /// Label smoothing of the loss (0.1 on ImageNet).
    pub label_smoothing: f64,
    /// `cosine` (to `lr_min` over the epochs), `step` (times `gamma` every epoch, the
    /// reference's ImageNet schedule) or `sgdr` (cosine from `lr` to `lr_min` restarting
    /// after `t0` epochs, each period `t_mul` times longer: ENAS).
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// Decay per epoch of the `step` schedule.
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// First period of the `sgdr` schedule, in epochs.
    #[serde(default = "default_t0")]
    pub t0: usize,
    /// Growth of the `sgdr` schedule's periods.
    #[serde(default = "default_t_mul")]
    pub t_mul: usize,
}

/// The learning-rate schedule of a training run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Cosine annealing from `lr` to `lr_min`.
    #[default]
    Cosine,
    /// `lr * gamma^epoch`.
    Step,
    /// Cosine with warm restarts.
    Sgdr,
}

fn default_gamma() -> f64 {
    0.97
}

fn default_t0() -> usize {
    10
}

fn default_t_mul() -> usize {
    2
}

/// The presets of `nas train`.
pub const TRAIN_PRESETS: &[(&str, &str)] = &[
    ("digits", "the embedded digits, C=8, 5 cells, 20 epochs: minutes on 2 cores"),
    ("fashion-mnist", "Fashion-MNIST (real), 6,000 training images (1,000 of them validate), C=8, 5 cells, 8 epochs: about 12 minutes on 2 cores"),
    ("paper", "the paper's CIFAR-10 training: C=36, 20 cells, batch 96, 600 epochs, cutout, drop path 0.2, auxiliary 0.4"),
    ("imagenet", "the paper's ImageNet training (mobile setting): C=48, 14 cells, batch 128, lr 0.1 times 0.97 per epoch, 250 epochs, label smoothing 0.1, auxiliary 0.4"),
    ("enas", "ENAS's final CIFAR-10 training of micro cells (scripts/cifar10_micro_final.sh): C=36, 17 cells, batch 144, 630 epochs, Nesterov SGD, SGDR lr 0.05 to 0.0001 (T0=10, Tmul=2), weight decay 4e-4, drop path 0.4, dropout 0.2, auxiliary 0.4"),
];

impl TrainConfig {
    /// A preset by name.
    pub fn preset(name: &str) -> Result<Self> {
        let paper = TrainConfig {
            data: TrainDataConfig {
                dataset: "cifar10".into(),
                batch_size: 96,
                crop_padding: 4,
                flip: true,
                cutout: 16,
                valid_images: 5_000,
                max_train_images: None,
            },
            model: TrainModelConfig {
                channels: 36,
                layers: 20,
                auxiliary: true,
                auxiliary_weight: 0.4,
                drop_path: 0.2,
                dropout: 0.0,
            },
            optim: TrainOptimConfig {
                lr: 0.025,
                lr_min: 0.0,
                momentum: 0.9,
                nesterov: false,
                weight_decay: 3e-4,
                grad_clip: 5.0,
                label_smoothing: 0.0,
                schedule: ScheduleKind::Cosine,
                gamma: 0.97,
                t0: default_t0(),
                t_mul: default_t_mul(),
            },
            run: RunConfig {
                epochs: 600,
                seed: 0,
                keep_checkpoints: 2,
                log_every: 50,
            },
        };
        // The auxiliary head needs 8x8 features after the second reduction (32x32
        // images); the small data sets' 8x8 and 28x28 images are too small for it.
        let small_model = TrainModelConfig {
            channels: 8,
            layers: 5,
            auxiliary: false,
            auxiliary_weight: 0.4,
            drop_path: 0.1,
            dropout: 0.0,
        };
        match name {
            "paper" => Ok(paper),
            // ENAS's `l2_reg` 2e-4 is added to the loss as l2_reg * sum(w^2), a weight
            // decay of 4e-4; its per-tensor clipping appends the unclipped gradients (a
            // no-op), we clip the global norm to 5 as DARTS does.
            "enas" => Ok(TrainConfig {
                data: TrainDataConfig {
                    batch_size: 144,
                    cutout: 0,
                    ..paper.data
                },
                model: TrainModelConfig {
                    channels: 36,
                    layers: 17,
                    auxiliary: true,
                    auxiliary_weight: 0.4,
                    drop_path: 0.4,
                    dropout: 0.2,
                },
                optim: TrainOptimConfig {
                    lr: 0.05,
                    lr_min: 0.0001,
                    nesterov: true,
                    weight_decay: 4e-4,
                    schedule: ScheduleKind::Sgdr,
                    ..paper.optim
                },
                run: RunConfig {
                    epochs: 630,
                    ..paper.run
                },
            }),
            "imagenet" => Ok(TrainConfig {
                data: TrainDataConfig {
                    dataset: "imagenet".into(),
                    batch_size: 128,
                    crop_padding: 0,
                    flip: true,
                    cutout: 0,
                    valid_images: 10_000,
                    max_train_images: None,
                },
                model: TrainModelConfig {
                    channels: 48,
                    layers: 14,
                    auxiliary: true,
                    auxiliary_weight: 0.4,
                    drop_path: 0.0,
                    dropout: 0.0,
                },
                optim: TrainOptimConfig {
                    lr: 0.1,
                    lr_min: 0.0,
                    weight_decay: 3e-5,
                    label_smoothing: 0.1,
                    schedule: ScheduleKind::Step,
                    ..paper.optim
                },
                run: RunConfig {
                    epochs: 250,
                    ..paper.run
                },
            }),
            "digits" => Ok(TrainConfig {
                data: TrainDataConfig {
                    dataset: "digits".into(),
                    batch_size: 32,
                    crop_padding: 1,
                    flip: false,
                    cutout: 0,
                    valid_images: 200,
                    max_train_images: None,
                },
                model: small_model,
                run: RunConfig {
                    epochs: 20,
                    log_every: 10,
                    ..paper.run
                },
                ..paper
            }),
            "fashion-mnist" => Ok(TrainConfig {
                data: TrainDataConfig {
                    dataset: "fashion-mnist".into(),
                    batch_size: 64,
                    crop_padding: 2,
                    flip: true,
                    cutout: 0,
                    valid_images: 1_000,
                    max_train_images: Some(6_000),
                },
                model: small_model,
                run: RunConfig {
                    epochs: 8,
                    log_every: 20,
                    ..paper.run
                },
                ..paper
            }),
            other => Err(nas_train::unknown_preset(other, TRAIN_PRESETS).into()),
        }
    }

    /// The preset a data set gets when none is named, by its size class (an unknown
    /// name gets `paper`, whose validation then names the data set).
    pub fn default_preset_for(dataset: &str) -> &'static str {
        match nas_data::Dataset::from_name(dataset).map(|d| d.scale()) {
            Ok(nas_data::Scale::Tiny) => "digits",
            Ok(nas_data::Scale::Small) => "fashion-mnist",
            Ok(nas_data::Scale::Imagenet) => "imagenet",
            _ => "paper",
        }
    }

    /// SGD settings.
    pub fn sgd(&self) -> SgdConfig {
        SgdConfig {
            lr: self.optim.lr,
            momentum: self.optim.momentum,
            weight_decay: self.optim.weight_decay,
            nesterov: self.optim.nesterov,
        }
    }

    /// Cosine from `lr` to `lr_min`, or step decay by `gamma` every epoch.
    pub fn schedule(&self) -> LrSchedule {
        match self.optim.schedule {
            ScheduleKind::Cosine => LrSchedule::Cosine {
                lr: self.optim.lr,
                eta_min: self.optim.lr_min,
                epochs: self.run.epochs,
            },
            ScheduleKind::Step => LrSchedule::Step {
                lr: self.optim.lr,
                step_size: 1,
                gamma: self.optim.gamma,
            },
            ScheduleKind::Sgdr => LrSchedule::Sgdr {
                lr_max: self.optim.lr,
                lr_min: self.optim.lr_min,
                t0: self.optim.t0,
                t_mul: self.optim.t_mul,
            },
        }
    }
}

impl ConfigFile for TrainConfig {
    type Error = Error;
    const OPTIONAL: &'static [&'static str] = &["data.max_train_images"];

    /// Checks ranges; the message names the key.
    fn validate(&self) -> Result<()> {
        let (d, m, o) = (&self.data, &self.model, &self.optim);
        let checks: [(bool, &str); 13] = [
            (
                m.channels >= 2 && m.channels.is_multiple_of(2),
                "model.channels must be even and at least 2",
            ),
            (
                m.layers >= 3,
                "model.layers must be at least 3 (two reduction cells and a normal one)",
            ),
            (
                o.gamma > 0.0 && o.gamma <= 1.0,
                "optim.gamma must be in (0, 1]",
            ),
            (d.batch_size >= 2, "data.batch_size must be at least 2"),
            (d.valid_images >= 1, "data.valid_images must be at least 1"),
            (self.run.epochs >= 1, "run.epochs must be at least 1"),
            (
                (0.0..1.0).contains(&m.drop_path),
                "model.drop_path must be in [0, 1)",
            ),
            (
                (0.0..1.0).contains(&m.dropout),
                "model.dropout must be in [0, 1)",
            ),
            (
                o.t0 >= 1 && o.t_mul >= 1,
                "optim.t0 and optim.t_mul must be at least 1",
            ),
            (
                m.auxiliary_weight >= 0.0,
                "model.auxiliary_weight must be >= 0",
            ),
            (
                o.lr >= o.lr_min && o.lr_min >= 0.0,
                "optim.lr must be >= optim.lr_min >= 0",
            ),
            (
                o.grad_clip > 0.0 && (0.0..1.0).contains(&o.momentum),
                "optim.grad_clip must be positive and optim.momentum in [0, 1)",
            ),
            (
                (0.0..1.0).contains(&o.label_smoothing),
                "optim.label_smoothing must be in [0, 1)",
            ),
        ];
        Ok(nas_train::check(&checks)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_and_overrides_apply() {
        for (name, _) in TRAIN_PRESETS {
            let cfg = TrainConfig::preset(name).unwrap();
            assert_eq!(
                TrainConfig::from_toml(&cfg.to_toml().unwrap()).unwrap(),
                cfg
            );
        }
        let paper = TrainConfig::preset("paper").unwrap();
        assert_eq!(
            (
                paper.model.channels,
                paper.model.layers,
                paper.data.batch_size
            ),
            (36, 20, 96)
        );
        assert_eq!((paper.run.epochs, paper.data.cutout), (600, 16));
        let cfg = paper
            .with_overrides(&["model.drop_path=0.3".into()])
            .unwrap();
        assert_eq!(cfg.model.drop_path, 0.3);
        let err = paper
            .with_overrides(&["model.droppath=0.3".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.droppath"), "{err}");
    }
}
