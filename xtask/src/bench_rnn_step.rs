//! `cargo xtask bench darts-rnn-step [--python PY] [--order first|second] [--batch N]
//! [--bptt N] [--nhid N] [--vocab N] [--repeats R]`: one DARTS recurrent (PTB) search step
//! (architecture step on a validation window, then weight step with NLL + TAR) in
//! candle-nas (`crates/nas-darts/examples/bench_lm_step.rs`) and, when a Python with torch
//! is there, the same step in PyTorch (`crates/nas-darts/benches/darts_rnn_step.py`), each
//! in its own process. Defaults: the paper's search preset (first order, batch 256, bptt
//! 35, nhid 300, vocabulary 10000, median of 3). Prints times, memory and the ratios.
//! `--order` also takes `first,second` (one row each).

use anyhow::{bail, Context, Result};

use crate::bench::USAGE;
use crate::compare;
use crate::project_root;

pub fn run(args: &[&str]) -> Result<()> {
    let mut python = compare::default_python();
    let mut order = "first".to_string();
    let mut batch = "256".to_string();
    let mut bptt = "35".to_string();
    let mut nhid = "300".to_string();
    let mut vocab = "10000".to_string();
    let mut repeats = "3".to_string();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let slot = match *flag {
            "--python" => &mut python,
            "--order" => &mut order,
            "--batch" => &mut batch,
            "--bptt" => &mut bptt,
            "--nhid" => &mut nhid,
            "--vocab" => &mut vocab,
            "--repeats" => &mut repeats,
            other => bail!("unknown flag {other:?}\n\n{USAGE}"),
        };
        *slot = value.to_string();
    }
    let orders: Vec<&str> = order.split(',').collect();
    if let Some(bad) = orders.iter().find(|o| !matches!(**o, "first" | "second")) {
        bail!("--order takes first, second or first,second, got {bad:?}");
    }
    // The example falls back to its defaults on a number it cannot read: check them here.
    for (flag, v) in [
        ("--batch", &batch),
        ("--bptt", &bptt),
        ("--nhid", &nhid),
        ("--vocab", &vocab),
        ("--repeats", &repeats),
    ] {
        match v.parse::<usize>() {
            Ok(n) if n > 0 => {}
            _ => bail!("{flag} takes a positive integer, got {v:?}"),
        }
    }
    let threads = compare::threads();
    let exe = compare::build_example("nas-darts", "bench_lm_step")?;
    let script = project_root().join("crates/nas-darts/benches/darts_rnn_step.py");
    println!(
        "one DARTS recurrent search step (batch={batch} bptt={bptt} nhid={nhid} vocab={vocab}), {threads} threads, median of {repeats}"
    );
    compare::print_step_header();
    let mut skips = Vec::new();
    for order in orders {
        let bench_args = [order, &batch, &bptt, &nhid, &vocab, &repeats];
        let ours = compare::run_ours(&exe, &bench_args, &threads)?;
        let torch = compare::run_torch(&python, &script, &bench_args, &threads)?;
        println!("{}", compare::step_row(order, &ours, &torch));
        skips.extend(torch.err());
    }
    compare::report_skips(&skips);
    Ok(())
}
