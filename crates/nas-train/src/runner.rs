//! The one epoch loop of every run: a [`Task`] says what an epoch's steps are, what a
//! step does, what the end of an epoch evaluates and what a checkpoint holds; [`run`]
//! owns everything else: resuming from the newest checkpoint, the epoch and step
//! counters, progress events, running each step on a pool thread, finiteness checks with
//! the real epoch and step, the step and epoch lines of `metrics.jsonl`, and checkpoints.
//!
//! A task's epoch is any sequence of steps it chooses. A DARTS search step is an
//! architecture step and a weight step on a (train, val) batch pair; a training step is
//! one batch; ENAS's alternating phases are one epoch whose steps are first the
//! shared-weight batches, then the controller's updates (the task's batch type says
//! which phase a step belongs to), so a checkpoint always falls between whole phases.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::metrics::Average;
use crate::progress::{Progress, StepStats};
use crate::run_dir::{CheckpointState, LoadedCheckpoint, RunDir};

/// Runs `f` on a thread of rayon's global pool and returns its result. The kernels'
/// parallel loops then fork from a pool thread (work stealing), instead of each one
/// handing its work to the pool from outside and sleeping until it is done: a futex wake
/// and sleep per loop, thousands per training step, with the calling thread as a third
/// thread on the pool's cores. Never wait for a batch inside it: the loader threads may
/// need the pool.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Where a run reads its data and which device it computes on.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The data directory (`nas-data`'s layout).
    pub data_dir: std::path::PathBuf,
    /// The device.
    pub device: Device,
}

/// The settings the loop itself needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSettings {
    /// Epochs of the whole run.
    pub epochs: usize,
    /// The run's seed (recorded in every checkpoint).
    pub seed: u64,
    /// Write a step line to `metrics.jsonl` every this many steps (0: never).
    pub log_every: usize,
}

/// Where the loop is: the step being taken (or, at the end of an epoch, the number of
/// steps the epoch took).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepCtx {
    /// The epoch (0-based).
    pub epoch: usize,
    /// The step within the epoch (0-based).
    pub step: usize,
    /// Steps completed over the whole run before this one.
    pub global_step: u64,
}

impl StepCtx {
    /// An error naming `what`, its value and this epoch and step when `value` is NaN or
    /// infinite.
    pub fn ensure_finite(&self, what: &str, value: f64) -> Result<()> {
        crate::loss::ensure_finite(what, value, self.epoch, self.step)
    }
}

/// The batches of one epoch.
pub struct EpochPlan<B, E> {
    /// How many steps the epoch has (for progress; the iterator decides).
    pub steps: usize,
    /// The steps' inputs, in order. Waiting for one happens outside the pool.
    pub batches: Box<dyn Iterator<Item = std::result::Result<B, E>>>,
}

/// What one step reports.
#[derive(Debug, Clone, Default)]
pub struct StepReport {
    /// Loss, accuracy (NaN where there is none) and learning rate, for progress and the
    /// step line.
    pub stats: StepStats,
    /// Samples (images, tokens) the loss and accuracy are means over: the epoch's means
    /// weight each step by it.
    pub weight: usize,
    /// Further quantities averaged over the epoch, each with its weight.
    pub means: Vec<(&'static str, f64, usize)>,
    /// Further fields of the step's line in `metrics.jsonl`.
    pub log: Map<String, Value>,
}

/// The means of an epoch's steps, by name: `loss` and `accuracy` (when the steps report
/// one) and each of the steps' [`StepReport::means`].
#[derive(Debug, Clone, Default)]
pub struct EpochMeans {
    means: BTreeMap<&'static str, Average>,
}

impl EpochMeans {
    fn add(&mut self, name: &'static str, value: f64, weight: usize) {
        self.means.entry(name).or_default().add(value, weight);
    }

    /// The mean of `name`, `None` when no step reported it.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.means.get(name).map(Average::mean)
    }

    /// The mean of `name`, NaN when no step reported it.
    pub fn mean(&self, name: &str) -> f64 {
        self.get(name).unwrap_or(f64::NAN)
    }
}

/// What the end of an epoch gives the loop.
#[derive(Debug, Clone, Default)]
pub struct EpochEnd {
    /// The fields of the epoch's line in `metrics.jsonl` (besides `kind`, `epoch` and
    /// `seconds`, which the loop adds).
    pub fields: Map<String, Value>,
    /// The fields named in the `epoch finished` log event.
    pub log_keys: &'static [&'static str],
    /// The score that decides the best checkpoint (higher is better).
    pub score: Option<f64>,
    /// Extra loop state for `state.json`.
    pub extra: Value,
}

/// The fields of a JSON object (`serde_json::json!({...})`), for [`EpochEnd::fields`]; any
/// other value becomes the one field `value`.
pub fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => Map::from_iter([("value".to_string(), other)]),
    }
}

/// How the run went, for [`Task::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEnd {
    /// The epoch the run started at (non-zero when resumed).
    pub start_epoch: usize,
    /// Steps over the whole run.
    pub global_step: u64,
}

/// One kind of run, as the loop drives it.
pub trait Task: Send {
    /// A step's input.
    type Batch: Send;
    /// The task's error type.
    type Error: From<Error> + Send;
    /// What a finished run hands back.
    type Outcome;

    /// Puts the state saved by [`Task::state`] back (the loop has read the checkpoint).
    fn restore(&mut self, ckpt: &LoadedCheckpoint) -> std::result::Result<(), Self::Error>;

    /// Prepares epoch `epoch` (learning rate, per-epoch randomness) and returns its steps.
    fn begin_epoch(
        &mut self,
        epoch: usize,
    ) -> std::result::Result<EpochPlan<Self::Batch, Self::Error>, Self::Error>;

    /// One step; runs on a pool thread.
    fn step(
        &mut self,
        ctx: &StepCtx,
        batch: Self::Batch,
    ) -> std::result::Result<StepReport, Self::Error>;

    /// The end of an epoch: evaluation and per-epoch outputs. `ctx.step` is the number
    /// of steps the epoch took. Run its compute through [`in_pool`], batch by batch.
    fn end_epoch(
        &mut self,
        ctx: &StepCtx,
        means: &EpochMeans,
        run: &RunDir,
        progress: &mut dyn Progress,
    ) -> std::result::Result<EpochEnd, Self::Error>;

    /// The tensor groups of a checkpoint.
    #[allow(clippy::type_complexity)]
    fn state(
        &self,
    ) -> std::result::Result<Vec<(&'static str, HashMap<String, Tensor>)>, Self::Error>;

    /// The run's final outputs, after the last epoch.
    fn finish(
        &mut self,
        run: &RunDir,
        end: RunEnd,
        progress: &mut dyn Progress,
    ) -> std::result::Result<Self::Outcome, Self::Error>;
}

/// Runs `task` in `run` from its newest checkpoint (or from the start) to the last epoch,
/// then [`Task::finish`]. A step or evaluation that fails stops the run with the last
/// checkpoint as it was.
pub fn run<T: Task>(
    task: &mut T,
    run: &RunDir,
    settings: RunSettings,
    device: &Device,
    progress: &mut dyn Progress,
) -> std::result::Result<T::Outcome, T::Error> {
    let (mut start_epoch, mut global_step) = (0, 0u64);
    if let Some(ckpt) = run.resume(device)? {
        if ckpt.state.seed != settings.seed {
            return Err(Error::format(
                ckpt.path.join("state.json"),
                format!(
                    "was written by a run with seed {}, this run has seed {}",
                    ckpt.state.seed, settings.seed
                ),
            )
            .into());
        }
        task.restore(&ckpt)?;
        start_epoch = ckpt.state.epoch;
        global_step = ckpt.state.global_step;
        tracing::info!(dir = %run.path().display(), epoch = start_epoch, "resumed");
    }
    progress.run_start(settings.epochs, start_epoch);
    for epoch in start_epoch..settings.epochs {
        let started = Instant::now();
        let plan = task.begin_epoch(epoch)?;
        progress.epoch_start(epoch, plan.steps);
        let mut means = EpochMeans::default();
        let mut steps = 0;
        for (step, batch) in plan.batches.enumerate() {
            let batch = batch?;
            let ctx = StepCtx {
                epoch,
                step,
                global_step,
            };
            let report = in_pool(|| task.step(&ctx, batch))?;
            ctx.ensure_finite("training loss", report.stats.loss)?;
            global_step += 1;
            steps = step + 1;
            means.add("loss", report.stats.loss, report.weight);
            if !report.stats.accuracy.is_nan() {
                means.add("accuracy", report.stats.accuracy, report.weight);
            }
            for &(name, value, weight) in &report.means {
                means.add(name, value, weight);
            }
            progress.step(step, &report.stats);
            if settings.log_every > 0 && steps % settings.log_every == 0 {
                let mut line = Map::new();
                line.insert("kind".into(), "step".into());
                line.insert("epoch".into(), epoch.into());
                line.insert("step".into(), step.into());
                line.insert("global_step".into(), global_step.into());
                line.insert("loss".into(), report.stats.loss.into());
                line.insert("lr".into(), report.stats.lr.into());
                line.extend(report.log);
                run.log(&Value::Object(line))?;
            }
        }
        let ctx = StepCtx {
            epoch,
            step: steps,
            global_step,
        };
        let end = task.end_epoch(&ctx, &means, run, progress)?;
        let mut summary = Map::new();
        summary.insert("kind".into(), "epoch".into());
        summary.insert("epoch".into(), epoch.into());
        summary.extend(end.fields);
        summary.insert("seconds".into(), started.elapsed().as_secs_f64().into());
        let headline: Vec<String> = end
            .log_keys
            .iter()
            .filter_map(|k| summary.get(*k).map(|v| format!("{k}={v}")))
            .collect();
        tracing::info!(epoch, "epoch finished: {}", headline.join(" "));
        let summary = Value::Object(summary);
        run.log(&summary)?;
        let state = CheckpointState {
            epoch: epoch + 1,
            global_step,
            seed: settings.seed,
            metrics_len: 0,
            events_len: None,
            score: end.score,
            extra: end.extra,
            best: None,
        };
        run.save_checkpoint(state, &task.state()?)?;
        progress.epoch_end(epoch, &summary);
    }
    progress.run_end();
    task.finish(
        run,
        RunEnd {
            start_epoch,
            global_step,
        },
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamStore;
    use crate::progress::NoProgress;
    use crate::sgd::{Sgd, SgdConfig};
    use candle_core::DType;
    use rand::Rng;

    /// A toy task: fit `w` to noisy targets by SGD, one target per step, drawn from a
    /// generator seeded by (seed, epoch, step); `poison` makes one step's loss NaN.
    struct Toy {
        store: ParamStore,
        sgd: Sgd,
        seed: u64,
        steps: usize,
        poison: Option<(usize, usize)>,
        finished: bool,
    }

    impl Toy {
        fn new(seed: u64) -> Self {
            let store = ParamStore::new(seed);
            store
                .var_builder(DType::F64, &Device::Cpu)
                .get_with_hints(
                    3,
                    "w",
                    candle_nn::Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                )
                .unwrap();
            let sgd = Sgd::new(
                store.trainable(),
                SgdConfig {
                    lr: 0.1,
                    momentum: 0.9,
                    weight_decay: 0.0,
                    nesterov: false,
                },
            )
            .unwrap();
            Toy {
                store,
                sgd,
                seed,
                steps: 5,
                poison: None,
                finished: false,
            }
        }

        fn w(&self) -> Vec<f64> {
            self.store.all()[0].1.as_tensor().to_vec1().unwrap()
        }
    }

    impl Task for Toy {
        type Batch = Vec<f64>;
        type Error = Error;
        type Outcome = Vec<f64>;

        fn restore(&mut self, ckpt: &LoadedCheckpoint) -> Result<()> {
            ckpt.load("weights", |t| self.store.set_all(t))?;
            ckpt.load("optimizer", |t| self.sgd.load_state(t))
        }

        fn begin_epoch(&mut self, epoch: usize) -> Result<EpochPlan<Vec<f64>, Error>> {
            let seed = self.seed;
            let batches = (0..self.steps).map(move |step| {
                let mut rng = crate::seed::stream_rng(seed, "toy", (epoch * 100 + step) as u64);
                Ok((0..3).map(|_| rng.random::<f64>()).collect())
            });
            Ok(EpochPlan {
                steps: self.steps,
                batches: Box::new(batches),
            })
        }

        fn step(&mut self, ctx: &StepCtx, target: Vec<f64>) -> Result<StepReport> {
            let t = Tensor::new(target.as_slice(), &Device::Cpu)?;
            let w = self.store.all()[0].1.as_tensor().clone();
            let mut loss = (w - t)?.sqr()?.sum_all()?;
            if self.poison == Some((ctx.epoch, ctx.step)) {
                loss = (loss * f64::NAN)?;
            }
            let value = crate::scalar(&loss)?;
            ctx.ensure_finite("toy loss", value)?;
            let g = crate::grads::collect(&loss.backward()?, self.sgd.vars());
            self.sgd.step(&g)?;
            Ok(StepReport {
                stats: StepStats {
                    loss: value,
                    accuracy: f64::NAN,
                    lr: self.sgd.lr(),
                },
                weight: 1,
                means: vec![("twice", 2.0 * value, 1)],
                log: Map::new(),
            })
        }

        fn end_epoch(
            &mut self,
            ctx: &StepCtx,
            means: &EpochMeans,
            _run: &RunDir,
            _progress: &mut dyn Progress,
        ) -> Result<EpochEnd> {
            assert_eq!(ctx.step, self.steps);
            assert!((means.mean("twice") - 2.0 * means.mean("loss")).abs() < 1e-12);
            assert!(means.get("accuracy").is_none());
            let mut fields = Map::new();
            fields.insert("train_loss".into(), means.mean("loss").into());
            Ok(EpochEnd {
                fields,
                log_keys: &["train_loss"],
                score: Some(-means.mean("loss")),
                extra: Value::Null,
            })
        }

        fn state(&self) -> Result<Vec<(&'static str, HashMap<String, Tensor>)>> {
            Ok(vec![
                ("weights", self.store.snapshot()?),
                ("optimizer", self.sgd.state()),
            ])
        }

        fn finish(
            &mut self,
            _run: &RunDir,
            _end: RunEnd,
            _p: &mut dyn Progress,
        ) -> Result<Vec<f64>> {
            self.finished = true;
            Ok(self.w())
        }
    }

    fn settings(epochs: usize) -> RunSettings {
        RunSettings {
            epochs,
            seed: 3,
            log_every: 2,
        }
    }

    fn metrics(dir: &std::path::Path) -> String {
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap()
    }

    /// Without the `seconds` field, which differs between runs.
    fn without_seconds(text: &str) -> Vec<Value> {
        text.lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("seconds");
                v
            })
            .collect()
    }

    #[test]
    fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
        let tmp = tempfile::tempdir().unwrap();
        let whole = tmp.path().join("whole");
        let rd = RunDir::create(&whole, "x = 1\n", 2).unwrap();
        let want = run(
            &mut Toy::new(3),
            &rd,
            settings(4),
            &Device::Cpu,
            &mut NoProgress,
        )
        .unwrap();

        // Two epochs, then a fresh process (a new task) resumes to four.
        let cut = tmp.path().join("cut");
        let rd = RunDir::create(&cut, "x = 1\n", 2).unwrap();
        run(
            &mut Toy::new(3),
            &rd,
            settings(2),
            &Device::Cpu,
            &mut NoProgress,
        )
        .unwrap();
        drop(rd); // the process ends, its lock with it
        let rd = RunDir::open(&cut, 2).unwrap();
        let mut task = Toy::new(3);
        let got = run(&mut task, &rd, settings(4), &Device::Cpu, &mut NoProgress).unwrap();
        assert!(task.finished);
        assert_eq!(got, want, "bit-identical weights");
        assert_eq!(
            without_seconds(&metrics(&cut)),
            without_seconds(&metrics(&whole))
        );
        let state = crate::read_checkpoint(&cut.join("checkpoints/epoch-0004"), &Device::Cpu)
            .unwrap()
            .state;
        assert_eq!((state.epoch, state.global_step, state.seed), (4, 20, 3));
    }

    #[test]
    fn resume_cuts_the_metrics_of_an_interrupted_epoch_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        let rd = RunDir::create(&dir, "x = 1\n", 5).unwrap();
        run(
            &mut Toy::new(3),
            &rd,
            settings(2),
            &Device::Cpu,
            &mut NoProgress,
        )
        .unwrap();
        let after_two = metrics(&dir);
        // A third epoch that dies at its fourth step after logging a step line.
        let mut task = Toy::new(3);
        task.poison = Some((2, 3));
        let err = run(&mut task, &rd, settings(3), &Device::Cpu, &mut NoProgress).unwrap_err();
        assert!(
            metrics(&dir).len() > after_two.len(),
            "epoch 2 logged steps"
        );
        match err {
            Error::NonFinite {
                what, epoch, step, ..
            } => {
                assert_eq!((what.as_str(), epoch, step), ("toy loss", 2, 3));
            }
            other => panic!("{other}"),
        }
        // The last checkpoint is kept as it was; resuming cuts the lines of epoch 2.
        assert_eq!(rd.checkpoints().unwrap().len(), 2);
        drop(rd);
        let resumed = RunDir::open(&dir, 5)
            .unwrap()
            .resume(&Device::Cpu)
            .unwrap()
            .unwrap();
        assert_eq!(resumed.state.epoch, 2);
        assert_eq!(metrics(&dir), after_two);
        let lines = without_seconds(&after_two);
        assert_eq!(lines.iter().filter(|l| l["kind"] == "step").count(), 4);
        assert_eq!(lines.iter().filter(|l| l["kind"] == "epoch").count(), 2);
    }

    #[test]
    fn a_checkpoint_of_another_seed_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r");
        let rd = RunDir::create(&dir, "x = 1\n", 2).unwrap();
        run(
            &mut Toy::new(3),
            &rd,
            settings(1),
            &Device::Cpu,
            &mut NoProgress,
        )
        .unwrap();
        let other = RunSettings {
            seed: 4,
            ..settings(2)
        };
        let err = run(&mut Toy::new(4), &rd, other, &Device::Cpu, &mut NoProgress).unwrap_err();
        assert!(err.to_string().contains("seed 3"), "{err}");
    }

    #[test]
    fn same_seed_same_run_and_another_seed_another() {
        let tmp = tempfile::tempdir().unwrap();
        let go = |name: &str, seed: u64| {
            let rd = RunDir::create(&tmp.path().join(name), "x = 1\n", 1).unwrap();
            let s = RunSettings {
                seed,
                ..settings(2)
            };
            run(&mut Toy::new(seed), &rd, s, &Device::Cpu, &mut NoProgress).unwrap()
        };
        assert_eq!(go("a", 1), go("b", 1));
        assert_ne!(go("c", 1), go("d", 2));
    }
}
