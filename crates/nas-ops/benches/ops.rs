//! Criterion benchmarks of the fused ops (filled in below).
fn main() {}
