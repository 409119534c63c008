//! The shell every candle custom op here shares, written once: [`custom_op!`] turns an
//! op's name, CPU forward, CUDA forward (compiled under `cuda`) and further items (its
//! `bwd`) into the `impl CustomOpN`. The forwards' parameters are named at the call site,
//! `self` included (macro hygiene would hide a `self` the macro declared); their types
//! are candle's.
//!
//! ```ignore
//! custom_op! {
//!     WeightedSum: CustomOp2 = OP;
//!     cpu(&self, s1, l1, s2, l2) { /* -> Result<(CpuStorage, Shape)> */ }
//!     cuda(&self, s1, l1, s2, l2) { /* -> Result<(CudaStorage, Shape)> */ }
//!     extra { fn bwd(&self, /* ... */) { /* ... */ } }
//! }
//! ```

macro_rules! custom_op {
    (
        $op:ident: CustomOp1 = $name:expr;
        cpu(&$s:ident, $s1:ident, $l1:ident) $cpu:block
        $(cuda(&$cs:ident, $c1:ident, $cl1:ident) $cuda:block)?
        $(extra { $($rest:tt)* })?
    ) => {
        impl candle_core::CustomOp1 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &$s,
                $s1: &candle_core::CpuStorage,
                $l1: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> $cpu

            $(
                #[cfg(feature = "cuda")]
                fn cuda_fwd(
                    &$cs,
                    $c1: &candle_core::CudaStorage,
                    $cl1: &candle_core::Layout,
                ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> $cuda
            )?

            $($($rest)*)?
        }
    };
    (
        $op:ident: CustomOp2 = $name:expr;
        cpu(&$s:ident, $s1:ident, $l1:ident, $s2:ident, $l2:ident) $cpu:block
        $(cuda(&$cs:ident, $c1:ident, $cl1:ident, $c2:ident, $cl2:ident) $cuda:block)?
        $(extra { $($rest:tt)* })?
    ) => {
        impl candle_core::CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &$s,
                $s1: &candle_core::CpuStorage,
                $l1: &candle_core::Layout,
                $s2: &candle_core::CpuStorage,
                $l2: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> $cpu

            $(
                #[cfg(feature = "cuda")]
                fn cuda_fwd(
                    &$cs,
                    $c1: &candle_core::CudaStorage,
                    $cl1: &candle_core::Layout,
                    $c2: &candle_core::CudaStorage,
                    $cl2: &candle_core::Layout,
                ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> $cuda
            )?

            $($($rest)*)?
        }
    };
    (
        $op:ident: CustomOp3 = $name:expr;
        cpu(
            &$s:ident, $s1:ident, $l1:ident, $s2:ident, $l2:ident, $s3:ident, $l3:ident
        ) $cpu:block
        $(cuda(
            &$cs:ident, $c1:ident, $cl1:ident, $c2:ident, $cl2:ident, $c3:ident, $cl3:ident
        ) $cuda:block)?
        $(extra { $($rest:tt)* })?
    ) => {
        impl candle_core::CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &$s,
                $s1: &candle_core::CpuStorage,
                $l1: &candle_core::Layout,
                $s2: &candle_core::CpuStorage,
                $l2: &candle_core::Layout,
                $s3: &candle_core::CpuStorage,
                $l3: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> $cpu

            $(
                #[cfg(feature = "cuda")]
                fn cuda_fwd(
                    &$cs,
                    $c1: &candle_core::CudaStorage,
                    $cl1: &candle_core::Layout,
                    $c2: &candle_core::CudaStorage,
                    $cl2: &candle_core::Layout,
                    $c3: &candle_core::CudaStorage,
                    $cl3: &candle_core::Layout,
                ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> $cuda
            )?

            $($($rest)*)?
        }
    };
}
pub(crate) use custom_op;
