//! `cargo xtask fuzz [--seconds N]`: runs every cargo-fuzz target in `fuzz/` for N seconds.
//!
//! cargo-fuzz needs nightly flags; on a stable toolchain `RUSTC_BOOTSTRAP=1` enables them.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::project_root;

const TARGETS: &[&str] = &["python", "json", "arc"];

pub fn run(args: &[&str]) -> Result<()> {
    let seconds: u64 = match args {
        [] => 60,
        ["--seconds", n] => n
            .parse()
            .with_context(|| format!("--seconds {n:?} is not a whole number"))?,
        other => bail!("usage: cargo xtask fuzz [--seconds N], got {other:?}"),
    };
    let fuzz_dir = project_root().join("fuzz");
    for target in TARGETS {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {corpus:?}"))?;
        let seeds = fuzz_dir.join("seeds").join(target);
        let status = Command::new("cargo")
            .current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target])
            .arg(&corpus)
            .arg(&seeds)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-max_len=4096",
                "-timeout=10",
            ])
            .status()
            .context("running cargo fuzz (install it with `cargo install cargo-fuzz`)")?;
        if !status.success() {
            bail!("fuzz target {target} failed ({status}); see fuzz/artifacts/{target}");
        }
    }
    Ok(())
}
