//! The recurrent runs on a text corpus, one loop for all: the retraining of a derived
//! cell with NT-ASGD (`rnn/train.py`), and, through the [`LmArch`] hook, a search's
//! architecture steps (DARTS's is `nas-darts`'s `rnn_search`).
//!
//! Per training window: (search only) an architecture step on the next window of the
//! validation stream, then a weight step on the training window (NLL + AR + TAR, SGD whose
//! rate is scaled by `len / bptt`, clipping). The hidden state carries over between
//! windows, detached. After each epoch: validation perplexity, (search) the derived
//! genotype and alphas, (retraining) the NT-ASGD switch, and a checkpoint.
//!
//! Differences from the reference, on purpose:
//! - dropout masks are drawn once per window and shared by every loss of that window
//!   (the architect's `w`, `w+` and `w-` passes see the same masks, so the finite
//!   difference measures the weights, not mask noise);
//! - evaluation divides the summed loss by the number of predicted tokens (the reference
//!   divides by one more);
//! - training on a NaN stops with an error and keeps the last checkpoint (the reference
//!   reloads it and retries the epoch).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use nas_data::ptb::{Batched, Corpus};
use nas_data::Dataset;
use nas_search_space::{Genotype, RnnGenotype};
use nas_train::{
    grads, ConfigFile, EpochEnd, EpochMeans, EpochPlan, IterateAverage, LoadedCheckpoint,
    ParamStore, Progress, RunDir, RunEnd, Sgd, StepCtx, StepReport, StepStats, Task,
};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::lm_config::{LmConfig, LmOptimConfig};
use crate::{Error, Result};
use nas_models::{ar, nll, tar, LmBatch, LmMasks, RnnLm};
use nas_train::RunOptions;

const GENOTYPE_FILE: &str = "genotype.json";

/// What a finished recurrent run hands back.
#[derive(Debug, Clone)]
pub struct LmOutcome {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The derived genotype (search) or the trained one.
    pub genotype: RnnGenotype,
    /// The epoch the run started at (non-zero when resumed).
    pub start_epoch: usize,
    /// Validation perplexity after the last epoch.
    pub val_ppl: f64,
    /// Test perplexity of the best checkpoint (retraining only).
    pub test_ppl: Option<f64>,
}

/// Loss and perplexity on one split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LmReport {
    /// Mean negative log-likelihood per token (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub ppl: f64,
    /// Tokens predicted.
    pub tokens: usize,
    /// Tokens per second of the evaluation.
    pub tokens_per_second: f64,
}

/// Starts retraining `genotype` in `out`.
pub fn train_lm(
    cfg: &LmConfig,
    genotype: &RnnGenotype,
    out: &Path,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<LmOutcome> {
    cfg.validate()?;
    // Load the data and build the model first: a run that cannot start leaves no folder.
    let data = LmData::load(cfg, &opts.data_dir)?;
    let (model, store) = derived_model(cfg, genotype, &data, &opts.device)?;
    let json = format!("{}\n", Genotype::DartsRnn(genotype.clone()).to_json());
    let inputs = [(GENOTYPE_FILE, json.as_bytes())];
    let run = RunDir::create_with(out, &cfg.to_toml()?, &inputs, cfg.run.keep_checkpoints)?;
    tracing::info!(dir = %out.display(), "recurrent retraining started");
    let genotype = Some(genotype.clone());
    run_lm(
        cfg, model, store, Retrain, genotype, run, data, opts, progress,
    )
}

/// Resumes the retraining run in `run_dir` from its newest checkpoint, with the
/// configuration and genotype it was started with.
pub fn resume_lm_training(
    run_dir: &Path,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<LmOutcome> {
    RunDir::inspect(run_dir)?;
    let cfg = LmConfig::from_file(&run_dir.join("config.toml"))?;
    let genotype = read_genotype(run_dir)?;
    let data = LmData::load(&cfg, &opts.data_dir)?;
    let (model, store) = derived_model(&cfg, &genotype, &data, &opts.device)?;
    let run = RunDir::open(run_dir, cfg.run.keep_checkpoints)?;
    let genotype = Some(genotype);
    run_lm(
        &cfg, model, store, Retrain, genotype, run, data, opts, progress,
    )
}

fn derived_model(
    cfg: &LmConfig,
    genotype: &RnnGenotype,
    data: &LmData,
    dev: &Device,
) -> Result<(RnnLm, ParamStore)> {
    let store = ParamStore::new(cfg.run.seed);
    let vb = store.var_builder(DType::F32, dev);
    Ok((RnnLm::derived(cfg.model, data.vocab, genotype, vb)?, store))
}

/// The DARTS recurrent genotype a run directory holds (`genotype.json`).
pub fn read_genotype(run_dir: &Path) -> Result<RnnGenotype> {
    let path = run_dir.join(GENOTYPE_FILE);
    let text = nas_train::read_text(&path)?;
    match Genotype::from_json(&text) {
        Ok(Genotype::DartsRnn(g)) => Ok(g),
        Ok(other) => Err(Error::file(
            &path,
            format!(
                "expected a DARTS recurrent genotype, found a {} genotype",
                other.kind()
            ),
        )),
        Err(e) => Err(Error::file(&path, e)),
    }
}

/// The corpus cut into the streams a run reads.
pub struct LmData {
    /// The vocabulary size.
    pub vocab: usize,
    /// The training stream at the training batch size.
    pub train: Batched,
    /// The validation tokens at the training batch size (the search's architecture data).
    pub search: Batched,
    /// The validation stream at the evaluation batch size.
    pub valid: Batched,
    /// The test stream at the test batch size.
    pub test: Batched,
}

impl LmData {
    /// Reads the corpus `cfg` names and cuts it into the streams.
    pub fn load(cfg: &LmConfig, data_dir: &Path) -> Result<Self> {
        let corpus: Corpus = Dataset::from_name(&cfg.data.dataset)?.load_corpus(data_dir)?;
        let cut = |tokens: &[u32], max: Option<usize>| -> Vec<u32> {
            tokens[..max.unwrap_or(usize::MAX).min(tokens.len())].to_vec()
        };
        let train = cut(corpus.train(), cfg.data.max_train_tokens);
        let valid = cut(corpus.valid(), cfg.data.max_valid_tokens);
        let batched = |what: &str, tokens: &[u32], batch: usize| -> Result<Batched> {
            Batched::new(tokens, batch).map_err(|e| {
                Error::Config(format!(
                    "data: the {what} stream ({} tokens) at batch size {batch}: {e}",
                    tokens.len()
                ))
            })
        };
        Ok(LmData {
            vocab: corpus.vocab_size(),
            train: batched("training", &train, cfg.data.batch_size)?,
            search: batched("validation", &valid, cfg.data.batch_size)?,
            valid: batched("validation", &valid, cfg.data.eval_batch_size)?,
            test: batched("test", corpus.test(), cfg.data.test_batch_size)?,
        })
    }
}

/// A window of a stream as tensors: inputs `[T, B]` and flat targets `[T * B]`.
pub fn window(
    stream: &Batched,
    start: usize,
    len: usize,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let (x, y) = stream.window(start, len);
    let t = x.len() / stream.batch();
    Ok((
        Tensor::from_slice(x, (t, stream.batch()), dev)?,
        Tensor::from_slice(y, t * stream.batch(), dev)?,
    ))
}

/// What a recurrent run does besides training the weights: nothing (retraining a
/// genotype, [`Retrain`]), or a search's architecture step before every weight step,
/// with its own state, outputs and checkpoint groups.
pub trait LmArch: Send {
    /// The error of the hook's steps; the loop's own errors convert into it.
    type Error: From<Error> + From<nas_train::Error> + From<candle_core::Error> + Send + 'static;

    /// The windows of epoch `epoch` over the training stream.
    fn windows(&self, train: &Batched, cfg: &LmConfig, epoch: usize) -> Vec<(usize, usize)>;

    /// An epoch starts: `batch` is the training batch size.
    fn begin_epoch(&mut self, _model: &RnnLm, _batch: usize) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Before the weight step on `train` (the window at row `start`): the architecture
    /// step, returning the architecture probabilities the weight step uses and the
    /// architecture step's validation loss. `mask_rng` has drawn `train`'s masks.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        _ctx: &StepCtx,
        _model: &RnnLm,
        _sgd: &Sgd,
        _train: &LmBatch,
        _start: usize,
        _data: &LmData,
        _mask_rng: &mut StdRng,
    ) -> Result<Option<(Tensor, f64)>, Self::Error> {
        Ok(None)
    }

    /// The architecture probabilities evaluation uses (`None`: a derived cell).
    fn probs(&self) -> Result<Option<Tensor>, Self::Error> {
        Ok(None)
    }

    /// Fields of the epoch's line (the current genotype) and per-epoch outputs.
    fn end_epoch(
        &mut self,
        _epoch: usize,
        _run: &RunDir,
    ) -> Result<Map<String, Value>, Self::Error> {
        Ok(Map::new())
    }

    /// Checkpoint groups besides the weights and the iterate average.
    #[allow(clippy::type_complexity)]
    fn state(&self) -> Result<Vec<(&'static str, HashMap<String, Tensor>)>, Self::Error> {
        Ok(Vec::new())
    }

    /// Restores what [`LmArch::state`] saved.
    fn restore(&mut self, _ckpt: &LoadedCheckpoint) -> Result<(), Self::Error> {
        Ok(())
    }

    /// After the last epoch: the found genotype of a search (its outputs written), or
    /// `None` for retraining (the run is then evaluated on the test set).
    fn finish(&self, _run: &RunDir) -> Result<Option<RnnGenotype>, Self::Error> {
        Ok(None)
    }
}

/// Retraining a derived cell: windows of random length, no architecture step.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retrain;

impl LmArch for Retrain {
    type Error = Error;

    fn windows(&self, train: &Batched, cfg: &LmConfig, epoch: usize) -> Vec<(usize, usize)> {
        train.darts_windows(
            cfg.data.bptt,
            cfg.data.max_seq_len_delta,
            nas_train::stream_seed(cfg.run.seed, "windows", epoch as u64),
        )
    }
}

/// The recurrent loop as the run loop drives it.
struct LmTask<'a, A: LmArch> {
    cfg: &'a LmConfig,
    data: LmData,
    device: Device,
    store: ParamStore,
    model: RnnLm,
    sgd: Sgd,
    arch: A,
    genotype: Option<RnnGenotype>,
    average: Option<IterateAverage>,
    history: Vec<f64>,
    hidden: Tensor,
    val_ppl: f64,
    opts: &'a RunOptions,
}

/// Runs the recurrent loop in `run` (new or resumed) on `model`, whose variables live in
/// `store`, with the hook `arch`; `genotype` is the derived cell of a retraining run.
#[allow(clippy::too_many_arguments)]
pub fn run_lm<A: LmArch>(
    cfg: &LmConfig,
    model: RnnLm,
    store: ParamStore,
    arch: A,
    genotype: Option<RnnGenotype>,
    run: RunDir,
    data: LmData,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<LmOutcome, A::Error> {
    let sgd = Sgd::new(store.trainable(), cfg.sgd())?;
    tracing::info!(
        parameters = store.count(|_| true),
        train_tokens = data.train.rows() * data.train.batch(),
        "recurrent model built"
    );
    let hidden = model.init_hidden(cfg.data.batch_size)?;
    let mut task = LmTask {
        cfg,
        data,
        device: opts.device.clone(),
        store,
        model,
        sgd,
        arch,
        genotype,
        average: None,
        history: Vec::new(),
        hidden,
        val_ppl: f64::NAN,
        opts,
    };
    nas_train::runner::run(&mut task, &run, cfg.run.settings(), &opts.device, progress)
}

impl<A: LmArch> LmTask<'_, A> {
    /// The validation stream, with the averaged weights once NT-ASGD runs.
    fn validate(&mut self, progress: &mut dyn Progress) -> Result<LmReport, A::Error> {
        let probs = self.arch.probs()?;
        let saved = match &self.average {
            Some(avg) => Some(avg.swap_in()?),
            None => None,
        };
        let val = evaluate(
            &self.model,
            probs.as_ref(),
            &self.data.valid,
            self.cfg.data.bptt,
            &self.device,
            progress,
        );
        if let (Some(avg), Some(saved)) = (&self.average, &saved) {
            avg.restore(saved)?;
        }
        Ok(val?)
    }
}

impl<A: LmArch> Task for LmTask<'_, A> {
    type Batch = (usize, usize);
    type Error = A::Error;
    type Outcome = LmOutcome;

    fn restore(&mut self, ckpt: &LoadedCheckpoint) -> Result<(), A::Error> {
        ckpt.load("weights", |t| self.store.set_all(t))?;
        self.arch.restore(ckpt)?;
        if let Some(ax) = ckpt.groups.get("average") {
            let mut avg = IterateAverage::new(self.store.trainable())?;
            avg.load_state(ax)?;
            self.average = Some(avg);
        }
        self.history =
            serde_json::from_value(ckpt.state.extra["val_losses"].clone()).map_err(|e| {
                nas_train::Error::Group {
                    path: ckpt.path.clone(),
                    group: "state.json".into(),
                    message: format!("val_losses: {e}"),
                }
            })?;
        Ok(())
    }

    fn begin_epoch(&mut self, epoch: usize) -> Result<EpochPlan<Self::Batch, A::Error>, A::Error> {
        let windows = self.arch.windows(&self.data.train, self.cfg, epoch);
        let batch = self.cfg.data.batch_size;
        self.hidden = self.model.init_hidden(batch)?;
        self.arch.begin_epoch(&self.model, batch)?;
        Ok(EpochPlan {
            steps: windows.len(),
            batches: Box::new(windows.into_iter().map(Ok)),
        })
    }

    fn step(
        &mut self,
        ctx: &StepCtx,
        (start, len): (usize, usize),
    ) -> Result<StepReport, A::Error> {
        let cfg = self.cfg;
        let (bptt, batch, dev) = (cfg.data.bptt, cfg.data.batch_size, &self.device);
        let lr = cfg.optim.lr * len as f64 / bptt as f64;
        self.sgd.set_lr(lr);
        let (x, y) = window(&self.data.train, start, len, dev)?;
        // Drawn afresh per step, so a resumed run draws what an uninterrupted one would.
        let mut mask_rng = nas_train::stream_rng(cfg.run.seed, "masks", ctx.global_step);
        let masks = LmMasks::sample(
            &cfg.model,
            self.data.vocab,
            batch,
            &mut mask_rng,
            DType::F32,
            dev,
        )?;
        let train = LmBatch::new(x, y, self.hidden.clone(), masks);
        let arch = self.arch.step(
            ctx,
            &self.model,
            &self.sgd,
            &train,
            start,
            &self.data,
            &mut mask_rng,
        )?;
        let (probs, arch_val_loss) = match arch {
            Some((p, l)) => (Some(p), Some(l)),
            None => (None, None),
        };
        let out = weight_step(
            ctx,
            &self.model,
            &mut self.sgd,
            &cfg.optim,
            &train,
            probs.as_ref(),
        )?;
        self.hidden = out.hidden;
        if let Some(avg) = self.average.as_mut() {
            avg.update()?;
        }
        let mut log = Map::new();
        log.insert("ppl".into(), out.loss.exp().into());
        log.insert("seq_len".into(), len.into());
        log.insert("grad_norm".into(), out.grad_norm.into());
        log.insert("arch_val_loss".into(), arch_val_loss.into());
        Ok(StepReport {
            stats: StepStats {
                loss: out.loss,
                accuracy: f64::NAN,
                lr,
            },
            weight: len,
            means: arch_val_loss
                .map(|a| ("arch_val_loss", a, 1))
                .into_iter()
                .collect(),
            log,
        })
    }

    fn end_epoch(
        &mut self,
        ctx: &StepCtx,
        means: &EpochMeans,
        run: &RunDir,
        progress: &mut dyn Progress,
    ) -> Result<EpochEnd, A::Error> {
        let cfg = self.cfg;
        self.sgd.set_lr(cfg.optim.lr);
        let val = self.validate(progress)?;
        ctx.ensure_finite("validation loss", val.loss)?;
        self.val_ppl = val.ppl;
        // NT-ASGD: switch when the loss is worse than the best before the last `nonmono`.
        let mut switched = false;
        if self.average.is_none() && nt_asgd_switch(&self.history, val.loss, cfg.optim.nonmono) {
            self.average = Some(IterateAverage::new(self.store.trainable())?);
            switched = true;
            tracing::info!(epoch = ctx.epoch, "switching to averaged SGD");
        }
        self.history.push(val.loss);
        let train_loss = means.mean("loss");
        let mut fields = nas_train::fields(serde_json::json!({
            "lr": cfg.optim.lr,
            "train_loss": train_loss, "train_ppl": train_loss.exp(),
            "arch_val_loss": means.get("arch_val_loss"),
            "val_loss": val.loss, "val_ppl": val.ppl,
            "averaging": self.average.is_some(), "switched_to_asgd": switched,
        }));
        fields.extend(self.arch.end_epoch(ctx.epoch, run)?);
        Ok(EpochEnd {
            fields,
            log_keys: &["train_ppl", "val_ppl", "genotype"],
            score: Some(-val.loss),
            extra: serde_json::json!({ "val_losses": self.history }),
        })
    }

    fn state(&self) -> Result<Vec<(&'static str, HashMap<String, Tensor>)>, A::Error> {
        let mut groups = vec![("weights", self.store.snapshot()?)];
        groups.extend(self.arch.state()?);
        if let Some(avg) = &self.average {
            groups.push(("average", avg.state()?));
        }
        Ok(groups)
    }

    fn finish(
        &mut self,
        run: &RunDir,
        end: RunEnd,
        progress: &mut dyn Progress,
    ) -> Result<LmOutcome, A::Error> {
        if self.val_ppl.is_nan() {
            // A finished run resumed: no epoch ran, so measure the final weights here.
            self.val_ppl = self.validate(progress)?.ppl;
        }
        if let Some(genotype) = self.arch.finish(run)? {
            return Ok(LmOutcome {
                run_dir: run.path().to_path_buf(),
                genotype,
                start_epoch: end.start_epoch,
                val_ppl: self.val_ppl,
                test_ppl: None,
            });
        }
        let genotype = self
            .genotype
            .clone()
            .ok_or_else(|| Error::Config("a retraining run needs a genotype".to_string()))?;
        let report = evaluate_lm_run(run.path(), "test", true, self.opts, progress)?;
        let valid = evaluate_lm_run(run.path(), "valid", true, self.opts, progress)?;
        let results = serde_json::json!({
            "checkpoint": "best", "valid": valid, "test": report,
            "genotype": genotype.to_python(),
        });
        run.write("results.json", format!("{results:#}\n").as_bytes())?;
        Ok(LmOutcome {
            run_dir: run.path().to_path_buf(),
            genotype,
            start_epoch: end.start_epoch,
            val_ppl: self.val_ppl,
            test_ppl: Some(report.ppl),
        })
    }
}

/// What a weight step gives.
#[derive(Debug, Clone)]
pub struct WeightStep {
    /// The training window's NLL (before AR and TAR).
    pub loss: f64,
    /// The weight gradient's norm before clipping.
    pub grad_norm: f64,
    /// The training stream's next hidden state (detached).
    pub hidden: Tensor,
}

/// The weight step of a recurrent run (`train()`'s loop body in the reference): the NLL
/// plus AR and TAR on the training window, clipping, SGD at the optimizer's current rate.
/// `probs` are the (detached) architecture probabilities of a search model.
pub fn weight_step(
    ctx: &StepCtx,
    model: &RnnLm,
    sgd: &mut Sgd,
    optim: &LmOptimConfig,
    train: &LmBatch,
    probs: Option<&Tensor>,
) -> Result<WeightStep> {
    let out = model.forward(&train.tokens, &train.hidden, probs, &train.masks, true)?;
    let raw_loss = nll(&out, &train.targets)?;
    let loss_value = nas_train::scalar(&raw_loss)?;
    ctx.ensure_finite("training loss", loss_value)?;
    let mut loss = raw_loss;
    for extra in [
        ar(&out.dropped, optim.ar_alpha)?,
        tar(&out.raw, optim.tar_beta)?,
    ]
    .into_iter()
    .flatten()
    {
        loss = (loss + extra)?;
    }
    let store_grads = loss.backward()?;
    let mut g = grads::collect(&store_grads, sgd.vars());
    let norm = grads::clip_global_norm(&mut g, optim.clip)?;
    ctx.ensure_finite("weight gradient norm", norm)?;
    sgd.step(&g)?;
    Ok(WeightStep {
        loss: loss_value,
        grad_norm: norm,
        hidden: out.hidden.detach(),
    })
}

/// NT-ASGD's trigger (`rnn/train.py`): switch to averaging when the validation loss is
/// worse than the best of all evaluations but the last `nonmono` (`history` holds the
/// earlier epochs' losses). `nonmono = 0` never switches.
pub fn nt_asgd_switch(history: &[f64], val_loss: f64, nonmono: usize) -> bool {
    nonmono > 0
        && history.len() > nonmono
        && val_loss
            > history[..history.len() - nonmono]
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
}

/// Perplexity over a whole stream in evaluation mode, hidden state carried across
/// windows of `bptt`.
fn evaluate(
    model: &RnnLm,
    probs: Option<&Tensor>,
    stream: &Batched,
    bptt: usize,
    dev: &Device,
    progress: &mut dyn Progress,
) -> Result<LmReport> {
    let started = Instant::now();
    let windows = stream.fixed_windows(bptt);
    progress.evaluating(windows.len());
    let mut hidden = model.init_hidden(stream.batch())?;
    let none = LmMasks::default();
    let (mut total, mut tokens) = (0.0, 0usize);
    for &(start, len) in &windows {
        let (x, y) = window(stream, start, len, dev)?;
        let out = model.forward(&x, &hidden, probs, &none, false)?;
        let loss = nas_train::scalar(&nll(&out, &y)?)?;
        let n = y.dim(0)?;
        total += loss * n as f64;
        tokens += n;
        hidden = out.hidden.detach();
    }
    let loss = total / tokens.max(1) as f64;
    Ok(LmReport {
        loss,
        ppl: loss.exp(),
        tokens,
        tokens_per_second: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
    })
}

/// Which language model a recurrent run's checkpoint holds.
#[derive(Debug, Clone)]
pub enum LmCell {
    /// A derived cell (retraining).
    Derived(RnnGenotype),
    /// The search cell's mixture of `steps` nodes; the checkpoint's `arch` group holds
    /// the architecture weights (`weights`, softmaxed over the primitives).
    Search {
        /// Nodes of the search cell.
        steps: usize,
    },
}

/// Evaluates a retraining run's checkpoint (the best one, or the newest) on `split`
/// (`valid` or `test`), with the averaged weights when NT-ASGD had started.
pub fn evaluate_lm_run(
    run_dir: &Path,
    split: &str,
    best: bool,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<LmReport> {
    let cfg = LmConfig::from_file(&run_dir.join("config.toml"))?;
    let cell = LmCell::Derived(read_genotype(run_dir)?);
    evaluate_lm_checkpoint(run_dir, &cfg, &cell, split, best, opts, progress)
}

/// Evaluates the best (or newest) checkpoint of the recurrent run in `run_dir`, whose
/// configuration is `cfg` and whose model is `cell`, on `split` (`valid` or `test`).
pub fn evaluate_lm_checkpoint(
    run_dir: &Path,
    cfg: &LmConfig,
    cell: &LmCell,
    split: &str,
    best: bool,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<LmReport> {
    let data = LmData::load(cfg, &opts.data_dir)?;
    let run = RunDir::inspect(run_dir)?;
    let path = match (best, run.best()?) {
        (true, Some((name, _))) => run_dir.join("checkpoints").join(name),
        _ => run
            .checkpoints()?
            .pop()
            .ok_or_else(|| Error::NoCheckpoint {
                run_dir: run_dir.to_path_buf(),
                best: false,
            })?,
    };
    let ckpt = nas_train::read_checkpoint(&path, &opts.device)?;
    let store = ParamStore::new(cfg.run.seed);
    let vb = store.var_builder(DType::F32, &opts.device);
    let (model, probs) = match cell {
        LmCell::Derived(g) => (RnnLm::derived(cfg.model, data.vocab, g, vb)?, None),
        LmCell::Search { steps } => {
            let alphas =
                ckpt.group("arch")?
                    .get("weights")
                    .ok_or_else(|| nas_train::Error::Group {
                        path: ckpt.path.clone(),
                        group: "arch".into(),
                        message: "no tensor \"weights\"".into(),
                    })?;
            (
                RnnLm::search(cfg.model, data.vocab, *steps, vb)?,
                Some(candle_nn::ops::softmax(alphas, 1)?),
            )
        }
    };
    ckpt.load("weights", |t| store.set_all(t))?;
    if let Some(ax) = ckpt.groups.get("average") {
        let mut avg = IterateAverage::new(store.trainable())?;
        avg.load_state(ax)?;
        avg.swap_in()?;
    }
    let stream = match split {
        "valid" | "val" => &data.valid,
        "test" => &data.test,
        other => {
            return Err(Error::Config(format!(
                "unknown split {other:?}; expected valid or test"
            )))
        }
    };
    evaluate(
        &model,
        probs.as_ref(),
        stream,
        cfg.data.bptt,
        &opts.device,
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: `len(best_val_loss) > nonmono and val > min(best_val_loss[:-nonmono])`.
    #[test]
    fn nt_asgd_switches_on_a_loss_worse_than_the_best_before_the_last_nonmono() {
        assert!(!nt_asgd_switch(&[5.0, 4.0], 6.0, 2), "too few evaluations");
        assert!(nt_asgd_switch(&[5.0, 4.0, 3.0], 5.5, 2), "worse than 5.0");
        assert!(!nt_asgd_switch(&[5.0, 4.0, 3.0], 4.5, 2), "better than 5.0");
        assert!(
            !nt_asgd_switch(&[5.0, 4.0, 3.0], 9.0, 0),
            "0 never switches"
        );
        assert!(
            !nt_asgd_switch(&[5.0, 4.0], 4.5, 1),
            "better than min([5.0])"
        );
        assert!(nt_asgd_switch(&[4.0, 5.0], 4.5, 1), "worse than min([4.0])");
    }
}
