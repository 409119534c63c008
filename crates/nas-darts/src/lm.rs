//! The recurrent runs on a text corpus: the DARTS cell search (`rnn/train_search.py`)
//! and the retraining of a derived cell with NT-ASGD (`rnn/train.py`), one loop for both.
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

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use nas_data::ptb::{Batched, Corpus};
use nas_data::Dataset;
use nas_search_space::{derive_rnn, to_svg, ArchWeights, Genotype, RnnGenotype};
use nas_train::{
    grads, Average, CheckpointState, IterateAverage, LoadedCheckpoint, ParamStore, Progress,
    RunDir, Sgd, StepStats,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::architect::Architect;
use crate::error::{Error, Result};
use crate::lm_config::LmConfig;
use crate::rnn_cell::rnn_edge_count;
use crate::rnn_lm::{ar, nll, tar, LmBatch, LmMasks, RnnLm, RnnObjective};
use crate::search::SearchOptions;

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

/// Starts a recurrent cell search in `out` (`cfg.arch` must be set).
pub fn search_rnn(
    cfg: &LmConfig,
    out: &Path,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<LmOutcome> {
    if cfg.arch.is_none() {
        return Err(Error::Config(
            "a recurrent search needs an [arch] section (use a search preset)".into(),
        ));
    }
    start(cfg, None, out, opts, progress)
}

/// Starts retraining `genotype` in `out` (`cfg.arch` must be unset).
pub fn train_lm(
    cfg: &LmConfig,
    genotype: &RnnGenotype,
    out: &Path,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<LmOutcome> {
    if cfg.arch.is_some() {
        return Err(Error::Config(
            "retraining takes no [arch] section (use a training preset)".into(),
        ));
    }
    start(cfg, Some(genotype), out, opts, progress)
}

fn start(
    cfg: &LmConfig,
    genotype: Option<&RnnGenotype>,
    out: &Path,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<LmOutcome> {
    cfg.validate()?;
    // Load the data first: a run that cannot start leaves no folder behind.
    let data = LmData::load(cfg, &opts.data_dir)?;
    let run = RunDir::create(out, &cfg.to_toml()?, cfg.run.keep_checkpoints)?;
    if let Some(g) = genotype {
        let json = Genotype::DartsRnn(g.clone()).to_json();
        run.write(GENOTYPE_FILE, format!("{json}\n").as_bytes())?;
    }
    tracing::info!(dir = %out.display(), "recurrent run started");
    run_loop(cfg, genotype.cloned(), run, None, data, opts, progress)
}

/// Resumes the recurrent run (search or retraining) in `run_dir` from its newest
/// checkpoint, with the configuration it was started with.
pub fn resume_lm(
    run_dir: &Path,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<LmOutcome> {
    RunDir::open(run_dir, 1)?;
    let cfg = LmConfig::from_file(&run_dir.join("config.toml"))?;
    let genotype = if cfg.arch.is_none() {
        Some(read_genotype(run_dir)?)
    } else {
        None
    };
    let data = LmData::load(&cfg, &opts.data_dir)?;
    let run = RunDir::open(run_dir, cfg.run.keep_checkpoints)?;
    let ckpt = run.resume(&opts.device)?;
    run_loop(&cfg, genotype, run, ckpt, data, opts, progress)
}

fn read_genotype(run_dir: &Path) -> Result<RnnGenotype> {
    let path = run_dir.join(GENOTYPE_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    match Genotype::from_json(&text) {
        Ok(Genotype::DartsRnn(g)) => Ok(g),
        Ok(other) => Err(Error::Config(format!(
            "{}: expected a DARTS recurrent genotype, found a {} genotype",
            path.display(),
            other.kind()
        ))),
        Err(e) => Err(Error::Config(format!("{}: {e}", path.display()))),
    }
}

/// The corpus cut into the streams a run reads.
struct LmData {
    vocab: usize,
    train: Batched,
    /// The validation tokens at the training batch size (the search's architecture data).
    search: Batched,
    valid: Batched,
    test: Batched,
}

impl LmData {
    fn load(cfg: &LmConfig, data_dir: &Path) -> Result<Self> {
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
fn window(stream: &Batched, start: usize, len: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let (x, y) = stream.window(start, len);
    let t = x.len() / stream.batch();
    Ok((
        Tensor::from_slice(x, (t, stream.batch()), dev)?,
        Tensor::from_slice(y, t * stream.batch(), dev)?,
    ))
}

/// A generator for one purpose of one step, independent of everything before it (so a
/// resumed run draws what an uninterrupted one would).
fn rng_for(seed: u64, step: u64, purpose: u64) -> StdRng {
    let mut z = seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ purpose.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// The architecture weights of a recurrent search, `[36, 5]` for 8 nodes.
struct RnnAlphas {
    store: ParamStore,
    weights: candle_core::Var,
}

impl RnnAlphas {
    fn new(steps: usize, seed: u64, dev: &Device) -> Result<Self> {
        let store = ParamStore::new(seed);
        let vb = store.var_builder(DType::F32, dev);
        vb.get_with_hints(
            (
                rnn_edge_count(steps),
                nas_search_space::DARTS_RNN_PRIMITIVES.len(),
            ),
            "weights",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1e-3,
            },
        )?;
        let weights = store.all()[0].1.clone();
        Ok(RnnAlphas { store, weights })
    }

    fn genotype(&self) -> Result<RnnGenotype> {
        let rows: Vec<Vec<f32>> = self.weights.as_tensor().to_vec2()?;
        Ok(derive_rnn(&ArchWeights::from_rows("weights", &rows)?)?)
    }
}

#[allow(clippy::too_many_arguments)]
fn run_loop(
    cfg: &LmConfig,
    genotype: Option<RnnGenotype>,
    run: RunDir,
    ckpt: Option<LoadedCheckpoint>,
    data: LmData,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<LmOutcome> {
    let dev = &opts.device;
    let store = ParamStore::new(cfg.run.seed);
    let vb = store.var_builder(DType::F32, dev);
    let (model, alphas) = match (&genotype, cfg.arch) {
        (Some(g), _) => (RnnLm::derived(cfg.model, data.vocab, g, vb)?, None),
        (None, Some(a)) => (
            RnnLm::search(cfg.model, data.vocab, a.steps, vb)?,
            Some(RnnAlphas::new(a.steps, cfg.run.seed ^ 0xa1fa, dev)?),
        ),
        (None, None) => {
            return Err(Error::Config(
                "a retraining run needs a genotype".to_string(),
            ))
        }
    };
    let mut sgd = Sgd::new(store.trainable(), cfg.sgd())?;
    let mut architect = match (&alphas, cfg.adam(), cfg.arch) {
        (Some(al), Some(adam), Some(a)) => Some(
            Architect::new(al.store.trainable(), adam, a.order)?.with_unrolled_clip(cfg.optim.clip),
        ),
        _ => None,
    };
    tracing::info!(
        parameters = store.count(|_| true),
        train_tokens = data.train.rows() * data.train.batch(),
        "recurrent model built"
    );

    let mut start_epoch = 0;
    let mut global_step = 0u64;
    let mut average: Option<IterateAverage> = None;
    let mut history: Vec<f64> = Vec::new();
    if let Some(ckpt) = &ckpt {
        let group = |name: &str| {
            ckpt.groups.get(name).ok_or_else(|| {
                Error::Config(format!(
                    "checkpoint {} has no {name}.safetensors",
                    ckpt.path.display()
                ))
            })
        };
        let bad = |what: &str, m: String| {
            Error::Config(format!("checkpoint {} ({what}): {m}", ckpt.path.display()))
        };
        store
            .set_all(group("weights")?)
            .map_err(|m| bad("weights", m))?;
        if let (Some(al), Some(arch)) = (&alphas, architect.as_mut()) {
            al.store
                .set_all(group("arch")?)
                .map_err(|m| bad("arch", m))?;
            arch.optimizer_mut()
                .load_state(group("arch_optimizer")?)
                .map_err(|m| bad("arch_optimizer", m))?;
        }
        if let Some(ax) = ckpt.groups.get("average") {
            let mut avg = IterateAverage::new(store.trainable())?;
            avg.load_state(ax)?;
            average = Some(avg);
        }
        history = serde_json::from_value(ckpt.state.extra["val_losses"].clone())
            .map_err(|e| bad("state.json val_losses", e.to_string()))?;
        start_epoch = ckpt.state.epoch;
        global_step = ckpt.state.global_step;
    }

    let bptt = cfg.data.bptt;
    let mut val_ppl = f64::NAN;
    progress.run_start(cfg.run.epochs, start_epoch);
    for epoch in start_epoch..cfg.run.epochs {
        let started = Instant::now();
        let windows = if alphas.is_some() {
            data.train.search_windows(bptt, cfg.run.seed ^ epoch as u64)
        } else {
            data.train.darts_windows(
                bptt,
                cfg.data.max_seq_len_delta,
                cfg.run.seed ^ epoch as u64,
            )
        };
        progress.epoch_start(epoch, windows.len());
        let batch = cfg.data.batch_size;
        let mut hidden = model.init_hidden(batch)?;
        let mut hidden_valid = model.init_hidden(batch)?;
        let (mut train_loss, mut arch_loss) = (Average::default(), Average::default());
        let search_rows = data.search.rows() - 1;
        for (step, &(start, len)) in windows.iter().enumerate() {
            let lr = cfg.optim.lr * len as f64 / bptt as f64;
            sgd.set_lr(lr);
            let (x, y) = window(&data.train, start, len, dev)?;
            let mut mask_rng = rng_for(cfg.run.seed, global_step, 1);
            let masks = LmMasks::sample(
                &cfg.model,
                data.vocab,
                batch,
                &mut mask_rng,
                DType::F32,
                dev,
            )?;
            let arch_part = match (&alphas, architect.as_mut()) {
                (Some(al), Some(arch)) => {
                    let (vx, vy) = window(&data.search, start % search_rows, bptt, dev)?;
                    let val_masks = LmMasks::sample(
                        &cfg.model,
                        data.vocab,
                        batch,
                        &mut mask_rng,
                        DType::F32,
                        dev,
                    )?;
                    Some(ArchPart {
                        alphas: al.weights.as_tensor(),
                        architect: arch,
                        val: LmBatch::new(vx, vy, hidden_valid.clone(), val_masks),
                    })
                }
                _ => None,
            };
            let train = LmBatch::new(x, y, hidden.clone(), masks);
            let out = lm_step(&model, &mut sgd, &cfg.optim, &train, arch_part)
                .map_err(|e| at_step(e, epoch, step))?;
            hidden = out.hidden;
            if let Some(h) = out.hidden_valid {
                hidden_valid = h;
            }
            if let Some(avg) = average.as_mut() {
                avg.update()?;
            }
            let (loss_value, norm, arch_val_loss) = (out.loss, out.grad_norm, out.arch_val_loss);
            if let Some(a) = arch_val_loss {
                arch_loss.add(a, 1);
            }
            train_loss.add(loss_value, len);
            global_step += 1;
            progress.step(
                step,
                &StepStats {
                    loss: loss_value,
                    accuracy: f64::NAN,
                    lr,
                },
            );
            if cfg.run.log_every > 0 && (step + 1) % cfg.run.log_every == 0 {
                run.log(&serde_json::json!({
                    "kind": "step", "epoch": epoch, "step": step, "global_step": global_step,
                    "loss": loss_value, "ppl": loss_value.exp(), "lr": lr, "seq_len": len,
                    "grad_norm": norm, "arch_val_loss": arch_val_loss,
                }))?;
            }
        }
        sgd.set_lr(cfg.optim.lr);
        // Validation, with the averaged weights once NT-ASGD runs.
        let probs = match &alphas {
            Some(al) => Some(candle_nn::ops::softmax(al.weights.as_tensor(), 1)?),
            None => None,
        };
        let saved = match &average {
            Some(avg) => Some(avg.swap_in()?),
            None => None,
        };
        let val = evaluate(&model, probs.as_ref(), &data.valid, bptt, dev, progress);
        if let (Some(avg), Some(saved)) = (&average, &saved) {
            avg.restore(saved)?;
        }
        let val = val?;
        nas_train::ensure_finite("validation loss", val.loss, epoch, windows.len())?;
        val_ppl = val.ppl;
        // NT-ASGD: switch when the loss is worse than the best before the last `nonmono`.
        let mut switched = false;
        if average.is_none() && nt_asgd_switch(&history, val.loss, cfg.optim.nonmono) {
            average = Some(IterateAverage::new(store.trainable())?);
            switched = true;
            tracing::info!(epoch, "switching to averaged SGD");
        }
        history.push(val.loss);
        let genotype_now = match &alphas {
            Some(al) => Some(al.genotype()?),
            None => None,
        };
        let summary = serde_json::json!({
            "kind": "epoch", "epoch": epoch, "lr": cfg.optim.lr,
            "train_loss": train_loss.mean(), "train_ppl": train_loss.mean().exp(),
            "arch_val_loss": if alphas.is_some() { Some(arch_loss.mean()) } else { None },
            "val_loss": val.loss, "val_ppl": val.ppl,
            "averaging": average.is_some(), "switched_to_asgd": switched,
            "genotype": genotype_now.as_ref().map(|g| g.to_python()),
            "seconds": started.elapsed().as_secs_f64(),
        });
        tracing::info!(
            epoch,
            train_ppl = train_loss.mean().exp(),
            val_ppl = val.ppl,
            genotype = ?genotype_now.as_ref().map(|g| g.to_python()),
            "epoch finished"
        );
        run.log(&summary)?;
        if let Some(al) = &alphas {
            std::fs::create_dir_all(run.path().join("alphas"))
                .map_err(|e| Error::Config(format!("{}: {e}", run.path().display())))?;
            al.store.save(
                &run.path()
                    .join(format!("alphas/epoch-{:04}.safetensors", epoch + 1)),
            )?;
        }
        let state = CheckpointState {
            epoch: epoch + 1,
            global_step,
            seed: cfg.run.seed,
            metrics_len: 0,
            score: Some(-val.loss),
            extra: serde_json::json!({ "val_losses": history }),
        };
        let mut groups = vec![("weights", store.snapshot()?)];
        if let (Some(al), Some(arch)) = (&alphas, &architect) {
            groups.push(("arch", al.store.snapshot()?));
            groups.push(("arch_optimizer", arch.optimizer().state()?));
        }
        if let Some(avg) = &average {
            groups.push(("average", avg.state()?));
        }
        run.save_checkpoint(state, &groups)?;
        progress.epoch_end(epoch, &summary);
    }
    progress.run_end();

    match &alphas {
        Some(al) => {
            let genotype = al.genotype()?;
            let g = Genotype::DartsRnn(genotype.clone());
            run.write(GENOTYPE_FILE, format!("{}\n", g.to_json()).as_bytes())?;
            run.write(
                "genotype.py",
                format!("{}\n", genotype.to_python()).as_bytes(),
            )?;
            run.write("genotype.svg", to_svg(&g)?.as_bytes())?;
            al.store.save(&run.path().join("alphas.safetensors"))?;
            Ok(LmOutcome {
                run_dir: run.path().to_path_buf(),
                genotype,
                start_epoch,
                val_ppl,
                test_ppl: None,
            })
        }
        None => {
            let genotype = genotype.expect("retraining has a genotype");
            let report = evaluate_lm_run(run.path(), "test", true, opts, progress)?;
            let valid = evaluate_lm_run(run.path(), "valid", true, opts, progress)?;
            let results = serde_json::json!({
                "checkpoint": "best", "valid": valid, "test": report,
                "genotype": genotype.to_python(),
            });
            run.write(
                "results.json",
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&results).unwrap_or_default()
                )
                .as_bytes(),
            )?;
            Ok(LmOutcome {
                run_dir: run.path().to_path_buf(),
                genotype,
                start_epoch,
                val_ppl,
                test_ppl: Some(report.ppl),
            })
        }
    }
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

/// The architecture half of a search step.
pub struct ArchPart<'a> {
    /// The architecture weights.
    pub alphas: &'a Tensor,
    /// Their optimizer.
    pub architect: &'a mut Architect,
    /// The validation window, with the validation stream's hidden state.
    pub val: LmBatch,
}

/// What one step gives.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The training window's NLL (before AR and TAR).
    pub loss: f64,
    /// The weight gradient's norm before clipping.
    pub grad_norm: f64,
    /// The architecture step's validation loss (search only).
    pub arch_val_loss: Option<f64>,
    /// The training stream's next hidden state (detached).
    pub hidden: Tensor,
    /// The validation stream's next hidden state (search only).
    pub hidden_valid: Option<Tensor>,
}

/// One step of a recurrent run (`train()`'s loop body in the reference): for a search,
/// first the architecture step on the validation window, then the weight step on the
/// training window (NLL + AR + TAR, clipping, SGD at the optimizer's current rate).
/// Finiteness is checked; errors name the quantity (the caller adds epoch and step).
pub fn lm_step(
    model: &RnnLm,
    sgd: &mut Sgd,
    optim: &crate::lm_config::LmOptimConfig,
    train: &LmBatch,
    arch: Option<ArchPart<'_>>,
) -> Result<StepOutput> {
    let (mut arch_val_loss, mut hidden_valid, mut probs) = (None, None, None);
    if let Some(ArchPart {
        alphas,
        architect,
        val,
    }) = arch
    {
        // First order differentiates only in the architecture weights.
        let constant;
        let model_for_arch = if architect.order() == crate::architect::Order::First {
            constant = model.detached();
            &constant
        } else {
            model
        };
        let objective = RnnObjective {
            model: model_for_arch,
            alphas,
        };
        let a = architect.step(&objective, train, &val, sgd)?;
        nas_train::ensure_finite("architecture validation loss", a.val_loss, 0, 0)?;
        arch_val_loss = Some(a.val_loss);
        hidden_valid = val.next_hidden.into_inner();
        // The weight step does not differentiate in the architecture weights.
        probs = Some(candle_nn::ops::softmax(&alphas.detach(), 1)?);
    }
    let out = model.forward(
        &train.tokens,
        &train.hidden,
        probs.as_ref(),
        &train.masks,
        true,
    )?;
    let raw_loss = nll(&out, &train.targets)?;
    let loss_value = nas_train::scalar(&raw_loss)?;
    nas_train::ensure_finite("training loss", loss_value, 0, 0)?;
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
    nas_train::ensure_finite("weight gradient norm", norm, 0, 0)?;
    sgd.step(&g)?;
    Ok(StepOutput {
        loss: loss_value,
        grad_norm: norm,
        arch_val_loss,
        hidden: out.hidden.detach(),
        hidden_valid,
    })
}

/// Puts the epoch and step into a non-finite error raised inside [`lm_step`].
fn at_step(e: Error, epoch: usize, step: usize) -> Error {
    match e {
        Error::Train(nas_train::Error::NonFinite { what, value, .. }) => {
            Error::Train(nas_train::Error::NonFinite {
                what,
                value,
                epoch,
                step,
            })
        }
        other => other,
    }
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

/// Evaluates a recurrent run's checkpoint (the best one, or the newest) on `split`
/// (`valid` or `test`), with the averaged weights when NT-ASGD had started.
pub fn evaluate_lm_run(
    run_dir: &Path,
    split: &str,
    best: bool,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<LmReport> {
    let cfg = LmConfig::from_file(&run_dir.join("config.toml"))?;
    let data = LmData::load(&cfg, &opts.data_dir)?;
    let run = RunDir::open(run_dir, cfg.run.keep_checkpoints)?;
    let path = match (best, run.best()?) {
        (true, Some((name, _))) => run_dir.join("checkpoints").join(name),
        _ => run
            .checkpoints()?
            .pop()
            .ok_or_else(|| Error::Config(format!("{} has no checkpoint yet", run_dir.display())))?,
    };
    let ckpt = nas_train::read_checkpoint(&path, &opts.device)?;
    let store = ParamStore::new(cfg.run.seed);
    let vb = store.var_builder(DType::F32, &opts.device);
    let (model, probs) = match cfg.arch {
        None => (
            RnnLm::derived(cfg.model, data.vocab, &read_genotype(run_dir)?, vb)?,
            None,
        ),
        Some(a) => {
            let al = RnnAlphas::new(a.steps, cfg.run.seed ^ 0xa1fa, &opts.device)?;
            if let Some(arch) = ckpt.groups.get("arch") {
                al.store.set_all(arch).map_err(Error::Config)?;
            }
            (
                RnnLm::search(cfg.model, data.vocab, a.steps, vb)?,
                Some(candle_nn::ops::softmax(al.weights.as_tensor(), 1)?),
            )
        }
    };
    let weights = ckpt
        .groups
        .get("weights")
        .ok_or_else(|| Error::Config(format!("checkpoint {} has no weights", path.display())))?;
    store
        .set_all(weights)
        .map_err(|m| Error::Config(format!("checkpoint {}: {m}", path.display())))?;
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
