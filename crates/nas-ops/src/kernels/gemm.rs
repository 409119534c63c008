//! A bounds-checked, safe front to the `gemm` crate's matrix product (the one candle's
//! CPU backend uses, with its AVX-512 and AVX2 kernels chosen at run time), for the fused
//! kernels that need a product into part of their output buffer.
//!
//! `gemm::gemm` takes raw pointers and strides; this module checks that every element the
//! strides reach lies inside the slices before handing them over, which is all its
//! safety contract asks. It is one of the two places the workspace allows `unsafe`.
#![allow(unsafe_code)]

use crate::kernels::elem::Elem;

/// A read-only matrix view: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major `rows x cols` matrix.
    pub fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `rows x cols` matrix (a `cols x rows` view).
    pub fn transposed(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows: cols,
            cols: rows,
            rs: 1,
            cs: cols,
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = lhs * rhs`, or `dst += lhs * rhs` with `accumulate`; `dst` is row-major
/// `lhs.rows x rhs.cols`. Single-threaded: the callers parallelise over images or rows.
///
/// Panics if the shapes disagree or a view reaches outside its slice (a bug in the
/// caller, never a user input: the ops check shapes first).
pub(crate) fn matmul<T: Elem>(dst: &mut [T], lhs: MatRef<T>, rhs: MatRef<T>, accumulate: bool) {
    product(dst, lhs, rhs, accumulate, gemm::Parallelism::None)
}

/// [`matmul`] on all of rayon's threads, for callers with one large product at a time.
/// The product splits the destination into blocks, each summed in the same order on any
/// number of threads, so results do not depend on the thread count.
pub(crate) fn matmul_par<T: Elem>(dst: &mut [T], lhs: MatRef<T>, rhs: MatRef<T>, accumulate: bool) {
    product(dst, lhs, rhs, accumulate, all_threads())
}

/// `lhs * rhs` as a new row-major vector, on all of rayon's threads, written once: the
/// vector is not zeroed first (for large products, such as a decoder's logits, the zeroing
/// pass and its memory traffic are a measurable share of the work).
pub(crate) fn matmul_par_new<T: Elem>(lhs: MatRef<T>, rhs: MatRef<T>) -> Vec<T> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if m == 0 || n == 0 || k == 0 {
        let mut dst = vec![T::zero(); m * n];
        matmul_par(&mut dst, lhs, rhs, false);
        return dst;
    }
    check(m * n, lhs, rhs);
    let mut dst: Vec<T> = Vec::with_capacity(m * n);
    // SAFETY: the vector's spare capacity holds m x n elements (the destination `call`
    // needs); the operands were checked. With `read_dst` false the crate sets its `alpha`
    // to zero, and its first pass over the depth stores `beta * sum` into every element
    // of the m x n destination without reading it (later passes read what the first
    // stored); so after the call every element is initialised and `set_len` is sound.
    // k > 0, m > 0, n > 0 here.
    unsafe {
        call(dst.as_mut_ptr(), lhs, rhs, false, all_threads());
        dst.set_len(m * n);
    }
    dst
}

fn all_threads() -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Panics unless `lhs * rhs` is defined, fills `dst_len` elements, and both views lie
/// inside their slices.
fn check<T: Elem>(dst_len: usize, lhs: MatRef<T>, rhs: MatRef<T>) {
    assert_eq!(rhs.rows, lhs.cols, "gemm: inner dimensions differ");
    assert_eq!(dst_len, lhs.rows * rhs.cols, "gemm: destination size");
    assert!(
        lhs.in_bounds() && rhs.in_bounds(),
        "gemm: view out of bounds"
    );
}

fn product<T: Elem>(
    dst: &mut [T],
    lhs: MatRef<T>,
    rhs: MatRef<T>,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    check(dst.len(), lhs, rhs);
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(T::zero());
        }
        return;
    }
    // SAFETY: `dst` holds the m x n elements `call` writes (checked above).
    unsafe { call(dst.as_mut_ptr(), lhs, rhs, accumulate, parallelism) }
}

/// `dst = lhs * rhs` (or `+=` with `read_dst`), row-major with row stride `rhs.cols`.
///
/// # Safety
/// `dst` must be valid for writes (and, with `read_dst`, reads) of `lhs.rows * rhs.cols`
/// elements and overlap neither operand; the operands must have passed [`check`]. The
/// views being inside their slices makes every read of `lhs` and `rhs` valid; `T` is f32
/// or f64, which the crate supports.
unsafe fn call<T: Elem>(
    dst: *mut T,
    lhs: MatRef<T>,
    rhs: MatRef<T>,
    read_dst: bool,
    parallelism: gemm::Parallelism,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            read_dst,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            // alpha (ignored when `read_dst` is false) and beta.
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn products_and_transposes_match_a_naive_loop() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.91).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut dst = vec![0.0; m * n];
        matmul(
            &mut dst,
            MatRef::rows(&a, m, k),
            MatRef::rows(&b, k, n),
            false,
        );
        for (x, y) in dst.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }
        // Accumulate, and read b^T^T: b stored transposed as [n, k].
        let mut bt = vec![0.0; n * k];
        for t in 0..k {
            for j in 0..n {
                bt[j * k + t] = b[t * n + j];
            }
        }
        matmul(
            &mut dst,
            MatRef::rows(&a, m, k),
            MatRef::transposed(&bt, n, k),
            true,
        );
        for (x, y) in dst.iter().zip(&want) {
            assert!((x - 2.0 * y).abs() < 1e-12);
        }
    }

    /// A new destination written once equals the naive product: edge tiles (sizes that
    /// are no multiple of any block), a depth over several of the crate's depth blocks
    /// (later blocks read what the first stored), transposed operands, and empty sizes.
    #[test]
    fn new_products_are_written_in_full() {
        for (m, k, n) in [(67, 700, 131), (1, 3, 1), (130, 1, 9)] {
            let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.91).cos()).collect();
            let want = naive(&a, &b, m, k, n);
            let close = |got: &[f64], tol: f64| {
                assert_eq!(got.len(), m * n);
                for (x, y) in got.iter().zip(&want) {
                    assert!(
                        (x - y).abs() < tol * (1.0 + y.abs()),
                        "{m}x{k}x{n}: {x} {y}"
                    );
                }
            };
            close(
                &matmul_par_new(MatRef::rows(&a, m, k), MatRef::rows(&b, k, n)),
                1e-9,
            );
            let mut bt = vec![0.0; n * k];
            for t in 0..k {
                for j in 0..n {
                    bt[j * k + t] = b[t * n + j];
                }
            }
            let t = MatRef::transposed(&bt, n, k);
            close(&matmul_par_new(MatRef::rows(&a, m, k), t), 1e-9);
            let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
            let b32: Vec<f32> = b.iter().map(|&x| x as f32).collect();
            let got = matmul_par_new(MatRef::rows(&a32, m, k), MatRef::rows(&b32, k, n));
            let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
            close(&got, 1e-3);
        }
        let none: Vec<f64> = Vec::new();
        let z = matmul_par_new(MatRef::rows(&none, 3, 0), MatRef::rows(&none, 0, 2));
        assert_eq!(z, vec![0.0; 6]);
        let rhs = [1.0; 8];
        assert!(matmul_par_new(MatRef::rows(&none, 0, 4), MatRef::rows(&rhs, 4, 2)).is_empty());
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn views_outside_their_slice_are_refused() {
        let a = vec![0f32; 5];
        let b = vec![0f32; 6];
        let mut dst = vec![0f32; 4];
        matmul(
            &mut dst,
            MatRef::rows(&a, 2, 3),
            MatRef::rows(&b, 3, 2),
            false,
        );
    }
}
