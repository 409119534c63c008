//! `nas plot`: a run's pictures (`curves.svg`, and `controller.svg` or `alphas.svg` for
//! searches) drawn from its `metrics.jsonl` into the run directory; every training and
//! search command draws them when it ends.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::output::emit;

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run directories (a run in progress too: its epochs so far).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
}

pub fn run(args: PlotArgs) -> Result<()> {
    for dir in &args.runs {
        let files = write_run_plots(dir)?;
        let names: Vec<&str> = files.iter().map(|(f, _)| *f).collect();
        let line = if names.is_empty() {
            format!("{}: no epoch finished yet, nothing to draw", dir.display())
        } else {
            format!("{}: {}", dir.display(), names.join(", "))
        };
        emit(&line, None)?;
    }
    Ok(())
}

/// Draws the pictures of the run in `dir` and writes them there atomically; returns the
/// file names and paths written.
pub fn write_run_plots(dir: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    let metrics = dir.join("metrics.jsonl");
    if !dir.join("config.toml").is_file() {
        anyhow::bail!(
            "{} is not a run directory: it has no config.toml",
            dir.display()
        );
    }
    let text = nas_train::read_text(&metrics)?;
    let plots = nas_plot::run_plots(&text, &metrics.display().to_string())?;
    let mut out = Vec::new();
    for plot in plots {
        let path = dir.join(plot.file);
        nas_train::write_atomic(&path, plot.svg.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        out.push((plot.file, path));
    }
    Ok(out)
}
