//! The stride-1 pooling kernels on padded planes (the layout is in `padded.rs`): each
//! window position is one contiguous pass over the plane, in window order (row-major),
//! so sums and the first-maximum rule come out as in the window-by-window kernels.

use rayon::prelude::*;

use crate::kernels::buffer::par_chunks_new_init;
use crate::kernels::elem::Elem;
use crate::kernels::padded::Dense;

/// Per output position of the wide grid: `(first valid input index, input index of the
/// window's top-left tap)`; the second may lie outside the plane (padding), it is only
/// used plus a tap offset that lands inside.
///
/// Both are 32-bit, as wide as an f32, so that the argmax loop vectorises (i64 bases
/// halved its vectors); a plane has far fewer than 2^31 elements.
fn window_bases(d: &Dense) -> (Vec<u32>, Vec<i32>) {
    let (p, wp) = (d.padding as i64, d.wp());
    let mut first = vec![0u32; d.wide_len()];
    let mut base = vec![0i32; d.wide_len()];
    for r in 0..d.oh {
        for c in 0..wp {
            let (top, left) = (r as i64 - p, c as i64 - p);
            let (fr, fc) = (top.max(0), left.max(0).min(d.w as i64 - 1));
            first[r * wp + c] = (fr * d.w as i64 + fc) as u32;
            base[r * wp + c] = (top * d.w as i64 + left) as i32;
        }
    }
    (first, base)
}

/// Max pooling forward: the maximum and the plane index of its first occurrence (a NaN
/// wins, the first one), as the window-by-window kernel and PyTorch.
pub(crate) fn max_forward<T: Elem>(d: &Dense, x: &[T]) -> (Vec<T>, Vec<u32>) {
    let (pi, po) = (d.h * d.w, d.oh * d.ow);
    let planes = x.len() / pi;
    let (first, base) = window_bases(d);
    let mut y = vec![T::zero(); planes * po];
    let mut arg = vec![0u32; planes * po];
    y.par_chunks_mut(po)
        .zip(arg.par_chunks_mut(po))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(padded, best, at), (plane, (yp, ap))| {
                d.pad_with(
                    &x[plane * pi..(plane + 1) * pi],
                    false,
                    T::neg_infinity(),
                    padded,
                );
                best.clear();
                best.resize(d.wide_len(), T::neg_infinity());
                at.clear();
                at.extend_from_slice(&first);
                for t in 0..d.k * d.k {
                    let off = ((t / d.k) * d.w + t % d.k) as i32;
                    let src = &padded[d.shift(t)..d.shift(t) + best.len()];
                    for (((b, a), &v), &bs) in
                        best.iter_mut().zip(at.iter_mut()).zip(src).zip(&base)
                    {
                        let take = (v > *b) | (v.is_nan() & !b.is_nan());
                        *b = if take { v } else { *b };
                        // Junk columns may wrap; they are dropped below.
                        *a = if take {
                            bs.wrapping_add(off) as u32
                        } else {
                            *a
                        };
                    }
                }
                let wp = d.wp();
                for (r, (yrow, arow)) in yp
                    .chunks_exact_mut(d.ow)
                    .zip(ap.chunks_exact_mut(d.ow))
                    .enumerate()
                {
                    yrow.copy_from_slice(&best[r * wp..r * wp + d.ow]);
                    arow.copy_from_slice(&at[r * wp..r * wp + d.ow]);
                }
            },
        );
    (y, arg)
}

/// Average pooling forward: window sums (padding adds zeros) divided by `divisor`, the
/// output-shaped plane of window sizes.
pub(crate) fn avg_forward<T: Elem>(d: &Dense, x: &[T], divisor: &[T]) -> Vec<T> {
    let (pi, po) = (d.h * d.w, d.oh * d.ow);
    par_chunks_new_init(
        x.len() / pi * po,
        po,
        || (Vec::new(), Vec::new()),
        |(padded, wide), plane, yp| {
            d.pad(&x[plane * pi..(plane + 1) * pi], false, padded);
            wide.clear();
            wide.resize(d.wide_len(), T::zero());
            for t in 0..d.k * d.k {
                let src = &padded[d.shift(t)..d.shift(t) + wide.len()];
                for (o, &v) in wide.iter_mut().zip(src) {
                    *o = *o + v;
                }
            }
            let wp = d.wp();
            for (r, (row, div)) in yp
                .chunks_exact_mut(d.ow)
                .zip(divisor.chunks_exact(d.ow))
                .enumerate()
            {
                for ((o, &s), &q) in row.iter_mut().zip(&wide[r * wp..r * wp + d.ow]).zip(div) {
                    *o = s / q;
                }
            }
        },
    )
}

/// Average pooling backward: each output's share `dy / divisor` added to its window.
pub(crate) fn avg_backward<T: Elem>(d: &Dense, dy: &[T], divisor: &[T]) -> Vec<T> {
    let (pi, po) = (d.h * d.w, d.oh * d.ow);
    par_chunks_new_init(
        dy.len() / po * pi,
        pi,
        || (Vec::new(), Vec::new()),
        |(padded, wide), plane, dxp| {
            let share: Vec<T> = dy[plane * po..(plane + 1) * po]
                .iter()
                .zip(divisor)
                .map(|(&g, &q)| g / q)
                .collect();
            d.widen(&share, wide);
            padded.clear();
            padded.resize(d.padded_len(), T::zero());
            for t in 0..d.k * d.k {
                let dst = &mut padded[d.shift(t)..d.shift(t) + wide.len()];
                for (o, &g) in dst.iter_mut().zip(wide.iter()) {
                    *o = *o + g;
                }
            }
            let (p, wp) = (d.padding, d.wp());
            for (r, row) in dxp.chunks_exact_mut(d.w).enumerate() {
                row.copy_from_slice(&padded[(r + p) * wp + p..(r + p) * wp + p + d.w]);
            }
        },
    )
}
