//! `nas data ...`: what the data sets hold.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use nas_data::Dataset;

use crate::output::emit;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Counts per split, classes or vocabulary size, image shape, checksum status.
    Info {
        /// cifar10, cifar100, mnist, fashion-mnist, digits, ptb or wikitext2.
        dataset: String,
        /// The data directory [default: $NAS_DATA_DIR, else ./datasets].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `--data-dir`, else `NAS_DATA_DIR`, else `./datasets`.
pub fn resolve_data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("NAS_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("datasets"))
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Info {
            dataset,
            data_dir,
            json,
        } => {
            let dataset = Dataset::from_name(&dataset)?;
            let dir = resolve_data_dir(data_dir);
            let info = dataset
                .info(&dir)
                .with_context(|| format!("reading {} from {dir:?}", dataset.name()))?;
            if json {
                let value = serde_json::json!({
                    "dataset": info.name,
                    "location": info.location,
                    "splits": info.splits.iter().map(|(s, n)| serde_json::json!({"split": s, "examples": n})).collect::<Vec<_>>(),
                    "classes_or_vocab": info.classes,
                    "shape": info.shape,
                    "checksums": info.checksums.iter().map(|(f, s)| serde_json::json!({"file": f, "status": s})).collect::<Vec<_>>(),
                });
                return emit(&serde_json::to_string_pretty(&value)?, None);
            }
            let mut text = format!("{} ({})\n", info.name, info.location);
            for (split, n) in &info.splits {
                let unit = if info.shape.is_some() {
                    "images"
                } else {
                    "tokens"
                };
                text.push_str(&format!("  {split:<6} {n} {unit}\n"));
            }
            match info.shape {
                Some([c, h, w]) => {
                    text.push_str(&format!("  classes {}, images {c}x{h}x{w}\n", info.classes))
                }
                None => text.push_str(&format!("  vocabulary {}\n", info.classes)),
            }
            for (file, status) in &info.checksums {
                text.push_str(&format!("  {file}: {status}\n"));
            }
            emit(&text, None)
        }
    }
}
