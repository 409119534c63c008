//! `nas train` and `nas eval`: a genotype trained from scratch, and its evaluation.

use nas_train::ConfigFile;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use nas_models::EvalGenotype;
use nas_retrain::{TrainConfig, TRAIN_PRESETS};

use crate::output::emit;
use crate::progress::Bars;
use crate::run_args::{PlaceArgs, RunArgs};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A bundled genotype name or a genotype file (e.g. a search's genotype.json).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    genotype: Option<String>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A training run directory, or a weights file written by `nas import`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// With a weights file: the data set whose test split to evaluate [default: cifar10
    /// for a CIFAR network, imagenet for an ImageNet one].
    #[arg(long)]
    dataset: Option<String>,
    /// With a weights file: images per batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// test or val.
    #[arg(long, default_value = "test")]
    split: String,
    /// Use the checkpoint with the best validation accuracy instead of the newest.
    #[arg(long)]
    best: bool,
    #[command(flatten)]
    place: PlaceArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn presets_help() -> String {
    crate::run_args::presets_help(TRAIN_PRESETS)
}

/// The preset when none is named: the data set's (ENAS's own training for ENAS cells on
/// CIFAR).
fn default_preset(args: &TrainArgs, genotype: &EvalGenotype) -> &'static str {
    let name = TrainConfig::default_preset_for(args.run.dataset.as_deref().unwrap_or("digits"));
    if matches!(genotype, EvalGenotype::EnasMicro(_)) && name == "paper" {
        "enas"
    } else {
        name
    }
}

pub fn run_train(args: TrainArgs) -> Result<()> {
    let opts = args.run.options()?;
    let mut bars = Bars::new();
    let outcome = if let Some(dir) = &args.run.resume {
        nas_retrain::resume_training(dir, &opts, &mut bars)
            .with_context(|| format!("resuming the training run in {}", dir.display()))?
    } else {
        let spec = args.genotype.as_deref().unwrap_or_default();
        let genotype = EvalGenotype::from_genotype(crate::genotype::load(spec, None)?)
            .with_context(|| format!("genotype {spec:?}"))?;
        let cfg = args
            .run
            .resolve(TrainConfig::preset, default_preset(&args, &genotype), &[])?;
        if args.run.dry_run {
            emit(&cfg.to_toml()?, None)?;
            return Ok(());
        }
        let out = args.run.out_dir("train", &cfg.data.dataset);
        nas_retrain::train(&genotype, &cfg, &out, &opts, &mut bars)
            .with_context(|| format!("training in {}", out.display()))?
    };
    crate::plot::write_run_plots(&outcome.run_dir)?;
    emit(
        &format!(
        "test accuracy {:.2}% (top-5 {:.2}%) on {} images; validation {:.2}%; {} parameters; run directory {}",
        100.0 * outcome.test.top1,
        100.0 * outcome.test.top5,
        outcome.test.images,
        100.0 * outcome.val.top1,
        outcome.params,
        outcome.run_dir.display()
),
        None,
    )?;
    Ok(())
}

pub fn run_eval(args: EvalArgs) -> Result<()> {
    let opts = args.place.options()?;
    if crate::lm::is_lm_run(&args.checkpoint) {
        return crate::lm::eval(&args.checkpoint, &args.split, args.best, &opts, args.json);
    }
    let test = match args.split.as_str() {
        "test" => true,
        "val" => false,
        other => bail!("unknown split {other:?}; expected test or val"),
    };
    let report = if args.checkpoint.is_file() {
        if !test || args.best {
            bail!(
                "{} is a weights file: it is evaluated on the test split (no --split val, no --best)",
                args.checkpoint.display()
            );
        }
        if args.batch_size == 0 {
            bail!("--batch-size must be positive");
        }
        nas_retrain::evaluate_weights(
            &args.checkpoint,
            args.dataset.as_deref(),
            args.batch_size,
            &opts,
        )
    } else {
        if args.dataset.is_some() {
            bail!("--dataset is for a weights file; a training run evaluates on its own data set");
        }
        nas_retrain::evaluate_run(&args.checkpoint, test, args.best, &opts)
    }
    .with_context(|| format!("evaluating {}", args.checkpoint.display()))?;
    let text = if args.json {
        serde_json::to_string_pretty(&serde_json::json!({
            "split": args.split, "top1": report.top1, "top5": report.top5, "loss": report.loss,
            "images": report.images, "images_per_second": report.images_per_second,
        }))?
    } else {
        format!(
            "{}: top-1 {:.2}%, top-5 {:.2}%, loss {:.4}, {} images, {:.0} images/s",
            args.split,
            100.0 * report.top1,
            100.0 * report.top5,
            report.loss,
            report.images,
            report.images_per_second
        )
    };
    emit(&text, None)
}
