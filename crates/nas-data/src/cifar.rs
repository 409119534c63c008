//! CIFAR-10 and CIFAR-100, binary version (Krizhevsky 2009): records of label byte(s)
//! then 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major 32x32).

use std::path::Path;

use crate::error::{Error, Result};
use crate::image::ImageSet;

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar {
    /// 10 classes, one label byte per record.
    Ten,
    /// 100 fine classes; records hold the coarse label byte, then the fine one.
    Hundred,
}

impl Cifar {
    fn label_bytes(self) -> usize {
        match self {
            Cifar::Ten => 1,
            Cifar::Hundred => 2,
        }
    }

    fn classes(self) -> usize {
        match self {
            Cifar::Ten => 10,
            Cifar::Hundred => 100,
        }
    }

    /// The files of each split inside the extracted archive's folder.
    pub fn files(self, train: bool) -> &'static [&'static str] {
        match (self, train) {
            (Cifar::Ten, true) => &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            (Cifar::Ten, false) => &["test_batch.bin"],
            (Cifar::Hundred, true) => &["train.bin"],
            (Cifar::Hundred, false) => &["test.bin"],
        }
    }
}

/// Reads records from `bytes` (named `path` in errors) and appends them.
fn parse(
    kind: Cifar,
    path: &Path,
    bytes: &[u8],
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<()> {
    let record = kind.label_bytes() + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(Error::format(
            path,
            format!("byte {}", bytes.len() - bytes.len() % record),
            format!(
                "a whole number of {record}-byte records, but the file has {} bytes ({} records and {} bytes over)",
                bytes.len(),
                bytes.len() / record,
                bytes.len() % record
            ),
        ));
    }
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[kind.label_bytes() - 1] as usize;
        if kind == Cifar::Hundred && rec[0] >= 20 {
            return Err(Error::format(
                path,
                format!("record {i} (byte {})", i * record),
                format!("coarse label {} is not below 20", rec[0]),
            ));
        }
        if label >= kind.classes() {
            return Err(Error::format(
                path,
                format!("record {i} (byte {})", i * record + kind.label_bytes() - 1),
                format!("label {label} is not below {}", kind.classes()),
            ));
        }
        labels.push(label as u32);
        pixels.extend_from_slice(&rec[kind.label_bytes()..]);
    }
    Ok(())
}

/// Reads one binary batch file.
pub fn read_batch(kind: Cifar, path: &Path) -> Result<ImageSet> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    parse(kind, path, &bytes, &mut pixels, &mut labels)?;
    ImageSet::new(pixels, labels, [3, 32, 32], kind.classes(), 255)
}

/// Reads the training (`train = true`) or test split from the extracted folder `dir`
/// (`cifar-10-batches-bin` or `cifar-100-binary`).
pub fn load(kind: Cifar, dir: &Path, train: bool) -> Result<ImageSet> {
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for name in kind.files(train) {
        let path = dir.join(name);
        if !path.exists() {
            let dataset = match kind {
                Cifar::Ten => "cifar10",
                Cifar::Hundred => "cifar100",
            };
            return Err(Error::Missing {
                dataset,
                looked: path,
                fetch: format!("cargo xtask download {dataset}"),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        parse(kind, &path, &bytes, &mut pixels, &mut labels)?;
    }
    ImageSet::new(pixels, labels, [3, 32, 32], kind.classes(), 255)
}

/// The per-channel mean and standard deviation of CIFAR-10's training images, as the
/// DARTS reference normalises with them.
pub const CIFAR10_MEAN: [f32; 3] = [0.49139968, 0.48215827, 0.44653124];
/// See [`CIFAR10_MEAN`].
pub const CIFAR10_STD: [f32; 3] = [0.24703233, 0.24348505, 0.26158768];

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/datasets")
            .join(rel)
    }

    #[test]
    fn reads_the_real_sample() {
        let set = read_batch(Cifar::Ten, &shared("cifar10-sample/test_batch_first20.bin")).unwrap();
        assert_eq!(set.len(), 20);
        assert_eq!(
            set.labels(),
            &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
        );
        // The file's own bytes: record 0's first red, green and blue pixels.
        let raw = std::fs::read(shared("cifar10-sample/test_batch_first20.bin")).unwrap();
        assert_eq!(set.image(0)[0], raw[1]);
        assert_eq!(set.image(0)[1024], raw[1 + 1024]);
        assert_eq!(set.image(19)[3071], raw[20 * 3073 - 1]);
    }

    #[test]
    fn reads_written_splits_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let record = |label: u8, fill: u8| {
            let mut r = vec![label];
            r.extend(std::iter::repeat_n(fill, PIXELS));
            r
        };
        for (i, name) in Cifar::Ten.files(true).iter().enumerate() {
            let bytes: Vec<u8> = (0..3)
                .flat_map(|j| record(((i + j) % 10) as u8, j as u8))
                .collect();
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let train = load(Cifar::Ten, dir.path(), true).unwrap();
        assert_eq!(train.len(), 15);
        assert_eq!(train.image(4)[100], 1);
        let err = load(Cifar::Ten, dir.path(), false).unwrap_err().to_string();
        assert!(
            err.contains("cifar10 not found") && err.contains("cargo xtask download cifar10"),
            "{err}"
        );

        let truncated = dir.path().join("t.bin");
        let mut bytes = record(1, 0);
        bytes.extend(&record(2, 0)[..100]);
        std::fs::write(&truncated, &bytes).unwrap();
        let err = read_batch(Cifar::Ten, &truncated).unwrap_err().to_string();
        assert!(
            err.contains(
                "at byte 3073: a whole number of 3073-byte records, but the file has 3173 bytes"
            ),
            "{err}"
        );

        let bad_label = dir.path().join("l.bin");
        let mut bytes = record(1, 0);
        bytes.extend(record(10, 0));
        std::fs::write(&bad_label, &bytes).unwrap();
        let err = read_batch(Cifar::Ten, &bad_label).unwrap_err().to_string();
        assert!(
            err.contains("record 1 (byte 3073): label 10 is not below 10"),
            "{err}"
        );

        let hundred = dir.path().join("h.bin");
        let mut bytes = vec![3u8, 57];
        bytes.extend(vec![0u8; PIXELS]);
        std::fs::write(&hundred, &bytes).unwrap();
        assert_eq!(
            read_batch(Cifar::Hundred, &hundred).unwrap().labels(),
            &[57]
        );
    }
}
