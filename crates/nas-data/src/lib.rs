//! The data sets of DARTS and ENAS, read from their genuine file formats with every
//! field checked: CIFAR-10/100 (binary), MNIST and Fashion-MNIST (IDX), the embedded
//! digits, word-level corpora (PTB, WikiText-2) and ImageNet (ImageFolder JPEGs); the
//! papers' splits, augmentation and a prefetching batch loader; and imports from local
//! mirrors, downloaded archives and ImageNet trees (no network code: xtask downloads).
//!
//! This crate knows nothing about models or genotypes.

pub mod augment;
mod catalog;
pub mod cifar;
pub mod digits;
mod error;
pub mod idx;
mod image;
mod image_sets;
pub mod imagenet;
pub mod import;
pub mod loader;
pub mod ptb;
pub mod split;

pub use augment::{Augment, Normalize};
pub use catalog::{md5_hex, Dataset, Form, Info, Scale, Shape};
pub use error::{Error, Result};
pub use image::ImageSet;
pub use image_sets::{load_image_set, loader, normalize_for};
pub use loader::{epoch, imagenet_epoch, Batch, ImagenetLoaderConfig, LoaderConfig};
