//! The ENAS micro search as a task of the run loop (the reference `src/cifar10/main.py`
//! with `micro_search.sh`): each epoch first trains the shared weights for one pass over
//! the training part, a fresh child sampled for every batch, then the controller for
//! `train_steps` updates of `num_aggregate` sampled children, each rewarded by its
//! accuracy on one validation batch. The end of each epoch samples `derive_samples`
//! children and logs their scores; the end of the run samples them again and keeps the
//! best (the paper's procedure; the reference leaves the choice to the user).
//!
//! Differences from the reference, on purpose:
//! - the validation part is a seeded random subset of the training images when a preset
//!   uses a subset (the reference holds out the last 5,000 images; so does `paper`);
//! - rewards and scores are measured without dropout (the reference reuses its training
//!   graph, dropout on); batch norms use batch statistics in both, as there;
//! - gradients are clipped to global norm `grad_clip` (the reference computes a clipped
//!   gradient and applies the unclipped one), and the L2 term and momentum move only the
//!   weights a step used (the reference decays every row of its weight tables);
//! - the auxiliary head is trained (the reference leaves it out of its optimizer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use nas_data::{split::enas_split, Augment, Batch, ImageSet, LoaderConfig};
use nas_search_space::{to_svg, EnasMicroGenotype, Genotype};
use nas_train::{
    grads, stream_rng, stream_seed, ConfigFile, EpochEnd, EpochMeans, EpochPlan, LoadedCheckpoint,
    ParamStore, Progress, RunDir, RunEnd, RunOptions, Sgd, StepCtx, StepReport, StepStats, Task,
};
use rand::rngs::StdRng;
use serde::Serialize;

use crate::config::{ControllerKind, EnasSearchConfig};
use crate::controller::{arc_genotype, uniform_arc, Choices, MicroController};
use crate::micro_child::{MicroChild, MicroChildConfig};
use crate::reinforce::{Reinforce, ReinforceConfig};
use crate::{Error, Result};

/// What a finished search hands back.
#[derive(Debug, Clone)]
pub struct EnasOutcome {
    /// The derived genotype: the best of the final samples.
    pub genotype: EnasMicroGenotype,
    /// Its accuracy on its validation batch.
    pub accuracy: f64,
    /// The controller's log-probability of it (`None` with the random policy).
    pub log_prob: Option<f64>,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The epoch the run started at (non-zero when resumed).
    pub start_epoch: usize,
}

/// One sampled child and its score, as logged and written to `derive.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    /// The arc string.
    pub arc: String,
    /// Accuracy on its validation batch.
    pub accuracy: f64,
    /// The controller's log-probability of it (`None` with the random policy).
    pub log_prob: Option<f64>,
}

/// Starts a new search in `out`.
pub fn search(
    cfg: &EnasSearchConfig,
    out: &Path,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<EnasOutcome> {
    cfg.validate()?;
    let data = load_data(cfg, &opts.data_dir)?;
    let child = child_config(cfg, &data)?;
    let run = RunDir::create(out, &cfg.to_toml()?, cfg.run.keep_checkpoints)?;
    tracing::info!(dir = %out.display(), "search started");
    run_search(cfg, child, run, data, opts, progress)
}

/// Resumes the search in `run_dir` from its newest checkpoint.
pub fn resume(
    run_dir: &Path,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<EnasOutcome> {
    RunDir::inspect(run_dir)?;
    let cfg = EnasSearchConfig::from_file(&run_dir.join("config.toml"))?;
    let data = load_data(&cfg, &opts.data_dir)?;
    let run = RunDir::open(run_dir, cfg.run.keep_checkpoints)?;
    let child = child_config(&cfg, &data)?;
    run_search(&cfg, child, run, data, opts, progress)
}

/// The training data: the training and validation parts and their loaders.
struct SearchData {
    set: Arc<ImageSet>,
    train: Arc<Vec<usize>>,
    val: Arc<Vec<usize>>,
    train_loader: LoaderConfig,
    reward_loader: LoaderConfig,
    derive_loader: LoaderConfig,
}

fn load_data(cfg: &EnasSearchConfig, data_dir: &Path) -> Result<SearchData> {
    let (_, set) = nas_data::load_image_set(&cfg.data.dataset, data_dir, true)?;
    let n = set.len();
    let seed = cfg.run.seed;
    let d = &cfg.data;
    // The whole set in file order (as the reference), or a seeded subset of it.
    let order: Vec<usize> = match d.max_train_images {
        Some(m) => {
            let (mut order, _) =
                nas_data::split::darts_split(n, 1.0, stream_seed(seed, "split", 0))?;
            order.truncate(m.min(n));
            order
        }
        None => (0..n).collect(),
    };
    if d.valid_images + d.batch_size > order.len() || d.valid_images < d.batch_size {
        return Err(Error::Config(format!(
            "data.valid_images {} must be at least data.batch_size {} and leave a batch of the {} training images used",
            d.valid_images,
            d.batch_size,
            order.len()
        )));
    }
    let (train_pos, val_pos) = enas_split(order.len(), d.valid_images)?;
    let train: Vec<usize> = train_pos.iter().map(|&i| order[i]).collect();
    let val: Vec<usize> = val_pos.iter().map(|&i| order[i]).collect();
    let normalize = nas_data::normalize_for(&set, &train)?;
    let augment = Augment {
        crop_padding: d.crop_padding,
        flip: d.flip,
        cutout: 0,
    };
    augment.check(set.shape())?;
    let bs = d.batch_size;
    let loader = |name: &str, augment: Option<Augment>| {
        nas_data::loader(bs, stream_seed(seed, name, 0), augment, &normalize, true)
    };
    Ok(SearchData {
        set: Arc::new(set),
        train: Arc::new(train),
        val: Arc::new(val),
        train_loader: loader("loader.train", Some(augment)),
        reward_loader: loader("loader.reward", None),
        derive_loader: loader("loader.derive", None),
    })
}

fn child_config(cfg: &EnasSearchConfig, data: &SearchData) -> Result<MicroChildConfig> {
    let [c, h, w] = data.set.shape();
    let child = cfg.child(c, data.set.classes());
    child.validate("model.", Some((h, w)))?;
    let estimate = child.memory_estimate(cfg.data.batch_size, h, w);
    nas_train::check_memory(estimate, "this search")?;
    Ok(child)
}

/// Endless validation batches: pass after pass over the validation part, each pass
/// shuffled by its own index.
struct ValStream {
    set: Arc<ImageSet>,
    val: Arc<Vec<usize>>,
    loader: LoaderConfig,
    device: Device,
    next_pass: u64,
    current: Option<std::sync::mpsc::Receiver<Batch>>,
}

impl ValStream {
    fn new(data: &SearchData, loader: &LoaderConfig, first_pass: u64, device: &Device) -> Self {
        ValStream {
            set: data.set.clone(),
            val: data.val.clone(),
            loader: loader.clone(),
            device: device.clone(),
            next_pass: first_pass,
            current: None,
        }
    }

    fn next_batch(&mut self) -> Result<(Tensor, Tensor)> {
        // Two tries: the current pass may be exhausted (a pass always has a batch, as
        // the validation part holds at least one).
        for _ in 0..2 {
            if let Some(rx) = &self.current {
                if let Ok(b) = rx.recv() {
                    return Ok(b.to_tensors(&self.device)?);
                }
            }
            self.current = Some(nas_data::epoch(
                self.set.clone(),
                self.val.clone(),
                &self.loader,
                self.next_pass,
            )?);
            self.next_pass += 1;
        }
        Err(Error::Config(
            "the validation part gives no batch; raise data.valid_images".into(),
        ))
    }
}

/// A step's input: a training batch, or the validation batches of one controller update.
pub enum EnasBatch {
    /// One shared-weight step.
    Shared((Tensor, Tensor)),
    /// One controller update, one batch per sampled child.
    Controller(Vec<(Tensor, Tensor)>),
}

fn run_search(
    cfg: &EnasSearchConfig,
    child_cfg: MicroChildConfig,
    run: RunDir,
    data: SearchData,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<EnasOutcome> {
    let dev = &opts.device;
    let store = ParamStore::new(cfg.run.seed);
    let child = MicroChild::new(child_cfg, store.var_builder(DType::F32, dev))?;
    // The same weights without a graph, for rewards and scores (forward passes only).
    let scorer = MicroChild::new(child_cfg, store.detached_var_builder(DType::F32, dev))?;
    let ctrl_store = ParamStore::new(stream_seed(cfg.run.seed, "controller", 0));
    let controller = MicroController::new(cfg.controller(), &ctrl_store, DType::F32, dev)?;
    let sgd = Sgd::new(store.trainable(), cfg.sgd())?;
    let reinforce = Reinforce::new(
        ctrl_store.trainable(),
        ReinforceConfig {
            adam: cfg.adam(),
            entropy_weight: cfg.controller.entropy_weight,
            baseline_decay: cfg.controller.baseline_decay,
        },
    )?;
    tracing::info!(
        shared = store.count(|_| true),
        controller = ctrl_store.count(|_| true),
        train_images = data.train.len(),
        val_images = data.val.len(),
        "ENAS search built"
    );
    let mut task = EnasTask {
        cfg,
        data,
        device: dev.clone(),
        store,
        child,
        scorer,
        ctrl_store,
        sampler: controller.detached(),
        controller,
        sgd,
        reinforce,
        lr: f64::NAN,
    };
    nas_train::runner::run(&mut task, &run, cfg.run.settings(), dev, progress)
}

/// The search as the run loop drives it.
struct EnasTask<'a> {
    cfg: &'a EnasSearchConfig,
    data: SearchData,
    device: Device,
    store: ParamStore,
    child: MicroChild,
    /// `child` on detached views: forward passes that keep no graph.
    scorer: MicroChild,
    ctrl_store: ParamStore,
    controller: MicroController,
    /// `controller` on detached views: samples that need no gradient.
    sampler: MicroController,
    sgd: Sgd,
    reinforce: Reinforce,
    lr: f64,
}

impl EnasTask<'_> {
    fn lstm(&self) -> bool {
        self.cfg.controller.kind == ControllerKind::Lstm
    }

    /// Samples `n` arcs from the policy, row `i` from stream `(name, i)`; with the LSTM
    /// policy also their decisions, with their graph when `grad`.
    fn sample(
        &self,
        n: usize,
        name: &str,
        grad: bool,
    ) -> Result<(Vec<Vec<usize>>, Option<crate::controller::Decisions>)> {
        let seed = self.cfg.run.seed;
        let mut rngs: Vec<StdRng> = (0..n).map(|i| stream_rng(seed, name, i as u64)).collect();
        if self.lstm() {
            let controller = if grad {
                &self.controller
            } else {
                &self.sampler
            };
            let d = controller.run(n, Choices::Sample(&mut rngs))?;
            Ok((d.arcs.clone(), Some(d)))
        } else {
            let nodes = self.cfg.model.nodes;
            Ok((
                rngs.iter_mut().map(|r| uniform_arc(nodes, r)).collect(),
                None,
            ))
        }
    }

    /// Accuracy of `arc` on one batch, batch norms on batch statistics, no dropout.
    fn score(&self, arc: &EnasMicroGenotype, (x, y): &(Tensor, Tensor)) -> Result<f64> {
        let mut rng = stream_rng(0, "unused", 0);
        let out = self.scorer.forward(x, arc, false, &mut rng)?;
        let correct = nas_train::correct_top_k(&out.logits, y, &[1])?[0];
        Ok(correct as f64 / y.dim(0)? as f64)
    }

    /// Samples `n` children under stream `name` and scores each on its own batch of
    /// `stream`.
    fn sample_and_score(
        &self,
        n: usize,
        name: &str,
        stream: &mut ValStream,
    ) -> Result<Vec<Scored>> {
        let (arcs, decisions) = self.sample(n, name, false)?;
        let mut out = Vec::with_capacity(n);
        for (i, arc) in arcs.iter().enumerate() {
            let batch = stream.next_batch()?;
            let g = arc_genotype(arc)?;
            let accuracy = nas_train::in_pool(|| self.score(&g, &batch))?;
            out.push(Scored {
                arc: g.to_arc(),
                accuracy,
                log_prob: decisions.as_ref().map(|d| d.log_prob[i]),
            });
        }
        Ok(out)
    }

    fn shared_step(&mut self, ctx: &StepCtx, (x, y): (Tensor, Tensor)) -> Result<StepReport> {
        let name = format!("arc.shared.{}", ctx.epoch);
        let (arcs, _) = self.sample(1, &format!("{name}.{}", ctx.step), false)?;
        let arc = arc_genotype(&arcs[0])?;
        let mut rng = stream_rng(self.cfg.run.seed, "dropout", ctx.global_step);
        let out = self.child.forward(&x, &arc, true, &mut rng)?;
        let ce = candle_nn::loss::cross_entropy(&out.logits, &y)?;
        let loss = match &out.aux_logits {
            Some(aux) => {
                (&ce + (candle_nn::loss::cross_entropy(aux, &y)? * self.cfg.model.aux_weight)?)?
            }
            None => ce.clone(),
        };
        let loss_value = nas_train::scalar(&loss)?;
        ctx.ensure_finite("shared-weight loss", loss_value)?;
        let mut g = grads::collect(&loss.backward()?, self.sgd.vars());
        let norm = grads::clip_global_norm(&mut g, self.cfg.weights.grad_clip)?;
        ctx.ensure_finite("shared-weight gradient norm", norm)?;
        self.sgd.step(&g)?;
        let n = y.dim(0)?;
        let acc = nas_train::correct_top_k(&out.logits, &y, &[1])?[0] as f64 / n as f64;
        let mut log = serde_json::Map::new();
        log.insert("phase".into(), "shared".into());
        log.insert("accuracy".into(), acc.into());
        log.insert("arc".into(), arc.to_arc().into());
        Ok(StepReport {
            stats: StepStats {
                loss: loss_value,
                accuracy: acc,
                lr: self.lr,
            },
            weight: n,
            means: vec![],
            log,
        })
    }

    fn controller_step(
        &mut self,
        ctx: &StepCtx,
        batches: Vec<(Tensor, Tensor)>,
    ) -> Result<StepReport> {
        let name = format!("arc.controller.{}.{}", ctx.epoch, ctx.step);
        let (arcs, decisions) = self.sample(batches.len(), &name, true)?;
        let decisions = decisions
            .ok_or_else(|| Error::Config("a controller step without the LSTM controller".into()))?;
        let mut accs = Vec::with_capacity(arcs.len());
        for (arc, batch) in arcs.iter().zip(&batches) {
            accs.push(self.score(&arc_genotype(arc)?, batch)?);
        }
        let stats = self.reinforce.update(&decisions, &accs)?;
        ctx.ensure_finite("controller loss", stats.loss)?;
        let k = accs.len();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let mut log = serde_json::Map::new();
        log.insert("phase".into(), "controller".into());
        log.insert("reward".into(), mean(&stats.rewards).into());
        log.insert("baseline".into(), stats.baseline.into());
        log.insert("advantage".into(), stats.advantage.into());
        Ok(StepReport {
            stats: StepStats {
                loss: stats.loss,
                accuracy: f64::NAN,
                lr: self.cfg.controller.lr,
            },
            // The epoch's loss and accuracy are the shared steps'.
            weight: 0,
            means: vec![
                ("reward", mean(&stats.rewards), k),
                ("reward_accuracy", mean(&accs), k),
                ("entropy", mean(&decisions.entropy), k),
            ],
            log,
        })
    }
}

impl Task for EnasTask<'_> {
    type Batch = EnasBatch;
    type Error = Error;
    type Outcome = EnasOutcome;

    fn restore(&mut self, ckpt: &LoadedCheckpoint) -> Result<()> {
        ckpt.load("weights", |t| self.store.set_all(t))?;
        ckpt.load("controller", |t| self.ctrl_store.set_all(t))?;
        ckpt.load("optimizer", |t| self.sgd.load_state(t))?;
        let state = ckpt.group("controller_optimizer")?;
        self.reinforce.load_state(state)?;
        Ok(())
    }

    fn begin_epoch(&mut self, epoch: usize) -> Result<EpochPlan<EnasBatch, Error>> {
        self.lr = self.cfg.schedule().lr(epoch);
        self.sgd.set_lr(self.lr);
        let d = &self.data;
        let bs = self.cfg.data.batch_size;
        let train_steps = d.train.len() / bs;
        let controller_steps = if self.lstm() {
            self.cfg.controller.train_steps
        } else {
            0
        };
        let dev = self.device.clone();
        let train = nas_data::epoch(
            d.set.clone(),
            d.train.clone(),
            &d.train_loader,
            epoch as u64,
        )?;
        let shared = train
            .into_iter()
            .map(move |b| Ok(EnasBatch::Shared(b.to_tensors(&dev)?)));
        // Passes over the validation part: 1,000 indices per epoch, more than any phase uses.
        let mut stream = ValStream::new(d, &d.reward_loader, 1_000 * epoch as u64, &self.device);
        let agg = self.cfg.controller.num_aggregate;
        let controller = (0..controller_steps).map(move |_| {
            let batches = (0..agg)
                .map(|_| stream.next_batch())
                .collect::<Result<Vec<_>>>()?;
            Ok(EnasBatch::Controller(batches))
        });
        Ok(EpochPlan {
            steps: train_steps + controller_steps,
            batches: Box::new(shared.chain(controller)),
        })
    }

    fn step(&mut self, ctx: &StepCtx, batch: EnasBatch) -> Result<StepReport> {
        match batch {
            EnasBatch::Shared(b) => self.shared_step(ctx, b),
            EnasBatch::Controller(b) => self.controller_step(ctx, b),
        }
    }

    fn end_epoch(
        &mut self,
        ctx: &StepCtx,
        means: &EpochMeans,
        _run: &RunDir,
        progress: &mut dyn Progress,
    ) -> Result<EpochEnd> {
        let n = self.cfg.controller.derive_samples;
        progress.evaluating(n);
        let mut stream = ValStream::new(
            &self.data,
            &self.data.derive_loader,
            1_000 * ctx.epoch as u64,
            &self.device,
        );
        let samples = self.sample_and_score(n, &format!("arc.epoch.{}", ctx.epoch), &mut stream)?;
        let best = best_of(&samples);
        let fields = nas_train::fields(serde_json::json!({
            "lr": self.lr,
            "train_loss": means.mean("loss"), "train_accuracy": means.mean("accuracy"),
            "reward": means.get("reward"), "reward_accuracy": means.get("reward_accuracy"),
            "entropy": means.get("entropy"), "baseline": self.reinforce.baseline(),
            "samples": samples, "best_arc": best.arc, "best_accuracy": best.accuracy,
        }));
        Ok(EpochEnd {
            fields,
            log_keys: &[
                "train_loss",
                "train_accuracy",
                "reward_accuracy",
                "best_accuracy",
                "best_arc",
            ],
            score: Some(best.accuracy),
            extra: serde_json::Value::Null,
        })
    }

    fn state(&self) -> Result<Vec<(&'static str, HashMap<String, Tensor>)>> {
        Ok(vec![
            ("weights", self.store.snapshot()?),
            ("controller", self.ctrl_store.snapshot()?),
            ("optimizer", self.sgd.state()),
            ("controller_optimizer", self.reinforce.state()?),
        ])
    }

    fn finish(
        &mut self,
        run: &RunDir,
        end: RunEnd,
        progress: &mut dyn Progress,
    ) -> Result<EnasOutcome> {
        let n = self.cfg.controller.derive_samples;
        progress.evaluating(n);
        let mut stream = ValStream::new(
            &self.data,
            &self.data.derive_loader,
            u32::MAX as u64,
            &self.device,
        );
        let samples = self.sample_and_score(n, "arc.derive", &mut stream)?;
        let best = best_of(&samples).clone();
        let genotype = EnasMicroGenotype::from_arc(&best.arc)?;
        let g = Genotype::EnasMicro(genotype.clone());
        run.write("genotype.json", format!("{}\n", g.to_json()).as_bytes())?;
        run.write("genotype.arc", format!("{}\n", best.arc).as_bytes())?;
        run.write("genotype.svg", to_svg(&g)?.as_bytes())?;
        let derive = serde_json::json!({
            "policy": match self.cfg.controller.kind { ControllerKind::Lstm => "lstm", ControllerKind::Random => "random" },
            "chosen": best, "samples": samples,
            "rule": "the sample with the highest accuracy on its validation batch (the first on ties)",
        });
        run.write(
            "derive.json",
            format!(
                "{}\n",
                serde_json::to_string_pretty(&derive).map_err(|e| Error::Config(e.to_string()))?
            )
            .as_bytes(),
        )?;
        Ok(EnasOutcome {
            genotype,
            accuracy: best.accuracy,
            log_prob: best.log_prob,
            run_dir: run.path().to_path_buf(),
            start_epoch: end.start_epoch,
        })
    }
}

/// The sample with the highest accuracy, the first on ties.
fn best_of(samples: &[Scored]) -> &Scored {
    let mut best = &samples[0];
    for s in &samples[1..] {
        if s.accuracy > best.accuracy {
            best = s;
        }
    }
    best
}
