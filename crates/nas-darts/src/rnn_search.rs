//! The DARTS recurrent cell search (`rnn/train_search.py`) as the architecture part of
//! the recurrent loop ([`LmArch`]): per training window, an architecture step on the next
//! window of the validation stream before the weight step; after each epoch the derived
//! genotype and the alphas.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use nas_data::ptb::Batched;
use nas_search_space::{
    derive_rnn, to_svg, ArchWeights, Genotype, RnnGenotype, DARTS_RNN_PRIMITIVES,
};
use nas_train::{LoadedCheckpoint, ParamStore, Progress, RunDir, Sgd, StepCtx};
use rand::rngs::StdRng;
use serde_json::{Map, Value};

use nas_models::{nll, rnn_edge_count, LmBatch, LmMasks, RnnLm, RnnLmConfig};
use nas_retrain::{
    evaluate_lm_checkpoint, resume_lm_training, run_lm, weight_step, LmArch, LmCell, LmConfig,
    LmData, LmOptimConfig, LmOutcome, LmReport, WeightStep,
};
use nas_train::{ConfigFile, RunOptions};

use crate::architect::{Architect, Objective, Order};
use crate::rnn_config::LmSearchConfig;
use crate::{Error, Result};

/// Starts a recurrent cell search in `out` (`cfg.arch` must be set).
pub fn search_rnn(
    cfg: &LmSearchConfig,
    out: &Path,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<LmOutcome> {
    cfg.validate()?;
    let base = cfg.base();
    // Load the data and build the model first: a run that cannot start leaves no folder.
    let data = LmData::load(&base, &opts.data_dir)?;
    let (model, store, arch) = search_model(cfg, &data, &opts.device)?;
    let run = RunDir::create(out, &cfg.to_toml()?, cfg.run.keep_checkpoints)?;
    tracing::info!(dir = %out.display(), "recurrent search started");
    run_lm(&base, model, store, arch, None, run, data, opts, progress)
}

fn search_model(
    cfg: &LmSearchConfig,
    data: &LmData,
    dev: &Device,
) -> Result<(RnnLm, ParamStore, RnnSearch)> {
    let arch = RnnSearch::new(cfg, dev)?;
    let store = ParamStore::new(cfg.run.seed);
    let vb = store.var_builder(DType::F32, dev);
    let model = RnnLm::search(cfg.model, data.vocab, arch.steps, vb)?;
    Ok((model, store, arch))
}

/// True when the configuration in `run_dir` has an `[arch]` section: a search run.
fn is_search_run(run_dir: &Path) -> Result<bool> {
    let path = run_dir.join("config.toml");
    let text = nas_train::read_text(&path)?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| nas_train::Error::Format {
        path: path.clone(),
        message: nas_train::one_line(&e),
    })?;
    Ok(table.contains_key("arch"))
}

/// Resumes the recurrent run in `run_dir` (a search or a retraining run) from its
/// newest checkpoint, with the configuration it was started with.
pub fn resume_lm(
    run_dir: &Path,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<LmOutcome> {
    RunDir::inspect(run_dir)?;
    if !is_search_run(run_dir)? {
        return resume_lm_training(run_dir, opts, progress);
    }
    let cfg = LmSearchConfig::from_file(&run_dir.join("config.toml"))?;
    let base = cfg.base();
    let data = LmData::load(&base, &opts.data_dir)?;
    let (model, store, arch) = search_model(&cfg, &data, &opts.device)?;
    let run = RunDir::open(run_dir, cfg.run.keep_checkpoints)?;
    run_lm(&base, model, store, arch, None, run, data, opts, progress)
}

/// Evaluates a recurrent run's checkpoint (the best one, or the newest; a search or a
/// retraining run) on `split` (`valid` or `test`).
pub fn evaluate_lm_run(
    run_dir: &Path,
    split: &str,
    best: bool,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<LmReport> {
    if !is_search_run(run_dir)? {
        return nas_retrain::evaluate_lm_run(run_dir, split, best, opts, progress);
    }
    let cfg = LmSearchConfig::from_file(&run_dir.join("config.toml"))?;
    let steps = cfg.arch.map_or(nas_models::RNN_STEPS, |a| a.steps);
    let cell = LmCell::Search { steps };
    evaluate_lm_checkpoint(run_dir, &cfg.base(), &cell, split, best, opts, progress)
}

/// True when `run_dir` holds a recurrent (language model) run, search or retraining.
pub fn is_lm_run(run_dir: &Path) -> bool {
    nas_train::read_text(&run_dir.join("config.toml")).is_ok_and(|text| {
        LmSearchConfig::from_toml(&text).is_ok() || <LmConfig>::from_toml(&text).is_ok()
    })
}

/// The architecture weights of a recurrent search, `[36, 5]` for 8 nodes.
pub(crate) struct RnnAlphas {
    store: ParamStore,
    weights: candle_core::Var,
}

impl RnnAlphas {
    pub(crate) fn new(steps: usize, seed: u64, dev: &Device) -> Result<Self> {
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

/// The search part of a recurrent run: the alphas, their architect, and the hidden state
/// of the validation stream the architecture steps read.
pub(crate) struct RnnSearch {
    alphas: RnnAlphas,
    architect: Architect,
    hidden_valid: Option<Tensor>,
    seed: u64,
    steps: usize,
    bptt: usize,
    model: RnnLmConfig,
}

impl RnnSearch {
    pub(crate) fn new(cfg: &LmSearchConfig, dev: &Device) -> Result<Self> {
        let Some(a) = cfg.arch else {
            return Err(Error::Config(
                "a recurrent search needs an [arch] section (use a search preset)".into(),
            ));
        };
        let alphas = RnnAlphas::new(
            a.steps,
            nas_train::stream_seed(cfg.run.seed, "alphas", 0),
            dev,
        )?;
        let architect = Architect::new(alphas.store.trainable(), a.adam(), a.order)?
            .with_unrolled_clip(cfg.optim.clip);
        Ok(RnnSearch {
            alphas,
            architect,
            hidden_valid: None,
            seed: cfg.run.seed,
            steps: a.steps,
            bptt: cfg.data.bptt,
            model: cfg.model,
        })
    }
}

impl LmArch for RnnSearch {
    type Error = Error;

    fn windows(&self, train: &Batched, cfg: &LmConfig, epoch: usize) -> Vec<(usize, usize)> {
        train.search_windows(
            cfg.data.bptt,
            nas_train::stream_seed(self.seed, "windows", epoch as u64),
        )
    }

    fn begin_epoch(&mut self, model: &RnnLm, batch: usize) -> Result<()> {
        self.hidden_valid = Some(model.init_hidden(batch)?);
        Ok(())
    }

    fn step(
        &mut self,
        ctx: &StepCtx,
        model: &RnnLm,
        sgd: &Sgd,
        train: &LmBatch,
        start: usize,
        data: &LmData,
        mask_rng: &mut StdRng,
    ) -> Result<Option<(Tensor, f64)>> {
        let dev = train.tokens.device();
        let search = &data.search;
        let (vx, vy) = nas_retrain::window(search, start % (search.rows() - 1), self.bptt, dev)?;
        let batch = train.hidden.dim(0)?;
        let val_masks = LmMasks::sample(&self.model, data.vocab, batch, mask_rng, DType::F32, dev)?;
        let hidden_valid = match &self.hidden_valid {
            Some(h) => h.clone(),
            None => model.init_hidden(batch)?,
        };
        let val = LmBatch::new(vx, vy, hidden_valid, val_masks);
        let alphas = self.alphas.weights.as_tensor();
        let (probs, val_loss, next) =
            arch_step(ctx, model, &mut self.architect, alphas, train, val, sgd)?;
        if let Some(h) = next {
            self.hidden_valid = Some(h);
        }
        Ok(Some((probs, val_loss)))
    }

    fn probs(&self) -> Result<Option<Tensor>> {
        Ok(Some(candle_nn::ops::softmax(
            self.alphas.weights.as_tensor(),
            1,
        )?))
    }

    fn end_epoch(&mut self, epoch: usize, run: &RunDir) -> Result<Map<String, Value>> {
        let dir = run.path().join("alphas");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            path: dir.clone(),
            cause: e,
        })?;
        self.alphas
            .store
            .save(&dir.join(format!("epoch-{:04}.safetensors", epoch + 1)))?;
        let mut fields = Map::new();
        fields.insert(
            "genotype".into(),
            self.alphas.genotype()?.to_python().into(),
        );
        let ops: Vec<&str> = DARTS_RNN_PRIMITIVES.iter().map(|op| op.name()).collect();
        fields.insert(
            "alpha_softmax".into(),
            serde_json::json!({
                "ops": ops,
                "recurrent": crate::search_network::softmax_rows(&self.alphas.weights)?,
            }),
        );
        Ok(fields)
    }

    fn state(&self) -> Result<Vec<(&'static str, HashMap<String, Tensor>)>> {
        Ok(vec![
            ("arch", self.alphas.store.snapshot()?),
            ("arch_optimizer", self.architect.optimizer().state()?),
        ])
    }

    fn restore(&mut self, ckpt: &LoadedCheckpoint) -> Result<()> {
        ckpt.load("arch", |t| self.alphas.store.set_all(t))?;
        ckpt.load("arch_optimizer", |t| {
            self.architect.optimizer_mut().load_state(t)
        })?;
        Ok(())
    }

    fn finish(&self, run: &RunDir) -> Result<Option<RnnGenotype>> {
        let genotype = self.alphas.genotype()?;
        let g = Genotype::DartsRnn(genotype.clone());
        run.write("genotype.json", format!("{}\n", g.to_json()).as_bytes())?;
        run.write(
            "genotype.py",
            format!("{}\n", genotype.to_python()).as_bytes(),
        )?;
        run.write("genotype.svg", to_svg(&g)?.as_bytes())?;
        self.alphas
            .store
            .save(&run.path().join("alphas.safetensors"))?;
        Ok(Some(genotype))
    }
}

/// The architecture step of a search window: the architect's step on `val` at the
/// current weights; returns the detached architecture probabilities for the weight step,
/// the validation loss, and the validation stream's next hidden state.
fn arch_step(
    ctx: &StepCtx,
    model: &RnnLm,
    architect: &mut Architect,
    alphas: &Tensor,
    train: &LmBatch,
    val: LmBatch,
    sgd: &Sgd,
) -> Result<(Tensor, f64, Option<Tensor>)> {
    // First order differentiates only in the architecture weights.
    let constant;
    let model_for_arch = if architect.order() == Order::First {
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
    ctx.ensure_finite("architecture validation loss", a.val_loss)?;
    // The weight step does not differentiate in the architecture weights.
    let probs = candle_nn::ops::softmax(&alphas.detach(), 1)?;
    Ok((probs, a.val_loss, val.next_hidden.into_inner()))
}

/// The architecture half of a search step, for [`lm_step`].
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

/// One step of a recurrent run as the loop takes it (the benchmarks time it): for a
/// search, first the architecture step on the validation window, then the weight step on
/// the training window. Finiteness errors report epoch 0, step 0.
pub fn lm_step(
    model: &RnnLm,
    sgd: &mut Sgd,
    optim: &LmOptimConfig,
    train: &LmBatch,
    arch: Option<ArchPart<'_>>,
) -> Result<StepOutput> {
    let ctx = StepCtx {
        epoch: 0,
        step: 0,
        global_step: 0,
    };
    let (mut arch_val_loss, mut hidden_valid, mut probs) = (None, None, None);
    if let Some(ArchPart {
        alphas,
        architect,
        val,
    }) = arch
    {
        let (p, l, h) = arch_step(&ctx, model, architect, alphas, train, val, sgd)?;
        (probs, arch_val_loss, hidden_valid) = (Some(p), Some(l), h);
    }
    let WeightStep {
        loss,
        grad_norm,
        hidden,
    } = weight_step(&ctx, model, sgd, optim, train, probs.as_ref())?;
    Ok(StepOutput {
        loss,
        grad_norm,
        arch_val_loss,
        hidden,
        hidden_valid,
    })
}

/// The search model with its architecture weights, as the architect sees it: the
/// training-mode NLL of a window (the reference's `_loss`, without TAR).
#[derive(Debug)]
pub struct RnnObjective<'a> {
    /// The model.
    pub model: &'a RnnLm,
    /// The architecture weights `[36, 5]`.
    pub alphas: &'a Tensor,
}

impl RnnObjective<'_> {
    /// The softmax of the architecture weights over the primitives.
    pub fn probs(&self) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax(self.alphas, 1)?)
    }
}

impl Objective for RnnObjective<'_> {
    type Batch = LmBatch;

    fn loss(&self, batch: &LmBatch) -> Result<Tensor> {
        let probs = self.probs()?;
        let out = self.model.forward(
            &batch.tokens,
            &batch.hidden,
            Some(&probs),
            &batch.masks,
            true,
        )?;
        *batch.next_hidden.borrow_mut() = Some(out.hidden.detach());
        nll(&out, &batch.targets)
    }
}
