//! Helpers shared by the CPU kernels: the float element trait and storage access.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};

use crate::error::Error;

/// A float type the CPU kernels are written for (`f32`, and `f64` for gradient checks).
pub(crate) trait Elem:
    num_traits::Float + num_traits::FromPrimitive + std::iter::Sum + Send + Sync + 'static
{
    /// Wraps a result vector as storage.
    fn storage(v: Vec<Self>) -> CpuStorage;
    /// Widens to f64.
    fn as_f64(self) -> f64;
    /// Converts from f64 (rounding for f32).
    fn of_f64(v: f64) -> Self;
}

impl Elem for f32 {
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn of_f64(v: f64) -> Self {
        v as f32
    }
}

impl Elem for f64 {
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
    fn as_f64(self) -> f64 {
        self
    }
    fn of_f64(v: f64) -> Self {
        v
    }
}

/// The contiguous part of `data` that `layout` covers, or an error naming the op.
pub(crate) fn contiguous<'a, T>(
    data: &'a [T],
    layout: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(Error::Unsupported {
            op,
            message: "inputs must be contiguous".to_string(),
        }
        .into()),
    }
}

/// The error for a dtype the kernels do not cover.
pub(crate) fn unsupported_dtype(op: &'static str, storage: &CpuStorage) -> candle_core::Error {
    Error::Unsupported {
        op,
        message: format!(
            "dtype {:?} is not supported, expected f32 or f64",
            storage.dtype()
        ),
    }
    .into()
}

/// Applies `$body` with `$t` bound to the element type of the storages, which must all
/// be f32 or all f64; `$x` names the contiguous slice of each.
macro_rules! dispatch {
    ($op:expr, [$(($s:expr, $l:expr) => $x:ident),+], |$t:ident| $body:expr) => {{
        #[allow(unused_parens)]
        match ($($s),+) {
            ($(candle_core::CpuStorage::F32($x)),+) => {
                $(let $x = $crate::cpu::contiguous($x, $l, $op)?;)+
                type $t = f32;
                $body
            }
            ($(candle_core::CpuStorage::F64($x)),+) => {
                $(let $x = $crate::cpu::contiguous($x, $l, $op)?;)+
                type $t = f64;
                $body
            }
            #[allow(unreachable_patterns)]
            _ => Err($crate::cpu::mismatch($op, &[$($s),+])),
        }
    }};
}
pub(crate) use dispatch;

/// The error for inputs of different or unsupported dtypes.
pub(crate) fn mismatch(op: &'static str, storages: &[&CpuStorage]) -> candle_core::Error {
    let dtypes: Vec<_> = storages.iter().map(|s| s.dtype()).collect();
    if dtypes.iter().all(|d| *d == dtypes[0]) {
        return unsupported_dtype(op, storages[0]);
    }
    Error::Unsupported {
        op,
        message: format!("inputs must share one dtype, got {dtypes:?}"),
    }
    .into()
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
