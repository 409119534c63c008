//! `cargo xtask bench darts-rnn-step [--python PY] [--order first|second] [--batch N]
//! [--bptt N] [--nhid N] [--vocab N] [--repeats R] [--rounds K]`: one DARTS recurrent (PTB) search step
//! (architecture step on a validation window, then weight step with NLL + TAR) in
//! candle-nas (`crates/nas-darts/examples/bench_lm_step.rs`) and, when a Python with torch
//! is there, the same step in PyTorch (`crates/nas-darts/benches/darts_rnn_step.py`), each
//! in its own process. Defaults: the paper's search preset (first order, batch 256, bptt
//! 35, nhid 300, vocabulary 10000, median of 3). Prints times, memory and the ratios.
//! `--order` also takes `first,second` (one row each). `--rounds K` runs the two
//! alternately K times (ours, torch, ours, torch, ...) and reports the median of the
//! rounds' medians and the largest peak memory, with each round's ratio: on a machine
//! whose speed drifts over minutes, alternating keeps the drift out of the ratio.

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
    let mut rounds = "1".to_string();
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
            "--rounds" => &mut rounds,
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
        ("--rounds", &rounds),
    ] {
        match v.parse::<usize>() {
            Ok(n) if n > 0 => {}
            _ => bail!("{flag} takes a positive integer, got {v:?}"),
        }
    }
    let threads = compare::threads();
    let exe = compare::build_example("nas-darts", "bench_lm_step")?;
    let script = project_root().join("crates/nas-darts/benches/darts_rnn_step.py");
    let rounds: usize = rounds.parse()?;
    let each = if rounds > 1 {
        format!(", median of {rounds} alternating rounds")
    } else {
        String::new()
    };
    println!(
        "one DARTS recurrent search step (batch={batch} bptt={bptt} nhid={nhid} vocab={vocab}), {threads} threads, median of {repeats}{each}"
    );
    let mut rows = Vec::new();
    let mut skips = Vec::new();
    for order in orders {
        let bench_args = [order, &batch, &bptt, &nhid, &vocab, &repeats];
        let (mut ours, mut torch) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let o = compare::run_ours(&exe, &bench_args, &threads)?;
            let t = compare::run_torch(&python, &script, &bench_args, &threads)?;
            if rounds > 1 {
                println!("round {round}: {}", compare::step_row(order, &o, &t));
            }
            ours.push(o);
            torch.push(t);
        }
        let torch = match torch.iter().find_map(|t| t.as_ref().err()) {
            Some(skip) => Err(skip.clone()),
            None => Ok(compare::combine(torch.into_iter().flatten().collect())),
        };
        rows.push(compare::step_row(order, &compare::combine(ours), &torch));
        skips.extend(torch.err());
    }
    compare::print_step_header();
    for row in rows {
        println!("{row}");
    }
    compare::report_skips(&skips);
    Ok(())
}
