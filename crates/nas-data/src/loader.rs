//! Batches for training: seeded shuffling, `drop_last`, augmentation, and a background
//! thread that prepares the next batches while the current one trains. The same seed
//! gives the same batches, whatever the thread timing. In-memory sets ([`epoch`]) and
//! ImageNet's JPEGs, decoded and transformed batch by batch ([`imagenet_epoch`]), go
//! through the same thread and the same per-image seeds.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::augment::{preprocess, Augment, Normalize};
use crate::error::{Error, Result};
use crate::image::ImageSet;
use crate::imagenet::{ImageFolder, Transform};

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

/// How ImageNet batches are drawn: normalised `[n, 3, 224, 224]` with the papers'
/// training or evaluation transform.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagenetLoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Shuffle the indices every epoch.
    pub shuffle: bool,
    /// Drop a last, smaller batch.
    pub drop_last: bool,
    /// Seed of shuffling and of the training transform.
    pub seed: u64,
    /// Training (random crop, flip, jitter) or evaluation (resize, centre crop).
    pub transform: Transform,
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
    let order = shuffled(&indices, cfg.shuffle, cfg.seed, epoch);
    let cfg = cfg.clone();
    let size = c * h * w;
    Ok(spawn_batches(
        order,
        cfg.batch_size,
        cfg.drop_last,
        cfg.prefetch,
        move |first, chunk| {
            let mut images = vec![0f32; chunk.len() * size];
            for (k, (&i, out)) in chunk.iter().zip(images.chunks_mut(size)).enumerate() {
                // One generator per image position: the result does not depend on timing.
                let mut rng =
                    rand::rngs::StdRng::seed_from_u64(mix(cfg.seed, epoch, (first + k) as u64));
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
            (batch, false)
        },
    ))
}

/// The batches of one epoch over `indices` of an ImageNet split, decoded (in parallel)
/// and transformed on a background thread. A file that cannot be read or decoded ends
/// the epoch with its error.
pub fn imagenet_epoch(
    folder: Arc<ImageFolder>,
    indices: Arc<Vec<usize>>,
    cfg: &ImagenetLoaderConfig,
    epoch: u64,
) -> Result<Receiver<Result<Batch>>> {
    if cfg.batch_size == 0 {
        return Err(Error::Invalid(
            "a batch size above 0 is needed, got 0".to_string(),
        ));
    }
    let n = folder.samples().len();
    if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
        return Err(Error::Invalid(format!(
            "index {bad} is out of range for {n} images"
        )));
    }
    let order = shuffled(&indices, cfg.shuffle, cfg.seed, epoch);
    let cfg = cfg.clone();
    Ok(spawn_batches(
        order,
        cfg.batch_size,
        cfg.drop_last,
        cfg.prefetch,
        move |first, chunk| {
            let seeds: Vec<u64> = (0..chunk.len())
                .map(|k| mix(cfg.seed, epoch, (first + k) as u64))
                .collect();
            let batch = folder
                .batch(chunk, cfg.transform == Transform::Train, &seeds)
                .map(|images| Batch {
                    images,
                    labels: chunk.iter().map(|&i| folder.samples()[i].1).collect(),
                    shape: [chunk.len(), 3, 224, 224],
                });
            let failed = batch.is_err();
            (batch, failed)
        },
    ))
}

/// `indices`, shuffled by a generator drawn from `(seed, epoch)` when asked.
fn shuffled(indices: &[usize], shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order = indices.to_vec();
    if shuffle {
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(mix(
            seed,
            epoch,
            u64::MAX,
        )));
    }
    order
}

/// Cuts `order` into batches and makes each on a background thread with
/// `make(position of its first image in the epoch, its indices)`, which also says whether
/// it is the last one to send (after an error). At most `prefetch` batches wait.
fn spawn_batches<T, F>(
    order: Vec<usize>,
    batch_size: usize,
    drop_last: bool,
    prefetch: usize,
    mut make: F,
) -> Receiver<T>
where
    T: Send + 'static,
    F: FnMut(usize, &[usize]) -> (T, bool) + Send + 'static,
{
    let (tx, rx) = sync_channel(prefetch.max(1));
    std::thread::spawn(move || {
        for (b, chunk) in order.chunks(batch_size).enumerate() {
            if drop_last && chunk.len() < batch_size {
                break;
            }
            let (item, last) = make(b * batch_size, chunk);
            // A send fails when the consumer stopped early; nothing more to do then.
            if tx.send(item).is_err() || last {
                return;
            }
        }
    });
    rx
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

    fn imagenet_sample() -> Arc<ImageFolder> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/datasets/imagenet-sample/val");
        Arc::new(ImageFolder::scan(&root).unwrap())
    }

    fn imagenet_cfg(transform: Transform) -> ImagenetLoaderConfig {
        ImagenetLoaderConfig {
            batch_size: 8,
            shuffle: true,
            drop_last: true,
            seed: 11,
            transform,
            prefetch: 1,
        }
    }

    fn collect(rx: Receiver<Result<Batch>>) -> Vec<Batch> {
        rx.iter().map(|b| b.unwrap()).collect()
    }

    #[test]
    fn imagenet_batches_of_the_real_sample_are_seeded() {
        let folder = imagenet_sample();
        let idx = Arc::new((0..folder.samples().len()).collect::<Vec<_>>());
        let cfg = imagenet_cfg(Transform::Train);
        let a = collect(imagenet_epoch(folder.clone(), idx.clone(), &cfg, 0).unwrap());
        let b = collect(imagenet_epoch(folder.clone(), idx.clone(), &cfg, 0).unwrap());
        // 20 images, batches of 8, drop_last: two batches, the last 4 images dropped.
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|x| x.shape == [8, 3, 224, 224]));
        assert_eq!(a, b);
        let next = collect(imagenet_epoch(folder.clone(), idx.clone(), &cfg, 1).unwrap());
        assert_ne!(a[0].labels, next[0].labels);
        // Labels follow the shuffled files: 16 distinct images of the sample.
        let mut seen: Vec<u32> = a.iter().flat_map(|x| x.labels.clone()).collect();
        seen.sort_unstable();
        assert!(seen.iter().all(|&l| (l as usize) < folder.classes().len()));
        // The evaluation transform without shuffling gives ImageFolder::batch's pixels
        // for the first 8 files, whatever the seed.
        let mut eval = imagenet_cfg(Transform::Eval);
        eval.shuffle = false;
        eval.drop_last = false;
        let e = collect(imagenet_epoch(folder.clone(), idx.clone(), &eval, 3).unwrap());
        assert_eq!(
            e.iter().map(|x| x.labels.len()).collect::<Vec<_>>(),
            [8, 8, 4]
        );
        let first: Vec<usize> = (0..8).collect();
        assert_eq!(e[0].images, folder.batch(&first, false, &[0; 8]).unwrap());
        let want: Vec<u32> = folder.samples()[..8].iter().map(|s| s.1).collect();
        assert_eq!(e[0].labels, want);
        let (x, y) = e[2].to_tensors(&Device::Cpu).unwrap();
        assert_eq!((x.dims(), y.dims()), (&[4, 3, 224, 224][..], &[4][..]));
    }

    #[test]
    fn a_corrupt_jpeg_ends_the_imagenet_epoch_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("n01");
        std::fs::create_dir_all(&class).unwrap();
        let good = imagenet_sample().samples()[0].0.clone();
        std::fs::copy(&good, class.join("a.jpg")).unwrap();
        std::fs::write(class.join("b.jpg"), b"not a jpeg").unwrap();
        std::fs::copy(&good, class.join("c.jpg")).unwrap();
        let folder = Arc::new(ImageFolder::scan(dir.path()).unwrap());
        let mut cfg = imagenet_cfg(Transform::Eval);
        (cfg.batch_size, cfg.shuffle) = (1, false);
        let got: Vec<_> = imagenet_epoch(folder.clone(), Arc::new(vec![0, 1, 2]), &cfg, 0)
            .unwrap()
            .iter()
            .collect();
        assert_eq!(got.len(), 2, "the epoch stops at the error");
        assert!(got[0].is_ok());
        let err = got[1].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("b.jpg") && err.contains("a decodable JPEG"),
            "{err}"
        );
        cfg.batch_size = 0;
        assert!(imagenet_epoch(folder.clone(), Arc::new(vec![0]), &cfg, 0).is_err());
        cfg.batch_size = 1;
        assert!(imagenet_epoch(folder, Arc::new(vec![3]), &cfg, 0)
            .unwrap_err()
            .to_string()
            .contains("index 3 is out of range for 3 images"));
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
