//! The stride-1 depthwise kernels on padded planes (the layout is in `padded.rs`): each
//! tap is one contiguous multiply-add over the plane, each weight's gradient one dot
//! product. Sums run in a fixed order, as everywhere in this crate.

use rayon::prelude::*;

use crate::kernels::buffer::{par_chunk_pairs_new_init, par_chunks_new_init};
use crate::kernels::elem::Elem;
use crate::kernels::padded::{correlate, Dense};
use crate::kernels::reduce::{self, dot};

/// Forward: planes in parallel; per plane the wide grid is a correlation of the padded
/// plane with the channel's taps ([`correlate`]).
pub(crate) fn forward<T: Elem>(d: &Dense, c: usize, x: &[T], w: &[T], relu: bool) -> Vec<T> {
    let (pi, po, kk) = (d.h * d.w, d.oh * d.ow, d.k * d.k);
    let shifts: Vec<usize> = (0..kk).map(|t| d.shift(t)).collect();
    par_chunks_new_init(
        x.len() / pi * po,
        po,
        || (Vec::new(), Vec::new()),
        |(padded, wide), plane, yp| {
            d.pad(&x[plane * pi..(plane + 1) * pi], relu, padded);
            wide.resize(d.wide_len(), T::zero());
            let wc = &w[(plane % c) * kk..(plane % c + 1) * kk];
            correlate(wide, padded, &shifts, wc);
            for (r, row) in yp.chunks_exact_mut(d.ow).enumerate() {
                row.copy_from_slice(&wide[r * d.wp()..r * d.wp() + d.ow]);
            }
        },
    )
}

/// Input gradient: the transpose of the forward's correlation, gathered rather than
/// scattered: padded-plane element `j` collects `w_t * wide[j - shift_t]` over the taps,
/// read from the wide output gradient with `max shift` zeros on either side. Only the
/// rows of the interior are computed; the interior is the gradient, masked by the ReLU.
pub(crate) fn input_grad<T: Elem>(
    d: &Dense,
    c: usize,
    dy: &[T],
    w: &[T],
    x: &[T],
    relu: bool,
) -> Vec<T> {
    let (pi, po, kk) = (d.h * d.w, d.oh * d.ow, d.k * d.k);
    let gather = Gather::new(d);
    par_chunks_new_init(
        x.len(),
        pi,
        || (Vec::new(), Vec::new()),
        |(ext, rows), plane, dxp| {
            gather.extend(d, &dy[plane * po..(plane + 1) * po], ext);
            let wc = &w[(plane % c) * kk..(plane % c + 1) * kk];
            let xp = &x[plane * pi..(plane + 1) * pi];
            gather.plane(d, ext, rows, wc, (xp, relu), dxp);
        },
    )
}

/// The input gradient's gather (see [`input_grad`]).
struct Gather {
    /// Per tap, where the interior's first row reads in the extended gradient.
    offsets: Vec<usize>,
    max_shift: usize,
    /// Interior rows of the padded plane, `h * wp` elements.
    band: usize,
    ext_len: usize,
}

impl Gather {
    fn new(d: &Dense) -> Self {
        let (p, wp, kk) = (d.padding, d.wp(), d.k * d.k);
        let max_shift = d.shift(kk - 1);
        // Interior rows of the padded plane: j in [p * wp, (p + h) * wp); element j reads
        // ext[j - shift_t + max_shift] where ext = [zeros(max_shift), wide, zeros].
        let band = d.h * wp;
        Gather {
            offsets: (0..kk).map(|t| p * wp + max_shift - d.shift(t)).collect(),
            max_shift,
            band,
            ext_len: band + 2 * max_shift + p * wp + d.wide_len(),
        }
    }

    /// One plane's output gradient `dy` into `ext`, the wide grid after `max_shift`
    /// zeros. Zeroed once per scratch buffer: only the rows are rewritten.
    fn extend<T: Elem>(&self, d: &Dense, dy: &[T], ext: &mut Vec<T>) {
        if ext.len() != self.ext_len {
            ext.clear();
            ext.resize(self.ext_len, T::zero());
        }
        for (r, row) in dy.chunks_exact(d.ow).enumerate() {
            let at = self.max_shift + r * d.wp();
            ext[at..at + d.ow].copy_from_slice(row);
        }
    }

    /// The wide output gradient inside `ext` (what [`weight_grad`] widens).
    fn wide<'a, T>(&self, d: &Dense, ext: &'a [T]) -> &'a [T] {
        &ext[self.max_shift..self.max_shift + d.wide_len()]
    }

    /// One plane's input gradient into `dxp`: the taps `wc` gathered from `ext`, masked
    /// by the ReLU of the input plane `xp` when `relu`.
    fn plane<T: Elem>(
        &self,
        d: &Dense,
        ext: &[T],
        rows: &mut Vec<T>,
        wc: &[T],
        (xp, relu): (&[T], bool),
        dxp: &mut [T],
    ) {
        let (p, wp) = (d.padding, d.wp());
        rows.resize(self.band, T::zero());
        correlate(rows, ext, &self.offsets, wc);
        for (r, (row, xrow)) in dxp
            .chunks_exact_mut(d.w)
            .zip(xp.chunks_exact(d.w))
            .enumerate()
        {
            let src = &rows[r * wp + p..r * wp + p + d.w];
            for ((o, &g), &xv) in row.iter_mut().zip(src).zip(xrow) {
                *o = if relu && xv <= T::zero() {
                    T::zero()
                } else {
                    g
                };
            }
        }
    }
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
    reduce::sum_parts(partial.chunks_exact(c * kk), c * kk)
}

/// Input and weight gradients in one pass over the planes: each plane's padded input and
/// widened output gradient are built once for both (as [`input_grad`] and
/// [`weight_grad`], whose results these equal).
pub(crate) fn backward<T: Elem>(
    d: &Dense,
    c: usize,
    dy: &[T],
    w: &[T],
    x: &[T],
    relu: bool,
) -> (Vec<T>, Vec<T>) {
    let (pi, po, kk) = (d.h * d.w, d.oh * d.ow, d.k * d.k);
    let gather = Gather::new(d);
    let (dx, partial) = par_chunk_pairs_new_init(
        x.len(),
        pi,
        kk,
        || (Vec::new(), Vec::new(), Vec::new()),
        |(ext, rows, padded), plane, dxp, pp| {
            gather.extend(d, &dy[plane * po..(plane + 1) * po], ext);
            let xp = &x[plane * pi..(plane + 1) * pi];
            d.pad(xp, relu, padded);
            let wide = gather.wide(d, ext);
            for (t, out) in pp.iter_mut().enumerate() {
                *out = dot(wide, &padded[d.shift(t)..d.shift(t) + wide.len()]);
            }
            let wc = &w[(plane % c) * kk..(plane % c + 1) * kk];
            gather.plane(d, ext, rows, wc, (xp, relu), dxp);
        },
    );
    (dx, reduce::sum_parts(partial.chunks_exact(c * kk), c * kk))
}
