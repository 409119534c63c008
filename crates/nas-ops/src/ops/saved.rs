//! What a custom op's forward pass leaves for its backward pass (and a fused op for its
//! caller, such as batch statistics): a shared slot of either float type, read back with
//! errors that name the op.

use std::any::Any;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, Shape, Tensor};

use crate::error::{Error, Result};

/// Saved state of whichever float type ran (`Saved<f32>` or `Saved<f64>`).
pub(crate) type Shared = Arc<Mutex<Option<Box<dyn Any + Send>>>>;

pub(crate) fn lock<'a, T>(
    m: &'a Mutex<T>,
    op: &'static str,
) -> Result<std::sync::MutexGuard<'a, T>> {
    m.lock().map_err(|_| {
        Error::Unsupported {
            op,
            message: "saved state lock poisoned".into(),
        }
        .into()
    })
}

/// The saved state as `S`, or an error naming `op`.
pub(crate) fn downcast<'a, S: 'static>(
    saved: &'a Option<Box<dyn Any + Send>>,
    op: &'static str,
) -> Result<&'a S> {
    saved
        .as_ref()
        .ok_or_else(|| Error::Unsupported {
            op,
            message: "backward before forward".into(),
        })?
        .downcast_ref::<S>()
        .ok_or_else(|| {
            Error::Unsupported {
                op,
                message: "saved state of another dtype".into(),
            }
            .into()
        })
}

/// A tensor from a flat CPU vector of either float type.
pub(crate) fn tensor_from(v: CpuStorage, shape: &Shape, op: &'static str) -> Result<Tensor> {
    let dev = candle_core::Device::Cpu;
    match v {
        CpuStorage::F32(v) => Tensor::from_vec(v, shape, &dev),
        CpuStorage::F64(v) => Tensor::from_vec(v, shape, &dev),
        _ => Err(Error::Unsupported {
            op,
            message: "a gradient of an unsupported dtype".into(),
        }
        .into()),
    }
}
