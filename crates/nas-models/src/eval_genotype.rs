//! The genotypes an evaluation network builds: DARTS-style cells (DARTS, NASNet,
//! AmoebaNet, and whatever a search writes) or ENAS micro cells, each with its own cell
//! semantics and network layout.

use nas_search_space::{CnnGenotype, EnasMicroGenotype, Genotype};

use crate::error::{Error, Result};

/// A genotype of cells for [`crate::EvalNetwork`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalGenotype {
    /// Normal and reduce cells of DARTS-style edges (`NetworkCIFAR`/`NetworkImageNet`).
    Darts(CnnGenotype),
    /// ENAS micro cells in ENAS's micro child network (CIFAR layout only).
    EnasMicro(EnasMicroGenotype),
}

impl EvalGenotype {
    /// The cells of `genotype`, or an error naming its kind when it has none.
    pub fn from_genotype(genotype: Genotype) -> Result<Self> {
        match genotype {
            Genotype::DartsCnn(g) => Ok(EvalGenotype::Darts(g)),
            Genotype::EnasMicro(g) => Ok(EvalGenotype::EnasMicro(g)),
            other => Err(Error::Config(format!(
                "evaluation networks take a DARTS CNN or an ENAS micro genotype, got a {} genotype",
                other.kind().name()
            ))),
        }
    }

    /// The genotype as the search-space crate's enum (for JSON with a `kind`).
    pub fn to_genotype(&self) -> Genotype {
        match self {
            EvalGenotype::Darts(g) => Genotype::DartsCnn(g.clone()),
            EvalGenotype::EnasMicro(g) => Genotype::EnasMicro(g.clone()),
        }
    }
}

impl From<CnnGenotype> for EvalGenotype {
    fn from(g: CnnGenotype) -> Self {
        EvalGenotype::Darts(g)
    }
}

impl From<EnasMicroGenotype> for EvalGenotype {
    fn from(g: EnasMicroGenotype) -> Self {
        EvalGenotype::EnasMicro(g)
    }
}
