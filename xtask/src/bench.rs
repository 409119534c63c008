//! `cargo xtask bench <ops|darts-step|darts-rnn-step|enas-step> ...`: candle-nas against PyTorch.
//!
//! `bench ops [--python PY] [--shape N,C,SIZE] [--repeats R]` (this file) times every op
//! workload (forward + backward) in candle-nas and, when a Python with torch is there,
//! the same workloads in PyTorch on the same threads, and prints the ratios.
//! `darts-step` is in `bench_step.rs`, `darts-rnn-step` in `bench_rnn_step.rs`,
//! `enas-step` in `bench_enas_step.rs`; what they
//! share (threads, running both sides, the step table) is in `compare.rs`.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use crate::compare;
use crate::project_root;

pub const USAGE: &str = "usage: cargo xtask bench <bench> [flags]

benches (each against PyTorch when NAS_TORCH_PYTHON, or --python, has torch;
RAYON_NUM_THREADS threads on both sides, default 2):
  ops [--python PY] [--shape N,C,SIZE] [--repeats R]
        each op workload, forward + backward: fused, candle, torch (ms)
  darts-step [--python PY] [--net C,LAYERS,BATCH] [--train-net C,LAYERS,BATCH] [--repeats R]
        one DARTS CIFAR search step (first, second order) and one training step
        (time and peak memory)
  darts-rnn-step [--python PY] [--order first|second|first,second] [--batch N] [--bptt N]
                 [--nhid N] [--vocab N] [--repeats R] [--rounds K]
        one DARTS recurrent (PTB) search step; defaults: the paper's search preset
        (first, 256, 35, 300, 10000, 3) (time and peak memory); --rounds K runs
        ours and PyTorch alternately K times (median of the rounds)
  enas-step [--python PY] [--net FILTERS,LAYERS,BATCH] [--aggregate K] [--repeats R]
        one ENAS micro shared-weight step and one controller update of K children;
        defaults: the reference's search (20,6,160, 10, 3) (time and peak memory),
        and our shared step against a fixed child of the same arcs";

pub fn run(args: &[&str]) -> Result<()> {
    match args.first() {
        Some(&"ops") => ops(&args[1..]),
        Some(&"darts-step") => crate::bench_step::run(&args[1..]),
        Some(&"darts-rnn-step") => crate::bench_rnn_step::run(&args[1..]),
        Some(&"enas-step") => crate::bench_enas_step::run(&args[1..]),
        Some(&"help") | Some(&"--help") | Some(&"-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown bench {other:?}\n\n{USAGE}"),
    }
}

fn ops(args: &[&str]) -> Result<()> {
    let mut python = compare::default_python();
    let mut shape = "16,16,32".to_string();
    let mut repeats = "20".to_string();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match *flag {
            "--python" => python = value.to_string(),
            "--shape" => shape = value.to_string(),
            "--repeats" => repeats = value.to_string(),
            other => bail!("unknown flag {other:?}\n\n{USAGE}"),
        }
    }
    let dims: Vec<&str> = shape.split(',').collect();
    if dims.len() != 3 || dims.iter().any(|d| d.parse::<usize>().is_err()) {
        bail!("--shape takes N,C,SIZE, got {shape:?}");
    }
    let threads = compare::threads();
    let exe = compare::build_example("nas-ops", "bench_ops")?;
    let mut bench_args = dims.clone();
    bench_args.push(&repeats);
    let ours: BTreeMap<String, f64> =
        serde_json::from_value(compare::run_ours(&exe, &bench_args, &threads)?)
            .context("reading the bench's JSON")?;
    let script = project_root().join("crates/nas-ops/benches/torch_ops.py");
    let torch = match compare::run_torch(&python, &script, &bench_args, &threads)? {
        Ok(v) => Ok(serde_json::from_value::<BTreeMap<String, f64>>(v)
            .context("reading the PyTorch script's JSON")?),
        Err(skipped) => Err(skipped),
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
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let (torch_cell, torch_ms) = match &torch {
            Ok(t) => {
                let ms = t.get(name).copied();
                (cell(ms), ms)
            }
            Err(s) => (s.short.to_string(), None),
        };
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>14} {:>14}",
            name,
            cell(fused),
            cell(candle),
            torch_cell,
            compare::ratio(fused, candle),
            compare::ratio(fused, torch_ms)
        );
    }
    compare::report_skips(torch.as_ref().err());
    Ok(())
}
