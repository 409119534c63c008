//! Reductions over contiguous slices written so that the compiler vectorises them: each
//! keeps [`LANES`] independent accumulators, four groups of eight (four AVX2 registers of
//! f32; the groups are written out because one flat array of 32 lanes came out as
//! two-wide vectors with spills), so that the
//! loop is bound by the load and FMA throughput rather than by the latency of one long
//! chain of additions, and adds the lanes up in a fixed order (results are
//! deterministic). Callers reduce blocks of a few thousand elements with these and
//! accumulate the blocks in f64.

use rayon::prelude::*;

use crate::kernels::elem::Elem;

/// Independent accumulators per reduction.
const LANES: usize = 32;

/// The lanes added up one by one, in a fixed order. (Adding the groups first as vectors,
/// or pairwise, made LLVM give up the eight-wide accumulators of the loops above.)
#[inline(always)]
fn total<T: Elem>(acc: [[T; 8]; 4]) -> T {
    acc.iter().flatten().fold(T::zero(), |s, &v| s + v)
}

/// `sum_i a[i] * b[i]` over the common length.
pub(crate) fn dot<T: Elem>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [[T::zero(); 8]; 4];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::zero(), |s, (&u, &v)| u.mul_add(v, s));
    for (u, v) in ca.zip(cb) {
        for (g, acc) in acc.iter_mut().enumerate() {
            let (u, v) = (&u[8 * g..8 * g + 8], &v[8 * g..8 * g + 8]);
            for l in 0..8 {
                acc[l] = u[l].mul_add(v[l], acc[l]);
            }
        }
    }
    total(acc) + tail
}

/// `sum_i a[i]`.
pub(crate) fn sum<T: Elem>(a: &[T]) -> T {
    let mut acc = [[T::zero(); 8]; 4];
    let ca = a.chunks_exact(LANES);
    let tail = ca.remainder().iter().fold(T::zero(), |s, &u| s + u);
    for u in ca {
        for (g, acc) in acc.iter_mut().enumerate() {
            let u = &u[8 * g..8 * g + 8];
            for l in 0..8 {
                acc[l] = acc[l] + u[l];
            }
        }
    }
    total(acc) + tail
}

/// `(sum_i (a[i] - m), sum_i (a[i] - m)^2)`: for `m` near the mean, both without the
/// cancellation of plain sums of values and squares.
pub(crate) fn sum_dev_and_sq_dev<T: Elem>(a: &[T], m: T) -> (T, T) {
    let (mut s, mut q) = ([[T::zero(); 8]; 4], [[T::zero(); 8]; 4]);
    let ca = a.chunks_exact(LANES);
    let (ts, tq) = ca
        .remainder()
        .iter()
        .fold((T::zero(), T::zero()), |(s, q), &u| {
            (s + (u - m), (u - m).mul_add(u - m, q))
        });
    for u in ca {
        for g in 0..4 {
            let u = &u[8 * g..8 * g + 8];
            for l in 0..8 {
                let d = u[l] - m;
                s[g][l] = s[g][l] + d;
                q[g][l] = d.mul_add(d, q[g][l]);
            }
        }
    }
    (total(s) + ts, total(q) + tq)
}

/// `(sum_i d[i], sum_i d[i] * (x[i] - m))` over the common length.
pub(crate) fn sum_and_dot_dev<T: Elem>(d: &[T], x: &[T], m: T) -> (T, T) {
    let n = d.len().min(x.len());
    let (d, x) = (&d[..n], &x[..n]);
    let (mut s, mut p) = ([[T::zero(); 8]; 4], [[T::zero(); 8]; 4]);
    let (cd, cx) = (d.chunks_exact(LANES), x.chunks_exact(LANES));
    let (ts, tp) = cd
        .remainder()
        .iter()
        .zip(cx.remainder())
        .fold((T::zero(), T::zero()), |(s, p), (&u, &v)| {
            (s + u, u.mul_add(v - m, p))
        });
    for (u, v) in cd.zip(cx) {
        for g in 0..4 {
            let (u, v) = (&u[8 * g..8 * g + 8], &v[8 * g..8 * g + 8]);
            for l in 0..8 {
                s[g][l] = s[g][l] + u[l];
                p[g][l] = u[l].mul_add(v[l] - m, p[g][l]);
            }
        }
    }
    (total(s) + ts, total(p) + tp)
}

/// Elements per parallel task of [`dot_par`].
const TASK: usize = 1 << 14;
/// Elements per vectorised dot product, added up in f64.
const BLOCK: usize = 1 << 11;

/// `sum_i a[i] * b[i]` over the common length, on all threads: blocks of [`BLOCK`]
/// elements reduced with [`dot`], added up in f64 in a fixed order (the result does not
/// depend on the number of threads).
pub(crate) fn dot_par<T: Elem>(a: &[T], b: &[T]) -> f64 {
    let n = a.len().min(b.len());
    let partial: Vec<f64> = a[..n]
        .par_chunks(TASK)
        .zip(b[..n].par_chunks(TASK))
        .map(|(a, b)| {
            a.chunks(BLOCK)
                .zip(b.chunks(BLOCK))
                .map(|(u, v)| dot(u, v).as_f64())
                .sum::<f64>()
        })
        .collect();
    partial.iter().sum()
}

/// `dst[i] += a * src[i]`, on all threads.
pub(crate) fn axpy_par<T: Elem>(dst: &mut [T], a: T, src: &[T]) {
    dst.par_chunks_mut(TASK)
        .zip(src.par_chunks(TASK))
        .for_each(|(d, s)| axpy(d, a, s));
}

/// The element-wise sum of `parts` (each `len` long), added in order: per-image or
/// per-group weight-gradient partials, summed in a fixed order so that results do not
/// depend on the number of threads.
pub(crate) fn sum_parts<'a, T: Elem>(
    parts: impl IntoIterator<Item = &'a [T]>,
    len: usize,
) -> Vec<T> {
    let mut out = vec![T::zero(); len];
    for p in parts {
        for (o, &v) in out.iter_mut().zip(p) {
            *o = *o + v;
        }
    }
    out
}

/// `dst[i] += a * src[i]`.
pub(crate) fn axpy<T: Elem>(dst: &mut [T], a: T, src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = a.mul_add(s, *d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lengths below, at and around the lane count, and a long one.
    const LENGTHS: [usize; 7] = [0, 1, 31, 32, 33, 100, 1089];

    fn data(n: usize, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|i| (((i as u64 + 1) * (seed * 2 + 7919)) % 997) as f64 / 97.0 - 5.0)
            .collect()
    }

    #[test]
    fn reductions_match_plain_loops() {
        for n in LENGTHS {
            let (a, b) = (data(n, 1), data(n, 2));
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * (1.0 + y.abs());
            let plain_dot: f64 = a.iter().zip(&b).map(|(u, v)| u * v).sum();
            assert!(close(dot(&a, &b), plain_dot), "dot, n = {n}");
            assert!(close(sum(&a), a.iter().sum()), "sum, n = {n}");
            let m = 0.75;
            let (dev, sq) = sum_dev_and_sq_dev(&a, m);
            let plain_dev: f64 = a.iter().map(|u| u - m).sum();
            let plain_sq: f64 = a.iter().map(|u| (u - m) * (u - m)).sum();
            assert!(close(dev, plain_dev), "deviations, n = {n}");
            assert!(close(sq, plain_sq), "squared deviations, n = {n}");
            let (s, p) = sum_and_dot_dev(&a, &b, m);
            assert!(close(s, a.iter().sum()), "sum of d, n = {n}");
            let plain_p: f64 = a.iter().zip(&b).map(|(u, v)| u * (v - m)).sum();
            assert!(close(p, plain_p), "dot with deviations, n = {n}");
        }
    }

    #[test]
    fn parallel_dot_and_axpy_match_plain_loops() {
        let (a, b) = (data(100_003, 6), data(100_003, 7));
        let plain: f64 = a.iter().zip(&b).map(|(u, v)| u * v).sum();
        assert!((dot_par(&a, &b) - plain).abs() < 1e-9 * (1.0 + plain.abs()));
        let mut d = a.clone();
        axpy_par(&mut d, 0.5, &b);
        for ((d, a), b) in d.iter().zip(&a).zip(&b) {
            assert!((d - (a + 0.5 * b)).abs() < 1e-12);
        }
    }

    #[test]
    fn dot_reads_only_the_common_length() {
        let (a, b) = (data(40, 3), data(70, 4));
        let plain: f64 = a.iter().zip(&b).map(|(u, v)| u * v).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-9 * (1.0 + plain.abs()));
    }

    #[test]
    fn f32_sums_agree_with_f64() {
        let a = data(4096, 5);
        let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
        let exact: f64 = a32.iter().map(|&v| v as f64).sum();
        assert!(
            (sum(&a32) as f64 - exact).abs() < 1e-3,
            "f32 lane sum drifted"
        );
    }
}
