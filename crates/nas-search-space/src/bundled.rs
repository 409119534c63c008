//! Published genotypes, by name.
//!
//! DARTS's own and the ones it compares against are written as the reference
//! `cnn/genotypes.py` and `rnn/genotypes.py` list them; ENAS's final CNN cells and
//! architecture are the arc strings of ENAS's `scripts/cifar10_micro_final.sh` and
//! `scripts/cifar10_macro_final.sh`.

use crate::error::{Error, Result};
use crate::genotype::{Genotype, GenotypeKind};

/// A published genotype.
#[derive(Debug, Clone, Copy)]
pub struct Bundled {
    /// The name to ask for it by.
    pub name: &'static str,
    /// Its search space.
    pub kind: GenotypeKind,
    /// Where it was published.
    pub source: &'static str,
    text: &'static str,
}

impl Bundled {
    /// The genotype itself.
    pub fn genotype(&self) -> Genotype {
        // The bundled texts are checked by the tests of this module.
        Genotype::parse(self.text, Some(self.kind)).expect("bundled genotypes are valid")
    }
}

/// Every bundled genotype.
pub const BUNDLED: &[Bundled] = &[
    Bundled {
        name: "darts-v1",
        kind: GenotypeKind::DartsCnn,
        source: "DARTS (first order) CIFAR-10 cells, DARTS_V1 in cnn/genotypes.py",
        text: "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])",
    },
    Bundled {
        name: "darts-v2",
        kind: GenotypeKind::DartsCnn,
        source: "DARTS (second order) CIFAR-10 cells, DARTS_V2 in cnn/genotypes.py",
        text: "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])",
    },
    Bundled {
        name: "nasnet-a",
        kind: GenotypeKind::DartsCnn,
        source: "NASNet-A (Zoph et al. 2018), NASNet in DARTS's cnn/genotypes.py",
        text: "Genotype(normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0), ('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 1)], normal_concat=[2, 3, 4, 5, 6], reduce=[('sep_conv_5x5', 1), ('sep_conv_7x7', 0), ('max_pool_3x3', 1), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('sep_conv_5x5', 0), ('skip_connect', 3), ('avg_pool_3x3', 2), ('sep_conv_3x3', 2), ('max_pool_3x3', 1)], reduce_concat=[4, 5, 6])",
    },
    Bundled {
        name: "amoebanet-a",
        kind: GenotypeKind::DartsCnn,
        source: "AmoebaNet-A (Real et al. 2019), AmoebaNet in DARTS's cnn/genotypes.py",
        text: "Genotype(normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), ('skip_connect', 1), ('skip_connect', 0), ('avg_pool_3x3', 1)], normal_concat=[4, 5, 6], reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('sep_conv_7x7', 2), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1), ('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)], reduce_concat=[3, 4, 6])",
    },
    Bundled {
        name: "darts-rnn-v1",
        kind: GenotypeKind::DartsRnn,
        source: "DARTS (first order) PTB cell, DARTS_V1 in rnn/genotypes.py",
        text: "Genotype(recurrent=[('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4), ('identity', 1), ('relu', 5), ('relu', 1)], concat=range(1, 9))",
    },
    Bundled {
        name: "darts-rnn-v2",
        kind: GenotypeKind::DartsRnn,
        source: "DARTS (second order) PTB cell, DARTS_V2 in rnn/genotypes.py",
        text: "Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))",
    },
    Bundled {
        name: "enas-rnn",
        kind: GenotypeKind::DartsRnn,
        source: "ENAS PTB cell as DARTS lists it, ENAS in DARTS's rnn/genotypes.py",
        text: "Genotype(recurrent=[('tanh', 0), ('tanh', 1), ('relu', 1), ('tanh', 3), ('tanh', 3), ('relu', 3), ('relu', 4), ('relu', 7), ('relu', 8), ('relu', 8), ('relu', 8)], concat=[2, 5, 6, 9, 10, 11])",
    },
    Bundled {
        name: "enas-micro",
        kind: GenotypeKind::EnasMicro,
        source: "ENAS final CIFAR-10 cells, scripts/cifar10_micro_final.sh",
        text: "0 2 0 0 0 4 0 1 0 4 1 1 1 0 0 1 0 2 1 1 1 0 1 0 0 3 0 2 1 1 3 1 1 0 0 4 0 3 1 1",
    },
    Bundled {
        name: "enas-macro",
        kind: GenotypeKind::EnasMacro,
        source: "ENAS final CIFAR-10 macro architecture (24 layers), scripts/cifar10_macro_final.sh",
        text: "0
            3 0
            0 1 0
            2 0 0 1
            2 0 0 0 0
            3 1 1 0 1 0
            2 0 0 0 0 0 1
            2 0 1 1 0 1 1 1
            1 0 1 1 1 0 1 0 1
            0 0 0 0 0 0 0 0 0 0
            2 0 0 0 0 0 1 0 0 0 0
            0 1 0 0 1 1 0 0 0 0 1 1
            2 0 1 0 0 0 0 0 1 0 1 1 0
            1 0 0 1 0 0 0 1 1 1 0 1 0 1
            0 1 1 0 1 0 1 0 0 0 0 0 1 0 0
            2 0 0 1 0 0 0 0 0 0 0 1 0 1 0 1
            2 0 1 0 0 0 1 0 0 1 1 1 1 0 0 1 0
            2 0 0 0 0 1 0 1 0 1 0 0 1 0 1 0 0 1
            3 0 1 1 0 1 0 0 0 0 0 1 0 1 0 1 0 0 0
            3 0 1 1 0 0 0 0 0 0 0 0 0 1 1 0 0 0 0 1
            0 1 0 0 1 0 1 1 0 0 0 1 0 0 0 0 0 1 1 0 0
            3 0 1 0 1 1 0 0 1 0 1 1 0 1 1 0 1 0 0 1 0 0
            0 1 0 1 0 1 0 0 0 0 0 0 0 0 1 0 1 0 0 1 0 0 0
            0 1 1 0 0 0 1 1 1 0 1 0 0 0 1 0 1 0 0 1 1 0 0 0",
    },
];

/// Looks a bundled genotype up by name.
pub fn bundled(name: &str) -> Result<Genotype> {
    BUNDLED
        .iter()
        .find(|b| b.name == name)
        .map(Bundled::genotype)
        .ok_or_else(|| Error::UnknownGenotype {
            name: name.to_string(),
            available: BUNDLED
                .iter()
                .map(|b| b.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enas_rnn::EnasRnnCell;
    use crate::primitive::{EnasMacroOp, EnasMicroOp};

    #[test]
    fn every_bundled_genotype_parses_as_its_kind() {
        for b in BUNDLED {
            let g =
                Genotype::parse(b.text, Some(b.kind)).unwrap_or_else(|e| panic!("{}: {e}", b.name));
            assert_eq!(g.kind(), b.kind, "{}", b.name);
        }
    }

    #[test]
    fn unknown_name_lists_the_bundled_ones() {
        let err = bundled("darts-v3").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "unknown genotype \"darts-v3\"; bundled genotypes are: darts-v1, darts-v2"
            ),
            "{err}"
        );
    }

    #[test]
    fn enas_micro_reads_as_published() {
        let Genotype::EnasMicro(g) = bundled("enas-micro").unwrap() else {
            panic!()
        };
        let first = g.normal().nodes()[0];
        assert_eq!((first.x_input, first.x_op), (0, EnasMicroOp::AvgPool3x3));
        assert_eq!((first.y_input, first.y_op), (0, EnasMicroOp::SepConv3x3));
        assert_eq!(g.normal().concat(), vec![2, 3, 4, 5, 6]);
        assert_eq!(g.reduce().concat(), vec![2, 4, 5, 6]);
    }

    #[test]
    fn enas_macro_has_24_layers() {
        let Genotype::EnasMacro(a) = bundled("enas-macro").unwrap() else {
            panic!()
        };
        assert_eq!(a.layers().len(), 24);
        assert_eq!(a.layers()[1].op, EnasMacroOp::SepConv5x5);
        assert_eq!(a.layers()[5].skips, vec![0, 1, 3]);
    }

    #[test]
    fn enas_rnn_is_an_enas_cell() {
        // DARTS lists ENAS's cell with concat = its unused states, so it converts.
        let Genotype::DartsRnn(g) = bundled("enas-rnn").unwrap() else {
            panic!()
        };
        let cell = EnasRnnCell::from_darts(&g).unwrap();
        assert_eq!(cell.concat(), vec![2, 5, 6, 9, 10, 11]);
    }
}
