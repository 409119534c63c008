//! The data sets of DARTS and ENAS, read from their genuine file formats with every
//! field checked: CIFAR-10/100 (binary), MNIST and Fashion-MNIST (IDX), the embedded
//! digits, and word-level corpora (PTB, WikiText-2); plus the papers' splits.
//!
//! This crate knows nothing about models or genotypes.

pub mod augment;
mod catalog;
pub mod cifar;
pub mod digits;
mod error;
pub mod idx;
mod image;
pub mod imagenet;
pub mod loader;
pub mod ptb;
pub mod split;

pub use augment::{Augment, Normalize};
pub use catalog::{md5_hex, Dataset, Info};
pub use error::{Error, Result};
pub use image::ImageSet;
pub use loader::{epoch, Batch, LoaderConfig};
