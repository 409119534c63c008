//! DARTS (Liu, Simonyan, Yang 2018) on candle: the continuous relaxation of a cell search
//! space, the bilevel search with a first- or second-order architect, and the search
//! loop with resumable run directories; and the recurrent cell search on a text corpus,
//! as the architecture hook of `nas-retrain`'s recurrent loop.

mod architect;
mod config;
mod rnn_config;
mod rnn_search;
mod search;
mod search_cell;
mod search_network;

pub use architect::{ArchStep, Architect, Objective, Order};
pub use config::{ArchConfig, DataConfig, ModelConfig, SearchConfig, WeightsConfig, PRESETS};
/// The shared error of the network crates (see `nas_models::Error`).
pub use nas_models::{Error, Result};
pub use rnn_config::{
    rnn_paper_search, rnn_search_preset, LmArchConfig, LmSearchConfig, LM_SEARCH_PRESETS,
};
pub use rnn_search::{
    evaluate_lm_run, is_lm_run, lm_step, resume_lm, search_rnn, ArchPart, RnnObjective, StepOutput,
};
pub use search::{resume, search, SearchOutcome};
pub use search_cell::{edge_count, SearchCell};
pub use search_network::{count_parameters, Alphas, SearchCnn, SearchCnnConfig};
