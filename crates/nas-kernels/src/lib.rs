//! CUDA kernels of `nas-ops`'s fused operations, compiled to PTX by nvcc when this crate
//! builds (see `build.rs` for where nvcc is looked up).
//!
//! Each [`Module`] is one `kernels/*.cu` file: its PTX text and the names of its entry
//! points. Every kernel exists for `f32` and `f64` (`<name>_f32`, `<name>_f64`); all take
//! contiguous tensors. `nas-ops` loads them under its `cuda` feature.

/// One compiled `.cu` file.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    /// The file stem, unique among the modules (candle caches loaded modules by it).
    pub name: &'static str,
    /// The PTX nvcc wrote.
    pub ptx: &'static str,
    /// The kernel templates the file instantiates; each exists as `<name>_f32` and
    /// `<name>_f64`.
    pub kernels: &'static [&'static str],
}

impl Module {
    /// The entry point of `kernel` for a dtype suffix (`"f32"` or `"f64"`).
    pub fn entry(&self, kernel: &str, dtype: &str) -> String {
        format!("{kernel}_{dtype}")
    }
}

macro_rules! module {
    ($name:literal, [$($kernel:literal),+ $(,)?]) => {
        Module {
            name: $name,
            ptx: include_str!(concat!(env!("OUT_DIR"), "/", $name, ".ptx")),
            kernels: &[$($kernel),+],
        }
    };
}

/// Depthwise convolution: forward, input gradient, weight gradient.
pub const DEPTHWISE: Module = module!(
    "depthwise",
    ["depthwise_fwd", "depthwise_dgrad", "depthwise_wgrad"]
);

/// Max and average pooling with padding, forward and backward.
pub const POOL: Module = module!(
    "pool",
    [
        "pool_max_fwd",
        "pool_avg_fwd",
        "pool_max_bwd",
        "pool_avg_bwd"
    ]
);

/// Training-mode batch norm: statistics, normalisation, backward reduction, input gradient.
pub const BATCH_NORM: Module = module!(
    "batch_norm",
    ["bn_stats", "bn_normalise", "bn_reduce", "bn_dgrad"]
);

/// The MixedOp's softmax-weighted sum and its gradients.
pub const WEIGHTED_SUM: Module = module!("weighted_sum", ["ws_fwd", "ws_wgrad", "ws_ograd"]);

/// The DARTS recurrent node update: forward, state and projection gradients, weight
/// gradients.
pub const RNN_NODE: Module = module!(
    "rnn_node",
    ["rnn_node_fwd", "rnn_node_bwd", "rnn_node_pgrad"]
);

/// Soft-max cross-entropy with a bias: per-row log-sum-exp and loss, their mean, the
/// logits' and the bias's gradients.
pub const CROSS_ENTROPY: Module = module!(
    "cross_entropy",
    ["xent_rows", "xent_mean", "xent_dlogits", "xent_dbias"]
);

/// Every module.
pub const ALL: &[Module] = &[
    DEPTHWISE,
    POOL,
    BATCH_NORM,
    WEIGHTED_SUM,
    RNN_NODE,
    CROSS_ENTROPY,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The names `.entry` declares in a PTX text.
    fn entries(ptx: &str) -> Vec<&str> {
        ptx.lines()
            .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
            .map(|l| l.trim_end_matches('('))
            .collect()
    }

    #[test]
    fn every_listed_kernel_is_in_its_ptx_for_both_dtypes() {
        for m in ALL {
            let found = entries(m.ptx);
            let mut expected: Vec<String> = m
                .kernels
                .iter()
                .flat_map(|k| [m.entry(k, "f32"), m.entry(k, "f64")])
                .collect();
            expected.sort();
            let mut found: Vec<String> = found.into_iter().map(String::from).collect();
            found.sort();
            // Exactly the listed ones: a kernel added to a .cu file is listed here too.
            assert_eq!(found, expected, "module {}", m.name);
        }
    }

    #[test]
    fn ptx_targets_a_virtual_architecture_and_64_bit_addresses() {
        for m in ALL {
            assert!(m.ptx.contains(".address_size 64"), "module {}", m.name);
            let target = m
                .ptx
                .lines()
                .find_map(|l| l.trim().strip_prefix(".target "))
                .unwrap_or_else(|| panic!("module {} has no .target", m.name));
            assert!(target.starts_with("sm_"), "module {}: {target}", m.name);
        }
    }

    #[test]
    fn module_names_are_unique() {
        let mut names: Vec<_> = ALL.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
