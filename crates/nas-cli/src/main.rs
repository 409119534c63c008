//! `nas`: the command-line front end of candle-nas.
//!
//! Every failure is reported as one line on stderr with exit status 2.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A caching allocator: training steps allocate and free the same large blocks over and
/// over, which the system allocator hands back to the kernel (page faults every step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod alphas;
mod data;
mod genotype;
mod output;

/// Neural architecture search (DARTS, ENAS) on candle.
#[derive(Debug, Parser)]
#[command(name = "nas", version, about, long_about = None)]
struct Cli {
    /// More log output on stderr (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Genotype(cmd) => genotype::run(cmd),
        Command::Data(cmd) => data::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` joins the context chain on one line.
            eprintln!("error: {err:#}");
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
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
