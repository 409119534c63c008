//! Output buffers filled chunk by chunk on all threads.
//!
//! `vec![0.0; n]` zeroes the whole buffer on the calling thread before a kernel writes it
//! again: for large buffers the C library's `memset` streams past the cache, so the
//! kernel's writes then miss it too. On the DARTS-V2 training step these zeroings were an
//! eighth of all cycles (`perf`), one thread working while the other waited. Here each
//! chunk is zeroed by the thread that fills it, just before, while it is in its cache.
//!
//! The zeroing keeps this safe: every element is initialised before any reference to it
//! exists. It is one of the places the workspace allows `unsafe` (two lines below).
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A vector of `len` elements: `fill(i, c)` writes chunk `i` (elements `i * chunk..`, the
/// last chunk maybe shorter), which holds zeros (`T::default()`) when it gets it. Chunks
/// run in parallel; `chunk` must be positive.
pub(crate) fn par_chunks_new<T, F>(len: usize, chunk: usize, fill: F) -> Vec<T>
where
    T: Copy + Default + Send + Sync,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    par_chunks_new_init(len, chunk, || (), |_, i, c| fill(i, c))
}

/// [`par_chunks_new`] with per-thread scratch `init()` passed to `fill` (as rayon's
/// `for_each_init`).
pub(crate) fn par_chunks_new_init<T, S, I, F>(len: usize, chunk: usize, init: I, fill: F) -> Vec<T>
where
    T: Copy + Default + Send + Sync,
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize, &mut [T]) + Sync + Send,
{
    assert!(chunk > 0, "chunks must be non-empty");
    let mut out: Vec<T> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each_init(init, |scratch, (i, c)| {
            c.fill(MaybeUninit::new(T::default()));
            // SAFETY: every element of `c` was initialised on the line above, and
            // `MaybeUninit<T>` has the size, alignment and layout of `T`.
            let c = unsafe { &mut *(c as *mut [MaybeUninit<T>] as *mut [T]) };
            fill(scratch, i, c);
        });
    // SAFETY: the chunks cover elements `0..len`, each initialised above (a panic in
    // `fill` propagates out of `for_each_init` before this line, leaving the length 0).
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_is_zeroed_then_filled_in_place() {
        for (len, chunk) in [(0, 3), (1, 3), (10, 3), (12, 4), (1000, 7)] {
            let v: Vec<u64> = par_chunks_new(len, chunk, |i, c| {
                assert!(c.iter().all(|&x| x == 0));
                assert_eq!(c.len(), chunk.min(len - i * chunk));
                for (j, x) in c.iter_mut().enumerate() {
                    *x = (i * chunk + j) as u64 * 3;
                }
            });
            let expected: Vec<u64> = (0..len as u64).map(|k| k * 3).collect();
            assert_eq!(v, expected, "len {len}, chunk {chunk}");
        }
    }

    #[test]
    fn a_chunk_left_alone_reads_zero() {
        let v: Vec<f32> = par_chunks_new_init(
            9,
            4,
            || 5usize,
            |s, i, c| {
                if i == 1 {
                    c[0] = *s as f32;
                }
            },
        );
        assert_eq!(v, [0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
