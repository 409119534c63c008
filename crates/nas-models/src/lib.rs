//! The networks built from a genotype, shared by every search and by retraining: the
//! DARTS evaluation networks (CIFAR and ImageNet, auxiliary heads, drop path; the
//! reference's `model.py`), ENAS's network for its micro cells, and the recurrent
//! language model around a DARTS recurrent cell (derived, or the search cell's mixture);
//! their parameter and multiply-add counts, self-describing weights files, and the import
//! of the reference's PyTorch checkpoints.

mod cell_shape;
mod enas_micro_cell;
mod error;
mod eval_cell;
mod eval_genotype;
mod eval_network;
mod import;
mod rnn_cell;
mod rnn_lm;
mod weights_file;

pub use cell_shape::{CellShape, Preprocess0};
pub use enas_micro_cell::{EnasCellShape, EnasMicroEvalCell};
pub use error::{Error, Result};
pub use eval_cell::{op_mult_adds, EvalCell};
pub use eval_genotype::EvalGenotype;
pub use eval_network::{
    count, dropout, memory_estimate, AuxHead, Counts, EvalKind, EvalNetConfig, EvalNetwork,
};
pub use import::import_reference;
pub use rnn_cell::{rnn_edge_count, CellMasks, RnnCell, RNN_STEPS};
pub use rnn_lm::{ar, count_lm, nll, tar, LmBatch, LmMasks, LmOutput, RnnLm, RnnLmConfig};
pub use weights_file::{
    read_weights, reference_cifar_normalize, reference_imagenet_normalize, write_weights,
    WeightsFile, WEIGHTS_FORMAT,
};
