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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use nas_data::{split::darts_split, Augment, ImageSet, LoaderConfig};
use nas_search_space::{to_svg, CnnGenotype, Genotype};
use nas_train::{
    grads, Average, CheckpointState, LoadedCheckpoint, ParamStore, Progress, RunDir, Sgd, StepStats,
};

use crate::architect::{Architect, Objective};
use crate::config::SearchConfig;
use crate::data::{load_image_set, loader, normalize_for};
use crate::error::{Error, Result};
use crate::search_network::{Alphas, SearchCnn, SearchCnnConfig};

/// Where a search reads and writes.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// The data directory (`nas-data`'s layout).
    pub data_dir: PathBuf,
    /// The device.
    pub device: Device,
}

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
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<SearchOutcome> {
    cfg.validate()?;
    // Load the data first: a search that cannot start leaves no run folder behind.
    let data = load_data(cfg, &opts.data_dir)?;
    let run = RunDir::create(out, &cfg.to_toml()?, cfg.run.keep_checkpoints)?;
    tracing::info!(dir = %out.display(), "search started");
    run_search(cfg, run, None, data, opts, progress)
}

/// Resumes the search in `run_dir` from its newest checkpoint (or from the start if it has
/// none), with the configuration it was started with.
pub fn resume(
    run_dir: &Path,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<SearchOutcome> {
    // First only check that this is a run; keep_checkpoints comes from its configuration.
    RunDir::open(run_dir, 1)?;
    let cfg = SearchConfig::from_file(&run_dir.join("config.toml"))?;
    let data = load_data(&cfg, &opts.data_dir)?;
    let run = RunDir::open(run_dir, cfg.run.keep_checkpoints)?;
    let ckpt = run.resume(&opts.device)?;
    tracing::info!(
        dir = %run_dir.display(),
        epoch = ckpt.as_ref().map_or(0, |c| c.state.epoch),
        "search resumed"
    );
    run_search(&cfg, run, ckpt, data, opts, progress)
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
    let (mut order, _) = darts_split(n, 1.0, seed)?;
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
    let bs = cfg.data.batch_size;
    Ok(SearchData {
        set: Arc::new(set),
        train: Arc::new(train),
        val: Arc::new(val),
        train_loader: loader(bs, seed, 1, Some(augment), &normalize, true),
        val_loader: loader(bs, seed, 2, Some(augment), &normalize, true),
        eval_loader: loader(bs, seed, 3, None, &normalize, false),
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

fn run_search(
    cfg: &SearchConfig,
    run: RunDir,
    ckpt: Option<LoadedCheckpoint>,
    data: SearchData,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<SearchOutcome> {
    let dev = &opts.device;
    let [c, _, _] = data.set.shape();
    let net_cfg = SearchCnnConfig {
        in_channels: c,
        channels: cfg.model.channels,
        layers: cfg.model.layers,
        classes: data.set.classes(),
        steps: cfg.model.steps,
        multiplier: cfg.model.multiplier,
        stem_multiplier: cfg.model.stem_multiplier,
    };
    let store = ParamStore::new(cfg.run.seed);
    let net = SearchCnn::new(net_cfg, store.var_builder(DType::F32, dev))?;
    let alphas = Alphas::new(cfg.model.steps, cfg.run.seed ^ 0xa1fa, dev)?;
    let mut sgd = Sgd::new(store.trainable(), cfg.sgd())?;
    let mut architect = Architect::new(alphas.store().trainable(), cfg.adam(), cfg.arch.order)?;
    tracing::info!(
        parameters = store.count(|_| true),
        train_images = data.train.len(),
        val_images = data.val.len(),
        "search network built"
    );

    let mut start_epoch = 0;
    let mut global_step = 0u64;
    if let Some(ckpt) = ckpt {
        restore(&ckpt, &store, &alphas, &mut sgd, &mut architect)?;
        start_epoch = ckpt.state.epoch;
        global_step = ckpt.state.global_step;
    }

    let schedule = cfg.schedule();
    let model = Model {
        net: &net,
        alphas: &alphas,
    };
    let mut val_accuracy = f64::NAN;
    progress.run_start(cfg.run.epochs, start_epoch);
    for epoch in start_epoch..cfg.run.epochs {
        let started = Instant::now();
        let lr = schedule.lr(epoch);
        sgd.set_lr(lr);
        let batch_size = cfg.data.batch_size;
        let steps = data.train.len().min(data.val.len()) / batch_size;
        progress.epoch_start(epoch, steps);
        let train_rx = nas_data::epoch(
            data.set.clone(),
            data.train.clone(),
            &data.train_loader,
            epoch as u64,
        )?;
        let val_rx = nas_data::epoch(
            data.set.clone(),
            data.val.clone(),
            &data.val_loader,
            epoch as u64,
        )?;
        let (mut train_loss, mut train_acc, mut arch_loss) =
            (Average::default(), Average::default(), Average::default());
        for (step, (tb, vb)) in train_rx.iter().zip(val_rx.iter()).enumerate() {
            let train = tb.to_tensors(dev)?;
            let val = vb.to_tensors(dev)?;
            // The step on a pool thread (`nas_ops::runtime::in_pool`); never the batch
            // waits above, whose loader threads may themselves need the pool.
            let (a, loss_value, norm, correct) = nas_ops::runtime::in_pool(|| -> Result<_> {
                // Architecture step first, at the current weights.
                let a = architect.step(&model, &train, &val, &sgd)?;
                nas_train::ensure_finite("architecture validation loss", a.val_loss, epoch, step)?;
                // Then the weight step.
                let logits = net.forward(&train.0, &alphas, true)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &train.1)?;
                let loss_value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                nas_train::ensure_finite("training loss", loss_value, epoch, step)?;
                let store_grads = loss.backward()?;
                let mut g = grads::collect(&store_grads, sgd.vars());
                let norm = grads::clip_global_norm(&mut g, cfg.weights.grad_clip)?;
                nas_train::ensure_finite("weight gradient norm", norm, epoch, step)?;
                sgd.step(&g)?;
                let correct = nas_train::correct_top_k(&logits, &train.1, &[1])?[0];
                Ok((a, loss_value, norm, correct))
            })?;
            arch_loss.add(a.val_loss, batch_size);
            let acc = correct as f64 / batch_size as f64;
            train_loss.add(loss_value, batch_size);
            train_acc.add(acc, batch_size);
            global_step += 1;
            let stats = StepStats {
                loss: loss_value,
                accuracy: acc,
                lr,
            };
            progress.step(step, &stats);
            if cfg.run.log_every > 0 && (step + 1) % cfg.run.log_every == 0 {
                run.log(&serde_json::json!({
                    "kind": "step", "epoch": epoch, "step": step, "global_step": global_step,
                    "loss": loss_value, "accuracy": acc, "arch_val_loss": a.val_loss, "lr": lr,
                    "grad_norm": norm,
                }))?;
            }
        }
        let (val_loss, val_acc) = evaluate(&net, &alphas, &data, dev, progress)?;
        nas_train::ensure_finite("validation loss", val_loss, epoch, steps)?;
        val_accuracy = val_acc;
        let genotype = alphas.genotype()?;
        let python = genotype.to_python()?;
        let summary = serde_json::json!({
            "kind": "epoch", "epoch": epoch, "lr": lr,
            "train_loss": train_loss.mean(), "train_accuracy": train_acc.mean(),
            "arch_val_loss": arch_loss.mean(),
            "val_loss": val_loss, "val_accuracy": val_acc,
            "genotype": python,
            "seconds": started.elapsed().as_secs_f64(),
        });
        tracing::info!(
            epoch,
            train_loss = train_loss.mean(),
            train_accuracy = train_acc.mean(),
            val_loss,
            val_accuracy = val_acc,
            genotype = %python,
            "epoch finished"
        );
        run.log(&summary)?;
        std::fs::create_dir_all(run.path().join("alphas"))
            .map_err(|e| Error::Config(format!("{}: {e}", run.path().display())))?;
        alphas.store().save(
            &run.path()
                .join(format!("alphas/epoch-{:04}.safetensors", epoch + 1)),
        )?;
        global_step = global_step.max(1);
        let state = CheckpointState {
            epoch: epoch + 1,
            global_step,
            seed: cfg.run.seed,
            metrics_len: 0,
            score: Some(val_acc),
            extra: serde_json::json!({ "val_loss": val_loss }),
        };
        let mut opt_state = sgd.state();
        opt_state.extend(
            architect
                .optimizer()
                .state()?
                .into_iter()
                .map(|(k, v)| (format!("arch.{k}"), v)),
        );
        run.save_checkpoint(
            state,
            &[
                ("weights", store.snapshot()?),
                ("arch", alphas.store().snapshot()?),
                ("optimizer", opt_state),
            ],
        )?;
        progress.epoch_end(epoch, &summary);
    }
    progress.run_end();
    let genotype = alphas.genotype()?;
    write_outputs(&run, &genotype, &alphas)?;
    Ok(SearchOutcome {
        genotype,
        run_dir: run.path().to_path_buf(),
        start_epoch,
        val_accuracy,
    })
}

fn restore(
    ckpt: &LoadedCheckpoint,
    store: &ParamStore,
    alphas: &Alphas,
    sgd: &mut Sgd,
    architect: &mut Architect,
) -> Result<()> {
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
    alphas
        .store()
        .set_all(group("arch")?)
        .map_err(|m| bad("arch", m))?;
    let opt = group("optimizer")?;
    let (arch_state, sgd_state): (Vec<_>, Vec<_>) = opt
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| k.starts_with("arch."));
    sgd.load_state(&sgd_state.into_iter().collect())
        .map_err(|m| bad("optimizer", m))?;
    let arch_state = arch_state
        .into_iter()
        .map(|(k, v)| (k["arch.".len()..].to_string(), v))
        .collect();
    architect
        .optimizer_mut()
        .load_state(&arch_state)
        .map_err(|m| bad("optimizer", m))?;
    Ok(())
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
        let logits = net.forward(&x, alphas, false)?.detach();
        let l = candle_nn::loss::cross_entropy(&logits, &y)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
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
