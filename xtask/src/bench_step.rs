//! `cargo xtask bench darts-step [--python PY] [--net C,LAYERS,BATCH] [--train-net
//! C,LAYERS,BATCH] [--repeats R]`: one full DARTS search step (architecture step, then
//! weight step), first and second order, and one training step of the DARTS-V2 CIFAR
//! network, in candle-nas and, when a Python with torch is there, in the same steps
//! written in PyTorch (`crates/nas-darts/benches/darts_step.py`). Each side runs in its own process,
//! so its peak resident memory is its own. Prints times, memory and the ratios.

use anyhow::{bail, Context, Result};

use crate::bench::USAGE;
use crate::compare;
use crate::project_root;

pub fn run(args: &[&str]) -> Result<()> {
    let mut python = compare::default_python();
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
            other => bail!("unknown flag {other:?}\n\n{USAGE}"),
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
    let threads = compare::threads();
    let exe = compare::build_example("nas-darts", "bench_step")?;
    let script = project_root().join("crates/nas-darts/benches/darts_step.py");
    println!(
        "one DARTS search step (first, second: C={} layers={} batch={}) and one DARTS-V2 training step (train: C={} layers={} batch={}), 3x32x32, {threads} threads, median of {repeats}",
        search_dims[0], search_dims[1], search_dims[2], train_dims[0], train_dims[1], train_dims[2]
    );
    compare::print_step_header();
    let mut skips = Vec::new();
    for order in ["first", "second", "train"] {
        let dims = if order == "train" {
            &train_dims
        } else {
            &search_dims
        };
        let mut bench_args = vec![order];
        bench_args.extend(dims.iter().map(String::as_str));
        bench_args.push(&repeats);
        let ours = compare::run_ours(&exe, &bench_args, &threads)?;
        let torch = compare::run_torch(&python, &script, &bench_args, &threads)?;
        println!("{}", compare::step_row(order, &ours, &torch));
        skips.extend(torch.err());
    }
    compare::report_skips(&skips);
    Ok(())
}
