//! `nas import`: a reference DARTS checkpoint (PyTorch state dict) as our weights.

use std::path::PathBuf;

use crate::output::emit;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use nas_models::{
    import_reference, reference_cifar_normalize, reference_imagenet_normalize, write_weights,
    EvalNetConfig,
};
use nas_search_space::Genotype;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Network {
    /// `NetworkCIFAR` (defaults C=36, 20 layers, 10 classes).
    Cifar,
    /// `NetworkImageNet` (defaults C=48, 14 layers, 1000 classes).
    Imagenet,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The reference checkpoint (`torch.save(model.state_dict(), path)`).
    #[arg(long)]
    from: PathBuf,
    /// The genotype it was trained with: a bundled name or a file.
    #[arg(long)]
    genotype: String,
    /// Which network.
    #[arg(long, value_enum)]
    model: Network,
    /// `C` [default: 36 cifar, 48 imagenet].
    #[arg(long)]
    channels: Option<usize>,
    /// Cells [default: 20 cifar, 14 imagenet].
    #[arg(long)]
    layers: Option<usize>,
    /// Classes [default: 10 cifar, 1000 imagenet].
    #[arg(long)]
    classes: Option<usize>,
    /// The checkpoint has the auxiliary head.
    #[arg(long)]
    auxiliary: bool,
    /// The safetensors file to write (atomically).
    #[arg(long, short = 'o')]
    output: PathBuf,
}

pub fn run(args: ImportArgs) -> Result<()> {
    let genotype = match crate::genotype::load(&args.genotype, None)? {
        Genotype::DartsCnn(g) => g,
        other => bail!(
            "genotype {:?} is a {} genotype; the DARTS networks take a DARTS CNN genotype",
            args.genotype,
            other.kind().name()
        ),
    };
    let base = match args.model {
        Network::Cifar => EvalNetConfig::cifar_paper(),
        Network::Imagenet => EvalNetConfig::imagenet_paper(),
    };
    let cfg = EvalNetConfig {
        channels: args.channels.unwrap_or(base.channels),
        layers: args.layers.unwrap_or(base.layers),
        classes: args.classes.unwrap_or(base.classes),
        auxiliary: args.auxiliary,
        ..base
    };
    let tensors = import_reference(&args.from, &genotype, cfg)?;
    let normalize = match args.model {
        Network::Cifar => reference_cifar_normalize(),
        Network::Imagenet => reference_imagenet_normalize(),
    };
    // The network, genotype and normalisation travel in the file's metadata, so that
    // `nas eval --checkpoint FILE` can rebuild the network.
    let cells = nas_models::EvalGenotype::Darts(genotype);
    write_weights(&args.output, &tensors, &cfg, &cells, &normalize)
        .with_context(|| format!("writing {}", args.output.display()))?;
    emit(
        &format!(
            "{} tensors from {} written to {}",
            tensors.len(),
            args.from.display(),
            args.output.display()
        ),
        None,
    )?;
    Ok(())
}
