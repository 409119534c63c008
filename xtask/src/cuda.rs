//! `cargo xtask nvcc` installs nvcc from PyPI into `target/cuda-toolkit`;
//! `cargo xtask kernels` checks the formatting of, lints and tests `crates/nas-kernels` (the CUDA kernels,
//! compiled to PTX) with it. Neither needs a GPU: CI runs `kernels` on every commit.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::project_root;

/// The CUDA 13.0 wheels nvcc needs (compiler, front end, NVVM, headers, CCCL), pinned to
/// one release so that every machine compiles the same PTX.
const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
];

fn toolkit_dir() -> PathBuf {
    project_root().join("target").join("cuda-toolkit")
}

/// Where pip puts nvcc inside `--target` (the CUDA 13 wheels' layout).
fn nvcc_path(toolkit: &Path) -> PathBuf {
    toolkit.join("nvidia/cu13/bin/nvcc")
}

/// Installs the pinned wheels unless the same set is already there; returns nvcc's path.
pub fn install() -> Result<PathBuf> {
    let dir = toolkit_dir();
    let stamp = dir.join("wheels.txt");
    let wanted = WHEELS.join("\n");
    let nvcc = nvcc_path(&dir);
    if nvcc.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(nvcc);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(&dir)
        .args(WHEELS)
        .status()
        .with_context(|| format!("running {python} -m pip (set PYTHON to another Python 3)"))?;
    if !status.success() {
        bail!("pip could not install {} ({status})", WHEELS.join(" "));
    }
    if !nvcc.is_file() {
        bail!(
            "pip installed the wheels, but {} is missing: the wheels' layout changed",
            nvcc.display()
        );
    }
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(nvcc)
}

/// `cargo xtask nvcc`.
pub fn run_nvcc(args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask nvcc, got {args:?}");
    }
    let nvcc = install()?;
    println!("{}", nvcc.display());
    Ok(())
}

/// `cargo xtask kernels`: clippy and tests of `crates/nas-kernels` with the installed nvcc
/// (or `$NVCC` when set).
pub fn run_kernels(args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask kernels, got {args:?}");
    }
    let nvcc = match std::env::var_os("NVCC") {
        Some(p) => PathBuf::from(p),
        None => install()?,
    };
    let root = project_root();
    let manifest = root.join("crates/nas-kernels/Cargo.toml");
    let target = root.join("target");
    let status = Command::new("cargo")
        .args(["fmt", "--check", "--manifest-path"])
        .arg(&manifest)
        .status()
        .context("running cargo fmt")?;
    if !status.success() {
        bail!(
            "crates/nas-kernels is not formatted: run cargo fmt --manifest-path {}",
            manifest.display()
        );
    }
    for cmd in [
        &["clippy", "--all-targets", "--", "-D", "warnings"][..],
        &["test"][..],
    ] {
        let status = Command::new("cargo")
            .arg(cmd[0])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target)
            .args(&cmd[1..])
            .env("NVCC", &nvcc)
            .status()
            .with_context(|| format!("running cargo {}", cmd[0]))?;
        if !status.success() {
            bail!("cargo {} on crates/nas-kernels failed ({status})", cmd[0]);
        }
    }
    Ok(())
}
