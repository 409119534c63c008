//! `nas search darts-rnn` and `nas train-lm`: DARTS recurrent cells on a text corpus.

use nas_train::ConfigFile;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;
use nas_darts::{Order, LM_SEARCH_PRESETS};
use nas_retrain::{LmConfig, LmOutcome, LM_TRAIN_PRESETS};
use nas_search_space::Genotype;
use nas_train::RunOptions;

use crate::output::emit;
use crate::progress::Bars;
use crate::run_args::RunArgs;

#[derive(Debug, Args)]
pub struct DartsRnnArgs {
    #[command(flatten)]
    run: RunArgs,
    /// first or second order architecture gradient.
    #[arg(long, conflicts_with = "resume")]
    order: Option<Order>,
}

#[derive(Debug, Args)]
pub struct TrainLmArgs {
    /// A bundled recurrent genotype (darts-rnn-v1, darts-rnn-v2, enas-rnn) or a genotype
    /// file (e.g. a search's genotype.json).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    genotype: Option<String>,
    #[command(flatten)]
    run: RunArgs,
}

fn resume(dir: &Path, opts: &RunOptions, bars: &mut Bars) -> Result<LmOutcome> {
    nas_darts::resume_lm(dir, opts, bars)
        .with_context(|| format!("resuming the run in {}", dir.display()))
}

pub fn run_search(args: DartsRnnArgs) -> Result<()> {
    let opts = args.run.options()?;
    let mut bars = Bars::new();
    let outcome = if let Some(dir) = &args.run.resume {
        resume(dir, &opts, &mut bars)?
    } else {
        let extra = crate::search::order_override(args.order);
        let cfg = args
            .run
            .resolve(nas_darts::rnn_search_preset, "cpu", &extra)?;
        if args.run.dry_run {
            emit(&cfg.to_toml()?, None)?;
            return Ok(());
        }
        let out = args.run.out_dir("darts-rnn", &cfg.data.dataset);
        nas_darts::search_rnn(&cfg, &out, &opts, &mut bars)
            .with_context(|| format!("searching in {}", out.display()))?
    };
    emit(&outcome.genotype.to_python(), None)?;
    crate::plot::write_run_plots(&outcome.run_dir)?;
    emit(
        &format!(
        "validation perplexity {:.2}; run directory {} (genotype.json, genotype.py, genotype.svg, alphas.safetensors)",
        outcome.val_ppl,
        outcome.run_dir.display()
),
        None,
    )?;
    Ok(())
}

pub fn run_train(args: TrainLmArgs) -> Result<()> {
    let opts = args.run.options()?;
    let mut bars = Bars::new();
    let outcome = if let Some(dir) = &args.run.resume {
        resume(dir, &opts, &mut bars)?
    } else {
        let cfg = args.run.resolve(LmConfig::train_preset, "cpu", &[])?;
        if args.run.dry_run {
            emit(&cfg.to_toml()?, None)?;
            return Ok(());
        }
        let spec = args.genotype.as_deref().unwrap_or_default();
        let genotype = match crate::genotype::load(spec, None)? {
            Genotype::DartsRnn(g) => g,
            other => bail!(
                "genotype {spec:?} is a {} genotype; nas train-lm takes a DARTS recurrent genotype",
                other.kind().name()
            ),
        };
        let out = args.run.out_dir("train-lm", &cfg.data.dataset);
        nas_retrain::train_lm(&cfg, &genotype, &out, &opts, &mut bars)
            .with_context(|| format!("training in {}", out.display()))?
    };
    crate::plot::write_run_plots(&outcome.run_dir)?;
    emit(
        &format!(
        "test perplexity {:.2}; validation perplexity {:.2} (last epoch); run directory {} (results.json)",
        outcome.test_ppl.unwrap_or(f64::NAN),
        outcome.val_ppl,
        outcome.run_dir.display()
),
        None,
    )?;
    Ok(())
}

/// True when `run_dir` holds a recurrent (language model) run.
pub fn is_lm_run(run_dir: &Path) -> bool {
    nas_darts::is_lm_run(run_dir)
}

/// `nas eval` on a recurrent run: perplexity of the best or newest checkpoint.
pub fn eval(run_dir: &Path, split: &str, best: bool, opts: &RunOptions, json: bool) -> Result<()> {
    let split = match split {
        "val" | "valid" => "valid",
        "test" => "test",
        other => bail!("unknown split {other:?}; expected test or val"),
    };
    let report = nas_darts::evaluate_lm_run(run_dir, split, best, opts, &mut nas_train::NoProgress)
        .with_context(|| format!("evaluating {}", run_dir.display()))?;
    let text = if json {
        serde_json::to_string_pretty(&serde_json::json!({
            "split": split, "loss": report.loss, "ppl": report.ppl, "tokens": report.tokens,
            "tokens_per_second": report.tokens_per_second,
        }))?
    } else {
        format!(
            "{split}: perplexity {:.2}, loss {:.4}, {} tokens, {:.0} tokens/s",
            report.ppl, report.loss, report.tokens, report.tokens_per_second
        )
    };
    emit(&text, None)
}

/// The search presets for `--help`.
pub fn search_presets_help() -> String {
    crate::run_args::presets_help(LM_SEARCH_PRESETS)
}

/// The retraining presets for `--help`.
pub fn train_presets_help() -> String {
    crate::run_args::presets_help(LM_TRAIN_PRESETS)
}
