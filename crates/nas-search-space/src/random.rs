//! Random DARTS genotypes: the baseline a search must beat. Each CNN node gets `k`
//! distinct inputs among the earlier states, each with an op drawn uniformly from the
//! primitives other than `none`, the shape that derivation gives; each recurrent node
//! one earlier state and one activation other than `none`.

use crate::cnn::{CnnCell, CnnEdge, CnnGenotype};
use crate::concat::Concat;
use crate::enas_micro::{EnasMicroCell, EnasMicroGenotype, EnasMicroNode};
use crate::error::Result;
use crate::primitive::{EnasMicroOp, DARTS_CNN_PRIMITIVES, DARTS_RNN_PRIMITIVES};
use crate::rnn::{RnnEdge, RnnGenotype};

/// A random genotype with `nodes` intermediate nodes and `k` inputs per node, drawn from
/// `seed` (the same seed gives the same genotype everywhere).
pub fn random_cnn(seed: u64, nodes: usize, k: usize) -> Result<CnnGenotype> {
    let mut rng = SplitMix64(seed);
    let mut cell = |name: &str| -> Result<CnnCell> {
        let mut edges = Vec::with_capacity(nodes * k);
        for node in 0..nodes {
            let mut inputs: Vec<usize> = (0..node + 2).collect();
            for pick in 0..k.min(inputs.len()) {
                let j = pick + rng.below(inputs.len() - pick);
                inputs.swap(pick, j);
                let op = DARTS_CNN_PRIMITIVES[1 + rng.below(DARTS_CNN_PRIMITIVES.len() - 1)];
                edges.push(CnnEdge {
                    op,
                    input: inputs[pick],
                });
            }
        }
        CnnCell::new(name, edges, k, Concat::range(2, nodes + 2))
    };
    let normal = cell("normal cell")?;
    let reduce = cell("reduce cell")?;
    CnnGenotype::new(normal, reduce)
}

/// A random recurrent genotype with `nodes` nodes, every node averaged into the output
/// (as derivation gives), drawn from `seed`.
pub fn random_rnn(seed: u64, nodes: usize) -> Result<RnnGenotype> {
    let mut rng = SplitMix64(seed);
    let edges = (1..=nodes)
        .map(|node| {
            let input = rng.below(node);
            let activation = DARTS_RNN_PRIMITIVES[1 + rng.below(DARTS_RNN_PRIMITIVES.len() - 1)];
            RnnEdge { activation, input }
        })
        .collect();
    RnnGenotype::new(edges, Concat::range(1, nodes + 1))
}

/// A random ENAS micro genotype with `nodes` nodes per cell, drawn from `seed`: each
/// node's two inputs uniform over the earlier states, each op uniform over the five (the
/// distribution of ENAS's `--controller random` ablation).
pub fn random_enas_micro(seed: u64, nodes: usize) -> Result<EnasMicroGenotype> {
    let mut rng = SplitMix64(seed);
    let mut cell = |name: &str| -> Result<EnasMicroCell> {
        let nodes = (2..nodes + 2)
            .map(|t| {
                let mut pick = || {
                    (
                        rng.below(t),
                        EnasMicroOp::ALL[rng.below(EnasMicroOp::ALL.len())],
                    )
                };
                let (x_input, x_op) = pick();
                let (y_input, y_op) = pick();
                EnasMicroNode {
                    x_input,
                    x_op,
                    y_input,
                    y_op,
                }
            })
            .collect();
        EnasMicroCell::new(name, nodes)
    };
    let normal = cell("normal cell")?;
    let reduce = cell("reduce cell")?;
    EnasMicroGenotype::new(normal, reduce)
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection so every value is equally likely.
    fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next();
            if v < zone {
                return (v % n) as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitive::CnnOp;

    #[test]
    fn random_genotypes_have_the_derived_shape_and_depend_on_the_seed() {
        let a = random_cnn(1, 4, 2).unwrap();
        assert_eq!(a, random_cnn(1, 4, 2).unwrap());
        assert_ne!(a, random_cnn(2, 4, 2).unwrap());
        for cell in [a.normal(), a.reduce()] {
            assert_eq!(cell.edges().len(), 8);
            for (node, edges) in cell.nodes().enumerate() {
                assert_ne!(edges[0].input, edges[1].input);
                assert!(edges
                    .iter()
                    .all(|e| e.input < node + 2 && e.op != CnnOp::None));
            }
        }
        // Over many seeds every input and op shows up.
        let mut ops = std::collections::HashSet::new();
        for seed in 0..200 {
            for e in random_cnn(seed, 4, 2).unwrap().normal().edges() {
                ops.insert(e.op);
            }
        }
        assert_eq!(ops.len(), 7);
    }

    #[test]
    fn random_enas_micro_genotypes_cover_inputs_and_ops() {
        let a = random_enas_micro(1, 5).unwrap();
        assert_eq!(a, random_enas_micro(1, 5).unwrap());
        assert_ne!(a, random_enas_micro(2, 5).unwrap());
        let (mut ops, mut inputs) = (
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
        );
        for seed in 0..100 {
            let g = random_enas_micro(seed, 5).unwrap();
            for n in g.normal().nodes().iter().chain(g.reduce().nodes()) {
                ops.extend([n.x_op, n.y_op]);
                inputs.extend([n.x_input, n.y_input]);
            }
        }
        assert_eq!((ops.len(), inputs.len()), (5, 6));
    }

    #[test]
    fn random_recurrent_genotypes_read_earlier_states_without_none() {
        let a = random_rnn(1, 8).unwrap();
        assert_eq!(a, random_rnn(1, 8).unwrap());
        assert_ne!(a, random_rnn(2, 8).unwrap());
        assert_eq!(a.n_nodes(), 8);
        assert_eq!(a.concat().indices(), (1..=8).collect::<Vec<_>>());
        let mut seen = std::collections::HashSet::new();
        for seed in 0..100 {
            for (i, e) in random_rnn(seed, 8).unwrap().recurrent().iter().enumerate() {
                assert!(e.input <= i && e.activation != crate::primitive::RnnOp::None);
                seen.insert(e.activation);
            }
        }
        assert_eq!(seen.len(), 4);
    }
}
