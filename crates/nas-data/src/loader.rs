//! Batches for training: seeded shuffling, `drop_last`, augmentation, and a background
//! thread that prepares the next batches while the current one trains. The same seed
//! gives the same batches, whatever the thread timing.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::augment::{preprocess, Augment, Normalize};
use crate::error::{Error, Result};
use crate::image::ImageSet;

/// How batches are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Shuffle the indices every epoch.
    pub shuffle: bool,
    /// Drop a last, smaller batch.
    pub drop_last: bool,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Training augmentation, if any.
    pub augment: Option<Augment>,
    /// Normalisation.
    pub normalize: Normalize,
    /// Batches prepared ahead.
    pub prefetch: usize,
}

/// One batch: images `[n, c, h, w]` normalised f32, and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Row-major `[n, c, h, w]`.
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<u32>,
    /// `[n, c, h, w]`.
    pub shape: [usize; 4],
}

impl Batch {
    /// The batch as candle tensors: images f32 `[n, c, h, w]`, labels u32 `[n]`.
    pub fn to_tensors(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            Tensor::from_slice(&self.images, self.shape.to_vec(), device)?,
            Tensor::from_slice(&self.labels, self.labels.len(), device)?,
        ))
    }
}

/// The batches of one epoch over `indices` of `set`, prepared on a background thread.
pub fn epoch(
    set: Arc<ImageSet>,
    indices: Arc<Vec<usize>>,
    cfg: &LoaderConfig,
    epoch: u64,
) -> Result<Receiver<Batch>> {
    let [c, h, w] = set.shape();
    if cfg.batch_size == 0 || cfg.normalize.mean.len() != c || cfg.normalize.std.len() != c {
        return Err(Error::Invalid(format!(
            "a batch size above 0 and {c} normalisation means and stds are needed, got batch size {} and {} / {}",
            cfg.batch_size,
            cfg.normalize.mean.len(),
            cfg.normalize.std.len()
        )));
    }
    if let Some(&bad) = indices.iter().find(|&&i| i >= set.len()) {
        return Err(Error::Invalid(format!(
            "index {bad} is out of range for {} images",
            set.len()
        )));
    }
    let mut order: Vec<usize> = indices.to_vec();
    if cfg.shuffle {
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(mix(
            cfg.seed,
            epoch,
            u64::MAX,
        )));
    }
    let cfg = cfg.clone();
    let (tx, rx) = sync_channel(cfg.prefetch.max(1));
    std::thread::spawn(move || {
        let size = c * h * w;
        for (b, chunk) in order.chunks(cfg.batch_size).enumerate() {
            if cfg.drop_last && chunk.len() < cfg.batch_size {
                break;
            }
            let mut images = vec![0f32; chunk.len() * size];
            for (k, (&i, out)) in chunk.iter().zip(images.chunks_mut(size)).enumerate() {
                // One generator per image position: the result does not depend on timing.
                let mut rng = rand::rngs::StdRng::seed_from_u64(mix(
                    cfg.seed,
                    epoch,
                    (b * cfg.batch_size + k) as u64,
                ));
                preprocess(
                    set.image(i),
                    [c, h, w],
                    set.max_value(),
                    &cfg.normalize,
                    cfg.augment.as_ref(),
                    &mut rng,
                    out,
                );
            }
            let labels = chunk.iter().map(|&i| set.labels()[i]).collect();
            let batch = Batch {
                images,
                labels,
                shape: [chunk.len(), c, h, w],
            };
            if tx.send(batch).is_err() {
                // The consumer stopped early; nothing more to do.
                return;
            }
        }
    });
    Ok(rx)
}

/// A well-mixed 64-bit seed from three numbers (SplitMix64 finaliser).
fn mix(seed: u64, epoch: u64, index: u64) -> u64 {
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digits;

    fn cfg(augment: bool) -> LoaderConfig {
        LoaderConfig {
            batch_size: 64,
            shuffle: true,
            drop_last: true,
            seed: 5,
            augment: augment.then_some(Augment {
                crop_padding: 1,
                flip: true,
                cutout: 4,
            }),
            normalize: Normalize {
                mean: vec![0.3],
                std: vec![0.4],
            },
            prefetch: 2,
        }
    }

    #[test]
    fn same_seed_same_batches_and_drop_last() {
        let set = Arc::new(digits::embedded().unwrap());
        let idx = Arc::new((0..set.len()).collect::<Vec<_>>());
        let a: Vec<Batch> = epoch(set.clone(), idx.clone(), &cfg(true), 0)
            .unwrap()
            .iter()
            .collect();
        let b: Vec<Batch> = epoch(set.clone(), idx.clone(), &cfg(true), 0)
            .unwrap()
            .iter()
            .collect();
        let other: Vec<Batch> = epoch(set.clone(), idx.clone(), &cfg(true), 1)
            .unwrap()
            .iter()
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.len(), 1797 / 64);
        assert!(a.iter().all(|x| x.shape == [64, 1, 8, 8]));
        // Without drop_last the last batch is the remainder; every image comes once.
        let mut keep = cfg(false);
        keep.drop_last = false;
        let all: Vec<Batch> = epoch(set.clone(), idx, &keep, 0).unwrap().iter().collect();
        assert_eq!(all.last().unwrap().labels.len(), 1797 % 64);
        let mut counts = vec![0; 10];
        for l in all.iter().flat_map(|b| &b.labels) {
            counts[*l as usize] += 1;
        }
        assert_eq!(counts, set.class_counts());
        let (x, y) = all[0].to_tensors(&Device::Cpu).unwrap();
        assert_eq!((x.dims(), y.dims()), (&[64, 1, 8, 8][..], &[64][..]));
    }

    #[test]
    fn bad_configs_are_errors() {
        let set = Arc::new(digits::embedded().unwrap());
        let mut c = cfg(false);
        c.normalize.mean = vec![0.1, 0.2];
        assert!(epoch(set.clone(), Arc::new(vec![0]), &c, 0).is_err());
        assert!(epoch(set, Arc::new(vec![5000]), &cfg(false), 0)
            .unwrap_err()
            .to_string()
            .contains("index 5000"));
    }
}
