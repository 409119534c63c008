//! MNIST-style IDX files (LeCun et al.), gzip'd or raw: a magic number giving the element
//! type and rank, big-endian dimension sizes, then the data. Used by MNIST and Fashion-MNIST.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::image::ImageSet;

/// Reads a file, gunzipping it when it starts with the gzip magic bytes. A file named
/// `.gz` must be gzip'd (as `nas data info`'s checksums of the decompressed contents
/// expect): a raw file under that name is an error, not silently read.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let named_gz = path.extension().is_some_and(|e| e == "gz");
    if named_gz && !raw.starts_with(&[0x1f, 0x8b]) {
        return Err(Error::format(
            path,
            "byte 0",
            "the gzip magic bytes 1f 8b (the file is named .gz but is not gzip-compressed; \
             compress it or drop the .gz)",
        ));
    }
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::format(path, "gzip stream", format!("a valid gzip stream ({e})"))
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an unsigned-byte IDX file of the given rank: returns its dimensions and data.
fn parse(path: &Path, bytes: &[u8], rank: u8) -> Result<(Vec<usize>, Vec<u8>)> {
    let header = 4 + 4 * rank as usize;
    if bytes.len() < header {
        return Err(Error::format(
            path,
            "byte 0",
            format!(
                "an IDX header of {header} bytes, the file has {}",
                bytes.len()
            ),
        ));
    }
    let expected = [0, 0, 0x08, rank];
    if bytes[..4] != expected {
        return Err(Error::format(
            path,
            "byte 0",
            format!(
                "magic number {expected:02x?} (unsigned bytes, rank {rank}), found {:02x?}",
                &bytes[..4]
            ),
        ));
    }
    let dims: Vec<usize> = (0..rank as usize)
        .map(|i| {
            u32::from_be_bytes([
                bytes[4 + 4 * i],
                bytes[5 + 4 * i],
                bytes[6 + 4 * i],
                bytes[7 + 4 * i],
            ]) as usize
        })
        .collect();
    let count: usize = dims.iter().product();
    if bytes.len() - header != count {
        return Err(Error::format(
            path,
            format!("byte {header}"),
            format!(
                "{count} data bytes for dimensions {dims:?}, found {}",
                bytes.len() - header
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Reads an images file (rank 3) and its labels file (rank 1); their counts must agree
/// and labels must be below 10.
pub fn read_pair(images: &Path, labels: &Path) -> Result<ImageSet> {
    let (dims, pixels) = parse(images, &read_maybe_gz(images)?, 3)?;
    let (ldims, label_bytes) = parse(labels, &read_maybe_gz(labels)?, 1)?;
    if ldims[0] != dims[0] {
        return Err(Error::format(
            labels,
            "byte 4",
            format!(
                "{} labels for the {} images of {images:?}, found {}",
                dims[0], dims[0], ldims[0]
            ),
        ));
    }
    if let Some((i, l)) = label_bytes.iter().enumerate().find(|(_, &l)| l >= 10) {
        return Err(Error::format(
            labels,
            format!("byte {}", 8 + i),
            format!("a label below 10, found {l}"),
        ));
    }
    ImageSet::new(
        pixels,
        label_bytes.iter().map(|&l| l as u32).collect(),
        [1, dims[1], dims[2]],
        10,
        255,
    )
}

/// Loads the training or test split of MNIST or Fashion-MNIST from `dir`, taking the
/// gzip'd files or, when they are not there, the raw ones.
pub fn load(dataset: &'static str, dir: &Path, train: bool) -> Result<ImageSet> {
    let stem = if train { "train" } else { "t10k" };
    let find = |kind: &str| -> Result<std::path::PathBuf> {
        let base = format!("{stem}-{kind}");
        for name in [format!("{base}.gz"), base.clone()] {
            let path = dir.join(&name);
            if path.exists() {
                return Ok(path);
            }
        }
        Err(Error::Missing {
            dataset,
            looked: dir.join(format!("{base}.gz")),
            fetch: format!("cargo xtask download {dataset}"),
        })
    };
    read_pair(&find("images-idx3-ubyte")?, &find("labels-idx1-ubyte")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_real_fashion_mnist() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/fashion-mnist");
        let train = load("fashion-mnist", &dir, true).unwrap();
        let test = load("fashion-mnist", &dir, false).unwrap();
        assert_eq!((train.len(), test.len()), (60_000, 10_000));
        assert_eq!(train.shape(), [1, 28, 28]);
        assert_eq!(train.class_counts(), vec![6000; 10]);
        assert_eq!(test.class_counts(), vec![1000; 10]);
    }

    fn idx(rank: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, rank];
        for d in dims {
            out.extend(d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn rejects_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("train-images-idx3-ubyte");
        let lab = dir.path().join("train-labels-idx1-ubyte");
        std::fs::write(&img, idx(3, &[2, 2, 2], &[0; 8])).unwrap();
        std::fs::write(&lab, idx(1, &[2], &[3, 9])).unwrap();
        assert_eq!(load("mnist", dir.path(), true).unwrap().labels(), &[3, 9]);

        std::fs::write(&lab, idx(1, &[2], &[3, 10])).unwrap();
        let err = load("mnist", dir.path(), true).unwrap_err().to_string();
        assert!(
            err.contains("at byte 9: a label below 10, found 10"),
            "{err}"
        );
        std::fs::write(&lab, idx(1, &[3], &[3, 1, 2])).unwrap();
        let err = load("mnist", dir.path(), true).unwrap_err().to_string();
        assert!(err.contains("2 labels for the 2 images"), "{err}");
        std::fs::write(&img, idx(3, &[2, 2, 2], &[0; 7])).unwrap();
        let err = read_pair(&img, &lab).unwrap_err().to_string();
        assert!(
            err.contains("at byte 16: 8 data bytes for dimensions [2, 2, 2], found 7"),
            "{err}"
        );
        let mut bad = idx(3, &[2, 2, 2], &[0; 8]);
        bad[2] = 0x0d;
        std::fs::write(&img, bad).unwrap();
        let err = read_pair(&img, &lab).unwrap_err().to_string();
        assert!(err.contains("magic number"), "{err}");
        std::fs::write(&img, [0x1f, 0x8b, 1, 2]).unwrap();
        let err = read_pair(&img, &lab).unwrap_err().to_string();
        assert!(err.contains("a valid gzip stream"), "{err}");
        let raw_gz = dir.path().join("raw-images.gz");
        std::fs::write(&raw_gz, idx(3, &[2, 2, 2], &[0; 8])).unwrap();
        let err = read_pair(&raw_gz, &lab).unwrap_err().to_string();
        assert!(
            err.contains("named .gz but is not gzip-compressed"),
            "{err}"
        );
        let err = load("mnist", &dir.path().join("nowhere"), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mnist not found") && err.contains("cargo xtask download mnist"),
            "{err}"
        );
    }
}
