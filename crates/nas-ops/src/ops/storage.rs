//! Access to candle's CPU storage from the custom ops: contiguous slices, dtype dispatch
//! and the errors for what the kernels do not cover.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};

use crate::error::Error;

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

/// The CPU storage of a tensor, or an error naming `op` and the device it is on.
pub(crate) fn cpu_storage<'a>(
    storage: &'a candle_core::Storage,
    op: &'static str,
) -> candle_core::Result<&'a CpuStorage> {
    match storage {
        candle_core::Storage::Cpu(s) => Ok(s),
        other => Err(Error::Unsupported {
            op,
            message: format!(
                "only the CPU is supported, got an input on {:?}",
                other.device().location()
            ),
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
                $(let $x = $crate::ops::storage::contiguous($x, $l, $op)?;)+
                type $t = f32;
                $body
            }
            ($(candle_core::CpuStorage::F64($x)),+) => {
                $(let $x = $crate::ops::storage::contiguous($x, $l, $op)?;)+
                type $t = f64;
                $body
            }
            #[allow(unreachable_patterns)]
            _ => Err($crate::ops::storage::mismatch($op, &[$($s),+])),
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
