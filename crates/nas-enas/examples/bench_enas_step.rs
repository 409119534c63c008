//! ENAS micro search steps, timed: `cargo run --release -p nas-enas --example bench_enas_step --
//! [shared|controller|fixed] [filters] [layers] [batch] [repeats] [aggregate]`. Prints one
//! JSON line with the median seconds per step (every arc runs forward and backward once
//! before the clock) and the peak resident memory (VmHWM).
//!
//! - `shared`: one shared-weight step: the controller scores a child (the cost of
//!   sampling one), the child's forward and backward on a batch (loss + 0.4 aux), global
//!   clipping at 5 and Nesterov SGD with L2 over the shared weights.
//! - `controller`: one controller update: the controller runs over `aggregate` children
//!   (batched), each child's forward on its own batch for its reward, REINFORCE's loss,
//!   backward and Adam.
//! - `fixed`: the `shared` step's child trained alone: the same arcs, no controller, SGD
//!   over only the weights each arc uses (the cost of a network that holds one child).
//!
//! The children are the same in every implementation: step `i` uses arc `i` of a
//! SplitMix64 stream (`arcs` below; `benches/enas_step.py` draws the same ones), so both
//! sides compute the same networks. The workload is the reference's CIFAR-10 search: 3x32x32
//! images, 10 classes, F = 20, L = 6, batch 160.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use nas_enas::{
    arc_genotype, Choices, ControllerConfig, MicroChild, MicroChildConfig, MicroController,
    Reinforce, ReinforceConfig,
};
use nas_train::{grads, AdamConfig, ParamStore, Sgd, SgdConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Res<T> = nas_enas::Result<T>;

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `count` uniformly random arcs of `nodes` nodes from SplitMix64 seed 7.
fn arcs(count: usize, nodes: usize) -> Vec<Vec<usize>> {
    let mut rng = SplitMix(7);
    (0..count)
        .map(|_| {
            let mut arc = Vec::new();
            for _cell in 0..2 {
                for t in 2..nodes + 2 {
                    for _branch in 0..2 {
                        arc.push(rng.below(t));
                        arc.push(rng.below(5));
                    }
                }
            }
            arc
        })
        .collect()
}

fn batch(n: usize, seed: u64, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let mut s = SplitMix(seed);
    let x: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|_| (s.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        .collect();
    let y: Vec<u32> = (0..n).map(|_| (s.next() % 10) as u32).collect();
    Ok((
        Tensor::from_vec(x, (n, 3, 32, 32), dev)?,
        Tensor::from_vec(y, n, dev)?,
    ))
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn child_loss(child: &MicroChild, arc: &[usize], x: &Tensor, y: &Tensor) -> Res<Tensor> {
    let mut rng = StdRng::seed_from_u64(0);
    let out = child.forward(x, &arc_genotype(arc)?, true, &mut rng)?;
    let ce = candle_nn::loss::cross_entropy(&out.logits, y)?;
    Ok(match &out.aux_logits {
        Some(aux) => (ce + (candle_nn::loss::cross_entropy(aux, y)? * 0.4)?)?,
        None => ce,
    })
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map_or("shared", String::as_str).to_string();
    let num = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (filters, layers, n, repeats, aggregate) =
        (num(1, 20), num(2, 6), num(3, 160), num(4, 3), num(5, 10));
    let dev = Device::Cpu;
    let cfg = MicroChildConfig {
        filters,
        layers,
        ..MicroChildConfig::reference()
    };
    let store = ParamStore::new(1);
    let child = MicroChild::new(cfg, store.var_builder(DType::F32, &dev))?;
    // Rewards are forward passes only: the same weights without a graph, as the search.
    let scorer = MicroChild::new(cfg, store.detached_var_builder(DType::F32, &dev))?;
    let ctrl_store = ParamStore::new(2);
    let controller =
        MicroController::new(ControllerConfig::default(), &ctrl_store, DType::F32, &dev)?;
    let sampler = controller.detached();
    let sgd_cfg = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 2e-4,
        nesterov: true,
    };
    let mut sgd = Sgd::new(store.trainable(), sgd_cfg)?;
    let mut reinforce = Reinforce::new(
        ctrl_store.trainable(),
        ReinforceConfig {
            adam: AdamConfig {
                lr: 0.0035,
                betas: (0.0, 0.999),
                eps: 1e-3,
                weight_decay: 0.0,
                decoupled: false,
            },
            entropy_weight: 1e-4,
            baseline_decay: 0.99,
        },
    )?;
    let per_step = if mode == "controller" { aggregate } else { 1 };
    let all = arcs(repeats * per_step, cfg.nodes);
    let batches: Vec<(Tensor, Tensor)> = (0..per_step)
        .map(|i| batch(n, 100 + i as u64, &dev))
        .collect::<candle_core::Result<_>>()?;
    // `fixed`: per step, an optimizer over only the weights that step's arc reaches
    // (found by one backward pass each, before the clock runs).
    let mut fixed_sgd = Vec::new();
    if mode == "fixed" {
        let (x, y) = &batches[0];
        for arc in &all {
            let g = child_loss(&child, arc, x, y)?.backward()?;
            let used: Vec<_> = store
                .trainable()
                .into_iter()
                .filter(|(_, v)| g.get(v.as_tensor()).is_some())
                .collect();
            fixed_sgd.push(Sgd::new(used, sgd_cfg)?);
        }
    }
    // Every arc's forward and backward once before the clock runs: the first pass over
    // a shape sizes the allocator's and the kernels' buffers, which a search does once
    // for thousands of steps.
    // (A controller update only runs the children forward: so does its warm-up.)
    nas_train::in_pool(|| -> Res<()> {
        for (i, arc) in all.iter().enumerate() {
            let (x, y) = &batches[i % per_step];
            if mode == "controller" {
                let mut rng = StdRng::seed_from_u64(0);
                scorer.forward(x, &arc_genotype(arc)?, false, &mut rng)?;
            } else {
                child_loss(&child, arc, x, y)?.backward()?;
            }
        }
        Ok(())
    })?;
    let mut times = Vec::new();
    for step in 0..repeats {
        let start = Instant::now();
        let arcs = &all[step * per_step..(step + 1) * per_step];
        nas_train::in_pool(|| -> Res<()> {
            match mode.as_str() {
                "controller" => {
                    let d = controller.run::<StdRng>(aggregate, Choices::Given(arcs))?;
                    let mut accs = Vec::new();
                    for (arc, (x, y)) in arcs.iter().zip(&batches) {
                        let mut rng = StdRng::seed_from_u64(0);
                        let out = scorer.forward(x, &arc_genotype(arc)?, false, &mut rng)?;
                        let c = nas_train::correct_top_k(&out.logits, y, &[1])?[0];
                        accs.push(c as f64 / n as f64);
                    }
                    reinforce.update(&d, &accs)?;
                }
                "fixed" => {
                    let (x, y) = &batches[0];
                    let opt = &mut fixed_sgd[step];
                    let mut g = grads::collect(
                        &child_loss(&child, &arcs[0], x, y)?.backward()?,
                        opt.vars(),
                    );
                    grads::clip_global_norm(&mut g, 5.0)?;
                    opt.step(&g)?;
                }
                _ => {
                    let (x, y) = &batches[0];
                    let t0 = Instant::now();
                    sampler.run::<StdRng>(1, Choices::Given(arcs))?;
                    let t1 = Instant::now();
                    let loss = child_loss(&child, &arcs[0], x, y)?;
                    let t2 = Instant::now();
                    let back = loss.backward()?;
                    let t3 = Instant::now();
                    let mut g = grads::collect(&back, sgd.vars());
                    grads::clip_global_norm(&mut g, 5.0)?;
                    let t4 = Instant::now();
                    sgd.step(&g)?;
                    let t5 = Instant::now();
                    if std::env::var_os("NAS_BENCH_DETAIL").is_some() {
                        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
                        eprintln!(
                            "controller {:.0} ms, forward {:.0}, backward {:.0}, collect+clip {:.0}, sgd {:.0}",
                            ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4), ms(t4, t5)
                        );
                    }
                }
            }
            Ok(())
        })?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "seconds_per_step": times[times.len() / 2],
            "times": times,
            "peak_rss_mb": peak_rss_mb(),
        })
    );
    Ok(())
}
