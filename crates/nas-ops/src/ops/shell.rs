//! The shell every candle custom op here shares, written once: [`custom_op!`] turns an
//! op's name, CPU forward, CUDA forward (compiled under `cuda`) and further items (its
//! `bwd`) into the `impl CustomOpN`. The forwards' parameters (`self` and `N` storage and
//! layout pairs) are named at the call site, `self` included (macro hygiene would hide a
//! `self` the macro declared); their types are candle's.
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
        $op:ident: $trait:ident = $name:expr;
        cpu(&$s:ident $(, $st:ident, $l:ident)+) $cpu:block
        $(cuda(&$cs:ident $(, $cst:ident, $cl:ident)+) $cuda:block)?
        $(extra { $($rest:tt)* })?
    ) => {
        impl candle_core::$trait for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &$s,
                $($st: &candle_core::CpuStorage, $l: &candle_core::Layout),+
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> $cpu

            $(
                #[cfg(feature = "cuda")]
                fn cuda_fwd(
                    &$cs,
                    $($cst: &candle_core::CudaStorage, $cl: &candle_core::Layout),+
                ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> $cuda
            )?

            $($($rest)*)?
        }
    };
}
pub(crate) use custom_op;
