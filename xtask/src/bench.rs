//! `cargo xtask bench ops [--python PY] [--shape N,C,SIZE] [--repeats R]`: times every op
//! workload (forward + backward) in candle-nas and, when a Python with torch is there,
//! the same workloads in PyTorch on the same threads, and prints the ratios.
//!
//! Threads: `RAYON_NUM_THREADS` (default 2) for both sides; `CANDLE_NUM_THREADS=1` so
//! candle's spin-waiting element-wise pool does not fight rayon for the cores.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::project_root;

pub fn run(args: &[&str]) -> Result<()> {
    let mut python = std::env::var("NAS_TORCH_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let mut shape = "16,16,32".to_string();
    let mut repeats = "20".to_string();
    let mut rest = args.iter();
    match rest.next() {
        Some(&"ops") => {}
        Some(&"darts-step") => return crate::bench_step::run(&args[1..]),
        other => bail!("usage: cargo xtask bench ops [--python PY] [--shape N,C,SIZE] [--repeats R], got {other:?}"),
    }
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match *flag {
            "--python" => python = value.to_string(),
            "--shape" => shape = value.to_string(),
            "--repeats" => repeats = value.to_string(),
            other => bail!("unknown flag {other:?}"),
        }
    }
    let dims: Vec<String> = shape.split(',').map(str::to_string).collect();
    if dims.len() != 3 || dims.iter().any(|d| d.parse::<usize>().is_err()) {
        bail!("--shape takes N,C,SIZE, got {shape:?}");
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "2".to_string());
    let root = project_root();

    let status = Command::new("cargo")
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "nas-ops",
            "--example",
            "bench_ops",
        ])
        .status()
        .context("building the bench")?;
    if !status.success() {
        bail!("building the bench failed");
    }
    let ours = Command::new(root.join("target/release/examples/bench_ops"))
        .args(&dims)
        .arg(&repeats)
        .env("RAYON_NUM_THREADS", &threads)
        .env("CANDLE_NUM_THREADS", "1")
        .output()
        .context("running the bench")?;
    if !ours.status.success() {
        bail!(
            "the bench failed: {}",
            String::from_utf8_lossy(&ours.stderr)
        );
    }
    let ours: BTreeMap<String, f64> =
        serde_json::from_slice(&ours.stdout).context("reading the bench's JSON")?;

    let script = root.join("crates/nas-ops/benches/torch_ops.py");
    let torch: Option<BTreeMap<String, f64>> = match Command::new(&python)
        .arg(&script)
        .args(&dims)
        .arg(&repeats)
        .env("RAYON_NUM_THREADS", &threads)
        .env("OMP_NUM_THREADS", &threads)
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text.lines().last().unwrap_or_default();
            Some(serde_json::from_str(line).context("reading the PyTorch script's JSON")?)
        }
        Ok(out) => {
            eprintln!(
                "PyTorch comparison skipped: {python} {} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
            );
            None
        }
        Err(e) => {
            eprintln!("PyTorch comparison skipped: cannot run {python}: {e}");
            None
        }
    };

    println!(
        "forward + backward, shape [{}], {threads} threads, median of {repeats} (ms)",
        dims.join(", ")
    );
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>14} {:>14}",
        "op", "fused", "candle", "torch", "fused:candle", "fused:torch"
    );
    let mut names: Vec<&str> = ours.keys().filter_map(|k| k.split('/').next()).collect();
    names.dedup();
    for name in names {
        let fused = ours.get(&format!("{name}/fused")).copied();
        let candle = ours.get(&format!("{name}/candle")).copied();
        let torch = torch.as_ref().and_then(|t| t.get(name).copied());
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}x", a / b),
            _ => "-".to_string(),
        };
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>14} {:>14}",
            name,
            cell(fused),
            cell(candle),
            cell(torch),
            ratio(fused, candle),
            ratio(fused, torch)
        );
    }
    Ok(())
}
