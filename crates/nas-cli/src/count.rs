//! `nas count`: parameter counts of the networks, computed by building them.

use anyhow::Result;
use clap::{Args, ValueEnum};
use nas_darts::{count_parameters, SearchCnnConfig};

use crate::output::emit;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Model {
    /// The DARTS search network (architecture weights apart).
    SearchCnn,
}

#[derive(Debug, Args)]
pub struct CountArgs {
    /// Which network.
    #[arg(long, value_enum)]
    model: Model,
    /// `C`, the first cells' channels.
    #[arg(long, default_value_t = 16)]
    channels: usize,
    /// Number of cells.
    #[arg(long, default_value_t = 8)]
    layers: usize,
    /// Number of classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Image channels.
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CountArgs) -> Result<()> {
    match args.model {
        Model::SearchCnn => {
            let cfg = SearchCnnConfig {
                in_channels: args.in_channels,
                channels: args.channels,
                layers: args.layers,
                classes: args.classes,
                ..SearchCnnConfig::paper()
            };
            let n = count_parameters(cfg)?;
            let text = if args.json {
                serde_json::to_string_pretty(&serde_json::json!({
                    "model": "search-cnn",
                    "config": cfg,
                    "parameters": n,
                }))?
            } else {
                format!(
                    "search-cnn C={} layers={} classes={}: {n} parameters ({:.6}M)",
                    cfg.channels,
                    cfg.layers,
                    cfg.classes,
                    n as f64 / 1e6
                )
            };
            emit(&text, None)
        }
    }
}
