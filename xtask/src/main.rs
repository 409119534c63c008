//! `cargo xtask`: project automation (generated docs, fuzzing, benchmarks, data downloads).
//!
//! One module per subcommand; run `cargo xtask help` for the list.

use std::path::PathBuf;

use anyhow::{bail, Result};

mod bench;
mod bench_enas_step;
mod bench_rnn_step;
mod bench_step;
mod compare;
mod cuda;
mod deps;
mod docs;
mod download;
mod fuzz;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  bench ops|darts-step|darts-rnn-step [flags]
                         candle-nas against PyTorch: each op (forward + backward),
                         one DARTS CIFAR search / training step, one DARTS recurrent
                         search step (`cargo xtask bench --help` for the flags)
  deps                   check that every crate depends only on what its layer allows
                         (ARCHITECTURE.md, invariants)
  docs [--check]         regenerate docs/genotypes.md (--check: fail if it is stale)
  download <dataset> [--dir DIR] [--mirror DIR [--md5 HEX]] [--from PATH]
                         fetch (or import from a mirror) a data set, verified;
                         imagenet: --from an ImageFolder tree or a .tar of one
  fuzz [--seconds N]     run every cargo-fuzz target for N seconds each (default 60)
  kernels                clippy and tests of crates/nas-kernels (the CUDA kernels, built
                         to PTX; no GPU needed), with nvcc from `nvcc` below or $NVCC
  nvcc                   install nvcc from PyPI into target/cuda-toolkit, print its path
  gpu-bundle             build the CUDA tests and the DARTS step benchmark for a GPU
                         machine into target/gpu-bundle (docs/gpu.md)
  help                   this text";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench::run(&rest),
        Some("deps") => deps::run(&rest),
        Some("docs") => docs::run(&rest),
        Some("download") => download::run(&rest),
        Some("fuzz") => fuzz::run(&rest),
        Some("gpu-bundle") => cuda::run_gpu_bundle(&rest),
        Some("kernels") => cuda::run_kernels(&rest),
        Some("nvcc") => cuda::run_nvcc(&rest),
        Some("help") | Some("--help") | Some("-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown xtask command {other:?}\n\n{USAGE}"),
    }
}

/// The workspace root: the parent of this crate's directory.
fn project_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
