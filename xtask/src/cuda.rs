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

/// `$NVCC` when set, otherwise the installed toolkit's nvcc (installing it if needed).
fn nvcc() -> Result<PathBuf> {
    match std::env::var_os("NVCC") {
        Some(p) => Ok(PathBuf::from(p)),
        None => install(),
    }
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
    let nvcc = nvcc()?;
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

/// `cargo xtask gpu-bundle`: builds, here, what a GPU machine without a Rust toolchain runs:
/// nas-ops's test binary and the DARTS CNN and recurrent step benchmarks, all with the
/// `cuda` feature, the PyTorch bench scripts, and `run.sh`, into `target/gpu-bundle`, packed as
/// `target/gpu-bundle.tar.xz` (carry that, unpack it there and run `run.sh`; see
/// docs/gpu.md).
pub fn run_gpu_bundle(args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("usage: cargo xtask gpu-bundle, got {args:?}");
    }
    let nvcc = nvcc()?;
    let root = project_root();
    let bundle = root.join("target/gpu-bundle");
    if bundle.exists() {
        std::fs::remove_dir_all(&bundle)
            .with_context(|| format!("removing {}", bundle.display()))?;
    }
    std::fs::create_dir_all(&bundle).with_context(|| format!("creating {}", bundle.display()))?;
    // candle's own kernels need nvcc too, and a compute capability: 8.0 by default, whose
    // PTX the driver compiles for any newer GPU (H100/H200 included); candle's statically
    // built quantised-matmul kernels, which candle-nas does not use, run only on 8.x.
    let toolkit = nvcc
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("nvcc has no toolkit folder")?;
    let cuda_env = |cmd: &mut Command| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![toolkit.join("bin")];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("NVCC", &nvcc)
            .env("CUDA_ROOT", &toolkit)
            .env(
                "CUDA_COMPUTE_CAP",
                std::env::var("CUDA_COMPUTE_CAP").unwrap_or("90".into()),
            )
            .env("PATH", std::env::join_paths(dirs).unwrap_or(path));
    };
    link_stubs(&root, &toolkit)?;
    let mut tests = Command::new("cargo");
    tests.args([
        "test",
        "-p",
        "nas-ops",
        "--features",
        "cuda",
        "--lib",
        "--no-run",
        "--message-format=json",
    ]);
    cuda_env(&mut tests);
    let out = tests.output().context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "building nas-ops's tests with the cuda feature failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built no test executable for nas-ops")?;
    copy_stripped(&exe, &bundle.join("nas_ops_tests"))?;
    let mut bench = Command::new("cargo");
    // The dev profile with the workspace's crates optimised too: a release build would
    // compile candle's CUDA kernels a second time (about 40 minutes on two cores).
    bench.env("CARGO_PROFILE_DEV_OPT_LEVEL", "3");
    bench.args([
        "build",
        "-p",
        "nas-darts",
        "--features",
        "cuda",
        "--example",
        "bench_step",
        "--example",
        "bench_lm_step",
    ]);
    cuda_env(&mut bench);
    let status = bench.status().context("building the bench examples")?;
    if !status.success() {
        bail!("building the bench examples with the cuda feature failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    for example in ["bench_step", "bench_lm_step"] {
        copy_stripped(
            &target.join("debug/examples").join(example),
            &bundle.join(example),
        )?;
    }
    for (from, to) in [
        ("crates/nas-darts/benches/darts_step.py", "darts_step.py"),
        (
            "crates/nas-darts/benches/darts_rnn_step.py",
            "darts_rnn_step.py",
        ),
        ("xtask/gpu/run.sh", "run.sh"),
    ] {
        std::fs::copy(root.join(from), bundle.join(to))
            .with_context(|| format!("copying {from}"))?;
    }
    // The binaries are large (candle's kernels are embedded) but compress about tenfold.
    let archive = root.join("target/gpu-bundle.tar.xz");
    let status = Command::new("tar")
        .arg("-cJf")
        .arg(&archive)
        .arg("-C")
        .arg(root.join("target"))
        .arg("gpu-bundle")
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("tar could not write {}", archive.display());
    }
    println!("{}", archive.display());
    Ok(())
}

/// Copies a binary and strips its symbols (the bundle must fit the device tool's 64 MiB).
fn copy_stripped(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    let status = Command::new("strip")
        .arg(to)
        .status()
        .context("running strip (binutils)")?;
    if !status.success() {
        bail!("strip failed on {}", to.display());
    }
    Ok(())
}

/// The CUDA libraries candle links (cudarc's `dynamic-linking`), with the names they have
/// on a CUDA 13 machine, and cudarc's declarations of their functions.
const LINKED: &[(&str, &str, &str)] = &[
    ("cuda", "libcuda.so.1", "driver/sys/mod.rs"),
    ("nvrtc", "libnvrtc.so.13", "nvrtc/sys/mod.rs"),
    ("curand", "libcurand.so.10", "curand/sys/mod.rs"),
    ("cublas", "libcublas.so.13", "cublas/sys/mod.rs"),
    ("cublasLt", "libcublasLt.so.13", "cublaslt/sys/mod.rs"),
];

/// Writes link-time stubs of the CUDA libraries into `<toolkit>/lib` (where cudarc tells
/// the linker to look; their C sources go to `lib/stubs`), so that a `cuda` build links on a machine without them (the driver's libcuda,
/// cuBLAS, cuRAND and NVRTC; the pip toolkit has only the runtime). Each stub is a shared
/// library with the real one's soname that defines every function cudarc declares for
/// it; at run time the real libraries are loaded instead. `libcudart.so` links to the
/// toolkit's runtime.
fn link_stubs(root: &Path, toolkit: &Path) -> Result<()> {
    let out = Command::new("cargo")
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--all-features",
        ])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
    let cudarc = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "cudarc"))
        .and_then(|p| p["manifest_path"].as_str())
        .map(PathBuf::from)
        .context("cudarc is not in Cargo.lock")?;
    let src = cudarc.parent().context("cudarc's folder")?.join("src");
    if !src.is_dir() {
        // cargo metadata does not download; a build of the `cuda` feature does.
        let status = Command::new("cargo")
            .args(["fetch", "--locked"])
            .current_dir(root)
            .status()
            .context("running cargo fetch")?;
        if !status.success() || !src.is_dir() {
            bail!("cudarc's sources are not at {}", src.display());
        }
    }
    let lib = toolkit.join("lib");
    let stubs = lib.join("stubs");
    std::fs::create_dir_all(&stubs).with_context(|| format!("creating {}", stubs.display()))?;
    for (name, soname, sys) in LINKED {
        let decls = std::fs::read_to_string(src.join(sys))
            .with_context(|| format!("reading cudarc's {sys}"))?;
        // Inside cudarc's `extern "C"` blocks: `fn name(` with no `pub`.
        let mut functions: Vec<&str> = decls
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("fn "))
            .filter_map(|l| l.split('(').next())
            .filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        functions.sort_unstable();
        functions.dedup();
        if functions.is_empty() {
            bail!("no function declarations in cudarc's {sys}");
        }
        let c = stubs.join(format!("{name}_stub.c"));
        let body: String = functions
            .iter()
            .map(|f| format!("void {f}(void) {{}}\n"))
            .collect();
        std::fs::write(&c, body).with_context(|| format!("writing {}", c.display()))?;
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(lib.join(format!("lib{name}.so")))
            .arg(format!("-Wl,-soname,{soname}"))
            .arg(&c)
            .status()
            .context("running cc")?;
        if !status.success() {
            bail!("cc failed on {}", c.display());
        }
    }
    let cudart = lib.join("libcudart.so");
    let _ = std::fs::remove_file(&cudart);
    std::os::unix::fs::symlink("libcudart.so.13", &cudart).context("linking libcudart.so")?;
    Ok(())
}
