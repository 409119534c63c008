//! `nas genotype ...`: list, show, convert, derive and draw genotypes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use nas_search_space::{
    bundled, derive_cnn, derive_rnn, to_dot, to_svg, Genotype, GenotypeKind, TextFormat, BUNDLED,
};

use crate::alphas::Alphas;
use crate::output::emit;

#[derive(Debug, Subcommand)]
pub enum GenotypeCommand {
    /// List the bundled published genotypes.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a bundled genotype or a genotype file in another format.
    Show {
        /// A bundled name (see `nas genotype list`) or a file: JSON, Python notation, or an
        /// ENAS arc string (then give --space).
        genotype: String,
        /// The search space of an arc-string file.
        #[arg(long, value_enum)]
        space: Option<ArcSpace>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// A random genotype (DARTS CNN: 2 inputs per node; DARTS RNN: 8 nodes, one input
    /// each; never `none`; ENAS micro: 5 nodes, inputs and ops uniform): the baseline a
    /// search must beat.
    Random {
        /// The seed; the same seed gives the same genotype.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// darts-cnn, darts-rnn or enas-micro.
        #[arg(long, value_enum, default_value = "darts-cnn")]
        space: RandomSpace,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Derive a discrete genotype from raw architecture weights (before softmax).
    Derive {
        /// Which derivation rule: DARTS CNN (k inputs per node) or DARTS RNN (one per node).
        #[arg(long, value_enum)]
        space: DeriveSpace,
        /// JSON (`{"normal": [[8 floats] x 14], "reduce": ...}` or `{"recurrent": [[5 floats] x 36]}`)
        /// or safetensors with tensors `normal`/`reduce` (or a search's `alphas_normal`/`alphas_reduce`)
        /// or `recurrent` (or a recurrent search's `weights`).
        #[arg(long)]
        alphas: PathBuf,
        /// Inputs kept per node (CNN: 1 or 2, default 2; RNN: 1).
        #[arg(long)]
        k: Option<usize>,
        #[command(flatten)]
        out: OutputArgs,
    },
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format [default: python for DARTS genotypes, arc for ENAS ones].
    #[arg(long, short = 'f', value_enum)]
    format: Option<Format>,
    /// Write to this file (atomically) instead of stdout.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// The DARTS reference's Python notation.
    Python,
    /// JSON with a `kind` field.
    Json,
    /// ENAS's arc string.
    Arc,
    /// Graphviz DOT.
    Dot,
    /// SVG, laid out without Graphviz.
    Svg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ArcSpace {
    /// ENAS micro (CNN cells).
    #[value(name = "enas-micro")]
    Micro,
    /// ENAS macro (whole CNN).
    #[value(name = "enas-macro")]
    Macro,
    /// ENAS recurrent cell.
    #[value(name = "enas-rnn")]
    Rnn,
}

impl From<ArcSpace> for GenotypeKind {
    fn from(s: ArcSpace) -> Self {
        match s {
            ArcSpace::Micro => GenotypeKind::EnasMicro,
            ArcSpace::Macro => GenotypeKind::EnasMacro,
            ArcSpace::Rnn => GenotypeKind::EnasRnn,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RandomSpace {
    /// DARTS CNN cells.
    DartsCnn,
    /// A DARTS recurrent cell.
    DartsRnn,
    /// ENAS micro cells.
    EnasMicro,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeriveSpace {
    /// DARTS CNN cells: matrices `normal` and `reduce`, 8 columns.
    DartsCnn,
    /// DARTS recurrent cell: matrix `recurrent`, 5 columns.
    DartsRnn,
}

pub fn run(cmd: GenotypeCommand) -> Result<()> {
    match cmd {
        GenotypeCommand::List { json } => list(json),
        GenotypeCommand::Show {
            genotype,
            space,
            out,
        } => {
            let genotype = load(&genotype, space.map(GenotypeKind::from))?;
            write(&genotype, &out)
        }
        GenotypeCommand::Random { seed, space, out } => {
            let genotype = match space {
                RandomSpace::DartsCnn => {
                    Genotype::DartsCnn(nas_search_space::random_cnn(seed, 4, 2)?)
                }
                RandomSpace::DartsRnn => Genotype::DartsRnn(nas_search_space::random_rnn(seed, 8)?),
                RandomSpace::EnasMicro => {
                    Genotype::EnasMicro(nas_search_space::random_enas_micro(seed, 5)?)
                }
            };
            write(&genotype, &out)
        }
        GenotypeCommand::Derive {
            space,
            alphas,
            k,
            out,
        } => {
            let genotype = derive(space, &alphas, k)?;
            write(&genotype, &out)
        }
    }
}

fn list(json: bool) -> Result<()> {
    if json {
        let items: Vec<_> = BUNDLED
            .iter()
            .map(|b| {
                serde_json::json!({
                    "name": b.name,
                    "kind": b.kind.name(),
                    "source": b.source,
                    "genotype": b.genotype(),
                })
            })
            .collect();
        return emit(&serde_json::to_string_pretty(&items)?, None);
    }
    let width = BUNDLED.iter().map(|b| b.name.len()).max().unwrap_or(0);
    let mut text = format!("{:width$}  {:10}  source\n", "name", "kind");
    for b in BUNDLED {
        text.push_str(&format!(
            "{:width$}  {:10}  {}\n",
            b.name,
            b.kind.name(),
            b.source
        ));
    }
    emit(&text, None)
}

/// A bundled name, else a file.
pub fn load(spec: &str, arc_kind: Option<GenotypeKind>) -> Result<Genotype> {
    if BUNDLED.iter().any(|b| b.name == spec) {
        return Ok(bundled(spec)?);
    }
    let path = Path::new(spec);
    if !path.exists() {
        // Reuse the library's message, which lists the bundled names.
        let err = bundled(spec).expect_err("not a bundled name");
        bail!("{err}, and no file {spec:?} exists");
    }
    let text = nas_train::read_text(path)?;
    if arc_kind.is_none() && text.trim_start().starts_with(|c: char| c.is_ascii_digit()) {
        bail!("{path:?} holds an ENAS arc string, which does not say its search space: give --space enas-micro, enas-macro or enas-rnn");
    }
    Genotype::parse(&text, arc_kind).with_context(|| format!("reading genotype {path:?}"))
}

fn derive(space: DeriveSpace, path: &Path, k: Option<usize>) -> Result<Genotype> {
    let mut alphas = Alphas::read(path)?;
    let context = || format!("deriving from {path:?}");
    match space {
        DeriveSpace::DartsCnn => {
            let normal = alphas.take("normal", "darts-cnn")?;
            let reduce = alphas.take("reduce", "darts-cnn")?;
            let genotype = derive_cnn(&normal, &reduce, k.unwrap_or(2)).with_context(context)?;
            Ok(Genotype::DartsCnn(genotype))
        }
        DeriveSpace::DartsRnn => {
            if let Some(k) = k.filter(|&k| k != 1) {
                bail!("--k {k}: a DARTS recurrent cell takes exactly one input per node");
            }
            let recurrent = alphas.take("recurrent", "darts-rnn")?;
            Ok(Genotype::DartsRnn(
                derive_rnn(&recurrent).with_context(context)?,
            ))
        }
    }
}

fn write(genotype: &Genotype, out: &OutputArgs) -> Result<()> {
    let text = match out.format {
        None => genotype.to_text(genotype.native_format())?,
        Some(Format::Python) => genotype.to_text(TextFormat::Python)?,
        Some(Format::Json) => genotype.to_text(TextFormat::Json)?,
        Some(Format::Arc) => genotype.to_text(TextFormat::Arc)?,
        Some(Format::Dot) => to_dot(genotype),
        Some(Format::Svg) => to_svg(genotype)?,
    };
    emit(&text, out.output.as_deref())
}
