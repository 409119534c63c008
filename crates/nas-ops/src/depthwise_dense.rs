//! The stride-1 depthwise kernels on padded planes: every tap becomes one long
//! contiguous multiply-add over a whole plane.
//!
//! The input plane is copied (with the fused ReLU) into a zero-padded plane of width
//! `wp = w + 2 * padding`, and outputs are computed on a "wide" grid of the same width:
//! output `(r, c)` of tap `(kh, kw)` reads padded element `r * wp + c + kh * d * wp +
//! kw * d`, so for a fixed tap the whole plane is `wide[i] += w_tap * padded[i + shift]`.
//! The `wp - ow` extra columns per row are computed and dropped. Row by row (the strided
//! kernels in `depthwise.rs`) a 32-wide row is only four AVX2 vectors, and loop overhead
//! per row and tap dominated; on padded planes there is one loop per tap.
//!
//! Backward passes use the same layout: the output gradient is spread onto the wide grid
//! (its extra columns zero), the input gradient accumulates into a padded plane whose
//! interior is copied out, and each weight's gradient is one dot product. Sums run in a
//! fixed order, as everywhere in this crate.

use rayon::prelude::*;

use crate::cpu::{act, Elem};

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
    fn wp(&self) -> usize {
        self.w + 2 * self.padding
    }

    /// Padded plane length, with room for the furthest tap's shift past the last row.
    fn padded_len(&self) -> usize {
        (self.h + 2 * self.padding) * self.wp() + (self.k - 1) * self.dilation
    }

    fn wide_len(&self) -> usize {
        self.oh * self.wp()
    }

    /// Offset of tap `t` (`kh * k + kw`) in the padded plane.
    fn shift(&self, t: usize) -> usize {
        let (kh, kw) = (t / self.k, t % self.k);
        kh * self.dilation * self.wp() + kw * self.dilation
    }

    /// Copies plane `x` (with ReLU if `relu`) into `padded` (resized and zeroed).
    fn pad<T: Elem>(&self, x: &[T], relu: bool, padded: &mut Vec<T>) {
        padded.clear();
        padded.resize(self.padded_len(), T::zero());
        let (p, wp) = (self.padding, self.wp());
        for (r, row) in x.chunks_exact(self.w).enumerate() {
            let dst = &mut padded[(r + p) * wp + p..(r + p) * wp + p + self.w];
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = act(v, relu);
            }
        }
    }

    /// Spreads an output-shaped plane onto the wide grid (extra columns zero).
    fn widen<T: Elem>(&self, y: &[T], wide: &mut Vec<T>) {
        wide.clear();
        wide.resize(self.wide_len(), T::zero());
        for (r, row) in y.chunks_exact(self.ow).enumerate() {
            wide[r * self.wp()..r * self.wp() + self.ow].copy_from_slice(row);
        }
    }
}

/// Forward: planes in parallel, `k * k` contiguous passes per plane.
pub(crate) fn forward<T: Elem>(d: &Dense, c: usize, x: &[T], w: &[T], relu: bool) -> Vec<T> {
    let (pi, po, kk) = (d.h * d.w, d.oh * d.ow, d.k * d.k);
    let mut y = vec![T::zero(); x.len() / pi * po];
    y.par_chunks_mut(po).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(padded, wide), (plane, yp)| {
            d.pad(&x[plane * pi..(plane + 1) * pi], relu, padded);
            wide.clear();
            wide.resize(d.wide_len(), T::zero());
            let wc = &w[(plane % c) * kk..(plane % c + 1) * kk];
            for (t, &wv) in wc.iter().enumerate() {
                let src = &padded[d.shift(t)..d.shift(t) + wide.len()];
                for (o, &v) in wide.iter_mut().zip(src) {
                    *o = *o + wv * v;
                }
            }
            for (r, row) in yp.chunks_exact_mut(d.ow).enumerate() {
                row.copy_from_slice(&wide[r * d.wp()..r * d.wp() + d.ow]);
            }
        },
    );
    y
}

/// Input gradient: each tap adds the shifted wide output gradient into a padded plane;
/// the interior is the gradient, masked by the ReLU.
pub(crate) fn input_grad<T: Elem>(
    d: &Dense,
    c: usize,
    dy: &[T],
    w: &[T],
    x: &[T],
    relu: bool,
) -> Vec<T> {
    let (pi, po, kk) = (d.h * d.w, d.oh * d.ow, d.k * d.k);
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(pi).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(padded, wide), (plane, dxp)| {
            d.widen(&dy[plane * po..(plane + 1) * po], wide);
            padded.clear();
            padded.resize(d.padded_len(), T::zero());
            let wc = &w[(plane % c) * kk..(plane % c + 1) * kk];
            for (t, &wv) in wc.iter().enumerate() {
                let dst = &mut padded[d.shift(t)..d.shift(t) + wide.len()];
                for (o, &g) in dst.iter_mut().zip(wide.iter()) {
                    *o = *o + wv * g;
                }
            }
            let (p, wp) = (d.padding, d.wp());
            let xp = &x[plane * pi..(plane + 1) * pi];
            for (r, (row, xrow)) in dxp
                .chunks_exact_mut(d.w)
                .zip(xp.chunks_exact(d.w))
                .enumerate()
            {
                let src = &padded[(r + p) * wp + p..(r + p) * wp + p + d.w];
                for ((o, &g), &xv) in row.iter_mut().zip(src).zip(xrow) {
                    *o = if relu && xv <= T::zero() {
                        T::zero()
                    } else {
                        g
                    };
                }
            }
        },
    );
    dx
}

/// `sum_i a[i] * b[i]` with 8 independent lanes (so that it vectorises), added up in a
/// fixed order.
fn dot<T: Elem>(a: &[T], b: &[T]) -> T {
    let mut lanes = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: T = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::zero(), |s, (&u, &v)| s + u * v);
    for (u, v) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] = lanes[l] + u[l] * v[l];
        }
    }
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
        + tail
}

/// Weight gradient: per plane, one dot product per tap of the wide output gradient with
/// the shifted padded input; planes of a channel summed in image order.
pub(crate) fn weight_grad<T: Elem>(d: &Dense, c: usize, dy: &[T], x: &[T], relu: bool) -> Vec<T> {
    let (pi, po, kk) = (d.h * d.w, d.oh * d.ow, d.k * d.k);
    let planes = x.len() / pi;
    let mut partial = vec![T::zero(); planes * kk];
    partial.par_chunks_mut(kk).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(padded, wide), (plane, pp)| {
            d.pad(&x[plane * pi..(plane + 1) * pi], relu, padded);
            d.widen(&dy[plane * po..(plane + 1) * po], wide);
            for (t, out) in pp.iter_mut().enumerate() {
                *out = dot(wide, &padded[d.shift(t)..d.shift(t) + wide.len()]);
            }
        },
    );
    let mut dw = vec![T::zero(); c * kk];
    for image in partial.chunks_exact(c * kk) {
        for (o, &v) in dw.iter_mut().zip(image) {
            *o = *o + v;
        }
    }
    dw
}
