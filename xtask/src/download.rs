//! `cargo xtask download <dataset> [--dir DIR] [--mirror DIR]`: puts a data set into the
//! data directory's layout, verified against the published checksums.
//!
//! Sources: a local mirror folder (`--mirror`, or `NAS_DATA_MIRROR`) laid out as
//! `datasets/README.md` describes. Files are copied (or extracted) to `*.part` names,
//! verified, then renamed, so an interrupted run leaves nothing that looks complete.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nas_data::{checksum_status_as, Dataset};

pub fn run(args: &[&str]) -> Result<()> {
    let mut rest = args.iter();
    let Some(name) = rest.next() else {
        bail!("usage: cargo xtask download <dataset> [--dir DIR] [--mirror DIR]");
    };
    let dataset = Dataset::from_name(name)?;
    let mut dir = std::env::var_os("NAS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("datasets"));
    let mut mirror = std::env::var_os("NAS_DATA_MIRROR").map(PathBuf::from);
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match *flag {
            "--dir" => dir = PathBuf::from(value),
            "--mirror" => mirror = Some(PathBuf::from(value)),
            other => bail!("unknown flag {other:?}; expected --dir or --mirror"),
        }
    }
    let Some(mirror) = mirror else {
        bail!(
            "downloading {} from the network is not implemented yet; give a local mirror with --mirror DIR \
             (or NAS_DATA_MIRROR), laid out as datasets/README.md describes",
            dataset.name()
        );
    };
    let source = mirror.join(dataset.name());
    let target = dataset.folder(&dir);
    std::fs::create_dir_all(&target).with_context(|| format!("creating {target:?}"))?;
    match dataset {
        Dataset::Cifar10 | Dataset::Cifar100 => {
            let archive = source.join(match dataset {
                Dataset::Cifar10 => "cifar-10-binary.tar.gz",
                _ => "cifar-100-binary.tar.gz",
            });
            extract(&archive, &target)?;
        }
        _ => {
            let files: &[&str] = match dataset {
                Dataset::Ptb => &["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"],
                Dataset::Wikitext2 => &["wiki.train.txt", "wiki.valid.txt", "wiki.test.txt"],
                Dataset::Digits => &["digits.csv.gz"],
                _ => &[
                    "train-images-idx3-ubyte.gz",
                    "train-labels-idx1-ubyte.gz",
                    "t10k-images-idx3-ubyte.gz",
                    "t10k-labels-idx1-ubyte.gz",
                ],
            };
            for file in files {
                copy_verified(&source.join(file), &target.join(file))?;
            }
        }
    }
    // Read everything back: counts, labels and formats are checked on the way.
    let info = dataset
        .info(&dir)
        .with_context(|| format!("checking {} in {dir:?}", dataset.name()))?;
    println!("{} is in {}: {:?}", info.name, info.location, info.splits);
    Ok(())
}

/// Copies `from` to `to` through `to.part`, refusing a file whose checksum mismatches.
fn copy_verified(from: &Path, to: &Path) -> Result<()> {
    if !from.exists() {
        bail!("the mirror has no {from:?}");
    }
    let part = part_name(to);
    std::fs::copy(from, &part).with_context(|| format!("copying {from:?} to {part:?}"))?;
    let status = checksum_status_as(&part, &file_name(to))?;
    if status.starts_with("mismatch") {
        let _ = std::fs::remove_file(&part);
        bail!("{from:?}: {status}");
    }
    std::fs::rename(&part, to).with_context(|| format!("renaming {part:?} to {to:?}"))?;
    Ok(())
}

/// Extracts a `.tar.gz` into `target` (the archive's top folder stripped), through a
/// `.part` folder renamed at the end.
fn extract(archive: &Path, target: &Path) -> Result<()> {
    if !archive.exists() {
        bail!("the mirror has no {archive:?}");
    }
    let part = part_name(target);
    let _ = std::fs::remove_dir_all(&part);
    std::fs::create_dir_all(&part)?;
    let file = std::fs::File::open(archive).with_context(|| format!("opening {archive:?}"))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in tar
        .entries()
        .with_context(|| format!("reading {archive:?}"))?
    {
        let mut entry = entry.with_context(|| format!("reading {archive:?}"))?;
        let path = entry.path()?.into_owned();
        let Some(name) = path
            .file_name()
            .filter(|_| entry.header().entry_type().is_file())
        else {
            continue;
        };
        entry
            .unpack(part.join(name))
            .with_context(|| format!("extracting {path:?} from {archive:?}"))?;
    }
    let _ = std::fs::remove_dir_all(target);
    std::fs::rename(&part, target).with_context(|| format!("renaming {part:?} to {target:?}"))?;
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

fn part_name(p: &Path) -> PathBuf {
    p.with_file_name(format!("{}.part", file_name(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CIFAR-10 tarball in the published layout (`cifar-10-batches-bin/*.bin`).
    fn write_tarball(mirror: &Path, records_per_file: usize) {
        let dir = mirror.join("cifar10");
        std::fs::create_dir_all(&dir).unwrap();
        let file = std::fs::File::create(dir.join("cifar-10-binary.tar.gz")).unwrap();
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        let names = [
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin",
        ];
        for (i, name) in names.iter().enumerate() {
            let mut bytes = Vec::new();
            for r in 0..records_per_file {
                bytes.push(((i + r) % 10) as u8);
                bytes.extend(vec![r as u8; 3072]);
            }
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(
                &mut header,
                format!("cifar-10-batches-bin/{name}"),
                &bytes[..],
            )
            .unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn imports_a_cifar_tarball_and_real_mirror_files() {
        let mirror = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        write_tarball(mirror.path(), 3);
        let (m, d) = (
            mirror.path().to_str().unwrap(),
            data.path().to_str().unwrap(),
        );
        run(&["cifar10", "--dir", d, "--mirror", m]).unwrap();
        let train = Dataset::Cifar10.load_images(data.path(), true).unwrap();
        assert_eq!((train.len(), train.labels()[4]), (15, 2));
        // A corrupt mirror file is refused and leaves nothing behind.
        let bad = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bad.path().join("ptb")).unwrap();
        for split in ["train", "valid", "test"] {
            std::fs::write(bad.path().join(format!("ptb/ptb.{split}.txt")), "x\n").unwrap();
        }
        let err = run(&["ptb", "--dir", d, "--mirror", bad.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mismatch (md5"), "{err}");
        let left: Vec<_> = std::fs::read_dir(data.path().join("ptb"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // The real mirror passes.
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets");
        run(&["ptb", "--dir", d, "--mirror", shared.to_str().unwrap()]).unwrap();
        assert_eq!(
            Dataset::Ptb.load_corpus(data.path()).unwrap().vocab_size(),
            10_000
        );
        let err = run(&["cifar100", "--dir", d]).unwrap_err().to_string();
        assert!(
            err.contains("not implemented yet") || err.contains("the mirror has no"),
            "{err}"
        );
    }
}
