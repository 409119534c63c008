//! Putting a data set into the data directory from files already on this machine: a
//! local mirror folder (the files as published), an archive that was downloaded (a
//! `.tar.gz` or a `.zip`; only the listed members are kept), or, for ImageNet, which
//! cannot be downloaded without an account, an ImageFolder tree or a tar of one.
//!
//! Everything is written under a `.part` name and renamed at the end, so an interrupted
//! import never leaves a file or folder that looks complete. There is no network code
//! here: `cargo xtask download` fetches archives and hands them to [`extract_archive`].

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::catalog::Dataset;
use crate::error::{Error, Result};
use crate::imagenet::is_jpeg;

/// Where a data set's files sit in a mirror folder (`<mirror>/<data set>/...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorSource {
    /// These files, copied as they are and checked against their published md5.
    Files(&'static [&'static str]),
    /// The published archive, extracted; `members` (by file name) are the files kept,
    /// every regular file when `None`.
    Archive {
        /// The archive's file name.
        name: &'static str,
        /// The file names kept.
        members: Option<&'static [&'static str]>,
        /// The archive's published md5 (as in `datasets/manifest.json`).
        md5: &'static str,
    },
    /// Not in mirrors (ImageNet: see [`import_imagenet`]).
    None,
}

/// WikiText-2's files inside `wikitext-2-v1.zip` (under `wikitext-2/`).
pub const WIKITEXT2_MEMBERS: &[&str] =
    &["wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"];

/// The IDX files of MNIST and Fashion-MNIST, gzip'd as published.
const IDX_FILES: &[&str] = &[
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

impl Dataset {
    /// What a mirror holds for this data set.
    pub fn mirror_source(self) -> MirrorSource {
        match self {
            Dataset::Cifar10 => MirrorSource::Archive {
                name: "cifar-10-binary.tar.gz",
                members: None,
                md5: "c32a1d4ab5d03f1284b67883e8d87530",
            },
            Dataset::Cifar100 => MirrorSource::Archive {
                name: "cifar-100-binary.tar.gz",
                members: None,
                md5: "03b5dce01913d631647c71ecec9e9cb8",
            },
            Dataset::Wikitext2 => MirrorSource::Archive {
                name: "wikitext-2-v1.zip",
                members: Some(WIKITEXT2_MEMBERS),
                md5: "542ccefacc6c27f945fb54453812b3cd",
            },
            Dataset::Ptb => {
                MirrorSource::Files(&["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"])
            }
            Dataset::Digits => MirrorSource::Files(&["digits.csv.gz"]),
            Dataset::Mnist | Dataset::FashionMnist => MirrorSource::Files(IDX_FILES),
            Dataset::Imagenet => MirrorSource::None,
        }
    }
}

/// Imports `dataset` from `mirror/<name>/` into its folder under `data_dir`. Plain files
/// and archives are checked against their published md5 first (a mismatch is an
/// [`Error::Checksum`] and leaves nothing behind); archives are then extracted through a
/// `.part` folder (gzip and zip CRCs checked on the way). The caller reads the set back
/// (e.g. [`Dataset::info`]) to check formats and counts.
pub fn from_mirror(dataset: Dataset, mirror: &Path, data_dir: &Path) -> Result<()> {
    from_mirror_with(dataset, mirror, data_dir, None)
}

/// As [`from_mirror`], but an archive is checked against `archive_md5` instead of the
/// published sum: for mirrors that hold a re-packed archive whose sum the user vouches
/// for (`cargo xtask download --mirror DIR --md5 HEX`).
pub fn from_mirror_with(
    dataset: Dataset,
    mirror: &Path,
    data_dir: &Path,
    archive_md5: Option<&str>,
) -> Result<()> {
    let source = mirror.join(dataset.name());
    let target = dataset.folder(data_dir);
    match dataset.mirror_source() {
        MirrorSource::Archive { name, members, md5 } => {
            let archive = source.join(name);
            if !archive.is_file() {
                return Err(not_in_mirror(mirror, dataset, name));
            }
            let expected = archive_md5.unwrap_or(md5);
            let got = crate::md5_hex(&archive, false)?;
            if got != expected {
                return Err(Error::Checksum {
                    path: archive,
                    got,
                    expected: expected.to_string(),
                });
            }
            extract_archive(&archive, &target, members)
        }
        MirrorSource::Files(files) => {
            std::fs::create_dir_all(&target).map_err(|e| Error::io(&target, e))?;
            for file in files {
                copy_verified(dataset, &source.join(file), &target.join(file))?;
            }
            Ok(())
        }
        MirrorSource::None => Err(Error::Invalid(format!(
            "{} is not imported from mirrors: pass the ImageFolder tree or its tar with --from",
            dataset.name()
        ))),
    }
}

fn not_in_mirror(mirror: &Path, dataset: Dataset, file: &str) -> Error {
    Error::Layout {
        path: mirror.to_path_buf(),
        expected: format!(
            "a mirror folder holding {}/{file} (layout: datasets/README.md); it is not there",
            dataset.name()
        ),
    }
}

/// Copies `from` to `to` through `to.part`, refusing a file whose checksum mismatches.
fn copy_verified(dataset: Dataset, from: &Path, to: &Path) -> Result<()> {
    if !from.is_file() {
        let mirror = from.parent().and_then(Path::parent).unwrap_or(from);
        return Err(not_in_mirror(mirror, dataset, &file_name(from)));
    }
    let part = part_name(to);
    std::fs::copy(from, &part).map_err(|e| Error::io(&part, e))?;
    if let Err(e) = dataset.verify(&part, &file_name(to)) {
        let _ = std::fs::remove_file(&part);
        return Err(match e {
            // Name the mirror's file, not the temporary copy.
            Error::Checksum { got, expected, .. } => Error::Checksum {
                path: from.to_path_buf(),
                got,
                expected,
            },
            other => other,
        });
    }
    std::fs::rename(&part, to).map_err(|e| Error::io(to, e))
}

/// Extracts a `.tar.gz`, `.tar` or `.zip` (told apart by their first bytes) into
/// `target`, flattened (each member lands under its file name), through `target.part`
/// renamed at the end; an existing `target` is replaced. With `members`, only files of
/// those names are kept, and every one of them must be in the archive.
pub fn extract_archive(archive: &Path, target: &Path, members: Option<&[&str]>) -> Result<()> {
    let part = part_name(target);
    let _ = std::fs::remove_dir_all(&part);
    std::fs::create_dir_all(&part).map_err(|e| Error::io(&part, e))?;
    let result = extract_into(archive, &part, members).and_then(|found| {
        let missing: Vec<&str> = members
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|m| !found.iter().any(|f| f == m))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::format(
                archive,
                "archive members",
                format!("members named {}", missing.join(", ")),
            ))
        }
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&part);
        return Err(e);
    }
    replace_dir(&part, target)
}

/// Writes the archive's (selected) regular files into `dir`; returns their names.
fn extract_into(archive: &Path, dir: &Path, members: Option<&[&str]>) -> Result<Vec<String>> {
    let keep = |name: &str| members.is_none_or(|m| m.contains(&name));
    let mut found = Vec::new();
    match sniff(archive)? {
        Kind::Zip => {
            let file = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
            let mut zip = zip::ZipArchive::new(file).map_err(|e| {
                Error::format(archive, "zip directory", format!("a zip archive ({e})"))
            })?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i).map_err(|e| {
                    Error::format(
                        archive,
                        format!("zip entry {i}"),
                        format!("a readable entry ({e})"),
                    )
                })?;
                let Some(name) = entry
                    .enclosed_name()
                    .filter(|_| entry.is_file())
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
                else {
                    continue;
                };
                if !keep(&name) {
                    continue;
                }
                let to = dir.join(&name);
                let mut out = std::fs::File::create(&to).map_err(|e| Error::io(&to, e))?;
                // Reading to the end checks the entry's CRC-32.
                std::io::copy(&mut entry, &mut out).map_err(|e| {
                    Error::format(
                        archive,
                        format!("zip entry {:?}", entry.name()),
                        format!("an intact entry ({e})"),
                    )
                })?;
                found.push(name);
            }
        }
        kind => {
            let mut tar = open_tar(archive, kind)?;
            let entries = tar
                .entries()
                .map_err(|e| tar_error(archive, "the start", e))?;
            for (i, entry) in entries.enumerate() {
                let mut entry = entry.map_err(|e| tar_error(archive, &format!("entry {i}"), e))?;
                let path = entry
                    .path()
                    .map_err(|e| tar_error(archive, &format!("entry {i}"), e))?
                    .into_owned();
                let Some(name) = path
                    .file_name()
                    .filter(|_| entry.header().entry_type().is_file())
                    .map(|n| n.to_string_lossy().to_string())
                else {
                    continue;
                };
                if !keep(&name) {
                    continue;
                }
                let to = dir.join(&name);
                entry
                    .unpack(&to)
                    .map_err(|e| tar_error(archive, &format!("{path:?}"), e))?;
                found.push(name);
            }
        }
    }
    Ok(found)
}

/// What an ImageNet import found: classes and images per split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagenetSummary {
    /// Class folders (the same in both splits).
    pub classes: usize,
    /// Training images.
    pub train: usize,
    /// Validation images.
    pub val: usize,
    /// Files in class folders left out because they are not JPEGs (files outside
    /// `<split>/<class>/` are not part of the tree and not counted).
    pub skipped: usize,
}

/// Imports ImageNet into `<data_dir>/imagenet/` from `from`: a folder holding an
/// ImageFolder tree (`train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`), or a tar (optionally
/// gzip'd) of one, with or without a top folder. JPEG files are copied into
/// `imagenet.part`, the tree is checked (both splits, the same class folders), and only
/// then renamed to `imagenet` (replacing an older import).
pub fn import_imagenet(from: &Path, data_dir: &Path) -> Result<ImagenetSummary> {
    let target = Dataset::Imagenet.folder(data_dir);
    let part = part_name(&target);
    let _ = std::fs::remove_dir_all(&part);
    std::fs::create_dir_all(&part).map_err(|e| Error::io(&part, e))?;
    let result = if from.is_dir() {
        copy_tree(from, &part)
    } else if from.is_file() {
        untar_tree(from, &part)
    } else {
        Err(Error::Layout {
            path: from.to_path_buf(),
            expected: "an ImageFolder tree or a .tar of one; nothing is there".to_string(),
        })
    }
    .and_then(|skipped| check_tree(from, &part, skipped));
    match result {
        Ok(summary) => {
            replace_dir(&part, &target)?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&part);
            Err(e)
        }
    }
}

const SPLITS: [&str; 2] = ["train", "val"];

/// Copies the JPEGs of `from/{train,val}/<class>/` into `to`; returns how many other
/// files the class folders held.
fn copy_tree(from: &Path, to: &Path) -> Result<usize> {
    let mut skipped = 0;
    for split in SPLITS {
        let src = from.join(split);
        if !src.is_dir() {
            return Err(Error::Layout {
                path: from.to_path_buf(),
                expected: format!("an ImageFolder tree with train/ and val/; there is no {split}/"),
            });
        }
        for class in read_dir_sorted(&src)? {
            if !class.is_dir() {
                continue;
            }
            let dst = to.join(split).join(file_name(&class));
            for file in read_dir_sorted(&class)? {
                if !(file.is_file() && is_jpeg(&file)) {
                    skipped += 1;
                    continue;
                }
                std::fs::create_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
                let out = dst.join(file_name(&file));
                std::fs::copy(&file, &out).map_err(|e| Error::io(&file, e))?;
            }
        }
    }
    Ok(skipped)
}

/// Writes the JPEGs of a tar of an ImageFolder tree into `to`. Members are taken at
/// `[top/...]<split>/<class>/<file>`; every one must share the same top folders.
fn untar_tree(archive: &Path, to: &Path) -> Result<usize> {
    let kind = sniff(archive)?;
    if kind == Kind::Zip {
        return Err(Error::Layout {
            path: archive.to_path_buf(),
            expected: "an ImageFolder tree or a .tar (or .tar.gz) of one, not a zip".to_string(),
        });
    }
    let mut tar = open_tar(archive, kind)?;
    let mut top: Option<Vec<String>> = None;
    let mut skipped = 0;
    let entries = tar
        .entries()
        .map_err(|e| tar_error(archive, "the start", e))?;
    for (i, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| tar_error(archive, &format!("entry {i}"), e))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| tar_error(archive, &format!("entry {i}"), e))?
            .into_owned();
        let mut parts = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_string_lossy().to_string()),
                Component::CurDir => {}
                _ => {
                    return Err(Error::format(
                        archive,
                        format!("member {path:?}"),
                        "a relative path inside the tree",
                    ))
                }
            }
        }
        let n = parts.len();
        if n < 3 || !SPLITS.contains(&parts[n - 3].as_str()) {
            // Outside the tree (a devkit, a README): not part of the data set.
            continue;
        }
        if !is_jpeg(&path) {
            skipped += 1;
            continue;
        }
        let prefix = parts[..n - 3].to_vec();
        match &top {
            None => top = Some(prefix),
            Some(t) if *t != prefix => {
                return Err(Error::Layout {
                    path: archive.to_path_buf(),
                    expected: format!(
                        "one ImageFolder tree; found members under {:?} and {:?}",
                        t.join("/"),
                        prefix.join("/")
                    ),
                })
            }
            Some(_) => {}
        }
        let dir = to.join(&parts[n - 3]).join(&parts[n - 2]);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let out = dir.join(&parts[n - 1]);
        entry
            .unpack(&out)
            .map_err(|e| tar_error(archive, &format!("{path:?}"), e))?;
    }
    Ok(skipped)
}

/// Counts the imported tree and checks that both splits have the same classes.
fn check_tree(from: &Path, tree: &Path, skipped: usize) -> Result<ImagenetSummary> {
    let mut counts: Vec<BTreeMap<String, usize>> = Vec::new();
    for split in SPLITS {
        let dir = tree.join(split);
        let mut classes = BTreeMap::new();
        if dir.is_dir() {
            for class in read_dir_sorted(&dir)? {
                let n = read_dir_sorted(&class)?.len();
                classes.insert(file_name(&class), n);
            }
        }
        if classes.is_empty() {
            return Err(Error::Layout {
                path: from.to_path_buf(),
                expected: format!(
                    "an ImageFolder tree with JPEGs at {split}/<class>/<file>.JPEG; found none"
                ),
            });
        }
        counts.push(classes);
    }
    let (train, val) = (&counts[0], &counts[1]);
    let only = |a: &BTreeMap<String, usize>, b: &BTreeMap<String, usize>| -> Vec<String> {
        a.keys().filter(|k| !b.contains_key(*k)).cloned().collect()
    };
    let (train_only, val_only) = (only(train, val), only(val, train));
    if !train_only.is_empty() || !val_only.is_empty() {
        let list = |v: &[String]| {
            let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 5 {
                s.push_str(&format!(" and {} more", v.len() - 5));
            }
            if s.is_empty() {
                s.push_str("none");
            }
            s
        };
        return Err(Error::Layout {
            path: from.to_path_buf(),
            expected: format!(
                "the same class folders in train/ and val/; only in train/: {}; only in val/: {}",
                list(&train_only),
                list(&val_only)
            ),
        });
    }
    Ok(ImagenetSummary {
        classes: train.len(),
        train: train.values().sum(),
        val: val.values().sum(),
        skipped,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Zip,
    TarGz,
    Tar,
}

/// Tells zip, gzip'd tar and plain tar apart by their first bytes.
fn sniff(archive: &Path) -> Result<Kind> {
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let n = file.read(&mut head).map_err(|e| Error::io(archive, e))?;
    Ok(match &head[..n] {
        [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => Kind::Zip,
        [0x1f, 0x8b, ..] => Kind::TarGz,
        _ => Kind::Tar,
    })
}

fn open_tar(archive: &Path, kind: Kind) -> Result<tar::Archive<Box<dyn Read>>> {
    let file = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let reader: Box<dyn Read> = if kind == Kind::TarGz {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(tar::Archive::new(reader))
}

fn tar_error(archive: &Path, at: &str, e: std::io::Error) -> Error {
    Error::format(archive, at, format!("an intact tar archive ({e})"))
}

/// Replaces `target` by the finished folder `part`.
fn replace_dir(part: &Path, target: &Path) -> Result<()> {
    if target.exists() {
        std::fs::remove_dir_all(target).map_err(|e| Error::io(target, e))?;
    }
    std::fs::rename(part, target).map_err(|e| Error::io(target, e))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// `p` with `.part` appended to its file name: where a file or folder is written before
/// it gets its final name.
pub fn part_name(p: &Path) -> PathBuf {
    p.with_file_name(format!("{}.part", file_name(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets")
    }

    fn names(dir: &Path) -> Vec<String> {
        read_dir_sorted(dir)
            .unwrap()
            .iter()
            .map(|p| file_name(p))
            .collect()
    }

    fn append(tar: &mut tar::Builder<impl std::io::Write>, path: &str, bytes: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes).unwrap();
    }

    /// One CIFAR-100 record: coarse label, fine label, 3072 pixels.
    fn record(coarse: u8, fine: u8, pixel: u8) -> Vec<u8> {
        let mut r = vec![coarse, fine];
        r.extend(std::iter::repeat_n(pixel, 3072));
        r
    }

    #[test]
    fn imports_a_cifar100_tarball_in_the_published_layout() {
        let mirror = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(mirror.path().join("cifar100")).unwrap();
        let archive = mirror.path().join("cifar100/cifar-100-binary.tar.gz");
        {
            let file = std::fs::File::create(&archive).unwrap();
            let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::fast(),
            ));
            let train: Vec<u8> = (0..7u8)
                .flat_map(|i| record(i % 20, 90 + i, i * 3))
                .collect();
            let test: Vec<u8> = (0..3u8).flat_map(|i| record(19, i, 200 + i)).collect();
            append(&mut tar, "cifar-100-binary/train.bin", &train);
            append(&mut tar, "cifar-100-binary/test.bin", &test);
            append(
                &mut tar,
                "cifar-100-binary/coarse_label_names.txt",
                b"aquatic_mammals\n",
            );
            append(
                &mut tar,
                "cifar-100-binary/fine_label_names.txt",
                b"apple\n",
            );
            tar.into_inner().unwrap().finish().unwrap();
        }
        // This archive is not the published one: refused by its md5, nothing extracted.
        let err = from_mirror(Dataset::Cifar100, mirror.path(), data.path()).unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
        assert!(!Dataset::Cifar100.folder(data.path()).exists());
        // With its own sum vouched for, it imports.
        let md5 = crate::md5_hex(&archive, false).unwrap();
        from_mirror_with(Dataset::Cifar100, mirror.path(), data.path(), Some(&md5)).unwrap();
        let folder = Dataset::Cifar100.folder(data.path());
        assert_eq!(
            names(&folder),
            [
                "coarse_label_names.txt",
                "fine_label_names.txt",
                "test.bin",
                "train.bin"
            ]
        );
        assert!(!part_name(&folder).exists());
        let train = Dataset::Cifar100.load_images(data.path(), true).unwrap();
        let test = Dataset::Cifar100.load_images(data.path(), false).unwrap();
        assert_eq!((train.len(), test.len(), train.classes()), (7, 3, 100));
        // The fine label (the second byte) is the label; the pixels follow the two bytes.
        assert_eq!(train.labels(), [90, 91, 92, 93, 94, 95, 96]);
        assert_eq!(test.labels(), [0, 1, 2]);
        assert!(train.image(4).iter().all(|&p| p == 12));
        assert!(test.image(2).iter().all(|&p| p == 202));
        let info = Dataset::Cifar100.info(data.path()).unwrap();
        assert_eq!(info.splits, vec![("train", 7), ("test", 3)]);
        assert_eq!(info.shape, crate::Shape::Fixed([3, 32, 32]));

        // A truncated archive is an error that leaves the earlier import as it was.
        let bytes = std::fs::read(&archive).unwrap();
        std::fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
        let err = from_mirror_with(Dataset::Cifar100, mirror.path(), data.path(), Some(&md5))
            .unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
        // Even with the truncated file's own sum, extraction fails and keeps nothing.
        let md5 = crate::md5_hex(&archive, false).unwrap();
        let err = from_mirror_with(Dataset::Cifar100, mirror.path(), data.path(), Some(&md5))
            .unwrap_err();
        assert!(err.to_string().contains("cifar-100-binary.tar.gz"), "{err}");
        assert_eq!(
            Dataset::Cifar100
                .load_images(data.path(), true)
                .unwrap()
                .len(),
            7
        );
        assert!(!part_name(&folder).exists());
        // A mirror without the archive says what it looked for.
        let err = from_mirror(Dataset::Cifar10, mirror.path(), data.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cifar10/cifar-10-binary.tar.gz"), "{err}");
    }

    /// `wikitext-2-v1.zip`'s layout: a `wikitext-2/` folder entry and the three token
    /// files (here PTB's text under WikiText-2's names), plus `extra` members.
    fn write_wikitext_zip(path: &Path, extra: &[(&str, &[u8])], skip: Option<&str>) {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.add_directory("wikitext-2/", opts).unwrap();
        for split in ["train", "valid", "test"] {
            let name = format!("wiki.{split}.tokens");
            if skip == Some(name.as_str()) {
                continue;
            }
            zip.start_file(format!("wikitext-2/{name}"), opts).unwrap();
            zip.write_all(&std::fs::read(shared().join(format!("ptb/ptb.{split}.txt"))).unwrap())
                .unwrap();
        }
        for (name, bytes) in extra {
            zip.start_file(*name, opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn extracts_the_members_of_a_wikitext_zip() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("wikitext-2-v1.zip");
        write_wikitext_zip(&archive, &[("wikitext-2/README", b"x")], None);
        let data = dir.path().join("data");
        let target = Dataset::Wikitext2.folder(&data);
        extract_archive(&archive, &target, Some(WIKITEXT2_MEMBERS)).unwrap();
        assert_eq!(
            names(&target),
            ["wiki.test.tokens", "wiki.train.tokens", "wiki.valid.tokens"]
        );
        // Read through the PTB code.
        let corpus = Dataset::Wikitext2.load_corpus(&data).unwrap();
        assert_eq!(
            (corpus.vocab_size(), corpus.train().len()),
            (10_000, 929_589)
        );

        // An archive without one of the members, or a corrupt one, changes nothing.
        let short = dir.path().join("short.zip");
        write_wikitext_zip(&short, &[], Some("wiki.valid.tokens"));
        let err = extract_archive(&short, &target, Some(WIKITEXT2_MEMBERS))
            .unwrap_err()
            .to_string();
        assert!(err.contains("members named wiki.valid.tokens"), "{err}");
        let mut bytes = std::fs::read(&archive).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&short, &bytes).unwrap();
        let err = extract_archive(&short, &target, Some(WIKITEXT2_MEMBERS))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("short.zip") && err.contains("zip entry"),
            "{err}"
        );
        assert_eq!(
            Dataset::Wikitext2.load_corpus(&data).unwrap().vocab_size(),
            10_000
        );
        assert!(!part_name(&target).exists());
    }

    /// An ImageFolder tree from the 20 real sample JPEGs: every image under train/, the
    /// first of each class under val/, plus files an import leaves out.
    fn write_imagenet_tree(root: &Path) {
        let sample = shared().join("imagenet-sample/val");
        for class in read_dir_sorted(&sample).unwrap() {
            let files = read_dir_sorted(&class).unwrap();
            for (k, file) in files.iter().enumerate() {
                for split in ["train", "val"] {
                    if split == "val" && k > 0 {
                        continue;
                    }
                    let dir = root.join(split).join(file_name(&class));
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::copy(file, dir.join(file_name(file))).unwrap();
                }
            }
        }
        std::fs::write(root.join("LOC_synset_mapping.txt"), "n0022 a\n").unwrap();
        std::fs::write(root.join("train/n0022/notes.txt"), "not an image").unwrap();
    }

    #[test]
    fn imports_an_imagenet_tree_and_a_tar_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        write_imagenet_tree(&tree);
        let want = ImagenetSummary {
            classes: 19,
            train: 20,
            val: 19,
            skipped: 1,
        };
        let data = dir.path().join("data");
        assert_eq!(import_imagenet(&tree, &data).unwrap(), want);
        assert_eq!(names(&data), ["imagenet"]);
        let info = Dataset::Imagenet.info(&data).unwrap();
        assert_eq!(info.splits, vec![("train", 20), ("val", 19)]);
        assert_eq!((info.classes, info.shape), (19, crate::Shape::VariableJpeg));
        assert!(
            info.checksums[0].1.starts_with("n/a"),
            "{:?}",
            info.checksums
        );
        let train = Dataset::Imagenet.image_folder(&data, true).unwrap();
        assert_eq!(train.classes()[0], "n0022");
        assert!(train.samples().iter().all(|(p, _)| is_jpeg(p)));

        // The same tree as a tar under a top folder, and as a .tar.gz without one.
        let tar_path = dir.path().join("imagenet.tar");
        {
            let mut tar = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
            tar.append_dir_all("ILSVRC", &tree).unwrap();
            tar.into_inner().unwrap();
        }
        let from_tar = dir.path().join("from-tar");
        assert_eq!(import_imagenet(&tar_path, &from_tar).unwrap(), want);
        let a = Dataset::Imagenet.image_folder(&data, false).unwrap();
        let b = Dataset::Imagenet.image_folder(&from_tar, false).unwrap();
        for ((pa, la), (pb, lb)) in a.samples().iter().zip(b.samples()) {
            assert_eq!(la, lb);
            assert_eq!(std::fs::read(pa).unwrap(), std::fs::read(pb).unwrap());
        }
        let tgz = dir.path().join("imagenet.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                std::fs::File::create(&tgz).unwrap(),
                flate2::Compression::fast(),
            );
            let mut tar = tar::Builder::new(gz);
            tar.append_dir_all(".", &tree).unwrap();
            tar.into_inner().unwrap().finish().unwrap();
        }
        assert_eq!(
            import_imagenet(&tgz, &dir.path().join("tgz")).unwrap(),
            want
        );
    }

    #[test]
    fn a_bad_imagenet_tree_is_refused_and_keeps_the_earlier_import() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        write_imagenet_tree(&tree);
        let data = dir.path().join("data");
        import_imagenet(&tree, &data).unwrap();
        let check = |from: &Path, needle: &str| {
            let err = import_imagenet(from, &data).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            // The earlier import is untouched and nothing half-imported is left.
            assert_eq!(names(&data), ["imagenet"]);
            assert_eq!(
                Dataset::Imagenet.info(&data).unwrap().splits,
                vec![("train", 20), ("val", 19)]
            );
        };
        std::fs::remove_dir_all(tree.join("val/n0990")).unwrap();
        check(
            &tree,
            "the same class folders in train/ and val/; only in train/: n0990; only in val/: none",
        );
        std::fs::remove_dir_all(tree.join("val")).unwrap();
        check(&tree, "there is no val/");
        check(&dir.path().join("nowhere"), "nothing is there");
        // A tar holding two trees, or a path leaving the tree.
        let two = dir.path().join("two.tar");
        {
            let mut tar = tar::Builder::new(std::fs::File::create(&two).unwrap());
            append(&mut tar, "a/train/n1/x.JPEG", b"1");
            append(&mut tar, "b/val/n1/y.JPEG", b"2");
            tar.into_inner().unwrap();
        }
        check(
            &two,
            "one ImageFolder tree; found members under \"a\" and \"b\"",
        );
        let escape = dir.path().join("escape.tar");
        {
            // tar::Builder refuses `..`; write the name into the header by hand.
            let mut header = tar::Header::new_gnu();
            header.as_gnu_mut().unwrap().name[..22].copy_from_slice(b"../train/n1/evil.JPEG\0");
            header.set_size(1);
            header.set_mode(0o644);
            header.set_cksum();
            let mut tar = tar::Builder::new(std::fs::File::create(&escape).unwrap());
            tar.append(&header, &b"1"[..]).unwrap();
            tar.into_inner().unwrap();
        }
        check(&escape, "a relative path inside the tree");
        let zip = dir.path().join("tree.zip");
        write_wikitext_zip(&zip, &[], None);
        check(&zip, "not a zip");
    }

    #[test]
    fn mirror_files_are_checked_against_their_md5() {
        let data = tempfile::tempdir().unwrap();
        from_mirror(Dataset::Digits, &shared(), data.path()).unwrap();
        assert_eq!(names(&data.path().join("digits")), ["digits.csv.gz"]);
        let bad = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bad.path().join("digits")).unwrap();
        std::fs::write(bad.path().join("digits/digits.csv.gz"), b"x").unwrap();
        let err = from_mirror(Dataset::Digits, bad.path(), data.path()).unwrap_err();
        assert!(
            matches!(&err, Error::Checksum { expected, .. } if expected == "ca09b38354112f159cd554f69e213828"),
            "{err}"
        );
        assert!(err.to_string().contains("mismatch (md5"), "{err}");
        // The good copy stays; no .part is left.
        assert_eq!(names(&data.path().join("digits")), ["digits.csv.gz"]);
        let err = from_mirror(Dataset::Imagenet, bad.path(), data.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--from"), "{err}");
    }
}
