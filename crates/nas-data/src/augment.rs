//! Image preprocessing of the papers: random crop with zero padding and horizontal flip
//! (before normalisation), per-channel normalisation, and Cutout (DeVries and Taylor
//! 2017; DARTS applies it after normalisation, so the cut square is 0).

use crate::error::{Error, Result};
use rand::Rng;

/// Per-channel normalisation of pixels scaled to `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    /// Channel means.
    pub mean: Vec<f32>,
    /// Channel standard deviations.
    pub std: Vec<f32>,
}

/// Training-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding before a random crop back to the original size (4 for CIFAR; 0: none).
    pub crop_padding: usize,
    /// Flip horizontally with probability 1/2.
    pub flip: bool,
    /// Side of the Cutout square (16 for CIFAR; 0: none).
    pub cutout: usize,
}

impl Augment {
    /// The CIFAR training augmentation of DARTS, with or without Cutout.
    pub fn cifar(cutout: bool) -> Self {
        Augment {
            crop_padding: 4,
            flip: true,
            cutout: if cutout { 16 } else { 0 },
        }
    }

    /// Checks the settings against the images they apply to (`[c, h, w]`): a crop padding
    /// or a Cutout square larger than the image is a mistake, not an augmentation.
    pub fn check(&self, shape: [usize; 3]) -> Result<()> {
        let [_, h, w] = shape;
        if self.crop_padding > h.min(w) {
            return Err(Error::Invalid(format!(
                "data.crop_padding {} is larger than the {h}x{w} images",
                self.crop_padding
            )));
        }
        if self.cutout > h.max(w) {
            return Err(Error::Invalid(format!(
                "data.cutout {} is larger than the {h}x{w} images",
                self.cutout
            )));
        }
        Ok(())
    }
}

/// Writes one preprocessed image (`[c, h, w]` bytes with pixel maximum `max_value`) into
/// `out` as normalised f32, applying `augment` with draws from `rng`.
pub fn preprocess(
    pixels: &[u8],
    shape: [usize; 3],
    max_value: u8,
    norm: &Normalize,
    augment: Option<&Augment>,
    rng: &mut impl Rng,
    out: &mut [f32],
) {
    let [c, h, w] = shape;
    let (pad, flip) = match augment {
        Some(a) => (a.crop_padding, a.flip && rng.random::<bool>()),
        None => (0, false),
    };
    let (dy, dx) = if pad > 0 {
        (rng.random_range(0..=2 * pad), rng.random_range(0..=2 * pad))
    } else {
        (pad, pad)
    };
    let scale = 1.0 / max_value as f32;
    for ch in 0..c {
        let (mean, inv_std) = (norm.mean[ch], 1.0 / norm.std[ch]);
        let padded = (0.0 - mean) * inv_std;
        let src = &pixels[ch * h * w..(ch + 1) * h * w];
        let dst = &mut out[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            let sy = (y + dy) as isize - pad as isize;
            let row = &mut dst[y * w..(y + 1) * w];
            if sy < 0 || sy >= h as isize {
                row.fill(padded);
                continue;
            }
            let src_row = &src[sy as usize * w..(sy as usize + 1) * w];
            for (x, v) in row.iter_mut().enumerate() {
                let cx = if flip { w - 1 - x } else { x };
                let sx = (cx + dx) as isize - pad as isize;
                *v = if sx < 0 || sx >= w as isize {
                    padded
                } else {
                    (src_row[sx as usize] as f32 * scale - mean) * inv_std
                };
            }
        }
    }
    if let Some(a) = augment.filter(|a| a.cutout > 0) {
        let (cy, cx) = (rng.random_range(0..h), rng.random_range(0..w));
        let half = a.cutout / 2;
        let (y0, y1) = (cy.saturating_sub(half), (cy + half).min(h));
        let (x0, x1) = (cx.saturating_sub(half), (cx + half).min(w));
        for ch in 0..c {
            for y in y0..y1 {
                out[ch * h * w + y * w + x0..ch * h * w + y * w + x1].fill(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn norm(c: usize) -> Normalize {
        Normalize {
            mean: vec![0.0; c],
            std: vec![1.0; c],
        }
    }

    #[test]
    fn plain_preprocessing_scales_and_normalises() {
        let pixels = [0u8, 51, 102, 255];
        let mut out = [0f32; 4];
        let n = Normalize {
            mean: vec![0.5],
            std: vec![0.25],
        };
        preprocess(
            &pixels,
            [1, 2, 2],
            255,
            &n,
            None,
            &mut rand::rngs::StdRng::seed_from_u64(0),
            &mut out,
        );
        for (got, want) in out.iter().zip([-2.0f32, -1.2, -0.4, 2.0]) {
            assert!((got - want).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn crop_flip_and_cutout_move_pixels_as_expected() {
        let (h, w) = (6, 6);
        let pixels: Vec<u8> = (0..(h * w) as u8).collect();
        let mut seen_flip = false;
        let mut seen_cut = false;
        for seed in 0..50 {
            let a = Augment {
                crop_padding: 2,
                flip: true,
                cutout: 0,
            };
            let mut out = vec![0f32; h * w];
            preprocess(
                &pixels,
                [1, h, w],
                255,
                &norm(1),
                Some(&a),
                &mut rand::rngs::StdRng::seed_from_u64(seed),
                &mut out,
            );
            // Every output pixel is 0 (padding) or some input pixel, rows stay rows.
            let values: Vec<u8> = out.iter().map(|v| (v * 255.0).round() as u8).collect();
            for y in 0..h {
                let row: Vec<u8> = values[y * w..(y + 1) * w]
                    .iter()
                    .copied()
                    .filter(|&v| v != 0)
                    .collect();
                if row.len() >= 2 {
                    let rows: Vec<u8> = row.iter().map(|v| v / w as u8).collect();
                    assert!(
                        rows.windows(2).all(|p| p[0] == p[1]),
                        "seed {seed}: {row:?}"
                    );
                    if row[0] > row[1] {
                        seen_flip = true;
                    }
                }
            }
            let c = Augment {
                crop_padding: 0,
                flip: false,
                cutout: 4,
            };
            let mut out = vec![0f32; h * w];
            preprocess(
                &pixels,
                [1, h, w],
                255,
                &norm(1),
                Some(&c),
                &mut rand::rngs::StdRng::seed_from_u64(seed),
                &mut out,
            );
            let zeros = out.iter().skip(1).filter(|&&v| v == 0.0).count();
            assert!(zeros <= 16, "seed {seed}");
            seen_cut |= zeros > 0;
        }
        assert!(seen_flip && seen_cut);
    }
}
