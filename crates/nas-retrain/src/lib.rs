//! Training a genotype from scratch, as the papers evaluate a found architecture (the
//! DARTS reference's `cnn/train.py`, also ENAS's final training as its preset): a seeded
//! validation split for model selection, the test set evaluated once at the end, and the
//! evaluation of finished runs and of weights files. Each run is a task of `nas-train`'s
//! run loop.

mod error;
mod train;
mod train_config;

pub use error::{Error, Result};
pub use train::{evaluate_run, evaluate_weights, resume_training, train, EvalReport, TrainOutcome};
pub use train_config::{
    TrainConfig, TrainDataConfig, TrainModelConfig, TrainOptimConfig, TRAIN_PRESETS,
};
