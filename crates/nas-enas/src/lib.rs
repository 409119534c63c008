//! ENAS (Pham et al. 2018) on candle: the micro (CNN cell) search. An LSTM controller
//! samples children of one large shared-weight network; the shared weights and the
//! controller (REINFORCE with a moving-average baseline, rewarded by accuracy on
//! held-out training images) train in alternating phases on `nas-train`'s run loop; the
//! final cell is the best of several samples. docs/enas-reference.md records what the
//! reference code does.

mod config;
mod controller;
mod micro_child;
mod reinforce;
mod search;
mod shared_layer;

pub use config::{
    ControllerKind, ControllerSection, DataConfig, EnasSearchConfig, ModelConfig, WeightsConfig,
    PRESETS,
};
pub use controller::{
    arc_genotype, uniform_arc, Choices, ControllerConfig, Decisions, MicroController, NUM_OPS,
};
pub use micro_child::{ChildOutput, MicroChild, MicroChildConfig, AUX_PREFIX};
/// The shared error of the network crates (see `nas_models::Error`).
pub use nas_models::{Error, Result};
pub use reinforce::{Reinforce, ReinforceConfig, UpdateStats};
pub use search::{resume, search, EnasBatch, EnasOutcome, Scored};
pub use shared_layer::{LayerInputs, SharedLayer};
