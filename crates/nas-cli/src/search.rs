//! `nas search darts`: the DARTS search.

use nas_train::ConfigFile;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use nas_darts::{Order, SearchConfig, PRESETS};
use nas_train::RunOptions;

use crate::data::resolve_data_dir;
use crate::progress::Bars;

#[derive(Debug, Subcommand)]
pub enum SearchCommand {
    /// DARTS on a CNN cell space; with no arguments, the `digits` preset on the embedded
    /// digits (a few minutes on 2 cores).
    Darts(DartsArgs),
    /// DARTS on the recurrent cell space, on a text corpus (PTB); default preset `cpu`.
    #[command(after_help = rnn_after_help())]
    DartsRnn(crate::lm::DartsRnnArgs),
}

fn rnn_after_help() -> String {
    format!("Presets:\n{}", crate::lm::search_presets_help())
}

#[derive(Debug, Args)]
pub struct DartsArgs {
    /// digits, fashion-mnist, mnist, cifar10 or cifar100 [default: the preset's].
    #[arg(long)]
    dataset: Option<String>,
    /// digits, fashion-mnist or paper [default: by data set: digits -> digits,
    /// (fashion-)mnist -> fashion-mnist, cifar -> paper].
    #[arg(long)]
    preset: Option<String>,
    /// A TOML configuration (a whole one, as a run's config.toml) instead of a preset.
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// Override one setting by dotted key, e.g. `--set model.channels=8`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// first or second order architecture gradient.
    #[arg(long)]
    order: Option<Order>,
    /// The seed (initialisation, split, shuffling, augmentation).
    #[arg(long)]
    seed: Option<u64>,
    /// The run directory [default: runs/darts-<dataset>-<unix time>].
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Resume the run in this directory with its own configuration.
    #[arg(long, conflicts_with_all = ["dataset", "preset", "config", "set", "order", "seed"])]
    resume: Option<PathBuf>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The data directory [default: $NAS_DATA_DIR, else ./datasets].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the resolved configuration and stop.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(cmd: SearchCommand) -> Result<()> {
    match cmd {
        SearchCommand::Darts(args) => darts(args),
        SearchCommand::DartsRnn(args) => crate::lm::run_search(args),
    }
}

/// The preset, config file and overrides, in that order.
fn resolve(args: &DartsArgs) -> Result<SearchConfig> {
    let mut cfg = match (&args.config, &args.preset) {
        (Some(path), _) => SearchConfig::from_file(path)?,
        (None, Some(name)) => SearchConfig::preset(name)?,
        (None, None) => SearchConfig::preset(SearchConfig::default_preset_for(
            args.dataset.as_deref().unwrap_or("digits"),
        ))?,
    };
    let mut overrides = Vec::new();
    if let Some(d) = &args.dataset {
        overrides.push(format!("data.dataset=\"{d}\""));
    }
    overrides.extend(args.set.iter().cloned());
    if let Some(order) = args.order {
        let name = match order {
            Order::First => "first",
            Order::Second => "second",
        };
        overrides.push(format!("arch.order=\"{name}\""));
    }
    if let Some(seed) = args.seed {
        overrides.push(format!("run.seed={seed}"));
    }
    cfg = cfg.with_overrides(&overrides)?;
    Ok(cfg)
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
    let opts = RunOptions {
        data_dir: resolve_data_dir(args.data_dir.clone()),
        device: device(&args.device)?,
    };
    let mut bars = Bars::new();
    let outcome = if let Some(dir) = &args.resume {
        nas_darts::resume(dir, &opts, &mut bars)
            .with_context(|| format!("resuming the search in {}", dir.display()))?
    } else {
        let cfg = resolve(&args)?;
        if args.dry_run {
            print!("{}", cfg.to_toml()?);
            return Ok(());
        }
        let out = args.out.clone().unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from(format!("runs/darts-{}-{secs}", cfg.data.dataset))
        });
        nas_darts::search(&cfg, &out, &opts, &mut bars)
            .with_context(|| format!("searching in {}", out.display()))?
    };
    println!("{}", outcome.genotype.to_python()?);
    println!(
        "validation accuracy {:.2}%; run directory {} (genotype.json, genotype.py, genotype.svg, alphas.safetensors)",
        100.0 * outcome.val_accuracy,
        outcome.run_dir.display()
    );
    Ok(())
}

/// The preset list for `--help`.
pub fn presets_help() -> String {
    PRESETS
        .iter()
        .map(|(n, d)| format!("  {n:<14} {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}
