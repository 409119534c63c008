//! How a training loop reports where it is. Libraries never print: they call a
//! [`Progress`], which the command line renders as progress bars.

/// Figures of one training step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepStats {
    /// Mean loss of the step's batch.
    pub loss: f64,
    /// Top-1 accuracy of the step's batch, in `[0, 1]`; NaN where there is none (language
    /// models, which report perplexity `exp(loss)`).
    pub accuracy: f64,
    /// Learning rate of the weights.
    pub lr: f64,
}

/// Receives progress events. Every method has a do-nothing default.
pub trait Progress {
    /// A run starts at `start_epoch` (non-zero when resumed) of `epochs`.
    fn run_start(&mut self, _epochs: usize, _start_epoch: usize) {}
    /// Epoch `epoch` (0-based) starts; it has `steps` steps.
    fn epoch_start(&mut self, _epoch: usize, _steps: usize) {}
    /// Step `step` (0-based, within the epoch) finished.
    fn step(&mut self, _step: usize, _stats: &StepStats) {}
    /// Evaluation of the epoch runs, over `batches` batches.
    fn evaluating(&mut self, _batches: usize) {}
    /// Epoch `epoch` ended; `summary` is the line written to `metrics.jsonl`.
    fn epoch_end(&mut self, _epoch: usize, _summary: &serde_json::Value) {}
    /// The run ended.
    fn run_end(&mut self) {}
}

/// Ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
