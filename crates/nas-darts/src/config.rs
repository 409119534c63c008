//! The search configuration: TOML with `deny_unknown_fields`, named presets, and
//! `key=value` overrides by dotted path (`model.channels=8`).

use nas_train::{AdamConfig, ConfigFile, LrSchedule, RunConfig, SgdConfig};
use serde::{Deserialize, Serialize};

use crate::architect::Order;
use crate::{Error, Result};

/// Everything that decides a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// The data and its preprocessing.
    pub data: DataConfig,
    /// The search network's sizes.
    pub model: ModelConfig,
    /// The weights' optimizer.
    pub weights: WeightsConfig,
    /// The architecture weights' optimizer.
    pub arch: ArchConfig,
    /// Epochs, seed, checkpoints.
    pub run: RunConfig,
}

/// Data settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A data set name of `nas-data` (`digits`, `fashion-mnist`, `mnist`, `cifar10`, `cifar100`).
    pub dataset: String,
    /// Share of the (used) training images that train the weights; the rest train the
    /// architecture (0.5 in the paper).
    pub train_portion: f64,
    /// Images per batch, for both halves.
    pub batch_size: usize,
    /// Zero padding of the random crop (4 for CIFAR; 0: no crop).
    pub crop_padding: usize,
    /// Random horizontal flips.
    pub flip: bool,
    /// Cutout side (0: none; the paper's search uses none).
    pub cutout: usize,
    /// Use only this many training images (a seeded random subset), for CPU presets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_train_images: Option<usize>,
}

/// Sizes of the search network (input channels and classes come from the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `C`, the first cells' node channels.
    pub channels: usize,
    /// Number of cells.
    pub layers: usize,
    /// Intermediate nodes per cell.
    pub steps: usize,
    /// Nodes concatenated into a cell's output.
    pub multiplier: usize,
    /// Stem channels are `stem_multiplier * channels`.
    pub stem_multiplier: usize,
}

/// SGD of the network weights with cosine annealing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsConfig {
    /// Initial learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine schedule.
    pub lr_min: f64,
    /// Momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Clip gradients to this global norm.
    pub grad_clip: f64,
}

/// Adam of the architecture weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchConfig {
    /// Learning rate.
    pub lr: f64,
    /// Adam's betas.
    pub betas: [f64; 2],
    /// L2 weight decay.
    pub weight_decay: f64,
    /// First or second order.
    pub order: Order,
}

/// The names of the presets.
pub const PRESETS: &[(&str, &str)] = &[
    ("digits", "the embedded 8x8 digits, C=8, 5 layers, 10 epochs: a few minutes on 2 cores"),
    ("fashion-mnist", "Fashion-MNIST (real, 28x28), a 3,000-image subset, C=4, 5 layers, 12 epochs: under an hour on 2 cores"),
    ("paper", "the paper's CIFAR-10 search: C=16, 8 layers, batch 64, 50 epochs"),
];

impl SearchConfig {
    /// A preset by name (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        let paper = SearchConfig {
            data: DataConfig {
                dataset: "cifar10".into(),
                train_portion: 0.5,
                batch_size: 64,
                crop_padding: 4,
                flip: true,
                cutout: 0,
                max_train_images: None,
            },
            model: ModelConfig {
                channels: 16,
                layers: 8,
                steps: 4,
                multiplier: 4,
                stem_multiplier: 3,
            },
            weights: WeightsConfig {
                lr: 0.025,
                lr_min: 0.001,
                momentum: 0.9,
                weight_decay: 3e-4,
                grad_clip: 5.0,
            },
            arch: ArchConfig {
                lr: 3e-4,
                betas: [0.5, 0.999],
                weight_decay: 1e-3,
                order: Order::First,
            },
            run: RunConfig {
                epochs: 50,
                seed: 2,
                keep_checkpoints: 2,
                log_every: 50,
            },
        };
        match name {
            "paper" => Ok(paper),
            "digits" => Ok(SearchConfig {
                data: DataConfig {
                    dataset: "digits".into(),
                    batch_size: 32,
                    crop_padding: 1,
                    flip: false,
                    ..paper.data
                },
                model: ModelConfig {
                    channels: 8,
                    layers: 5,
                    ..paper.model
                },
                // 28 steps per epoch: a faster architecture rate, so that 10 epochs move
                // the alphas visibly.
                arch: ArchConfig {
                    lr: 3e-3,
                    ..paper.arch
                },
                run: RunConfig {
                    epochs: 10,
                    log_every: 10,
                    ..paper.run
                },
                ..paper
            }),
            // Sized to finish within an hour on 2 cores: 3,000 images (1,500 per half),
            // C = 4, 46 steps per epoch, 12 epochs.
            "fashion-mnist" => Ok(SearchConfig {
                data: DataConfig {
                    dataset: "fashion-mnist".into(),
                    batch_size: 32,
                    crop_padding: 2,
                    flip: true,
                    max_train_images: Some(3_000),
                    ..paper.data
                },
                model: ModelConfig {
                    channels: 4,
                    layers: 5,
                    ..paper.model
                },
                arch: ArchConfig {
                    lr: 3e-3,
                    ..paper.arch
                },
                run: RunConfig {
                    epochs: 12,
                    log_every: 10,
                    ..paper.run
                },
                ..paper
            }),
            other => Err(nas_train::unknown_preset(other, PRESETS).into()),
        }
    }

    /// The preset a data set gets when none is named, by its size class (an unknown
    /// name gets `paper`, whose validation then names the data set).
    pub fn default_preset_for(dataset: &str) -> &'static str {
        match nas_data::Dataset::from_name(dataset).map(|d| d.scale()) {
            Ok(nas_data::Scale::Tiny) => "digits",
            Ok(nas_data::Scale::Small) => "fashion-mnist",
            _ => "paper",
        }
    }

    /// The weights' optimizer settings.
    pub fn sgd(&self) -> SgdConfig {
        SgdConfig {
            lr: self.weights.lr,
            momentum: self.weights.momentum,
            weight_decay: self.weights.weight_decay,
            nesterov: false,
        }
    }

    /// The weights' schedule: cosine from `lr` to `lr_min` over the epochs.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule::Cosine {
            lr: self.weights.lr,
            eta_min: self.weights.lr_min,
            epochs: self.run.epochs,
        }
    }

    /// The architecture optimizer's settings.
    pub fn adam(&self) -> AdamConfig {
        AdamConfig {
            lr: self.arch.lr,
            betas: (self.arch.betas[0], self.arch.betas[1]),
            eps: 1e-8,
            weight_decay: self.arch.weight_decay,
            decoupled: false,
        }
    }
}

impl ConfigFile for SearchConfig {
    type Error = Error;
    const OPTIONAL: &'static [&'static str] = &["data.max_train_images"];

    /// Checks ranges; the message names the key.
    fn validate(&self) -> Result<()> {
        let d = &self.data;
        let checks: [(bool, &str); 9] = [
            (
                d.train_portion > 0.0 && d.train_portion < 1.0,
                "data.train_portion must be in (0, 1)",
            ),
            (
                d.batch_size >= 2,
                "data.batch_size must be at least 2 (batch norm needs 2 images)",
            ),
            (
                d.max_train_images.is_none_or(|m| m >= 4),
                "data.max_train_images must be at least 4",
            ),
            (self.run.epochs >= 1, "run.epochs must be at least 1"),
            (
                self.weights.lr >= self.weights.lr_min && self.weights.lr_min >= 0.0,
                "weights.lr must be >= weights.lr_min >= 0",
            ),
            (
                self.weights.grad_clip > 0.0,
                "weights.grad_clip must be positive",
            ),
            (
                (0.0..1.0).contains(&self.weights.momentum),
                "weights.momentum must be in [0, 1)",
            ),
            (self.arch.lr > 0.0, "arch.lr must be positive"),
            (
                self.arch.betas.iter().all(|b| (0.0..1.0).contains(b)),
                "arch.betas must be in [0, 1)",
            ),
        ];
        nas_train::check(&checks)?;
        // The network's sizes, checked as the network will check them (the data's
        // channels and classes are known only once it is read).
        let m = &self.model;
        crate::SearchCnnConfig {
            in_channels: 1,
            channels: m.channels,
            layers: m.layers,
            classes: 2,
            steps: m.steps,
            multiplier: m.multiplier,
            stem_multiplier: m.stem_multiplier,
        }
        .validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_toml() {
        for (name, _) in PRESETS {
            let cfg = SearchConfig::preset(name).unwrap();
            let text = cfg.to_toml().unwrap();
            assert_eq!(SearchConfig::from_toml(&text).unwrap(), cfg, "{name}");
        }
        let paper = SearchConfig::preset("paper").unwrap();
        assert_eq!(paper.model.channels, 16);
        assert_eq!(paper.model.layers, 8);
        assert_eq!(paper.data.batch_size, 64);
        assert_eq!(paper.run.epochs, 50);
        assert_eq!(paper.adam().betas, (0.5, 0.999));
    }

    #[test]
    fn overrides_set_values_and_name_unknown_keys() {
        let cfg = SearchConfig::preset("digits").unwrap();
        let cfg2 = cfg
            .with_overrides(&[
                "model.channels=4".into(),
                "arch.order=second".into(),
                "data.max_train_images=100".into(),
            ])
            .unwrap();
        assert_eq!(cfg2.model.channels, 4);
        assert_eq!(cfg2.arch.order, Order::Second);
        assert_eq!(cfg2.data.max_train_images, Some(100));
        let err = cfg
            .with_overrides(&["model.chanels=4".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.chanels") && err.contains("channels"),
            "{err}"
        );
        let err = cfg
            .with_overrides(&["run.epochs=zero".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("epochs"), "{err}");
        let err = cfg
            .with_overrides(&["data.batch_size=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.batch_size"), "{err}");
        let err = SearchConfig::from_toml("[data]\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }
}
