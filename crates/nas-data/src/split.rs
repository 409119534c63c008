//! Train/validation splits of the papers. The official test set is never used for
//! model selection.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{Error, Result};

/// DARTS's search split (`train_portion`, 0.5 in the paper): the training set's indices,
/// permuted by `seed`, the first `portion` of them for the weights, the rest for the
/// architecture.
pub fn darts_split(n: usize, portion: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(0.0..=1.0).contains(&portion) {
        return Err(Error::Invalid(format!(
            "train portion must be in [0, 1], got {portion}"
        )));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let split = (portion * n as f64).floor() as usize;
    let valid = idx.split_off(split);
    Ok((idx, valid))
}

/// ENAS's split: the last `valid` training images validate, the rest train.
pub fn enas_split(n: usize, valid: usize) -> Result<(Vec<usize>, Vec<usize>)> {
    if valid > n {
        return Err(Error::Invalid(format!(
            "cannot hold out {valid} of {n} images"
        )));
    }
    Ok(((0..n - valid).collect(), (n - valid..n).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn darts_split_is_a_seeded_partition() {
        let (a, b) = darts_split(101, 0.5, 3).unwrap();
        assert_eq!((a.len(), b.len()), (50, 51));
        let mut all: Vec<usize> = a.iter().chain(&b).copied().collect();
        all.sort();
        assert_eq!(all, (0..101).collect::<Vec<_>>());
        assert_eq!(darts_split(101, 0.5, 3).unwrap(), (a.clone(), b));
        assert_ne!(darts_split(101, 0.5, 4).unwrap().0, a);
        assert!(darts_split(10, 1.5, 0).is_err());
    }

    #[test]
    fn enas_split_holds_out_the_tail() {
        let (t, v) = enas_split(50_000, 5_000).unwrap();
        assert_eq!(
            (t.len(), v[0], *v.last().unwrap()),
            (45_000, 45_000, 49_999)
        );
        assert!(enas_split(10, 11).is_err());
    }
}
