//! Training machinery shared by the DARTS and ENAS searches: a seeded parameter store,
//! SGD and Adam with readable and savable state, learning-rate schedules, gradient
//! clipping, metrics, progress reporting, and run directories with atomic, resumable
//! checkpoints.

mod adam;
mod atomic;
mod average;
mod error;
pub mod grads;
mod loss;
mod metrics;
mod params;
mod progress;
mod run_dir;
mod schedule;
mod sgd;

pub use adam::{Adam, AdamConfig};
pub use atomic::{write_atomic, write_atomic_with};
pub use average::IterateAverage;
pub use error::{Error, Result};
pub use loss::{cross_entropy, ensure_finite, scalar};
pub use metrics::{argmax, correct_top_k, Average};
pub use params::{is_buffer, ParamStore, BUFFER_SUFFIXES};
pub use progress::{NoProgress, Progress, StepStats};
pub use run_dir::{read_checkpoint, CheckpointState, LoadedCheckpoint, RunDir};
pub use schedule::LrSchedule;
pub use sgd::{Sgd, SgdConfig};
