//! DARTS (Liu, Simonyan, Yang 2018) on candle: the continuous relaxation of a cell search
//! space, the bilevel search with a first- or second-order architect, and the search
//! loop with resumable run directories; the evaluation networks; and the recurrent
//! cells on a text corpus (search and retraining with NT-ASGD).

mod architect;
mod config;
mod data;
mod enas_micro_cell;
mod error;
mod eval_cell;
mod eval_genotype;
mod eval_network;
mod import;
mod lm;
mod lm_config;
mod rnn_cell;
mod rnn_lm;
mod search;
mod search_cell;
mod search_network;
mod train;
mod train_config;
mod weights_file;

pub use architect::{ArchStep, Architect, Objective, Order};
pub use config::{
    ArchConfig, DataConfig, ModelConfig, RunConfig, SearchConfig, WeightsConfig, PRESETS,
};
pub use data::IMAGE_SETS;
pub use enas_micro_cell::{EnasCellShape, EnasMicroEvalCell};
pub use error::{Error, Result};
pub use eval_cell::{op_mult_adds, EvalCell};
pub use eval_genotype::EvalGenotype;
pub use eval_network::{count, Counts, EvalKind, EvalNetConfig, EvalNetwork};
pub use import::import_reference;
pub use lm::{
    evaluate_lm_run, lm_step, resume_lm, search_rnn, train_lm, ArchPart, LmOutcome, LmReport,
    StepOutput,
};
pub use lm_config::{
    LmArchConfig, LmConfig, LmDataConfig, LmOptimConfig, LmRunConfig, LM_SEARCH_PRESETS,
    LM_TRAIN_PRESETS,
};
pub use rnn_cell::{rnn_edge_count, CellMasks, RnnCell, RNN_STEPS};
pub use rnn_lm::{
    ar, count_lm, nll, tar, LmBatch, LmMasks, LmOutput, RnnLm, RnnLmConfig, RnnObjective,
};
pub use search::{resume, search, SearchOptions, SearchOutcome};
pub use search_cell::{edge_count, CellShape, SearchCell};
pub use search_network::{count_parameters, Alphas, SearchCnn, SearchCnnConfig};
pub use train::{evaluate_run, evaluate_weights, resume_training, train, EvalReport, TrainOutcome};
pub use train_config::{
    TrainConfig, TrainDataConfig, TrainModelConfig, TrainOptimConfig, TRAIN_PRESETS,
};
pub use weights_file::{
    read_weights, reference_cifar_normalize, reference_imagenet_normalize, write_weights,
    WeightsFile, WEIGHTS_FORMAT,
};
