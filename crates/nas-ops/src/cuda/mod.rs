//! Launching the `nas-kernels` CUDA kernels from the ops' `cuda_fwd` (feature `cuda`).
//!
//! Every kernel takes contiguous inputs and writes every element of its output, so
//! outputs are allocated without zeroing. Kernels loop grid-stride (element-wise ones) or
//! block-stride (one block per channel or weight, reducing in a fixed tree), so any launch
//! size covers the work and results do not depend on scheduling.
// Kernel launches and uninitialised device allocations are `unsafe` in cudarc; each use
// below states why it is sound.
#![allow(unsafe_code)]

use candle_core::cuda::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DevicePtr, DeviceRepr, LaunchArgs, LaunchConfig,
    ValidAsZeroBits,
};
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage, WrapErr};
use candle_core::{DType, Layout, WithDType};
use std::sync::Arc;

use crate::error::Error;

pub(crate) use candle_core::cuda::cudarc::driver::PushKernelArg;
pub(crate) use nas_kernels as kernels;

/// The dtypes the kernels exist for.
pub(crate) trait GpuElem: WithDType + DeviceRepr + CudaDType {
    /// The kernels' name suffix.
    const SUFFIX: &'static str;
}

impl GpuElem for f32 {
    const SUFFIX: &'static str = "f32";
}

impl GpuElem for f64 {
    const SUFFIX: &'static str = "f64";
}

/// Threads per block; a power of two (the block reductions need one), at most 1024.
const THREADS: u32 = 256;

/// A contiguous input's elements.
pub(crate) fn view<'a, T: CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
    op: &'static str,
) -> candle_core::Result<CudaView<'a, T>> {
    let slice = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => Err(Error::Unsupported {
            op,
            message: "inputs must be contiguous".to_string(),
        }
        .into()),
    }
}

/// A device buffer of `len` elements that the next kernel overwrites entirely.
pub(crate) fn output<T: DeviceRepr>(
    dev: &CudaDevice,
    len: usize,
) -> candle_core::Result<CudaSlice<T>> {
    // SAFETY: every caller passes the buffer to a kernel that writes all `len` elements
    // before anything reads it (each kernel's comment in nas-kernels says what it writes).
    unsafe { dev.alloc::<T>(len.max(1)) }
}

/// Copies host values to the device.
pub(crate) fn upload<T: DeviceRepr + ValidAsZeroBits + 'static>(
    dev: &CudaDevice,
    values: &[T],
) -> candle_core::Result<CudaSlice<T>> {
    if values.is_empty() {
        return dev.alloc_zeros::<T>(1);
    }
    dev.clone_htod(values)
}

/// Copies a device buffer to the host (waits for the stream).
pub(crate) fn download<T: DeviceRepr, S: DevicePtr<T>>(
    dev: &CudaDevice,
    values: &S,
) -> candle_core::Result<Vec<T>> {
    dev.clone_dtoh(values)
}

/// How a kernel spreads its work.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Launch {
    /// One thread per element (grid-stride).
    Elements(usize),
    /// One block per job (block-stride), for the reductions.
    Blocks(usize),
}

impl Launch {
    fn config(self) -> Option<LaunchConfig> {
        let blocks = match self {
            Launch::Elements(0) | Launch::Blocks(0) => return None,
            Launch::Elements(n) => n.div_ceil(THREADS as usize).min(1 << 16),
            Launch::Blocks(n) => n.min(1 << 16),
        };
        Some(LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }
}

/// One kernel, loaded for `T`, with its launch configuration.
pub(crate) struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
    cfg: Option<LaunchConfig>,
}

/// Loads `kernel` of `module` for `T` (candle caches the module per device).
pub(crate) fn kernel<T: GpuElem>(
    dev: &CudaDevice,
    module: &kernels::Module,
    kernel: &str,
    work: Launch,
) -> candle_core::Result<Kernel> {
    let func =
        dev.get_or_load_custom_func(&module.entry(kernel, T::SUFFIX), module.name, module.ptx)?;
    Ok(Kernel {
        func: func.into_cuda_function(),
        stream: dev.cuda_stream(),
        cfg: work.config(),
    })
}

impl Kernel {
    /// An empty argument list.
    pub(crate) fn args(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }

    /// Runs the kernel with `args` (nothing to do for empty work).
    pub(crate) fn launch(&self, mut args: LaunchArgs<'_>) -> candle_core::Result<()> {
        let Some(cfg) = self.cfg else {
            return Ok(());
        };
        // SAFETY: the callers push arguments matching the kernels' C signatures in
        // nas-kernels (pointers to buffers of the sizes the kernels index, then the
        // geometry), and every buffer outlives the launch (cudarc records its use on the
        // stream).
        unsafe { args.launch(cfg) }.w()?;
        Ok(())
    }
}

/// Wraps a kernel's output as candle storage.
pub(crate) fn storage<T: GpuElem>(slice: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

/// The error for an input dtype without kernels.
pub(crate) fn unsupported_dtype(op: &'static str, dtype: DType) -> candle_core::Error {
    Error::Unsupported {
        op,
        message: format!("dtype {dtype:?} is not supported on CUDA (f32 and f64 are)"),
    }
    .into()
}

/// Runs `$body` with `$t` bound to the Rust type of the first storage's dtype (f32 or
/// f64) and each `$x` to that storage's contiguous elements; inputs of another dtype fail
/// in `view`.
macro_rules! cuda_dispatch {
    ($op:expr, [$(($s:expr, $l:expr) => $x:ident),+], |$t:ident| $body:expr) => {{
        let first = [$($s),+][0];
        match candle_core::backend::BackendStorage::dtype(first) {
            candle_core::DType::F32 => {
                type $t = f32;
                $(let $x = $crate::cuda::view::<$t>($s, $l, $op)?;)+
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $(let $x = $crate::cuda::view::<$t>($s, $l, $op)?;)+
                $body
            }
            other => Err($crate::cuda::unsupported_dtype($op, other)),
        }
    }};
}
pub(crate) use cuda_dispatch;

/// An `i32` kernel argument from a size (the kernels index with `int`).
pub(crate) fn int(v: usize, op: &'static str) -> candle_core::Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Unsupported {
            op,
            message: format!(
                "size {v} is too large for the CUDA kernels (at most {})",
                i32::MAX
            ),
        }
        .into()
    })
}

/// Geometry of a depthwise convolution, as `DwGeom` in `depthwise.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct DwGeom {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub k: i32,
    pub oh: i32,
    pub ow: i32,
    pub stride: i32,
    pub pad: i32,
    pub dil: i32,
    pub relu: i32,
}

// SAFETY: a `repr(C)` struct of `i32`s, laid out as the C struct the kernels take by value.
unsafe impl DeviceRepr for DwGeom {}

/// Geometry of a pooling op, as `PoolGeom` in `pool.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolGeom {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub oh: i32,
    pub ow: i32,
    pub kernel: i32,
    pub stride: i32,
    pub pad: i32,
    pub count_include_pad: i32,
}

// SAFETY: as for `DwGeom`.
unsafe impl DeviceRepr for PoolGeom {}
#[cfg(test)]
mod tests;
