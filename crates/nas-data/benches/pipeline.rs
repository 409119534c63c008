//! Criterion benchmark of the CIFAR-format pipeline: shuffle, random crop with padding 4,
//! flip, normalise, Cutout 16, batches of 96 on the background thread (target: at least
//! 20,000 images/s on the project's 2-core machine); and the ImageNet pipeline, JPEG
//! decoding plus the training transform, on the 20 real sample JPEGs (target: at least
//! 150 images/s per core; run with RAYON_NUM_THREADS=1 for the per-core figure).

use std::sync::Arc;

use criterion::{criterion_main, Criterion, Throughput};
use nas_data::cifar::{CIFAR10_MEAN, CIFAR10_STD};
use nas_data::{epoch, Augment, ImageSet, LoaderConfig, Normalize};

fn pipeline(c: &mut Criterion) {
    let n = 10_000;
    let pixels: Vec<u8> = (0..n * 3072)
        .map(|i| ((i * 2_654_435_761usize) >> 13) as u8)
        .collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
    let set = Arc::new(ImageSet::new(pixels, labels, [3, 32, 32], 10, 255).expect("valid set"));
    let indices = Arc::new((0..n).collect::<Vec<_>>());
    let cfg = LoaderConfig {
        batch_size: 96,
        shuffle: true,
        drop_last: false,
        seed: 0,
        augment: Some(Augment::cifar(true)),
        normalize: Normalize {
            mean: CIFAR10_MEAN.to_vec(),
            std: CIFAR10_STD.to_vec(),
        },
        prefetch: 4,
    };
    let mut group = c.benchmark_group("cpu");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    group.bench_function("cifar_pipeline_epoch_10k", |b| {
        b.iter(|| {
            epoch(set.clone(), indices.clone(), &cfg, 0)
                .expect("epoch")
                .iter()
                .count()
        })
    });
    let folder = nas_data::imagenet::ImageFolder::scan(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/datasets/imagenet-sample/val"),
    )
    .expect("the ImageNet sample in ../shared/datasets");
    let idx: Vec<usize> = (0..folder.samples().len()).collect();
    let seeds: Vec<u64> = (0..idx.len() as u64).collect();
    group.throughput(Throughput::Elements(idx.len() as u64));
    group.bench_function("imagenet_decode_train_transform", |b| {
        b.iter(|| folder.batch(&idx, true, &seeds).expect("batch").len())
    });
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::pipeline);
}
criterion_main!(group::benches);
