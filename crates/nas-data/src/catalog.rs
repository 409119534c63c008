//! The data sets by name: where each lives under the data directory, how to load it,
//! what it holds, the published checksums of its files, and the command that fetches it.

use std::io::Read;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::cifar::{self, Cifar};
use crate::error::{Error, Result};
use crate::image::ImageSet;
use crate::imagenet::ImageFolder;
use crate::ptb::Corpus;
use crate::{digits, idx};

/// A data set the project knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    /// CIFAR-10, binary version.
    Cifar10,
    /// CIFAR-100, binary version.
    Cifar100,
    /// MNIST.
    Mnist,
    /// Fashion-MNIST.
    FashionMnist,
    /// The embedded 8x8 digits.
    Digits,
    /// Penn Treebank, Mikolov's word-level split.
    Ptb,
    /// WikiText-2, in the same format.
    Wikitext2,
    /// ImageNet (ILSVRC 2012) as an ImageFolder tree; imported, never downloaded.
    Imagenet,
}

/// How a run holds a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Decoded images in memory ([`Dataset::load_images`]): what CNN searches and
    /// training runs read.
    Images,
    /// JPEGs decoded batch by batch ([`Dataset::image_folder`]).
    ImageFolder,
    /// A token stream ([`Dataset::load_corpus`]).
    Corpus,
}

/// A data set's size class, which picks the commands' default presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// A few thousand tiny images (the embedded digits): minutes on a laptop.
    Tiny,
    /// Tens of thousands of 28x28 images (MNIST-like): an hour on 2 cores.
    Small,
    /// The papers' CIFAR settings.
    Paper,
    /// ImageNet's settings.
    Imagenet,
    /// A text corpus.
    Text,
}

/// The image shape a data set reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Every image is `[c, h, w]`.
    Fixed([usize; 3]),
    /// Images of their own sizes, decoded from JPEG; batches are transformed to 224x224.
    VariableJpeg,
    /// A text corpus: no images.
    Text,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Fixed([c, h, w]) => write!(f, "{c}x{h}x{w}"),
            Shape::VariableJpeg => write!(f, "variable (decoded JPEG, RGB; batches 3x224x224)"),
            Shape::Text => write!(f, "n/a (text)"),
        }
    }
}

/// What `nas data info` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// The data set's name.
    pub name: &'static str,
    /// Where it was read from.
    pub location: String,
    /// `(split, examples)`; tokens for corpora.
    pub splits: Vec<(&'static str, usize)>,
    /// Classes, or the vocabulary size for corpora.
    pub classes: usize,
    /// The images' shape.
    pub shape: Shape,
    /// `(file, status)`: "ok", "mismatch (md5 ...)" or "no published checksum"; for
    /// ImageNet one entry for the whole tree, "n/a".
    pub checksums: Vec<(String, String)>,
}

/// Published md5 sums: `(data set, file, md5, of the gunzipped contents)`. Fashion-MNIST
/// publishes sums of the decompressed IDX files, MNIST's sources of the `.gz` files.
const MD5: &[(Dataset, &str, &str, bool)] = &[
    (
        Dataset::Ptb,
        "ptb.train.txt",
        "f26c4b92c5fdc7b3f8c7cdcb991d8420",
        false,
    ),
    (
        Dataset::Ptb,
        "ptb.valid.txt",
        "aa0affc06ff7c36e977d7cd49e3839bf",
        false,
    ),
    (
        Dataset::Ptb,
        "ptb.test.txt",
        "8b80168b89c18661a38ef683c0dc3721",
        false,
    ),
    (
        Dataset::FashionMnist,
        "train-images-idx3-ubyte.gz",
        "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        true,
    ),
    (
        Dataset::FashionMnist,
        "train-labels-idx1-ubyte.gz",
        "9018921c3c673c538a1fc5bad174d6f9",
        true,
    ),
    (
        Dataset::FashionMnist,
        "t10k-images-idx3-ubyte.gz",
        "8181f5470baa50b63fa0f6fddb340f0a",
        true,
    ),
    (
        Dataset::FashionMnist,
        "t10k-labels-idx1-ubyte.gz",
        "15d484375f8d13e6eb1aabb0c3f46965",
        true,
    ),
    (
        Dataset::FashionMnist,
        "train-images-idx3-ubyte",
        "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        false,
    ),
    (
        Dataset::FashionMnist,
        "train-labels-idx1-ubyte",
        "9018921c3c673c538a1fc5bad174d6f9",
        false,
    ),
    (
        Dataset::FashionMnist,
        "t10k-images-idx3-ubyte",
        "8181f5470baa50b63fa0f6fddb340f0a",
        false,
    ),
    (
        Dataset::FashionMnist,
        "t10k-labels-idx1-ubyte",
        "15d484375f8d13e6eb1aabb0c3f46965",
        false,
    ),
    (
        Dataset::Mnist,
        "train-images-idx3-ubyte.gz",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        false,
    ),
    (
        Dataset::Mnist,
        "train-labels-idx1-ubyte.gz",
        "d53e105ee54ea40749a09fcbcd1e9432",
        false,
    ),
    (
        Dataset::Mnist,
        "t10k-images-idx3-ubyte.gz",
        "9fb629c4189551a2d022fa330f9573f3",
        false,
    ),
    (
        Dataset::Mnist,
        "t10k-labels-idx1-ubyte.gz",
        "ec29112dd5afa0611ce80d1b7f02629c",
        false,
    ),
    (
        Dataset::Digits,
        "digits.csv.gz",
        "ca09b38354112f159cd554f69e213828",
        false,
    ),
];

impl Dataset {
    /// Every data set.
    pub const ALL: &'static [Dataset] = &[
        Dataset::Cifar10,
        Dataset::Cifar100,
        Dataset::Mnist,
        Dataset::FashionMnist,
        Dataset::Digits,
        Dataset::Ptb,
        Dataset::Wikitext2,
        Dataset::Imagenet,
    ];

    /// The name used on the command line and as the folder under the data directory.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Cifar10 => "cifar10",
            Dataset::Cifar100 => "cifar100",
            Dataset::Mnist => "mnist",
            Dataset::FashionMnist => "fashion-mnist",
            Dataset::Digits => "digits",
            Dataset::Ptb => "ptb",
            Dataset::Wikitext2 => "wikitext2",
            Dataset::Imagenet => "imagenet",
        }
    }

    /// How a run holds it.
    pub fn form(self) -> Form {
        match self {
            Dataset::Imagenet => Form::ImageFolder,
            Dataset::Ptb | Dataset::Wikitext2 => Form::Corpus,
            _ => Form::Images,
        }
    }

    /// Its size class.
    pub fn scale(self) -> Scale {
        match self {
            Dataset::Digits => Scale::Tiny,
            Dataset::Mnist | Dataset::FashionMnist => Scale::Small,
            Dataset::Cifar10 | Dataset::Cifar100 => Scale::Paper,
            Dataset::Imagenet => Scale::Imagenet,
            Dataset::Ptb | Dataset::Wikitext2 => Scale::Text,
        }
    }

    /// The data sets held as images in memory ([`Form::Images`]).
    pub fn image_sets() -> impl Iterator<Item = Dataset> {
        Dataset::ALL
            .iter()
            .copied()
            .filter(|d| d.form() == Form::Images)
    }

    /// The command that puts this data set into `data_dir` (named in "not found" errors).
    /// `data_dir` is left out when it is the default `datasets`.
    pub fn fetch_command(self, data_dir: &Path) -> String {
        let mut cmd = format!("cargo xtask download {}", self.name());
        if self == Dataset::Imagenet {
            cmd.push_str(" --from <ImageFolder tree or .tar>");
        }
        if data_dir != Path::new("datasets") {
            cmd.push_str(" --dir ");
            cmd.push_str(&shell_word(&data_dir.display().to_string()));
        }
        cmd
    }

    /// Puts the command that fetches this data set into a "not found" error.
    fn with_fetch<T>(self, data_dir: &Path, result: Result<T>) -> Result<T> {
        result.map_err(|e| match e {
            Error::Missing {
                dataset, looked, ..
            } => Error::Missing {
                dataset,
                looked,
                fetch: self.fetch_command(data_dir),
            },
            other => other,
        })
    }

    /// Looks a data set up by name.
    pub fn from_name(name: &str) -> Result<Self> {
        Dataset::ALL
            .iter()
            .copied()
            .find(|d| d.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Dataset::ALL.iter().map(|d| d.name()).collect();
                Error::Invalid(format!(
                    "unknown data set {name:?}; expected one of: {}",
                    names.join(", ")
                ))
            })
    }

    /// The folder holding the data set's files under `data_dir`.
    pub fn folder(self, data_dir: &Path) -> PathBuf {
        let base = data_dir.join(self.name());
        match self {
            Dataset::Cifar10 => base.join("cifar-10-batches-bin"),
            Dataset::Cifar100 => base.join("cifar-100-binary"),
            _ => base,
        }
    }

    /// Loads an image data set's split (`train` or `test`). The digits come from the data
    /// directory when a copy is there, else from the embedded file (both splits: digits
    /// has no official split).
    pub fn load_images(self, data_dir: &Path, train: bool) -> Result<ImageSet> {
        let dir = self.folder(data_dir);
        let set = match self {
            Dataset::Cifar10 => cifar::load(Cifar::Ten, &dir, train),
            Dataset::Cifar100 => cifar::load(Cifar::Hundred, &dir, train),
            Dataset::Mnist => idx::load("mnist", &dir, train),
            Dataset::FashionMnist => idx::load("fashion-mnist", &dir, train),
            Dataset::Digits => {
                let file = dir.join("digits.csv.gz");
                if file.exists() {
                    digits::read(&file)
                } else {
                    digits::embedded()
                }
            }
            Dataset::Ptb | Dataset::Wikitext2 => Err(Error::Invalid(format!(
                "{} is a text corpus, not an image data set",
                self.name()
            ))),
            Dataset::Imagenet => Err(Error::Invalid(
                "imagenet is decoded batch by batch, not held in memory: use Dataset::image_folder"
                    .to_string(),
            )),
        };
        self.with_fetch(data_dir, set)
    }

    /// The ImageFolder of an ImageNet split (`train` or `val`) under `data_dir`.
    pub fn image_folder(self, data_dir: &Path, train: bool) -> Result<ImageFolder> {
        if self != Dataset::Imagenet {
            return Err(Error::Invalid(format!(
                "{} is not an ImageFolder tree; only imagenet is",
                self.name()
            )));
        }
        let dir = self
            .folder(data_dir)
            .join(if train { "train" } else { "val" });
        if !dir.is_dir() {
            return Err(Error::Missing {
                dataset: self.name(),
                looked: dir,
                fetch: self.fetch_command(data_dir),
            });
        }
        ImageFolder::scan(&dir)
    }

    /// Loads a text corpus.
    pub fn load_corpus(self, data_dir: &Path) -> Result<Corpus> {
        let dir = self.folder(data_dir);
        let corpus = match self {
            Dataset::Ptb => Corpus::load("ptb", &dir, "ptb"),
            // The published names (wikitext-2-v1.zip): wiki.{train,valid,test}.tokens.
            Dataset::Wikitext2 => Corpus::load_files(
                "wikitext2",
                &dir,
                ["wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"],
            ),
            other => Err(Error::Invalid(format!(
                "{} is an image data set, not a text corpus",
                other.name()
            ))),
        };
        self.with_fetch(data_dir, corpus)
    }

    /// Loads everything and reports counts, shapes and checksums.
    pub fn info(self, data_dir: &Path) -> Result<Info> {
        let dir = self.folder(data_dir);
        let mut info = Info {
            name: self.name(),
            location: dir.display().to_string(),
            splits: Vec::new(),
            classes: 0,
            shape: Shape::Text,
            checksums: Vec::new(),
        };
        match self {
            Dataset::Imagenet => {
                let train = self.image_folder(data_dir, true)?;
                let val = self.image_folder(data_dir, false)?;
                info.splits = vec![
                    ("train", train.samples().len()),
                    ("val", val.samples().len()),
                ];
                info.classes = train.classes().len();
                info.shape = Shape::VariableJpeg;
                info.checksums = vec![(
                    info.location.clone(),
                    "n/a (imported, no published checksums)".to_string(),
                )];
                return Ok(info);
            }
            Dataset::Ptb | Dataset::Wikitext2 => {
                let c = self.load_corpus(data_dir)?;
                info.splits = vec![
                    ("train", c.train().len()),
                    ("valid", c.valid().len()),
                    ("test", c.test().len()),
                ];
                info.classes = c.vocab_size();
            }
            Dataset::Digits => {
                let set = self.load_images(data_dir, true)?;
                if !dir.join("digits.csv.gz").exists() {
                    info.location = "embedded".to_string();
                }
                info.splits = vec![("all", set.len())];
                info.classes = set.classes();
                info.shape = Shape::Fixed(set.shape());
            }
            _ => {
                let train = self.load_images(data_dir, true)?;
                let test = self.load_images(data_dir, false)?;
                info.splits = vec![("train", train.len()), ("test", test.len())];
                info.classes = train.classes();
                info.shape = Shape::Fixed(train.shape());
            }
        }
        if dir.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(&dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for file in files {
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                info.checksums.push((
                    file.display().to_string(),
                    self.checksum_status(&file, &name)?,
                ));
            }
        }
        Ok(info)
    }
}

/// `word` quoted for a POSIX shell when it needs quoting.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The md5 of a file's contents, or of its gunzipped contents.
pub fn md5_hex(path: &Path, gunzip: bool) -> Result<String> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if gunzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::format(path, "gzip stream", format!("a valid gzip stream ({e})"))
            })?;
        out
    } else {
        raw
    };
    Ok(Md5::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl Dataset {
    /// Checks `path` against the published checksum of this data set's file `name`: an
    /// [`Error::Checksum`] on a mismatch; a file without a published checksum passes.
    pub fn verify(self, path: &Path, name: &str) -> Result<()> {
        match published_md5(self, name) {
            None => Ok(()),
            Some((expected, gunzip)) => {
                let got = md5_hex(path, gunzip)?;
                if got == expected {
                    Ok(())
                } else {
                    Err(Error::Checksum {
                        path: path.to_path_buf(),
                        got,
                        expected: expected.to_string(),
                    })
                }
            }
        }
    }

    /// Compares the contents of `path` with the published checksum of this data set's file
    /// `name` (the file may still sit under a temporary name): "ok", "mismatch (...)" or
    /// "no published checksum".
    pub fn checksum_status(self, path: &Path, name: &str) -> Result<String> {
        match published_md5(self, name) {
            None => Ok("no published checksum".to_string()),
            Some((expected, gunzip)) => {
                let got = md5_hex(path, gunzip)?;
                Ok(if got == expected {
                    "ok".to_string()
                } else {
                    format!("mismatch (md5 {got}, expected {expected})")
                })
            }
        }
    }
}

/// The published md5 of a data set's file, and whether it is of the gunzipped contents.
fn published_md5(dataset: Dataset, name: &str) -> Option<(&'static str, bool)> {
    MD5.iter()
        .find(|(d, file, _, _)| *d == dataset && *file == name)
        .map(|&(_, _, md5, gunzip)| (md5, gunzip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets")
    }

    #[test]
    fn real_mirror_checksums_and_info() {
        let info = Dataset::Ptb.info(&shared()).unwrap();
        assert_eq!(
            info.splits,
            vec![("train", 929_589), ("valid", 73_760), ("test", 82_430)]
        );
        assert_eq!(info.classes, 10_000);
        assert!(
            info.checksums.iter().all(|(_, s)| s == "ok"),
            "{:?}",
            info.checksums
        );
        let info = Dataset::FashionMnist.info(&shared()).unwrap();
        assert_eq!(info.splits, vec![("train", 60_000), ("test", 10_000)]);
        assert_eq!(info.checksums.len(), 4);
        assert!(
            info.checksums.iter().all(|(_, s)| s == "ok"),
            "{:?}",
            info.checksums
        );
        let info = Dataset::Digits.info(Path::new("/nonexistent")).unwrap();
        assert_eq!(
            (info.location.as_str(), info.splits[0].1),
            ("embedded", 1797)
        );
    }

    #[test]
    fn wikitext2_reads_its_published_names_through_the_ptb_code() {
        let dir = tempfile::tempdir().unwrap();
        let wiki = dir.path().join("wikitext2");
        std::fs::create_dir_all(&wiki).unwrap();
        // WikiText-2's look: headings, blank lines, `@-@` and `<unk>` tokens.
        let train = " \n = Valkyria Chronicles III = \n \n Senjō no <unk> 3 @-@ 1 \n";
        std::fs::write(wiki.join("wiki.train.tokens"), train).unwrap();
        std::fs::write(wiki.join("wiki.valid.tokens"), " = III = \n").unwrap();
        let err = Dataset::Wikitext2
            .load_corpus(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wiki.test.tokens")
                && err.contains(&format!(
                    "`cargo xtask download wikitext2 --dir {}`",
                    dir.path().display()
                )),
            "{err}"
        );
        std::fs::write(wiki.join("wiki.test.tokens"), "zebra <unk>\n").unwrap();
        let err = Dataset::Wikitext2
            .load_corpus(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wiki.test.tokens") && err.contains("line 1") && err.contains("\"zebra\""),
            "{err}"
        );
        std::fs::write(wiki.join("wiki.test.tokens"), "<unk> 3\n\n").unwrap();
        let c = Dataset::Wikitext2.load_corpus(dir.path()).unwrap();
        // Every line, blank ones too, ends with <eos>: 4 lines, 11 words, 11 kinds.
        assert_eq!(c.train().len(), 15);
        assert_eq!(c.vocab_size(), 11);
        assert_eq!((c.valid().len(), c.test().len()), (4, 4));
        let info = Dataset::Wikitext2.info(dir.path()).unwrap();
        assert_eq!(info.shape, Shape::Text);
        assert!(info
            .checksums
            .iter()
            .all(|(_, s)| s == "no published checksum"));
    }

    #[test]
    fn mismatches_and_missing_sets_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let ptb = dir.path().join("ptb");
        std::fs::create_dir_all(&ptb).unwrap();
        for split in ["train", "valid", "test"] {
            std::fs::write(ptb.join(format!("ptb.{split}.txt")), "a b\n").unwrap();
        }
        let info = Dataset::Ptb.info(dir.path()).unwrap();
        assert!(
            info.checksums
                .iter()
                .all(|(_, s)| s.starts_with("mismatch (md5")),
            "{:?}",
            info.checksums
        );
        let err = Dataset::Cifar10.info(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("cifar10 not found") && err.contains("cargo xtask download cifar10"),
            "{err}"
        );
        let err = Dataset::Imagenet.info(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("imagenet not found")
                && err.contains(&format!(
                    "`cargo xtask download imagenet --from <ImageFolder tree or .tar> --dir {}`",
                    dir.path().display()
                )),
            "{err}"
        );
        assert_eq!(
            Dataset::Ptb.fetch_command(Path::new("datasets")),
            "cargo xtask download ptb"
        );
        assert_eq!(
            Dataset::Ptb.fetch_command(Path::new("my data/it's")),
            r"cargo xtask download ptb --dir 'my data/it'\''s'"
        );
        assert!(Dataset::from_name("cifar11")
            .unwrap_err()
            .to_string()
            .contains("expected one of: cifar10"));
    }
}
