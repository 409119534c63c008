//! The float element type the CPU kernels are written for, and its fast math.

use candle_core::CpuStorage;

/// A float type the CPU kernels are written for (`f32`, and `f64` for gradient checks).
pub(crate) trait Elem:
    num_traits::Float + num_traits::FromPrimitive + std::iter::Sum + Default + Send + Sync + 'static
{
    /// Wraps a result vector as storage.
    fn storage(v: Vec<Self>) -> CpuStorage;
    /// The storage's data, if it holds this type.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    /// Widens to f64.
    fn as_f64(self) -> f64;
    /// Converts from f64 (rounding for f32).
    fn of_f64(v: f64) -> Self;
    /// `e^x`. For f32 a branch-free polynomial the compiler vectorises (within 2 ulp of
    /// the correctly rounded value); for f64 the standard library's.
    fn exp_v(self) -> Self;
    /// `(tanh(x), sigmoid(x))` from one exponential (for f32; see [`tanh_sigmoid_f32`]).
    fn tanh_sigmoid_v(self) -> (Self, Self);
}

impl Elem for f32 {
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn of_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn exp_v(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn tanh_sigmoid_v(self) -> (Self, Self) {
        tanh_sigmoid_f32(self)
    }
}

impl Elem for f64 {
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn as_f64(self) -> f64 {
        self
    }
    fn of_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn exp_v(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn tanh_sigmoid_v(self) -> (Self, Self) {
        (self.tanh(), 1.0 / (1.0 + (-self).exp()))
    }
}

/// `e^x` for f32 without branches or library calls, so that loops over it vectorise:
/// Cody-Waite reduction `x = n ln2 + r`, `|r| <= ln2 / 2`, a degree-6 polynomial for
/// `e^r` (Cephes' `expf` coefficients), and `2^n` built in the exponent bits. Inputs are
/// clamped to `[-87.3, 88.7]`: the results at the ends are the smallest normal float and
/// infinity.
// Cephes' published coefficients, kept as printed.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer without a rounding instruction.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let er = p * r * r + r + 1.0;
    // The integer n sits in the low mantissa bits of t.
    let ni = (t.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    let scale = f32::from_bits(((ni + 127).clamp(0, 255) as u32) << 23);
    er * scale
}

/// Cephes' `tanhf` odd polynomial, accurate for `|x| < 0.625`.
#[allow(clippy::excessive_precision)]
#[inline(always)]
fn tanh_small(x: f32) -> f32 {
    let z = x * x;
    let mut p = -5.704_988_7e-3f32;
    p = p * z + 2.063_908_9e-2;
    p = p * z - 5.373_971_6e-2;
    p = p * z + 1.333_144_2e-1;
    p = p * z - 3.333_328_2e-1;
    p * z * x + x
}

/// `(tanh(x), sigmoid(x))` for f32 from one branch-free exponential `e = e^{-x}`:
/// `sigmoid(x) = 1 / (1 + e)` and, for `|x| >= 0.625`, `tanh(x) = 2 / (1 + e^2) - 1`
/// (`tanh(x) = 2 sigmoid(2x) - 1`; `e^2` overflowing to infinity gives -1, as it should);
/// below that, where the subtraction would cancel, [`tanh_f32`]'s odd polynomial. The
/// recurrent cells evaluate both for every candidate value, so this saves one of their
/// three exponentials. Within about 3e-7 absolute of the exact values.
#[inline(always)]
pub(crate) fn tanh_sigmoid_f32(x: f32) -> (f32, f32) {
    let e = exp_f32(-x);
    let sigmoid = 1.0 / (1.0 + e);
    let small = tanh_small(x);
    let big = 2.0 / (1.0 + e * e) - 1.0;
    (if x.abs() < 0.625 { small } else { big }, sigmoid)
}

/// `n` zeros, written by all of rayon's threads: for the large buffers of the fused ops
/// (hundreds of MB), whose zeroing would otherwise run on one thread while the others
/// wait.
pub(crate) fn zeros_par<T: Elem>(n: usize) -> Vec<T> {
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(T::zero(), n));
    v
}

/// `max(x, 0)` when `relu` is set.
#[inline(always)]
pub(crate) fn act<T: Elem>(x: T, relu: bool) -> T {
    if relu && x < T::zero() {
        T::zero()
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 kernels against the f64 library functions over a dense grid.
    #[test]
    fn shared_tanh_and_sigmoid_are_accurate() {
        let mut worst = (0f64, 0f64);
        for i in -200_000..=200_000 {
            let x = i as f32 * 5e-4;
            let (t, s) = tanh_sigmoid_f32(x);
            let xf = x as f64;
            worst.0 = worst.0.max((t as f64 - xf.tanh()).abs());
            worst.1 = worst.1.max((s as f64 - 1.0 / (1.0 + (-xf).exp())).abs());
        }
        assert!(worst.0 < 3e-7, "tanh absolute error {}", worst.0);
        assert!(worst.1 < 2e-7, "sigmoid absolute error {}", worst.1);
        for x in [-1e4f32, -200.0, -89.0, -44.5, 44.5, 89.0, 200.0, 1e4] {
            let (t, s) = tanh_sigmoid_f32(x);
            assert_eq!(t, x.signum(), "tanh({x})");
            assert!((0.0..=1.0).contains(&s), "sigmoid({x}) = {s}");
            assert!(
                (s - if x > 0.0 { 1.0 } else { 0.0 }).abs() < 1e-18 + 1e-7,
                "sigmoid({x}) = {s}"
            );
        }
        assert_eq!(tanh_sigmoid_f32(0.0), (0.0, 0.5));
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 4.3e-4;
            let e = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((e - want).abs() / want);
        }
        assert!(worst < 3e-7, "exp relative error {worst}");
        for x in [-1e3f32, -88.0, 0.0, 88.0, 1e3] {
            let e = exp_f32(x);
            assert!(e >= 0.0 && !e.is_nan(), "exp({x}) = {e}");
        }
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(1e3).is_infinite());
    }
}
