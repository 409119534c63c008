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
use nas_data::imagenet::ImageFolder;
use nas_data::imagenet::Transform;
use nas_data::{
    split::darts_split, Augment, Batch, Dataset, ImageSet, ImagenetLoaderConfig, LoaderConfig,
};
use nas_search_space::Genotype;
use nas_train::{
    cross_entropy, ensure_finite, grads, scalar, Average, CheckpointState, ParamStore, Progress,
    RunDir, Sgd, StepStats,
};
use rand::SeedableRng;
use serde::Serialize;

use crate::data::{load_image_set, loader, normalize_for};
use crate::error::{Error, Result};
use crate::eval_genotype::EvalGenotype;
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

/// Where batches come from: an image set in memory, or an ImageNet folder decoded batch
/// by batch.
enum Source {
    Memory {
        set: Arc<ImageSet>,
        train: LoaderConfig,
        eval: LoaderConfig,
    },
    Folder {
        folder: Arc<ImageFolder>,
        train: ImagenetLoaderConfig,
        eval: ImagenetLoaderConfig,
    },
}

type Batches = Box<dyn Iterator<Item = Result<Batch>>>;

impl Source {
    fn batches(&self, indices: &Arc<Vec<usize>>, training: bool, epoch: u64) -> Result<Batches> {
        Ok(match self {
            Source::Memory { set, train, eval } => {
                let cfg = if training { train } else { eval };
                Box::new(
                    nas_data::epoch(set.clone(), indices.clone(), cfg, epoch)?
                        .into_iter()
                        .map(Ok),
                )
            }
            Source::Folder {
                folder,
                train,
                eval,
            } => {
                let cfg = if training { train } else { eval };
                Box::new(
                    nas_data::imagenet_epoch(folder.clone(), indices.clone(), cfg, epoch)?
                        .into_iter()
                        .map(|b| b.map_err(Error::from)),
                )
            }
        })
    }
}

struct TrainData {
    source: Source,
    train: Arc<Vec<usize>>,
    val: Arc<Vec<usize>>,
    test_source: Source,
    test: Arc<Vec<usize>>,
    /// `[channels, height, width]` of the inputs.
    shape: [usize; 3],
    classes: usize,
    kind: EvalKind,
}

/// A seeded permutation of `pool`, cut to `max`, split into (train, valid).
fn hold_out(pool: &[usize], cfg: &TrainConfig) -> Result<(Vec<usize>, Vec<usize>)> {
    let (perm, _) = darts_split(pool.len(), 1.0, cfg.run.seed)?;
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
    Ok((order, val))
}

fn load_data(cfg: &TrainConfig, data_dir: &Path) -> Result<TrainData> {
    if cfg.data.dataset == Dataset::Imagenet.name() {
        return load_imagenet(cfg, data_dir);
    }
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
    let (train, val) = hold_out(&pool, cfg)?;
    let normalize = normalize_for(&set, &train)?;
    let augment = Augment {
        crop_padding: cfg.data.crop_padding,
        flip: cfg.data.flip,
        cutout: cfg.data.cutout,
    };
    let bs = cfg.data.batch_size;
    let (shape, classes) = (set.shape(), set.classes());
    let set = Arc::new(set);
    let test_set = match test_set {
        Some(t) => Arc::new(t),
        None => set.clone(),
    };
    let train_cfg = loader(bs, seed, 1, Some(augment), &normalize, true);
    let eval_cfg = loader(bs, seed, 3, None, &normalize, false);
    Ok(TrainData {
        source: Source::Memory {
            set,
            train: train_cfg.clone(),
            eval: eval_cfg.clone(),
        },
        train: Arc::new(train),
        val: Arc::new(val),
        test_source: Source::Memory {
            set: test_set,
            train: train_cfg,
            eval: eval_cfg,
        },
        test: Arc::new(test),
        shape,
        classes,
        kind: EvalKind::Cifar,
    })
}

/// ImageNet: `train/` minus a seeded validation hold-out trains, `val/` is the test set
/// (as in the papers); the transforms are the papers' (see `nas_data::imagenet`).
/// ImageNet loader settings for one stream (training: shuffled, last partial batch
/// dropped), seeded from the run seed as the in-memory loaders are.
fn imagenet_loader(
    batch_size: usize,
    seed: u64,
    transform: Transform,
    training: bool,
) -> ImagenetLoaderConfig {
    ImagenetLoaderConfig {
        batch_size,
        shuffle: training,
        drop_last: training,
        seed: seed
            .wrapping_mul(0x9e37_79b9)
            .wrapping_add(if training { 1 } else { 3 }),
        transform,
        prefetch: 4,
    }
}

fn load_imagenet(cfg: &TrainConfig, data_dir: &Path) -> Result<TrainData> {
    let train_folder = Dataset::Imagenet.image_folder(data_dir, true)?;
    let test_folder = Dataset::Imagenet.image_folder(data_dir, false)?;
    if train_folder.classes() != test_folder.classes() {
        return Err(Error::Config(format!(
            "imagenet: train/ has {} classes and val/ {}; they must be the same folders",
            train_folder.classes().len(),
            test_folder.classes().len()
        )));
    }
    let pool: Vec<usize> = (0..train_folder.samples().len()).collect();
    let (train, val) = hold_out(&pool, cfg)?;
    let test = (0..test_folder.samples().len()).collect();
    let loader = |transform: Transform, training: bool| {
        imagenet_loader(cfg.data.batch_size, cfg.run.seed, transform, training)
    };
    let classes = train_folder.classes().len();
    Ok(TrainData {
        source: Source::Folder {
            folder: Arc::new(train_folder),
            train: loader(Transform::Train, true),
            eval: loader(Transform::Eval, false),
        },
        train: Arc::new(train),
        val: Arc::new(val),
        test_source: Source::Folder {
            folder: Arc::new(test_folder),
            train: loader(Transform::Train, true),
            eval: loader(Transform::Eval, false),
        },
        test: Arc::new(test),
        shape: [3, 224, 224],
        classes,
        kind: EvalKind::Imagenet,
    })
}

fn net_config(cfg: &TrainConfig, data: &TrainData) -> EvalNetConfig {
    EvalNetConfig {
        kind: data.kind,
        in_channels: data.shape[0],
        channels: cfg.model.channels,
        layers: cfg.model.layers,
        classes: data.classes,
        auxiliary: cfg.model.auxiliary,
    }
}

/// Trains `genotype` from scratch in a new run directory `out`.
pub fn train(
    genotype: &EvalGenotype,
    cfg: &TrainConfig,
    out: &Path,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    let data = load_data(cfg, &opts.data_dir)?;
    let [_, h, w] = data.shape;
    let aux_side = h.min(w).div_ceil(2).div_ceil(2);
    if cfg.model.auxiliary && data.kind == EvalKind::Cifar && aux_side < 8 {
        return Err(Error::Config(format!(
            "model.auxiliary: the auxiliary head needs at least 8x8 features after the second reduction (32x32 images); {} images are {h}x{w}: set model.auxiliary=false",
            cfg.data.dataset
        )));
    }
    // Check that the network builds before creating the folder.
    EvalNetwork::new(
        genotype,
        net_config(cfg, &data),
        ParamStore::new(0).var_builder(DType::F32, &Device::Cpu),
    )?;
    let run = RunDir::create(out, &cfg.to_toml()?, cfg.run.keep_checkpoints)?;
    let g = genotype.to_genotype();
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

fn read_run(run_dir: &Path) -> Result<(TrainConfig, EvalGenotype)> {
    RunDir::open(run_dir, 1)?;
    let cfg = TrainConfig::from_file(&run_dir.join("config.toml"))?;
    let path = run_dir.join("genotype.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let genotype = EvalGenotype::from_genotype(Genotype::from_json(&text)?)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    Ok((cfg, genotype))
}

fn run_training(
    genotype: &EvalGenotype,
    cfg: &TrainConfig,
    run: RunDir,
    data: TrainData,
    opts: &SearchOptions,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome> {
    let dev = &opts.device;
    let store = ParamStore::new(cfg.run.seed);
    let net_cfg = net_config(cfg, &data);
    let net = EvalNetwork::new(genotype, net_cfg, store.var_builder(DType::F32, dev))?
        .with_dropout(cfg.model.dropout);
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
        let batches = data.source.batches(&data.train, true, epoch as u64)?;
        let (mut train_loss, mut train_acc) = (Average::default(), Average::default());
        for (step, batch) in batches.enumerate() {
            let (x, y) = batch?.to_tensors(dev)?;
            // The step on a pool thread (`nas_ops::runtime::in_pool`); never the batch
            // wait above, whose loader thread may itself need the pool.
            let (main_loss, norm, acc) = nas_ops::runtime::in_pool(|| -> Result<_> {
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
                Ok((main_loss, norm, acc))
            })?;
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
        let val = evaluate(&net, &data.source, &data.val, dev)?;
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
    let val = evaluate(&net, &data.source, &data.val, dev)?;
    // The test set, once, with the final weights.
    let test = evaluate(&net, &data.test_source, &data.test, dev)?;
    let g = genotype.to_genotype();
    let genotype_text = g.to_text(g.native_format())?;
    let results = serde_json::json!({
        "genotype": genotype_text,
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
    source: &Source,
    indices: &Arc<Vec<usize>>,
    dev: &Device,
) -> Result<EvalReport> {
    let started = Instant::now();
    let batches = source.batches(indices, false, 0)?;
    let (mut loss, mut top1, mut top5) =
        (Average::default(), Average::default(), Average::default());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for batch in batches {
        let batch = batch?;
        let (x, y) = batch.to_tensors(dev)?;
        let (logits, _) = nas_ops::runtime::in_pool(|| net.forward(&x, false, 0.0, &mut rng))?;
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

/// Evaluates a weights file ([`write_weights`](crate::write_weights), what `nas import`
/// writes) on the test split of `dataset` (`None`: CIFAR-10 for a CIFAR network, ImageNet
/// for an ImageNet one), with the normalisation the file names.
pub fn evaluate_weights(
    path: &Path,
    dataset: Option<&str>,
    batch_size: usize,
    opts: &SearchOptions,
) -> Result<EvalReport> {
    let file = crate::weights_file::read_weights(path, &opts.device)?;
    let net_cfg = file.net;
    let store = ParamStore::new(0);
    let net = EvalNetwork::new(
        &file.genotype,
        net_cfg,
        store.var_builder(DType::F32, &opts.device),
    )?;
    store
        .set_all(&file.tensors)
        .map_err(|m| Error::Config(format!("{}: {m}", path.display())))?;
    let loader_cfg =
        |normalize: &nas_data::Normalize| loader(batch_size, 0, 3, None, normalize, false);
    let (source, count, classes) = match net_cfg.kind {
        EvalKind::Cifar => {
            let (_, set) = load_image_set(dataset.unwrap_or("cifar10"), &opts.data_dir, false)?;
            if set.shape() != [net_cfg.in_channels, 32, 32] {
                return Err(Error::Config(format!(
                    "{}: a CIFAR network takes {}x32x32 images, the data set's are {:?}",
                    path.display(),
                    net_cfg.in_channels,
                    set.shape()
                )));
            }
            let (count, classes) = (set.len(), set.classes());
            let eval = loader_cfg(&file.normalize);
            let source = Source::Memory {
                set: Arc::new(set),
                train: eval.clone(),
                eval,
            };
            (source, count, classes)
        }
        EvalKind::Imagenet => {
            // The ImageNet loader normalises with the standard constants, the ones
            // `nas import` records for an ImageNet network.
            if file.normalize != crate::weights_file::reference_imagenet_normalize() {
                return Err(Error::Config(format!(
                    "{}: the ImageNet loader normalises with the standard ImageNet mean and \
                     std; the file asks for {:?}",
                    path.display(),
                    file.normalize
                )));
            }
            let name = dataset.unwrap_or("imagenet");
            if name != Dataset::Imagenet.name() {
                return Err(Error::Config(format!(
                    "{}: an ImageNet network is evaluated on imagenet, not {name:?}",
                    path.display()
                )));
            }
            let folder = Dataset::Imagenet.image_folder(&opts.data_dir, false)?;
            let (count, classes) = (folder.samples().len(), folder.classes().len());
            let cfg = imagenet_loader(batch_size, 0, Transform::Eval, false);
            let source = Source::Folder {
                folder: Arc::new(folder),
                train: cfg.clone(),
                eval: cfg,
            };
            (source, count, classes)
        }
    };
    if classes != net_cfg.classes {
        return Err(Error::Config(format!(
            "{}: the network has {} classes, the data set {classes}",
            path.display(),
            net_cfg.classes
        )));
    }
    evaluate(&net, &source, &Arc::new((0..count).collect()), &opts.device)
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
        net_config(&cfg, &data),
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
        evaluate(&net, &data.test_source, &data.test, &opts.device)
    } else {
        evaluate(&net, &data.source, &data.val, &opts.device)
    }
}
