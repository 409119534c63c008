//! Criterion benchmarks: each fused op, forward + backward, against candle's plain-tensor
//! form, and the whole DARTS MixedOp, at N=16, C=16, 32x32 on the CPU; the recurrent-cell
//! node update (`rnn_node`, fused against `rnn_node_slow`) at n=4, B=256, H=300.

use criterion::{criterion_main, Criterion};

/// The caching allocator the `nas` binary and the ratio printer use.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "workloads.rs"]
mod workloads;

fn ops(c: &mut Criterion) {
    nas_ops::runtime::configure_process();
    let mut group = c.benchmark_group("cpu");
    group.sample_size(20);
    for w in workloads::workloads(16, 16, 32).expect("building workloads") {
        group.bench_function(&w.name, |b| b.iter(|| (w.run)().expect("workload runs")));
    }
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::ops);
}
criterion_main!(group::benches);
