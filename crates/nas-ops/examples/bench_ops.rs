//! Times every op workload (forward + backward) and prints one JSON object of median
//! milliseconds per workload, for `cargo xtask bench ops` to compare with PyTorch.
//!
//! Usage: `bench_ops [N C SIZE [REPEATS]] [FILTER]` (default 16 16 32 20; FILTER keeps
//! the workloads whose name contains it, for profiling one of them).

use std::time::Instant;

/// A caching allocator, as the `nas` binary uses: the system allocator returns large
/// blocks to the kernel and pays page faults to get them back on every step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../benches/workloads.rs"]
mod workloads;

fn main() -> candle_core::Result<()> {
    nas_ops::runtime::configure_process();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let filter = std::env::args()
        .skip(1)
        .find(|a| a.parse::<usize>().is_err());
    let (n, c, size, repeats) = match args[..] {
        [n, c, s, r] => (n, c, s, r),
        [n, c, s] => (n, c, s, 20),
        _ => (16, 16, 32, 20),
    };
    let mut results = Vec::new();
    for w in workloads::workloads(n, c, size)? {
        if filter
            .as_ref()
            .is_some_and(|f| !w.name.contains(f.as_str()))
        {
            continue;
        }
        for _ in 0..3 {
            (w.run)()?;
        }
        let mut times: Vec<f64> = (0..repeats)
            .map(|_| {
                let start = Instant::now();
                (w.run)().map(|_| start.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<candle_core::Result<_>>()?;
        times.sort_by(f64::total_cmp);
        results.push(format!("\"{}\": {:.4}", w.name, times[times.len() / 2]));
    }
    println!("{{{}}}", results.join(", "));
    Ok(())
}
