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

/// Two vectors filled together: chunk `i` of `a` (`chunk_a` elements of `len_a`) and
/// chunk `i` of `b` (`chunk_b` elements each, as many chunks as `a` has), both zeroed,
/// go to `fill(scratch, i, a_i, b_i)`.
pub(crate) fn par_chunk_pairs_new_init<T, U, S, I, F>(
    len_a: usize,
    chunk_a: usize,
    chunk_b: usize,
    init: I,
    fill: F,
) -> (Vec<T>, Vec<U>)
where
    T: Copy + Default + Send + Sync,
    U: Copy + Default + Send + Sync,
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize, &mut [T], &mut [U]) + Sync + Send,
{
    assert!(chunk_a > 0 && chunk_b > 0, "chunks must be non-empty");
    let len_b = len_a.div_ceil(chunk_a) * chunk_b;
    let mut a: Vec<T> = Vec::with_capacity(len_a);
    let mut b: Vec<U> = Vec::with_capacity(len_b);
    a.spare_capacity_mut()[..len_a]
        .par_chunks_mut(chunk_a)
        .zip(b.spare_capacity_mut()[..len_b].par_chunks_mut(chunk_b))
        .enumerate()
        .for_each_init(init, |scratch, (i, (ca, cb))| {
            ca.fill(MaybeUninit::new(T::default()));
            cb.fill(MaybeUninit::new(U::default()));
            // SAFETY: as in `par_chunks_new_init`: both chunks were just initialised.
            let ca = unsafe { &mut *(ca as *mut [MaybeUninit<T>] as *mut [T]) };
            let cb = unsafe { &mut *(cb as *mut [MaybeUninit<U>] as *mut [U]) };
            fill(scratch, i, ca, cb);
        });
    // SAFETY: the zipped chunks cover `0..len_a` and `0..len_b` (as many chunks of
    // `chunk_b` as `a` has chunks), each initialised above.
    unsafe {
        a.set_len(len_a);
        b.set_len(len_b);
    }
    (a, b)
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
    fn pairs_of_chunks_line_up() {
        for (len, chunk) in [(0, 3), (10, 3), (12, 4)] {
            let (a, b): (Vec<u32>, Vec<u64>) = par_chunk_pairs_new_init(
                len,
                chunk,
                2,
                || (),
                |_, i, ca, cb| {
                    assert!(ca.iter().all(|&x| x == 0) && cb == [0, 0]);
                    ca.fill(i as u32);
                    cb.copy_from_slice(&[i as u64, ca.len() as u64]);
                },
            );
            let chunks = len.div_ceil(chunk);
            assert_eq!(a, (0..len).map(|k| (k / chunk) as u32).collect::<Vec<_>>());
            let expected: Vec<u64> = (0..chunks)
                .flat_map(|i| [i as u64, chunk.min(len - i * chunk) as u64])
                .collect();
            assert_eq!(b, expected);
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
