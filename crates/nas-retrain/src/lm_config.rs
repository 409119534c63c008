//! Configuration of the recurrent runs: the sections every one has (data, model, optim,
//! run), an optional `[arch]` section whose type a search supplies ([`ArchSection`];
//! retraining has none, [`NoArch`]), and the retraining presets (`rnn/train.py`). TOML
//! with `deny_unknown_fields`, named presets, `key=value` overrides.

use nas_models::RnnLmConfig;
use nas_train::{ConfigFile, RunConfig, SgdConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The `[arch]` section of a recurrent search's configuration (its architecture
/// optimizer); a search crate supplies it.
pub trait ArchSection:
    Clone + PartialEq + std::fmt::Debug + Serialize + DeserializeOwned + Send + Sync
{
    /// Checks ranges; the message names the key.
    fn validate(&self) -> std::result::Result<(), String>;

    /// The section of the `tiny` preset made from this one.
    fn tiny(self) -> Self {
        self
    }
}

/// No `[arch]` section: retraining a derived cell. A configuration that has one is
/// refused with a message saying so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoArch {}

impl Serialize for NoArch {
    fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
        match *self {}
    }
}

impl<'de> Deserialize<'de> for NoArch {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "retraining takes no [arch] section (use a training preset)",
        ))
    }
}

impl ArchSection for NoArch {
    fn validate(&self) -> std::result::Result<(), String> {
        match *self {}
    }
}

/// Everything that decides a recurrent run: a retraining run (`LmConfig`, no `[arch]`)
/// or, with a search's `[arch]` section type `A`, a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "A: DeserializeOwned"))]
pub struct LmConfig<A = NoArch> {
    /// The corpus and its batching.
    pub data: LmDataConfig,
    /// Sizes and dropouts.
    pub model: RnnLmConfig,
    /// The weights' optimizer and regularisation.
    pub optim: LmOptimConfig,
    /// The architecture weights' optimizer (searches only).
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub arch: Option<A>,
    /// Epochs, seed, checkpoints.
    pub run: RunConfig,
}

fn none<A>() -> Option<A> {
    None
}

/// Corpus and batching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmDataConfig {
    /// `ptb` or `wikitext2`.
    pub dataset: String,
    /// Columns of the training stream (and of the search's validation stream).
    pub batch_size: usize,
    /// Columns of the validation stream when evaluating (10 in the reference).
    pub eval_batch_size: usize,
    /// Columns of the test stream (1 in the reference).
    pub test_batch_size: usize,
    /// Base window length.
    pub bptt: usize,
    /// Retraining draws window lengths from N(bptt, 5), at most `bptt + max_seq_len_delta`;
    /// the search uses `bptt` (or `bptt / 2` with probability 0.05).
    pub max_seq_len_delta: usize,
    /// Use only the first this many training tokens (CPU presets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_train_tokens: Option<usize>,
    /// Use only the first this many validation tokens (CPU presets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_valid_tokens: Option<usize>,
}

/// SGD on the weights, with NT-ASGD for retraining.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmOptimConfig {
    /// Learning rate (scaled per window by `len / bptt`).
    pub lr: f64,
    /// Clip gradients to this global norm.
    pub clip: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Activation regularisation (0: none).
    pub ar_alpha: f64,
    /// Temporal activation regularisation.
    pub tar_beta: f64,
    /// Switch to averaged SGD when the validation loss is worse than the best of all but
    /// the last `nonmono` evaluations (0: never switch; searches do not).
    pub nonmono: usize,
}

/// The retraining presets.
pub const LM_TRAIN_PRESETS: &[(&str, &str)] = &[
    ("cpu", "all of PTB, emsize = nhid = 128, batch 64, 6 epochs, NT-ASGD after 2 non-improving epochs: under an hour on one core"),
    ("tiny", "PTB, emsize = nhid = 16, batch 8, 6k tokens, 2 epochs: seconds (tests)"),
    ("paper", "the paper's PTB retraining: emsize = nhid = 850, batch 64, SGD lr 20 then NT-ASGD, 8000 epochs at most"),
];

impl LmConfig {
    /// The paper's retraining setting.
    pub fn paper_train() -> Self {
        LmConfig {
            data: LmDataConfig {
                dataset: "ptb".into(),
                batch_size: 64,
                eval_batch_size: 10,
                test_batch_size: 1,
                bptt: 35,
                max_seq_len_delta: 20,
                max_train_tokens: None,
                max_valid_tokens: None,
            },
            model: RnnLmConfig {
                emsize: 850,
                nhid: 850,
                dropout: 0.75,
                dropouth: 0.25,
                dropoutx: 0.75,
                dropouti: 0.2,
                dropoute: 0.1,
                init_range: 0.04,
            },
            optim: LmOptimConfig {
                lr: 20.0,
                clip: 0.25,
                weight_decay: 8e-7,
                ar_alpha: 0.0,
                tar_beta: 1e-3,
                nonmono: 5,
            },
            arch: None,
            run: RunConfig {
                epochs: 8000,
                seed: 1267,
                keep_checkpoints: 2,
                log_every: 200,
            },
        }
    }

    /// A retraining preset by name (see [`LM_TRAIN_PRESETS`]).
    pub fn train_preset(name: &str) -> Result<Self> {
        let paper = Self::paper_train();
        match name {
            "paper" => Ok(paper),
            // The whole of PTB, emsize = nhid = 128: 415 steps per epoch.
            "cpu" => Ok(LmConfig {
                model: RnnLmConfig {
                    emsize: 128,
                    nhid: 128,
                    ..paper.model
                },
                optim: LmOptimConfig {
                    nonmono: 2,
                    ..paper.optim
                },
                run: RunConfig {
                    epochs: 6,
                    log_every: 50,
                    ..paper.run
                },
                ..paper
            }),
            "tiny" => Ok(tiny(paper)),
            other => Err(nas_train::unknown_preset(other, LM_TRAIN_PRESETS).into()),
        }
    }
}

impl<A: ArchSection> LmConfig<A> {
    /// The weights' optimizer settings (plain SGD).
    pub fn sgd(&self) -> SgdConfig {
        SgdConfig {
            lr: self.optim.lr,
            momentum: 0.0,
            weight_decay: self.optim.weight_decay,
            nesterov: false,
        }
    }

    /// The sections every recurrent run has, without the `[arch]` section (what the
    /// recurrent loop reads).
    pub fn base(&self) -> LmConfig {
        LmConfig {
            data: self.data.clone(),
            model: self.model,
            optim: self.optim,
            arch: None,
            run: self.run,
        }
    }

    /// The `tiny` preset made from this one: PTB's first tokens, 16 units, 2 epochs.
    pub fn tiny(self) -> Self {
        tiny(self)
    }
}

fn tiny<A: ArchSection>(base: LmConfig<A>) -> LmConfig<A> {
    LmConfig {
        data: LmDataConfig {
            batch_size: 8,
            eval_batch_size: 10,
            test_batch_size: 50,
            bptt: 10,
            max_seq_len_delta: 5,
            max_train_tokens: Some(6_000),
            max_valid_tokens: Some(2_000),
            ..base.data
        },
        model: RnnLmConfig {
            emsize: 16,
            nhid: 16,
            ..base.model
        },
        arch: base.arch.map(ArchSection::tiny),
        run: RunConfig {
            epochs: 2,
            log_every: 10,
            ..base.run
        },
        ..base
    }
}

impl<A: ArchSection> ConfigFile for LmConfig<A> {
    type Error = Error;
    const OPTIONAL: &'static [&'static str] = &["data.max_train_tokens", "data.max_valid_tokens"];

    /// Checks ranges; the message names the key.
    fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let d = &self.data;
        if let Some(a) = &self.arch {
            a.validate().map_err(Error::Config)?;
        }
        let checks: [(bool, &str); 7] = [
            (
                d.dataset == "ptb" || d.dataset == "wikitext2",
                "data.dataset must be ptb or wikitext2",
            ),
            (d.batch_size >= 2, "data.batch_size must be at least 2"),
            (
                d.eval_batch_size >= 1 && d.test_batch_size >= 1,
                "data.eval_batch_size and data.test_batch_size must be positive",
            ),
            (d.bptt >= 2, "data.bptt must be at least 2"),
            (self.run.epochs >= 1, "run.epochs must be at least 1"),
            (
                self.optim.lr > 0.0 && self.optim.clip > 0.0,
                "optim.lr and optim.clip must be positive",
            ),
            (
                self.optim.weight_decay >= 0.0
                    && self.optim.ar_alpha >= 0.0
                    && self.optim.tar_beta >= 0.0,
                "optim.weight_decay, optim.ar_alpha and optim.tar_beta must be >= 0",
            ),
        ];
        Ok(nas_train::check(&checks)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_and_an_arch_section_is_refused() {
        for (name, _) in LM_TRAIN_PRESETS {
            let cfg = LmConfig::train_preset(name).unwrap();
            assert_eq!(LmConfig::from_toml(&cfg.to_toml().unwrap()).unwrap(), cfg);
        }
        let text = LmConfig::train_preset("tiny").unwrap().to_toml().unwrap();
        let with_arch = format!("{text}\n[arch]\nlr = 0.003\n");
        let err = LmConfig::<NoArch>::from_toml(&with_arch).unwrap_err();
        assert!(err.to_string().contains("takes no [arch] section"), "{err}");
        let cfg = LmConfig::train_preset("paper").unwrap();
        let err = cfg.with_overrides(&["model.nhid=32".into()]).unwrap_err();
        assert!(err.to_string().contains("emsize and nhid"), "{err}");
        let err = cfg.with_overrides(&["optim.lrr=1".into()]).unwrap_err();
        assert!(err.to_string().contains("lrr"), "{err}");
        let err = LmConfig::train_preset("huge").unwrap_err();
        assert!(err.to_string().contains("cpu, tiny, paper"), "{err}");
    }
}
