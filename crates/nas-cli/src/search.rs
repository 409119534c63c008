//! `nas search darts`: the DARTS search.

use nas_train::ConfigFile;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use nas_darts::{Order, SearchConfig, PRESETS};

use crate::output::emit;
use crate::progress::Bars;
use crate::run_args::RunArgs;

#[derive(Debug, Subcommand)]
pub enum SearchCommand {
    /// DARTS on a CNN cell space; with no arguments, the `digits` preset on the embedded
    /// digits (a few minutes on 2 cores).
    Darts(DartsArgs),
    /// DARTS on the recurrent cell space, on a text corpus (PTB); default preset `cpu`.
    #[command(after_help = rnn_after_help())]
    DartsRnn(crate::lm::DartsRnnArgs),
    /// ENAS: an LSTM controller samples children of shared weights (`--space micro`: CNN
    /// cells); with no arguments, the `digits` preset (under a minute on 2 cores).
    #[command(after_help = enas_after_help())]
    Enas(crate::enas::EnasArgs),
}

fn enas_after_help() -> String {
    format!("Presets:\n{}", crate::enas::presets_help())
}

fn rnn_after_help() -> String {
    format!("Presets:\n{}", crate::lm::search_presets_help())
}

#[derive(Debug, Args)]
pub struct DartsArgs {
    #[command(flatten)]
    run: RunArgs,
    /// first or second order architecture gradient.
    #[arg(long, conflicts_with = "resume")]
    order: Option<Order>,
}

/// `--order` as a configuration override.
pub fn order_override(order: Option<Order>) -> Vec<String> {
    order
        .map(|o| {
            let name = match o {
                Order::First => "first",
                Order::Second => "second",
            };
            format!("arch.order=\"{name}\"")
        })
        .into_iter()
        .collect()
}

pub fn run(cmd: SearchCommand) -> Result<()> {
    match cmd {
        SearchCommand::Darts(args) => darts(args),
        SearchCommand::DartsRnn(args) => crate::lm::run_search(args),
        SearchCommand::Enas(args) => crate::enas::run(args),
    }
}

pub fn device(name: &str) -> Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" => candle_core::Device::new_cuda(0).context(
            "no CUDA device: this build of nas has no `cuda` feature or no GPU is present",
        ),
        other => bail!("unknown device {other:?}; expected cpu or cuda"),
    }
}

fn darts(args: DartsArgs) -> Result<()> {
    let opts = args.run.options()?;
    let mut bars = Bars::new();
    let outcome = if let Some(dir) = &args.run.resume {
        nas_darts::resume(dir, &opts, &mut bars)
            .with_context(|| format!("resuming the search in {}", dir.display()))?
    } else {
        let default =
            SearchConfig::default_preset_for(args.run.dataset.as_deref().unwrap_or("digits"));
        let cfg = args
            .run
            .resolve(SearchConfig::preset, default, &order_override(args.order))?;
        if args.run.dry_run {
            emit(&cfg.to_toml()?, None)?;
            return Ok(());
        }
        let out = args.run.out_dir("darts", &cfg.data.dataset);
        nas_darts::search(&cfg, &out, &opts, &mut bars)
            .with_context(|| format!("searching in {}", out.display()))?
    };
    emit(&outcome.genotype.to_python()?, None)?;
    crate::plot::write_run_plots(&outcome.run_dir)?;
    emit(
        &format!(
        "validation accuracy {:.2}%; run directory {} (genotype.json, genotype.py, genotype.svg, alphas.safetensors)",
        100.0 * outcome.val_accuracy,
        outcome.run_dir.display()
),
        None,
    )?;
    Ok(())
}

/// The preset list for `--help`.
pub fn presets_help() -> String {
    crate::run_args::presets_help(PRESETS)
}
