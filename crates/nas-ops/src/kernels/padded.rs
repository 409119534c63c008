//! The padded-plane layout of the stride-1 kernels (`depthwise_dense.rs`,
//! `pool_dense.rs`): every tap of a `k x k` window becomes one long contiguous pass over
//! a whole plane.
//!
//! The input plane is copied (with the fused ReLU, if any) into a padded plane of width
//! `wp = w + 2 * padding`, and outputs are computed on a "wide" grid of the same width:
//! output `(r, c)` of tap `(kh, kw)` reads padded element `r * wp + c + kh * d * wp +
//! kw * d`, so for a fixed tap the whole plane is `wide[i] op= padded[i + shift]`. The
//! `wp - ow` extra columns per row are computed and dropped. Row by row, a 32-wide row is
//! only four AVX2 vectors, and loop overhead per row and tap dominated; on padded planes
//! there is one loop per tap.
//!
//! Backward passes use the same layout: the output gradient is spread onto the wide grid
//! (its extra columns zero), input gradients accumulate into a padded plane whose
//! interior is copied out, and weight gradients are dot products.

use crate::kernels::elem::{act, Elem};

/// The sizes of the padded layout of one plane.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dense {
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub padding: usize,
    pub dilation: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Dense {
    /// Padded width (also the wide grid's width).
    pub fn wp(&self) -> usize {
        self.w + 2 * self.padding
    }

    /// Padded plane length, with room for the furthest tap's shift past the last row.
    pub fn padded_len(&self) -> usize {
        (self.h + 2 * self.padding) * self.wp() + (self.k - 1) * self.dilation
    }

    pub fn wide_len(&self) -> usize {
        self.oh * self.wp()
    }

    /// Offset of tap `t` (`kh * k + kw`) in the padded plane.
    pub fn shift(&self, t: usize) -> usize {
        let (kh, kw) = (t / self.k, t % self.k);
        kh * self.dilation * self.wp() + kw * self.dilation
    }

    /// Copies plane `x` (with ReLU if `relu`) into `padded`, whose border is zero.
    ///
    /// `padded` is a scratch buffer reused plane after plane: it is filled once, when its
    /// length is not the padded plane's, and afterwards only the interior is rewritten.
    /// So one buffer must serve one geometry and one fill (the kernels' per-job scratch).
    pub fn pad<T: Elem>(&self, x: &[T], relu: bool, padded: &mut Vec<T>) {
        self.pad_with(x, relu, T::zero(), padded);
    }

    /// As [`Dense::pad`], the border filled with `fill`.
    pub fn pad_with<T: Elem>(&self, x: &[T], relu: bool, fill: T, padded: &mut Vec<T>) {
        if padded.len() != self.padded_len() {
            padded.clear();
            padded.resize(self.padded_len(), fill);
        }
        let (p, wp) = (self.padding, self.wp());
        for (r, row) in x.chunks_exact(self.w).enumerate() {
            let dst = &mut padded[(r + p) * wp + p..(r + p) * wp + p + self.w];
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = act(v, relu);
            }
        }
    }

    /// Spreads an output-shaped plane onto the wide grid (extra columns zero). `wide` is
    /// reused as [`Dense::pad`]'s buffer is: the extra columns are zeroed once.
    pub fn widen<T: Elem>(&self, y: &[T], wide: &mut Vec<T>) {
        if wide.len() != self.wide_len() {
            wide.clear();
            wide.resize(self.wide_len(), T::zero());
        }
        for (r, row) in y.chunks_exact(self.ow).enumerate() {
            wide[r * self.wp()..r * self.wp() + self.ow].copy_from_slice(row);
        }
    }
}

/// Output elements per register block of [`correlate`]: four AVX2 vectors of f32.
const BLOCK: usize = 32;

/// `dst[i] = sum_t weights[t] * src[i + offsets[t]]`, taps added in order. Blocks of
/// [`BLOCK`] outputs stay in registers across all taps, so each tap costs one load and one
/// multiply-add per vector rather than a load, multiply-add and store of the whole plane.
/// `src` must reach `dst.len() + max(offsets)`.
pub(crate) fn correlate<T: Elem>(dst: &mut [T], src: &[T], offsets: &[usize], weights: &[T]) {
    let start = dst.len() / BLOCK * BLOCK;
    let mut blocks = dst.chunks_exact_mut(BLOCK);
    for (b, out) in (&mut blocks).enumerate() {
        // Four groups of eight written out (as in `reduce.rs`) so that LLVM keeps them in
        // eight-wide registers.
        let mut acc = [[T::zero(); 8]; 4];
        for (&off, &wv) in offsets.iter().zip(weights) {
            let s: &[T; BLOCK] = src[b * BLOCK + off..b * BLOCK + off + BLOCK]
                .try_into()
                .expect("block length");
            for (g, acc) in acc.iter_mut().enumerate() {
                for l in 0..8 {
                    acc[l] = wv.mul_add(s[8 * g + l], acc[l]);
                }
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            out[8 * g..8 * g + 8].copy_from_slice(acc);
        }
    }
    let tail = blocks.into_remainder();
    tail.fill(T::zero());
    for (&off, &wv) in offsets.iter().zip(weights) {
        for (o, &v) in tail.iter_mut().zip(&src[start + off..]) {
            *o = wv.mul_add(v, *o);
        }
    }
}

/// Every `s`-th row and column of each `oh1 x ow1` plane of `full`, as `oh x ow` planes:
/// a strided op's output from its stride-1 version.
pub(crate) fn subsample<T: Copy>(
    full: &[T],
    (oh1, ow1): (usize, usize),
    s: usize,
    (oh, ow): (usize, usize),
) -> Vec<T> {
    let planes = full.len() / (oh1 * ow1);
    let mut out = Vec::with_capacity(planes * oh * ow);
    for plane in full.chunks_exact(oh1 * ow1) {
        for r in 0..oh {
            let row = &plane[r * s * ow1..];
            out.extend((0..ow).map(|c| row[c * s]));
        }
    }
    out
}

/// The inverse spread: `oh x ow` planes placed at every `s`-th row and column of zeroed
/// `oh1 x ow1` planes (a strided op's output gradient as its stride-1 version's).
pub(crate) fn upsample<T: Elem>(
    y: &[T],
    (oh, ow): (usize, usize),
    s: usize,
    (oh1, ow1): (usize, usize),
) -> Vec<T> {
    let planes = y.len() / (oh * ow);
    let mut out = vec![T::zero(); planes * oh1 * ow1];
    for (dst, src) in out.chunks_exact_mut(oh1 * ow1).zip(y.chunks_exact(oh * ow)) {
        for (r, row) in src.chunks_exact(ow).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                dst[r * s * ow1 + c * s] = v;
            }
        }
    }
    out
}
