//! `nas`: the command-line front end of candle-nas.
//!
//! Every failure is reported as one line on stderr with exit status 2.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A caching allocator: training steps allocate and free the same large blocks over and
/// over, which the system allocator hands back to the kernel (page faults every step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod alphas;
mod count;
mod data;
mod enas;
mod genotype;
mod import;
mod lm;
mod output;
mod plot;
mod progress;
mod run_args;
mod search;
mod train;

/// Neural architecture search (DARTS, ENAS) on candle.
#[derive(Debug, Parser)]
#[command(name = "nas", version, about, long_about = None)]
struct Cli {
    /// More log output on stderr (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Start a run even when its memory estimate exceeds what the machine has available.
    #[arg(long, global = true)]
    no_memory_check: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List, show, convert, derive and draw genotypes.
    #[command(subcommand)]
    Genotype(genotype::GenotypeCommand),
    /// Inspect the data sets, and import them from a mirror or an ImageNet tree.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Run an architecture search.
    #[command(subcommand, after_help = search_after_help())]
    Search(search::SearchCommand),
    /// Train a genotype from scratch; the test set is evaluated once, at the end.
    #[command(after_help = train_after_help())]
    Train(train::TrainArgs),
    /// Train a recurrent cell (a language model) from scratch with NT-ASGD; the test
    /// perplexity of the best checkpoint is measured at the end.
    #[command(after_help = train_lm_after_help())]
    TrainLm(lm::TrainLmArgs),
    /// Evaluate a training run's checkpoint (accuracy, or perplexity for a recurrent run).
    Eval(train::EvalArgs),
    /// Count a network's parameters and multiply-adds.
    Count(count::CountArgs),
    /// Convert a reference DARTS checkpoint (PyTorch) into safetensors weights.
    Import(import::ImportArgs),
    /// Draw a run's curves (and its controller's or edge weights' evolution) as SVG.
    Plot(plot::PlotArgs),
}

fn train_after_help() -> String {
    format!("Presets:\n{}", train::presets_help())
}

fn train_lm_after_help() -> String {
    format!("Presets:\n{}", lm::train_presets_help())
}

fn search_after_help() -> String {
    format!("Presets of `search darts`:\n{}", search::presets_help())
}

fn main() -> ExitCode {
    // Thread pools and allocator (see `nas_ops::runtime`); before any thread exists.
    nas_ops::runtime::configure_process();
    let cli = Cli::parse();
    if cli.no_memory_check {
        nas_train::disable_memory_check();
    }
    // Training commands log their epochs by default; the others only warnings.
    let trains = matches!(
        cli.command,
        Command::Search(_) | Command::Train(_) | Command::TrainLm(_)
    );
    init_tracing(cli.verbose + u8::from(trains));
    let result = match cli.command {
        Command::Genotype(cmd) => genotype::run(cmd),
        Command::Data(cmd) => data::run(cmd),
        Command::Search(cmd) => search::run(cmd),
        Command::Train(args) => train::run_train(args),
        Command::TrainLm(args) => lm::run_train(args),
        Command::Eval(args) => train::run_eval(args),
        Command::Count(args) => count::run(args),
        Command::Import(args) => import::run(args),
        Command::Plot(args) => plot::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` joins the context chain on one line.
            // Nothing more can be said when stderr fails too.
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter::default)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
