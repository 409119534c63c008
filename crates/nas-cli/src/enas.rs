//! `nas search enas`: the ENAS search (micro cells).

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use nas_enas::{EnasSearchConfig, PRESETS};
use nas_train::ConfigFile;

use crate::output::emit;
use crate::progress::Bars;
use crate::run_args::RunArgs;

/// ENAS's search spaces (the macro and recurrent ones come with their issues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Space {
    /// CNN cells: a normal and a reduction cell of 5 nodes (ENAS section 2.4).
    Micro,
}

/// Which policy samples the children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// ENAS's LSTM controller trained with REINFORCE.
    Lstm,
    /// Uniformly random children, no controller training (the paper's ablation).
    Random,
}

#[derive(Debug, Args)]
pub struct EnasArgs {
    /// The search space.
    #[arg(long, value_enum, default_value = "micro")]
    space: Space,
    /// The policy [default: the configuration's, `lstm` in every preset].
    #[arg(long, value_enum, conflicts_with = "resume")]
    controller: Option<Policy>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(args: EnasArgs) -> Result<()> {
    let Space::Micro = args.space;
    let opts = args.run.options()?;
    let mut bars = Bars::new();
    let outcome = if let Some(dir) = &args.run.resume {
        nas_enas::resume(dir, &opts, &mut bars)
            .with_context(|| format!("resuming the search in {}", dir.display()))?
    } else {
        let default =
            EnasSearchConfig::default_preset_for(args.run.dataset.as_deref().unwrap_or("digits"));
        let extra: Vec<String> = args
            .controller
            .map(|p| {
                let name = match p {
                    Policy::Lstm => "lstm",
                    Policy::Random => "random",
                };
                format!("controller.kind=\"{name}\"")
            })
            .into_iter()
            .collect();
        let cfg = args
            .run
            .resolve(EnasSearchConfig::preset, default, &extra)?;
        if args.run.dry_run {
            emit(&cfg.to_toml()?, None)?;
            return Ok(());
        }
        let out = args.run.out_dir("enas", &cfg.data.dataset);
        nas_enas::search(&cfg, &out, &opts, &mut bars)
            .with_context(|| format!("searching in {}", out.display()))?
    };
    emit(&outcome.genotype.to_arc(), None)?;
    let log_prob = outcome.log_prob.map_or(String::new(), |lp| {
        format!(", controller log-probability {lp:.3}")
    });
    crate::plot::write_run_plots(&outcome.run_dir)?;
    emit(
        &format!(
            "best of the final samples: {:.2}% on its validation batch{log_prob}; run directory {} (genotype.json, genotype.arc, genotype.svg, derive.json)",
            100.0 * outcome.accuracy,
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
