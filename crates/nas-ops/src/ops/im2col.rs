//! A dense `k x k` convolution (no bias, one group) on the CPU as one matrix product per
//! image over the unfolded input ("im2col"): the stems' 3x3 convolutions and the
//! auxiliary head's 2x2 one. candle's CPU convolution and its backward (a convolution for
//! the weight gradient, a transposed one for the input's) took a tenth of the DARTS-V2
//! training step; here every product goes through `gemm.rs`, and the input gradient is
//! only computed when the input needs one.

use candle_core::{Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::buffer::par_chunks_new_init;
use crate::kernels::elem::Elem;
use crate::kernels::gemm::{matmul, MatRef};
use crate::kernels::reduce;
use crate::ops::shell::custom_op;
use crate::ops::storage::dispatch;

const OP: &str = "conv2d";

/// Images per job of the weight gradient (fixed, so results do not depend on the number
/// of threads).
const DW_IMAGES: usize = 4;

/// `y = conv(x, w)` with `x` `[n, in, h, w]`, `w` `[out, in, k, k]`, zero `padding` and
/// `stride`; PyTorch's `conv2d` without bias. On devices other than the CPU, candle's.
pub(crate) fn conv2d_unfold(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.conv2d(w, padding, stride, 1, 1);
    }
    let geom = Geometry::new(x.dims(), w.dims(), padding, stride)?;
    x.contiguous()?.apply_op2(&w.contiguous()?, Conv { geom })
}

#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    oh: usize,
    ow: usize,
    padding: usize,
    stride: usize,
}

impl Geometry {
    fn new(x: &[usize], w: &[usize], padding: usize, stride: usize) -> Result<Self> {
        let (&[n, cin, h, wd], &[cout, wi, k, k2]) = (x, w) else {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: "input [n, c, h, w] and weight [out, in, k, k]".to_string(),
                got: [x, w].concat(),
            }
            .into());
        };
        if wi != cin
            || k != k2
            || k == 0
            || stride == 0
            || h + 2 * padding < k
            || wd + 2 * padding < k
        {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: format!(
                    "a square weight [out, {cin}, k, k] no larger than the padded input, stride > 0"
                ),
                got: [x, w].concat(),
            }
            .into());
        }
        let out = |size: usize| (size + 2 * padding - k) / stride + 1;
        Ok(Geometry {
            n,
            cin,
            cout,
            h,
            w: wd,
            k,
            oh: out(h),
            ow: out(wd),
            padding,
            stride,
        })
    }

    fn rows(&self) -> usize {
        self.cin * self.k * self.k
    }

    fn plane_out(&self) -> usize {
        self.oh * self.ow
    }

    fn image_in(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// For tap `(kh, kw)` and output row `r`: the input row, and the output columns whose
    /// input column `c * stride - padding + kw` lies inside, with the first such column.
    fn span(
        &self,
        kh: usize,
        kw: usize,
        r: usize,
    ) -> Option<(usize, std::ops::Range<usize>, usize)> {
        let ih = (r * self.stride + kh).checked_sub(self.padding)?;
        if ih >= self.h {
            return None;
        }
        // Columns c with 0 <= c * s + kw - p < w.
        let lo = self.padding.saturating_sub(kw).div_ceil(self.stride);
        let hi = ((self.w + self.padding).saturating_sub(kw))
            .div_ceil(self.stride)
            .min(self.ow);
        (lo < hi).then(|| (ih, lo..hi, lo * self.stride + kw - self.padding))
    }

    /// One image unfolded into `col` `[in * k * k, oh * ow]` (zeros where the window
    /// reaches the padding).
    fn unfold<T: Elem>(&self, xi: &[T], col: &mut Vec<T>) {
        let po = self.plane_out();
        col.clear();
        col.resize(self.rows() * po, T::zero());
        for (row, dst) in col.chunks_exact_mut(po).enumerate() {
            let (ci, kh, kw) = (row / (self.k * self.k), row / self.k % self.k, row % self.k);
            let plane = &xi[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            for r in 0..self.oh {
                let Some((ih, cols, iw0)) = self.span(kh, kw, r) else {
                    continue;
                };
                let src = &plane[ih * self.w..(ih + 1) * self.w];
                for (i, c) in cols.enumerate() {
                    dst[r * self.ow + c] = src[iw0 + i * self.stride];
                }
            }
        }
    }

    /// `dcol` `[in * k * k, oh * ow]` added back into one image's input gradient.
    fn fold<T: Elem>(&self, dcol: &[T], dxi: &mut [T]) {
        let po = self.plane_out();
        for (row, src) in dcol.chunks_exact(po).enumerate() {
            let (ci, kh, kw) = (row / (self.k * self.k), row / self.k % self.k, row % self.k);
            let plane = &mut dxi[ci * self.h * self.w..(ci + 1) * self.h * self.w];
            for r in 0..self.oh {
                let Some((ih, cols, iw0)) = self.span(kh, kw, r) else {
                    continue;
                };
                let dst = &mut plane[ih * self.w..(ih + 1) * self.w];
                for (i, c) in cols.enumerate() {
                    let at = iw0 + i * self.stride;
                    dst[at] = dst[at] + src[r * self.ow + c];
                }
            }
        }
    }
}

fn forward<T: Elem>(g: &Geometry, x: &[T], w: &[T]) -> Vec<T> {
    let image_out = g.cout * g.plane_out();
    par_chunks_new_init(g.n * image_out, image_out, Vec::new, |col, img, yi| {
        g.unfold(&x[img * g.image_in()..(img + 1) * g.image_in()], col);
        matmul(
            yi,
            MatRef::rows(w, g.cout, g.rows()),
            MatRef::rows(col, g.rows(), g.plane_out()),
            false,
        );
    })
}

/// `dw = sum_n dy[n] col[n]^T`: fixed groups of images, partials added in group order.
fn weight_grad<T: Elem>(g: &Geometry, dy: &[T], x: &[T]) -> Vec<T> {
    let po = g.plane_out();
    let groups: Vec<usize> = (0..g.n).step_by(DW_IMAGES).collect();
    let partials: Vec<Vec<T>> = groups
        .into_par_iter()
        .map(|first| {
            let (mut acc, mut col) = (vec![T::zero(); g.cout * g.rows()], Vec::new());
            for img in first..(first + DW_IMAGES).min(g.n) {
                g.unfold(&x[img * g.image_in()..(img + 1) * g.image_in()], &mut col);
                matmul(
                    &mut acc,
                    MatRef::rows(&dy[img * g.cout * po..(img + 1) * g.cout * po], g.cout, po),
                    MatRef::transposed(&col, g.rows(), po),
                    img > first,
                );
            }
            acc
        })
        .collect();
    reduce::sum_parts(partials.iter().map(Vec::as_slice), g.cout * g.rows())
}

/// `dx[n] = fold(w^T dy[n])`.
fn input_grad<T: Elem>(g: &Geometry, dy: &[T], w: &[T]) -> Vec<T> {
    let po = g.plane_out();
    par_chunks_new_init(
        g.n * g.image_in(),
        g.image_in(),
        Vec::new,
        |dcol, img, dxi| {
            dcol.resize(g.rows() * po, T::zero());
            matmul(
                dcol,
                MatRef::transposed(w, g.cout, g.rows()),
                MatRef::rows(&dy[img * g.cout * po..(img + 1) * g.cout * po], g.cout, po),
                false,
            );
            g.fold(dcol, dxi);
        },
    )
}

struct Conv {
    geom: Geometry,
}

custom_op! {
    Conv: CustomOp2 = OP;
    cpu(&self, s1, l1, s2, l2) {
        let g = &self.geom;
        dispatch!(OP, [(s1, l1) => x, (s2, l2) => w], |T| {
            let y = forward::<T>(g, x, w);
            Ok((T::storage(y), Shape::from((g.n, g.cout, g.oh, g.ow))))
        })
    }
    extra {
        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let dy = dy.contiguous()?;
            let dw = dy.apply_op2_no_bwd(x, &WeightGrad { geom: self.geom })?;
            // The image into a stem needs no gradient.
            let dx = if x.track_op() {
                Some(dy.apply_op2_no_bwd(w, &InputGrad { geom: self.geom })?)
            } else {
                None
            };
            Ok((dx, Some(dw)))
        }
    }
}

/// `(dy, x) -> dw`.
struct WeightGrad {
    geom: Geometry,
}

custom_op! {
    WeightGrad: CustomOp2 = "conv2d_weight_grad";
    cpu(&self, s1, l1, s2, l2) {
        let g = &self.geom;
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => x], |T| {
            let dw = weight_grad::<T>(g, dy, x);
            Ok((T::storage(dw), Shape::from((g.cout, g.cin, g.k, g.k))))
        })
    }
}

/// `(dy, w) -> dx`.
struct InputGrad {
    geom: Geometry,
}

custom_op! {
    InputGrad: CustomOp2 = "conv2d_input_grad";
    cpu(&self, s1, l1, s2, l2) {
        let g = &self.geom;
        dispatch!(OP, [(s1, l1) => dy, (s2, l2) => w], |T| {
            let dx = input_grad::<T>(g, dy, w);
            Ok((T::storage(dx), Shape::from((g.n, g.cin, g.h, g.w))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_check, randn};
    use candle_core::{DType, Device, Var};

    /// Shapes: `(x, w, padding, stride)`, the stems' and the auxiliary head's among them.
    fn cases() -> Vec<([usize; 4], [usize; 4], usize, usize)> {
        vec![
            ([2, 3, 6, 6], [4, 3, 3, 3], 1, 1),
            ([2, 3, 7, 7], [4, 3, 3, 3], 1, 2),
            ([1, 2, 5, 4], [3, 2, 2, 2], 0, 1),
            ([2, 2, 5, 5], [3, 2, 5, 5], 2, 3),
            ([1, 2, 4, 4], [2, 2, 3, 3], 0, 2),
        ]
    }

    #[test]
    fn matches_candles_convolution() -> Result<()> {
        let dev = Device::Cpu;
        for (xs, ws, p, s) in cases() {
            let x = randn(&xs, DType::F64, &dev)?;
            let w = randn(&ws, DType::F64, &dev)?;
            let what = format!("{xs:?} {ws:?} p{p} s{s}");
            let got = conv2d_unfold(&x, &w, p, s)?;
            assert_close(&got, &x.conv2d(&w, p, s, 1, 1)?, 1e-12, 1e-12, &what)?;
            let got32 = conv2d_unfold(&x.to_dtype(DType::F32)?, &w.to_dtype(DType::F32)?, p, s)?;
            assert_close(&got32, &got, 1e-5, 1e-5, &what)?;
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (xs, ws, p, s) in cases() {
            let inputs = [randn(&xs, DType::F64, &dev)?, randn(&ws, DType::F64, &dev)?];
            grad_check(
                &inputs,
                |t| conv2d_unfold(&t[0], &t[1], p, s),
                &format!("{xs:?} {ws:?} p{p} s{s}"),
            )?;
        }
        Ok(())
    }

    /// An input that is not tracked gets no gradient, the weight still does.
    #[test]
    fn an_untracked_input_gets_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(&[1, 2, 4, 4], DType::F64, &dev)?;
        let w = Var::from_tensor(&randn(&[3, 2, 3, 3], DType::F64, &dev)?)?;
        let grads = conv2d_unfold(&x, &w, 1, 1)?.sum_all()?.backward()?;
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&w).is_some());
        Ok(())
    }
}
