//! The DARTS search loop (the reference `cnn/train_search.py`): per (train, val) batch
//! pair an architecture step, then a weight step; after each epoch an evaluation on the
//! architecture half, the derived genotype, the alphas and a checkpoint.
//!
//! Differences from the reference, on purpose:
//! - the split permutes the training set with the seed (the reference takes the first
//!   half in file order);
//! - the end-of-epoch evaluation uses the architecture half without augmentation (the
//!   reference reuses its augmented loader);
//! - cosine annealing gives epoch 0 the initial rate (see `nas_train::LrSchedule`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use nas_data::{split::darts_split, Augment, ImageSet, LoaderConfig};
use nas_search_space::{to_svg, CnnGenotype, Genotype};
use nas_train::{
    grads, stream_seed, Average, ConfigFile, EpochEnd, EpochMeans, EpochPlan, LoadedCheckpoint,
    ParamStore, Progress, RunDir, RunEnd, RunOptions, Sgd, StepCtx, StepReport, StepStats, Task,
};

use crate::architect::{Architect, Objective};
use crate::config::SearchConfig;
use crate::search_network::{Alphas, SearchCnn, SearchCnnConfig};
use crate::{Error, Result};
use nas_data::{load_image_set, loader, normalize_for};

/// What a finished search hands back.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    /// The genotype derived from the final alphas.
    pub genotype: CnnGenotype,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The epoch the run started at (non-zero when resumed).
    pub start_epoch: usize,
    /// Validation accuracy after the last epoch.
    pub val_accuracy: f64,
}

/// Starts a new search in `out`.
pub fn search(
    cfg: &SearchConfig,
    out: &Path,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<SearchOutcome> {
    cfg.validate()?;
    // Load the data first: a search that cannot start leaves no run folder behind.
    let data = load_data(cfg, &opts.data_dir)?;
    let net_cfg = net_config(cfg, &data)?;
    let run = RunDir::create(out, &cfg.to_toml()?, cfg.run.keep_checkpoints)?;
    tracing::info!(dir = %out.display(), "search started");
    run_search(cfg, net_cfg, run, data, opts, progress)
}

/// Resumes the search in `run_dir` from its newest checkpoint (or from the start if it has
/// none), with the configuration it was started with.
pub fn resume(
    run_dir: &Path,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<SearchOutcome> {
    // First only check that this is a run; keep_checkpoints comes from its configuration.
    RunDir::inspect(run_dir)?;
    let cfg = SearchConfig::from_file(&run_dir.join("config.toml"))?;
    let data = load_data(&cfg, &opts.data_dir)?;
    let run = RunDir::open(run_dir, cfg.run.keep_checkpoints)?;
    let net_cfg = net_config(&cfg, &data)?;
    run_search(&cfg, net_cfg, run, data, opts, progress)
}

/// The training data of a search: the two halves and the loaders' settings.
struct SearchData {
    set: Arc<ImageSet>,
    train: Arc<Vec<usize>>,
    val: Arc<Vec<usize>>,
    train_loader: LoaderConfig,
    val_loader: LoaderConfig,
    eval_loader: LoaderConfig,
}

fn load_data(cfg: &SearchConfig, data_dir: &Path) -> Result<SearchData> {
    let (_, set) = load_image_set(&cfg.data.dataset, data_dir, true)?;
    let n = set.len();
    let seed = cfg.run.seed;
    // A seeded permutation of the training set, cut to the images used.
    let (mut order, _) = darts_split(n, 1.0, stream_seed(seed, "split", 0))?;
    if let Some(m) = cfg.data.max_train_images {
        order.truncate(m.min(n));
    }
    let cut = (cfg.data.train_portion * order.len() as f64).floor() as usize;
    let val = order.split_off(cut);
    let train = order;
    if train.len() < cfg.data.batch_size || val.len() < cfg.data.batch_size {
        return Err(Error::Config(format!(
            "data.batch_size {} is larger than a half of the {} training images used ({} / {})",
            cfg.data.batch_size,
            train.len() + val.len(),
            train.len(),
            val.len()
        )));
    }
    // Normalise with the statistics of the images the search trains on.
    let normalize = normalize_for(&set, &train)?;
    let augment = Augment {
        crop_padding: cfg.data.crop_padding,
        flip: cfg.data.flip,
        cutout: cfg.data.cutout,
    };
    augment.check(set.shape())?;
    let bs = cfg.data.batch_size;
    Ok(SearchData {
        set: Arc::new(set),
        train: Arc::new(train),
        val: Arc::new(val),
        train_loader: loader(
            bs,
            stream_seed(seed, "loader.train", 0),
            Some(augment),
            &normalize,
            true,
        ),
        val_loader: loader(
            bs,
            stream_seed(seed, "loader.arch", 0),
            Some(augment),
            &normalize,
            true,
        ),
        eval_loader: loader(
            bs,
            stream_seed(seed, "loader.eval", 0),
            None,
            &normalize,
            false,
        ),
    })
}

/// The search network and its architecture weights as an [`Objective`].
struct Model<'a> {
    net: &'a SearchCnn,
    alphas: &'a Alphas,
}

impl Objective for Model<'_> {
    type Batch = (Tensor, Tensor);
    fn loss(&self, (x, y): &(Tensor, Tensor)) -> Result<Tensor> {
        let logits = self.net.forward(x, self.alphas, true)?;
        Ok(candle_nn::loss::cross_entropy(&logits, y)?)
    }
}

/// The search network for `cfg` on `data`, refused with its estimate when a step would
/// not fit in the machine's memory.
fn net_config(cfg: &SearchConfig, data: &SearchData) -> Result<SearchCnnConfig> {
    let [c, h, w] = data.set.shape();
    let net_cfg = SearchCnnConfig {
        in_channels: c,
        channels: cfg.model.channels,
        layers: cfg.model.layers,
        classes: data.set.classes(),
        steps: cfg.model.steps,
        multiplier: cfg.model.multiplier,
        stem_multiplier: cfg.model.stem_multiplier,
    };
    let estimate = net_cfg.memory_estimate(cfg.data.batch_size, h, w);
    nas_train::check_memory(estimate, "this search")?;
    Ok(net_cfg)
}

fn run_search(
    cfg: &SearchConfig,
    net_cfg: SearchCnnConfig,
    run: RunDir,
    data: SearchData,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<SearchOutcome> {
    let dev = &opts.device;
    let store = ParamStore::new(cfg.run.seed);
    let net = SearchCnn::new(net_cfg, store.var_builder(DType::F32, dev))?;
    let alphas = Alphas::new(cfg.model.steps, stream_seed(cfg.run.seed, "alphas", 0), dev)?;
    let sgd = Sgd::new(store.trainable(), cfg.sgd())?;
    let architect = Architect::new(alphas.store().trainable(), cfg.adam(), cfg.arch.order)?;
    tracing::info!(
        parameters = store.count(|_| true),
        train_images = data.train.len(),
        val_images = data.val.len(),
        "search network built"
    );
    let mut task = SearchTask {
        cfg,
        data,
        device: dev.clone(),
        store,
        net,
        alphas,
        sgd,
        architect,
        lr: f64::NAN,
        val_accuracy: f64::NAN,
    };
    nas_train::runner::run(&mut task, &run, cfg.run.settings(), dev, progress)
}

/// The search as the run loop drives it.
struct SearchTask<'a> {
    cfg: &'a SearchConfig,
    data: SearchData,
    device: Device,
    store: ParamStore,
    net: SearchCnn,
    alphas: Alphas,
    sgd: Sgd,
    architect: Architect,
    lr: f64,
    val_accuracy: f64,
}

impl Task for SearchTask<'_> {
    type Batch = ((Tensor, Tensor), (Tensor, Tensor));
    type Error = Error;
    type Outcome = SearchOutcome;

    fn restore(&mut self, ckpt: &LoadedCheckpoint) -> Result<()> {
        ckpt.load("weights", |t| self.store.set_all(t))?;
        ckpt.load("arch", |t| self.alphas.store().set_all(t))?;
        ckpt.load("optimizer", |t| self.sgd.load_state(t))?;
        ckpt.load("arch_optimizer", |t| {
            self.architect.optimizer_mut().load_state(t)
        })?;
        Ok(())
    }

    fn begin_epoch(&mut self, epoch: usize) -> Result<EpochPlan<Self::Batch, Error>> {
        self.lr = self.cfg.schedule().lr(epoch);
        self.sgd.set_lr(self.lr);
        let d = &self.data;
        let steps = d.train.len().min(d.val.len()) / self.cfg.data.batch_size;
        let train = nas_data::epoch(
            d.set.clone(),
            d.train.clone(),
            &d.train_loader,
            epoch as u64,
        )?;
        let val = nas_data::epoch(d.set.clone(), d.val.clone(), &d.val_loader, epoch as u64)?;
        let dev = self.device.clone();
        let batches = train
            .into_iter()
            .zip(val)
            .map(move |(tb, vb)| Ok((tb.to_tensors(&dev)?, vb.to_tensors(&dev)?)));
        Ok(EpochPlan {
            steps,
            batches: Box::new(batches),
        })
    }

    fn step(&mut self, ctx: &StepCtx, (train, val): Self::Batch) -> Result<StepReport> {
        let model = Model {
            net: &self.net,
            alphas: &self.alphas,
        };
        // Architecture step first, at the current weights.
        let a = self.architect.step(&model, &train, &val, &self.sgd)?;
        ctx.ensure_finite("architecture validation loss", a.val_loss)?;
        // Then the weight step.
        let logits = self.net.forward(&train.0, &self.alphas, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &train.1)?;
        let loss_value = nas_train::scalar(&loss)?;
        ctx.ensure_finite("training loss", loss_value)?;
        let mut g = grads::collect(&loss.backward()?, self.sgd.vars());
        let norm = grads::clip_global_norm(&mut g, self.cfg.weights.grad_clip)?;
        ctx.ensure_finite("weight gradient norm", norm)?;
        self.sgd.step(&g)?;
        let batch_size = self.cfg.data.batch_size;
        let correct = nas_train::correct_top_k(&logits, &train.1, &[1])?[0];
        let acc = correct as f64 / batch_size as f64;
        let mut log = serde_json::Map::new();
        log.insert("accuracy".into(), acc.into());
        log.insert("arch_val_loss".into(), a.val_loss.into());
        log.insert("grad_norm".into(), norm.into());
        Ok(StepReport {
            stats: StepStats {
                loss: loss_value,
                accuracy: acc,
                lr: self.lr,
            },
            weight: batch_size,
            means: vec![("arch_val_loss", a.val_loss, batch_size)],
            log,
        })
    }

    fn end_epoch(
        &mut self,
        ctx: &StepCtx,
        means: &EpochMeans,
        run: &RunDir,
        progress: &mut dyn Progress,
    ) -> Result<EpochEnd> {
        let (val_loss, val_acc) =
            evaluate(&self.net, &self.alphas, &self.data, &self.device, progress)?;
        ctx.ensure_finite("validation loss", val_loss)?;
        self.val_accuracy = val_acc;
        let python = self.alphas.genotype()?.to_python()?;
        let fields = nas_train::fields(serde_json::json!({
            "lr": self.lr,
            "train_loss": means.mean("loss"), "train_accuracy": means.mean("accuracy"),
            "arch_val_loss": means.mean("arch_val_loss"),
            "val_loss": val_loss, "val_accuracy": val_acc,
            "genotype": python,
            "alpha_softmax": self.alphas.softmax_json()?,
        }));
        let dir = run.path().join("alphas");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            path: dir.clone(),
            cause: e,
        })?;
        self.alphas
            .store()
            .save(&dir.join(format!("epoch-{:04}.safetensors", ctx.epoch + 1)))?;
        Ok(EpochEnd {
            fields,
            log_keys: &[
                "train_loss",
                "train_accuracy",
                "val_loss",
                "val_accuracy",
                "genotype",
            ],
            score: Some(val_acc),
            extra: serde_json::json!({ "val_loss": val_loss }),
        })
    }

    fn state(&self) -> Result<Vec<(&'static str, HashMap<String, Tensor>)>> {
        Ok(vec![
            ("weights", self.store.snapshot()?),
            ("arch", self.alphas.store().snapshot()?),
            ("optimizer", self.sgd.state()),
            ("arch_optimizer", self.architect.optimizer().state()?),
        ])
    }

    fn finish(
        &mut self,
        run: &RunDir,
        end: RunEnd,
        progress: &mut dyn Progress,
    ) -> Result<SearchOutcome> {
        if self.val_accuracy.is_nan() {
            // A finished run resumed: no epoch ran, so measure the final weights here.
            let (_, acc) = evaluate(&self.net, &self.alphas, &self.data, &self.device, progress)?;
            self.val_accuracy = acc;
        }
        let genotype = self.alphas.genotype()?;
        write_outputs(run, &genotype, &self.alphas)?;
        Ok(SearchOutcome {
            genotype,
            run_dir: run.path().to_path_buf(),
            start_epoch: end.start_epoch,
            val_accuracy: self.val_accuracy,
        })
    }
}

/// Loss and top-1 accuracy on the architecture half, in evaluation mode.
fn evaluate(
    net: &SearchCnn,
    alphas: &Alphas,
    data: &SearchData,
    dev: &Device,
    progress: &mut dyn Progress,
) -> Result<(f64, f64)> {
    let batches = data.val.len().div_ceil(data.eval_loader.batch_size);
    progress.evaluating(batches);
    let rx = nas_data::epoch(data.set.clone(), data.val.clone(), &data.eval_loader, 0)?;
    let (mut loss, mut acc) = (Average::default(), Average::default());
    for batch in rx.iter() {
        let (x, y) = batch.to_tensors(dev)?;
        let (logits, l) = nas_train::in_pool(|| -> Result<_> {
            let logits = net.forward(&x, alphas, false)?.detach();
            let l = nas_train::scalar(&candle_nn::loss::cross_entropy(&logits, &y)?)?;
            Ok((logits, l))
        })?;
        let n = batch.labels.len();
        let correct = nas_train::correct_top_k(&logits, &y, &[1])?[0];
        loss.add(l, n);
        acc.add(correct as f64 / n as f64, n);
    }
    Ok((loss.mean(), acc.mean()))
}

fn write_outputs(run: &RunDir, genotype: &CnnGenotype, alphas: &Alphas) -> Result<()> {
    let g = Genotype::DartsCnn(genotype.clone());
    run.write("genotype.json", format!("{}\n", g.to_json()).as_bytes())?;
    run.write(
        "genotype.py",
        format!("{}\n", genotype.to_python()?).as_bytes(),
    )?;
    run.write("genotype.svg", to_svg(&g)?.as_bytes())?;
    alphas
        .store()
        .save(&run.path().join("alphas.safetensors"))?;
    Ok(())
}
