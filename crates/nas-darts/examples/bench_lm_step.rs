//! One DARTS recurrent search step, timed: `cargo run --release -p nas-darts --example
//! bench_lm_step -- [first|second] [batch] [bptt] [nhid] [vocab] [repeats]`
//! (default: the paper's search preset, `first 256 35 300 10000 3`). Prints one JSON line
//! with the median seconds per step and the peak resident memory of this process.
//! `NAS_DEVICE=cuda` runs it on the first GPU (a build with the `cuda` feature); each step
//! then ends with a device synchronisation before its time is taken.
//!
//! The step is the recurrent search's (`nas_darts::lm_step`): an architecture step on a
//! validation window, then a weight step on a training window (NLL + TAR, SGD lr 20,
//! clip 0.25), with the paper's dropouts, on seeded random tokens. `cargo xtask bench
//! darts-rnn-step` runs it next to the same step in PyTorch (`benches/darts_rnn_step.py`).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use nas_darts::{lm_step, rnn_paper_search, ArchPart, Architect, Order};
use nas_models::{rnn_edge_count, LmBatch, LmMasks, RnnLm, RNN_STEPS};
use nas_train::{ParamStore, Sgd};
use rand::{Rng, SeedableRng};

#[path = "shared/rss.rs"]
mod rss;
use rss::peak_rss_mb;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> nas_darts::Result<()> {
    nas_ops::runtime::configure_process();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let order: Order = args
        .first()
        .map(|s| s.parse())
        .transpose()
        .map_err(nas_darts::Error::Config)?
        .unwrap_or(Order::First);
    let (batch, bptt, nhid, vocab, repeats) = (
        arg(1, 256),
        arg(2, 35),
        arg(3, 300),
        arg(4, 10_000),
        arg(5, 3),
    );
    let dev = match std::env::var("NAS_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0)?,
        _ => Device::Cpu,
    };
    let mut cfg = rnn_paper_search();
    cfg.model.emsize = nhid;
    cfg.model.nhid = nhid;
    let store = ParamStore::new(0);
    let model = RnnLm::search(
        cfg.model,
        vocab,
        RNN_STEPS,
        store.var_builder(DType::F32, &dev),
    )?;
    let alphas =
        Var::from_tensor(&(Tensor::randn(0f32, 1e-3, (rnn_edge_count(RNN_STEPS), 5), &dev)?))?;
    let mut sgd = Sgd::new(store.trainable(), cfg.sgd())?;
    let adam = cfg.arch.expect("a search preset has [arch]").adam();
    let mut architect = Architect::new(vec![("weights".into(), alphas.clone())], adam, order)?
        .with_unrolled_clip(cfg.optim.clip);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let tokens = |rng: &mut rand::rngs::StdRng| -> nas_darts::Result<(Tensor, Tensor)> {
        let x: Vec<u32> = (0..bptt * batch)
            .map(|_| rng.random_range(0..vocab as u32))
            .collect();
        let y: Vec<u32> = (0..bptt * batch)
            .map(|_| rng.random_range(0..vocab as u32))
            .collect();
        Ok((
            Tensor::from_vec(x, (bptt, batch), &dev)?,
            Tensor::from_vec(y, bptt * batch, &dev)?,
        ))
    };
    let mut hidden = model.init_hidden(batch)?;
    let mut hidden_valid = model.init_hidden(batch)?;
    let no_pool = std::env::var_os("NAS_BENCH_NO_POOL").is_some();
    let mut times = Vec::new();
    for _ in 0..repeats + 1 {
        let (x, y) = tokens(&mut rng)?;
        let (vx, vy) = tokens(&mut rng)?;
        let masks = LmMasks::sample(&cfg.model, vocab, batch, &mut rng, DType::F32, &dev)?;
        let val_masks = LmMasks::sample(&cfg.model, vocab, batch, &mut rng, DType::F32, &dev)?;
        let started = Instant::now();
        let train = LmBatch::new(x, y, hidden.clone(), masks);
        let val = LmBatch::new(vx, vy, hidden_valid.clone(), val_masks);
        let (model, optim, alphas, sgd, architect) = (
            &model,
            &cfg.optim,
            alphas.as_tensor(),
            &mut sgd,
            &mut architect,
        );
        let step = move || {
            lm_step(
                model,
                sgd,
                optim,
                &train,
                Some(ArchPart {
                    alphas,
                    architect,
                    val,
                }),
            )
        };
        // As the run loop takes it: on a pool thread (`NAS_BENCH_NO_POOL=1`: on the main
        // thread, as the loop did before).
        let out = if no_pool {
            step()?
        } else {
            nas_train::in_pool(step)?
        };
        dev.synchronize()?;
        times.push(started.elapsed().as_secs_f64());
        hidden = out.hidden;
        hidden_valid = out.hidden_valid.unwrap_or(hidden_valid);
    }
    // The first step warms up (allocator, thread pools).
    let mut rest = times[1..].to_vec();
    rest.sort_by(f64::total_cmp);
    let median = rest[rest.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "impl": "candle-nas", "device": format!("{:?}", dev.location()),
            "order": format!("{order:?}").to_lowercase(), "batch": batch,
            "bptt": bptt, "nhid": nhid, "vocab": vocab,
            "seconds_per_step": median, "in_pool": !no_pool, "steps": rest, "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(())
}
