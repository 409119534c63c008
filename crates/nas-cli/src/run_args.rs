//! The arguments of every command that starts or resumes a run (`search darts`,
//! `search darts-rnn`, `train`, `train-lm`), declared once, and what they resolve to.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use nas_train::{ConfigFile, RunOptions};

use crate::data::resolve_data_dir;
use crate::search::device;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The data set (`nas data list` names them) [default: the preset's].
    #[arg(long)]
    pub dataset: Option<String>,
    /// A preset (listed below) [default: chosen by the data set].
    #[arg(long)]
    pub preset: Option<String>,
    /// A whole TOML configuration (as a run's config.toml) instead of a preset.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// Override one setting by dotted key, e.g. `--set run.epochs=2`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The run's seed; every random stream of the run derives from it.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The run directory [default: runs/<command>-<dataset>-<unix time>].
    #[arg(long, conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Resume the run in this directory with its own configuration.
    #[arg(long, conflicts_with_all = ["dataset", "preset", "config", "set", "seed"])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub place: PlaceArgs,
    /// Print the resolved configuration and stop.
    #[arg(long)]
    pub dry_run: bool,
}

/// Where a command runs and reads its data (also `nas eval`'s).
#[derive(Debug, Args)]
pub struct PlaceArgs {
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The data directory [default: $NAS_DATA_DIR, else ./datasets].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl PlaceArgs {
    /// The data directory and device.
    pub fn options(&self) -> Result<RunOptions> {
        Ok(RunOptions {
            data_dir: resolve_data_dir(self.data_dir.clone()),
            device: device(&self.device)?,
        })
    }
}

impl RunArgs {
    /// The data directory and device.
    pub fn options(&self) -> Result<RunOptions> {
        self.place.options()
    }

    /// The configuration: `--config`, else `--preset`, else the preset `default`; then
    /// the overrides `--dataset`, `--set`, the command's own `extra`, `--seed`, in that
    /// order (later ones win).
    pub fn resolve<C, E>(
        &self,
        preset: impl Fn(&str) -> std::result::Result<C, E>,
        default: &str,
        extra: &[String],
    ) -> Result<C>
    where
        C: ConfigFile,
        C::Error: std::error::Error + Send + Sync + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let cfg = match (&self.config, &self.preset) {
            (Some(path), _) => C::from_file(path)?,
            (None, Some(name)) => preset(name)?,
            (None, None) => preset(default)?,
        };
        let mut overrides = Vec::new();
        if let Some(d) = &self.dataset {
            overrides.push(format!("data.dataset=\"{d}\""));
        }
        overrides.extend(self.set.iter().cloned());
        overrides.extend(extra.iter().cloned());
        if let Some(seed) = self.seed {
            overrides.push(format!("run.seed={seed}"));
        }
        Ok(cfg.with_overrides(&overrides)?)
    }

    /// `--out`, or `runs/<command>-<dataset>-<unix time>`.
    pub fn out_dir(&self, command: &str, dataset: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from(format!("runs/{command}-{dataset}-{secs}"))
        })
    }
}

/// A preset table as `--help` lists it.
pub fn presets_help(list: &[(&str, &str)]) -> String {
    list.iter()
        .map(|(n, d)| format!("  {n:<14} {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}
