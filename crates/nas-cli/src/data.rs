//! `nas data ...`: what the data sets hold, and importing them from local files.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use nas_data::{import, Dataset, Shape};

use crate::output::emit;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Counts per split, classes or vocabulary size, image shape, checksum status.
    Info {
        /// cifar10, cifar100, mnist, fashion-mnist, digits, ptb, wikitext2 or imagenet.
        dataset: String,
        /// The data directory [default: $NAS_DATA_DIR, else ./datasets].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Import a data set from files on this machine, verified, into the data directory.
    ///
    /// This command never touches the network: it copies from a local mirror folder
    /// (laid out as datasets/README.md describes: the published files, plain ones checked
    /// against their md5, archives by their CRCs; everything is read back afterwards)
    /// or, for imagenet, from an ImageFolder tree or a .tar of one (--from).
    /// To download from the official sources, run `cargo xtask download <dataset>` in
    /// the project.
    #[command(verbatim_doc_comment)]
    Fetch {
        /// cifar10, cifar100, mnist, fashion-mnist, digits, ptb, wikitext2 or imagenet.
        dataset: String,
        /// The data directory [default: $NAS_DATA_DIR, else ./datasets].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The mirror folder [default: $NAS_DATA_MIRROR].
        #[arg(long)]
        mirror: Option<PathBuf>,
        /// imagenet only: an ImageFolder tree (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG)
        /// or a .tar (.tar.gz) of one.
        #[arg(long)]
        from: Option<PathBuf>,
    },
}

/// `--data-dir`, else `NAS_DATA_DIR`, else `./datasets`.
pub fn resolve_data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("NAS_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("datasets"))
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Fetch {
            dataset,
            data_dir,
            mirror,
            from,
        } => {
            let dataset = Dataset::from_name(&dataset)?;
            let dir = resolve_data_dir(data_dir);
            let name = dataset.name();
            if dataset == Dataset::Imagenet {
                let Some(from) = from else {
                    bail!(
                        "imagenet cannot be downloaded: pass an ImageFolder tree \
                         (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) or a .tar of one with \
                         `nas data fetch imagenet --from <folder or .tar>`"
                    );
                };
                let found = import::import_imagenet(&from, &dir)
                    .with_context(|| format!("importing imagenet from {from:?}"))?;
                let text = format!(
                    "imagenet is in {}: {} classes, train {} images, val {} images ({} other files left out)\n",
                    dataset.folder(&dir).display(),
                    found.classes,
                    found.train,
                    found.val,
                    found.skipped
                );
                return emit(&text, None);
            }
            if from.is_some() {
                bail!("--from is for imagenet only; {name} comes from a mirror (--mirror DIR)");
            }
            let Some(mirror) =
                mirror.or_else(|| std::env::var_os("NAS_DATA_MIRROR").map(PathBuf::from))
            else {
                bail!(
                    "nas data fetch imports from a local mirror only: pass --mirror DIR or set \
                     NAS_DATA_MIRROR; to download {name} from its official source run \
                     `{}` in the project",
                    dataset.fetch_command(&dir)
                );
            };
            import::from_mirror(dataset, &mirror, &dir)
                .with_context(|| format!("importing {name} from the mirror {mirror:?}"))?;
            // Read it back: counts, labels and formats are checked on the way.
            let info = dataset
                .info(&dir)
                .with_context(|| format!("checking {name} in {dir:?}"))?;
            let splits: Vec<String> = info
                .splits
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            emit(
                &format!("{name} is in {}: {}\n", info.location, splits.join(", ")),
                None,
            )
        }
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
                    "shape": match info.shape {
                        Shape::Fixed(s) => serde_json::json!(s),
                        Shape::VariableJpeg => serde_json::json!(info.shape.to_string()),
                        Shape::Text => serde_json::Value::Null,
                    },
                    "checksums": info.checksums.iter().map(|(f, s)| serde_json::json!({"file": f, "status": s})).collect::<Vec<_>>(),
                });
                return emit(&serde_json::to_string_pretty(&value)?, None);
            }
            let mut text = format!("{} ({})\n", info.name, info.location);
            for (split, n) in &info.splits {
                let unit = if info.shape == Shape::Text {
                    "tokens"
                } else {
                    "images"
                };
                text.push_str(&format!("  {split:<6} {n} {unit}\n"));
            }
            match info.shape {
                Shape::Text => text.push_str(&format!("  vocabulary {}\n", info.classes)),
                shape => text.push_str(&format!("  classes {}, images {shape}\n", info.classes)),
            }
            for (file, status) in &info.checksums {
                text.push_str(&format!("  {file}: {status}\n"));
            }
            emit(&text, None)
        }
    }
}
