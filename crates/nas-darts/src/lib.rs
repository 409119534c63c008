//! DARTS (Liu, Simonyan, Yang 2018) on candle: the continuous relaxation of a cell search
//! space, the bilevel search with a first- or second-order architect, and the search
//! loop with resumable run directories; and the recurrent cell search on a text corpus
//! (with, for now, the recurrent loop that also retrains a derived cell with NT-ASGD).

mod architect;
mod config;
mod error;
mod lm;
mod lm_config;
mod rnn_search;
mod search;
mod search_cell;
mod search_network;

pub use architect::{ArchStep, Architect, Objective, Order};
pub use config::{ArchConfig, DataConfig, ModelConfig, SearchConfig, WeightsConfig, PRESETS};
pub use error::{Error, Result};
pub use lm::{
    evaluate_lm_run, resume_lm, train_lm, weight_step, LmArch, LmData, LmOutcome, LmReport,
    Retrain, WeightStep,
};
pub use lm_config::{
    LmArchConfig, LmConfig, LmDataConfig, LmOptimConfig, LM_SEARCH_PRESETS, LM_TRAIN_PRESETS,
};
pub use rnn_search::{lm_step, search_rnn, ArchPart, RnnObjective, StepOutput};
pub use search::{resume, search, SearchOutcome};
pub use search_cell::{edge_count, SearchCell};
pub use search_network::{count_parameters, Alphas, SearchCnn, SearchCnnConfig};
