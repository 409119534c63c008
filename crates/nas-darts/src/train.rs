//! Training a genotype from scratch (the reference `cnn/train.py`), with a validation
//! split for model selection and the test set evaluated once, at the end.
//!
//! Per step: logits and (with the auxiliary head) auxiliary logits; loss = CE +
//! `auxiliary_weight` CE(aux); clip; SGD. Drop path rises linearly from 0 to
//! `model.drop_path` over the epochs (`drop_path * epoch / epochs`, as the reference).
//! Its masks come from a generator seeded by (seed, epoch), so a resumed run draws the
//! same ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use nas_data::{split::darts_split, Augment, Dataset, ImageSet, LoaderConfig};
use nas_search_space::{CnnGenotype, Genotype};
use nas_train::{
    cross_entropy, ensure_finite, grads, scalar, Average, CheckpointState, ParamStore, Progress,
    RunDir, Sgd, StepStats,
};
use rand::SeedableRng;
use serde::Serialize;

use crate::data::{load_image_set, loader, normalize_for};
use crate::error::{Error, Result};
use crate::eval_network::{EvalKind, EvalNetConfig, EvalNetwork};
use crate::search::SearchOptions;
use crate::train_config::TrainConfig;

/// Images of the digits set kept for testing (it has no official split); drawn with a
/// fixed seed, so every run tests on the same ones.
const DIGITS_TEST_IMAGES: usize = 360;

/// Accuracy and loss of a network on one split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalReport {
    /// Top-1 accuracy in `[0, 1]`.
    pub top1: f64,
    /// Top-5 accuracy in `[0, 1]`.
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Images evaluated.
    pub images: usize,
    /// Evaluation throughput.
    pub images_per_second: f64,
}

/// What a finished training run hands back.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The final network on the validation split.
    pub val: EvalReport,
    /// The final network on the test set (evaluated once).
    pub test: EvalReport,
    /// Trainable parameters without the auxiliary head.
    pub params: usize,
}

struct TrainData {
    set: Arc<ImageSet>,
    train: Arc<Vec<usize>>,
    val: Arc<Vec<usize>>,
    test_set: Arc<ImageSet>,
    test: Arc<Vec<usize>>,
    train_loader: LoaderConfig,
    eval_loader: LoaderConfig,
}

fn load_data(cfg: &TrainConfig, data_dir: &Path) -> Result<TrainData> {
    let (dataset, set) = load_image_set(&cfg.data.dataset, data_dir, true)?;
    let seed = cfg.run.seed;
    let (pool, test_set, test) = if dataset == Dataset::Digits {
        let (test, pool) = darts_split(set.len(), DIGITS_TEST_IMAGES as f64 / set.len() as f64, 0)?;
        (pool, None, test)
    } else {
        let (_, test_set) = load_image_set(&cfg.data.dataset, data_dir, false)?;
        let test = (0..test_set.len()).collect();
        ((0..set.len()).collect::<Vec<_>>(), Some(test_set), test)
    };
    // A seeded permutation of the training pool; its last images validate.
    let (perm, _) = darts_split(pool.len(), 1.0, seed)?;
    let mut order: Vec<usize> = perm.into_iter().map(|i| pool[i]).collect();
    if let Some(m) = cfg.data.max_train_images {
        order.truncate(m.min(order.len()));
    }
    if order.len() < cfg.data.valid_images + cfg.data.batch_size {
        return Err(Error::Config(format!(
            "data.valid_images {} leaves fewer than data.batch_size {} of the {} training images to train on",
            cfg.data.valid_images,
            cfg.data.batch_size,
            order.len()
        )));
    }
    let val = order.split_off(order.len() - cfg.data.valid_images);
    let train = order;
    let normalize = normalize_for(&set, &train)?;
    let augment = Augment {
        crop_padding: cfg.data.crop_padding,
        flip: cfg.data.flip,
        cutout: cfg.data.cutout,
    };
    let bs = cfg.data.batch_size;
    let set = Arc::new(set);
    let test_set = match test_set {
        Some(t) => Arc::new(t),
        None => set.clone(),
    };
    Ok(TrainData {
        set,
        train: Arc::new(train),
        val: Arc::new(val),
        test_set,
        test: Arc::new(test),
        train_loader: loader(bs, seed, 1, Some(augment), &normalize, true),
        eval_loader: loader(bs, seed, 3, None, &normalize, false),
    })
}

fn net_config(cfg: &TrainConfig, set: &ImageSet) -> EvalNetConfig {
    EvalNetConfig {
        kind: EvalKind::Cifar,
        in_channels: set.shape()[0],
        channels: cfg.model.channels,
        layers: cfg.model.layers,
        classes: set.classes(),
        auxiliary: cfg.model.auxiliary,
    }
}

/// Trains `genotype` from scratch in a new run directory `out`.
pub fn train(
    genotype: &CnnGenotype,
    cfg: &TrainConfig,
    out: &Path,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    let data = load_data(cfg, &opts.data_dir)?;
    let [_, h, w] = data.set.shape();
    let aux_side = h.min(w).div_ceil(2).div_ceil(2);
    if cfg.model.auxiliary && aux_side < 8 {
        return Err(Error::Config(format!(
            "model.auxiliary: the auxiliary head needs at least 8x8 features after the second reduction (32x32 images); {} images are {h}x{w}: set model.auxiliary=false",
            cfg.data.dataset
        )));
    }
    // Check that the network builds before creating the folder.
    EvalNetwork::new(
        genotype,
        net_config(cfg, &data.set),
        ParamStore::new(0).var_builder(DType::F32, &Device::Cpu),
    )?;
    let run = RunDir::create(out, &cfg.to_toml()?, cfg.run.keep_checkpoints)?;
    let g = Genotype::DartsCnn(genotype.clone());
    run.write("genotype.json", format!("{}\n", g.to_json()).as_bytes())?;
    tracing::info!(dir = %out.display(), "training started");
    run_training(genotype, cfg, run, data, opts, progress)
}

/// Resumes the training run in `run_dir` with its own configuration and genotype.
pub fn resume_training(
    run_dir: &Path,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome> {
    let (cfg, genotype) = read_run(run_dir)?;
    let data = load_data(&cfg, &opts.data_dir)?;
    let run = RunDir::open(run_dir, cfg.run.keep_checkpoints)?;
    run_training(&genotype, &cfg, run, data, opts, progress)
}

fn read_run(run_dir: &Path) -> Result<(TrainConfig, CnnGenotype)> {
    RunDir::open(run_dir, 1)?;
    let cfg = TrainConfig::from_file(&run_dir.join("config.toml"))?;
    let path = run_dir.join("genotype.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    match Genotype::from_json(&text)? {
        Genotype::DartsCnn(g) => Ok((cfg, g)),
        other => Err(Error::Config(format!(
            "{}: a {} genotype; training takes a DARTS CNN genotype",
            path.display(),
            other.kind().name()
        ))),
    }
}

fn run_training(
    genotype: &CnnGenotype,
    cfg: &TrainConfig,
    run: RunDir,
    data: TrainData,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome> {
    let dev = &opts.device;
    let store = ParamStore::new(cfg.run.seed);
    let net_cfg = net_config(cfg, &data.set);
    let net = EvalNetwork::new(genotype, net_cfg, store.var_builder(DType::F32, dev))?;
    let params = store.count(|n| !n.starts_with("auxiliary_head."));
    let mut sgd = Sgd::new(store.trainable(), cfg.sgd())?;
    let ckpt = run.resume(dev)?;
    let (mut start_epoch, mut global_step) = (0, 0u64);
    if let Some(ckpt) = &ckpt {
        let bad = |m: String| Error::Config(format!("checkpoint {}: {m}", ckpt.path.display()));
        let group = |name: &str| {
            ckpt.groups
                .get(name)
                .ok_or_else(|| bad(format!("no {name}.safetensors")))
        };
        store.set_all(group("weights")?).map_err(bad)?;
        sgd.load_state(group("optimizer")?).map_err(bad)?;
        start_epoch = ckpt.state.epoch;
        global_step = ckpt.state.global_step;
    }
    tracing::info!(
        params,
        train = data.train.len(),
        val = data.val.len(),
        start_epoch,
        "network built"
    );
    let schedule = cfg.schedule();
    let bs = cfg.data.batch_size;
    progress.run_start(cfg.run.epochs, start_epoch);
    for epoch in start_epoch..cfg.run.epochs {
        let started = Instant::now();
        let lr = schedule.lr(epoch);
        sgd.set_lr(lr);
        let drop_prob = cfg.model.drop_path * epoch as f64 / cfg.run.epochs as f64;
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            cfg.run.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ epoch as u64,
        );
        progress.epoch_start(epoch, data.train.len() / bs);
        let rx = nas_data::epoch(
            data.set.clone(),
            data.train.clone(),
            &data.train_loader,
            epoch as u64,
        )?;
        let (mut train_loss, mut train_acc) = (Average::default(), Average::default());
        for (step, batch) in rx.iter().enumerate() {
            let (x, y) = batch.to_tensors(dev)?;
            let (logits, aux) = net.forward(&x, true, drop_prob, &mut rng)?;
            let mut loss = cross_entropy(&logits, &y, cfg.optim.label_smoothing)?;
            let main_loss = scalar(&loss)?;
            if let Some(aux) = aux {
                let aux_loss = cross_entropy(&aux, &y, cfg.optim.label_smoothing)?;
                loss = (loss + (aux_loss * cfg.model.auxiliary_weight)?)?;
            }
            ensure_finite("training loss", scalar(&loss)?, epoch, step)?;
            let mut g = grads::collect(&loss.backward()?, sgd.vars());
            let norm = grads::clip_global_norm(&mut g, cfg.optim.grad_clip)?;
            ensure_finite("gradient norm", norm, epoch, step)?;
            sgd.step(&g)?;
            let acc = nas_train::correct_top_k(&logits, &y, &[1])?[0] as f64 / bs as f64;
            train_loss.add(main_loss, bs);
            train_acc.add(acc, bs);
            global_step += 1;
            progress.step(
                step,
                &StepStats {
                    loss: main_loss,
                    accuracy: acc,
                    lr,
                },
            );
            if cfg.run.log_every > 0 && (step + 1) % cfg.run.log_every == 0 {
                run.log(&serde_json::json!({
                    "kind": "step", "epoch": epoch, "step": step, "global_step": global_step,
                    "loss": main_loss, "accuracy": acc, "lr": lr, "grad_norm": norm,
                }))?;
            }
        }
        progress.evaluating(data.val.len().div_ceil(bs));
        let val = evaluate(&net, &data.set, &data.val, &data.eval_loader, dev)?;
        ensure_finite("validation loss", val.loss, epoch, 0)?;
        let summary = serde_json::json!({
            "kind": "epoch", "epoch": epoch, "lr": lr, "drop_prob": drop_prob,
            "train_loss": train_loss.mean(), "train_accuracy": train_acc.mean(),
            "val_loss": val.loss, "val_accuracy": val.top1, "val_top5": val.top5,
            "seconds": started.elapsed().as_secs_f64(),
        });
        tracing::info!(
            epoch,
            train_loss = train_loss.mean(),
            train_accuracy = train_acc.mean(),
            val_accuracy = val.top1,
            "epoch finished"
        );
        run.log(&summary)?;
        run.save_checkpoint(
            CheckpointState {
                epoch: epoch + 1,
                global_step,
                seed: cfg.run.seed,
                metrics_len: 0,
                score: Some(val.top1),
                extra: serde_json::Value::Null,
            },
            &[("weights", store.snapshot()?), ("optimizer", sgd.state())],
        )?;
        progress.epoch_end(epoch, &summary);
    }
    progress.run_end();
    let val = evaluate(&net, &data.set, &data.val, &data.eval_loader, dev)?;
    // The test set, once, with the final weights.
    let test = evaluate(&net, &data.test_set, &data.test, &data.eval_loader, dev)?;
    let results = serde_json::json!({
        "genotype": genotype.to_python()?,
        "params": params,
        "epochs": cfg.run.epochs,
        "best_val_accuracy": run.best()?.map(|(_, s)| s),
        "val": val,
        "test": test,
    });
    run.write("results.json", format!("{results:#}\n").as_bytes())?;
    Ok(TrainOutcome {
        run_dir: run.path().to_path_buf(),
        val,
        test,
        params,
    })
}

fn evaluate(
    net: &EvalNetwork,
    set: &Arc<ImageSet>,
    indices: &Arc<Vec<usize>>,
    loader: &LoaderConfig,
    dev: &Device,
) -> Result<EvalReport> {
    let started = Instant::now();
    let rx = nas_data::epoch(set.clone(), indices.clone(), loader, 0)?;
    let (mut loss, mut top1, mut top5) =
        (Average::default(), Average::default(), Average::default());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for batch in rx.iter() {
        let (x, y) = batch.to_tensors(dev)?;
        let (logits, _) = net.forward(&x, false, 0.0, &mut rng)?;
        let logits = logits.detach();
        let n = batch.labels.len();
        let k = [1, 5.min(logits.dim(1)?)];
        let correct = nas_train::correct_top_k(&logits, &y, &k)?;
        loss.add(scalar(&cross_entropy(&logits, &y, 0.0)?)?, n);
        top1.add(correct[0] as f64 / n as f64, n);
        top5.add(correct[1] as f64 / n as f64, n);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(EvalReport {
        top1: top1.mean(),
        top5: top5.mean(),
        loss: loss.mean(),
        images: top1.count(),
        images_per_second: top1.count() as f64 / secs.max(1e-9),
    })
}

/// Evaluates the newest (or, with `best`, the best) checkpoint of the training run in
/// `run_dir` on its validation split or on the test set.
pub fn evaluate_run(
    run_dir: &Path,
    test: bool,
    best: bool,
    opts: &SearchOptions,
) -> Result<EvalReport> {
    let (cfg, genotype) = read_run(run_dir)?;
    let data = load_data(&cfg, &opts.data_dir)?;
    let run = RunDir::open(run_dir, cfg.run.keep_checkpoints)?;
    let path = if best {
        match run.best()? {
            Some((name, _)) => run_dir.join("checkpoints").join(name),
            None => {
                return Err(Error::Config(format!(
                    "{} has no best checkpoint yet",
                    run_dir.display()
                )))
            }
        }
    } else {
        run.checkpoints()?
            .pop()
            .ok_or_else(|| Error::Config(format!("{} has no checkpoint yet", run_dir.display())))?
    };
    let ckpt = nas_train::read_checkpoint(&path, &opts.device)?;
    let store = ParamStore::new(cfg.run.seed);
    let net = EvalNetwork::new(
        &genotype,
        net_config(&cfg, &data.set),
        store.var_builder(DType::F32, &opts.device),
    )?;
    let weights = ckpt
        .groups
        .get("weights")
        .ok_or_else(|| Error::Config(format!("{}: no weights.safetensors", path.display())))?;
    store
        .set_all(weights)
        .map_err(|m| Error::Config(format!("{}: {m}", path.display())))?;
    if test {
        evaluate(
            &net,
            &data.test_set,
            &data.test,
            &data.eval_loader,
            &opts.device,
        )
    } else {
        evaluate(&net, &data.set, &data.val, &data.eval_loader, &opts.device)
    }
}
