//! Training machinery shared by the DARTS and ENAS searches: a seeded parameter store,
//! SGD and Adam with readable and savable state, learning-rate schedules, gradient
//! clipping, metrics, progress reporting, and run directories with atomic, resumable
//! checkpoints.

mod adam;
mod atomic;
mod average;
mod config;
mod error;
pub mod grads;
mod loss;
mod memory;
mod metrics;
mod params;
mod progress;
mod run_dir;
pub mod runner;
mod schedule;
pub mod seed;
mod sgd;
pub mod tensorboard;

pub use adam::{Adam, AdamConfig};
pub use atomic::{read_text, write_atomic, write_atomic_with, TEXT_LIMIT};
pub use average::IterateAverage;
pub use config::{check, one_line, unknown_preset, ConfigFile, RunConfig};
pub use error::{Error, Result};
pub use loss::{cross_entropy, ensure_finite, scalar};
pub use memory::{available_memory, check_memory, disable_memory_check, human_bytes};
pub use metrics::{argmax, correct_top_k, Average};
pub use params::{is_buffer, ParamStore, BUFFER_SUFFIXES};
pub use progress::{NoProgress, Progress, StepStats};
pub use run_dir::{read_checkpoint, Best, CheckpointState, LoadedCheckpoint, RunDir};
pub use runner::{
    fields, in_pool, EpochEnd, EpochMeans, EpochPlan, RunEnd, RunOptions, RunSettings, StepCtx,
    StepReport, Task,
};
pub use schedule::LrSchedule;
pub use seed::{stream_rng, stream_seed};
pub use sgd::{Sgd, SgdConfig};
