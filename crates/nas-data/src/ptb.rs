//! Word-level language-model corpora in Mikolov's format (Penn Treebank, also WikiText-2):
//! one sentence per line, tokens separated by spaces, `<eos>` appended to every line.
//! The vocabulary comes from the training file, ids in order of first appearance (as the
//! DARTS and ENAS reference code builds it); a validation or test word missing from it is
//! an error naming the file and line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// The end-of-sentence token.
pub const EOS: &str = "<eos>";

/// A vocabulary and the three token streams.
#[derive(Debug, Clone)]
pub struct Corpus {
    words: Vec<String>,
    train: Vec<u32>,
    valid: Vec<u32>,
    test: Vec<u32>,
}

impl Corpus {
    /// Loads `{prefix}.train.txt`, `.valid.txt` and `.test.txt` from `dir` (PTB's names,
    /// prefix `ptb`).
    pub fn load(dataset: &'static str, dir: &Path, prefix: &str) -> Result<Self> {
        let [train, valid, test] =
            ["train", "valid", "test"].map(|split| format!("{prefix}.{split}.txt"));
        Self::load_files(dataset, dir, [&train, &valid, &test])
    }

    /// Loads the files named `[train, valid, test]` from `dir`: the same format under
    /// other names, e.g. WikiText-2's `wiki.train.tokens`, `wiki.valid.tokens`,
    /// `wiki.test.tokens`.
    pub fn load_files(dataset: &'static str, dir: &Path, names: [&str; 3]) -> Result<Self> {
        let path = |split: &str| -> Result<PathBuf> {
            let name = match split {
                "train" => names[0],
                "valid" => names[1],
                _ => names[2],
            };
            let p = dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::Missing {
                    dataset,
                    looked: p,
                    fetch: format!("cargo xtask download {dataset}"),
                })
            }
        };
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io(p, e));
        let train_path = path("train")?;
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut words = Vec::new();
        let mut train = Vec::new();
        for line in read(&train_path)?.lines() {
            for w in line.split_whitespace().chain(std::iter::once(EOS)) {
                let id = *index.entry(w.to_string()).or_insert_with(|| {
                    words.push(w.to_string());
                    (words.len() - 1) as u32
                });
                train.push(id);
            }
        }
        if words.len() <= 1 {
            // Nothing but end-of-sentence marks: every word of the other splits would be
            // reported as out of vocabulary there, far from the cause.
            return Err(Error::format(
                &train_path,
                "the whole file",
                "a training text with words (it is empty)",
            ));
        }
        let encode = |p: &Path| -> Result<Vec<u32>> {
            let mut out = Vec::new();
            for (i, line) in read(p)?.lines().enumerate() {
                for w in line.split_whitespace().chain(std::iter::once(EOS)) {
                    let id = index.get(w).ok_or_else(|| {
                        Error::format(
                            p,
                            format!("line {}", i + 1),
                            format!("a word of the training vocabulary, found {w:?}"),
                        )
                    })?;
                    out.push(*id);
                }
            }
            Ok(out)
        };
        let valid = encode(&path("valid")?)?;
        let test = encode(&path("test")?)?;
        Ok(Corpus {
            words,
            train,
            valid,
            test,
        })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.words.len()
    }

    /// The word with id `id`.
    pub fn word(&self, id: u32) -> Option<&str> {
        self.words.get(id as usize).map(String::as_str)
    }

    /// Training tokens.
    pub fn train(&self) -> &[u32] {
        &self.train
    }

    /// Validation tokens.
    pub fn valid(&self) -> &[u32] {
        &self.valid
    }

    /// Test tokens.
    pub fn test(&self) -> &[u32] {
        &self.test
    }
}

/// A token stream cut into `batch` equal columns (`batchify` of the reference): row `t`
/// holds token `t` of every column; tokens that do not fill a row are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batched {
    rows: usize,
    batch: usize,
    data: Vec<u32>,
}

impl Batched {
    /// Cuts `tokens` into `batch` columns.
    pub fn new(tokens: &[u32], batch: usize) -> Result<Self> {
        if batch == 0 || tokens.len() < 2 * batch {
            return Err(Error::Invalid(format!(
                "{} tokens cannot fill {batch} columns of at least 2 rows",
                tokens.len()
            )));
        }
        let rows = tokens.len() / batch;
        let mut data = vec![0; rows * batch];
        for col in 0..batch {
            for row in 0..rows {
                data[row * batch + col] = tokens[col * rows + row];
            }
        }
        Ok(Batched { rows, batch, data })
    }

    /// Number of rows (time steps).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Rows `start..start + len` as inputs and rows `start + 1..start + len + 1` as
    /// targets, both row-major `[len, batch]`.
    pub fn window(&self, start: usize, len: usize) -> (&[u32], &[u32]) {
        let len = len.min(self.rows - 1 - start);
        let b = self.batch;
        (
            &self.data[start * b..(start + len) * b],
            &self.data[(start + 1) * b..(start + 1 + len) * b],
        )
    }

    /// Fixed-length windows: `(start, len)` for `start = 0, bptt, 2 bptt, ...`.
    pub fn fixed_windows(&self, bptt: usize) -> Vec<(usize, usize)> {
        (0..self.rows - 1)
            .step_by(bptt.max(1))
            .map(|start| (start, bptt.min(self.rows - 1 - start)))
            .collect()
    }

    /// The random windows of DARTS's recurrent search (`rnn/train_search.py`, whose
    /// normal jitter is commented out): `bptt` with probability 0.95, else `bptt / 2`
    /// (rounded down), cut at the end of the data.
    pub fn search_windows(&self, bptt: usize, seed: u64) -> Vec<(usize, usize)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = Vec::new();
        let mut start = 0;
        while start < self.rows - 2 {
            let len = if rng.random::<f64>() < 0.95 {
                bptt
            } else {
                bptt / 2
            };
            let len = len.max(1).min(self.rows - 1 - start);
            out.push((start, len));
            start += len;
        }
        out
    }

    /// DARTS's random windows for retraining (`rnn/train.py`): the base length is `bptt` with
    /// probability 0.95, else `bptt / 2`; the length is drawn from a normal around it with
    /// standard deviation 5, at least 5 and at most `bptt + max_delta`.
    pub fn darts_windows(&self, bptt: usize, max_delta: usize, seed: u64) -> Vec<(usize, usize)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = Vec::new();
        let mut start = 0;
        while start < self.rows - 2 {
            let base = if rng.random::<f64>() < 0.95 {
                bptt as f64
            } else {
                bptt as f64 / 2.0
            };
            // Box-Muller.
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
            let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let len = ((base + 5.0 * normal) as i64).max(5) as usize;
            let len = len.min(bptt + max_delta).min(self.rows - 1 - start);
            out.push((start, len));
            start += len;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptb() -> Corpus {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/ptb");
        Corpus::load("ptb", &dir, "ptb").unwrap()
    }

    #[test]
    fn real_ptb_has_the_published_counts() {
        let c = ptb();
        assert_eq!(c.vocab_size(), 10_000);
        assert_eq!(c.train().len(), 929_589);
        assert_eq!(c.valid().len(), 73_760);
        assert_eq!(c.test().len(), 82_430);
        assert_eq!(c.word(c.train()[0]), Some("aer"));
        assert!(
            c.train()
                .iter()
                .filter(|&&t| c.word(t) == Some(EOS))
                .count()
                > 40_000
        );
    }

    #[test]
    fn batchify_and_windows() {
        let tokens: Vec<u32> = (0..26).collect();
        let b = Batched::new(&tokens, 4).unwrap();
        assert_eq!((b.rows(), b.batch()), (6, 4));
        // Column 1 is tokens 6..12.
        let (x, y) = b.window(0, 2);
        assert_eq!(x, &[0, 6, 12, 18, 1, 7, 13, 19]);
        assert_eq!(y, &[1, 7, 13, 19, 2, 8, 14, 20]);
        assert_eq!(b.fixed_windows(2), vec![(0, 2), (2, 2), (4, 1)]);
        let c = ptb();
        let train = Batched::new(c.train(), 256).unwrap();
        let w = train.darts_windows(35, 20, 7);
        assert_eq!(w, train.darts_windows(35, 20, 7));
        assert!(w.iter().all(|&(_, len)| (1..=55).contains(&len)));
        let covered: usize = w.iter().map(|&(_, l)| l).sum();
        assert!(
            covered >= train.rows() - 2 && covered < train.rows(),
            "{covered} of {}",
            train.rows()
        );
        let mean = covered as f64 / w.len() as f64;
        assert!((30.0..36.0).contains(&mean), "mean window {mean}");
        let s = train.search_windows(35, 7);
        assert!(s[..s.len() - 1]
            .iter()
            .all(|&(_, len)| len == 35 || len == 17));
        let halves = s.iter().filter(|&&(_, len)| len == 17).count();
        assert!(
            halves > 0 && halves < s.len() / 5,
            "{halves} of {}",
            s.len()
        );
        assert_eq!(
            s.windows(2).filter(|p| p[0].0 + p[0].1 != p[1].0).count(),
            0
        );
    }

    #[test]
    fn unknown_words_and_missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ptb.train.txt"), "a b\nb c\n").unwrap();
        std::fs::write(dir.path().join("ptb.valid.txt"), "a\nc d\n").unwrap();
        std::fs::write(dir.path().join("ptb.test.txt"), "a\n").unwrap();
        let err = Corpus::load("ptb", dir.path(), "ptb")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ptb.valid.txt")
                && err.contains("at line 2: a word of the training vocabulary, found \"d\""),
            "{err}"
        );
        let err = Corpus::load("wikitext2", dir.path(), "wiki")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wikitext2 not found") && err.contains("wiki.train.txt"),
            "{err}"
        );
        std::fs::write(dir.path().join("ptb.valid.txt"), "a\nc\n").unwrap();
        let c = Corpus::load("ptb", dir.path(), "ptb").unwrap();
        assert_eq!(c.vocab_size(), 4);
        assert_eq!(c.valid(), &[0, 2, 3, 2]);
        // An empty training file is reported there, not as unknown words elsewhere.
        std::fs::write(dir.path().join("ptb.train.txt"), "").unwrap();
        let err = Corpus::load("ptb", dir.path(), "ptb")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ptb.train.txt") && err.contains("it is empty"),
            "{err}"
        );
    }
}
