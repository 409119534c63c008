//! Training a genotype from scratch (the reference `cnn/train.py`), with a validation
//! split for model selection and the test set evaluated once, at the end.
//!
//! Per step: logits and (with the auxiliary head) auxiliary logits; loss = CE +
//! `auxiliary_weight` CE(aux); clip; SGD. Drop path rises linearly from 0 to
//! `model.drop_path` over the epochs (`drop_path * epoch / epochs`, as the reference).
//! Its masks come from a generator seeded by (seed, epoch), so a resumed run draws the
//! same ones.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use nas_data::imagenet::ImageFolder;
use nas_data::imagenet::Transform;
use nas_data::{
    load_image_set, loader, normalize_for, split::darts_split, Augment, Batch, Dataset, ImageSet,
    ImagenetLoaderConfig, LoaderConfig,
};
use nas_models::{EvalGenotype, EvalKind, EvalNetConfig, EvalNetwork};
use nas_search_space::Genotype;
use nas_train::{
    cross_entropy, grads, scalar, stream_rng, stream_seed, Average, ConfigFile, EpochEnd,
    EpochMeans, EpochPlan, LoadedCheckpoint, ParamStore, Progress, RunDir, RunEnd, RunOptions, Sgd,
    StepCtx, StepReport, StepStats, Task,
};
use rand::SeedableRng;
use serde::Serialize;

use crate::train_config::TrainConfig;
use crate::{Error, Result};

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
    let (perm, _) = darts_split(pool.len(), 1.0, stream_seed(cfg.run.seed, "split", 0))?;
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
        if test_set.shape() != set.shape() || test_set.classes() != set.classes() {
            return Err(Error::Config(format!(
                "data.dataset {:?}: the test split holds {} classes of {:?} images, the training split {} classes of {:?}",
                cfg.data.dataset,
                test_set.classes(),
                test_set.shape(),
                set.classes(),
                set.shape()
            )));
        }
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
    augment.check(set.shape())?;
    let bs = cfg.data.batch_size;
    let (shape, classes) = (set.shape(), set.classes());
    let set = Arc::new(set);
    let test_set = match test_set {
        Some(t) => Arc::new(t),
        None => set.clone(),
    };
    let train_cfg = loader(
        bs,
        stream_seed(seed, "loader.train", 0),
        Some(augment),
        &normalize,
        true,
    );
    let eval_cfg = loader(
        bs,
        stream_seed(seed, "loader.eval", 0),
        None,
        &normalize,
        false,
    );
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
        seed: stream_seed(
            seed,
            if training {
                "loader.train"
            } else {
                "loader.eval"
            },
            0,
        ),
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
    opts: &RunOptions,
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
    // Check that it fits, then that the network builds, before creating the folder.
    let net_cfg = net_config(cfg, &data);
    let counts = nas_models::count(genotype, net_cfg)?;
    let estimate = nas_models::memory_estimate(
        genotype,
        net_cfg,
        counts.params_with_aux,
        cfg.data.batch_size,
    );
    nas_train::check_memory(estimate, "this training run")?;
    EvalNetwork::new(
        genotype,
        net_config(cfg, &data),
        ParamStore::new(0).var_builder(DType::F32, &Device::Cpu),
    )?;
    let json = format!("{}\n", genotype.to_genotype().to_json());
    let inputs = [("genotype.json", json.as_bytes())];
    let run = RunDir::create_with(out, &cfg.to_toml()?, &inputs, cfg.run.keep_checkpoints)?;
    tracing::info!(dir = %out.display(), "training started");
    run_training(genotype, cfg, run, data, opts, progress)
}

/// Resumes the training run in `run_dir` with its own configuration and genotype.
pub fn resume_training(
    run_dir: &Path,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome> {
    let (cfg, genotype) = read_run(run_dir)?;
    let data = load_data(&cfg, &opts.data_dir)?;
    let run = RunDir::open(run_dir, cfg.run.keep_checkpoints)?;
    run_training(&genotype, &cfg, run, data, opts, progress)
}

fn read_run(run_dir: &Path) -> Result<(TrainConfig, EvalGenotype)> {
    RunDir::inspect(run_dir)?;
    let config = run_dir.join("config.toml");
    if nas_train::read_text(&config)?
        .lines()
        .any(|l| l.trim() == "[arch]")
    {
        return Err(Error::file(
            &config,
            format!(
                "this is a search run (its configuration has an [arch] section), not a training run; \
                 train what it found with `nas train --genotype {}`",
                run_dir.join("genotype.json").display()
            ),
        ));
    }
    let cfg = TrainConfig::from_file(&config)?;
    let path = run_dir.join("genotype.json");
    let text = nas_train::read_text(&path)?;
    let genotype = EvalGenotype::from_genotype(Genotype::from_json(&text)?)
        .map_err(|e| Error::file(&path, e))?;
    Ok((cfg, genotype))
}

fn run_training(
    genotype: &EvalGenotype,
    cfg: &TrainConfig,
    run: RunDir,
    data: TrainData,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome> {
    let dev = &opts.device;
    let store = ParamStore::new(cfg.run.seed);
    let net_cfg = net_config(cfg, &data);
    let net = EvalNetwork::new(genotype, net_cfg, store.var_builder(DType::F32, dev))?
        .with_dropout(cfg.model.dropout);
    let params = store.count(|n| !n.starts_with("auxiliary_head."));
    let sgd = Sgd::new(store.trainable(), cfg.sgd())?;
    tracing::info!(
        params,
        train = data.train.len(),
        val = data.val.len(),
        "network built"
    );
    let mut task = TrainTask {
        genotype,
        cfg,
        data,
        device: dev.clone(),
        store,
        net,
        sgd,
        params,
        lr: f64::NAN,
        drop_prob: 0.0,
        rng: rand::rngs::StdRng::seed_from_u64(0),
    };
    nas_train::runner::run(&mut task, &run, cfg.run.settings(), dev, progress)
}

/// Training a genotype as the run loop drives it.
struct TrainTask<'a> {
    genotype: &'a EvalGenotype,
    cfg: &'a TrainConfig,
    data: TrainData,
    device: Device,
    store: ParamStore,
    net: EvalNetwork,
    sgd: Sgd,
    params: usize,
    lr: f64,
    drop_prob: f64,
    /// The epoch's drop-path masks.
    rng: rand::rngs::StdRng,
}

impl Task for TrainTask<'_> {
    type Batch = (Tensor, Tensor);
    type Error = Error;
    type Outcome = TrainOutcome;

    fn restore(&mut self, ckpt: &LoadedCheckpoint) -> Result<()> {
        ckpt.load("weights", |t| self.store.set_all(t))?;
        ckpt.load("optimizer", |t| self.sgd.load_state(t))?;
        Ok(())
    }

    fn begin_epoch(&mut self, epoch: usize) -> Result<EpochPlan<Self::Batch, Error>> {
        let cfg = self.cfg;
        self.lr = cfg.schedule().lr(epoch);
        self.sgd.set_lr(self.lr);
        self.drop_prob = cfg.model.drop_path * epoch as f64 / cfg.run.epochs as f64;
        self.rng = stream_rng(cfg.run.seed, "drop_path", epoch as u64);
        let dev = self.device.clone();
        let batches = self
            .data
            .source
            .batches(&self.data.train, true, epoch as u64)?
            .map(move |b| Ok(b?.to_tensors(&dev)?));
        Ok(EpochPlan {
            steps: self.data.train.len() / cfg.data.batch_size,
            batches: Box::new(batches),
        })
    }

    fn step(&mut self, ctx: &StepCtx, (x, y): Self::Batch) -> Result<StepReport> {
        let cfg = self.cfg;
        let bs = cfg.data.batch_size;
        let (logits, aux) = self.net.forward(&x, true, self.drop_prob, &mut self.rng)?;
        let mut loss = cross_entropy(&logits, &y, cfg.optim.label_smoothing)?;
        let main_loss = scalar(&loss)?;
        if let Some(aux) = aux {
            let aux_loss = cross_entropy(&aux, &y, cfg.optim.label_smoothing)?;
            loss = (loss + (aux_loss * cfg.model.auxiliary_weight)?)?;
        }
        ctx.ensure_finite("training loss", scalar(&loss)?)?;
        let mut g = grads::collect(&loss.backward()?, self.sgd.vars());
        let norm = grads::clip_global_norm(&mut g, cfg.optim.grad_clip)?;
        ctx.ensure_finite("gradient norm", norm)?;
        self.sgd.step(&g)?;
        let acc = nas_train::correct_top_k(&logits, &y, &[1])?[0] as f64 / bs as f64;
        let mut log = serde_json::Map::new();
        log.insert("accuracy".into(), acc.into());
        log.insert("grad_norm".into(), norm.into());
        Ok(StepReport {
            stats: StepStats {
                loss: main_loss,
                accuracy: acc,
                lr: self.lr,
            },
            weight: bs,
            means: Vec::new(),
            log,
        })
    }

    fn end_epoch(
        &mut self,
        ctx: &StepCtx,
        means: &EpochMeans,
        _run: &RunDir,
        progress: &mut dyn Progress,
    ) -> Result<EpochEnd> {
        progress.evaluating(self.data.val.len().div_ceil(self.cfg.data.batch_size));
        let val = evaluate(&self.net, &self.data.source, &self.data.val, &self.device)?;
        ctx.ensure_finite("validation loss", val.loss)?;
        let fields = nas_train::fields(serde_json::json!({
            "lr": self.lr, "drop_prob": self.drop_prob,
            "train_loss": means.mean("loss"), "train_accuracy": means.mean("accuracy"),
            "val_loss": val.loss, "val_accuracy": val.top1, "val_top5": val.top5,
        }));
        Ok(EpochEnd {
            fields,
            log_keys: &["train_loss", "train_accuracy", "val_accuracy"],
            score: Some(val.top1),
            extra: serde_json::Value::Null,
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
        run: &RunDir,
        _end: RunEnd,
        _progress: &mut dyn Progress,
    ) -> Result<TrainOutcome> {
        let (net, data, dev) = (&self.net, &self.data, &self.device);
        let val = evaluate(net, &data.source, &data.val, dev)?;
        // The test set, once, with the final weights.
        let test = evaluate(net, &data.test_source, &data.test, dev)?;
        let g = self.genotype.to_genotype();
        let genotype_text = g.to_text(g.native_format())?;
        let results = serde_json::json!({
            "genotype": genotype_text,
            "params": self.params,
            "epochs": self.cfg.run.epochs,
            "best_val_accuracy": run.best()?.map(|(_, s)| s),
            "val": val,
            "test": test,
        });
        run.write("results.json", format!("{results:#}\n").as_bytes())?;
        Ok(TrainOutcome {
            run_dir: run.path().to_path_buf(),
            val,
            test,
            params: self.params,
        })
    }
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
        let (logits, _) = nas_train::in_pool(|| net.forward(&x, false, 0.0, &mut rng))?;
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

/// Evaluates a weights file ([`write_weights`](nas_models::write_weights), what `nas import`
/// writes) on the test split of `dataset` (`None`: CIFAR-10 for a CIFAR network, ImageNet
/// for an ImageNet one), with the normalisation the file names.
pub fn evaluate_weights(
    path: &Path,
    dataset: Option<&str>,
    batch_size: usize,
    opts: &RunOptions,
) -> Result<EvalReport> {
    let file = nas_models::read_weights(path, &opts.device)?;
    let net_cfg = file.net;
    let store = ParamStore::new(0);
    let net = EvalNetwork::new(
        &file.genotype,
        net_cfg,
        store.var_builder(DType::F32, &opts.device),
    )?;
    store
        .set_all(&file.tensors)
        .map_err(|e| Error::file(path, e))?;
    let loader_cfg =
        |normalize: &nas_data::Normalize| loader(batch_size, 0, None, normalize, false);
    let (source, count, classes) = match net_cfg.kind {
        EvalKind::Cifar => {
            let (_, set) = load_image_set(dataset.unwrap_or("cifar10"), &opts.data_dir, false)?;
            if set.shape() != [net_cfg.in_channels, 32, 32] {
                return Err(Error::file(
                    path,
                    format!(
                        "a CIFAR network takes {}x32x32 images, the data set's are {:?}",
                        net_cfg.in_channels,
                        set.shape()
                    ),
                ));
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
            if file.normalize != nas_models::reference_imagenet_normalize() {
                return Err(Error::file(
                    path,
                    format!(
                        "the ImageNet loader normalises with the standard ImageNet mean and \
                         std; the file asks for {:?}",
                        file.normalize
                    ),
                ));
            }
            let name = dataset.unwrap_or("imagenet");
            if name != Dataset::Imagenet.name() {
                return Err(Error::file(
                    path,
                    format!("an ImageNet network is evaluated on imagenet, not {name:?}"),
                ));
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
        return Err(Error::file(
            path,
            format!(
                "the network has {} classes, the data set {classes}",
                net_cfg.classes
            ),
        ));
    }
    evaluate(&net, &source, &Arc::new((0..count).collect()), &opts.device)
}

/// Evaluates the newest (or, with `best`, the best) checkpoint of the training run in
/// `run_dir` on its validation split or on the test set.
pub fn evaluate_run(
    run_dir: &Path,
    test: bool,
    best: bool,
    opts: &RunOptions,
) -> Result<EvalReport> {
    let (cfg, genotype) = read_run(run_dir)?;
    let data = load_data(&cfg, &opts.data_dir)?;
    let run = RunDir::inspect(run_dir)?;
    let path = if best {
        match run.best()? {
            Some((name, _)) => run_dir.join("checkpoints").join(name),
            None => {
                return Err(Error::NoCheckpoint {
                    run_dir: run_dir.to_path_buf(),
                    best: true,
                })
            }
        }
    } else {
        run.checkpoints()?
            .pop()
            .ok_or_else(|| Error::NoCheckpoint {
                run_dir: run_dir.to_path_buf(),
                best: false,
            })?
    };
    let ckpt = nas_train::read_checkpoint(&path, &opts.device)?;
    let store = ParamStore::new(cfg.run.seed);
    let net = EvalNetwork::new(
        &genotype,
        net_config(&cfg, &data),
        store.var_builder(DType::F32, &opts.device),
    )?;
    ckpt.load("weights", |t| store.set_all(t))?;
    if test {
        evaluate(&net, &data.test_source, &data.test, &opts.device)
    } else {
        evaluate(&net, &data.source, &data.val, &opts.device)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use candle_core::{DType, Device, Tensor};
    use nas_models::{
        reference_imagenet_normalize, write_weights, EvalKind, EvalNetConfig, EvalNetwork,
    };
    use nas_search_space::bundled;
    use nas_train::RunOptions;

    use super::*;

    fn darts_v2() -> EvalGenotype {
        EvalGenotype::from_genotype(bundled("darts-v2").expect("bundled")).expect("cells")
    }

    #[test]
    fn an_imagenet_network_evaluates_from_its_file_on_real_jpegs() -> Result<()> {
        // The 20 real sample JPEGs as a 2-class ImageNet validation folder.
        let sample = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/datasets/imagenet-sample/val");
        // One folder per class, holding its JPEGs.
        let mut files: Vec<_> = std::fs::read_dir(&sample)
            .expect("the ImageNet sample")
            .flat_map(|class| std::fs::read_dir(class.expect("entry").path()).expect("class"))
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 20, "{}", sample.display());
        let dir = tempfile::tempdir().expect("tempdir");
        for (i, f) in files.iter().enumerate() {
            let class = dir.path().join(format!("imagenet/val/n0{}", i % 2));
            std::fs::create_dir_all(&class).expect("mkdir");
            std::fs::copy(f, class.join(f.file_name().expect("name"))).expect("copy");
        }
        let net = EvalNetConfig {
            kind: EvalKind::Imagenet,
            in_channels: 3,
            channels: 4,
            layers: 3,
            classes: 2,
            auxiliary: false,
        };
        let store = nas_train::ParamStore::new(3);
        EvalNetwork::new(
            &darts_v2(),
            net,
            store.var_builder(DType::F32, &Device::Cpu),
        )?;
        let tensors: HashMap<String, Tensor> = store
            .all()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        let path = dir.path().join("w.safetensors");
        write_weights(
            &path,
            &tensors,
            &net,
            &darts_v2(),
            &reference_imagenet_normalize(),
        )?;
        let opts = RunOptions {
            data_dir: dir.path().to_path_buf(),
            device: Device::Cpu,
        };
        let report = crate::evaluate_weights(&path, None, 8, &opts)?;
        assert_eq!(report.images, 20);
        assert!(report.loss.is_finite() && (0.0..=1.0).contains(&report.top1));
        let e = crate::evaluate_weights(&path, Some("cifar10"), 8, &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("evaluated on imagenet"), "{e}");
        Ok(())
    }
}
