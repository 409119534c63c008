//! Compiles every `kernels/*.cu` to PTX with nvcc.
//!
//! nvcc is looked up in this order: `$NVCC`; `bin/nvcc` under `$CUDA_ROOT`, `$CUDA_PATH`
//! or `$CUDA_HOME`; `nvcc` on `PATH`; the toolkit `cargo xtask nvcc` installs from PyPI
//! into the workspace's `target/cuda-toolkit`. `$NAS_CUDA_ARCH` picks the virtual
//! architecture (default `compute_80`: Ampere and newer JIT-compile it).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for var in [
        "NVCC",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_HOME",
        "PATH",
        "NAS_CUDA_ARCH",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let kernels = manifest.join("kernels");
    println!("cargo::rerun-if-changed={}", kernels.display());
    let nvcc = find_nvcc(&manifest).unwrap_or_else(|| {
        panic!(
            "nas-kernels: nvcc not found. Set NVCC=/path/to/nvcc, or CUDA_ROOT to a CUDA \
             toolkit, or put nvcc on PATH, or run `cargo xtask nvcc` (installs nvcc from PyPI \
             into target/cuda-toolkit)"
        )
    });
    println!("cargo::rerun-if-changed={}", nvcc.display());
    let arch = env::var("NAS_CUDA_ARCH").unwrap_or_else(|_| "compute_80".to_string());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .expect("kernels/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for src in sources {
        let stem = src.file_stem().expect("a .cu file has a stem").to_owned();
        let ptx = out.join(&stem).with_extension("ptx");
        let status = Command::new(&nvcc)
            .arg("--ptx")
            .arg(format!("-arch={arch}"))
            .args(["-O3", "-std=c++17", "--restrict"])
            .arg("-I")
            .arg(&kernels)
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| panic!("nas-kernels: could not run {}: {e}", nvcc.display()));
        assert!(
            status.success(),
            "nas-kernels: {} failed on {} ({status})",
            nvcc.display(),
            src.display()
        );
    }
}

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = env::var_os(var) {
            let p = Path::new(&root).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    // `cargo xtask nvcc`: pip's layout for the CUDA 13 wheels.
    let workspace = manifest.parent()?.parent()?;
    let p = workspace.join("target/cuda-toolkit/nvidia/cu13/bin/nvcc");
    p.is_file().then_some(p)
}
