//! The image data of searches and training runs: which data sets qualify, the
//! normalisation statistics, and loader settings.

use std::path::Path;

use crate::{Augment, Dataset, Error, Form, ImageSet, LoaderConfig, Normalize, Result};

/// Loads the `train` (or test) split of an in-memory image set by name.
pub fn load_image_set(name: &str, data_dir: &Path, train: bool) -> Result<(Dataset, ImageSet)> {
    let dataset = Dataset::from_name(name)?;
    if dataset.form() != Form::Images {
        let names: Vec<_> = Dataset::image_sets().map(|d| d.name()).collect();
        return Err(Error::Invalid(format!(
            "data.dataset {:?}: CNN searches and training run on an in-memory image set: {}",
            dataset.name(),
            names.join(", ")
        )));
    }
    let set = dataset.load_images(data_dir, train)?;
    Ok((dataset, set))
}

/// Per-channel mean and standard deviation of the images at `indices`.
pub fn normalize_for(set: &ImageSet, indices: &[usize]) -> Result<Normalize> {
    let stats = set.subset(indices)?.channel_stats();
    Ok(Normalize {
        mean: stats.iter().map(|s| s.0 as f32).collect(),
        std: stats.iter().map(|s| s.1.max(1e-6) as f32).collect(),
    })
}

/// Loader settings for one stream of batches, drawn from `seed` (the stream's own seed,
/// derived by the caller from the run seed and the stream's name).
pub fn loader(
    batch_size: usize,
    seed: u64,
    augment: Option<Augment>,
    normalize: &Normalize,
    training: bool,
) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        shuffle: training,
        drop_last: training,
        seed,
        augment,
        normalize: normalize.clone(),
        prefetch: 4,
    }
}
