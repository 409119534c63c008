//! `nas search darts-rnn` and `nas train-lm`: DARTS recurrent cells on a text corpus.

use nas_train::ConfigFile;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use nas_darts::{Order, LM_SEARCH_PRESETS};
use nas_retrain::{ArchSection, LmConfig, LmOutcome, LM_TRAIN_PRESETS};
use nas_search_space::Genotype;
use nas_train::RunOptions;

use crate::data::resolve_data_dir;
use crate::output::emit;
use crate::progress::Bars;
use crate::search::device;

/// What both recurrent commands take.
#[derive(Debug, Args)]
pub struct LmCommon {
    /// ptb or wikitext2 [default: the preset's, ptb].
    #[arg(long)]
    dataset: Option<String>,
    /// A preset [default: cpu]; see --help.
    #[arg(long)]
    preset: Option<String>,
    /// A whole TOML configuration (as a run's config.toml) instead of a preset.
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// Override one setting by dotted key, e.g. `--set model.nhid=128`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// The seed (initialisation, dropout masks, window lengths).
    #[arg(long)]
    seed: Option<u64>,
    /// The run directory [default: runs/<command>-<dataset>-<unix time>].
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Resume the run in this directory with its own configuration.
    #[arg(long, conflicts_with_all = ["dataset", "preset", "config", "set", "seed"])]
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

#[derive(Debug, Args)]
pub struct DartsRnnArgs {
    #[command(flatten)]
    common: LmCommon,
    /// first or second order architecture gradient.
    #[arg(long, conflicts_with = "resume")]
    order: Option<Order>,
}

#[derive(Debug, Args)]
pub struct TrainLmArgs {
    /// A bundled recurrent genotype (darts-rnn-v1, darts-rnn-v2, enas-rnn) or a genotype
    /// file (e.g. a search's genotype.json).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    genotype: Option<String>,
    #[command(flatten)]
    common: LmCommon,
}

fn resolve<A: ArchSection, E: std::error::Error + Send + Sync + 'static>(
    common: &LmCommon,
    preset: fn(&str) -> std::result::Result<LmConfig<A>, E>,
    extra: &[String],
) -> Result<LmConfig<A>> {
    let cfg = match (&common.config, &common.preset) {
        (Some(path), _) => LmConfig::from_file(path)?,
        (None, Some(name)) => preset(name)?,
        (None, None) => preset("cpu")?,
    };
    let mut overrides = Vec::new();
    if let Some(d) = &common.dataset {
        overrides.push(format!("data.dataset=\"{d}\""));
    }
    overrides.extend(common.set.iter().cloned());
    overrides.extend(extra.iter().cloned());
    if let Some(seed) = common.seed {
        overrides.push(format!("run.seed={seed}"));
    }
    Ok(cfg.with_overrides(&overrides)?)
}

fn default_out<A>(command: &str, cfg: &LmConfig<A>) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from(format!("runs/{command}-{}-{secs}", cfg.data.dataset))
}

fn options(common: &LmCommon) -> Result<RunOptions> {
    Ok(RunOptions {
        data_dir: resolve_data_dir(common.data_dir.clone()),
        device: device(&common.device)?,
    })
}

fn resume(dir: &Path, opts: &RunOptions, bars: &mut Bars) -> Result<LmOutcome> {
    nas_darts::resume_lm(dir, opts, bars)
        .with_context(|| format!("resuming the run in {}", dir.display()))
}

pub fn run_search(args: DartsRnnArgs) -> Result<()> {
    let opts = options(&args.common)?;
    let mut bars = Bars::new();
    let outcome = if let Some(dir) = &args.common.resume {
        resume(dir, &opts, &mut bars)?
    } else {
        let order: Vec<String> = args
            .order
            .map(|o| {
                let name = match o {
                    Order::First => "first",
                    Order::Second => "second",
                };
                format!("arch.order=\"{name}\"")
            })
            .into_iter()
            .collect();
        let cfg = resolve(&args.common, nas_darts::rnn_search_preset, &order)?;
        if args.common.dry_run {
            print!("{}", cfg.to_toml()?);
            return Ok(());
        }
        let out = args
            .common
            .out
            .clone()
            .unwrap_or_else(|| default_out("darts-rnn", &cfg));
        nas_darts::search_rnn(&cfg, &out, &opts, &mut bars)
            .with_context(|| format!("searching in {}", out.display()))?
    };
    println!("{}", outcome.genotype.to_python());
    println!(
        "validation perplexity {:.2}; run directory {} (genotype.json, genotype.py, genotype.svg, alphas.safetensors)",
        outcome.val_ppl,
        outcome.run_dir.display()
    );
    Ok(())
}

pub fn run_train(args: TrainLmArgs) -> Result<()> {
    let opts = options(&args.common)?;
    let mut bars = Bars::new();
    let outcome = if let Some(dir) = &args.common.resume {
        resume(dir, &opts, &mut bars)?
    } else {
        let cfg = resolve(&args.common, LmConfig::train_preset, &[])?;
        if args.common.dry_run {
            print!("{}", cfg.to_toml()?);
            return Ok(());
        }
        let spec = args.genotype.as_deref().unwrap_or_default();
        let genotype = match crate::genotype::load(spec, None)? {
            Genotype::DartsRnn(g) => g,
            other => bail!(
                "genotype {spec:?} is a {} genotype; nas train-lm takes a DARTS recurrent genotype",
                other.kind().name()
            ),
        };
        let out = args
            .common
            .out
            .clone()
            .unwrap_or_else(|| default_out("train-lm", &cfg));
        nas_retrain::train_lm(&cfg, &genotype, &out, &opts, &mut bars)
            .with_context(|| format!("training in {}", out.display()))?
    };
    println!(
        "test perplexity {:.2}; validation perplexity {:.2} (last epoch); run directory {} (results.json)",
        outcome.test_ppl.unwrap_or(f64::NAN),
        outcome.val_ppl,
        outcome.run_dir.display()
    );
    Ok(())
}

/// True when `run_dir` holds a recurrent (language model) run.
pub fn is_lm_run(run_dir: &Path) -> bool {
    nas_darts::is_lm_run(run_dir)
}

/// `nas eval` on a recurrent run: perplexity of the best or newest checkpoint.
pub fn eval(run_dir: &Path, split: &str, best: bool, opts: &RunOptions, json: bool) -> Result<()> {
    let split = match split {
        "val" | "valid" => "valid",
        "test" => "test",
        other => bail!("unknown split {other:?}; expected test or val"),
    };
    let report = nas_darts::evaluate_lm_run(run_dir, split, best, opts, &mut nas_train::NoProgress)
        .with_context(|| format!("evaluating {}", run_dir.display()))?;
    let text = if json {
        serde_json::to_string_pretty(&serde_json::json!({
            "split": split, "loss": report.loss, "ppl": report.ppl, "tokens": report.tokens,
            "tokens_per_second": report.tokens_per_second,
        }))?
    } else {
        format!(
            "{split}: perplexity {:.2}, loss {:.4}, {} tokens, {:.0} tokens/s",
            report.ppl, report.loss, report.tokens, report.tokens_per_second
        )
    };
    emit(&text, None)
}

fn presets(list: &[(&str, &str)]) -> String {
    list.iter()
        .map(|(n, d)| format!("  {n:<14} {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The search presets for `--help`.
pub fn search_presets_help() -> String {
    presets(LM_SEARCH_PRESETS)
}

/// The retraining presets for `--help`.
pub fn train_presets_help() -> String {
    presets(LM_TRAIN_PRESETS)
}
