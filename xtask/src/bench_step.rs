//! `cargo xtask bench darts-step [--python PY] [--net C,LAYERS,BATCH] [--train-net
//! C,LAYERS,BATCH] [--repeats R]`: one full DARTS search step (architecture step, then
//! weight step), first and second order, and one training step of the DARTS-V2 CIFAR
//! network, in candle-nas and, when a Python with torch is there, in the same steps
//! written in PyTorch (`crates/nas-darts/benches/darts_step.py`). Each side runs in its own process,
//! so its peak resident memory is its own. Prints times, memory and the ratios.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::project_root;

pub fn run(args: &[&str]) -> Result<()> {
    let mut python = std::env::var("NAS_TORCH_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let mut net = "8,5,16".to_string();
    let mut train_net = "16,8,32".to_string();
    let mut repeats = "5".to_string();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match *flag {
            "--python" => python = value.to_string(),
            "--net" => net = value.to_string(),
            "--train-net" => train_net = value.to_string(),
            "--repeats" => repeats = value.to_string(),
            other => bail!("unknown flag {other:?}; usage: cargo xtask bench darts-step [--python PY] [--net C,LAYERS,BATCH] [--repeats R]"),
        }
    }
    let parse = |flag: &str, v: &str| -> Result<Vec<String>> {
        let dims: Vec<String> = v.split(',').map(str::to_string).collect();
        if dims.len() != 3 || dims.iter().any(|d| d.parse::<usize>().is_err()) {
            bail!("{flag} takes C,LAYERS,BATCH, got {v:?}");
        }
        Ok(dims)
    };
    let search_dims = parse("--net", &net)?;
    let train_dims = parse("--train-net", &train_net)?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "2".to_string());
    let root = project_root();
    let status = Command::new("cargo")
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "nas-darts",
            "--example",
            "bench_step",
        ])
        .status()
        .context("building the bench")?;
    if !status.success() {
        bail!("building the bench failed");
    }
    let script = root.join("crates/nas-darts/benches/darts_step.py");
    println!(
        "one DARTS search step (first, second: C={} layers={} batch={}) and one DARTS-V2 training step (train: C={} layers={} batch={}), 3x32x32, {threads} threads, median of {repeats}",
        search_dims[0], search_dims[1], search_dims[2], train_dims[0], train_dims[1], train_dims[2]
    );
    println!(
        "{:<7} {:>12} {:>12} {:>10} {:>12} {:>12} {:>10}",
        "order", "ours s", "torch s", "time", "ours MB", "torch MB", "memory"
    );
    for order in ["first", "second", "train"] {
        let dims = if order == "train" {
            &train_dims
        } else {
            &search_dims
        };
        let ours = Command::new(root.join("target/release/examples/bench_step"))
            .arg(order)
            .args(dims)
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
        let ours: Value =
            serde_json::from_slice(&ours.stdout).context("reading the bench's JSON")?;
        let torch: Option<Value> = match Command::new(&python)
            .arg(&script)
            .arg(order)
            .args(dims)
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
        let get = |v: Option<&Value>, key: &str| v.and_then(|v| v[key].as_f64());
        let (ts, tm) = (
            get(Some(&ours), "seconds_per_step"),
            get(Some(&ours), "peak_rss_mb"),
        );
        let (ps, pm) = (
            get(torch.as_ref(), "seconds_per_step"),
            get(torch.as_ref(), "peak_rss_mb"),
        );
        let cell =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}x", a / b),
            _ => "-".to_string(),
        };
        println!(
            "{:<7} {:>12} {:>12} {:>10} {:>12} {:>12} {:>10}",
            order,
            cell(ts, 3),
            cell(ps, 3),
            ratio(ts, ps),
            cell(tm, 0),
            cell(pm, 0),
            ratio(tm, pm)
        );
    }
    Ok(())
}
