//! `nas count`: parameter and multiply-accumulate counts of the networks, computed by
//! building them.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use nas_darts::SearchCnnConfig;
use nas_models::{count, EvalGenotype, EvalNetConfig};
use nas_search_space::Genotype;

use crate::output::emit;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Model {
    /// The DARTS search network (architecture weights apart).
    SearchCnn,
    /// A genotype's CIFAR evaluation network (defaults: C=36, 20 layers, 10 classes).
    Cifar,
    /// A genotype's ImageNet network, mobile setting (defaults: C=48, 14 layers, 1000 classes).
    Imagenet,
    /// A recurrent genotype's PTB language model (defaults: emsize = nhid = 850, vocab 10000).
    Ptb,
    /// The DARTS recurrent search model (defaults: emsize = nhid = 300, vocab 10000, 8 nodes).
    SearchRnn,
    /// ENAS's shared-weight micro child (defaults as the reference's CIFAR-10 search:
    /// F = 20 filters (`--channels`), L = 6 (`--layers`, L + 2 layers), 5 nodes, 10 classes).
    EnasMicroSearch,
    /// ENAS's controller (`--space micro`; default 64 LSTM units, `--lstm-size`).
    EnasController,
}

#[derive(Debug, Args)]
pub struct CountArgs {
    /// Which network.
    #[arg(long, value_enum)]
    model: Model,
    /// A bundled genotype name or a genotype file (cifar and imagenet).
    #[arg(long)]
    genotype: Option<String>,
    /// `C`, the first cells' channels [default: 16 search-cnn, 36 cifar, 48 imagenet].
    #[arg(long)]
    channels: Option<usize>,
    /// Number of cells [default: 8 search-cnn, 20 cifar (17 for ENAS micro cells), 14 imagenet].
    #[arg(long)]
    layers: Option<usize>,
    /// Number of classes [default: 10, 1000 for imagenet].
    #[arg(long)]
    classes: Option<usize>,
    /// Image channels.
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    /// Embedding size (ptb, search-rnn) [default: 850 ptb, 300 search-rnn].
    #[arg(long)]
    emsize: Option<usize>,
    /// Hidden size (ptb, search-rnn) [default: the embedding size].
    #[arg(long)]
    nhid: Option<usize>,
    /// Vocabulary size (ptb, search-rnn).
    #[arg(long, default_value_t = 10_000)]
    vocab: usize,
    /// Build the network with its auxiliary head. `params` never counts the head (the
    /// papers' convention); `params_with_aux` always does.
    #[arg(long)]
    auxiliary: bool,
    /// The ENAS search space (enas-controller).
    #[arg(long, value_enum)]
    space: Option<crate::enas::Space>,
    /// LSTM units of the ENAS controller.
    #[arg(long, default_value_t = 64)]
    lstm_size: usize,
    /// Nodes per ENAS cell.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn count_enas(args: &CountArgs) -> Result<()> {
    if args.genotype.is_some() {
        bail!("--genotype does not apply to the ENAS search models: they hold every cell");
    }
    let (model, config, params, with_aux) = match args.model {
        Model::EnasController => {
            let Some(crate::enas::Space::Micro) = args.space else {
                bail!("--space micro is needed for enas-controller (the only ENAS space so far)");
            };
            let cfg = nas_enas::ControllerConfig {
                lstm_size: args.lstm_size,
                nodes: args.nodes,
                ..nas_enas::ControllerConfig::default()
            };
            cfg.validate("")?;
            let n = cfg.parameters();
            ("enas-controller", serde_json::to_value(cfg)?, n, None)
        }
        _ => {
            let cfg = nas_enas::MicroChildConfig {
                in_channels: args.in_channels,
                classes: args.classes.unwrap_or(10),
                filters: args.channels.unwrap_or(20),
                layers: args.layers.unwrap_or(6),
                nodes: args.nodes,
                ..nas_enas::MicroChildConfig::reference()
            };
            let (body, all) = cfg.parameters()?;
            (
                "enas-micro-search",
                serde_json::to_value(cfg)?,
                body,
                Some(all),
            )
        }
    };
    let text = if args.json {
        serde_json::to_string_pretty(&serde_json::json!({
            "model": model, "config": config, "params": params, "params_with_aux": with_aux,
        }))?
    } else {
        let aux = with_aux.map_or(String::new(), |a| {
            format!(", {a} with the auxiliary head (the reference counts it apart)")
        });
        format!(
            "{model}: {params} parameters ({:.2}M){aux}",
            params as f64 / 1e6
        )
    };
    emit(&text, None)
}

fn count_rnn(args: &CountArgs) -> Result<()> {
    let (genotype, default) = match args.model {
        Model::Ptb => {
            let Some(spec) = &args.genotype else {
                bail!("--genotype NAME|FILE is needed for the ptb model");
            };
            match crate::genotype::load(spec, None)? {
                Genotype::DartsRnn(g) => (Some((spec.clone(), g)), 850),
                other => bail!(
                    "genotype {spec:?} is a {} genotype; the ptb model takes a DARTS recurrent genotype",
                    other.kind().name()
                ),
            }
        }
        _ => {
            if args.genotype.is_some() {
                bail!("--genotype does not apply to search-rnn: the search cell holds every activation");
            }
            (None, 300)
        }
    };
    let emsize = args.emsize.unwrap_or(default);
    let nhid = args.nhid.unwrap_or(emsize);
    let n = nas_models::count_lm(
        genotype.as_ref().map(|(_, g)| g),
        emsize,
        nhid,
        args.vocab,
        nas_models::RNN_STEPS,
    )?;
    let model = match args.model {
        Model::Ptb => "ptb",
        _ => "search-rnn",
    };
    let name = genotype.as_ref().map_or("search cell", |(s, _)| s.as_str());
    let text = if args.json {
        serde_json::to_string_pretty(&serde_json::json!({
            "model": model, "genotype": genotype.as_ref().map(|(s, _)| s),
            "emsize": emsize, "nhid": nhid, "vocab": args.vocab, "params": n,
        }))?
    } else {
        format!(
            "{model} {name} emsize={emsize} nhid={nhid} vocab={}: {n} parameters ({:.2}M)",
            args.vocab,
            n as f64 / 1e6
        )
    };
    emit(&text, None)
}

pub fn run(args: CountArgs) -> Result<()> {
    match args.model {
        Model::Ptb | Model::SearchRnn => count_rnn(&args),
        Model::EnasMicroSearch | Model::EnasController => count_enas(&args),
        Model::SearchCnn => {
            if args.genotype.is_some() {
                bail!("--genotype does not apply to search-cnn: the search network holds every op");
            }
            let cfg = SearchCnnConfig {
                in_channels: args.in_channels,
                channels: args.channels.unwrap_or(16),
                layers: args.layers.unwrap_or(8),
                classes: args.classes.unwrap_or(10),
                ..SearchCnnConfig::paper()
            };
            // Counted from the sizes: nothing is allocated, whatever the sizes.
            cfg.validate()?;
            let n = cfg.parameters();
            let text = if args.json {
                serde_json::to_string_pretty(&serde_json::json!({
                    "model": "search-cnn",
                    "config": cfg,
                    "params": n,
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
        Model::Cifar | Model::Imagenet => {
            let Some(spec) = &args.genotype else {
                bail!(
                    "--genotype NAME|FILE is needed for the {:?} network",
                    args.model
                );
            };
            let genotype = EvalGenotype::from_genotype(crate::genotype::load(spec, None)?)
                .with_context(|| format!("genotype {spec:?}"))?;
            let base = match (args.model, &genotype) {
                (Model::Cifar, EvalGenotype::EnasMicro(_)) => EvalNetConfig::enas_paper(),
                (Model::Cifar, _) => EvalNetConfig::cifar_paper(),
                _ => EvalNetConfig::imagenet_paper(),
            };
            let cfg = EvalNetConfig {
                in_channels: args.in_channels,
                channels: args.channels.unwrap_or(base.channels),
                layers: args.layers.unwrap_or(base.layers),
                classes: args.classes.unwrap_or(base.classes),
                auxiliary: args.auxiliary,
                ..base
            };
            let counts = count(&genotype, cfg)?;
            // The papers' convention: the auxiliary head is never in "parameters".
            let params = counts.params;
            let text = if args.json {
                serde_json::to_string_pretty(&serde_json::json!({
                    "model": format!("{:?}", args.model).to_lowercase(),
                    "genotype": spec,
                    "config": cfg,
                    "params": params,
                    "params_with_aux": counts.params_with_aux,
                    "mult_adds": counts.mult_adds,
                }))?
            } else {
                format!(
                    "{spec} C={} layers={} classes={}: {params} parameters ({:.2}M), {} with the auxiliary head, {} multiply-adds ({:.0}M) at {}x{}",
                    cfg.channels,
                    cfg.layers,
                    cfg.classes,
                    params as f64 / 1e6,
                    counts.params_with_aux,
                    counts.mult_adds,
                    counts.mult_adds as f64 / 1e6,
                    cfg.input_size(),
                    cfg.input_size()
                )
            };
            emit(&text, None)
        }
    }
}
