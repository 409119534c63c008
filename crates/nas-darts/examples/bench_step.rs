//! One DARTS search step, timed: `cargo run --release -p nas-darts --example bench_step --
//! [first|second|train] [C] [layers] [batch] [repeats]`. Prints one JSON line with the
//! median seconds per step and the peak resident memory of this process (VmHWM).
//! `train` times a training step of the DARTS-V2 evaluation network instead (auxiliary
//! head 0.4, drop path 0.2, SGD, clip 5).
//!
//! `NAS_DEVICE=cuda` runs it on the first GPU (a build with the `cuda` feature); each
//! step then ends with a device synchronisation before its time is taken.
//!
//! The workload is the search issue's: random 3x32x32 images, 10 classes, one
//! architecture step and one weight step (SGD, clip 5) per step. `cargo xtask bench
//! darts-step` runs it next to the same step written in PyTorch.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use nas_darts::{Alphas, Architect, Objective, Order, SearchCnn, SearchCnnConfig, SearchConfig};
use nas_models::{EvalNetConfig, EvalNetwork};
use nas_search_space::{bundled, Genotype};
use nas_train::{grads, ParamStore, Sgd};

#[path = "shared/rss.rs"]
mod rss;
use rss::peak_rss_mb;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Model<'a> {
    net: &'a SearchCnn,
    alphas: &'a Alphas,
}

impl Objective for Model<'_> {
    type Batch = (Tensor, Tensor);
    fn loss(&self, (x, y): &(Tensor, Tensor)) -> nas_darts::Result<Tensor> {
        let logits = self.net.forward(x, self.alphas, true)?;
        Ok(candle_nn::loss::cross_entropy(&logits, y)?)
    }
}

/// The device `NAS_DEVICE` names (`cpu`, the default, or `cuda`).
fn device() -> candle_core::Result<Device> {
    match std::env::var("NAS_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0),
        _ => Ok(Device::Cpu),
    }
}

fn batch(n: usize, seed: u64, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    // A fixed pseudo-random batch (SplitMix64), so runs are comparable.
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let x: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        .collect();
    let y: Vec<u32> = (0..n).map(|_| (next() % 10) as u32).collect();
    Ok((
        Tensor::from_vec(x, (n, 3, 32, 32), dev)?,
        Tensor::from_vec(y, n, dev)?,
    ))
}

/// One training step of the DARTS-V2 CIFAR network.
fn train_step(c: usize, layers: usize, n: usize, repeats: usize) -> nas_darts::Result<()> {
    let dev = device()?;
    let genotype = match bundled("darts-v2")? {
        Genotype::DartsCnn(g) => g,
        _ => {
            return Err(nas_darts::Error::Config(
                "darts-v2 is not a CNN genotype".into(),
            ))
        }
    };
    let cfg = EvalNetConfig {
        channels: c,
        layers,
        ..EvalNetConfig::cifar_paper()
    };
    let store = ParamStore::new(0);
    let genotype = nas_models::EvalGenotype::Darts(genotype);
    let net = EvalNetwork::new(&genotype, cfg, store.var_builder(DType::F32, &dev))?;
    let mut sgd = Sgd::new(store.trainable(), SearchConfig::preset("paper")?.sgd())?;
    let (x, y) = batch(n, 1, &dev)?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let mut times = Vec::new();
    let mut phases = Vec::new();
    for _ in 0..repeats + 1 {
        let t = Instant::now();
        let (logits, aux) = net.forward(&x, true, 0.2, &mut rng)?;
        let mut loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        if let Some(aux) = aux {
            loss = (loss + (candle_nn::loss::cross_entropy(&aux, &y)? * 0.4)?)?;
        }
        dev.synchronize()?;
        let forward = t.elapsed().as_secs_f64();
        let grad_store = loss.backward()?;
        dev.synchronize()?;
        let backward = t.elapsed().as_secs_f64() - forward;
        let mut g = grads::collect(&grad_store, sgd.vars());
        grads::clip_global_norm(&mut g, 5.0)?;
        sgd.step(&g)?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
        phases.push((forward, backward));
    }
    // The median step (the first, warming up, left out) and its forward and backward.
    let mut order: Vec<usize> = (1..times.len()).collect();
    order.sort_by(|&a, &b| times[a].total_cmp(&times[b]));
    let mid = order[order.len() / 2];
    let rest: Vec<f64> = order.iter().map(|&i| times[i]).collect();
    let median = times[mid];
    println!(
        "{}",
        serde_json::json!({
            "impl": "candle-nas", "device": format!("{:?}", dev.location()), "order": "train", "channels": c, "layers": layers, "batch": n,
            "seconds_per_step": median, "images_per_second": n as f64 / median,
            "forward_seconds": phases[mid].0, "backward_seconds": phases[mid].1,
            "steps": rest, "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(())
}

fn main() -> nas_darts::Result<()> {
    nas_ops::runtime::configure_process();
    // Every step on a pool thread, as `nas train` and `nas search` run them.
    nas_train::in_pool(run)
}

fn run() -> nas_darts::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    if args.first().map(String::as_str) == Some("train") {
        return train_step(arg(1, 16), arg(2, 8), arg(3, 32), arg(4, 5).max(1));
    }
    let order: Order = args
        .first()
        .map_or(Ok(Order::First), |a| a.parse())
        .map_err(nas_darts::Error::Config)?;
    let (c, layers, n, repeats) = (arg(1, 8), arg(2, 5), arg(3, 16), arg(4, 5).max(1));
    let dev = device()?;
    let cfg = SearchConfig::preset("paper")?;
    let net_cfg = SearchCnnConfig {
        channels: c,
        layers,
        ..SearchCnnConfig::paper()
    };
    let store = ParamStore::new(0);
    let net = SearchCnn::new(net_cfg, store.var_builder(DType::F32, &dev))?;
    let alphas = Alphas::new(4, 1, &dev)?;
    let mut sgd = Sgd::new(store.trainable(), cfg.sgd())?;
    let mut arch = Architect::new(alphas.store().trainable(), cfg.adam(), order)?;
    let model = Model {
        net: &net,
        alphas: &alphas,
    };
    let train = batch(n, 1, &dev)?;
    let val = batch(n, 2, &dev)?;
    let mut times = Vec::new();
    for _ in 0..repeats + 1 {
        let t = Instant::now();
        arch.step(&model, &train, &val, &sgd)?;
        let loss = model.loss(&train)?;
        let mut g = grads::collect(&loss.backward()?, sgd.vars());
        grads::clip_global_norm(&mut g, 5.0)?;
        sgd.step(&g)?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    // The first step warms up allocations; report the median of the rest.
    let mut rest = times[1..].to_vec();
    rest.sort_by(f64::total_cmp);
    let median = rest[rest.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "impl": "candle-nas", "device": format!("{:?}", dev.location()),
            "order": format!("{order:?}").to_lowercase(),
            "channels": c, "layers": layers, "batch": n,
            "seconds_per_step": median, "steps": rest, "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(())
}
