//! `cargo xtask bench enas-step [--python PY] [--net FILTERS,LAYERS,BATCH] [--aggregate K]
//! [--repeats R]`: one ENAS micro shared-weight step (a sampled child's forward and
//! backward, SGD) and one controller update (`K` children scored on their own batches,
//! REINFORCE, Adam) in candle-nas (`crates/nas-enas/examples/bench_enas_step.rs`) and, when
//! a Python with torch is there, the same steps in a PyTorch port that follows the
//! reference (`crates/nas-enas/benches/enas_step.py`), each in its own process; then our
//! shared step against a fixed child of the same arcs. Defaults: the reference's CIFAR-10
//! search child (F = 20, L = 6, batch 160), K = 10, median of 3.

use anyhow::{bail, Context, Result};

use crate::bench::USAGE;
use crate::compare;
use crate::project_root;

pub fn run(args: &[&str]) -> Result<()> {
    let mut python = compare::default_python();
    let mut net = "20,6,160".to_string();
    let mut aggregate = "10".to_string();
    let mut repeats = "3".to_string();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match *flag {
            "--python" => python = value.to_string(),
            "--net" => net = value.to_string(),
            "--aggregate" => aggregate = value.to_string(),
            "--repeats" => repeats = value.to_string(),
            other => bail!("unknown flag {other:?}\n\n{USAGE}"),
        }
    }
    let dims: Vec<String> = net.split(',').map(str::to_string).collect();
    if dims.len() != 3
        || dims
            .iter()
            .any(|d| !matches!(d.parse::<usize>(), Ok(n) if n > 0))
    {
        bail!("--net takes FILTERS,LAYERS,BATCH (positive integers), got {net:?}");
    }
    for (flag, v) in [("--aggregate", &aggregate), ("--repeats", &repeats)] {
        match v.parse::<usize>() {
            Ok(n) if n > 0 => {}
            _ => bail!("{flag} takes a positive integer, got {v:?}"),
        }
    }
    let threads = compare::threads();
    let exe = compare::build_example("nas-enas", "bench_enas_step")?;
    let script = project_root().join("crates/nas-enas/benches/enas_step.py");
    println!(
        "ENAS micro search steps (F={} L={} batch={}, controller updates of {aggregate} children), 3x32x32, {threads} threads, median of {repeats}",
        dims[0], dims[1], dims[2]
    );
    compare::print_step_header();
    let mut skips = Vec::new();
    let mut shared = None;
    for mode in ["shared", "controller"] {
        let mut bench_args = vec![mode];
        bench_args.extend(dims.iter().map(String::as_str));
        bench_args.push(&repeats);
        bench_args.push(&aggregate);
        let ours = compare::run_ours(&exe, &bench_args, &threads)?;
        let torch = compare::run_torch(&python, &script, &bench_args, &threads)?;
        println!("{}", compare::step_row(mode, &ours, &torch));
        if mode == "shared" {
            shared = ours["seconds_per_step"].as_f64();
        }
        skips.extend(torch.err());
    }
    let mut fixed_args = vec!["fixed"];
    fixed_args.extend(dims.iter().map(String::as_str));
    fixed_args.push(&repeats);
    let fixed = compare::run_ours(&exe, &fixed_args, &threads)?;
    println!(
        "our shared step against a fixed child of the same arcs: {} s vs {} s ({})",
        shared.map_or("-".into(), |s| format!("{s:.3}")),
        fixed["seconds_per_step"]
            .as_f64()
            .map_or("-".into(), |s| format!("{s:.3}")),
        compare::ratio(shared, fixed["seconds_per_step"].as_f64())
    );
    compare::report_skips(&skips);
    Ok(())
}
