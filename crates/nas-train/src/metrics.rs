//! Running averages and top-k accuracy.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// A running, count-weighted average.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Average {
    sum: f64,
    count: usize,
}

impl Average {
    /// Adds `value` as the average of `count` samples.
    pub fn add(&mut self, value: f64, count: usize) {
        self.sum += value * count as f64;
        self.count += count;
    }

    /// The average so far (0 before any sample).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }

    /// The number of samples.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// The number of rows of `logits` `[n, classes]` whose label is among the `k` largest
/// logits, for each `k` in `ks`. Ties count against the label, as with `topk`.
pub fn correct_top_k(logits: &Tensor, labels: &Tensor, ks: &[usize]) -> Result<Vec<usize>> {
    let logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    let labels: Vec<u32> = labels.to_dtype(DType::U32)?.to_vec1()?;
    let mut correct = vec![0; ks.len()];
    for (row, &label) in logits.iter().zip(&labels) {
        let target = row[label as usize];
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(j, &v)| v > target || (v == target && j < label as usize))
            .count();
        for (c, &k) in correct.iter_mut().zip(ks) {
            if rank < k {
                *c += 1;
            }
        }
    }
    Ok(correct)
}

/// The index of the largest logit per row.
pub fn argmax(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn top_k_counts_by_rank() {
        let dev = Device::Cpu;
        let logits = Tensor::new(
            &[[0.1f32, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6]],
            &dev,
        )
        .unwrap();
        let labels = Tensor::new(&[1u32, 2, 1], &dev).unwrap();
        // row 0: rank 0; row 1: rank 1; row 2: tie with class 0 (earlier index wins) -> rank 2
        assert_eq!(
            correct_top_k(&logits, &labels, &[1, 2, 3]).unwrap(),
            [1, 2, 3]
        );
        let mut a = Average::default();
        a.add(1.0, 1);
        a.add(4.0, 3);
        assert_eq!(a.mean(), 3.25);
        assert_eq!(a.count(), 4);
    }
}
