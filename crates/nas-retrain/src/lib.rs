//! Training a genotype from scratch, as the papers evaluate a found architecture (the
//! DARTS reference's `cnn/train.py`, also ENAS's final training as its preset): a seeded
//! validation split for model selection, the test set evaluated once at the end, and the
//! evaluation of finished runs and of weights files; and the recurrent loop (NT-ASGD
//! retraining of a derived cell, with a hook through which a search adds its
//! architecture steps). Each run is a task of `nas-train`'s run loop.

mod lm;
mod lm_config;
mod train;
mod train_config;

pub use lm::{
    evaluate_lm_checkpoint, evaluate_lm_run, nt_asgd_switch, read_genotype, resume_lm_training,
    run_lm, train_lm, weight_step, window, LmArch, LmCell, LmData, LmOutcome, LmReport, Retrain,
    WeightStep,
};
pub use lm_config::{ArchSection, LmConfig, LmDataConfig, LmOptimConfig, NoArch, LM_TRAIN_PRESETS};
/// The shared error of the network crates (see `nas_models::Error`).
pub use nas_models::{Error, Result};
pub use train::{evaluate_run, evaluate_weights, resume_training, train, EvalReport, TrainOutcome};
pub use train_config::{
    TrainConfig, TrainDataConfig, TrainModelConfig, TrainOptimConfig, TRAIN_PRESETS,
};
